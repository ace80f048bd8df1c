"""deploy/: the compose file and deploy/services.py run the same server from one settings file.

The drift checks read compose.yaml as YAML, substitute deploy/.env's values the way compose does,
and compare with what services.py builds, once with the real settings and once with every value
changed (so a value written into compose.yaml instead of taken from .env fails). The live test
starts a real ``mlflow server`` on PostgreSQL through the script.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.helpers.mlflow_server import PG_HOST, PG_PORT, PG_USER, postgres_available

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
ENV_FILE = DEPLOY / ".env"
SCRIPT = DEPLOY / "services.py"


def _load_services() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tracked_openai_deploy_services", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


services = _load_services()


# -- compose, read the way compose reads it ----------------------------------------------------
_VAR = re.compile(r"\$\{([^}]*)\}")


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    """compose's substitution for the form this file may use: ``${NAME}`` (and ``$$``)."""
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env) for value in node]
    if isinstance(node, str):
        text = _VAR.sub(lambda m: env[m.group(1)], node)
        return text.replace("$$", "$")
    return node


def _references(node: Any) -> list[str]:
    """The ``${...}`` in the document's keys and values (compose substitutes both; not comments)."""
    if isinstance(node, dict):
        return [ref for key, value in node.items() for ref in _references(key) + _references(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _references(value)]
    return _VAR.findall(node) if isinstance(node, str) else []


def compose_doc(env: Mapping[str, str]) -> dict[str, Any]:
    doc = interpolate(yaml.safe_load(COMPOSE.read_text()), env)
    assert isinstance(doc, dict)
    return doc


def script_view(env_file: Path) -> dict[str, Any]:
    """What compose.yaml must say, derived from services.py's own functions and the env file."""
    env = services.read_env_file(env_file)
    settings = services.load_settings(env_file)
    backend = services.backend_uri(
        user=env["POSTGRES_USER"], host="postgres", port=5432, database=settings.database
    )
    args = services.server_args(
        settings, backend=backend, host="0.0.0.0", port=settings.port, artifacts="/mlflow/artifacts"
    )
    return {
        "command": ["mlflow", "server", *args],
        "server_env": dict(settings.server_env),
        "ports": [f"{settings.port}:{settings.port}"],
        "health_url": f"http://127.0.0.1:{settings.port}/health",
        "database": settings.database,
        "tracking_uri": f"http://mlflow:{settings.port}",
    }


def compose_view(doc: Mapping[str, Any]) -> dict[str, Any]:
    mlflow = doc["services"]["mlflow"]
    env = dict(mlflow["environment"])
    env.pop("PGPASSWORD")
    (health_url,) = re.findall(r"http://[^']+/health", " ".join(mlflow["healthcheck"]["test"]))
    return {
        "command": [str(part) for part in mlflow["command"]],
        "server_env": env,
        "ports": mlflow["ports"],
        "health_url": health_url,
        "database": doc["services"]["postgres"]["environment"]["POSTGRES_DB"],
        "tracking_uri": doc["services"]["app"]["environment"]["MLFLOW_TRACKING_URI"],
    }


def mutated(env: Mapping[str, str]) -> dict[str, str]:
    """Every value changed, each to something still valid."""
    out = {}
    for i, (key, value) in enumerate(env.items()):
        if value.isdigit():
            out[key] = str(int(value) + 17 + i)
        elif re.fullmatch(r"[\d.]+", value):
            out[key] = f"{value}.{i + 1}"
        elif key == "MLFLOW_ALLOWED_HOSTS":
            out[key] = "other.example,other.example:*"
        elif key == "MLFLOW_DISABLE_TELEMETRY":
            out[key] = "false" if value == "true" else "true"
        else:
            out[key] = f"{value}_other"
    assert all(out[k] != env[k] for k in env)
    return out


def test_compose_takes_its_values_from_env_file_only() -> None:
    """Every ``${...}`` in compose.yaml is a plain ``${NAME}`` defined in .env (a ``:-default``
    would be a second place for a value), and every .env key is used."""
    env = services.read_env_file(ENV_FILE)
    refs = _references(yaml.safe_load(COMPOSE.read_text()))
    assert refs, "compose.yaml takes no values from .env"
    bad = [ref for ref in refs if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", ref)]
    assert not bad, f"only plain ${{NAME}} substitutions, no defaults or errors: {bad}"
    assert set(refs) - set(env) == set(), "compose.yaml uses variables .env does not define"
    assert set(env) - set(refs) == set(), ".env defines settings compose.yaml does not use"

    doc = compose_doc(env)
    postgres, mlflow = doc["services"]["postgres"], doc["services"]["mlflow"]
    assert postgres["image"] == f"postgres:{env['POSTGRES_VERSION']}"
    assert mlflow["build"]["args"] == {
        "MLFLOW_VERSION": env["MLFLOW_VERSION"],
        "PSYCOPG2_VERSION": env["PSYCOPG2_VERSION"],
    }
    assert postgres["environment"]["POSTGRES_USER"] == env["POSTGRES_USER"]
    assert mlflow["environment"]["PGPASSWORD"] == postgres["environment"]["POSTGRES_PASSWORD"]
    assert set(doc["volumes"]) >= {"postgres-data"}
    assert "postgres-data:/var/lib/postgresql/data" in postgres["volumes"]
    for name in ("postgres", "mlflow"):
        assert doc["services"][name]["healthcheck"]["test"], f"{name} has no health check"
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize("variant", ["as committed", "every value changed"])
def test_compose_runs_the_scripts_command(variant: str, tmp_path: Path) -> None:
    """The mlflow service's command, environment, port, health check and the app's tracking URI
    are what services.py derives from the same settings: equal with .env as committed, and still
    equal with every value changed (a literal in compose.yaml would not follow)."""
    env = services.read_env_file(ENV_FILE)
    env_file = ENV_FILE
    if variant == "every value changed":
        env = mutated(env)
        env_file = tmp_path / ".env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    assert compose_view(compose_doc(env)) == script_view(env_file)


def test_dockerfile_pins_nothing_itself() -> None:
    """The image's versions come from compose's build args (from .env): no ARG defaults."""
    text = (DEPLOY / "mlflow.Dockerfile").read_text()
    args = re.findall(r"^ARG\s+(\S+)", text, flags=re.M)
    assert sorted(args) == ["MLFLOW_VERSION", "PSYCOPG2_VERSION"]
    assert "=" not in "".join(args)
    assert re.search(r"^FROM ghcr\.io/mlflow/mlflow:v\$\{MLFLOW_VERSION\}$", text, flags=re.M)
    assert '"psycopg2-binary==${PSYCOPG2_VERSION}"' in text


def test_pinned_mlflow_is_in_pyprojects_range() -> None:
    from packaging.requirements import Requirement

    pyproject = (ROOT / "pyproject.toml").read_text()
    (spec,) = re.findall(r'"(mlflow[<>=!~][^"]*)"', pyproject)
    assert services.load_settings().mlflow_version in Requirement(spec).specifier


def test_script_command_is_server_args(tmp_path: Path) -> None:
    """``services.py command`` (what ``start`` runs) is ``python -m mlflow server`` with
    server_args for this machine: its PostgreSQL, loopback, the run directory's artifacts."""
    settings = services.load_settings()
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "command", "--port", "5123", "--run-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k not in ("PGHOST", "PGPORT", "PGUSER")},
    ).stdout
    backend = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{settings.database}"
    args = services.server_args(
        settings, backend=backend, host="127.0.0.1", port=5123, artifacts=str(tmp_path / "artifacts")
    )
    assert shlex.split(out) == [sys.executable, "-m", "mlflow", "server", *args]


def _readme_app_exports() -> dict[str, str]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("**A tracking server with PostgreSQL**") :]
    block = section[section.index("```bash") : section.index("```", section.index("```bash") + 3)]
    app = block[block.index("# application hosts") :]
    exports: dict[str, str] = {}
    for line in app.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            exports.update(word.split("=", 1) for word in words[1:])  # type: ignore[misc]
    return exports


