/* saga--0.1.sql: sagas inside PostgreSQL */

\echo Use "CREATE EXTENSION saga" to load this file. \quit

/*
 * The control file names pg_catalog as the extension's schema so that this
 * schema, created here, is a member of the extension and goes with DROP
 * EXTENSION.
 */
CREATE SCHEMA saga;
COMMENT ON SCHEMA saga IS 'sagas: definitions, instances, the outbox and their history';

/*
 * Roles are cluster-wide and outlive the extension; a second database that
 * installs saga finds them already there.
 */
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'saga_admin') THEN
        CREATE ROLE saga_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'saga_worker') THEN
        CREATE ROLE saga_worker NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'saga_reader') THEN
        CREATE ROLE saga_reader NOLOGIN;
    END IF;
END
$roles$;

GRANT USAGE ON SCHEMA saga TO saga_admin, saga_worker, saga_reader;

/*
 * Definitions are immutable once stored: a new document is a new version.
 * step_names keeps the step order of the document so that views can name
 * the steps of an instance without parsing JSON.
 */
CREATE TABLE saga.definitions (
    id          integer NOT NULL,
    name        text NOT NULL,
    version     integer NOT NULL,
    definition  jsonb NOT NULL,
    step_names  text[] NOT NULL,
    owner       pg_catalog.regrole NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT definitions_pkey PRIMARY KEY (id),
    CONSTRAINT definitions_name_version_key UNIQUE (name, version)
);
CREATE SEQUENCE saga.definitions_id_seq AS integer OWNED BY saga.definitions.id;
ALTER TABLE saga.definitions
    ALTER COLUMN id SET DEFAULT pg_catalog.nextval('saga.definitions_id_seq');
COMMENT ON TABLE saga.definitions IS 'saga definitions, one row per version';

/*
 * One row per saga instance.  The state of every step lives in the arrays
 * of this row (indexed by the step's position in the definition), so that
 * every transition locks and rewrites exactly one row: the row lock is what
 * serialises concurrent reports for one saga (joins, cancel, late reports).
 * step_status codes: 0 pending, 1 ready, 2 running (in doubt after a
 * withdrawal), 3 succeeded, 4 failed, 5 compensating, 6 compensated,
 * 7 skipped.  deliveries holds the lease that last reported each step, so a
 * report under an older lease is refused even after the task is gone.
 * Status is not indexed so that transitions stay HOT updates.  Only the
 * engine writes these tables (nobody else is granted to), so status (one of
 * running, completed, compensating, compensated, failed, cancelled) and the
 * outbox's kind are not CHECKed: a CHECK is parsed anew by every statement
 * that writes the row, on the hottest path there is.
 */
