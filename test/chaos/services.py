#!/usr/bin/python3
"""test/chaos/services.py: the processes of the chaos test (started and killed by run.sh).

    services.py start   --sagas N --duration S --seed X --acks FILE
    services.py poll    --name NAME --topics t1,t2,...   transactional poll
    services.py lease   --name NAME --topics t1,t2,...   leased claim
    services.py zombie  --name NAME --topics t1,t2,...   stale-report probes
    services.py cancel  --name NAME

Connection settings come from the PG* environment variables; every process runs until the file
named by --stop exists, and survives anything the server does to it (kill -9, restarts,
terminated backends): it reconnects and carries on.  A poller that is itself killed with SIGKILL
simply loses what it held: a transactional poll's locks go with its connection, a leased claim's
lease lapses.  The services' effects are recorded in svc.effects (see schema.sql), which is what
the audit reads.

The services decide what to do with a task from its payload only: the saga's input carries the
order number n and its "fate" (drawn by the starter), e.g. {"reserve": "fail"} (declined for
good), {"ship": "flaky"} (a retryable failure on attempt 1), {"invoice": "sleep"} (the billing
service sits on the task past the step's timeout), {"undo": "flaky"} (every compensation fails
once, retryably), "cancel_after_ms" (the canceller cancels it that long after its start).
"""
import argparse
import json
import os
import random
import sys
import time

import psycopg2
import psycopg2.extras

# what a leased claim holds a task for; heartbeats extend it by as much
LEASE = "4 seconds"
# the zombie's lease: short, so that it lapses while the zombie "hangs"
ZOMBIE_LEASE = "1 second"
# the billing service gives up sitting on a task whose timeout the engine does not enforce
SIT_LIMIT = 30.0

args = None


def log(msg):
    print("%s [%s] %s" % (time.strftime("%H:%M:%S"), args.name, msg), flush=True)


def stopping():
    return os.path.exists(args.stop)


def connect():
    """A new connection, retried until the server accepts it (it may be down or recovering)."""
    delay = 0.2
    while True:
        try:
            conn = psycopg2.connect(
                "", application_name=args.name, connect_timeout=5,
                # a statement stuck behind a lock is cancelled (57014) rather than hanging the
                # poller forever; the engine treats a cancel as the caller's, not the step's
                options="-c statement_timeout=30000")
            conn.autocommit = True      # transactions are explicit: BEGIN ... COMMIT
            return conn
        except psycopg2.Error as e:
            if stopping():
                sys.exit(0)
            log("connect: %s" % str(e).strip().splitlines()[0])
            time.sleep(delay + random.uniform(0, delay))
            delay = min(delay * 2, 2.0)


def lost_connection(e, conn):
    """True for errors after which the session is gone or useless: reconnect.  (Not by
    exception class: psycopg2 files SQLSTATE class 55, a refused report, under
    OperationalError too.)"""
    code = getattr(e, "pgcode", None)
    if conn.closed or code is None:
        return True     # no SQLSTATE: the client's side, e.g. "server closed the connection"
    return code.startswith("08") or code.startswith("57P")


def first_line(e):
    return "%s %s" % (getattr(e, "pgcode", None), str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)


def close(conn):
    try:
        conn.close()
    except Exception:
        pass


def recover(conn, e, what="round"):
    """After an error in a loop: reconnect if the session is gone; otherwise (a deadlock, a
    statement timeout, anything else) roll back what is open and carry on.  Returns the
    connection to go on with."""
    if lost_connection(e, conn):
        log("connection lost: %s" % first_line(e))
        close(conn)
        return connect()
    log("%s rolled back: %s" % (what, first_line(e)))
    try:
        with conn.cursor() as cur:
            cur.execute("ROLLBACK")
    except psycopg2.Error:
        close(conn)
        return connect()
    time.sleep(0.2)
    return conn


def decide(kind, step, attempt, inp):
    """What the service does with a task: ('ok', None), ('fail', retryable) or ('sleep', None)."""
    fate = inp.get("fate", {})
    if kind == "compensate":
        # compensations retry until they succeed: a flaky one fails once, never for good
        if fate.get("undo") == "flaky" and attempt == 1:
            return "fail", True
        return "ok", None
    f = fate.get(step)
    if f == "fail":
        return "fail", False
    if f == "flaky" and attempt == 1:
        return "fail", True
    if f == "sleep" and attempt == 1:
        return "sleep", None
    return "ok", None


