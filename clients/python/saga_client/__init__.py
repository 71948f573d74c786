"""Python client for the ``saga`` PostgreSQL extension.

- :class:`Worker` serves topics with handler functions: claims tasks under a lease
  (``saga.claim``), heartbeats them while the handler runs, reports the outcome under the lease
  (``saga.complete`` / ``saga.fail``), wakes on ``LISTEN saga_<topic>`` with a polling
  fallback, reconnects with backoff, and on shutdown releases what it had not started.
- A handler returns a JSON-able result, or raises :class:`RetryableError` (the engine tries
  again after the step's backoff; any other exception counts as retryable too) or
  :class:`PermanentError` (the step fails for good and the saga compensates).
- :func:`publish` and :func:`start` call ``saga.publish`` and ``saga.start`` in the caller's
  transaction.

Logging goes to the ``saga_client`` logger.  Requires psycopg 3.1 or later.
"""

from .errors import (ConnectionLost, PermanentError, RetryableError, SagaClientError,
                     TaskCancelled, TaskError)
from .helpers import publish, start
from .task import Task
from .worker import Handler, Worker, error_document

__all__ = [
    "Worker", "Task", "Handler", "publish", "start", "error_document",
    "SagaClientError", "TaskError", "RetryableError", "PermanentError", "TaskCancelled",
    "ConnectionLost",
]
__version__ = "0.4.0"
