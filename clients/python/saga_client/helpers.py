"""``publish`` and ``start``: one call each, in the caller's transaction."""

from __future__ import annotations

import json
from typing import Any, Optional, Union

import psycopg

Executor = Union["psycopg.Connection[Any]", "psycopg.Cursor[Any]"]


def publish(
    conn: Executor,
    event_type: str,
    payload: Any = None,
    *,
    correlation_id: Optional[str] = None,
    causation_id: Optional[int] = None,
    key: Optional[str] = None,
    idempotency_key: Optional[str] = None,
    traceparent: Optional[str] = None,
) -> int:
    """Publish a domain event with ``saga.publish``; return the event id.

    Runs in ``conn``'s current transaction: publish in the transaction that writes your own rows
    and both commit or roll back together (commit is yours; an autocommit connection commits at
    once).  The same ``idempotency_key`` for the same event type returns the first event's id.
    ``causation_id`` is the id of the event being handled (``task.event_id``).
    """
    row = conn.execute(
        "SELECT saga.publish(event_type => %s::text, payload => %s::jsonb,"
        " correlation_id => %s::text, causation_id => %s::bigint, key => %s::text,"
        " idempotency_key => %s::text, traceparent => %s::text)",
        (event_type, json.dumps({} if payload is None else payload), correlation_id,
         causation_id, key, idempotency_key, traceparent),
        prepare=False,  # the caller's connection may go through PgBouncer in transaction mode
    ).fetchone()
    assert row is not None
    return int(row[0])


def start(
    conn: Executor,
    name: str,
    input: Any = None,
    *,
    correlation_id: Optional[str] = None,
    idempotency_key: Optional[str] = None,
    traceparent: Optional[str] = None,
) -> int:
    """Start a saga with ``saga.start``; return the saga id.

    Runs in ``conn``'s current transaction, like :func:`publish`.  Starting again with the same
    ``name`` and ``idempotency_key`` returns the first saga's id.
    """
    row = conn.execute(
        "SELECT saga.start(name => %s::text, input => %s::jsonb, correlation_id => %s::text,"
        " idempotency_key => %s::text, traceparent => %s::text)",
        (name, json.dumps({} if input is None else input), correlation_id, idempotency_key,
         traceparent),
        prepare=False,  # the caller's connection may go through PgBouncer in transaction mode
    ).fetchone()
    assert row is not None
    return int(row[0])