def result_of(n, step, kind):
    # deterministic: a repeated report of the same outcome is recognised as a repeat
    return json.dumps({"n": n, "step": step, "kind": kind})


def error_of(step, retryable):
    return json.dumps({"reason": "flaky" if retryable else "declined", "step": step})


# --- starter --------------------------------------------------------------------------------

def draw_fate(n):
    """The fate of order n: reproducible from the seed, independent of timing."""
    rng = random.Random("%s/%d" % (args.seed, n))
    fate = {}

    def pick(step, table):
        r, acc = rng.random(), 0.0
        for what, p in table:
            acc += p
            if r < acc:
                fate[step] = what
                return

    pick("reserve", [("fail", 0.04), ("flaky", 0.15)])
    pick("charge", [("fail", 0.03)])
    pick("ship", [("fail", 0.04), ("flaky", 0.15)])
    pick("invoice", [("sleep", 0.04), ("flaky", 0.10)])
    pick("confirm", [("fail", 0.03), ("flaky", 0.10)])
    pick("loyalty", [("fail", 0.03)])
    pick("undo", [("flaky", 0.25)])
    inp = {"n": n, "fate": fate}
    # a healthy saga takes well under a second: cancel early enough to catch most in flight
    if rng.random() < 0.08:
        inp["cancel_after_ms"] = rng.randint(0, 800)
    return inp


def run_start():
    """Start the sagas at an even pace over 95 % of the run; a start whose outcome is unknown
    (the connection broke) is repeated with the same idempotency key, which returns the saga
    already started if it had committed.  Each acknowledged start is written to --acks."""
    spread = args.duration * 0.95
    gap = spread / max(args.sagas, 1)
    t0 = time.time()
    acks = open(args.acks, "a", buffering=1)
    conn = connect()
    n = 1
    while n <= args.sagas and not stopping():
        due = t0 + (n - 1) * gap
        if time.time() < due:
            time.sleep(min(due - time.time(), 0.5))
            continue
        key = "chaos-%d" % n
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT saga.start('chaos', %s::jsonb, correlation_id => %s, "
                            "idempotency_key => %s)", (json.dumps(draw_fate(n)), key, key))
                saga_id = cur.fetchone()[0]
            acks.write("%d\t%d\n" % (n, saga_id))
            n += 1
        except psycopg2.Error as e:
            # the same n again: its idempotency key returns the saga if the start committed
            conn = recover(conn, e, "start %d" % n)
    log("started %d sagas" % (n - 1))


# --- transactional poll ---------------------------------------------------------------------

def run_poll():
    """BEGIN; lock visible tasks FOR UPDATE SKIP LOCKED; per task (in a savepoint): apply the
    effect and report; COMMIT.  The effect and the report commit together or not at all, so
    the service does not deduplicate: svc.apply_in_txn counts a second application."""
    topics = args.topics.split(",")
    conn = connect()
    while not stopping():
        try:
            with conn.cursor() as cur:
                cur.execute("BEGIN")
                cur.execute("SELECT id, kind, step, attempt, payload, headers FROM saga.outbox "
                            "WHERE topic = ANY(%s) AND visible_at <= now() "
                            "ORDER BY visible_at, id FOR UPDATE SKIP LOCKED LIMIT 4", (topics,))
                rows = cur.fetchall()
                for task_id, kind, step, attempt, payload, headers in rows:
                    cur.execute("SAVEPOINT task")
                    try:
                        poll_task(cur, task_id, kind, step, attempt, payload, headers)
                        cur.execute("RELEASE SAVEPOINT task")
                    except psycopg2.Error as e:
                        if lost_connection(e, conn):
                            raise
                        log("task %d (%s %s, attempt %d) refused: %s"
                            % (task_id, kind, step, attempt, first_line(e)))
                        cur.execute("ROLLBACK TO SAVEPOINT task")
                cur.execute("COMMIT")
            if not rows:
                time.sleep(0.1)
        except psycopg2.Error as e:
            # (a deadlock or the like rolls the whole round back: nothing happened)
            conn = recover(conn, e)


