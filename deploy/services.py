#!/usr/bin/env python3
"""The MLflow tracking server on PostgreSQL without Docker: what ``deploy/compose.yaml`` runs.

    .venv/bin/python deploy/services.py start     # database created if missing; prints the URL
    .venv/bin/python deploy/services.py status
    .venv/bin/python deploy/services.py stop

For a machine that has PostgreSQL but no Docker daemon. The settings (MLflow version, port,
workers, allowed hosts, database name, ...) are read from ``deploy/.env``, the file docker
compose reads for ``compose.yaml``, so both run the same ``mlflow server`` command; only where
things are differs: this machine's PostgreSQL (``--pg-host/--pg-port/--pg-user``, default
libpq's ``PGHOST``/``PGPORT``/``PGUSER`` or 127.0.0.1:5432 as ``postgres``; a password comes
from libpq's ``PGPASSWORD`` or ``~/.pgpass``, never the command line), the loopback address
instead of 0.0.0.0, and an artifacts folder in the run directory. ``command`` prints the
server command; ``tests/test_deploy.py`` compares it with the compose file's.

``start`` writes ``mlflow.pid``, ``mlflow.json`` and ``mlflow.log`` to the run directory
(``--run-dir``, default ``deploy/.run``), waits for ``/health`` and prints the server's URL on
stdout (everything else goes to stderr), so ``URI=$(... start --port 0)`` works in a script;
``--port 0`` picks a free port. ``stop`` ends the server's process group (SIGTERM, then SIGKILL
after ``--timeout``); ``--drop-database`` also drops the database it used (for throwaway
databases: tests, CI).

Python rather than bash: the tests import the function that builds the command, the database is
created through psycopg2 (which the server needs anyway) with no client binaries, and no MLflow
import is needed here (the server process pays that).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

HERE = Path(__file__).resolve().parent
ENV_FILE = HERE / ".env"
DEFAULT_RUN_DIR = HERE / ".run"

PID_FILE = "mlflow.pid"
STATE_FILE = "mlflow.json"
LOG_FILE = "mlflow.log"

# .env keys this script needs; the rest (images, the container's role and password) are compose's.
REQUIRED = (
    "MLFLOW_VERSION",
    "MLFLOW_PORT",
    "MLFLOW_WORKERS",
    "MLFLOW_ALLOWED_HOSTS",
    "MLFLOW_DISABLE_TELEMETRY",
    "MLFLOW_DATABASE",
)
# Settings that reach the server as environment variables (compose: the mlflow service's
# `environment`, less PGPASSWORD).
SERVER_ENV = ("MLFLOW_DISABLE_TELEMETRY",)

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_DATABASE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")


class ServiceError(Exception):
    """A problem the user can fix; printed without a traceback."""


# -- settings ------------------------------------------------------------------------------------
def read_env_file(path: Path = ENV_FILE) -> dict[str, str]:
    """``KEY=VALUE`` lines, ``#`` comments and blank lines: the subset of compose's ``.env``
    syntax that compose (v1 and v2) and this parser read the same way, so anything else is an
    error here rather than a value the two would read differently."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ServiceError(f"cannot read the settings file {path}: {exc.strerror or exc}") from exc
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not _KEY.match(key):
            raise ServiceError(f"{where}: expected KEY=VALUE, got {raw!r}")
        if key in values:
            raise ServiceError(f"{where}: {key} is set twice")
        if value != value.strip():
            raise ServiceError(f"{where}: {key}: no spaces around '='")
        if value[:1] in ("'", '"') or "$" in value or " #" in value or "\t#" in value:
            raise ServiceError(
                f"{where}: {key}: write the value plain (no quotes, no $, no inline comment): "
                "compose versions read those differently"
            )
        values[key] = value
    return values


@dataclass(frozen=True)
class Settings:
    mlflow_version: str
    port: int
    workers: int
    allowed_hosts: str
    database: str
    server_env: Mapping[str, str]


