"""Real ``mlflow server`` processes for tests and benchmarks, plus a fault-injecting proxy.

``MlflowServer`` starts ``python -m mlflow server`` on a free loopback port in its own process
group, waits for ``/health`` and can ``kill()`` (SIGKILL, like a crash) and ``start()`` again on
the same port. ``FaultProxy`` sits between a client and a server and answers 503, delays, or
refuses connections on demand. The pytest fixtures at the bottom are session-scoped and stop
every process they started.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

# Our sink's own requests are bounded whatever these say (sinks/mlflow.py); these are for the
# tests' own MlflowClient reads and the benchmarks' naive path, which use MLflow's settings:
# MLflow's default retries (7, minutes of backoff) would make a read of a killed server hang.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "1")

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    """One ``mlflow server`` (uvicorn) on 127.0.0.1; restartable on the same port."""

    def __init__(
        self,
        backend_uri: str,
        workdir: Path,
        *,
        port: int | None = None,
        workers: int | None = 1,
    ) -> None:
        self.backend_uri = backend_uri
        self.workdir = workdir
        self.port = port or free_port()
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.backend_uri,
            "--default-artifact-root",
            str(self.workdir / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        if self.workers is not None:
            cmd += ["--workers", str(self.workers)]
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONWARNINGS": "ignore"}
        with self.log.open("ab") as log:
            # Own session: kill() takes uvicorn's worker processes down with the parent.
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text()[-3000:]
                raise RuntimeError(f"mlflow server exited early; see {self.log}:\n{tail}")
            if self.healthy():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mlflow server did not become healthy in {timeout}s; see {self.log}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def _signal(self, sig: int) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)  # the group this Popen created (start_new_session)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """Crash the server (SIGKILL to its process group)."""
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)
        self._wait_port_free()

    def stop(self) -> None:
        self._signal(signal.SIGTERM)
        if self.proc is not None:
            try:
                # uvicorn waits for keep-alive connections on SIGTERM; test data needs no grace.
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(10)
        self._wait_port_free()

    def _wait_port_free(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.1)


class FaultProxy:
    """Loopback HTTP proxy: ``mode`` "pass", "503" (answer Service Unavailable) or "slow"."""

    def __init__(self, upstream_port: int, *, delay: float = 0.5) -> None:
        self.upstream_port = upstream_port
        self.mode = "pass"
        self.delay = delay
        self.hits = {"pass": 0, "503": 0, "slow": 0}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return None

            def _error(self, status: int, code: str, message: str) -> None:
                payload = json.dumps({"error_code": code, "message": message}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                mode = proxy.mode
                proxy.hits[mode] = proxy.hits.get(mode, 0) + 1
                if mode == "503":
                    self._error(503, "TEMPORARILY_UNAVAILABLE", "injected 503")
                    return
                if mode == "slow":
                    time.sleep(proxy.delay)
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                except OSError as exc:
                    # Upstream hiccup (a busy server under the full suite): answer like a real
                    # gateway would rather than dropping the client's connection unanswered.
                    self._error(502, "BAD_GATEWAY", type(exc).__name__)
                    return
                finally:
                    conn.close()
                self.send_response(resp.status)
                skip = ("transfer-encoding", "connection", "content-length", "date", "server")
                for key, value in resp.getheaders():
                    if key.lower() not in skip:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = _handle  # noqa: N815 - http.server's naming
            do_POST = _handle  # noqa: N815
            do_PATCH = _handle  # noqa: N815
            do_DELETE = _handle  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def upstream_url(self) -> str:
        """The server behind the proxy: where tests check what landed, past the faults."""
        return f"http://127.0.0.1:{self.upstream_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- PostgreSQL --------------------------------------------------------------------------------
def postgres_available() -> bool:
    if shutil.which("createdb") is None or shutil.which("pg_isready") is None:
        return False
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=1):
            pass
    except OSError:
        return False
    ok = subprocess.run(
        ["pg_isready", "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER],
        capture_output=True,
        check=False,
    )
    return ok.returncode == 0


def create_pg_database() -> tuple[str, str]:
    """A fresh database; returns (name, SQLAlchemy URI)."""
    name = f"tracked_openai_test_{secrets.token_hex(4)}"
    subprocess.run(
        ["createdb", "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER, name],
        check=True,
        capture_output=True,
    )
    # psycopg2 explicitly: SQLAlchemy 2 defaults postgresql:// to psycopg 3, which is not installed.
    return name, f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


def drop_pg_database(name: str) -> None:
    subprocess.run(
        ["dropdb", "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER, "--if-exists", "--force", name],
        check=False,
        capture_output=True,
    )


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real ``mlflow server`` with a SQLite backend, for the whole session."""
    workdir = tmp_path_factory.mktemp("mlflow-server")
    server = MlflowServer(f"sqlite:///{workdir / 'mlflow.db'}", workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# Set by .ci/run to a server it started with deploy/services.py (the way a developer would):
# mlflow_pg_server then uses it instead of starting its own.
PG_SERVER_URI_ENV = "TRACKED_OPENAI_TEST_MLFLOW_PG_URI"


def external_server(uri: str) -> MlflowServer:
    """An already running server on this machine, at ``http://127.0.0.1:PORT``; not ours to stop."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme != "http" or parsed.hostname not in ("127.0.0.1", "localhost") or not parsed.port:
        pytest.fail(f"{PG_SERVER_URI_ENV}={uri!r}: expected http://127.0.0.1:PORT")
    server = MlflowServer(uri, Path(), port=parsed.port)
    if not server.healthy():
        pytest.fail(f"{PG_SERVER_URI_ENV}={uri}: the server does not answer /health")
    return server


@pytest.fixture(scope="session")
def mlflow_pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real ``mlflow server`` backed by PostgreSQL on 127.0.0.1:5432 (skipped without it): the
    one at ``$TRACKED_OPENAI_TEST_MLFLOW_PG_URI`` if set, else one started for the session."""
    if uri := os.environ.get(PG_SERVER_URI_ENV):
        yield external_server(uri)
        return
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (trust auth, user postgres)")
    name, uri = create_pg_database()
    workdir = tmp_path_factory.mktemp("mlflow-pg-server")
    server = MlflowServer(uri, workdir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        drop_pg_database(name)


@pytest.fixture(scope="module")
def restartable_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A server fault tests may kill and restart (not the shared one: faults would leak).
    Module-scoped to pay its start-up once; each test puts it in the state it needs."""
    tmp_path = tmp_path_factory.mktemp("mlflow-restartable")
    server = MlflowServer(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path)
    try:
        yield server
    finally:
        server.stop()
