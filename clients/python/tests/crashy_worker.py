"""A worker process for the crash and signal tests: ``crashy_worker.py TOPIC NAME MARKER``.

Its handler writes MARKER (the task's attempt) and then hangs, until the test kills the process;
``run()`` is in the main thread, so SIGTERM shuts it down gracefully.
"""

import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from saga_client import Task, Worker  # noqa: E402

topic, name, marker = sys.argv[1:4]
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
worker = Worker(os.environ.get("SAGA_TEST_DSN", ""), name=name, lease=1.0,
                heartbeat_every=0.3, poll_interval=0.5, shutdown_timeout=2.0)


@worker.handler(topic)
def hang(task: Task) -> None:
    with open(marker, "w") as f:
        f.write(str(task.attempt))
    time.sleep(3600)


worker.run()
print("stopped cleanly", flush=True)