def poll_task(cur, task_id, kind, step, attempt, payload, headers):
    inp = payload["input"]
    n = inp["n"]
    what, retryable = decide(kind, step, attempt, inp)
    if what == "fail":
        cur.execute("SELECT saga.fail(%s, %s::jsonb, retryable => %s)",
                    (task_id, error_of(step, retryable), retryable))
        return
    # (a "sleep" fate only exists for the leased billing service)
    cur.execute("SELECT svc.apply_in_txn(%s, %s, %s, %s, 'poll', %s, %s, %s)",
                (n, step, kind, headers["idempotency_key"], int(headers["saga_id"]), args.name, attempt))
    # the work takes a while, with the row locked: a crash or SIGKILL now rolls it all back,
    # and a sibling's failure meanwhile finds this task locked (withdrawn "in doubt")
    time.sleep(random.uniform(0, 0.05))
    cur.execute("SELECT saga.complete(%s, %s::jsonb)", (task_id, result_of(n, step, kind)))


# --- leased claim ---------------------------------------------------------------------------

def run_lease():
    """saga.claim commits a lease; the work happens in its own transaction, keyed by the task's
    idempotency key (a redelivery after a crash between work and report is recognised and not
    applied again); then the report quotes the lease.  Before working, a heartbeat checks that
    the lease is still ours (a lapsed or timed-out task is left alone)."""
    topics = args.topics.split(",")
    conn = connect()
    sitting = {}        # tasks the service sits on past their timeout: id -> task
    while not stopping():
        got = 0
        try:
            random.shuffle(topics)
            for topic in topics:
                with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                    cur.execute("SELECT id, kind, step, attempt, lease, payload, headers "
                                "FROM saga.claim(%s, %s, 2, %s)", (topic, args.name, LEASE))
                    tasks = cur.fetchall()
                got += len(tasks)
                for t in tasks:
                    lease_task(conn, t, sitting)
            tend_sitting(conn, sitting)
        except psycopg2.Error as e:
            conn = recover(conn, e)
            continue
        if got == 0:
            time.sleep(0.1)


def lease_task(conn, t, sitting):
    inp = t["payload"]["input"]
    what, retryable = decide(t["kind"], t["step"], t["attempt"], inp)
    if what == "sleep":
        t["since"] = time.time()
        t["next_beat"] = time.time() + 1.0
        sitting[t["id"]] = t
        return
    try:
        if what == "fail":
            with conn.cursor() as cur:
                cur.execute("SELECT saga.fail(%s, %s::jsonb, retryable => %s, lease => %s)",
                            (t["id"], error_of(t["step"], retryable), retryable, t["lease"]))
            return
        work(conn, t)
    except psycopg2.Error as e:
        if lost_connection(e, conn):
            raise       # the task is abandoned: its lease lapses, it is delivered again
        log("task %d (%s %s, attempt %d, lease %d) refused: %s"
            % (t["id"], t["kind"], t["step"], t["attempt"], t["lease"], first_line(e)))


def work(conn, t):
    """Do a leased task: the effect in its own transaction, then the report with the lease."""
    n = t["payload"]["input"]["n"]
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        try:
            # Is the lease still ours?  (55000 if it lapsed, the step timed out or finished.)
            # The heartbeat also locks the task's row until COMMIT, so the engine cannot end
            # the step (a timeout, a lapse) between this check and the effect: without that,
            # its compensation could run, and find nothing to undo, before the effect lands.
            cur.execute("SELECT saga.heartbeat(%s, %s)", (t["id"], t["lease"]))
            cur.execute("SELECT svc.apply_idempotent(%s, %s, %s, %s, %s, %s, %s, %s)",
                        (n, t["step"], t["kind"], t["headers"]["idempotency_key"],
                         int(t["headers"]["saga_id"]), args.name, t["lease"], t["attempt"]))
            cur.execute("COMMIT")
        except psycopg2.Error as e:
            if not lost_connection(e, conn):
                cur.execute("ROLLBACK")
            raise
        # the report travels back from elsewhere: a window in which a SIGKILL leaves an effect
        # applied but not reported (the redelivery must then be recognised by its key), or in
        # which the engine gives up on the step (its late report is then recorded)
        time.sleep(random.uniform(0, 0.15))
        cur.execute("SELECT saga.complete(%s, %s::jsonb, lease => %s)",
                    (t["id"], result_of(n, t["step"], t["kind"]), t["lease"]))


def tend_sitting(conn, sitting):
    """Keep the leases of the tasks we sit on alive; the engine ends the step when its timeout
    passes, and the next heartbeat says so (55000): the service then drops the task, having
    done nothing."""
    now = time.time()
    for task_id, t in list(sitting.items()):
        if now < t["next_beat"]:
            continue
        t["next_beat"] = now + 1.0
        try:
            with conn.cursor() as cur:
                if now - t["since"] > SIT_LIMIT:
                    log("ANOMALY: task %d (%s, timeout 6 s) still leased after %.0f s; doing it"
                        % (task_id, t["step"], now - t["since"]))
                    del sitting[task_id]
                    work(conn, t)
                    continue
                cur.execute("SELECT saga.heartbeat(%s, %s)", (task_id, t["lease"]))
        except psycopg2.Error as e:
            if lost_connection(e, conn):
                raise
            sitting.pop(task_id, None)
            if e.pgcode != "55000":
                log("task %d: heartbeat refused: %s" % (task_id, first_line(e)))