def load_settings(path: Path = ENV_FILE) -> Settings:
    values = read_env_file(path)
    missing = [key for key in REQUIRED if not values.get(key)]
    if missing:
        raise ServiceError(f"{path}: missing {', '.join(missing)}")
    return Settings(
        mlflow_version=values["MLFLOW_VERSION"],
        port=_port(values["MLFLOW_PORT"], f"{path}: MLFLOW_PORT"),
        workers=_positive(values["MLFLOW_WORKERS"], f"{path}: MLFLOW_WORKERS"),
        allowed_hosts=values["MLFLOW_ALLOWED_HOSTS"],
        database=_database(values["MLFLOW_DATABASE"], f"{path}: MLFLOW_DATABASE"),
        server_env={key: values[key] for key in SERVER_ENV},
    )


def _port(text: str, what: str, *, allow_zero: bool = False) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise ServiceError(f"{what}: expected a port number (1-65535), got {text!r}")
    return port


def _positive(text: str, what: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ServiceError(f"{what}: expected a whole number of at least 1, got {text!r}")
    return int(text)


def _database(name: str, what: str) -> str:
    if not _DATABASE.match(name):
        raise ServiceError(f"{what}: a database name of letters, digits and _ (at most 63), got {name!r}")
    return name


# -- the command ---------------------------------------------------------------------------------
def backend_uri(*, user: str, host: str, port: int, database: str) -> str:
    """SQLAlchemy URI with the psycopg2 driver named (a bare ``postgresql://`` means psycopg 3
    to SQLAlchemy 2, which MLflow does not install). No password: libpq finds it."""
    return f"postgresql+psycopg2://{quote(user, safe='')}@{host}:{port}/{database}"


def server_args(settings: Settings, *, backend: str, host: str, port: int, artifacts: str) -> list[str]:
    """``mlflow server``'s options. compose.yaml's command is ``mlflow server`` and these, with
    the compose network's backend, 0.0.0.0 and its volume (tests/test_deploy.py checks it)."""
    return [
        "--backend-store-uri", backend,
        "--host", host,
        "--port", str(port),
        "--workers", str(settings.workers),
        "--allowed-hosts", settings.allowed_hosts,
        "--artifacts-destination", artifacts,
    ]  # fmt: skip


@dataclass(frozen=True)
class Target:
    """Where this run's server and database are."""

    run_dir: Path
    host: str
    port: int
    pg_host: str
    pg_port: int
    pg_user: str
    database: str

    @property
    def url(self) -> str:
        return f"http://{_connect_host(self.host)}:{self.port}"

    @property
    def backend(self) -> str:
        return backend_uri(user=self.pg_user, host=self.pg_host, port=self.pg_port, database=self.database)


def server_command(settings: Settings, target: Target) -> list[str]:
    opts = server_args(
        settings,
        backend=target.backend,
        host=target.host,
        port=target.port,
        artifacts=str(target.run_dir / "artifacts"),
    )
    return [sys.executable, "-m", "mlflow", "server", *opts]


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


# -- PostgreSQL ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _pg(target: Target) -> Iterator[Any]:
    try:
        import psycopg2
    except ImportError as exc:
        raise ServiceError(
            f"psycopg2 is not installed in {sys.executable}; the server needs it too: "
            "pip install psycopg2-binary (the project's dev extra has it)"
        ) from exc
    try:
        conn = psycopg2.connect(
            host=target.pg_host,
            port=target.pg_port,
            user=target.pg_user,
            dbname="postgres",  # the maintenance database, there on every server
            connect_timeout=5,
        )
    except psycopg2.OperationalError as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServiceError(
            f"PostgreSQL is not reachable at {target.pg_host}:{target.pg_port} as {target.pg_user}: "
            f"{detail}\n"
            "Start it (e.g. pg_ctlcluster 15 main start) or point --pg-host/--pg-port/--pg-user at yours."
        ) from exc
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    try:
        yield conn
    finally:
        conn.close()


def ensure_database(target: Target) -> bool:
    """Create the database if missing; True if it was created."""
    from psycopg2 import errors, sql

    with _pg(target) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target.database,))
        if cur.fetchone():
            return False
        try:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target.database)))
        except errors.DuplicateDatabase:  # another start created it meanwhile
            return False
        return True


def drop_database(target: Target) -> None:
    from psycopg2 import sql

    with _pg(target) as conn, conn.cursor() as cur:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")  # FORCE: PostgreSQL 13+
        cur.execute(drop.format(sql.Identifier(target.database)))