def test_app_example_has_the_readmes_application_settings() -> None:
    """The compose app example sets what the README tells application hosts to set, no more:
    the same names, and the same values where they are not host-specific."""
    readme = _readme_app_exports()
    app = compose_doc(services.read_env_file(ENV_FILE))["services"]["app"]["environment"]
    assert "MLFLOW_TRACKING_URI" in readme
    assert set(app) == set(readme)
    host_specific = {"MLFLOW_TRACKING_URI", "TRACKED_OPENAI_SPOOL_DIR"}
    assert {k: str(v) for k, v in app.items() if k not in host_specific} == {
        k: v for k, v in readme.items() if k not in host_specific
    }


def test_allowed_hosts_let_the_compose_network_in() -> None:
    """MLflow's default allows localhost and private IPs only, so ``http://mlflow:5000`` from
    another container would get 403 (and /health, exempt, would not show it). .env's list lets
    the service name and localhost in, and still keeps other names out."""
    from mlflow.server.security_utils import get_default_allowed_hosts, is_allowed_host_header

    assert not is_allowed_host_header(get_default_allowed_hosts(), "mlflow:5000")
    ours = services.load_settings().allowed_hosts.split(",")
    for host in ("mlflow:5000", "mlflow", "localhost:5000", "127.0.0.1:5000"):
        assert is_allowed_host_header(ours, host), host
    assert not is_allowed_host_header(ours, "evil.example:5000")


