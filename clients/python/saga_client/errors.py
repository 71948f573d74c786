"""Exceptions a handler raises to say how its task failed, and the library's own errors."""

from __future__ import annotations

from typing import Any, Mapping, Optional


class SagaClientError(Exception):
    """Base class of every exception of this library."""


class TaskError(SagaClientError):
    """A task failed; the subclass says whether the engine may try it again.

    ``details`` (JSON-able) is stored with the error, next to ``type`` and ``message``, in
    ``saga.step_runs.error`` (or the dead letter of an event delivery).
    """

    retryable: bool = True

    def __init__(self, message: str = "", *, details: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: Optional[Mapping[str, Any]] = details


class RetryableError(TaskError):
    """A failure worth another attempt (a timeout, a service briefly down).

    Reported with ``saga.fail(..., retryable => true)``: the engine delivers the task again,
    as its next attempt, after the step's backoff, until its attempts run out.
    """

    retryable = True


class PermanentError(TaskError):
    """A failure that another attempt cannot fix (a declined card, invalid input).

    Reported with ``saga.fail(..., retryable => false)``: the step fails for good and the saga
    compensates (an event delivery becomes a dead letter).
    """

    retryable = False


class TaskCancelled(PermanentError):
    """Raised by :meth:`Task.check` once the task should stop.

    ``reason`` is ``"saga_stopped"`` (a heartbeat returned NULL: the saga was cancelled or is
    compensating, so it no longer wants this action; reporting this error tells the engine that
    nothing was done) or ``"lease_lost"`` (the lease ended: another delivery owns the task, and
    any report is refused and dropped).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"task cancelled: {reason}")
        self.reason = reason


class ConnectionLost(SagaClientError):
    """The connection broke during a call; the library reconnects (internal, rarely seen)."""
