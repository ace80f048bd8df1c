"""Reading price files: YAML with exact decimals, and errors that name the file, line and field."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .schema import PriceFile, PricingError

__all__ = ["load_price_file", "load_price_files", "parse_price_text", "shipped_pricing_dir", "yaml_files"]



class _Loader(yaml.SafeLoader):
    """SafeLoader whose floats are exact Decimals (0.1 stays 0.1)."""


def _construct_decimal(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    text = str(loader.construct_scalar(node)).replace("_", "")  # type: ignore[arg-type]
    if text.lower() in (".inf", "+.inf", "-.inf", ".nan"):
        return text  # left as text: the schema rejects it with a line number
    try:
        return Decimal(text)
    except InvalidOperation:
        return text  # YAML 1.1's sexagesimal floats (1:30.5): the same


def _construct_timestamp(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    try:
        return loader.construct_yaml_timestamp(node)  # type: ignore[arg-type]
    except ValueError:
        # Shaped like a date but none (2024-02-30): left as text, the schema names the field.
        return loader.construct_scalar(node)  # type: ignore[arg-type]


_Loader.add_constructor("tag:yaml.org,2002:float", _construct_decimal)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)


def _line_map(
    node: yaml.Node,
    path: tuple[Any, ...],
    out: dict[tuple[Any, ...], int],
    errors: list[str],
    above: frozenset[int] = frozenset(),
) -> None:
    out.setdefault(path, node.start_mark.line + 1)
    if id(node) in above:  # an alias to a node that contains it (&a ... *a): endless
        errors.append(f"{out[path]}: {'.'.join(map(str, path))}: refers to itself (a YAML alias)")
        return
    above = above | {id(node)}
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                errors.append(
                    f"{key_node.start_mark.line + 1}: {'.'.join(map(str, (*path, key)))}: duplicate key"
                )
            seen.add(key)
            out[(*path, key)] = key_node.start_mark.line + 1
            _line_map(value_node, (*path, key), out, errors, above)
            out[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, (*path, i), out, errors, above)


def _locate(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int:
    for end in range(len(loc), -1, -1):
        line = lines.get(tuple(str(p) if not isinstance(p, int) else p for p in loc[:end]))
        if line is not None:
            return line
    return 1


def _field_name(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts) or "(top level)"


def load_price_file(path: str | Path) -> PriceFile:
    """Read and validate one YAML price file; :class:`PricingError` names file, line and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PricingError(f"{path}: cannot read price file: {exc.strerror or exc}") from None
    return parse_price_text(text, str(path))


def parse_price_text(text: str, name: str = "<string>") -> PriceFile:
    """Validate YAML text as a price file (``name`` is used in error messages)."""
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (a control character)
        line = text.count("\n", 0, exc.position) + 1
        problem = f"character #x{exc.character:04x}: {exc.reason}"
        raise PricingError(f"{name}:{line}: invalid YAML: {problem}") from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise PricingError(f"{name}:1: empty price file (expected `version:` and `models:`)")
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise PricingError(f"{name}:{line}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise PricingError(f"{name}:1: invalid YAML: {exc}") from None
    except RecursionError:
        raise PricingError(f"{name}:1: invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()
    lines: dict[tuple[Any, ...], int] = {}
    dupes: list[str] = []
    _line_map(node, (), lines, dupes)
    if dupes:
        raise PricingError("\n".join(f"{name}:{d}" for d in dupes))
    if not isinstance(data, dict):
        raise PricingError(f"{name}:1: a price file is a mapping with `version:` and `models:`")
    try:
        return PriceFile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = tuple(err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{name}:{_locate(loc, lines)}: {_field_name(loc)}: {msg}")
        raise PricingError("\n".join(problems)) from None


def shipped_pricing_dir() -> Path:
    """The shipped tables: ``pricing/`` in a source tree or editable install, else the wheel's copy."""
    here = Path(__file__).resolve()
    source_tree = here.parents[2] / "pricing"  # tracked_openai/pricing/load.py -> the repo root
    if source_tree.is_dir() and any(source_tree.glob("*.yaml")):
        return source_tree
    from importlib.resources import files

    packaged = files("tracked_openai").joinpath("_pricing_data")
    return Path(str(packaged))


def yaml_files(source: Path) -> list[Path]:
    if source.is_dir():
        found = sorted([*source.glob("*.yaml"), *source.glob("*.yml")])
        if not found:
            raise PricingError(f"{source}: no *.yaml price files in this folder")
        return found
    if not source.exists():
        raise PricingError(f"{source}: no such price file or folder")
    return [source]


def load_price_files(source: str | Path) -> list[PriceFile]:
    """Every price file in a file or folder (sorted by name: later files override earlier)."""
    return [load_price_file(p) for p in yaml_files(Path(source))]