CREATE TABLE saga.sagas (
    id               bigint NOT NULL,
    definition_id    integer NOT NULL,
    name             text NOT NULL,
    version          integer NOT NULL,
    status           text NOT NULL,
    pivoted          boolean NOT NULL DEFAULT false,
    cancel_requested boolean NOT NULL DEFAULT false,
    cancel_reason    text,
    step_status      smallint[] NOT NULL,
    attempts         integer[] NOT NULL,
    deliveries       integer[] NOT NULL,
    input            jsonb NOT NULL,
    results          jsonb NOT NULL DEFAULT '{}',
    errors           jsonb NOT NULL DEFAULT '{}',
    incident         jsonb,
    correlation_id   text,
    idempotency_key  text,
    traceparent      text NOT NULL,
    started_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    finished_at      timestamptz,
    deadline_at      timestamptz,
    CONSTRAINT sagas_pkey PRIMARY KEY (id)
) WITH (fillfactor = 80);
CREATE SEQUENCE saga.sagas_id_seq AS bigint MAXVALUE 9007199254740991 OWNED BY saga.sagas.id;
ALTER TABLE saga.sagas ALTER COLUMN id SET DEFAULT pg_catalog.nextval('saga.sagas_id_seq');
CREATE UNIQUE INDEX sagas_idempotency_key ON saga.sagas (name, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX sagas_correlation_id ON saga.sagas (correlation_id)
    WHERE correlation_id IS NOT NULL;
-- deadline_at is cleared and finished_at set once, when the saga finishes
CREATE INDEX sagas_deadline ON saga.sagas (deadline_at) WHERE deadline_at IS NOT NULL;
CREATE INDEX sagas_finished ON saga.sagas (finished_at) WHERE finished_at IS NOT NULL;
COMMENT ON TABLE saga.sagas IS 'saga instances and the state of their steps';

/*
 * Deliverable tasks.  A task's id is derived from its saga, step and kind
 * (saga_id << 10 | step_index << 1 | is_compensation), so a task keeps its
 * id across retries and a report for a task that has already left the
 * outbox still finds its saga without another index.
 */
CREATE TABLE saga.outbox (
    id            bigint NOT NULL,
    topic         text NOT NULL,
    kind          text NOT NULL,
    saga_id       bigint,
    step          text,
    attempt       integer NOT NULL DEFAULT 1,
    max_attempts  integer,
    deliveries    integer NOT NULL DEFAULT 0,
    lease_owner   text,
    lease_length  interval,
    payload       jsonb NOT NULL,
    headers       jsonb NOT NULL,
    visible_at    timestamptz NOT NULL,
    created_at    timestamptz NOT NULL,
    timeout_at    timestamptz,
    CONSTRAINT outbox_pkey PRIMARY KEY (id)
) WITH (fillfactor = 70);
-- matches the poll's WHERE topic = $1 AND visible_at <= $2 ORDER BY visible_at, id
CREATE INDEX outbox_claim ON saga.outbox (topic, visible_at, id);
-- what the background worker looks for: steps past their timeout, lapsed leases
CREATE INDEX outbox_timeout ON saga.outbox (timeout_at) WHERE timeout_at IS NOT NULL;
CREATE INDEX outbox_leased ON saga.outbox (visible_at) WHERE lease_owner IS NOT NULL;
COMMENT ON TABLE saga.outbox IS 'tasks ready for services: poll with FOR UPDATE SKIP LOCKED or saga.claim()';

/*
 * One row per transaction that moved a saga, holding the events it logged
 * (a completion logs "succeeded" and the "dispatched" of what follows): one
 * row and one index entry per transition, like the outbox row it replaces.
 * saga.history shows one row per event.
 */
CREATE TABLE saga.history_log (
    id       bigint NOT NULL,
    saga_id  bigint NOT NULL,
    at       timestamptz NOT NULL,
    actor    text NOT NULL,
    events   text[] NOT NULL,
    steps    text[] NOT NULL,
    details  jsonb[] NOT NULL
);
CREATE SEQUENCE saga.history_id_seq AS bigint OWNED BY saga.history_log.id;
ALTER TABLE saga.history_log ALTER COLUMN id SET DEFAULT pg_catalog.nextval('saga.history_id_seq');
CREATE INDEX history_log_saga_id ON saga.history_log (saga_id, id);
COMMENT ON TABLE saga.history_log IS 'the transitions behind saga.history, one row per transaction';

-- id orders events: the transition's row id * 4096 + the event's place in it
CREATE VIEW saga.history AS
SELECT h.id * 4096 + e.n - 1 AS id, h.saga_id, h.at, e.event, e.step, h.actor, e.detail
  FROM saga.history_log h
 CROSS JOIN LATERAL ROWS FROM (pg_catalog.unnest(h.events), pg_catalog.unnest(h.steps),
                              pg_catalog.unnest(h.details)) WITH ORDINALITY AS e(event, step, detail, n);
COMMENT ON VIEW saga.history IS 'append-only log of every saga transition, one row per event';

SELECT pg_catalog.pg_extension_config_dump('saga.definitions', '');
SELECT pg_catalog.pg_extension_config_dump('saga.definitions_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('saga.sagas', '');
SELECT pg_catalog.pg_extension_config_dump('saga.sagas_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('saga.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('saga.history_log', '');
SELECT pg_catalog.pg_extension_config_dump('saga.history_id_seq', '');

CREATE TYPE saga.task AS (
    id               bigint,
    topic            text,
    kind             text,
    saga_id          bigint,
    step             text,
    attempt          integer,
    lease            integer,
    payload          jsonb,
    headers          jsonb,
    lease_expires_at timestamptz
);
COMMENT ON TYPE saga.task IS 'a task handed out by saga.claim(); lease is the fencing token for reports';

CREATE VIEW saga.instances AS
SELECT s.id, s.name, s.version, s.status, s.correlation_id, s.input,
       s.started_at, s.finished_at, s.updated_at, s.idempotency_key,
       s.traceparent, s.cancel_reason
  FROM saga.sagas s;
COMMENT ON VIEW saga.instances IS 'one row per saga';

/*
 * A step is "running" while a delivery of its task is out (leased, or in
 * doubt after being withdrawn); "ready" while its task waits in the outbox.
 */
CREATE VIEW saga.step_runs AS
SELECT s.id AS saga_id,
       d.step_names[u.ord] AS step,
       CASE WHEN u.code = 1 AND o.deliveries > 0 AND o.lease_owner IS NOT NULL
            THEN 'running'
            ELSE (ARRAY['pending', 'ready', 'running', 'succeeded', 'failed',
                        'compensating', 'compensated', 'skipped'])[u.code + 1]
       END AS status,
       COALESCE(o.attempt, s.attempts[u.ord]) AS attempts,
       s.results -> d.step_names[u.ord] AS result,
       s.errors -> d.step_names[u.ord] AS error,
       (u.ord - 1)::integer AS step_index,
       u.code = 2 AS withdrawn,
       o.id AS task_id,
       o.visible_at
  FROM saga.sagas s
  JOIN saga.definitions d ON d.id = s.definition_id
 CROSS JOIN LATERAL pg_catalog.unnest(s.step_status) WITH ORDINALITY AS u(code, ord)
  LEFT JOIN saga.outbox o
         ON o.id = (s.id << 10) | ((u.ord - 1) << 1) | (CASE WHEN u.code = 5 THEN 1 ELSE 0 END);
COMMENT ON VIEW saga.step_runs IS 'one row per step of every saga';

/*
 * A saga is an incident when its compensation failed for good (status
 * failed: saga.retry resumes it) or when a task that can only be retried
 * (a compensation, a step past the pivot) has failed too many times.
 */
CREATE VIEW saga.incidents AS
SELECT s.id AS saga_id, s.name, s.version, s.correlation_id,
       s.incident ->> 'step' AS step,
       s.incident -> 'error' AS error,
       COALESCE((s.incident ->> 'since')::timestamptz, s.updated_at) AS since,
       s.status,
       (s.incident ->> 'attempts')::integer AS attempts
  FROM saga.sagas s
 WHERE s.incident IS NOT NULL;
COMMENT ON VIEW saga.incidents IS 'sagas that need a person: failed compensations, and tasks that keep failing';

CREATE FUNCTION saga.define(name text, definition jsonb)
RETURNS integer
LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS 'MODULE_PATHNAME', 'saga_define';
COMMENT ON FUNCTION saga.define(text, jsonb) IS 'validate and store a saga definition; returns its version';

CREATE FUNCTION saga.start(name text, input jsonb DEFAULT '{}',
                           correlation_id text DEFAULT NULL,
                           idempotency_key text DEFAULT NULL,
                           traceparent text DEFAULT NULL)
RETURNS bigint
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS 'MODULE_PATHNAME', 'saga_start';
COMMENT ON FUNCTION saga.start(text, jsonb, text, text, text) IS 'start a saga of the latest version of a definition; returns its id';

CREATE FUNCTION saga.claim(topic text, worker text, max_tasks integer DEFAULT 1,
                           lease interval DEFAULT '30 seconds')
RETURNS SETOF saga.task
LANGUAGE c VOLATILE PARALLEL UNSAFE ROWS 10
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS 'MODULE_PATHNAME', 'saga_claim';
COMMENT ON FUNCTION saga.claim(text, text, integer, interval) IS 'lease up to max_tasks visible tasks of a topic';

CREATE FUNCTION saga.complete(task_id bigint, result jsonb DEFAULT '{}', lease integer DEFAULT NULL)
RETURNS boolean
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS 'MODULE_PATHNAME', 'saga_complete';
COMMENT ON FUNCTION saga.complete(bigint, jsonb, integer) IS 'report a task done; false for a repeated identical report';

CREATE FUNCTION saga.fail(task_id bigint, error jsonb DEFAULT '{}', retryable boolean DEFAULT true,
                          lease integer DEFAULT NULL)
RETURNS boolean
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS 'MODULE_PATHNAME', 'saga_fail';
COMMENT ON FUNCTION saga.fail(bigint, jsonb, boolean, integer) IS 'report a task failed; false for a repeated identical report';

CREATE FUNCTION saga.heartbeat(task_id bigint, lease integer, extend interval DEFAULT NULL)
RETURNS timestamptz
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS 'MODULE_PATHNAME', 'saga_heartbeat';
COMMENT ON FUNCTION saga.heartbeat(bigint, integer, interval) IS 'extend a lease; returns when it now expires';

CREATE FUNCTION saga.cancel(saga_id bigint, reason text DEFAULT NULL)
RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS 'MODULE_PATHNAME', 'saga_cancel';
COMMENT ON FUNCTION saga.cancel(bigint, text) IS 'compensate a running saga on request; it ends cancelled';

CREATE FUNCTION saga.retry(saga_id bigint)
RETURNS void
LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS 'MODULE_PATHNAME', 'saga_retry';
COMMENT ON FUNCTION saga.retry(bigint) IS 'resume the compensation of a failed saga';

CREATE FUNCTION saga.tick()
RETURNS jsonb
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS 'MODULE_PATHNAME', 'saga_tick';
COMMENT ON FUNCTION saga.tick() IS 'one round of the time-based work (timeouts, lapsed leases, deadlines, wake-ups, retention); returns counts';

/*
 * About the SET clauses of the functions above: the engine keeps one generic
 * plan per statement and backend (planning each call cost a quarter of the
 * throughput), and a generic plan made while a table was small would scan it
 * whole for ever after: every statement is meant to go through an index, so
 * seqscans are priced out.  A generic plan prices LIMIT $n at a tenth of the
 * table, which with a large backlog is enough to JIT each call: off too.
 */

/*
 * Privileges.  The C functions are not SECURITY DEFINER: they check nothing
 * beyond EXECUTE, then do their table work as the owner of schema saga and
 * run SQL steps as the role that defined the saga.  Nothing is left to
 * PUBLIC.
 */
REVOKE ALL ON ALL TABLES IN SCHEMA saga FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA saga FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA saga FROM PUBLIC;

GRANT EXECUTE ON FUNCTION saga.define(text, jsonb) TO saga_admin;
GRANT EXECUTE ON FUNCTION saga.cancel(bigint, text) TO saga_admin;
GRANT EXECUTE ON FUNCTION saga.retry(bigint) TO saga_admin;
GRANT EXECUTE ON FUNCTION saga.tick() TO saga_admin;
GRANT EXECUTE ON FUNCTION saga.start(text, jsonb, text, text, text) TO saga_admin, saga_worker;
GRANT EXECUTE ON FUNCTION saga.claim(text, text, integer, interval) TO saga_worker;
GRANT EXECUTE ON FUNCTION saga.complete(bigint, jsonb, integer) TO saga_worker;
GRANT EXECUTE ON FUNCTION saga.fail(bigint, jsonb, boolean, integer) TO saga_worker;
GRANT EXECUTE ON FUNCTION saga.heartbeat(bigint, integer, interval) TO saga_worker;

-- the transactional poll locks outbox rows, which takes UPDATE on a column
GRANT SELECT, UPDATE (visible_at) ON saga.outbox TO saga_worker;
GRANT SELECT ON saga.outbox TO saga_reader, saga_admin;
GRANT SELECT ON saga.instances, saga.step_runs, saga.incidents, saga.history, saga.definitions
    TO saga_reader, saga_admin, saga_worker;
