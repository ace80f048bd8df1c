"""The shared ledger: what every process has spent and holds, per budget and window.

SQLAlchemy Core over a SQLite file (one host; WAL, every write transaction ``BEGIN IMMEDIATE`` so
reservations are atomic across processes) or PostgreSQL (several hosts; the budget's row in
``tracked_openai_budget_keys`` is locked ``FOR UPDATE`` for the length of one exchange).

Money is integer nano-dollars. Per budget key and window step (``bucket``), a row holds
``spent`` (settled cost reported by processes) and ``held`` (leased to processes and not yet
reported as spent or given back). A grant succeeds only while ``spent + held + grant <= limit``
over the window, so the sum of all processes' leases never passes the limit. A process that dies
holding a lease leaves it ``held`` until the window ends: budget unused, never overspent.

Every operation runs on one worker thread and the caller waits at most ``timeout`` seconds for
it; an operation that finishes after its caller gave up hands its grant back on the next one.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["DEFAULT_LEDGER_TIMEOUT", "Exchange", "Ledger", "LedgerUnavailableError", "default_ledger_url"]

T = TypeVar("T")
DEFAULT_LEDGER_TIMEOUT = 2.0


class LedgerUnavailableError(Exception):
    """The ledger did not answer in time or failed.

    ``pending``: the transaction was already running when the wait ran out, so it may still
    commit. What it reports must then not be sent again (it would be counted twice): the
    ``on_failed`` callback given with it says when it did not commit."""

    def __init__(self, message: str, pending: bool = False) -> None:
        super().__init__(message)
        self.pending = pending


def default_ledger_url() -> str:
    """``TRACKED_OPENAI_LEDGER_URL``, else a SQLite file in ``.tracked_openai/`` under the working
    directory (shared by every worker a process manager starts there)."""
    url = os.environ.get("TRACKED_OPENAI_LEDGER_URL")
    if url:
        return url
    path = os.path.abspath(os.path.join(".tracked_openai", "budget_ledger.sqlite"))
    return f"sqlite:///{path}"


@dataclass(frozen=True, slots=True)
class Report:
    """Deltas one process applies to one window row: ``spent += spent``, ``held -= released``."""

    bucket: str
    index: int
    spent: int
    released: int
    # Of ``released``, the unused lease handed back (kept to undo the report if it fails).
    returned: int = 0


@dataclass(frozen=True, slots=True)
class Exchange:
    """What the ledger answered: the grant (0 if refused) and the window's totals after it."""

    granted: int
    spent: int
    held: int


