#!/usr/bin/python3
# test/pooler/clients.py: the worker protocols through PgBouncer in transaction mode.
#
# Run by test/scripts/pgbouncer.sh, which starts a throwaway cluster (saga preloaded, the worker
# serving "postgres") and a pgbouncer in pool_mode = transaction in front of it, with two pooled
# databases:  "saga" (pool_size 2) and "saga_one" (pool_size 1, every client on one server
# connection).  Environment: PGHOST (the cluster's socket directory), PGPORT (the cluster),
# BOUNCER_HOST and BOUNCER_PORT (pgbouncer's socket).
#
# Every client is psycopg 3 in autocommit with prepare_threshold=None (what README.md tells
# people to use through a pooler), except the one that shows what goes wrong without it.  To make
# "which server connection does this transaction get" deterministic, a few checks pin a server
# connection with an open transaction on another client (occupy()): with a pool of two, the next
# transaction of anyone else must then run on the other server connection.
#
# One line per check ("ok     ..." or "FAILED ..."); the shell script counts them.

import os
import sys
import time

import psycopg
from psycopg import errors

HOST = os.environ["PGHOST"]
PORT = os.environ["PGPORT"]
BHOST = os.environ["BOUNCER_HOST"]
BPORT = os.environ["BOUNCER_PORT"]
WAIT = 30  # seconds any single wait may take

passed = 0
failed = 0


