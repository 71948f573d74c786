"""The example service of README.md ("Python client") runs as printed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from typing import Any

import pytest
from conftest import listening, scalar, wait_status

from saga_client import start

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "README.md")
CLIENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def example() -> str:
    with open(README, encoding="utf-8") as f:
        text = f.read()
    found = re.search(r"<!-- python-example: README -->\n```python\n(.*?)```", text, re.S)
    if not found:
        pytest.fail("README.md has no block marked <!-- python-example: README -->")
    return found.group(1)


def test_readme_example_service(db: Any, tmp_path: Any) -> None:
    # the README's order_flow, reduced to its payments step
    db.execute("""SELECT saga.define('order_flow', '{"steps": [{"name": "charge_payment",
                  "topic": "payments", "compensate": {"topic": "payments"}},
                  {"name": "reserve_inventory", "topic": "py_readme_stock"}]}')""")
    script = tmp_path / "payments.py"
    script.write_text(example())
    env = dict(os.environ, PYTHONPATH=CLIENT, SAGA_DSN=os.environ.get("SAGA_TEST_DSN", ""))
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stderr=subprocess.PIPE,
                            text=True)
    try:
        cheap = start(db, "order_flow", {"order_id": 1, "amount": 5})
        dear = start(db, "order_flow", {"order_id": 2, "amount": 5000})
        wait_status(db, dear, "compensated")   # declined: nothing to undo
        # the cheap one was charged; failing its next step has the payment refunded
        task = scalar(db, "SELECT id FROM saga.outbox WHERE topic = 'py_readme_stock'"
                          " AND (headers ->> 'saga_id')::bigint = %s", cheap)
        assert task is not None
        db.execute("SELECT saga.fail(%s, '{\"reason\": \"out of stock\"}', retryable => false)",
                   (task,))
        wait_status(db, cheap, "compensated")
        assert scalar(db, "SELECT result FROM saga.step_runs WHERE saga_id = %s"
                          " AND step = 'charge_payment'", cheap) == {"payment_id": "p_1"}
        assert scalar(db, "SELECT error ->> 'message' FROM saga.step_runs WHERE saga_id = %s"
                          " AND step = 'charge_payment'", dear) == "card declined"
        assert listening(db, "payments-1")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "worker payments-1 stopped" in err