def _compose_plugin() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, check=False)
    return docker if probe.returncode == 0 else None


def test_docker_compose_config_validates() -> None:
    """Where the compose plugin is installed, ``docker compose config`` (which needs no daemon)
    accepts the file and, with compose's own interpolation, runs the script's command."""
    docker = _compose_plugin()
    if docker is None:
        pytest.skip(
            "the docker compose plugin is not installed here (`docker compose version` fails; "
            "the docker client without it cannot validate the file)"
        )
    proc = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "--profile", "example", "config", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,  # as the README runs it
        env={k: v for k, v in os.environ.items() if k not in services.read_env_file(ENV_FILE)},
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["services"]["mlflow"]["command"] == script_view(ENV_FILE)["command"]


# -- the script, without a server --------------------------------------------------------------
def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("MLFLOW_PORT='5000'\n", "write the value plain"),
        ("MLFLOW_PORT=5000 # the UI\n", "write the value plain"),
        ("MLFLOW_PORT=${PORT}\n", "write the value plain"),
        ("MLFLOW_PORT 5000\n", "expected KEY=VALUE"),
        ("MLFLOW_PORT=5000\nMLFLOW_PORT=5001\n", "set twice"),
        ("MLFLOW_PORT = 5000\n", "no spaces around"),
    ],
)
def test_env_file_syntax_errors_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / ".env"
    path.write_text("# settings\n\n" + text)
    with pytest.raises(services.ServiceError, match=re.escape(message)) as info:
        services.read_env_file(path)
    assert f"{path}:{2 + text.count(chr(10))}:" in str(info.value)  # the last line is the bad one


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("MLFLOW_PORT", "http"), "MLFLOW_PORT: expected a port number"),
        (("MLFLOW_PORT", "70000"), "MLFLOW_PORT: expected a port number"),
        (("MLFLOW_WORKERS", "0"), "MLFLOW_WORKERS: expected a whole number"),
        (("MLFLOW_DATABASE", "my-db"), "MLFLOW_DATABASE: a database name"),
        (("MLFLOW_DATABASE", ""), "missing MLFLOW_DATABASE"),
    ],
)
def test_bad_settings_are_named(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    env = {**services.read_env_file(ENV_FILE), change[0]: change[1]}
    path = tmp_path / ".env"
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    with pytest.raises(services.ServiceError, match=re.escape(message)):
        services.load_settings(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_start_without_postgresql_says_so(tmp_path: Path) -> None:
    """Nothing listens on the PostgreSQL port given: a clear message, exit 1, nothing started."""
    port = _free_port()
    proc = _run("start", "--port", "0", "--pg-port", str(port), "--run-dir", str(tmp_path))
    assert proc.returncode == 1
    assert f"PostgreSQL is not reachable at 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "mlflow.pid").exists()


def test_stale_pid_file(tmp_path: Path) -> None:
    """A pid file whose process is gone: status says not running (3), stop cleans it up."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "mlflow.pid").write_text(f"{dead.pid}\n")
    status = _run("status", "--run-dir", str(tmp_path))
    assert status.returncode == 3 and "not running" in status.stdout
    stop = _run("stop", "--run-dir", str(tmp_path))
    assert stop.returncode == 0 and "stale" in stop.stderr
    assert not (tmp_path / "mlflow.pid").exists()


# -- the script, with a real server on PostgreSQL ----------------------------------------------
def _databases() -> set[str]:
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database")
            return {row[0] for row in cur.fetchall()}
    finally:
        conn.close()


def _experiments_in(database: str) -> set[str]:
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=database)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT name FROM experiments")
            return {row[0] for row in cur.fetchall()}
    finally:
        conn.close()


def _get(url: str, host: str) -> int:
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    """A run directory whose server (if any is left) is stopped and database dropped."""
    yield tmp_path
    _run("stop", "--run-dir", str(tmp_path), "--timeout", "2", "--drop-database")


@pytest.mark.server
@pytest.mark.postgres
def test_script_runs_mlflow_server_on_postgresql(run_dir: Path) -> None:
    """start: database created, server on a free port answers /health and takes an experiment,
    which lands in PostgreSQL; start again: the same server; status; the compose network's Host
    header is let in; stop: the process group is gone and the port free; the database dropped."""
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (trust auth, user postgres)")
    from mlflow import MlflowClient

    database = f"tracked_openai_test_{secrets.token_hex(4)}"
    started = time.monotonic()
    proc = _run("start", "--port", "0", "--database", database, "--run-dir", str(run_dir), timeout=300)
    assert proc.returncode == 0, proc.stderr
    url = proc.stdout.strip()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), proc.stdout
    assert f"created database {database}" in proc.stderr and "services.py stop --run-dir" in proc.stderr
    print(f"start took {time.monotonic() - started:.1f}s")
    assert database in _databases()

    with urllib.request.urlopen(f"{url}/health", timeout=10) as resp:
        assert resp.status == 200
    pid = int((run_dir / "mlflow.pid").read_text())
    state = json.loads((run_dir / "mlflow.json").read_text())
    assert state["url"] == url and state["database"] == database and state["pid"] == pid
    backend = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{database}"
    assert state["command"][4:6] == ["--backend-store-uri", backend]

    name = f"deploy_{secrets.token_hex(4)}"
    client = MlflowClient(url)
    experiment_id = client.create_experiment(name)
    assert client.get_experiment_by_name(name).experiment_id == experiment_id
    assert name in _experiments_in(database)

    again = _run("start", "--port", "0", "--database", database, "--run-dir", str(run_dir))
    assert again.returncode == 0 and again.stdout.strip() == url and "already running" in again.stderr
    status = _run("status", "--run-dir", str(run_dir))
    assert status.returncode == 0 and status.stdout.startswith(f"running: {url}")

    search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _get(search, "mlflow:5000") == 200
    assert _get(search, "evil.example:5000") == 403

    stop = _run("stop", "--run-dir", str(run_dir), "--drop-database")
    assert stop.returncode == 0, stop.stderr
    assert not services._group_alive(pid)
    port = int(url.rsplit(":", 1)[1])
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    assert not (run_dir / "mlflow.pid").exists()
    assert _run("status", "--run-dir", str(run_dir)).returncode == 3
    assert database not in _databases()
