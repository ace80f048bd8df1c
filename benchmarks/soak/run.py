#!/usr/bin/env python3
"""Production soak: the Django app under real gunicorn, steady load, worker kills and restarts.

    .venv/bin/python benchmarks/soak/run.py                 # 2 minutes
    .venv/bin/python benchmarks/soak/run.py --minutes 30    # the README's figures

What runs (all on loopback, all real processes except the fake OpenAI endpoint, which is a real
HTTP server in this process):
- an ``mlflow server`` on this machine's PostgreSQL (``deploy/services.py``, a throwaway database);
- the soak app (``app.py``) twice under gunicorn (4 gthread workers, ``max_requests`` recycling):
  once with tracking on, exporting to that server, once with ``MLFLOW_ENABLED=false``;
- an asyncio load generator sending a steady rate of requests, split evenly between the two apps,
  with a cap on concurrent users; chat, streamed chat, embeddings, images and an untracked call.
During the run, on the tracked app: a SIGHUP reload (all workers replaced gracefully) at 30%, one
worker SIGKILLed at 50%, and the MLflow server SIGKILLed at 70% and restarted after ``--outage``
seconds. At the end the apps stop gracefully and the harness reconciles, by OpenAI request id,
every call the fake server served to the tracked app against the call records in MLflow:
recorded exactly once, duplicated, missing (and for a missing one, whether it was served to the
killed worker). It prints request latency p50/p99 with tracking on vs off and each worker's RSS.
Exit status 1 if a record is duplicated or missing outside the killed worker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from tracked_openai._fake_server import FakeOpenAIServer, _Handler  # noqa: E402

# Request mix: (path, weight). Images are slow and rare in real apps too.
MIX = [("chat", 4), ("stream", 2), ("embed", 2), ("image", 1), ("plain", 1)]


# -- the fake OpenAI endpoint, with a log of what it served ---------------------------------------
class _LoggingHandler(_Handler):
    """Logs each request id it hands out with the worker pid that asked."""

    served: list[tuple[str, int, float]]

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() == "x-request-id":
            pid = int(self.headers.get("x-soak-worker") or 0)
            self.served.append((value, pid, time.monotonic()))
        super().send_header(keyword, value)


def _fake_server() -> tuple[FakeOpenAIServer, list[tuple[str, int, float]]]:
    served: list[tuple[str, int, float]] = []
    handler = type("Handler", (_LoggingHandler,), {"served": served})
    server = FakeOpenAIServer(latency_scale=0.5)
    server._server.RequestHandlerClass = handler
    return server.start(), served


# -- processes ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class App:
    name: str
    env: dict[str, str]
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, log: Path) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                str(HERE / "gunicorn.conf.py"),
                "-b",
                f"127.0.0.1:{self.port}",
                "--chdir",
                str(HERE),
            ],
            env={**os.environ, **self.env, "PYTHONPATH": str(ROOT)},
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def workers(self) -> list[int]:
        return _children(self.proc.pid) if self.proc else []

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{self.name} app did not answer on {self.url} in {timeout:.0f} s")

    def stop(self, timeout: float = 90) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # graceful: workers finish and flush at exit
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class MlflowServer:
    """``deploy/services.py`` on a throwaway PostgreSQL database, killable and restartable."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.database = f"tracked_openai_soak_{os.getpid()}"
        self.port = _free_port()
        self.url = ""

    def _services(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, str(ROOT / "deploy" / "services.py"), *args, "--run-dir", str(self.run_dir)],
            capture_output=True,
            text=True,
            timeout=660,
        )
        if done.returncode:
            raise SystemExit(f"deploy/services.py {args[0]} failed:\n{done.stderr}")
        return done.stdout.strip()

    def start(self) -> None:
        self.url = self._services(
            # A loaded 2-core box has taken over 120 s to bring mlflow server up.
            "start",
            "--port",
            str(self.port),
            "--database",
            self.database,
            "--timeout",
            "600",
        )

    def kill(self) -> None:
        pid = int((self.run_dir / "mlflow.pid").read_text())
        os.killpg(pid, signal.SIGKILL)

    def stop(self) -> None:
        self._services("stop", "--drop-database")