class Ledger:
    def __init__(self, url: str, timeout: float = DEFAULT_LEDGER_TIMEOUT) -> None:
        self.url = url
        self.timeout = timeout
        self.round_trips = 0
        self._engine: Any = None
        self._tables: Any = None
        self._pid = os.getpid()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tracked-openai-ledger")
        self._late_grants: list[tuple[str, str, int, int]] = []
        self._late_lock = threading.Lock()
        self._parent_engines: list[Any] = []

    # -- running operations with a deadline ----------------------------------------------------

    def _run(
        self,
        fn: Callable[[], T],
        on_late: Callable[[T], None] | None = None,
        timeout: float | None = None,
        on_failed: Callable[[], None] | None = None,
    ) -> T:
        """``fn()`` on the ledger thread; waits at most ``timeout`` (default: the ledger's). When
        the wait runs out with ``fn`` already running, it goes on: ``on_late(result)`` if it
        commits, ``on_failed()`` if it fails (see :class:`LedgerUnavailableError`)."""
        wait = self.timeout if timeout is None else timeout
        if os.getpid() != self._pid:  # forked: the parent's thread and connections are not ours
            self._after_fork()
        try:
            future: Future[T] = self._executor.submit(fn)
        except RuntimeError:
            # Interpreter exit (concurrent.futures stops taking work before atexit hooks run):
            # the last report runs here, bounded by the driver's own timeouts.
            try:
                return fn()
            except Exception as exc:
                raise LedgerUnavailableError(f"{type(exc).__name__}: {exc}") from exc
        try:
            return future.result(wait)
        except FutureTimeout:
            if future.cancel():  # never started: nothing of it was applied
                raise LedgerUnavailableError(f"no answer within {wait:.3g}s") from None

            def late(f: Future[T]) -> None:
                if f.exception() is None:
                    if on_late is not None:
                        on_late(f.result())
                elif on_failed is not None:
                    on_failed()

            future.add_done_callback(late)
            raise LedgerUnavailableError(f"no answer within {wait:.3g}s", pending=True) from None
        except LedgerUnavailableError:
            raise
        except Exception as exc:
            raise LedgerUnavailableError(f"{type(exc).__name__}: {exc}") from exc

    def _after_fork(self) -> None:
        self._pid = os.getpid()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tracked-openai-ledger")
        if self._engine is not None:
            # Never closed nor disposed here: the parent's connections share its sockets and
            # files (closing them would end the parent's), and disposing takes the pool's lock,
            # which a parent thread may have held at the fork. Kept referenced, never used.
            self._parent_engines.append(self._engine)
            self._engine = None
        self._late_grants = []
        self._late_lock = threading.Lock()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._engine is not None and os.getpid() == self._pid:
            self._engine.dispose()

    # -- engine and tables ---------------------------------------------------------------------

    def _connect(self) -> Any:
        """Worker thread: the engine, built once (imports SQLAlchemy; creates the tables)."""
        if self._engine is not None:
            return self._engine
        import sqlalchemy as sa

        url = sa.engine.make_url(self.url)
        timeout = max(self.timeout, 0.05)
        if url.get_backend_name() == "sqlite":
            if url.database and url.database != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(url.database)), exist_ok=True)
            engine = sa.create_engine(url, connect_args={"timeout": timeout, "check_same_thread": False})

            @sa.event.listens_for(engine, "connect")
            def _on_connect(dbapi_conn: Any, _record: Any) -> None:
                # Transactions are ours (BEGIN IMMEDIATE below), not the driver's.
                dbapi_conn.isolation_level = None
                dbapi_conn.execute("PRAGMA journal_mode=WAL")
                dbapi_conn.execute("PRAGMA synchronous=NORMAL")
                dbapi_conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")

            @sa.event.listens_for(engine, "begin")
            def _on_begin(conn: Any) -> None:
                # Takes the write lock at once: two processes never both read then both grant.
                conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            # SQLAlchemy 2.1 defaults to psycopg 3; MLflow's deployments often have psycopg2.
            if url.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None:
                url = url.set(drivername="postgresql+psycopg2")
            ms = int(timeout * 1000)
            engine = sa.create_engine(
                url,
                pool_pre_ping=True,
                connect_args={
                    "connect_timeout": max(1, int(timeout + 0.999)),
                    "options": f"-c statement_timeout={ms} -c lock_timeout={ms}",
                },
            )
        meta = sa.MetaData()
        keys = sa.Table(
            "tracked_openai_budget_keys",
            meta,
            sa.Column("key", sa.String(512), primary_key=True),
            sa.Column("limit_nano", sa.BigInteger, nullable=False),
            sa.Column("updated_at", sa.Float, nullable=False),
        )
        windows = sa.Table(
            "tracked_openai_budget_windows",
            meta,
            sa.Column("key", sa.String(512), primary_key=True),
            sa.Column("bucket", sa.String(64), primary_key=True),
            sa.Column("idx", sa.BigInteger, nullable=False),
            sa.Column("spent", sa.BigInteger, nullable=False),
            sa.Column("held", sa.BigInteger, nullable=False),
        )
        alerts = sa.Table(
            "tracked_openai_budget_alerts",
            meta,
            sa.Column("key", sa.String(512), primary_key=True),
            sa.Column("bucket", sa.String(64), primary_key=True),
            sa.Column("threshold", sa.String(32), primary_key=True),
            sa.Column("fired_at", sa.Float, nullable=False),
        )
        for attempt in range(3):
            try:
                meta.create_all(engine, checkfirst=True)
                break
            except sa.exc.SQLAlchemyError:
                # Another process created them between our check and our CREATE.
                if attempt == 2:
                    raise
                time.sleep(0.05)
        self._tables = (keys, windows, alerts)
        self._engine = engine
        return engine

    def _insert_ignore(self, conn: Any, table: Any, values: dict[str, Any]) -> bool:
        """Insert a row unless its key exists; whether it was inserted."""
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
        result = conn.execute(insert(table).values(**values).on_conflict_do_nothing())
        return bool(result.rowcount)

    # -- operations ----------------------------------------------------------------------------

    def open(self) -> None:
        """Connect and create the tables (warm-up, off the caller's path)."""
        self._run(self._connect)

    def exchange(
        self,
        key: str,
        limit_nano: int,
        bucket: str,
        index: int,
        rolling: bool,
        reports: Sequence[Report] = (),
        want: int = 0,
        need: int = 0,
        timeout: float | None = None,
        on_failed: Callable[[], None] | None = None,
    ) -> Exchange:
        """Apply this process's ``reports``, then grant ``want`` (if at least ``need`` fits under
        the limit, else nothing), in one transaction. The caller waits at most ``timeout``;
        ``on_failed``: see :class:`LedgerUnavailableError`."""
        with self._late_lock:
            late, self._late_grants = (
                [g for g in self._late_grants if g[0] == key],
                [g for g in self._late_grants if g[0] != key],
            )
        reports = [*reports, *(Report(b, i, 0, amount) for _, b, i, amount in late)]

        def run() -> Exchange:
            return self._exchange(key, limit_nano, bucket, index, rolling, reports, want, need)

        def on_late(result: Exchange) -> None:
            # Granted after the caller gave up: nobody holds it; give it back next time.
            if result.granted:
                with self._late_lock:
                    self._late_grants.append((key, bucket, index, result.granted))

        def retry_returns() -> None:
            with self._late_lock:  # the returns of earlier late grants are retried next time
                self._late_grants.extend(late)

        def failed_late() -> None:
            retry_returns()
            if on_failed is not None:
                on_failed()

        self.round_trips += 1
        try:
            return self._run(run, on_late, timeout, failed_late)
        except LedgerUnavailableError as exc:
            if not exc.pending:  # not applied (the caller puts its own reports back)
                retry_returns()
            raise

    def _exchange(
        self,
        key: str,
        limit_nano: int,
        bucket: str,
        index: int,
        rolling: bool,
        reports: Sequence[Report],
        want: int,
        need: int,
    ) -> Exchange:
        import sqlalchemy as sa

        engine = self._connect()
        _, windows, _ = self._tables
        with engine.begin() as conn:
            spent, held = self._apply(conn, key, limit_nano, bucket, index, rolling, reports, lock=True)
            granted = 0
            if want > 0:
                room = limit_nano - spent - held
                if room >= need:
                    granted = min(want, room)
                    self._insert_ignore(
                        conn, windows, {"key": key, "bucket": bucket, "idx": index, "spent": 0, "held": 0}
                    )
                    conn.execute(
                        sa.update(windows)
                        .where(windows.c.key == key, windows.c.bucket == bucket)
                        .values(held=windows.c.held + granted)
                    )
                    held += granted
        return Exchange(granted, spent, held)

    def _apply(
        self,
        conn: Any,
        key: str,
        limit_nano: int,
        bucket: str,
        index: int,
        rolling: bool,
        reports: Sequence[Report],
        lock: bool,
    ) -> tuple[int, int]:
        """In ``conn``'s transaction: the key's row (locked if ``lock``: a grant follows), the
        reports applied; the window's spent and held after them."""
        import sqlalchemy as sa

        keys, windows, _ = self._tables
        now = time.time()
        self._insert_ignore(conn, keys, {"key": key, "limit_nano": limit_nano, "updated_at": now})
        if lock and conn.dialect.name == "postgresql":
            conn.execute(sa.select(keys.c.key).where(keys.c.key == key).with_for_update())
        conn.execute(sa.update(keys).where(keys.c.key == key).values(limit_nano=limit_nano, updated_at=now))
        for r in reports:
            self._insert_ignore(
                conn, windows, {"key": key, "bucket": r.bucket, "idx": r.index, "spent": 0, "held": 0}
            )
            conn.execute(
                sa.update(windows)
                .where(windows.c.key == key, windows.c.bucket == r.bucket)
                .values(
                    spent=windows.c.spent + r.spent,
                    held=sa.case((windows.c.held > r.released, windows.c.held - r.released), else_=0),
                )
            )
        in_window = [windows.c.key == key]
        if rolling:
            from ._model import ROLLING_STEPS

            in_window.append(windows.c.idx > index - ROLLING_STEPS - 1)
            in_window.append(windows.c.bucket.like("r%"))
        else:
            in_window.append(windows.c.bucket == bucket)
        row = conn.execute(
            sa.select(
                sa.func.coalesce(sa.func.sum(windows.c.spent), 0),
                sa.func.coalesce(sa.func.sum(windows.c.held), 0),
            ).where(*in_window)
        ).one()
        return int(row[0]), int(row[1])

    def report_many(
        self,
        items: Sequence[tuple[str, int, str, int, bool, Report]],
        on_failed: Callable[[], None] | None = None,
    ) -> list[tuple[int, int]]:
        """Apply many keys' reports ``(key, limit, bucket, index, rolling, report)`` in one
        transaction (one round trip); each key's window spent and held after it. ``on_failed``:
        see :class:`LedgerUnavailableError`."""

        def run() -> list[tuple[int, int]]:
            engine = self._connect()
            with engine.begin() as conn:
                return [
                    self._apply(conn, key, limit, bucket, index, rolling, [report], lock=False)
                    for key, limit, bucket, index, rolling, report in items
                ]

        self.round_trips += 1
        return self._run(run, None, None, on_failed)

    def claim_alert(self, key: str, bucket: str, threshold: str) -> bool:
        """Whether this process is the first to claim the alert (the one that sends it)."""

        def run() -> bool:
            engine = self._connect()
            _, _, alerts = self._tables
            with engine.begin() as conn:
                return self._insert_ignore(
                    conn,
                    alerts,
                    {"key": key, "bucket": bucket, "threshold": threshold, "fired_at": time.time()},
                )

        self.round_trips += 1
        return self._run(run)

    def rows(self) -> list[dict[str, Any]]:
        """Every window row with its budget's limit (for ``tracked-openai budgets``)."""

        def run() -> list[dict[str, Any]]:
            import sqlalchemy as sa

            engine = self._connect()
            keys, windows, _ = self._tables
            with engine.connect() as conn:
                result = conn.execute(
                    sa.select(
                        windows.c.key,
                        windows.c.bucket,
                        windows.c.idx,
                        windows.c.spent,
                        windows.c.held,
                        keys.c.limit_nano,
                    )
                    .join(keys, keys.c.key == windows.c.key)
                    .order_by(windows.c.key, windows.c.idx, windows.c.bucket)
                )
                return [dict(r._mapping) for r in result]

        return self._run(run)
