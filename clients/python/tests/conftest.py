"""Fixtures: a database with saga installed, workers that stop after each test, polling helpers.

The database is the one of ``SAGA_TEST_DSN`` or of the libpq environment (``PGHOST``, ...);
``test/scripts/python-client.sh`` starts a throwaway cluster (saga preloaded, its background
worker serving ``postgres``) and runs these tests against it.  Without either, they are skipped.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from typing import Any, Callable, Iterator, List, Optional, TypeVar

import psycopg
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from saga_client import Worker  # noqa: E402

T = TypeVar("T")
DSN = os.environ.get("SAGA_TEST_DSN", "")
_counter = itertools.count(1)


def pytest_collection_modifyitems(config: Any, items: List[Any]) -> None:
    if not DSN and not os.environ.get("PGHOST"):
        skip = pytest.mark.skip(reason="no database: set SAGA_TEST_DSN or PGHOST, or run "
                                       "test/scripts/python-client.sh")
        for item in items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def dsn() -> str:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS saga")
    return DSN


@pytest.fixture
def db(dsn: str) -> Iterator["psycopg.Connection[Any]"]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def uniq() -> str:
    """A fresh prefix for this test's topics, definitions and keys."""
    return f"py{next(_counter)}_{os.getpid()}"


@pytest.fixture
def workers(dsn: str) -> Iterator[Callable[..., Worker]]:
    """``workers(handlers, **options)`` starts a Worker in a thread; all stop after the test."""
    started: List[Worker] = []

    def make(handlers: Any, **options: Any) -> Worker:
        options.setdefault("handle_signals", False)
        options.setdefault("poll_interval", 1.0)
        worker = Worker(dsn, handlers, **options)
        worker.start()
        started.append(worker)
        return worker

    yield make
    for worker in started:
        worker.stop()


def wait_for(fn: Callable[[], Optional[T]], timeout: float = 15.0, what: str = "condition",
             interval: float = 0.02) -> T:
    """Poll ``fn`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def scalar(conn: "psycopg.Connection[Any]", query: str, *params: Any) -> Any:
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def saga_status(conn: "psycopg.Connection[Any]", saga_id: int) -> str:
    return scalar(conn, "SELECT status FROM saga.instances WHERE id = %s", saga_id)


def wait_status(conn: "psycopg.Connection[Any]", saga_id: int, status: str,
                timeout: float = 15.0) -> None:
    wait_for(lambda: saga_status(conn, saga_id) == status, timeout,
             f"saga {saga_id} to be {status} (it is {saga_status(conn, saga_id)})")


def listening(conn: "psycopg.Connection[Any]", name: str) -> bool:
    """The worker called ``name`` has LISTENed and sits idle."""
    return bool(scalar(conn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                             " AND query LIKE 'LISTEN%%' AND state = 'idle'", name))