# --- zombie: stale reports --------------------------------------------------------------------

# events that record a service's report on a step (or its compensation), as opposed to the
# engine ending it on its own (a timeout, an exhausted lease, a withdrawal)
REPORT_EVENTS = {
    "action": ("succeeded", "retry_scheduled", "late_report"),
    "compensate": ("compensated", "compensation_failed", "compensation_retry_scheduled", "late_report"),
}
ENGINE_REASONS = ("timeout", "attempts exhausted: lease expired")


def run_zombie():
    """Claim a task with a short lease, "hang" until that lease has lapsed and been superseded -
    the task was delivered again, or another worker's report settled it - then report under the
    old lease: complete, a retryable fail or a final fail.  Each such report must be refused
    with 55000.  Alternates between action and compensation topics.  Each probe and its outcome
    are recorded in svc.stale_probes in the report's own transaction.

    A task that the engine itself ended while the zombie's delivery was the last one out (a
    timeout, or the lapse of the zombie's own lease as the last attempt) is not probed: the
    zombie's delivery was never superseded, and its report is a late report, which the engine
    may record ("in doubt"); it is counted as skipped."""
    topics = args.topics.split(",")
    undo = [t for t in topics if t.endswith("_undo")]
    actions = [t for t in topics if not t.endswith("_undo")]
    want_undo = False
    conn = connect()
    while not stopping():
        want_undo = not want_undo
        try:
            t = zombie_claim(conn, undo if want_undo else actions)
            if t is None:
                continue
            waited = wait_superseded(conn, t)
            if waited is None:
                log("task %d: lease %d never superseded within 60 s; no probe" % (t["id"], t["lease"]))
                continue
            probe(conn, t, waited)
        except psycopg2.Error as e:
            conn = recover(conn, e, "probe")


def zombie_claim(conn, topics):
    deadline = time.time() + 3.0
    while time.time() < deadline and not stopping():
        random.shuffle(topics)
        for topic in topics:
            with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                cur.execute("SELECT id, kind, step, saga_id, attempt, lease FROM saga.claim(%s, %s, 1, %s)",
                            (topic, args.name, ZOMBIE_LEASE))
                row = cur.fetchone()
                if row:
                    # history from here on is what happened to the task after our claim
                    cur.execute("SELECT COALESCE(max(id), 0) AS id FROM saga.history WHERE saga_id = %s",
                                (row["saga_id"],))
                    row["history_from"] = cur.fetchone()["id"]
                    return row
        time.sleep(0.2)
    return None


def wait_superseded(conn, t):
    """Wait until the task has been delivered again (its delivery count passed our lease), or
    has left the outbox; in the latter case, history tells whether another worker's report
    settled it ("finished by another worker") or the engine ended it ("ended by the engine",
    not a stale report: skipped).  Keeps what it last saw of the task, for the record."""
    deadline = time.time() + 60.0
    t["seen"] = None
    while time.time() < deadline and not stopping():
        time.sleep(0.25)
        with conn.cursor() as cur:
            cur.execute("SELECT deliveries, attempt, lease_owner, "
                        "to_char(visible_at, 'HH24:MI:SS.MS') FROM saga.outbox WHERE id = %s", (t["id"],))
            row = cur.fetchone()
            if row is not None:
                t["seen"] = "deliveries %s, attempt %s, lease_owner %s, visible_at %s" % row
                if row[0] > t["lease"]:
                    return "delivered again"
                continue
            cur.execute("SELECT event, COALESCE(detail ->> 'reason', ''), detail ->> 'lease' "
                        "FROM saga.history WHERE saga_id = %s AND step = %s AND id > %s ORDER BY id",
                        (t["saga_id"], t["step"], t["history_from"]))
            events = cur.fetchall()
        t["events"] = ", ".join(e if not r else "%s (%s)" % (e, r) for e, r, _ in events)
        for event, reason, lease in events:
            if event in REPORT_EVENTS[t["kind"]] or (
                    t["kind"] == "action" and event == "failed" and reason not in ENGINE_REASONS):
                return "finished by another worker"
            if lease is not None and int(lease) > t["lease"]:
                return "delivered again"     # (the engine names a later delivery than ours)
        return "ended by the engine"
    return None