# -- load -----------------------------------------------------------------------------------------
@dataclass
class Load:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"on": [], "off": []})
    failures: Counter[str] = field(default_factory=Counter)
    sent: Counter[str] = field(default_factory=Counter)


async def _drive(apps: dict[str, App], seconds: float, rate: float, users: int, load: Load) -> None:
    paths = [p for p, w in MIX for _ in range(w)]
    gate = asyncio.Semaphore(users)
    limits = httpx.Limits(max_connections=users * 2, max_keepalive_connections=users * 2)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        tasks: set[asyncio.Task[None]] = set()

        async def one(target: str, path: str) -> None:
            async with gate:
                started = time.perf_counter()
                try:
                    r = await client.get(f"{apps[target].url}/{path}", params={"t": random.choice("abc")})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    load.latencies[target].append(time.perf_counter() - started)
                else:
                    load.failures[target] += 1

        start = time.monotonic()
        n = 0
        while (now := time.monotonic() - start) < seconds:
            due = n / rate
            if due > now:
                await asyncio.sleep(due - now)
            target = "on" if n % 2 == 0 else "off"
            load.sent[target] += 1
            task = asyncio.create_task(one(target, random.choice(paths)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        if tasks:
            await asyncio.gather(*tasks)


# -- reading MLflow back --------------------------------------------------------------------------
def _recorded_request_ids(uri: str) -> Counter[str]:
    """Every OpenAI request id our call records carry, counted once per record written: call runs
    (``runs`` mode, and calls outside operations in ``runs+traces``) and call spans of our traces
    (``traces``, ``runs+traces``). A record that is both a run and a span counts once; two runs of
    one record (a write retried after an ambiguous failure) count twice."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    seen: Counter[str] = Counter()
    in_runs: set[str] = set()
    experiments = [e.experiment_id for e in client.search_experiments()]
    token = None
    while experiments:
        page = client.search_runs(experiments, max_results=1000, page_token=token)
        for run in page:
            ids = run.data.tags.get("request_ids")
            if ids:
                seen.update(v for v in ids.split(",") if v)
                in_runs.add(run.data.tags.get("record_id", ""))
        token = page.token
        if not token:
            break
    for experiment in experiments:
        token = None
        while True:
            try:
                traces = client.search_traces(locations=[experiment], max_results=500, page_token=token)
            except Exception:  # a store without traces: runs are all there is
                break
            for trace in traces:
                for span in trace.data.spans:
                    attrs = span.attributes or {}
                    ids = attrs.get("tracked_openai.request_ids")
                    if ids and attrs.get("tracked_openai.record_id") not in in_runs:
                        seen.update(ids if isinstance(ids, list) else str(ids).split(","))
            token = traces.token
            if not token:
                break
    return seen


def _next_process_replays(env: dict[str, str], uri: str) -> str:
    code = (
        "import tracked_openai; tracked_openai.start(wait=True); ok = tracked_openai.flush(180); "
        "print(tracked_openai.stats(), ok)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env, "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.stdout.strip() or done.stderr.strip()[-500:]


def _spool_files(spool: Path) -> list[Path]:
    return sorted(p for p in spool.glob("*.jsonl*") if p.is_file()) if spool.is_dir() else []


def _drain_spool(env: dict[str, str], uri: str, spool: Path, seconds: float) -> list[str]:
    """Start next processes, one after the other, until the spool is empty or ``seconds`` pass:
    a backlog left by a long outage on a busy box takes more than one process's flush to replay."""
    deadline = time.monotonic() + seconds
    outputs = [_next_process_replays(env, uri)]
    while _spool_files(spool) and time.monotonic() < deadline:
        outputs.append(_next_process_replays(env, uri))
    if _spool_files(spool):
        outputs.append(f"{len(_spool_files(spool))} spool files left after {seconds:g} s")
    return outputs


def _spooled_request_ids(spool: Path) -> set[str]:
    """The OpenAI request ids of call records still waiting in the spool (not lost: the next
    process that starts with this spool dir delivers them)."""
    ids: set[str] = set()
    for path in _spool_files(spool):
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("kind") == "call":
                    ids.update(str(r) for r in record.get("request_ids") or ())
    return ids


def _wait_for_records(uri: str, expected: int, timeout: float) -> Counter[str]:
    deadline = time.monotonic() + timeout
    seen: Counter[str] = Counter()
    while time.monotonic() < deadline:
        seen = _recorded_request_ids(uri)
        if sum(seen.values()) >= expected:
            break
        time.sleep(3)
    return seen


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the run --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=24.0, help="requests per second, both apps")
    parser.add_argument("--users", type=int, default=32, help="concurrent requests at most")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--outage", type=float, default=10.0, help="seconds MLflow stays down")
    parser.add_argument(
        "--drain", type=float, default=900.0, help="seconds next processes may take to replay the spool"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="tracked-openai-soak-"))
    print(f"soak: {args.minutes:g} min, {args.rate:g} req/s, {args.users} users, work dir {work}", flush=True)
    mlflow = MlflowServer(work / "mlflow")
    mlflow.start()
    try:
        return _soak(args, work, mlflow)
    finally:
        try:
            mlflow.stop()
        except SystemExit as exc:
            print(exc, file=sys.stderr)


