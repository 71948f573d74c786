"""The task a handler receives: one row of ``saga.claim``."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, Optional

from .errors import TaskCancelled


@dataclass(eq=False)
class Task:
    """A task leased to this worker (a ``saga.task`` row).

    ``kind`` is ``action``, ``compensate`` or ``event``; ``saga_id`` and ``step`` are None for
    event deliveries; ``lease`` is the fencing token the library sends with every report;
    ``payload`` is ``{"input": ..., "results": {...}}`` for saga tasks and the event payload for
    event deliveries.  ``cancelled`` is set when the handler should stop (see :meth:`check`).
    """

    id: int
    topic: str
    kind: str
    saga_id: Optional[int]
    step: Optional[str]
    attempt: int
    lease: int
    payload: Any
    headers: Dict[str, Any]
    lease_expires_at: Optional[datetime] = None
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False)
    cancel_reason: Optional[str] = field(default=None, repr=False)
    # monotonic time at which the lease ends as far as this process knows (heartbeats move it)
    _expires: float = field(default=0.0, repr=False)

    @property
    def correlation_id(self) -> Optional[str]:
        """The saga's or event's correlation id (header ``correlation_id``)."""
        return self.headers.get("correlation_id")

    @property
    def traceparent(self) -> Optional[str]:
        """The W3C trace context (header ``traceparent``)."""
        return self.headers.get("traceparent")

    @property
    def idempotency_key(self) -> Optional[str]:
        """Stable across retries of this task: make the work idempotent with it."""
        return self.headers.get("idempotency_key")

    @property
    def event_type(self) -> Optional[str]:
        """For an event delivery (``kind == "event"``): the event's type."""
        return self.headers.get("event_type")

    @property
    def event_id(self) -> Optional[int]:
        """For an event delivery: the event's id (use it as ``causation_id`` when publishing)."""
        return self.headers.get("event_id")

    def check(self) -> None:
        """Raise :class:`TaskCancelled` if the task should stop; call it between units of work."""
        if self.cancelled.is_set():
            raise TaskCancelled(self.cancel_reason or "cancelled")

    def _cancel(self, reason: str) -> None:
        if not self.cancelled.is_set():
            self.cancel_reason = reason
            self.cancelled.set()

    def _lease_left(self) -> float:
        return self._expires - time.monotonic()
