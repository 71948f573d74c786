-- test/chaos/schema.sql: the services of the chaos test and their saga (loaded by run.sh).
--
-- Each service keeps its own record of what it did in svc.effects, one row per effect it
-- applied: the audit reads only these tables and saga.instances / saga.history, never the
-- pollers' own logs.  An order number n (the saga's input "n") names the business object;
-- SQL steps receive only the payload, so n, not the saga id, is the key everywhere.
--
-- The saga "chaos":
--
--   reserve (topic stock, leased claim) -> charge (SQL) -> ship    (topic shipping, transactional poll) -> confirm (topic confirm,  -> loyalty (SQL)
--                                                      -> invoice (topic billing,  leased claim,             transactional poll)
--                                                                  timeout 6 s)
--
-- Every step has a compensation (topic <service>_undo, or SQL), so that a compensated or
-- cancelled saga must have undone every effect it left.  What each step does to a given order
-- (succeed, fail for good, fail once, sit past its timeout) is drawn by the starter and carried
-- in the input's "fate", so that a poller decides from the payload alone and the audit can
-- compare the outcome with the fate.
\set ON_ERROR_STOP on

CREATE SCHEMA svc;

CREATE TABLE svc.effects (
    n                integer NOT NULL,       -- the order (input ->> 'n')
    step             text NOT NULL,
    kind             text NOT NULL,           -- action | compensate
    -- headers ->> 'idempotency_key' for topic tasks; 'sql' for SQL steps (exactly once in
    -- the engine's transaction, no key needed)
    idempotency_key  text NOT NULL,
    -- how many times the effect was applied.  Services that apply it in the report's own
    -- transaction (transactional poll, SQL steps) do not deduplicate: a second application
    -- means the engine handed out a finished task again, and shows up here as 2.
    applied_count    integer NOT NULL DEFAULT 1,
    -- leased-claim services recognise a redelivery by its idempotency key and do not apply
    -- it again; they only count it here
    redeliveries     integer NOT NULL DEFAULT 0,
    protocol         text NOT NULL,           -- poll | lease | sql
    saga_id          bigint,                  -- from the headers (NULL for SQL steps)
    worker           text,
    lease            integer,
    attempt          integer,
    first_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_at          timestamptz,
    PRIMARY KEY (n, step, kind, idempotency_key)
);

-- The stale-report probes of the zombie (services.py zombie): one row per report it made under
-- a lease that had lapsed and been superseded (and per task it left alone because the engine
-- ended it while the zombie's delivery was the last one out: outcome 'skipped').  Written in
-- the report's own transaction, so an accepted report and its record commit together (a crash
-- loses both, never one).
CREATE TABLE svc.stale_probes (
    id               bigserial PRIMARY KEY,
    task_id          bigint NOT NULL,
    saga_id          bigint,
    step             text,
    kind             text NOT NULL,
    lease            integer NOT NULL,
    claimed_attempt  integer NOT NULL,
    call             text NOT NULL,           -- complete | fail_retryable | fail_final | none
    waited_for       text NOT NULL,           -- what showed that the lease was superseded
    last_seen        text,                    -- the task's outbox row when last seen
    step_before      text,                    -- saga.step_runs of the step just before the report
    outcome          text NOT NULL,           -- accepted | refused | skipped
    returned         boolean,                 -- what an accepted call returned
    sqlstate         text,
    message          text,                    -- the error, or the task's events after the claim
    at               timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- apply an effect in the caller's transaction (transactional poll, SQL steps): no
-- deduplication, a repeat is counted as a second application
CREATE FUNCTION svc.apply_in_txn(p_n integer, p_step text, p_kind text, p_key text,
                                 p_protocol text, p_saga_id bigint, p_worker text,
                                 p_attempt integer)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO svc.effects AS e (n, step, kind, idempotency_key, protocol, saga_id, worker, attempt)
    VALUES (p_n, p_step, p_kind, p_key, p_protocol, p_saga_id, p_worker, p_attempt)
    ON CONFLICT (n, step, kind, idempotency_key)
    DO UPDATE SET applied_count = e.applied_count + 1, last_at = clock_timestamp()
$$;

-- apply an effect once per idempotency key (leased claim: the work is done in its own
-- transaction, before the report, so a redelivered task comes back with the same key);
-- returns true when it applied the effect, false for a recognised redelivery
CREATE FUNCTION svc.apply_idempotent(p_n integer, p_step text, p_kind text, p_key text,
                                     p_saga_id bigint, p_worker text, p_lease integer,
                                     p_attempt integer)
RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO svc.effects AS e (n, step, kind, idempotency_key, protocol, saga_id, worker, lease, attempt)
    VALUES (p_n, p_step, p_kind, p_key, 'lease', p_saga_id, p_worker, p_lease, p_attempt)
    ON CONFLICT (n, step, kind, idempotency_key)
    DO UPDATE SET redeliveries = e.redeliveries + 1, last_at = clock_timestamp()
    RETURNING xmax = 0
$$;

-- SQL steps: they run inside the engine, in the transaction of the report (or start, cancel,
-- timeout) that makes them due, as the definer (postgres here).  Their own search_path ends in
-- pg_temp, as the engine requires.
CREATE FUNCTION svc.sql_step(p jsonb, p_step text, p_kind text)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_n integer := (p -> 'input' ->> 'n')::integer;
BEGIN
    IF p_kind = 'action' AND p -> 'input' -> 'fate' ->> p_step = 'fail' THEN
        RAISE EXCEPTION 'step % declined', p_step USING ERRCODE = 'P0001', DETAIL = format('Order %s.', v_n);
    END IF;
    -- a compensation tolerates an action that did not happen: it records the undo either way
    PERFORM svc.apply_in_txn(v_n, p_step, p_kind, 'sql', 'sql', NULL, 'engine', NULL);
    RETURN jsonb_build_object('n', v_n, 'step', p_step, 'kind', p_kind);
END
$$;

CREATE FUNCTION svc.charge(p jsonb) RETURNS jsonb LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT svc.sql_step(p, 'charge', 'action') $$;
CREATE FUNCTION svc.refund(p jsonb) RETURNS jsonb LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT svc.sql_step(p, 'charge', 'compensate') $$;
CREATE FUNCTION svc.loyalty(p jsonb) RETURNS jsonb LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT svc.sql_step(p, 'loyalty', 'action') $$;
CREATE FUNCTION svc.loyalty_undo(p jsonb) RETURNS jsonb LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT svc.sql_step(p, 'loyalty', 'compensate') $$;

-- Retry policies are short so that a saga's whole life fits in seconds; the invoice step's
-- timeout is long enough for a healthy service and short enough that a service sitting on the
-- task (fate "sleep") or a server restart at the wrong moment makes it pass.
SELECT saga.define('chaos', $doc$
{
  "steps": [
    {"name": "reserve", "topic": "stock", "compensate": {"topic": "stock_undo"},
     "retry": {"max_attempts": 6, "initial_delay": "200 milliseconds", "backoff": 2,
               "max_delay": "2 seconds", "jitter": true}},
    {"name": "charge", "sql": "svc.charge", "compensate": {"sql": "svc.refund"}},
    {"name": "ship", "topic": "shipping", "after": ["charge"],
     "compensate": {"topic": "shipping_undo"},
     "retry": {"max_attempts": 5, "initial_delay": "100 milliseconds", "backoff": 2,
               "max_delay": "1 second", "jitter": true}},
    {"name": "invoice", "topic": "billing", "after": ["charge"],
     "compensate": {"topic": "billing_undo"}, "timeout": "6 seconds",
     "retry": {"max_attempts": 4, "initial_delay": "200 milliseconds", "backoff": 2,
               "max_delay": "1 second", "jitter": true}},
    {"name": "confirm", "topic": "confirm", "after": ["ship", "invoice"],
     "compensate": {"topic": "confirm_undo"},
     "retry": {"max_attempts": 5, "initial_delay": "100 milliseconds", "backoff": 2,
               "max_delay": "1 second", "jitter": true}},
    {"name": "loyalty", "sql": "svc.loyalty", "compensate": {"sql": "svc.loyalty_undo"}}
  ]
}
$doc$) AS chaos_version;
