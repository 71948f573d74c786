"""The worker loop of the leased claim (README, "Worker protocol 2"), once, for every service.

Threads and connections of one :class:`Worker`:

- the thread that calls :meth:`Worker.run` claims tasks (``saga.claim``, connection "claim") and
  waits for work on a dedicated connection that LISTENs on ``saga_<topic>`` (connection
  "listen"), with ``poll_interval`` as the fallback: it sleeps in ``select()``, never in a busy
  loop, and is woken early when a handler finishes or :meth:`Worker.stop` is called;
- ``concurrency`` handler threads run the handlers and report (``saga.complete``/``saga.fail``
  under the lease) on the shared connection "report";
- one heartbeat thread extends the lease of every task held (queued or running) every
  ``heartbeat_every`` on that same connection.

A task is never lost silently: whatever this process fails to report (a crash, a connection that
does not come back before the lease ends, a handler still running at the shutdown timeout), its
lease lapses and the engine delivers it again as its next attempt.
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import signal
import socket
import threading
import time
import traceback
from collections import deque
from datetime import datetime, timedelta
from typing import (Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, TypeVar, Union,
                    cast)

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from ._conn import Backoff, Slot, connect
from .errors import ConnectionLost, PermanentError, TaskError
from .task import Task

log = logging.getLogger("saga_client")

Handler = Callable[[Task], Any]
"""A handler takes the task and returns a JSON-able result (None stands for ``{}``)."""
H = TypeVar("H", bound=Handler)

Seconds = Union[float, int, timedelta]

_TOPIC = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
_CLAIM = ("SELECT id, topic, kind, saga_id, step, attempt, lease, payload, headers,"
          " lease_expires_at FROM saga.claim(topic => %s::text, worker => %s::text,"
          " max_tasks => %s::int, lease => %s::interval)")
_COMPLETE = "SELECT saga.complete(task_id => %s::bigint, result => %s::jsonb, lease => %s::int)"
_FAIL = ("SELECT saga.fail(task_id => %s::bigint, error => %s::jsonb,"
         " retryable => %s::boolean, lease => %s::int)")
_HEARTBEAT = "SELECT saga.heartbeat(task_id => %s::bigint, lease => %s::int)"
_RELEASE = "SELECT saga.release(task_id => %s::bigint, lease => %s::int)"
_TRACEBACK_MAX = 4000  # characters of traceback kept in the error document


def _seconds(value: Seconds) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _json(value: Any) -> str:
    # NaN and Infinity are not JSON: the server would refuse the report, the lease would lapse
    # and the task be done again; better a clear error now
    return json.dumps(value, default=str, allow_nan=False)


def _scalar(conn: "psycopg.Connection[Any]", query: str, params: Sequence[Any]) -> object:
    row = conn.execute(query, params).fetchone()
    return None if row is None else cast(object, row[0])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def error_document(exc: BaseException) -> Dict[str, Any]:
    """The JSON error stored for a failed task: ``type``, ``message``, and ``details`` when the
    exception is a :class:`TaskError` that has them, or the (cut) ``traceback`` of an
    unexpected exception."""
    doc: Dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, TaskError):
        if exc.details is not None:
            doc["details"] = exc.details
    else:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        doc["traceback"] = text[-_TRACEBACK_MAX:]
    return doc


class Worker:
    """Serves one or more topics with handler functions (the leased claim).

    ::

        worker = Worker("dbname=shop", name="payments-1", lease=timedelta(seconds=30))

        @worker.handler("payments")
        def charge(task: Task) -> dict:
            ...
            return {"payment_id": "p_1"}

        worker.run()          # until stop() or SIGTERM/SIGINT

    Arguments:

    - ``conninfo``: libpq connection string (or ``""`` for the ``PG*`` environment);
      ``connect_kwargs`` more connection parameters (``application_name`` defaults to ``name``).
    - ``handlers``: ``{topic: handler}``; or register them with :meth:`handler`.
    - ``name``: the worker name recorded with each claim (default ``host-pid``).
    - ``concurrency``: handler threads (default 1).  ``batch``: tasks held at once, queued or
      running (default ``concurrency``); claims ask for ``batch`` minus what is held.  Queued tasks
      are heartbeated too, and released on shutdown.
    - ``lease``: the lease each claim asks for; ``heartbeat_every``: default a third of it.
    - ``poll_interval``: how long to wait for a notification before claiming anyway.
    - ``listen``: True (LISTEN on ``conninfo``), a separate conninfo for the LISTEN connection
      (a direct one when ``conninfo`` goes through PgBouncer in transaction mode), or False
      (poll only).
    - ``shutdown_timeout``: how long :meth:`stop` waits for running handlers.
    - ``reconnect_max``: the longest wait between reconnection attempts.
    - ``handle_signals``: :meth:`run` in the main thread stops on SIGTERM and SIGINT.
    """

    def __init__(
        self,
        conninfo: str = "",
        handlers: Optional[Mapping[str, Handler]] = None,
        *,
        name: Optional[str] = None,
        concurrency: int = 1,
        batch: Optional[int] = None,
        lease: Seconds = timedelta(seconds=30),
        heartbeat_every: Optional[Seconds] = None,
        poll_interval: Seconds = timedelta(seconds=5),
        listen: Union[bool, str] = True,
        shutdown_timeout: Seconds = timedelta(seconds=30),
        reconnect_max: Seconds = timedelta(seconds=10),
        handle_signals: bool = True,
        connect_kwargs: Optional[Mapping[str, Any]] = None,
    ) -> None:
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        self.batch = batch if batch is not None else concurrency
        if not 1 <= self.batch <= 1000:
            raise ValueError("batch must be between 1 and 1000")
        self.lease = timedelta(seconds=_seconds(lease))
        if self.lease <= timedelta(0):
            raise ValueError("lease must be positive")
        self.heartbeat_every = (_seconds(heartbeat_every) if heartbeat_every is not None
                                else self.lease.total_seconds() / 3)
        self.poll_interval = _seconds(poll_interval)
        self.shutdown_timeout = _seconds(shutdown_timeout)
        self.reconnect_max = _seconds(reconnect_max)
        self.handle_signals = handle_signals
        self._ran = False
        self._handlers: Dict[str, Handler] = {}
        for topic, fn in (handlers or {}).items():
            self.add_handler(topic, fn)

        kwargs: Dict[str, Any] = {"application_name": self.name[:63], "connect_timeout": 10}
        kwargs.update(connect_kwargs or {})
        self._kwargs = kwargs
        self._conninfo = conninfo
        self._listen_conninfo: Optional[str] = (
            None if listen is False else conninfo if listen is True else listen)
        self._claims = Slot(conninfo, kwargs, "claim")
        self._reports = Slot(conninfo, kwargs, "report")
        self._listener: Optional["psycopg.Connection[Any]"] = None

        self._cv = threading.Condition()
        self._queue: Deque[Task] = deque()      # claimed, not started
        self._held: Dict[int, Task] = {}        # claimed, not yet reported or released
        self._closing = False                   # handler threads take no more tasks
        self._stopping = threading.Event()      # stop claiming
        self._hb_stop = threading.Event()
        self._abandon = threading.Event()       # shutdown timed out: stop retrying reports
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._threads: List[threading.Thread] = []
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self._next_topic = 0

    # --- registration ----------------------------------------------------------------------

    @property
    def topics(self) -> List[str]:
        """The topics served, in registration order."""
        return list(self._handlers)

    def add_handler(self, topic: str, fn: Handler) -> None:
        """Serve ``topic`` with ``fn`` (before :meth:`run`)."""
        if self._ran:
            raise RuntimeError("handlers must be added before the worker runs")
        if not _TOPIC.match(topic):
            raise ValueError(f"invalid topic {topic!r}: must match {_TOPIC.pattern}")
        self._handlers[topic] = fn

    def handler(self, topic: str) -> Callable[[H], H]:
        """Decorator: ``@worker.handler("payments")`` serves the topic with the function."""
        def register(fn: H) -> H:
            self.add_handler(topic, fn)
            return fn
        return register

    # --- life cycle --------------------------------------------------------------------------

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> "Worker":
        """Run in a background thread; :meth:`stop` (or leaving the ``with`` block) ends it."""
        if self._thread is not None:
            raise RuntimeError("the worker was started already")
        self._thread = threading.Thread(target=self._run_in_thread, daemon=True,
                                        name=f"saga-worker {self.name}")
        self._thread.start()
        return self

    def _run_in_thread(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # noqa: BLE001 - handed to stop()
            self._error = exc
            log.exception("worker %s stopped on an error", self.name)

    def stop(self, wait: bool = True) -> None:
        """Stop claiming, release the tasks not started, let running handlers finish (up to
        ``shutdown_timeout``).  With ``wait``, block until that is done when the worker runs in
        a thread of :meth:`start`, and re-raise the error that ended it, if any."""
        self._stopping.set()
        self._wake()
        thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()
            if self._error is not None:
                error, self._error = self._error, None
                raise error

    def run(self) -> None:
        """Serve the topics until :meth:`stop` (or SIGTERM/SIGINT in the main thread), then shut
        down gracefully.  Connection losses are retried with backoff; an error that is not one
        (say the extension is missing) shuts down and propagates."""
        if self._ran:
            raise RuntimeError("a Worker runs once; make a new one")
        self._ran = True
        if not self._handlers:
            raise RuntimeError("no handlers: register one with add_handler() or @handler()")
        restore = self._install_signals()
        log.info("worker %s serving %s (lease %s, batch %d, concurrency %d)", self.name,
                 ", ".join(self.topics), self.lease, self.batch, self.concurrency)
        for i in range(self.concurrency):
            self._spawn(self._handler_loop, f"saga-handler-{i}")
        self._spawn(self._heartbeat_loop, "saga-heartbeat")
        try:
            self._loop()
        finally:
            self._shutdown()
            restore()

    # --- the claiming loop -------------------------------------------------------------------

    def _loop(self) -> None:
        backoff = Backoff(0.1, self.reconnect_max)
        while not self._stopping.is_set():
            try:
                self._ensure_listener()
                again = self._claim_round()
                backoff.reset()
                if again:
                    continue
                self._wait(self.poll_interval)
            except (ConnectionLost, psycopg.OperationalError) as exc:
                self._close_listener()
                delay = backoff.next()
                log.warning("worker %s: %s; retrying in %.1f s", self.name, _first_line(exc),
                            delay)
                self._stopping.wait(delay)

    def _capacity(self) -> int:
        with self._cv:
            return self.batch - len(self._held)

    def _claim_round(self) -> bool:
        """Claim for each topic while there is room; True when a topic may have more."""
        topics = self.topics
        start, self._next_topic = self._next_topic, (self._next_topic + 1) % len(topics)
        more = False
        for topic in topics[start:] + topics[:start]:
            room = self._capacity()
            if room <= 0 or self._stopping.is_set():
                return False
            tasks = self._claim(topic, room)
            if len(tasks) == room:
                more = True
        return more and self._capacity() > 0

    def _claim(self, topic: str, n: int) -> List[Task]:
        rows = self._claims.run(
            lambda c: c.execute(_CLAIM, (topic, self.name, n, self.lease)).fetchall())
        if not rows:
            return []
        expires = time.monotonic() + self.lease.total_seconds()
        tasks = [Task(id=r[0], topic=r[1], kind=r[2], saga_id=r[3], step=r[4], attempt=r[5],
                      lease=r[6], payload=r[7], headers=r[8] or {}, lease_expires_at=r[9],
                      _expires=expires) for r in rows]
        with self._cv:
            for task in tasks:
                self._held[task.id] = task
                self._queue.append(task)
            self._cv.notify_all()
        for task in tasks:
            log.debug("claimed task %d (%s %s, attempt %d, lease %d)", task.id, task.topic,
                      task.kind, task.attempt, task.lease)
        return tasks

    def _ensure_listener(self) -> None:
        if self._listen_conninfo is None:
            return
        conn = self._listener
        if conn is not None and not conn.closed and not conn.broken:
            return
        self._close_listener()
        conn = connect(self._listen_conninfo, self._kwargs)
        try:
            for topic in self.topics:
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier("saga_" + topic)))
        except BaseException:
            conn.close()
            raise
        self._listener = conn

    def _close_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close
                pass

    def _wait(self, timeout: float) -> None:
        """Sleep until a notification, a wake-up (a handler finished, stop()) or the timeout.
        While no task fits, notifications are left for later: a finished task wakes us."""
        fds: List[Any] = [self._wake_r]
        listener = self._listener
        if listener is not None and self._capacity() > 0:
            fds.append(listener.fileno())
        ready, _, _ = select.select(fds, [], [], timeout)
        if self._wake_r in ready:
            try:
                while self._wake_r.recv(4096):
                    pass
            except (BlockingIOError, InterruptedError):
                pass
        if listener is not None and len(fds) > 1 and fds[1] in ready:
            pgconn = listener.pgconn
            pgconn.consume_input()   # raises OperationalError when the connection is gone
            while pgconn.notifies() is not None:
                pass

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:  # full (a wake-up is pending anyway) or closed
            pass

    # --- handlers and reports ----------------------------------------------------------------

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=f"{name} {self.name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _handler_loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    self._cv.wait()
                if self._closing:
                    return
                task = self._queue.popleft()
            try:
                self._execute(task)
            except BaseException:  # noqa: BLE001 - never let a handler kill the thread
                log.exception("task %d: handler raised a BaseException; not reported, its lease"
                              " will lapse", task.id)
            finally:
                with self._cv:
                    self._held.pop(task.id, None)
                    self._cv.notify_all()
                self._wake()

    def _execute(self, task: Task) -> None:
        fn = self._handlers[task.topic]
        try:
            result = fn(task)
            text = _json({} if result is None else result)
        except PermanentError as exc:
            log.info("task %d (%s %s, attempt %d) failed for good: %s", task.id, task.topic,
                     task.step or task.event_type, task.attempt, exc)
            self._report("fail", _FAIL, (task.id, _json(error_document(exc)), False, task.lease),
                         task)
        except Exception as exc:  # noqa: BLE001 - any other failure is retryable
            level = logging.INFO if isinstance(exc, TaskError) else logging.WARNING
            log.log(level, "task %d (%s %s, attempt %d) failed, retryable: %r", task.id,
                    task.topic, task.step or task.event_type, task.attempt, exc,
                    exc_info=not isinstance(exc, TaskError))
            self._report("fail", _FAIL, (task.id, _json(error_document(exc)), True, task.lease),
                         task)
        else:
            self._report("complete", _COMPLETE, (task.id, text, task.lease), task)

    def _report(self, what: str, query: str, params: Sequence[Any], task: Task,
                patience: Optional[float] = None) -> Optional[bool]:
        """Send a report under the task's lease.  Retries across reconnections until the lease
        has ended, or for ``patience`` seconds at most (a report that already went through
        returns false, so re-sending is safe); a refusal (55000: the lease is lost) is logged
        and dropped, never retried."""
        backoff = Backoff(0.05, min(self.reconnect_max, 2.0))
        give_up = time.monotonic() + patience if patience is not None else None
        while True:
            try:
                ok = self._reports.run(lambda c: _scalar(c, query, params))
            except pgerrors.ObjectNotInPrerequisiteState as exc:
                log.warning("%s of task %d under lease %d refused (the lease is lost): %s;"
                            " dropped", what, task.id, task.lease, exc)
                return None
            except ConnectionLost as exc:
                if (self._abandon.is_set() or task._lease_left() <= 0
                        or (give_up is not None and time.monotonic() >= give_up)):
                    log.error("%s of task %d not sent: %s; its lease has ended, the engine"
                              " will deliver it again", what, task.id, exc)
                    return None
                delay = backoff.next()
                log.warning("%s of task %d: %s; retrying in %.2f s", what, task.id,
                            _first_line(exc), delay)
                self._abandon.wait(delay)
                continue
            except psycopg.Error as exc:
                log.error("%s of task %d failed: %s (SQLSTATE %s); not retried, the lease will"
                          " lapse", what, task.id, exc, exc.sqlstate)
                return None
            if ok is False:
                log.debug("%s of task %d: already recorded", what, task.id)
            else:
                log.debug("%s of task %d recorded", what, task.id)
            return bool(ok)

    # --- heartbeats --------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._hb_stop.wait(self.heartbeat_every):
            with self._cv:
                tasks = list(self._held.values())
            for task in tasks:
                if self._hb_stop.is_set() or not self._heartbeat(task):
                    break

    def _heartbeat(self, task: Task) -> bool:
        """Extend one lease; False when the connection is down (skip the rest of this round)."""
        with self._cv:
            if task.id not in self._held:
                return True
        try:
            expires = self._reports.run(lambda c: _scalar(c, _HEARTBEAT, (task.id, task.lease)))
        except pgerrors.ObjectNotInPrerequisiteState as exc:
            self._lose(task, "lease_lost", str(exc))
            return True
        except ConnectionLost as exc:
            log.warning("heartbeats: %s; next round in %.1f s", _first_line(exc),
                        self.heartbeat_every)
            return False
        except psycopg.Error as exc:
            log.error("heartbeat of task %d failed: %s (SQLSTATE %s)", task.id, exc,
                      exc.sqlstate)
            return True
        if expires is None:
            self._lose(task, "saga_stopped", "the saga no longer wants this action")
        else:
            task.lease_expires_at = expires if isinstance(expires, datetime) else None
            task._expires = time.monotonic() + self.lease.total_seconds()
        return True

    def _lose(self, task: Task, reason: str, detail: str) -> None:
        """The task should stop: tell a running handler; drop a queued task (and say that
        nothing was done when its saga stopped)."""
        with self._cv:
            if task.id not in self._held:
                return  # reported meanwhile
            queued = task in self._queue
            if queued:
                self._queue.remove(task)
                del self._held[task.id]
            task._cancel(reason)
        if not queued:
            log.warning("task %d: %s (%s); its handler should stop (task.cancelled)", task.id,
                        reason, detail)
            return
        log.info("task %d not started: %s (%s)", task.id, reason, detail)
        if reason == "saga_stopped":
            doc = {"type": "SagaStopped", "message": "the saga stopped before the task started;"
                   " nothing was done"}
            self._report("fail", _FAIL, (task.id, _json(doc), False, task.lease), task)
        self._wake()

    # --- shutdown ----------------------------------------------------------------------------

    def _install_signals(self) -> Callable[[], None]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

        def on_signal(signum: int, _frame: Any) -> None:
            log.info("worker %s: %s, shutting down", self.name, signal.Signals(signum).name)
            self.stop(wait=False)

        for sig in previous:
            signal.signal(sig, on_signal)

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return restore

    def _shutdown(self) -> None:
        self._stopping.set()
        with self._cv:
            self._closing = True
            unstarted = list(self._queue)
            self._queue.clear()
            self._cv.notify_all()
        for task in unstarted:
            # a courtesy (the lease would lapse anyway): do not hold up a shutdown for it
            ok = self._report("release", _RELEASE, (task.id, task.lease), task, patience=2.0)
            with self._cv:
                self._held.pop(task.id, None)
            if ok:
                log.info("released task %d (not started)", task.id)
        deadline = time.monotonic() + self.shutdown_timeout
        handlers = [t for t in self._threads if t.name.startswith("saga-handler")]
        for thread in handlers:
            thread.join(max(0.0, deadline - time.monotonic()))
        stragglers = sum(t.is_alive() for t in handlers)
        if stragglers:
            log.warning("worker %s: %d handler(s) still running after %.0f s; their leases will"
                        " lapse and the engine will deliver those tasks again", self.name,
                        stragglers, self.shutdown_timeout)
            self._abandon.set()
        self._hb_stop.set()
        for thread in self._threads:
            if thread.name.startswith("saga-heartbeat"):
                thread.join(5)
        self._close_listener()
        self._claims.close()
        if not stragglers:
            self._reports.close()
        log.info("worker %s stopped", self.name)
