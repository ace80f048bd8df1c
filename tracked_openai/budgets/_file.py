"""The budgets file (``TRACKED_OPENAI_BUDGETS=budgets.yaml``), validated like a price file: every
problem is reported as ``file:line: field: problem``, all of them at once.

```yaml
budgets:
  - feature: visual_generation
    usd: 50
    per: day
    action: block
  - tag: tenant
    usd: 5
    per: day
webhooks:
  - url: https://hooks.slack.com/services/...
    slack: true
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ._model import Budget, budget_problems

__all__ = ["BudgetsFile", "BudgetsFileError", "load_budgets_file", "parse_budgets_text"]

_BUDGET_FIELDS = frozenset(
    {"usd", "per", "action", "feature", "operation", "model", "tag", "alert_at", "fail", "tz", "name"}
)
_WEBHOOK_FIELDS = frozenset({"url", "slack", "timeout"})


class BudgetsFileError(ValueError):
    """A budgets file is malformed; each line of the message is ``file:line: field: problem``."""


@dataclass
class Webhook:
    url: str
    slack: bool = False
    timeout: float = 5.0


@dataclass
class BudgetsFile:
    budgets: list[Budget] = field(default_factory=list)
    webhooks: list[Webhook] = field(default_factory=list)


class _Loader(yaml.SafeLoader):
    """SafeLoader whose floats stay as written (dollars are exact)."""


def _keep_float_text(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    return str(loader.construct_scalar(node))  # type: ignore[arg-type]


_Loader.add_constructor("tag:yaml.org,2002:float", _keep_float_text)


def load_budgets_file(path: str | Path) -> BudgetsFile:
    """Read and validate a budgets file; :class:`BudgetsFileError` names file, line and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BudgetsFileError(f"{path}:1: cannot read budgets file: {exc.strerror or exc}") from None
    return parse_budgets_text(text, str(path))


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def parse_budgets_text(text: str, name: str = "<string>") -> BudgetsFile:
    """Validate YAML text as a budgets file (``name`` is used in error messages)."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise BudgetsFileError(f"{name}:{line}: invalid YAML: {exc.problem or exc.context}") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise BudgetsFileError(f"{name}:1: invalid YAML: {exc}") from None
    problems: list[str] = []

    def problem(at: yaml.Node | int, where: str, what: str) -> None:
        problems.append(f"{name}:{at if isinstance(at, int) else _line(at)}: {where}: {what}")

    out = BudgetsFile()
    if node is None:
        raise BudgetsFileError(f"{name}:1: (top level): empty budgets file (expected `budgets:`)")
    if not isinstance(node, yaml.MappingNode):
        raise BudgetsFileError(
            f"{name}:{_line(node)}: (top level): a mapping with `budgets:` (and `webhooks:`)"
        )
    top = _mapping(node, "", problem)
    for key, (key_node, _) in top.items():
        if key not in ("budgets", "webhooks"):
            problem(key_node, key, "unknown field (expected budgets or webhooks)")
    if "budgets" not in top:
        problem(node, "budgets", "missing (a list of budgets)")
    for section in ("budgets", "webhooks"):
        if section not in top:
            continue
        seq = top[section][1]
        if not isinstance(seq, yaml.SequenceNode):
            problem(seq, section, "must be a list")
            continue
        for i, item in enumerate(seq.value):
            where = f"{section}[{i}]"
            if not isinstance(item, yaml.MappingNode):
                problem(item, where, "must be a mapping of fields")
                continue
            fields = _mapping(item, where, problem)
            allowed = _BUDGET_FIELDS if section == "budgets" else _WEBHOOK_FIELDS
            values: dict[str, Any] = {}
            for key, (key_node, value_node) in fields.items():
                if key not in allowed:
                    problem(
                        key_node,
                        f"{where}.{key}",
                        f"unknown field (expected one of {', '.join(sorted(allowed))})",
                    )
                    continue
                values[key] = _value(value_node)
            if section == "budgets":
                _budget(values, fields, item, where, problem, out)
            else:
                _webhook(values, fields, item, where, problem, out)
    if problems:
        raise BudgetsFileError("\n".join(problems))
    return out


def _value(node: yaml.Node) -> Any:
    loader = _Loader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def _mapping(node: yaml.MappingNode, where: str, problem: Any) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value)
        if key in out:
            problem(key_node, f"{where}.{key}" if where else key, "duplicate key")
        out[key] = (key_node, value_node)
    return out


def _budget(
    values: dict[str, Any],
    fields: dict[str, tuple[yaml.Node, yaml.Node]],
    item: yaml.Node,
    where: str,
    problem: Any,
    out: BudgetsFile,
) -> None:
    if "usd" not in values:
        problem(item, f"{where}.usd", "missing (the limit in dollars)")
        return
    raw = dict(values)
    raw.setdefault("per", "day")
    raw.setdefault("action", "block")
    raw.setdefault("fail", "open")
    raw.setdefault("tz", "UTC")
    if isinstance(raw.get("alert_at"), list):
        try:
            raw["alert_at"] = tuple(float(v) if isinstance(v, str) else v for v in raw["alert_at"])
        except ValueError:
            pass
    for key in ("per", "tz"):
        if isinstance(raw.get(key), (int, float)) and not isinstance(raw.get(key), bool):
            raw[key] = str(raw[key])
    found = budget_problems(_Raw(raw))
    for key, what in found:
        at = fields[key][1] if key in fields else item
        problem(at, f"{where}.{key}", what)
    if not found:
        out.budgets.append(Budget(**raw))


def _webhook(
    values: dict[str, Any],
    fields: dict[str, tuple[yaml.Node, yaml.Node]],
    item: yaml.Node,
    where: str,
    problem: Any,
    out: BudgetsFile,
) -> None:
    url = values.get("url")
    ok = True
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        problem(fields["url"][1] if "url" in fields else item, f"{where}.url", "must be an http(s) URL")
        ok = False
    slack = values.get("slack", False)
    if not isinstance(slack, bool):
        problem(fields["slack"][1], f"{where}.slack", f"must be true or false (got {slack!r})")
        ok = False
    timeout = values.get("timeout", 5.0)
    try:
        seconds = float(timeout)
        if isinstance(timeout, bool) or not 0 < seconds <= 300:
            raise ValueError
    except (TypeError, ValueError):
        problem(
            fields["timeout"][1], f"{where}.timeout", f"must be seconds above 0, up to 300 (got {timeout!r})"
        )
        ok = False
    if ok:
        out.webhooks.append(Webhook(str(url), slack, seconds))


class _Raw:
    """Raw field values, read like a Budget's attributes by ``budget_problems``."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)

    def __getattr__(self, name: str) -> Any:
        return None
