"""The Worker against a live server: completion, failures, crashes, lost connections, leases,
wake-ups and shutdown."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List

import psycopg
import pytest
from conftest import listening, scalar, wait_for, wait_status

from saga_client import PermanentError, RetryableError, Task, TaskCancelled, start

HERE = os.path.dirname(os.path.abspath(__file__))


def define(db: Any, name: str, steps: List[Dict[str, Any]]) -> None:
    db.execute("SELECT saga.define(%s, %s::jsonb)", (name, json.dumps({"steps": steps})))


def history(db: Any, saga_id: int) -> List[str]:
    return [r[0] for r in db.execute(
        "SELECT event FROM saga.history WHERE saga_id = %s ORDER BY at, event", (saga_id,))]


def step_run(db: Any, saga_id: int, step: str) -> Dict[str, Any]:
    row = db.execute("SELECT status, attempts, result, error FROM saga.step_runs"
                     " WHERE saga_id = %s AND step = %s", (saga_id, step)).fetchone()
    return dict(zip(("status", "attempts", "result", "error"), row))


def test_handlers_complete_tasks(db: Any, workers: Any, uniq: str) -> None:
    define(db, uniq, [{"name": "charge", "topic": f"{uniq}_pay"},
                      {"name": "ship", "topic": f"{uniq}_ship"}])
    seen: List[Task] = []

    def charge(task: Task) -> Dict[str, Any]:
        seen.append(task)
        return {"payment_id": f"p_{task.payload['input']['n']}"}

    def ship(task: Task) -> Dict[str, Any]:
        seen.append(task)
        return {"paid_with": task.payload["results"]["charge"]["payment_id"]}

    workers({f"{uniq}_pay": charge, f"{uniq}_ship": ship}, concurrency=3, batch=4)
    ids = [start(db, uniq, {"n": n}, correlation_id=f"{uniq}-{n}") for n in range(6)]
    for n, saga_id in enumerate(ids):
        wait_status(db, saga_id, "completed")
        assert step_run(db, saga_id, "ship")["result"] == {"paid_with": f"p_{n}"}
    first = next(t for t in seen if t.saga_id == ids[0] and t.step == "charge")
    assert (first.kind, first.attempt, first.correlation_id) == ("action", 1, f"{uniq}-0")
    assert first.idempotency_key and first.traceparent and first.lease >= 1
    assert len(seen) == 12


def test_permanent_error_compensates(db: Any, workers: Any, uniq: str) -> None:
    define(db, uniq, [{"name": "charge", "topic": f"{uniq}_pay",
                       "compensate": {"topic": f"{uniq}_refund"}},
                      {"name": "reserve", "topic": f"{uniq}_stock"}])
    refunds: List[Task] = []

    def reserve(task: Task) -> None:
        raise PermanentError("out of stock", details={"sku": "gadget"})

    def refund(task: Task) -> Dict[str, Any]:
        refunds.append(task)
        return {"refunded": task.payload["results"]["charge"]["payment_id"]}

    workers({f"{uniq}_pay": lambda t: {"payment_id": "p_1"}, f"{uniq}_stock": reserve,
             f"{uniq}_refund": refund})
    saga_id = start(db, uniq, {})
    wait_status(db, saga_id, "compensated")
    run = step_run(db, saga_id, "reserve")
    assert run["status"] == "failed" and run["attempts"] == 1
    assert run["error"] == {"type": "PermanentError", "message": "out of stock",
                            "details": {"sku": "gadget"}}
    assert [(t.kind, t.step) for t in refunds] == [("compensate", "charge")]
    assert step_run(db, saga_id, "charge")["status"] == "compensated"


@pytest.mark.parametrize("error", [RetryableError("gateway timeout"), ValueError("a bug")],
                         ids=["RetryableError", "unexpected-exception"])
def test_retryable_failure_is_retried(db: Any, workers: Any, uniq: str,
                                      error: Exception) -> None:
    define(db, uniq, [{"name": "charge", "topic": f"{uniq}_pay", "retry": {
        "max_attempts": 3, "initial_delay": "100 milliseconds", "jitter": False}}])
    attempts: List[int] = []

    def charge(task: Task) -> Dict[str, Any]:
        attempts.append(task.attempt)
        if task.attempt == 1:
            raise error
        return {"ok": True}

    workers({f"{uniq}_pay": charge}, poll_interval=10.0)  # the retry's wake-up is a NOTIFY
    saga_id = start(db, uniq, {})
    wait_status(db, saga_id, "completed")
    assert attempts == [1, 2]
    assert step_run(db, saga_id, "charge")["attempts"] == 2
    error_doc = scalar(db, "SELECT detail -> 'error' FROM saga.history WHERE saga_id = %s"
                           " AND event = 'retry_scheduled'", saga_id)
    assert error_doc["type"] == type(error).__name__
    assert error_doc["message"] == str(error)
    assert ("traceback" in error_doc) == (not isinstance(error, RetryableError))


def test_crashed_handler_lease_lapses_and_another_instance_finishes(
        db: Any, workers: Any, uniq: str, tmp_path: Any) -> None:
    topic = f"{uniq}_pay"
    define(db, uniq, [{"name": "charge", "topic": topic}])
    marker = tmp_path / "started"
    env = dict(os.environ, SAGA_TEST_DSN=os.environ.get("SAGA_TEST_DSN", ""))
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "crashy_worker.py"), topic,
                             f"{uniq}-crashy", str(marker)], env=env)
    try:
        saga_id = start(db, uniq, {"amount": 5})
        wait_for(marker.exists, 15, "the first instance's handler to start")
        proc.send_signal(signal.SIGKILL)   # kill -9 mid-task
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert marker.read_text() == "1"
    done: List[Task] = []
    workers({topic: lambda t: done.append(t) or {"by": "second"}}, name=f"{uniq}-second",
            lease=5.0)
    wait_status(db, saga_id, "completed")
    assert [t.attempt for t in done] == [2]
    assert step_run(db, saga_id, "charge")["result"] == {"by": "second"}
    assert "lease_lapsed" in history(db, saga_id)


def test_lost_connection_reconnects_and_carries_on(db: Any, workers: Any, uniq: str) -> None:
    topic = f"{uniq}_pay"
    define(db, uniq, [{"name": "charge", "topic": topic}])
    go = threading.Event()
    started = threading.Event()

    def charge(task: Task) -> Dict[str, Any]:
        if task.payload["input"]["n"] == 1:
            started.set()
            assert go.wait(15)
        return {"n": task.payload["input"]["n"]}

    name = f"{uniq}-w"
    workers({topic: charge}, name=name, lease=10.0, heartbeat_every=0.1, poll_interval=0.5)
    first = start(db, uniq, {"n": 1})
    assert started.wait(15)
    connections = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
    wait_for(lambda: scalar(db, connections, name) == 3, 10,
             "the claim, listen and report (heartbeat) connections")
    # every connection of the worker dies while the handler runs
    killed = scalar(db, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE application_name = %s", name)
    assert killed == 3
    go.set()   # its report goes through on a new connection, under the same lease
    wait_status(db, first, "completed")
    assert step_run(db, first, "charge")["attempts"] == 1
    second = start(db, uniq, {"n": 2})   # and it claims new work again
    wait_status(db, second, "completed")
    wait_for(lambda: listening(db, name), 10, "the worker to LISTEN again")


def test_report_under_a_lost_lease_is_dropped(db: Any, workers: Any, uniq: str,
                                              caplog: Any) -> None:
    topic = f"{uniq}_pay"
    define(db, uniq, [{"name": "charge", "topic": topic}])
    second_done = threading.Event()

    def charge(task: Task) -> Dict[str, Any]:
        if task.attempt == 1:
            assert second_done.wait(15)   # outlives its lease: no heartbeat before it ends
        else:
            second_done.set()
        return {"attempt": task.attempt}

    caplog.set_level(logging.DEBUG, logger="saga_client")
    workers({topic: charge}, concurrency=2, lease=0.5, heartbeat_every=60.0)
    saga_id = start(db, uniq, {})
    wait_status(db, saga_id, "completed")
    assert step_run(db, saga_id, "charge")["result"] == {"attempt": 2}
    wait_for(lambda: any("refused (the lease is lost)" in r.getMessage()
                         for r in caplog.records), 10, "the late report to be refused")
    assert sum("complete of task" in r.getMessage() and "refused" in r.getMessage()
               for r in caplog.records) == 1   # logged once, not retried


def test_heartbeat_keeps_a_long_task_leased(db: Any, workers: Any, uniq: str) -> None:
    topic = f"{uniq}_pay"
    define(db, uniq, [{"name": "charge", "topic": topic}])

    def slow(task: Task) -> Dict[str, Any]:
        time.sleep(3.0)   # three leases long
        return {"attempt": task.attempt}

    workers({topic: slow}, lease=1.0, heartbeat_every=0.25)
    saga_id = start(db, uniq, {})
    wait_status(db, saga_id, "completed", timeout=20)
    assert step_run(db, saga_id, "charge")["result"] == {"attempt": 1}
    assert "lease_lapsed" not in history(db, saga_id)


def test_cancelled_saga_sets_task_cancelled(db: Any, workers: Any, uniq: str) -> None:
    topic = f"{uniq}_pay"
    define(db, uniq, [{"name": "charge", "topic": topic}])
    running = threading.Event()
    seen: List[str] = []

    def charge(task: Task) -> None:
        running.set()
        task.cancelled.wait(15)
        seen.append(task.cancel_reason or "")
        task.check()   # raises TaskCancelled: fail(retryable => false), nothing done

    workers({topic: charge}, lease=2.0, heartbeat_every=0.2)
    saga_id = start(db, uniq, {})
    assert running.wait(15)
    db.execute("SELECT saga.cancel(%s, 'customer changed their mind')", (saga_id,))
    wait_status(db, saga_id, "cancelled")
    assert seen == ["saga_stopped"]
    wait_for(lambda: step_run(db, saga_id, "charge")["status"] == "failed", 10,
             "the step to record the cancelled handler's failure")
    assert step_run(db, saga_id, "charge")["error"]["type"] == TaskCancelled.__name__


def test_listen_wakes_the_worker_well_before_the_poll_interval(
        db: Any, workers: Any, uniq: str) -> None:
    topic = f"{uniq}_pay"
    define(db, uniq, [{"name": "charge", "topic": topic}])
    handled = threading.Event()
    name = f"{uniq}-w"
    workers({topic: lambda t: handled.set()}, name=name, poll_interval=30.0)
    wait_for(lambda: listening(db, name), 10, "the worker to LISTEN")
    time.sleep(0.2)   # it has claimed nothing and sleeps in select()
    t0 = time.monotonic()
    start(db, uniq, {})
    assert handled.wait(5), "not woken within 5 s (poll_interval is 30 s)"
    latency = time.monotonic() - t0
    assert latency < 1.0, f"woken after {latency:.3f} s"


def test_polling_fallback_without_listen(db: Any, workers: Any, uniq: str) -> None:
    topic = f"{uniq}_pay"
    define(db, uniq, [{"name": "charge", "topic": topic}])
    workers({topic: lambda t: {"polled": True}}, listen=False, poll_interval=0.3)
    saga_id = start(db, uniq, {})
    wait_status(db, saga_id, "completed", timeout=5)


def test_stop_releases_unstarted_tasks_and_finishes_running_ones(
        db: Any, workers: Any, uniq: str) -> None:
    topic = f"{uniq}_pay"
    define(db, uniq, [{"name": "charge", "topic": topic}])
    go = threading.Event()
    running = threading.Event()

    def charge(task: Task) -> Dict[str, Any]:
        running.set()
        assert go.wait(15)
        return {"finished_by": "first"}

    ids = [start(db, uniq, {"n": n}) for n in range(3)]
    worker = workers({topic: charge}, name=f"{uniq}-first", concurrency=1, batch=3, lease=30.0)
    assert running.wait(15)
    wait_for(lambda: scalar(db, "SELECT count(*) FROM saga.history WHERE event = 'claimed'"
                                " AND saga_id = ANY(%s)", ids) == 3, 10, "three claims")
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    # the two queued tasks come back at once, without waiting for their 30 s leases
    wait_for(lambda: scalar(db, "SELECT count(*) FROM saga.history WHERE event = 'released'"
                                " AND saga_id = ANY(%s)", ids) == 2, 10, "two releases")
    assert stopper.is_alive()   # still waiting for the running handler
    go.set()
    stopper.join(15)
    assert not stopper.is_alive()
    results = {}
    workers({topic: lambda t: {"finished_by": "second", "attempt": t.attempt}})
    for saga_id in ids:
        wait_status(db, saga_id, "completed")
        results[saga_id] = step_run(db, saga_id, "charge")["result"]
    assert sorted(r["finished_by"] for r in results.values()) == ["first", "second", "second"]


def test_sigterm_stops_run_gracefully(db: Any, uniq: str, tmp_path: Any) -> None:
    name = f"{uniq}-sig"
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "crashy_worker.py"),
                             f"{uniq}_idle", name, str(tmp_path / "m")],
                            stdout=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: listening(db, name), 15, "the worker process to LISTEN")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "stopped cleanly" in out
    assert scalar(db, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                  name) == 0


@pytest.mark.skipif(not os.environ.get("SAGA_TEST_PGDATA"),
                    reason="needs SAGA_TEST_PGDATA (test/scripts/python-client.sh sets it)")
def test_server_restart_reconnects_with_backoff(dsn: str, db: Any, workers: Any, uniq: str,
                                                caplog: Any) -> None:
    topic = f"{uniq}_pay"
    define(db, uniq, [{"name": "charge", "topic": topic}])
    caplog.set_level(logging.INFO, logger="saga_client")
    workers({topic: lambda t: {"n": t.payload["input"]["n"]}}, name=f"{uniq}-w",
            poll_interval=0.5, reconnect_max=0.5)
    first = start(db, uniq, {"n": 1})
    wait_status(db, first, "completed")
    pgdata = os.environ["SAGA_TEST_PGDATA"]
    log_file = os.environ.get("SAGA_TEST_SERVER_LOG", os.path.join(pgdata, "restart.log"))
    subprocess.run(["pg_ctl", "-D", pgdata, "-m", "fast", "-w", "stop"], check=True,
                   stdout=subprocess.DEVNULL)
    try:
        # while the server is down the worker's attempts fail, and it backs off
        wait_for(lambda: sum("retrying in" in r.getMessage() for r in caplog.records) >= 3,
                 15, "failed reconnection attempts")
    finally:
        subprocess.run(["pg_ctl", "-D", pgdata, "-l", log_file, "-w", "start"], check=True,
                       stdout=subprocess.DEVNULL)
    with psycopg.connect(dsn, autocommit=True) as conn:
        second = start(conn, uniq, {"n": 2})
        wait_status(conn, second, "completed")
        assert scalar(conn, "SELECT result FROM saga.step_runs WHERE saga_id = %s", second) == \
            {"n": 2}
