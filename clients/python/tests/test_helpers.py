"""publish() and start(): named arguments, idempotency keys, deliveries to a Worker."""

from __future__ import annotations

import threading
from typing import Any, List

import psycopg
from conftest import scalar, wait_for

from saga_client import Task, publish, start


def test_start_is_idempotent_and_keeps_its_arguments(db: Any, uniq: str) -> None:
    db.execute("SELECT saga.define(%s, '{\"steps\": [{\"name\": \"a\", \"topic\": \"py_idle\"}]}')",
               (uniq,))
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    first = start(db, uniq, {"order": 1}, correlation_id=f"{uniq}-c", idempotency_key=uniq,
                  traceparent=tp)
    again = start(db, uniq, {"order": 1}, idempotency_key=uniq)
    assert first == again
    row = db.execute("SELECT input, correlation_id, traceparent FROM saga.instances"
                     " WHERE id = %s", (first,)).fetchone()
    assert row == ({"order": 1}, f"{uniq}-c", tp)
    other = start(db, uniq)   # input defaults to {}
    assert other != first and scalar(db, "SELECT input FROM saga.instances WHERE id = %s",
                                      other) == {}


def test_start_in_the_callers_transaction(dsn: str, db: Any, uniq: str) -> None:
    db.execute("SELECT saga.define(%s, '{\"steps\": [{\"name\": \"a\", \"topic\": \"py_idle\"}]}')",
               (uniq,))
    with psycopg.connect(dsn) as conn:   # not autocommit: rolled back below
        saga_id = start(conn, uniq, {"x": 1})
        conn.rollback()
    assert scalar(db, "SELECT count(*) FROM saga.instances WHERE id = %s", saga_id) == 0


def test_publish_delivers_to_a_worker_once_per_idempotency_key(
        db: Any, workers: Any, uniq: str) -> None:
    topic = f"{uniq}_mail"
    event_type = f"{uniq.capitalize()}.Placed"
    db.execute("SELECT saga.subscribe(%s, %s)", (event_type, topic))
    got: List[Task] = []
    done = threading.Event()

    def on_event(task: Task) -> None:
        got.append(task)
        done.set()

    workers({topic: on_event})
    first = publish(db, event_type, {"order": 7}, correlation_id=f"{uniq}-7", key="7",
                    idempotency_key=f"{uniq}-7")
    again = publish(db, event_type, {"order": 7}, correlation_id=f"{uniq}-7",
                    idempotency_key=f"{uniq}-7")
    assert first == again
    assert done.wait(10)
    task = got[0]
    assert (task.kind, task.event_type, task.event_id, task.correlation_id, task.payload) == (
        "event", event_type, first, f"{uniq}-7", {"order": 7})
    assert task.saga_id is None and task.traceparent
    # a reaction caused by the delivery inherits its correlation id
    caused = publish(db, f"{event_type}.Ack", causation_id=task.event_id)
    assert scalar(db, "SELECT correlation_id FROM saga.events WHERE id = %s", caused) == \
        f"{uniq}-7"
    wait_for(lambda: scalar(db, "SELECT count(*) FROM saga.outbox WHERE topic = %s",
                            topic) == 0, 10, "the delivery to leave the outbox")
    assert len(got) == 1
