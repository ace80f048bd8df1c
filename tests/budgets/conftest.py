from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

PG_URL = "postgresql://postgres@127.0.0.1:5432/"


def _pg_available() -> str | None:
    try:
        import psycopg2

        psycopg2.connect(PG_URL + "postgres", connect_timeout=2).close()
    except Exception as exc:
        return f"PostgreSQL not reachable at {PG_URL} ({type(exc).__name__})"
    return None


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    return f"sqlite:///{tmp_path}/ledger.sqlite"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own, dropped afterwards."""
    reason = _pg_available()
    if reason:
        pytest.skip(reason)
    import psycopg2

    name = f"tracked_openai_budgets_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(PG_URL + "postgres")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_URL + name
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))