def _soak(args: argparse.Namespace, work: Path, mlflow: MlflowServer) -> int:
    log = work / "gunicorn.log"
    fake_on, served = _fake_server()
    fake_off, _ = _fake_server()
    common = {"SOAK_WORKERS": str(args.workers), "TRACKED_OPENAI_SPOOL_DIR": str(work / "spool")}
    apps = {
        "on": App(
            "tracked", {**common, "MLFLOW_TRACKING_URI": mlflow.url, "SOAK_OPENAI_URL": fake_on.base_url}
        ),
        "off": App("untracked", {**common, "MLFLOW_ENABLED": "false", "SOAK_OPENAI_URL": fake_off.base_url}),
    }
    events: list[str] = []
    killed: dict[str, Any] = {}
    try:
        for app in apps.values():
            app.start(log)
        for app in apps.values():
            app.wait_ready()
        time.sleep(3)  # workers' exporters start off the request path (post_fork)
        rss_start = {pid: _rss_mib(pid) for pid in apps["on"].workers()}
        seconds = args.minutes * 60
        t0 = time.monotonic()

        def at(fraction: float, what: str, action: Any) -> threading.Timer:
            def fire() -> None:
                action()
                events.append(f"{time.monotonic() - t0:7.1f} s  {what}")

            timer = threading.Timer(seconds * fraction, fire)
            timer.daemon = True
            timer.start()
            return timer

        def kill_worker() -> None:
            victims = apps["on"].workers()
            if victims:
                pid = random.choice(victims)
                killed.update(pid=pid, at=time.monotonic())
                os.kill(pid, signal.SIGKILL)

        def mlflow_outage() -> None:
            mlflow.kill()
            time.sleep(args.outage)
            mlflow.start()

        assert apps["on"].proc is not None
        on_proc = apps["on"].proc
        timers = [
            at(0.3, "SIGHUP: tracked app reloads its workers", lambda: on_proc.send_signal(signal.SIGHUP)),
            at(0.5, "SIGKILL: one tracked worker", kill_worker),
            at(0.7, f"MLflow server SIGKILLed, restarted after {args.outage:g} s", mlflow_outage),
        ]
        load = Load()
        asyncio.run(_drive(apps, seconds, args.rate, args.users, load))
        for timer in timers:
            timer.join()
        rss_end = {pid: _rss_mib(pid) for pid in apps["on"].workers()}
        for app in apps.values():
            app.stop()
        served_count = len(served)
        stop_time = time.monotonic()
        # What a worker could not deliver before it exited (MLflow down or slow at that moment)
        # is in the spool; in production the next worker process replays it when it starts. The
        # harness starts no more workers, so it runs that next process itself.
        replayed = _drain_spool(apps["on"].env, mlflow.url, work / "spool", args.drain)
        seen = _wait_for_records(mlflow.url, served_count, timeout=180)
        settle = time.monotonic() - stop_time
        still_spooled = _spooled_request_ids(work / "spool")
    finally:
        for app in apps.values():
            app.stop()
        fake_on.stop()
        fake_off.stop()

    served_ids = Counter(rid for rid, _, _ in served)
    pid_of = {rid: pid for rid, pid, _ in served}
    once = sum(1 for rid in served_ids if seen.get(rid) == 1)
    duplicated = sum(1 for rid in served_ids if seen.get(rid, 0) > 1)
    missing = [rid for rid in served_ids if rid not in seen]
    in_killed = [rid for rid in missing if pid_of.get(rid) == killed.get("pid")]
    # Not lost: still in the spool when the drain deadline passed; the next process delivers it.
    in_spool = [rid for rid in missing if rid in still_spooled and rid not in in_killed]
    unexplained = len(missing) - len(in_killed) - len(in_spool)
    stray = sum(1 for rid in seen if rid not in served_ids)
    on, off = load.latencies["on"], load.latencies["off"]
    figures = {
        "minutes": args.minutes,
        "requests_sent": dict(load.sent),
        "requests_failed": dict(load.failures),
        "calls_served": served_count,
        "recorded_exactly_once": once,
        "duplicated": duplicated,
        "missing": len(missing),
        "missing_in_killed_worker": len(in_killed),
        "missing_still_in_spool": len(in_spool),
        "missing_unexplained": unexplained,
        "records_not_served": stray,
        "seconds_until_all_readable_after_stop": round(settle, 1),
        "latency_ms": {
            "on": {"p50": _pct(on, 0.5) * 1000, "p99": _pct(on, 0.99) * 1000},
            "off": {"p50": _pct(off, 0.5) * 1000, "p99": _pct(off, 0.99) * 1000},
        },
        "rss_mib_start": rss_start,
        "rss_mib_end": rss_end,
        "events": events,
        "replay_process": replayed,
    }
    lat = figures["latency_ms"]
    print()
    print("events:")
    for line in events:
        print("  " + line)
    print(f"requests sent       on {load.sent['on']:>7}   off {load.sent['off']:>7}")
    print(
        f"requests failed     on {load.failures['on']:>7}   off {load.failures['off']:>7}"
        "   (the killed worker's and reload's connections)"
    )
    print(f"spool replayed by next processes: {replayed}")
    print(f"calls served (tracked app)      {served_count}")
    print(f"recorded exactly once           {once}")
    print(f"duplicated                      {duplicated}")
    print(
        f"missing                         {len(missing)}  (served to the killed worker: {len(in_killed)};"
        f" still in the spool, not yet delivered: {len(in_spool)}; unexplained: {unexplained})"
    )
    print(f"records with no served call     {stray}")
    print(f"all readable after stop         {settle:.1f} s")
    print(
        f"latency p50  on {lat['on']['p50']:7.1f} ms  off {lat['off']['p50']:7.1f} ms"
        f"  ratio {lat['on']['p50'] / lat['off']['p50']:.3f}"
    )
    print(
        f"latency p99  on {lat['on']['p99']:7.1f} ms  off {lat['off']['p99']:7.1f} ms"
        f"  ratio {lat['on']['p99'] / lat['off']['p99']:.3f}"
    )
    rs = [v for v in rss_start.values() if v]
    re_ = [v for v in rss_end.values() if v]
    if rs and re_:
        print(
            f"RSS per tracked worker  start median {statistics.median(rs):.0f} MiB"
            f"  end median {statistics.median(re_):.0f} MiB  (max {max(re_):.0f};"
            f" workers recycle every ~{os.environ.get('SOAK_MAX_REQUESTS', '400')} requests)"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 1 if duplicated or unexplained or stray else 0


if __name__ == "__main__":
    raise SystemExit(main())