def probe(conn, t, waited):
    if waited == "ended by the engine":
        call, sql, params = "none", None, None
    elif random.random() < 1 / 3:
        call = "complete"
        sql, params = ("SELECT saga.complete(%s, %s::jsonb, lease => %s)",
                       (t["id"], json.dumps({"zombie": True, "lease": t["lease"]}), t["lease"]))
    else:
        call = random.choice(["fail_retryable", "fail_final"])
        sql, params = ("SELECT saga.fail(%s, %s::jsonb, retryable => %s, lease => %s)",
                       (t["id"], json.dumps({"zombie": True, "lease": t["lease"]}),
                        call == "fail_retryable", t["lease"]))
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        # the step as the engine shows it just before the report, for the record
        cur.execute("SELECT status || ', attempts ' || attempts FROM saga.step_runs "
                    "WHERE saga_id = %s AND step = %s", (t["saga_id"], t["step"]))
        row = cur.fetchone()
        step_before = row[0] if row else None
        returned = sqlstate = None
        message = t.get("events")
        if sql is None:
            outcome = "skipped"
        else:
            cur.execute("SAVEPOINT probe")
            try:
                cur.execute(sql, params)
                returned = cur.fetchone()[0]
                outcome = "accepted"
                log("STALE REPORT ACCEPTED: task %d (%s %s, saga %d) lease %d, %s after '%s' returned %s"
                    % (t["id"], t["kind"], t["step"], t["saga_id"], t["lease"], call, waited, returned))
            except psycopg2.Error as e:
                if lost_connection(e, conn):
                    raise       # nothing was recorded, and no report was made
                cur.execute("ROLLBACK TO SAVEPOINT probe")
                outcome, sqlstate, message = "refused", e.pgcode, str(e).strip().splitlines()[0]
                if sqlstate != "55000":
                    log("task %d (%s %s): stale %s refused with %s: %s"
                        % (t["id"], t["kind"], t["step"], call, sqlstate, message))
        cur.execute("INSERT INTO svc.stale_probes (task_id, saga_id, step, kind, lease, claimed_attempt, "
                    "call, waited_for, last_seen, step_before, outcome, returned, sqlstate, message) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (t["id"], t["saga_id"], t["step"], t["kind"], t["lease"], t["attempt"], call,
                     waited, t["seen"], step_before, outcome, returned, sqlstate, message))
        cur.execute("COMMIT")


# --- canceller ------------------------------------------------------------------------------

def run_cancel():
    """Cancel each saga whose input asks for it, cancel_after_ms after its start.  55000 (it
    finished or is compensating already) is an expected answer."""
    tried = set()
    conn = connect()
    while not stopping():
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT id FROM saga.instances WHERE name = 'chaos' AND status = 'running' "
                            "AND input ? 'cancel_after_ms' AND started_at + "
                            "(input ->> 'cancel_after_ms')::integer * interval '1 millisecond' <= now() "
                            "ORDER BY id LIMIT 100")
                due = [r[0] for r in cur.fetchall() if r[0] not in tried]
                for saga_id in due:
                    try:
                        cur.execute("SELECT saga.cancel(%s, 'chaos: the customer withdrew the order')", (saga_id,))
                        tried.add(saga_id)
                    except psycopg2.Error as e:
                        if lost_connection(e, conn):
                            raise
                        tried.add(saga_id)
                        if e.pgcode != "55000":
                            log("cancel %d: %s" % (saga_id, first_line(e)))
        except psycopg2.Error as e:
            conn = recover(conn, e)
        time.sleep(0.2)


def main():
    global args
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["start", "poll", "lease", "zombie", "cancel"])
    p.add_argument("--name", default=None)
    p.add_argument("--stop", required=True)
    p.add_argument("--topics", default="")
    p.add_argument("--sagas", type=int, default=0)
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--seed", default="1")
    p.add_argument("--acks", default=None)
    args = p.parse_args()
    if args.name is None:
        args.name = "%s-%d" % (args.role, os.getpid())
    log("up, pid %d" % os.getpid())
    {"start": run_start, "poll": run_poll, "lease": run_lease,
     "zombie": run_zombie, "cancel": run_cancel}[args.role]()
    log("stopped")


if __name__ == "__main__":
    main()