# -- processes -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex((_connect_host(host), port)) == 0


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _group_alive(pgid: int) -> bool:
    """Any live (not zombie) process left in the group. A server whose starter exited is
    reparented to whatever reaps orphans here, which may leave zombies behind."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _looks_like_ours(pid: int) -> bool:
    """The pid still names an ``mlflow server`` (not a recycled pid)."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not Path("/proc").is_dir():
        return True
    try:
        args = cmdline.read_bytes().split(b"\0")
    except OSError:
        return False
    return b"mlflow" in args and b"server" in args


def _read_pid(run_dir: Path) -> int | None:
    try:
        return int((run_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _read_state(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((run_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def running_pid(run_dir: Path) -> int | None:
    pid = _read_pid(run_dir)
    if pid is None or not _group_alive(pid) or not _looks_like_ours(pid):
        return None
    return pid


def _clear(run_dir: Path) -> None:
    for name in (PID_FILE, STATE_FILE):
        with contextlib.suppress(FileNotFoundError):
            (run_dir / name).unlink()


def _terminate(pgid: int, timeout: float) -> None:
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                return
            time.sleep(0.1)
    if _group_alive(pgid):
        raise ServiceError(f"process group {pgid} is still alive after SIGKILL")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _log_tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not healthy(url):
        if proc.poll() is not None:
            raise ServiceError(f"mlflow server exited ({proc.returncode}); {log}:\n{_log_tail(log)}")
        if time.monotonic() > deadline:
            raise ServiceError(
                f"mlflow server did not answer /health within {timeout:.0f}s; {log}:\n{_log_tail(log)}"
            )
        time.sleep(0.25)


# -- subcommands ---------------------------------------------------------------------------------
def start(settings: Settings, target: Target, *, timeout: float) -> str:
    run_dir = target.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    pid = running_pid(run_dir)
    if pid is not None:
        url = str(_read_state(run_dir).get("url") or target.url)
        _say(f"already running: {url} (pid {pid}); stop it first to change its settings")
        return url
    _clear(run_dir)
    if port_in_use(target.host, target.port):
        raise ServiceError(f"port {target.port} is already in use; pick another with --port (0: a free one)")
    try:
        installed = importlib.metadata.version("mlflow")
    except importlib.metadata.PackageNotFoundError as exc:
        raise ServiceError(
            f"mlflow is not installed in {sys.executable}; run this with the project's environment "
            "(.venv/bin/python deploy/services.py ...)"
        ) from exc
    if installed != settings.mlflow_version:
        _say(f"note: this environment has mlflow {installed}; deploy/.env pins {settings.mlflow_version}")
    if ensure_database(target):
        _say(f"created database {target.database} on {target.pg_host}:{target.pg_port}")

    cmd = server_command(settings, target)
    log = run_dir / LOG_FILE
    env = {**os.environ, **settings.server_env}
    with log.open("ab") as out:
        # Own session: `stop` ends the uvicorn workers and job runners with it, and the server
        # outlives this command (and its terminal).
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=env,
            cwd=run_dir,
            start_new_session=True,
        )
    (run_dir / PID_FILE).write_text(f"{proc.pid}\n")
    state = {
        "pid": proc.pid,
        "url": target.url,
        "port": target.port,
        "database": target.database,
        "pg_host": target.pg_host,
        "pg_port": target.pg_port,
        "pg_user": target.pg_user,
        "backend_store_uri": target.backend,
        "log": str(log),
        "command": cmd,
    }
    (run_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    try:
        _wait_healthy(proc, target.url, log, timeout)
    except BaseException:  # not healthy, or Ctrl-C while waiting: leave nothing running
        _terminate(proc.pid, 5.0)
        # The state file stays: it says which database `stop --drop-database` drops.
        (run_dir / PID_FILE).unlink(missing_ok=True)
        raise
    stop_cmd = shlex.join([sys.executable, str(Path(__file__).resolve()), "stop", "--run-dir", str(run_dir)])
    _say(
        f"mlflow server {installed} on PostgreSQL {target.pg_host}:{target.pg_port}/{target.database}: "
        f"{target.url} (pid {proc.pid}, log {log})\n"
        f"  applications: export MLFLOW_TRACKING_URI={target.url}\n"
        f"  stop:         {stop_cmd}"
    )
    return target.url


def stop(run_dir: Path, *, timeout: float, drop: bool) -> None:
    state = _read_state(run_dir)
    pid = _read_pid(run_dir)
    if pid is None:
        _say(f"not running (no {PID_FILE} in {run_dir})")
    elif not _group_alive(pid) or not _looks_like_ours(pid):
        _say(f"not running (stale {PID_FILE}: pid {pid} is gone)")
    else:
        _terminate(pid, timeout)
        _say(f"stopped mlflow server (pid {pid})")
    _clear(run_dir)
    if drop:
        if not state.get("database"):
            raise ServiceError(f"--drop-database: no {STATE_FILE} in {run_dir} says which database")
        target = Target(
            run_dir=run_dir,
            host="127.0.0.1",
            port=0,
            pg_host=str(state["pg_host"]),
            pg_port=int(state["pg_port"]),
            pg_user=str(state["pg_user"]),
            database=_database(str(state["database"]), STATE_FILE),
        )
        drop_database(target)
        _say(f"dropped database {target.database}")


def status(run_dir: Path) -> int:
    """0: running and healthy; 1: running, not answering /health; 3: not running (as LSB init
    scripts say it)."""
    pid = running_pid(run_dir)
    if pid is None:
        print(f"not running (run directory {run_dir})")
        return 3
    state = _read_state(run_dir)
    url = str(state.get("url", "?"))
    ok = healthy(url, timeout=10.0)  # a busy server (or machine) may take seconds to answer
    print(f"{'running' if ok else 'running, not answering /health'}: {url} (pid {pid})")
    for key in ("backend_store_uri", "log"):
        if key in state:
            print(f"  {key}: {state[key]}")
    return 0 if ok else 1


# -- command line --------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="services.py",
        description="Run deploy/compose.yaml's mlflow server on this machine's PostgreSQL, without Docker.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    run_dir = argparse.ArgumentParser(add_help=False)
    run_dir.add_argument(
        "--run-dir",
        type=Path,
        default=DEFAULT_RUN_DIR,
        help=f"pid, state and log files (default {DEFAULT_RUN_DIR})",
    )
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("--port", help="port to serve on (default: MLFLOW_PORT from .env; 0: a free port)")
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    server.add_argument("--database", help="database name (default: MLFLOW_DATABASE from .env)")
    server.add_argument("--pg-host", default=os.environ.get("PGHOST") or "127.0.0.1")
    server.add_argument("--pg-port", default=os.environ.get("PGPORT") or "5432")
    server.add_argument("--pg-user", default=os.environ.get("PGUSER") or "postgres")

    p = sub.add_parser("start", parents=[run_dir, server], help="create the database if missing, start")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for /health (default 120)")
    sub.add_parser("command", parents=[run_dir, server], help="print the server command start would run")
    p = sub.add_parser("stop", parents=[run_dir], help="stop the server started with this run directory")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds before SIGKILL (default 10)")
    p.add_argument("--drop-database", action="store_true", help="also drop its database (throwaway ones)")
    sub.add_parser("status", parents=[run_dir], help="exit 0: healthy, 1: not answering, 3: not running")
    return parser


def _target(args: argparse.Namespace, settings: Settings) -> Target:
    port = settings.port if args.port is None else _port(args.port, "--port", allow_zero=True)
    return Target(
        run_dir=args.run_dir.resolve(),
        host=args.host,
        port=port or free_port(),
        pg_host=args.pg_host,
        pg_port=_port(args.pg_port, "--pg-port"),
        pg_user=args.pg_user,
        database=_database(args.database, "--database") if args.database else settings.database,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.action == "stop":
            stop(args.run_dir.resolve(), timeout=args.timeout, drop=args.drop_database)
            return 0
        if args.action == "status":
            return status(args.run_dir.resolve())
        settings = load_settings()
        target = _target(args, settings)
        if args.action == "command":
            print(shlex.join(server_command(settings, target)))
            return 0
        print(start(settings, target, timeout=args.timeout), flush=True)
        return 0
    except ServiceError as exc:
        _say(f"services.py {args.action}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
