"""Connections that reopen themselves, and the backoff between attempts (internal)."""

from __future__ import annotations

import logging
import random
import threading
from typing import Any, Callable, Dict, Optional, TypeVar

import psycopg
from psycopg import errors as pgerrors

from .errors import ConnectionLost

log = logging.getLogger("saga_client")

T = TypeVar("T")

# SQLSTATEs after which the session is gone: connection exceptions, and the server shutting
# the backend down (pg_terminate_backend, a fast or immediate shutdown, a crash)
_GONE = ("57P01", "57P02", "57P03")


class Backoff:
    """Capped exponential backoff with jitter (each delay between half and all of its value)."""

    def __init__(self, initial: float = 0.1, maximum: float = 10.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self._n = 0

    def next(self) -> float:
        delay = min(self.maximum, self.initial * (2 ** min(self._n, 30)))
        self._n += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._n = 0


def connect(conninfo: str, kwargs: Dict[str, Any]) -> "psycopg.Connection[Any]":
    """An autocommit connection without server-side prepared statements (PgBouncer-safe)."""
    return psycopg.connect(conninfo, autocommit=True, prepare_threshold=None, **kwargs)


class Slot:
    """One autocommit connection, opened on first use and reopened after it broke.

    ``run(fn)`` calls ``fn(connection)`` under a lock, so threads can share the slot; a broken
    connection (or a failed connect) is closed and surfaces as :class:`ConnectionLost`, for the
    caller to retry after a backoff.  Other errors pass through unchanged.
    """

    def __init__(self, conninfo: str, kwargs: Dict[str, Any], role: str) -> None:
        self._conninfo = conninfo
        self._kwargs = kwargs
        self._role = role
        self._conn: Optional["psycopg.Connection[Any]"] = None
        self._lock = threading.Lock()
        self._ever = False

    def run(self, fn: Callable[["psycopg.Connection[Any]"], T]) -> T:
        with self._lock:
            try:
                conn = self._conn
                if conn is None or conn.closed or conn.broken:
                    self._drop()
                    conn = self._conn = connect(self._conninfo, self._kwargs)
                    if self._ever:
                        log.info("reconnected (%s connection)", self._role)
                    self._ever = True
                return fn(conn)
            except pgerrors.ObjectNotInPrerequisiteState:
                raise  # 55000 is an OperationalError, but the connection is fine
            except psycopg.OperationalError as exc:
                if self._is_gone(exc):
                    self._drop()
                    raise ConnectionLost(f"{self._role} connection: {exc}") from exc
                raise

    def _is_gone(self, exc: psycopg.Error) -> bool:
        conn = self._conn
        state = exc.sqlstate
        return (conn is None or conn.closed or conn.broken or state is None
                or state.startswith("08") or state in _GONE)

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection may fail; ignore
                pass
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._drop()