def check(what, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok     {what}", flush=True)
    else:
        failed += 1
        print(f"FAILED {what}{': ' + str(detail) if detail else ''}", flush=True)


def pooled(dbname="saga", prepare_threshold=None):
    """a client connection through pgbouncer"""
    conn = psycopg.connect(host=BHOST, port=BPORT, dbname=dbname, user="postgres",
                           autocommit=True)
    conn.prepare_threshold = prepare_threshold
    return conn


def direct():
    """a connection straight to the server"""
    return psycopg.connect(host=HOST, port=PORT, dbname="postgres", user="postgres",
                           autocommit=True, prepare_threshold=None)


def one(conn, sql, params=None):
    return conn.execute(sql, params).fetchone()


def pid(conn):
    return one(conn, "SELECT pg_backend_pid()")[0]


def sqlstate(fn):
    """the SQLSTATE fn() raised, None if it raised nothing"""
    try:
        fn()
    except psycopg.Error as e:
        return e.sqlstate
    return None


def occupy(server_pid, a, b):
    """make client a or b hold the server connection with backend server_pid in an open
    transaction; the other one ends its transaction.  Needs a pool of two (and the other server
    connection free).  Returns the client that holds it."""
    a.execute("BEGIN")
    if pid(a) == server_pid:
        return a
    b.execute("BEGIN")
    got = pid(b)
    a.execute("COMMIT")
    if got != server_pid:
        b.execute("COMMIT")
        raise RuntimeError(f"server connection {server_pid} not found in the pool")
    return b


def section(name, fn):
    try:
        fn()
    except Exception as e:  # an unexpected error fails the section, the others still run
        check(f"{name}: ran to the end", False, f"{type(e).__name__}: {e}")


def wait_for(cond, what):
    deadline = time.monotonic() + WAIT
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


admin = direct()
admin.execute("""SELECT saga.define('pool_flow', '{"steps": [
    {"name": "a", "topic": "pool_a", "compensate": {"topic": "pool_undo"}},
    {"name": "b", "topic": "pool_b", "retry": {"max_attempts": 1}}]}')""")
admin.execute("SELECT saga.subscribe('PoolEvent', 'pool_ev')")
admin.execute("CREATE SCHEMA decoy")
admin.execute("CREATE TABLE decoy.outbox (id bigint)")  # what an unqualified "outbox" finds

clients = [pooled() for _ in range(6)]
c1, c2, c3, c4, c5, c6 = clients


def status(saga_id):
    return one(admin, "SELECT status FROM saga.instances WHERE id = %s", (saga_id,))[0]


def test_sharing():
    # six clients, transactions one after another: at most two server backends serve them all
    pids = set()
    for _ in range(3):
        for c in clients:
            c.execute("BEGIN")
            pids.add(pid(c))
            c.execute("COMMIT")
    check(f"sharing: 6 clients ran their transactions on {len(pids)} server connections (pool_size 2)",
          1 <= len(pids) <= 2, pids)
    # and both exist from here on: two open transactions at once need two
    c1.execute("BEGIN")
    c2.execute("BEGIN")
    both = {pid(c1), pid(c2)}
    c1.execute("COMMIT")
    c2.execute("COMMIT")
    check("sharing: two concurrent transactions get the two server connections", len(both) == 2,
          both)


def test_start():
    a = one(c1, "SELECT saga.start('pool_flow', '{\"n\": 1}', idempotency_key => 'pool-1')")[0]
    b = one(c2, "SELECT saga.start('pool_flow', '{\"n\": 1}', idempotency_key => 'pool-1')")[0]
    check("start: the same idempotency key from two clients gives the same saga id", a == b, (a, b))
    check("start: one saga", one(admin, "SELECT count(*) FROM saga.instances "
                                        "WHERE name = 'pool_flow'")[0] == 1)
    return a


def test_claim(saga_id):
    # c1 claims; c2 heartbeats on the other server connection (c3 or c4 holds the claim's)
    t = one(c1, "SELECT id, lease, pg_backend_pid() FROM saga.claim('pool_a', 'w1', 1, '1 hour')")
    check("claim: c1 leases the task of step a", t is not None and t[1] == 1, t)
    task, lease, server = t
    holder = occupy(server, c3, c4)
    hb = one(c2, "SELECT saga.heartbeat(%s, %s)", (task, lease))[0]
    check("heartbeat: from another client on another server connection", hb is not None, hb)
    holder.execute("COMMIT")
    # c1 hands it back; c5 claims it again: lease 2
    check("release: true", one(c1, "SELECT saga.release(%s, %s)", (task, lease))[0] is True)
    t2 = one(c5, "SELECT id, lease FROM saga.claim('pool_a', 'w2', 1, '1 hour')")
    check("claim: the released task again, under lease 2", t2 == (task, 2), t2)
    # the first worker's late report, from any client, is fenced off
    st = sqlstate(lambda: c1.execute("SELECT saga.complete(%s, '{}', lease => %s)", (task, lease)))
    check("fencing: complete under the lost lease 1 is refused with 55000", st == "55000", st)
    st = sqlstate(lambda: c6.execute("SELECT saga.heartbeat(%s, %s)", (task, lease)))
    check("fencing: heartbeat under the lost lease 1 is refused with 55000", st == "55000", st)
    ok = one(c6, "SELECT saga.complete(%s, '{\"r\": 1}', lease => %s)", (task, 2))[0]
    again = one(c2, "SELECT saga.complete(%s, '{\"r\": 1}', lease => %s)", (task, 2))[0]
    check("complete: lease 2 records it (true), a repeat from another client is a no-op (false)",
          ok is True and again is False, (ok, again))


def test_poll(saga_id):
    # the transactional poll: c1's transaction locks the task of step b; c2 polls meanwhile and
    # skips it; c1 completes and commits
    poll = ("SELECT id FROM saga.outbox WHERE topic = 'pool_b' AND visible_at <= now() "
            "ORDER BY visible_at, id FOR UPDATE SKIP LOCKED LIMIT 1")
    c1.execute("BEGIN")
    row = one(c1, poll)
    check("poll: c1 locks the task of step b", row is not None, row)
    c2.execute("BEGIN")
    other = one(c2, poll)
    c2.execute("COMMIT")
    check("poll: c2, polling meanwhile, skips the locked task", other is None, other)
    done = one(c1, "SELECT saga.complete(%s, '{\"b\": true}')", (row[0],))[0]
    c1.execute("COMMIT")
    check("poll: saga.complete in c1's transaction, then COMMIT", done is True, done)
    check("poll: the saga completed", status(saga_id) == "completed", status(saga_id))


def test_failure():
    s = one(c3, "SELECT saga.start('pool_flow', '{\"n\": 2}', idempotency_key => 'pool-2')")[0]
    t = one(c4, "SELECT id, lease FROM saga.claim('pool_a', 'w1', 1, '1 hour')")
    one(c5, "SELECT saga.complete(%s, '{}', lease => %s)", t)
    t = one(c6, "SELECT id, lease FROM saga.claim('pool_b', 'w1', 1, '1 hour')")
    r = one(c1, "SELECT saga.fail(%s, '{\"reason\": \"no\"}', retryable => false, lease => %s)", t)[0]
    check("fail: non-retryable, from another client", r is True, r)
    check("fail: the saga compensates", status(s) == "compensating", status(s))
    c2.execute("BEGIN")
    u = one(c2, "SELECT id, headers ->> 'kind' FROM saga.outbox WHERE topic = 'pool_undo' "
                "AND visible_at <= now() ORDER BY visible_at, id FOR UPDATE SKIP LOCKED LIMIT 1")
    done = one(c2, "SELECT saga.complete(%s)", (u[0],))[0]
    c2.execute("COMMIT")
    check("compensation: polled and completed", u[1] == "compensate" and done is True, u)
    check("compensation: the saga compensated", status(s) == "compensated", status(s))


def test_publish():
    ev = one(c3, "SELECT saga.publish('PoolEvent', '{\"x\": 1}', correlation_id => 'pool-c')")[0]
    t = one(c4, "SELECT id, lease, kind, (headers ->> 'event_id')::bigint "
                "FROM saga.claim('pool_ev', 'w1', 1, '1 hour')")
    check("publish: the delivery is claimed by another client", t is not None and t[2] == "event"
          and t[3] == ev, t)
    r = one(c5, "SELECT saga.complete(%s, '{}', lease => %s)", (t[0], t[1]))[0]
    check("publish: the delivery completed", r is True, r)


def test_session_state():
    # saga_one: a pool of one, so every client shares one server connection, deterministically
    s1, s2 = pooled("saga_one"), pooled("saga_one")
    default = one(s2, "SHOW search_path")[0]
    one(c1, "SELECT saga.start('pool_flow', '{\"n\": 3}', idempotency_key => 'pool-3')")
    # a plain SET is session state: it stays on the server connection, for the next client
    s1.execute("SET search_path = decoy")
    leaked = one(s2, "SHOW search_path")[0]
    check("plain SET leaks: another client's session now has search_path = decoy",
          leaked == "decoy", leaked)
    n = one(s2, "SELECT count(*) FROM outbox")[0]
    check("plain SET leaks: another client's unqualified 'outbox' reads decoy.outbox", n == 0, n)
    # the engine pins its own search_path: saga calls do not notice
    t = one(s2, "SELECT id, lease FROM saga.claim('pool_a', 'w3', 1, '1 hour')")
    r = one(s2, "SELECT saga.complete(%s, '{}', lease => %s)", t)[0] if t else None
    check("plain SET leaks: saga.claim and saga.complete still work (the engine's own search_path)",
          t is not None and r is True, (t, r))
    s1.execute("RESET search_path")
    # SET LOCAL ends with the transaction
    s1.execute("BEGIN")
    s1.execute("SET LOCAL search_path = decoy")
    inside = one(s1, "SHOW search_path")[0]
    s1.execute("COMMIT")
    after = one(s2, "SHOW search_path")[0]
    check("SET LOCAL does not leak: the next client sees the default search_path",
          inside == "decoy" and after == default, (inside, after, default))
    s1.close()
    s2.close()
    # a search_path in the startup packet (libpq's options, JDBC's currentSchema) is refused by
    # pgbouncer 1.18 unless listed in ignore_startup_parameters, which drops it
    try:
        psycopg.connect(host=BHOST, port=BPORT, dbname="saga", user="postgres",
                        options="-c search_path=decoy").close()
        refused = None
    except psycopg.OperationalError as e:
        refused = str(e)
    check("startup parameters: options=-c search_path=... is refused by the pooler",
          refused is not None and "unsupported startup parameter" in refused, refused)


def test_listen():
    got = {}

    def collect(name, conn):
        got[name] = []
        conn.add_notify_handler(lambda n: got[name].append(n.payload))

    lsn, d_lsn, d_notify = pooled(), direct(), direct()
    for name, conn in (("pooled listener", lsn), ("direct listener", d_lsn)) + tuple(
            (f"c{i + 1}", c) for i, c in enumerate(clients)):
        collect(name, conn)
    d_lsn.execute("LISTEN saga_pool_ev")
    # the pooled LISTEN registers on the server connection its transaction ran on
    lsn.execute("BEGIN")
    lsn.execute("LISTEN saga_pool_ev")
    server = pid(lsn)
    lsn.execute("COMMIT")
    # that server connection now serves c3 or c4, in an open transaction
    holder = occupy(server, c3, c4)
    d_notify.execute("SELECT pg_notify('saga_pool_ev', 'hint-1')")
    wait_for(lambda: d_lsn.execute("SELECT 1") and got["direct listener"], "the direct listener")
    check("LISTEN: the direct listener receives the notification",
          got["direct listener"] == ["hint-1"], got["direct listener"])
    holder.execute("COMMIT")
    lsn.execute("SELECT 1")
    check("LISTEN through the pooler: the client that listened receives nothing",
          got["pooled listener"] == [], got["pooled listener"])
    who = [n for n in got if n.startswith("c") and got[n]]
    print(f"       (the notification went to: {', '.join(who) or 'no client'}; "
          f"c3/c4 held the listening server connection and never listened)", flush=True)
    check("LISTEN through the pooler: no client but the one on that server connection can get it",
          set(who) <= {"c3", "c4"}, who)
    # the engine's own wake-up for work created through the pooler reaches the direct listener
    before = len(got["direct listener"])
    one(c5, "SELECT saga.publish('PoolEvent', '{\"x\": 2}')")
    wait_for(lambda: d_lsn.execute("SELECT 1") and len(got["direct listener"]) > before,
             "the wake-up on saga_pool_ev")
    check("LISTEN: a direct connection is woken for an event published through the pooler", True)
    lsn.close()
    d_lsn.close()
    d_notify.close()


def test_prepared():
    q = "SELECT pg_backend_pid(), count(*) FROM saga.outbox WHERE topic = %s"
    # prepare_threshold=0: psycopg prepares every statement (a named, protocol-level prepared
    # statement, as drivers do by default after a few executions)
    p = pooled(prepare_threshold=0)
    st = None
    try:
        server = one(p, q, ("pool_a",))[0]
        holder = occupy(server, c3, c4)  # the next transaction of p runs on the other one
        st = sqlstate(lambda: p.execute(q, ("pool_a",)))
        holder.execute("COMMIT")
    except psycopg.Error as e:  # the first execution may already have moved: the same failure
        st = e.sqlstate
    check("prepared statements: a named statement run on another server connection fails "
          "with 26000 (prepared statement does not exist)", st == "26000", st)
    p.close()
    # prepare_threshold=None: never prepared (unnamed statements, parameters bound server side)
    p = pooled(prepare_threshold=None)
    server = one(p, q, ("pool_a",))[0]
    holder = occupy(server, c3, c4)
    results = [sqlstate(lambda: p.execute(q, ("pool_a",))) for _ in range(10)]
    holder.execute("COMMIT")
    check("prepared statements: with prepare_threshold=None the same query runs 10 times on "
          "another server connection", results == [None] * 10, results)
    p.close()


def test_client_helpers():
    # the Python client's publish and start on connections with psycopg's default
    # prepare_threshold (5): they must not prepare, or the 6th call on a shared server
    # connection fails with 42P05, 08P01 or 26000
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                    "clients", "python"))
    from saga_client import publish, start
    conns = [pooled(prepare_threshold=5) for _ in range(3)]
    errors = []
    for i in range(12):
        for k, conn in enumerate(conns):
            try:
                start(conn, "pool_flow", {"n": i}, idempotency_key=f"helper-{k}-{i}")
                publish(conn, "PoolHelper", {"n": i}, correlation_id=f"helper-{k}-{i}")
            except psycopg.Error as e:
                errors.append(e.sqlstate)
    check("client helpers: 36 start and 36 publish calls from 3 clients with the default "
          "prepare_threshold, no error", errors == [], errors)
    for conn in conns:
        conn.close()


t0 = time.monotonic()
section("sharing", test_sharing)
saga_id = None


def orchestration():
    global saga_id
    saga_id = test_start()
    test_claim(saga_id)
    test_poll(saga_id)


section("orchestration", orchestration)
section("failure", test_failure)
section("publish", test_publish)
section("session state", test_session_state)
section("LISTEN", test_listen)
section("prepared statements", test_prepared)
section("client helpers", test_client_helpers)
print(f"       (client checks took {time.monotonic() - t0:.1f} s)", flush=True)
print(f"clients: {passed} passed, {failed} failed", flush=True)
sys.exit(1 if failed else 0)
