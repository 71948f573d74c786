/* saga--0.4.sql: sagas inside PostgreSQL */

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
 * installs saga finds them already there.  A role of that name that someone
 * else created first would receive the grants below: accept an existing one
 * only without attributes of its own (a role with CREATEROLE can make one),
 * and name its members (a WARNING: CREATE EXTENSION hides notices), so that
 * whoever installs sees who inherits them.
 */
DO $roles$
DECLARE
    r record;
    members text;
BEGIN
    FOR r IN SELECT rolname, oid, rolsuper OR rolcanlogin OR rolcreaterole OR rolcreatedb
                    OR rolreplication OR rolbypassrls AS privileged
               FROM pg_catalog.pg_roles
              WHERE rolname OPERATOR(pg_catalog.=) ANY (ARRAY['saga_admin', 'saga_worker', 'saga_reader'])
    LOOP
        IF r.privileged THEN
            RAISE EXCEPTION 'role "%" already exists with attributes of its own', r.rolname
                USING ERRCODE = '55000',
                      DETAIL = 'An existing saga role must be NOLOGIN without SUPERUSER, CREATEROLE, CREATEDB, REPLICATION or BYPASSRLS.',
                      HINT = 'Find out who created it; then drop it, or take those attributes away with ALTER ROLE.';
        END IF;
        SELECT pg_catalog.string_agg(m.rolname::text, ', ' ORDER BY m.rolname) INTO members
          FROM pg_catalog.pg_auth_members a JOIN pg_catalog.pg_roles m ON m.oid OPERATOR(pg_catalog.=) a.member
         WHERE a.roleid OPERATOR(pg_catalog.=) r.oid;
        IF members IS NOT NULL THEN
            RAISE WARNING 'role "%" already exists; its members are: %', r.rolname, members
                USING HINT = 'They inherit what the extension grants to the role.';
        END IF;
    END LOOP;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'saga_admin') THEN
        CREATE ROLE saga_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'saga_worker') THEN
        CREATE ROLE saga_worker NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'saga_reader') THEN
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
    owner       pg_catalog.name NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT definitions_pkey PRIMARY KEY (id),
    CONSTRAINT definitions_name_version_key UNIQUE (name, version)
);
CREATE SEQUENCE saga.definitions_id_seq AS integer OWNED BY saga.definitions.id;
ALTER TABLE saga.definitions
    ALTER COLUMN id SET DEFAULT pg_catalog.nextval('saga.definitions_id_seq');

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
    poll_lock     boolean,
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
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS 'MODULE_PATHNAME', 'saga_define';

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

CREATE FUNCTION saga.claim(topic text, worker text, max_tasks integer DEFAULT 1,
                           lease interval DEFAULT '30 seconds')
RETURNS SETOF saga.task
LANGUAGE c VOLATILE PARALLEL UNSAFE ROWS 10
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS 'MODULE_PATHNAME', 'saga_claim';

CREATE FUNCTION saga.complete(task_id bigint, result jsonb DEFAULT '{}', lease integer DEFAULT NULL)
RETURNS boolean
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS 'MODULE_PATHNAME', 'saga_complete';

CREATE FUNCTION saga.fail(task_id bigint, error jsonb DEFAULT '{}', retryable boolean DEFAULT true,
                          lease integer DEFAULT NULL)
RETURNS boolean
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS 'MODULE_PATHNAME', 'saga_fail';

CREATE FUNCTION saga.heartbeat(task_id bigint, lease integer, extend interval DEFAULT NULL)
RETURNS timestamptz
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS 'MODULE_PATHNAME', 'saga_heartbeat';

CREATE FUNCTION saga.cancel(saga_id bigint, reason text DEFAULT NULL)
RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS 'MODULE_PATHNAME', 'saga_cancel';

CREATE FUNCTION saga.retry(saga_id bigint)
RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS 'MODULE_PATHNAME', 'saga_retry';

CREATE FUNCTION saga.tick()
RETURNS jsonb
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS 'MODULE_PATHNAME', 'saga_tick';

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

/*
 * The transactional poll locks outbox rows, which takes UPDATE on some
 * column: poll_lock, which nothing reads (not visible_at, with which a
 * worker could hide tasks or end others' leases).
 */
GRANT SELECT, UPDATE (poll_lock) ON saga.outbox TO saga_worker;
GRANT SELECT ON saga.outbox TO saga_reader, saga_admin;
GRANT SELECT ON saga.instances, saga.step_runs, saga.incidents, saga.history, saga.definitions
    TO saga_reader, saga_admin, saga_worker;

/*
 * A definition version is immutable, and the sagas started from it read it
 * for as long as they exist: refuse to change it, or to delete it while a
 * saga refers to it (even a superuser's DELETE, which would leave those
 * sagas unable to move while saga.claim still handed out their tasks).
 * Deleting a version nothing refers to stays possible, for tidying up; the
 * trigger (in C) then tells every backend to forget what it cached.
 */
CREATE FUNCTION saga.definitions_guard()
RETURNS trigger
LANGUAGE c
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'saga_definitions_guard';
CREATE TRIGGER definitions_guard BEFORE UPDATE OR DELETE ON saga.definitions
    FOR EACH ROW EXECUTE FUNCTION saga.definitions_guard();
CREATE TRIGGER definitions_guard_truncate BEFORE TRUNCATE ON saga.definitions
    FOR EACH STATEMENT EXECUTE FUNCTION saga.definitions_guard();
REVOKE ALL ON FUNCTION saga.definitions_guard() FROM PUBLIC;

/*
 * Comments: argument and result shapes, units, bounds and every error with
 * its SQLSTATE.  The README's "SQL reference" says the same at more length.
 */
COMMENT ON FUNCTION saga.define(text, jsonb) IS
'saga.define(name, definition) -> integer: validate and store a saga definition, returning its version (1, 2, ...; an identical document returns the current version and stores nothing). name matches ^[a-z][a-z0-9_]{0,62}$; definition is an object with "steps" (1 to 512) and an optional "deadline", at most saga.max_payload_size bytes; intervals are positive and at most 3650 days. SQL steps run as the calling role. Errors: 22004 null argument, 22001 name over 63 bytes, 42602 bad name, 22023 bad document, 22008 interval out of range, 42710 duplicate step, 42704 unknown step in "after", 42P17 cycle, 42883 missing function, 42809 not a plain function, 42804 function not returning jsonb, 42P13 a function whose own search_path does not end in pg_temp, 42501 the caller lacks USAGE on its schema or EXECUTE, or the name''s latest version belongs to a role the caller is not a member of, 54000 too large, 0A000 "async". Granted to saga_admin.';

COMMENT ON FUNCTION saga.start(text, jsonb, text, text, text) IS
'saga.start(name, input jsonb, correlation_id, idempotency_key, traceparent) -> bigint: start a saga of the latest version of a definition and return its id; steps without predecessors are dispatched (SQL steps run) in the caller''s transaction. correlation_id and idempotency_key are at most 255 bytes, traceparent is W3C (55 bytes), input at most saga.max_payload_size bytes. The same name and idempotency_key return the first saga. Errors: 22004 null name or input, 22001 argument too long, 22023 empty argument or bad traceparent, 42704 unknown definition, 54000 input too large. Granted to saga_admin and saga_worker.';

COMMENT ON FUNCTION saga.claim(text, text, integer, interval) IS
'saga.claim(topic, worker, max_tasks, lease interval) -> setof saga.task: lease up to max_tasks (1 to 1000) visible tasks of a topic, oldest first, and commit the lease with the caller''s transaction; each task''s lease number fences its reports. topic matches ^[a-z][a-z0-9_]{0,47}$, worker is 1 to 255 bytes, lease is positive and at most 3650 days. Errors: 22004 null argument, 22001 topic or worker too long, 42602 bad topic, 22023 bad max_tasks or lease, 22008 lease out of range. Granted to saga_worker.';

COMMENT ON FUNCTION saga.complete(bigint, jsonb, integer) IS
'saga.complete(task_id, result jsonb, lease) -> boolean: report a task done; true when recorded, false for a repeat of the report that settled it. With lease (from saga.claim) the report is fenced by it; without, the caller''s row lock (transactional poll) is the lease, and a task under another worker''s live lease is refused. result is at most saga.max_payload_size bytes. Errors: 22004 null task_id, 42704 unknown task, 55000 lost lease, task leased to another worker or (without lease) not visible, or a conflicting report, 54000 too large. Granted to saga_worker.';

COMMENT ON FUNCTION saga.fail(bigint, jsonb, boolean, integer) IS
'saga.fail(task_id, error jsonb, retryable, lease) -> boolean: report a task failed; retryable (default true) schedules the next attempt after the step''s backoff, otherwise (or with attempts exhausted) the step fails for good and compensation starts in this transaction. Returns false for a repeated identical report. Fencing as for saga.complete. Errors: 22004 null task_id, 42704 unknown task, 55000 lost lease, task leased to another worker or (without lease) not visible, or a conflicting report, 54000 too large. Granted to saga_worker.';

COMMENT ON FUNCTION saga.heartbeat(bigint, integer, interval) IS
'saga.heartbeat(task_id, lease, extend interval) -> timestamptz: extend a held lease by extend (default: the claim''s lease length, positive and at most 3650 days) from now; returns when it now expires. Errors: 22004 null task_id or lease, 22023 bad extend, 22008 extend out of range, 42704 unknown task, 55000 lease no longer held or task not leased. Granted to saga_worker.';

COMMENT ON FUNCTION saga.cancel(bigint, text) IS
'saga.cancel(saga_id, reason) -> void: compensate a running saga on request; it ends cancelled once its compensations are done. reason is at most 1024 bytes. Errors: 22004 null saga_id, 22001 reason too long, 42704 unknown saga, 55000 saga not running, past its pivot, or being changed by an enclosing call in this transaction. Granted to saga_admin.';

COMMENT ON FUNCTION saga.retry(bigint) IS
'saga.retry(saga_id) -> void: resume a saga in status failed (its compensation failed for good, see saga.incidents) after a person fixed the cause. Errors: 22004 null saga_id, 42704 unknown saga, 55000 saga not failed. Granted to saga_admin.';

COMMENT ON FUNCTION saga.tick() IS
'saga.tick() -> jsonb: one round of the time-based work (step timeouts, lapsed leases, deadlines, wake-ups, retention) in the caller''s transaction; returns counts {"timeouts", "lapsed_leases", "deadlines", "notified_topics", "purged_sagas"}. For servers without the background worker (e.g. from pg_cron). Granted to saga_admin.';

COMMENT ON FUNCTION saga.definitions_guard() IS
'trigger of saga.definitions: a stored version is immutable (UPDATE raises 55000); one that sagas were started from cannot be deleted, nor the table truncated while sagas exist (2BP01); a deletion makes every backend forget its cached definitions';

COMMENT ON TABLE saga.definitions IS
'saga definitions, one row per version (immutable); owner is the name of the role that defined it, as whom its SQL steps run';
COMMENT ON COLUMN saga.definitions.owner IS
'name of the role that defined this version: its SQL steps run as this role, resolved by name at each run (as pg_dump maps owners); a step of a definition whose role no longer exists fails with 42704';
COMMENT ON COLUMN saga.outbox.poll_lock IS
'never read or written by the engine: saga_worker''s UPDATE privilege on this column alone is what lets the transactional poll lock rows with FOR UPDATE';

/* ---------- 0.3: choreography ---------- */

/*
 * Events.  One row per published event, written in the publisher's
 * transaction with its deliveries.  An event belongs to the flows of its
 * correlation id; late says it arrived after such a flow had finished.
 */
CREATE TABLE saga.events (
    id               bigint NOT NULL,
    type             text NOT NULL,
    payload          jsonb NOT NULL,
    correlation_id   text NOT NULL,
    causation_id     bigint,
    key              text,
    idempotency_key  text,
    traceparent      text NOT NULL,
    published_at     timestamptz NOT NULL,
    publisher        text NOT NULL,
    hops             integer NOT NULL,
    deliveries       integer NOT NULL,
    late             boolean NOT NULL DEFAULT false,
    CONSTRAINT events_pkey PRIMARY KEY (id)
);
CREATE SEQUENCE saga.events_id_seq AS bigint MAXVALUE 9007199254740991 OWNED BY saga.events.id;
ALTER TABLE saga.events ALTER COLUMN id SET DEFAULT pg_catalog.nextval('saga.events_id_seq');
CREATE UNIQUE INDEX events_idempotency_key ON saga.events (type, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- "where is order 42": a flow's events, in publish order
CREATE INDEX events_correlation_id ON saga.events (correlation_id, id);
-- saga.replay walks one type in publish order
CREATE INDEX events_type ON saga.events (type, id);
COMMENT ON TABLE saga.events IS
'published events, one row each: type, payload, correlation_id, causation_id (the event it answers), key, traceparent (W3C, a span of its own), published_at, publisher (role), hops (causation depth), deliveries (outbox rows written), late (arrived after its flow finished)';

/*
 * Subscriptions: (event_type, topic), one each.  options holds what the
 * caller gave (retry, filter, replay_from: normalised to ISO 8601 in UTC);
 * owner is the role that created it, whose members alone may change it.
 */
CREATE TABLE saga.subscriptions (
    id                bigint NOT NULL,
    event_type        text NOT NULL,
    topic             text NOT NULL,
    options           jsonb NOT NULL,
    choreography      text,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    owner             pg_catalog.name NOT NULL,
    CONSTRAINT subscriptions_pkey PRIMARY KEY (id),
    CONSTRAINT subscriptions_event_type_topic_key UNIQUE (event_type, topic)
);
CREATE SEQUENCE saga.subscriptions_id_seq AS bigint OWNED BY saga.subscriptions.id;
ALTER TABLE saga.subscriptions ALTER COLUMN id SET DEFAULT pg_catalog.nextval('saga.subscriptions_id_seq');
COMMENT ON TABLE saga.subscriptions IS
'one row per (event_type, topic): every event of that type published after the subscription committed is delivered to the topic through saga.outbox; options: retry, filter (jsonpath), replay_from; choreography names the choreography that created or uses it; owner is the role that created it (only its members may change, remove or replay into it)';

/*
 * Why a filter skipped a delivery: one row per (subscription, event), an
 * insert that waits for nobody, purged with the events.
 */
CREATE TABLE saga.filter_errors (
    subscription_id  bigint NOT NULL,
    event_id         bigint NOT NULL,
    error            text NOT NULL,
    at               timestamptz NOT NULL
);
CREATE INDEX filter_errors_subscription ON saga.filter_errors (subscription_id, at);
CREATE INDEX filter_errors_at ON saga.filter_errors (at);
COMMENT ON TABLE saga.filter_errors IS
'the statistics of subscription filters that failed: one row per skipped delivery (subscription_id, event_id, error: message and SQLSTATE, at most 1 kB, or the time budget saga.filter_timeout), purged after saga.retention';

/*
 * Event deliveries are outbox rows of kind 'event' with negative ids (a
 * saga's task ids are positive and encode the saga), from a sequence of
 * their own.
 */
CREATE SEQUENCE saga.deliveries_id_seq AS bigint OWNED BY saga.outbox.id;
ALTER TABLE saga.outbox ADD COLUMN event_id bigint;
ALTER TABLE saga.outbox ADD COLUMN subscription_id bigint;
-- an event delivery's last reported failure
ALTER TABLE saga.outbox ADD COLUMN error jsonb;
-- what retention must keep: events with a delivery pending
CREATE INDEX outbox_event ON saga.outbox (event_id) WHERE event_id IS NOT NULL;

/*
 * Dead letters: deliveries that failed for good, out of the pollable
 * outbox until saga.redeliver.  deliveries is the last lease number, so a
 * report under a lease from before a redelivery is refused.
 */
CREATE TABLE saga.dead_letters (
    id               bigint NOT NULL,
    topic            text NOT NULL,
    event_id         bigint NOT NULL,
    subscription_id  bigint,
    payload          jsonb NOT NULL,
    headers          jsonb NOT NULL,
    attempts         integer NOT NULL,
    deliveries       integer NOT NULL,
    error            jsonb NOT NULL,
    dead_at          timestamptz NOT NULL,
    CONSTRAINT dead_letters_pkey PRIMARY KEY (id)
);
CREATE INDEX dead_letters_event ON saga.dead_letters (event_id);
CREATE INDEX dead_letters_topic ON saga.dead_letters (topic, dead_at);
COMMENT ON TABLE saga.dead_letters IS
'event deliveries that failed non-retryably or ran out of attempts: id (the task id), topic, event_id, payload, headers, attempts, error, dead_at; saga.redeliver(id) sends one again';

/*
 * Choreography definitions: versioned and immutable like saga definitions,
 * with which they share one namespace of names.
 */
CREATE TABLE saga.choreographies (
    id          integer NOT NULL,
    name        text NOT NULL,
    version     integer NOT NULL,
    definition  jsonb NOT NULL,
    owner       pg_catalog.name NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT choreographies_pkey PRIMARY KEY (id),
    CONSTRAINT choreographies_name_version_key UNIQUE (name, version)
);
CREATE SEQUENCE saga.choreographies_id_seq AS integer OWNED BY saga.choreographies.id;
ALTER TABLE saga.choreographies
    ALTER COLUMN id SET DEFAULT pg_catalog.nextval('saga.choreographies_id_seq');
COMMENT ON TABLE saga.choreographies IS
'choreography definitions, one row per version (immutable): the event graph of participants (topics), their on/emits/fails events and compensations, completed events, a deadline and a hop limit';

/*
 * Flows: one per (choreography, correlation id).  seen lists the event
 * types the flow has had; status and waiting_on are derived from the graph
 * and seen, and stored so that the view is a plain read.
 */
CREATE TABLE saga.flows (
    id               bigint NOT NULL,
    choreography     text NOT NULL,
    version          integer NOT NULL,
    correlation_id   text NOT NULL,
    status           text NOT NULL,
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz,
    waiting_on       text[] NOT NULL,
    choreography_id  integer NOT NULL,
    seen             text[] NOT NULL,
    last_event_id    bigint NOT NULL,
    deadline_at      timestamptz,
    updated_at       timestamptz NOT NULL,
    incident         jsonb,
    CONSTRAINT flows_pkey PRIMARY KEY (id),
    -- one flow per (choreography, correlation id); also finds a correlation id's flows
    CONSTRAINT flows_correlation_id_choreography_key UNIQUE (correlation_id, choreography)
) WITH (fillfactor = 80);
CREATE SEQUENCE saga.flows_id_seq AS bigint OWNED BY saga.flows.id;
ALTER TABLE saga.flows ALTER COLUMN id SET DEFAULT pg_catalog.nextval('saga.flows_id_seq');
-- deadline_at is cleared when the flow leaves running, finished_at set once
CREATE INDEX flows_deadline ON saga.flows (deadline_at) WHERE deadline_at IS NOT NULL;
CREATE INDEX flows_finished ON saga.flows (finished_at) WHERE finished_at IS NOT NULL;
COMMENT ON TABLE saga.flows IS
'one row per run of a choreography (choreography, correlation_id): status running, completed, compensating, compensated, stuck (deadline passed, nothing to publish) or looping (hop limit); waiting_on lists the participants the flow waits for';

SELECT pg_catalog.pg_extension_config_dump('saga.events', '');
SELECT pg_catalog.pg_extension_config_dump('saga.events_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('saga.subscriptions', '');
SELECT pg_catalog.pg_extension_config_dump('saga.subscriptions_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('saga.filter_errors', '');
SELECT pg_catalog.pg_extension_config_dump('saga.deliveries_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('saga.dead_letters', '');
SELECT pg_catalog.pg_extension_config_dump('saga.choreographies', '');
SELECT pg_catalog.pg_extension_config_dump('saga.choreographies_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('saga.flows', '');
SELECT pg_catalog.pg_extension_config_dump('saga.flows_id_seq', '');

/* sagas whose compensation needs a person, and stuck or looping flows */
CREATE OR REPLACE VIEW saga.incidents AS
SELECT s.id AS saga_id, s.name, s.version, s.correlation_id,
       s.incident ->> 'step' AS step,
       s.incident -> 'error' AS error,
       COALESCE((s.incident ->> 'since')::timestamptz, s.updated_at) AS since,
       s.status,
       (s.incident ->> 'attempts')::integer AS attempts,
       'saga'::text AS kind,
       NULL::bigint AS flow_id,
       s.incident AS detail
  FROM saga.sagas s
 WHERE s.incident IS NOT NULL
UNION ALL
SELECT NULL::bigint, f.choreography, f.version, f.correlation_id,
       NULL::text, NULL::jsonb,
       COALESCE((f.incident ->> 'since')::timestamptz, f.updated_at),
       f.status, NULL::integer,
       f.status || '_flow', f.id, f.incident
  FROM saga.flows f
 WHERE f.incident IS NOT NULL;
COMMENT ON VIEW saga.incidents IS
'what needs a person: sagas whose compensation failed or whose tasks keep failing (kind saga), and flows that are stuck (kind stuck_flow: the deadline passed with nothing to publish) or looping (kind looping_flow: an event passed the hop limit); detail says why';

CREATE FUNCTION saga.publish(event_type text, payload jsonb DEFAULT '{}',
                             correlation_id text DEFAULT NULL,
                             causation_id bigint DEFAULT NULL,
                             key text DEFAULT NULL,
                             idempotency_key text DEFAULT NULL,
                             traceparent text DEFAULT NULL)
RETURNS bigint
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS 'MODULE_PATHNAME', 'saga_publish';

CREATE FUNCTION saga.subscribe(event_type text, topic text, options jsonb DEFAULT '{}')
RETURNS bigint
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS 'MODULE_PATHNAME', 'saga_subscribe';

CREATE FUNCTION saga.unsubscribe(event_type text, topic text)
RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS 'MODULE_PATHNAME', 'saga_unsubscribe';

CREATE FUNCTION saga.redeliver(task_id bigint)
RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS 'MODULE_PATHNAME', 'saga_redeliver';

CREATE FUNCTION saga.replay(event_type text, topic text, since timestamptz,
                            until timestamptz DEFAULT pg_catalog.now())
RETURNS bigint
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS 'MODULE_PATHNAME', 'saga_replay';

CREATE FUNCTION saga.worker_status(OUT served boolean, OUT preloaded boolean, OUT listed boolean,
                                   OUT worker_pid integer)
RETURNS record
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'saga_worker_status';

CREATE FUNCTION saga.release(task_id bigint, lease integer)
RETURNS boolean
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS 'MODULE_PATHNAME', 'saga_release';

CREATE FUNCTION saga.define_choreography(name text, definition jsonb)
RETURNS integer
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off
SET jit = off
AS 'MODULE_PATHNAME', 'saga_define_choreography';

/*
 * A choreography version is as immutable as a saga definition, and the
 * flows started from it read it while they exist (the same C trigger).
 */
CREATE TRIGGER choreographies_guard BEFORE UPDATE OR DELETE ON saga.choreographies
    FOR EACH ROW EXECUTE FUNCTION saga.definitions_guard();
CREATE TRIGGER choreographies_guard_truncate BEFORE TRUNCATE ON saga.choreographies
    FOR EACH STATEMENT EXECUTE FUNCTION saga.definitions_guard();

REVOKE ALL ON saga.events, saga.subscriptions, saga.filter_errors, saga.dead_letters,
    saga.choreographies, saga.flows FROM PUBLIC;
REVOKE ALL ON SEQUENCE saga.events_id_seq, saga.subscriptions_id_seq, saga.deliveries_id_seq,
    saga.choreographies_id_seq, saga.flows_id_seq FROM PUBLIC;
REVOKE ALL ON FUNCTION saga.publish(text, jsonb, text, bigint, text, text, text),
    saga.worker_status(),
    saga.release(bigint, integer),
    saga.subscribe(text, text, jsonb), saga.unsubscribe(text, text), saga.redeliver(bigint),
    saga.replay(text, text, timestamptz, timestamptz), saga.define_choreography(text, jsonb)
    FROM PUBLIC;

GRANT EXECUTE ON FUNCTION saga.publish(text, jsonb, text, bigint, text, text, text) TO saga_worker;
GRANT EXECUTE ON FUNCTION saga.release(bigint, integer) TO saga_worker;
GRANT EXECUTE ON FUNCTION saga.worker_status() TO saga_reader, saga_admin, saga_worker;
GRANT EXECUTE ON FUNCTION saga.subscribe(text, text, jsonb) TO saga_admin;
GRANT EXECUTE ON FUNCTION saga.unsubscribe(text, text) TO saga_admin;
GRANT EXECUTE ON FUNCTION saga.redeliver(bigint) TO saga_admin;
GRANT EXECUTE ON FUNCTION saga.replay(text, text, timestamptz, timestamptz) TO saga_admin;
GRANT EXECUTE ON FUNCTION saga.define_choreography(text, jsonb) TO saga_admin;
GRANT SELECT ON saga.events, saga.subscriptions, saga.filter_errors, saga.dead_letters,
    saga.choreographies, saga.flows TO saga_reader, saga_admin, saga_worker;

COMMENT ON FUNCTION saga.publish(text, jsonb, text, bigint, text, text, text) IS
'saga.publish(event_type, payload jsonb, correlation_id, causation_id, key, idempotency_key, traceparent) -> bigint: record an event and write one delivery (outbox row, kind event) per subscription of its type whose filter matches, in the caller''s transaction; returns the event id. event_type matches ^[A-Za-z][A-Za-z0-9_.]{0,62}$; correlation_id, key and idempotency_key are at most 255 bytes; payload at most saga.max_payload_size bytes. causation_id names the event being handled: its correlation id is inherited, the trace continues, hops = its hops + 1. The same event_type and idempotency_key return the first event. Past the hop limit (the flow''s choreography max_hops, else saga.max_hops) the event is recorded with 0 deliveries and its flow turns looping. Errors: 22004 null event_type or payload, 22001 argument too long, 22023 bad event type, empty argument, bad traceparent or a correlation_id that differs from the cause''s, 42704 unknown causation_id, 54000 payload too large. Granted to saga_worker.';

COMMENT ON FUNCTION saga.subscribe(text, text, jsonb) IS
'saga.subscribe(event_type, topic, options jsonb) -> bigint: deliver every later event of event_type to topic (subscribing again updates options); returns the subscription id. options: retry (as for steps; default 3 attempts), filter (a jsonpath predicate on the payload, lax mode, at most 4096 bytes and saga.filter_timeout per event: false or null skip the delivery, an error skips it and is recorded in saga.filter_errors), replay_from (timestamptz: also deliver the retained events published since then). Errors: 22004 null argument, 22001 too long, 22023 bad event type or options, 42602 bad topic, 42601 a filter that does not parse, 22008 interval out of range, 54000 filter too long or 1000 subscriptions of the type already, 42501 the subscription belongs to a role the caller is not a member of. Granted to saga_admin.';

COMMENT ON FUNCTION saga.unsubscribe(text, text) IS
'saga.unsubscribe(event_type, topic) -> void: stop delivering event_type to topic; deliveries already in the outbox drain, dead letters stay. Errors: 22004 null argument, 42704 no such subscription, 42501 it belongs to a role the caller is not a member of. Granted to saga_admin.';

COMMENT ON FUNCTION saga.redeliver(bigint) IS
'saga.redeliver(task_id) -> void: put a dead letter back into the outbox, visible now, with fresh attempts; a report under a lease from before is refused with 55000. Errors: 22004 null task_id, 42704 no dead letter with that id. Granted to saga_admin.';

COMMENT ON FUNCTION saga.replay(text, text, timestamptz, timestamptz) IS
'saga.replay(event_type, topic, since, until) -> bigint: deliver again, in publish order, the retained events of event_type published in [since, until) to the existing subscription (event_type, topic), its filter applied, with header replay = true and idempotency keys of their own; flows, hops and deadlines do not change. Returns how many deliveries were written (at most 100000 per call). Errors: 22004 null argument, 42704 no such subscription, 42501 it belongs to a role the caller is not a member of, 22023 until before since, 54000 more than 100000 deliveries. Granted to saga_admin.';

COMMENT ON FUNCTION saga.define_choreography(text, jsonb) IS
'saga.define_choreography(name, definition) -> integer: validate and store a choreography (start, participants with on/emits/fails/compensation, completed, deadline, max_hops) and subscribe each participant to its on and compensation.on events; returns the version (an identical document returns the current version and stores nothing). Shares its namespace with saga.define. Errors: 22004 null argument, 22001 name too long, 42602 bad name, 22023 bad document or a graph rule broken (DETAIL names the rule, the events and the JSON path), 42P17 a cycle (in DETAIL), 42809 the name is a saga definition, 42501 the latest version belongs to another role, 54000 too large. Granted to saga_admin.';

COMMENT ON FUNCTION saga.complete(bigint, jsonb, integer) IS
'saga.complete(task_id, result jsonb, lease) -> boolean: report a task done; true when recorded, false for a repeat of the report that settled it. With lease (from saga.claim) the report is fenced by it; without, the caller''s row lock (transactional poll) is the lease, and a task under another worker''s live lease is refused. For an event delivery (negative task_id) result is not kept; a delivery that already finished returns false. result is at most saga.max_payload_size bytes. Errors: 22004 null task_id, 42704 unknown task, 55000 lost lease, task leased to another worker or (without lease) not visible, or a conflicting report, 54000 too large. Granted to saga_worker.';

COMMENT ON FUNCTION saga.fail(bigint, jsonb, boolean, integer) IS
'saga.fail(task_id, error jsonb, retryable, lease) -> boolean: report a task failed; retryable (default true) schedules the next attempt after the step''s (or subscription''s) backoff, otherwise (or with attempts exhausted) the step fails for good and compensation starts in this transaction, or the event delivery becomes a dead letter. Returns false for a repeated identical report. Fencing as for saga.complete. Errors: 22004 null task_id, 42704 unknown task, 55000 lost lease, task leased to another worker or (without lease) not visible, or a conflicting report, 54000 too large. Granted to saga_worker.';

COMMENT ON FUNCTION saga.worker_status() IS
'saga.worker_status() -> (served, preloaded, listed, worker_pid): whether a background worker does this database''s time-based work (step timeouts, deadlines of sagas and flows, lapsed leases, wake-ups of delayed retries, retention): served when the library is in shared_preload_libraries (preloaded) and saga.databases names the database (listed); worker_pid is its process, NULL while none runs. Where not served, call saga.tick() from a scheduler. Granted to saga_reader, saga_admin and saga_worker.';

COMMENT ON FUNCTION saga.release(bigint, integer) IS
'saga.release(task_id, lease) -> boolean: hand a task leased by saga.claim back (a service shutting down): visible again at once, the attempt not counted, the lease numbers going on (a report under the released lease is refused); history records "released". Returns false when the lease had already ended (released, lapsed, or a retryable failure reported). Errors: 22004 null argument, 22023 lease not positive, 42704 unknown task, 55000 the task left the outbox or its current delivery is another. Granted to saga_worker.';

COMMENT ON FUNCTION saga.heartbeat(bigint, integer, interval) IS
'saga.heartbeat(task_id, lease, extend interval) -> timestamptz: extend a held lease by extend (default: the claim''s lease length, positive and at most 3650 days) from now, capped at the step''s timeout; returns when it now expires. Returns NULL, and does not extend the lease, when the task''s saga stopped running (cancelled, or compensating after another step failed): stop the work, then report it or let the lease lapse. Errors: 22004 null task_id or lease, 22023 bad extend, 22008 extend out of range, 42704 unknown task, 55000 lease no longer held or task not leased. Granted to saga_worker.';

COMMENT ON FUNCTION saga.tick() IS
'saga.tick() -> jsonb: one round of the time-based work (step timeouts, lapsed leases, deadlines of sagas and flows, retries of SQL steps past the pivot, wake-ups, retention) in the caller''s transaction; returns counts {"timeouts", "lapsed_leases", "deadlines", "notified_topics", "purged_sagas", "flow_deadlines", "purged_events", "purged_flows", "sql_retries"}. For servers without the background worker (e.g. from pg_cron). Granted to saga_admin.';

/* ---- from saga--0.3--0.4.sql ---- */

/*
 * Bridges between orchestration and choreography.
 *
 * An await step waits as an outbox row on the internal topic 'saga await'
 * (not a valid topic name, so no service can claim it; visible_at is
 * infinity, so no poller sees it), with the event type it awaits in
 * awaits.  saga.publish finds the waiting steps of an awaited type and
 * correlation id through outbox_await; the index holds await rows only.
 */
ALTER TABLE saga.outbox ADD COLUMN awaits text;
CREATE INDEX outbox_await ON saga.outbox (awaits, (headers OPERATOR(pg_catalog.->>) 'correlation_id'))
    WHERE awaits IS NOT NULL;
COMMENT ON COLUMN saga.outbox.awaits IS
'an await step''s row (topic ''saga await'', never visible, never claimable): the event type it waits for; NULL for every other task';

-- the event that started a saga through a start_saga subscription: the cause of the events it publishes
ALTER TABLE saga.sagas ADD COLUMN event_id bigint;
COMMENT ON COLUMN saga.sagas.event_id IS
'the event whose start_saga subscription started the saga (NULL otherwise): the causation_id of the events the saga publishes, so their hops count on';

CREATE OR REPLACE VIEW saga.instances AS
SELECT s.id, s.name, s.version, s.status, s.correlation_id, s.input,
       s.started_at, s.finished_at, s.updated_at, s.idempotency_key,
       s.traceparent, s.cancel_reason, s.event_id
  FROM saga.sagas s;
COMMENT ON VIEW saga.instances IS 'one row per saga; event_id: the event that started it through a start_saga subscription';

COMMENT ON FUNCTION saga.define(text, jsonb) IS
'saga.define(name, definition) -> integer: validate and store a saga definition, returning its version (1, 2, ...; an identical document returns the current version and stores nothing). name matches ^[a-z][a-z0-9_]{0,62}$; definition is an object with "steps" (1 to 512), an optional "deadline" and an optional "publish" ({"completed", "compensated", "cancelled"}: the event type published when the saga ends so), at most saga.max_payload_size bytes; a step has a "topic", an "sql" function or an "await" event type, and may "publish" an event type when it succeeds (payload: its result); intervals are positive and at most 3650 days. SQL steps run as the calling role. Errors: 22004 null argument, 22001 name over 63 bytes, 42602 bad name, topic or event type, 22023 bad document (also "retry", "topic" or "sql" on an await step), 22008 interval out of range, 42710 duplicate step, 42704 unknown step in "after", 42P17 cycle, 42883 missing function, 42809 not a plain function, 42804 function not returning jsonb, 42P13 a function whose own search_path does not end in pg_temp, 42501 the caller lacks USAGE on its schema or EXECUTE, or the name''s latest version belongs to a role the caller is not a member of, 54000 too large, 0A000 "async", 42501 also a definition that publishes while the caller may not execute saga.publish. Granted to saga_admin.';

COMMENT ON FUNCTION saga.start(text, jsonb, text, text, text) IS
'saga.start(name, input jsonb, correlation_id, idempotency_key, traceparent) -> bigint: start a saga of the latest version of a definition and return its id; steps without predecessors are dispatched (SQL steps run, await steps find an event already published) in the caller''s transaction. correlation_id and idempotency_key are at most 255 bytes, traceparent is W3C (55 bytes), input at most saga.max_payload_size bytes. The same name and idempotency_key return the first saga. Errors: 22004 null name or input, or no correlation_id for a definition with await steps, 22001 argument too long, 22023 empty argument, bad traceparent, or an idempotency_key beginning with event: (reserved for start_saga), 42704 unknown definition, 54000 input too large. Granted to saga_admin and saga_worker.';

COMMENT ON FUNCTION saga.subscribe(text, text, jsonb) IS
'saga.subscribe(event_type, topic, options jsonb) -> bigint: deliver every later event of event_type to topic (subscribing again updates options); returns the subscription id. options: retry (as for steps; default 3 attempts), filter (a jsonpath predicate on the payload, lax mode, at most 4096 bytes and saga.filter_timeout per event: false or null skip the delivery, an error skips it and is recorded in saga.filter_errors), replay_from (timestamptz: also deliver the retained events published since then), start_saga (a saga definition''s name: instead of a delivery, each event starts that saga in the publishing transaction, input the payload, correlation id and trace the event''s, idempotency key ''event:<event id>'', so a replayed event finds its saga rather than starting another; not with retry; one call starts and publishes at most 1000 sagas and events this way, 64 deep, else 54000). Errors: 22004 null argument, 22001 too long, 22023 bad event type or options, 42602 bad topic, 42601 a filter that does not parse, 42704 start_saga names no saga definition, 42809 start_saga names a choreography, 22008 interval out of range, 54000 filter too long or 1000 subscriptions of the type already, 42501 the subscription belongs to a role the caller is not a member of, or start_saga names a definition of such a role. Granted to saga_admin.';


/* Topics: the outbox's backlog per topic, for people and for monitoring */

/*
 * One row per topic with a task in the outbox or a dead letter.  A task is
 * in one of four states, by visible_at and lease_owner, as of now() (the
 * statement's transaction start, as the poll's "visible_at <= now()"):
 *   ready    visible_at <= now(): what a poll or saga.claim takes next;
 *            also a task whose lease lapsed unreported (the next claim
 *            counts that attempt) and one withdrawn in doubt (the next claim
 *            settles it)
 *   leased   lease_owner set and visible_at > now(): under a live lease
 *            (a lease moves visible_at to its end)
 *   parked   visible_at = 'infinity': a compensation that failed for good,
 *            waiting for saga.retry (it is in saga.incidents)
 *   delayed  the rest: visible_at in the future, not leased: a retry's
 *            backoff
 * The outbox keeps no record of a lease once it ended (nor does the
 * transactional poll leave one, and event deliveries have no history), so
 * last_claim is the start of the newest lease still on a task of the topic:
 * visible_at - lease_length, which a heartbeat without "extend" renews and a
 * step's timeout caps; never later than now().
 *
 * The engine's internal topics are not a service's and are left out: SQL
 * steps awaiting the worker's retry (saga sql, SAGA_SQL_RETRY_TOPIC) and
 * await steps waiting for their event (saga await, SAGA_AWAIT_TOPIC).
 *
 * Cost: the topics are found by skipping through the indexes on (topic,
 * ...) of the outbox and the dead letters, one probe per topic, and each
 * count is a range of outbox_claim (topic, visible_at, id), read
 * index-only where the visibility map allows; leases come from the partial
 * index outbox_leased.  No sort or hash over the whole outbox.  The planner
 * cannot know how few topics there are and prices the per-topic counts high
 * enough to JIT-compile them, which took longer (200 ms) than the query
 * (100 ms with a million tasks): the query is a function with jit off, and
 * the view reads it.
 */
CREATE FUNCTION saga.topic_backlog(OUT topic text, OUT ready bigint, OUT delayed bigint,
                                   OUT leased bigint, OUT parked bigint,
                                   OUT oldest_ready_age interval, OUT dead_letters bigint,
                                   OUT last_claim timestamptz)
RETURNS SETOF record
LANGUAGE sql STABLE PARALLEL UNSAFE ROWS 20
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $topics$
    WITH RECURSIVE outbox_topics(topic) AS (
        SELECT pg_catalog.min(o.topic) FROM saga.outbox o
        UNION ALL
        SELECT (SELECT pg_catalog.min(o.topic) FROM saga.outbox o
                 WHERE o.topic OPERATOR(pg_catalog.>) t.topic)
          FROM outbox_topics t
         WHERE t.topic IS NOT NULL
    ), dead_topics(topic) AS (
        SELECT pg_catalog.min(d.topic) FROM saga.dead_letters d
        UNION ALL
        SELECT (SELECT pg_catalog.min(d.topic) FROM saga.dead_letters d
                 WHERE d.topic OPERATOR(pg_catalog.>) t.topic)
          FROM dead_topics t
         WHERE t.topic IS NOT NULL
    ), topics AS (
        SELECT topic FROM outbox_topics WHERE topic IS NOT NULL
        UNION
        SELECT topic FROM dead_topics WHERE topic IS NOT NULL
    ), leases AS (
        SELECT o.topic,
               pg_catalog.count(*) FILTER (WHERE o.visible_at OPERATOR(pg_catalog.>) pg_catalog.now()) AS leased,
               pg_catalog.max(o.visible_at OPERATOR(pg_catalog.-) o.lease_length) AS last_claim
          FROM saga.outbox o
         WHERE o.lease_owner IS NOT NULL
         GROUP BY o.topic
    )
    SELECT t.topic,
           r.ready,
           l.later OPERATOR(pg_catalog.-) COALESCE(s.leased, 0) AS delayed,
           COALESCE(s.leased, 0) AS leased,
           l.parked,
           pg_catalog.now() OPERATOR(pg_catalog.-) r.oldest AS oldest_ready_age,
           d.dead_letters,
           -- LEAST would turn no lease into now()
           CASE WHEN s.last_claim OPERATOR(pg_catalog.>) pg_catalog.now() THEN pg_catalog.now()
                ELSE s.last_claim END AS last_claim
      FROM topics t
     CROSS JOIN LATERAL (
           SELECT pg_catalog.count(*) AS ready, pg_catalog.min(o.visible_at) AS oldest
             FROM saga.outbox o
            WHERE o.topic OPERATOR(pg_catalog.=) t.topic
              AND o.visible_at OPERATOR(pg_catalog.<=) pg_catalog.now()) r
     CROSS JOIN LATERAL (
           SELECT pg_catalog.count(*) FILTER (WHERE o.visible_at OPERATOR(pg_catalog.<>) 'infinity') AS later,
                  pg_catalog.count(*) FILTER (WHERE o.visible_at OPERATOR(pg_catalog.=) 'infinity') AS parked
             FROM saga.outbox o
            WHERE o.topic OPERATOR(pg_catalog.=) t.topic
              AND o.visible_at OPERATOR(pg_catalog.>) pg_catalog.now()) l
     CROSS JOIN LATERAL (
           SELECT pg_catalog.count(*) AS dead_letters
             FROM saga.dead_letters d
            WHERE d.topic OPERATOR(pg_catalog.=) t.topic) d
      LEFT JOIN leases s ON s.topic OPERATOR(pg_catalog.=) t.topic
     WHERE t.topic OPERATOR(pg_catalog.<>) 'saga sql' AND t.topic OPERATOR(pg_catalog.<>) 'saga await'
$topics$;

CREATE VIEW saga.topics AS
SELECT b.topic, b.ready, b.delayed, b.leased, b.parked, b.oldest_ready_age, b.dead_letters,
       b.last_claim
  FROM saga.topic_backlog() b;

/*
 * The function reads the outbox and the dead letters as its caller, which
 * saga_reader, saga_admin and saga_worker may; the view hides no rows from
 * anyone, so security_barrier would protect nothing.
 */
REVOKE ALL ON saga.topics FROM PUBLIC;
REVOKE ALL ON FUNCTION saga.topic_backlog() FROM PUBLIC;
GRANT SELECT ON saga.topics TO saga_reader, saga_admin, saga_worker;
GRANT EXECUTE ON FUNCTION saga.topic_backlog() TO saga_reader, saga_admin, saga_worker;

COMMENT ON VIEW saga.topics IS
'the backlog of every topic with a task in saga.outbox or a dead letter (the engine''s internal topics, of SQL steps awaiting a retry and of await steps, left out), as of now(): ready, delayed, leased and parked tasks, the age of the oldest ready one, dead letters, and the start of the newest lease';
COMMENT ON FUNCTION saga.topic_backlog() IS
'saga.topic_backlog() -> setof (topic, ready, delayed, leased, parked, oldest_ready_age, dead_letters, last_claim): what saga.topics shows, computed with jit off. Granted to saga_reader, saga_admin and saga_worker.';
COMMENT ON COLUMN saga.topics.topic IS 'the topic';
COMMENT ON COLUMN saga.topics.ready IS
'tasks visible now (visible_at <= now()): what a poll or saga.claim takes next, including tasks whose lease lapsed unreported';
COMMENT ON COLUMN saga.topics.delayed IS
'tasks visible later and not leased: waiting for a retry''s backoff';
COMMENT ON COLUMN saga.topics.leased IS
'tasks under a lease of saga.claim that has not expired';
COMMENT ON COLUMN saga.topics.parked IS
'compensations that failed for good, out of sight until saga.retry (see saga.incidents)';
COMMENT ON COLUMN saga.topics.oldest_ready_age IS
'now() minus the visible_at of the oldest ready task: how long it has waited; NULL when none is ready';
COMMENT ON COLUMN saga.topics.dead_letters IS
'rows of saga.dead_letters on the topic: event deliveries that failed for good';
COMMENT ON COLUMN saga.topics.last_claim IS
'when the newest lease still on a task of the topic began (or a heartbeat without extend renewed it), from visible_at - lease_length; NULL when no task of the topic is leased: ended leases and the transactional poll leave no record';

/* Diagrams ---------------------------------------------------------------- */

/*
 * Diagrams (0.4): saga.diagram, saga.flow_diagram and saga.timeline draw
 * what the tables hold, as Mermaid (flowchart, sequenceDiagram, gantt) or
 * Graphviz DOT text.  They are plain readers: SECURITY INVOKER, STABLE, and
 * see only what the caller may read.  A drawing is a graph of nodes and
 * edges (jsonb, built by diagram_saga_graph and diagram_choreography_graph)
 * rendered by diagram_render, so that both formats say the same.  Node ids
 * are generated (s0, e0, p0, ...); every user-supplied string goes through
 * diagram_escape, so that no name can end a label or start a statement.
 * Output is deterministic: every set is ordered, and only the timeline
 * prints times (its data).
 */

/*
 * One string made safe inside a quoted label.  Mermaid: the characters that
 * mean something to any of its grammars become numeric entity codes (#35;
 * for #, which goes first since every code starts with it), and a '-' or
 * '=' that could start an arrow too; other characters, Unicode included,
 * stay as they are.  DOT: backslash and double quote are escaped.  Control
 * characters and line separators become spaces in both.
 */
CREATE FUNCTION saga.diagram_escape(s text, format text)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
SELECT COALESCE(pg_catalog.string_agg(
           CASE WHEN c.ch ~ '[[:cntrl:]]' OR c.ch IN (U&'\2028', U&'\2029', U&'\0085') THEN ' '
                WHEN format = 'dot' THEN
                     CASE c.ch WHEN '\' THEN '\\' WHEN '"' THEN '\"' ELSE c.ch END
                WHEN pg_catalog.strpos('#"&<>;%`|[]{}()\''=', c.ch) > 0
                  OR (format = 'gantt' AND c.ch IN (':', ','))
                  OR (c.ch = '-' AND pg_catalog.strpos('-.>=xo)', c.next) > 0)
                THEN '#' || pg_catalog.ascii(c.ch) || ';'
                ELSE c.ch END,
           '' ORDER BY c.n), '')
  FROM (SELECT r.ch, r.n, pg_catalog.lead(r.ch, 1, '') OVER (ORDER BY r.n) AS next
          FROM pg_catalog.regexp_split_to_table(s, '') WITH ORDINALITY AS r(ch, n)) c
$$;

/*
 * Render a graph: {"direction": "LR", "nodes": [{"id", "shape", "lines",
 * "classes"}], "edges": [{"from", "to", "label", "style", "color"}],
 * "edges_left_out": n}.  shape: step, sql, await, event, participant,
 * start, end, deadline; style: solid, dashed (compensations), thick (events
 * of a saga); color: fail.  Lines and labels are raw text, escaped here.
 * At most max_edges (500) edges are drawn, the first in the graph's order;
 * when some are not (edges_left_out, from the graph builders, plus those
 * past the cap here), a last node o0 says how many.  One pass over the
 * nodes and edges (set-based, no per-element concatenation): linear.
 */
CREATE FUNCTION saga.diagram_render(graph jsonb, format text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $render$
DECLARE
    max_edges CONSTANT integer := 500;     -- as in diagram_saga_graph, diagram_choreography_graph
    -- class -> Mermaid classDef, DOT fill, DOT outline colour, DOT pen width
    styles CONSTANT jsonb := '{
        "participant":  ["fill:#e8eaf6,stroke:#283593", "#e8eaf6", "#283593", null],
        "event":        ["fill:#fff8e1,stroke:#f9a825", "#fff8e1", "#f9a825", null],
        "start_event":  ["fill:#c8e6c9,stroke:#2e7d32,stroke-width:2px", "#c8e6c9", "#2e7d32", "2"],
        "terminal":     ["fill:#b3e5fc,stroke:#0277bd,stroke-width:2px", "#b3e5fc", "#0277bd", "2"],
        "failure":      ["fill:#ffcdd2,stroke:#c62828", "#ffcdd2", "#c62828", null],
        "deadline":     ["fill:#ffe0b2,stroke:#e65100", "#ffe0b2", "#e65100", null],
        "compensation": ["fill:#d7ccc8,stroke:#4e342e", "#d7ccc8", "#4e342e", null],
        "pivot":        ["stroke:#6a1b9a,stroke-width:4px", null, "#6a1b9a", "3"],
        "pending":      ["fill:#eeeeee,stroke:#9e9e9e", "#eeeeee", "#9e9e9e", null],
        "ready":        ["fill:#e3f2fd,stroke:#1565c0", "#e3f2fd", "#1565c0", null],
        "running":      ["fill:#90caf9,stroke:#0d47a1", "#90caf9", "#0d47a1", null],
        "succeeded":    ["fill:#c8e6c9,stroke:#2e7d32", "#c8e6c9", "#2e7d32", null],
        "failed":       ["fill:#ef9a9a,stroke:#b71c1c", "#ef9a9a", "#b71c1c", null],
        "compensating": ["fill:#ffe0b2,stroke:#e65100", "#ffe0b2", "#e65100", null],
        "compensated":  ["fill:#d7ccc8,stroke:#4e342e", "#d7ccc8", "#4e342e", null],
        "skipped":      ["fill:#fafafa,stroke:#bdbdbd,stroke-dasharray:4 2", "#fafafa", "#bdbdbd", null]
    }';
    mermaid_shape CONSTANT jsonb := '{
        "step": ["[\"", "\"]"], "participant": ["[\"", "\"]"], "sql": ["[[\"", "\"]]"],
        "await": ["{{\"", "\"}}"], "event": ["([\"", "\"])"], "start": ["((\"", "\"))"],
        "end": ["(((\"", "\")))"], "deadline": [">\"", "\"]"]}';
    dot_shape CONSTANT jsonb := '{
        "step": "shape=box", "participant": "shape=box", "sql": "shape=component",
        "await": "shape=hexagon", "event": "shape=box, style=\"rounded,filled\"",
        "start": "shape=circle", "end": "shape=doublecircle", "deadline": "shape=cds"}';
    nedges bigint := COALESCE(pg_catalog.jsonb_array_length(graph -> 'edges'), 0);
    left_out bigint;
    note text;
    body text;
BEGIN
    left_out := COALESCE((graph ->> 'edges_left_out')::bigint, 0) + GREATEST(nedges - max_edges, 0);
    IF left_out > 0 THEN
        note := left_out || ' more edges not drawn: a diagram draws at most ' || max_edges
                || ' edges, the first ' || max_edges || ' of ' || (LEAST(nedges, max_edges) + left_out);
    END IF;
    IF format = 'mermaid' THEN
        SELECT pg_catalog.string_agg(x.line, E'\n' ORDER BY x.g, x.o, x.o2) INTO body
          FROM (SELECT 0 AS g, 0::bigint AS o, 0::bigint AS o2,
                       'flowchart ' || COALESCE(graph ->> 'direction', 'LR') AS line
                UNION ALL
                SELECT 1, n.o, 0, '    ' || (n.x ->> 'id') || (mermaid_shape -> (n.x ->> 'shape') ->> 0)
                       || (SELECT pg_catalog.string_agg(saga.diagram_escape(t.l, 'mermaid'), '<br>' ORDER BY t.lo)
                             FROM pg_catalog.jsonb_array_elements_text(n.x -> 'lines') WITH ORDINALITY AS t(l, lo))
                       || (mermaid_shape -> (n.x ->> 'shape') ->> 1)
                  FROM pg_catalog.jsonb_array_elements(graph -> 'nodes') WITH ORDINALITY AS n(x, o)
                UNION ALL
                SELECT 2, e.o, 0, '    ' || (e.x ->> 'from')
                       || CASE e.x ->> 'style' WHEN 'dashed' THEN ' -.->' WHEN 'thick' THEN ' ==>' ELSE ' -->' END
                       || CASE WHEN e.x ? 'label'
                               THEN '|"' || saga.diagram_escape(e.x ->> 'label', 'mermaid') || '"|' ELSE '' END
                       || ' ' || (e.x ->> 'to')
                  FROM pg_catalog.jsonb_array_elements(graph -> 'edges') WITH ORDINALITY AS e(x, o)
                 WHERE e.o <= max_edges
                UNION ALL
                SELECT 3, pg_catalog.row_number() OVER (ORDER BY c.c), 0,
                       '    classDef ' || c.c || ' ' || (styles -> c.c ->> 0)
                  FROM (SELECT DISTINCT k.c
                          FROM pg_catalog.jsonb_array_elements(graph -> 'nodes') AS n(x),
                               pg_catalog.jsonb_array_elements_text(n.x -> 'classes') AS k(c)) c
                UNION ALL
                SELECT 4, n.o, k.co, '    class ' || (n.x ->> 'id') || ' ' || k.c
                  FROM pg_catalog.jsonb_array_elements(graph -> 'nodes') WITH ORDINALITY AS n(x, o),
                       pg_catalog.jsonb_array_elements_text(n.x -> 'classes') WITH ORDINALITY AS k(c, co)
                UNION ALL
                SELECT 5, 0, 0, '    linkStyle ' || pg_catalog.string_agg((e.o - 1)::text, ',' ORDER BY e.o)
                       || ' stroke:#c62828,color:#c62828'
                  FROM pg_catalog.jsonb_array_elements(graph -> 'edges') WITH ORDINALITY AS e(x, o)
                 WHERE e.o <= max_edges AND e.x ->> 'color' = 'fail'
                UNION ALL
                SELECT 6, 0, 0, '    o0["' || saga.diagram_escape(note, 'mermaid') || '"]'
                 WHERE note IS NOT NULL) x;
    ELSE
        SELECT pg_catalog.string_agg(x.line, E'\n' ORDER BY x.g, x.o) INTO body
          FROM (SELECT 0 AS g, h.o, h.line
                  FROM (VALUES (1::bigint, 'digraph saga {'), (2, '    rankdir=LR;'),
                               (3, '    node [fontname="Helvetica", fontsize=11];'),
                               (4, '    edge [fontname="Helvetica", fontsize=9];')) AS h(o, line)
                UNION ALL
                SELECT 1, n.o, '    "' || n.id || '" [label="' || n.label || '", '
                       || n.shape_attrs
                       || CASE WHEN n.fill IS NOT NULL
                               THEN CASE WHEN n.shape <> 'event' THEN ', style=filled' ELSE '' END
                                    || ', fillcolor="' || n.fill || '"'
                               ELSE '' END
                       || CASE WHEN n.colour IS NOT NULL THEN ', color="' || n.colour || '"' ELSE '' END
                       || CASE WHEN n.pen IS NOT NULL THEN ', penwidth=' || n.pen ELSE '' END
                       || '];'
                  FROM (SELECT n.o, n.x ->> 'id' AS id, n.x ->> 'shape' AS shape,
                               dot_shape ->> (n.x ->> 'shape') AS shape_attrs,
                               (SELECT pg_catalog.string_agg(saga.diagram_escape(t.l, 'dot'), '\n' ORDER BY t.lo)
                                  FROM pg_catalog.jsonb_array_elements_text(n.x -> 'lines')
                                       WITH ORDINALITY AS t(l, lo)) AS label,
                               -- the first class that says so wins (a state before pivot)
                               (SELECT styles -> k.c ->> 1
                                  FROM pg_catalog.jsonb_array_elements_text(n.x -> 'classes') WITH ORDINALITY AS k(c, co)
                                 WHERE styles -> k.c ->> 1 IS NOT NULL ORDER BY k.co LIMIT 1) AS fill,
                               (SELECT styles -> k.c ->> 2
                                  FROM pg_catalog.jsonb_array_elements_text(n.x -> 'classes') WITH ORDINALITY AS k(c, co)
                                 WHERE styles -> k.c ->> 2 IS NOT NULL ORDER BY k.co LIMIT 1) AS colour,
                               (SELECT styles -> k.c ->> 3
                                  FROM pg_catalog.jsonb_array_elements_text(n.x -> 'classes') WITH ORDINALITY AS k(c, co)
                                 WHERE styles -> k.c ->> 3 IS NOT NULL ORDER BY k.co LIMIT 1) AS pen
                          FROM pg_catalog.jsonb_array_elements(graph -> 'nodes') WITH ORDINALITY AS n(x, o)) n
                UNION ALL
                SELECT 2, e.o, '    "' || (e.x ->> 'from') || '" -> "' || (e.x ->> 'to') || '"'
                       || CASE WHEN e.attrs <> '' THEN ' [' || e.attrs || ']' ELSE '' END || ';'
                  FROM (SELECT e.o, e.x, pg_catalog.concat_ws(', ',
                               CASE WHEN e.x ? 'label'
                                    THEN 'label="' || saga.diagram_escape(e.x ->> 'label', 'dot') || '"' END,
                               CASE e.x ->> 'style' WHEN 'dashed' THEN 'style=dashed' WHEN 'thick' THEN 'penwidth=2' END,
                               CASE WHEN e.x ->> 'color' = 'fail' THEN 'color="#c62828", fontcolor="#c62828"' END) AS attrs
                          FROM pg_catalog.jsonb_array_elements(graph -> 'edges') WITH ORDINALITY AS e(x, o)
                         WHERE e.o <= max_edges) e
                UNION ALL
                SELECT 3, 0, '    "o0" [label="' || saga.diagram_escape(note, 'dot') || '", shape=note];'
                 WHERE note IS NOT NULL
                UNION ALL
                SELECT 4, 0, '}') x;
    END IF;
    RETURN body || E'\n';
END
$render$;

/*
 * The graph of a saga definition document: a start node (title lines),
 * one node per step in document order (s0, s1, ...: topic, SQL and await
 * steps by shape), its "after" edges (the previous step by default),
 * compensations as dashed edges back to the steps it waited for (to the
 * start node from a first step), an end node after the last steps, the
 * events it publishes or awaits (e0, ...; the compensated and cancelled
 * ends that publish reached from the start node) and its deadline.  states, for
 * one saga, maps a step name to {"status", "attempts", "error"}.  Edges in
 * that order, at most max_edges (500) of them: "edges_left_out" counts
 * the rest (512 steps, each after all the previous ones, have 130,816
 * "after" edges and as many compensations).  Set-based: linear in the
 * size of the document; the edges past the cap are counted, not built.
 */
CREATE FUNCTION saga.diagram_saga_graph(definition jsonb, title text[], states jsonb DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $graph$
DECLARE
    max_edges CONSTANT integer := 500;     -- as in diagram_render
    steps jsonb := definition -> 'steps';
    -- each step once: {"i", "name", "preds" (its "after", or the previous step), "comp" (label)}
    plan jsonb;
    idx jsonb;                   -- step name -> index
    referenced jsonb;            -- step names some step is after
    evs jsonb;                   -- event type -> node id
    events jsonb;
    terminals jsonb;
    nodes jsonb;
    edges jsonb;
    total bigint;
BEGIN
    SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'i', t.o - 1, 'name', t.st ->> 'name',
               'preds', CASE WHEN t.st ? 'after' THEN t.st -> 'after'
                             WHEN t.o > 1 THEN pg_catalog.jsonb_build_array(t.prev)
                             ELSE '[]' END,
               'comp', CASE WHEN t.st -> 'compensate' IS NOT NULL
                            THEN 'compensate: ' || CASE WHEN t.st -> 'compensate' ? 'sql'
                                                        THEN 'sql ' || (t.st -> 'compensate' ->> 'sql')
                                                        ELSE 'topic ' || (t.st -> 'compensate' ->> 'topic') END
                       END) ORDER BY t.o),
           pg_catalog.jsonb_object_agg(t.st ->> 'name', t.o - 1 ORDER BY t.o)
      INTO plan, idx
      FROM (SELECT t.st, t.o, pg_catalog.lag(t.st ->> 'name') OVER (ORDER BY t.o) AS prev
              FROM pg_catalog.jsonb_array_elements(steps) WITH ORDINALITY AS t(st, o)) t;

    SELECT COALESCE(pg_catalog.jsonb_object_agg(r.p, true), '{}') INTO referenced
      FROM (SELECT DISTINCT p.x AS p
              FROM pg_catalog.jsonb_array_elements(plan) AS s(x),
                   pg_catalog.jsonb_array_elements_text(s.x -> 'preds') AS p(x)) r;

    -- events, each once, in the order first met: awaited and published by steps, then at the end
    SELECT COALESCE(pg_catalog.jsonb_object_agg(y.ev, 'e' || (y.rk - 1)), '{}'),
           COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'id', 'e' || (y.rk - 1), 'shape', 'event', 'lines', pg_catalog.jsonb_build_array(y.ev),
               'classes', '["event"]'::jsonb) ORDER BY y.rk), '[]')
      INTO evs, events
      FROM (SELECT z.ev, pg_catalog.row_number() OVER (ORDER BY pg_catalog.min(z.ord)) AS rk
              FROM (SELECT t.st ->> k.k AS ev, (t.o * 2 + k.n)::bigint AS ord
                      FROM pg_catalog.jsonb_array_elements(steps) WITH ORDINALITY AS t(st, o),
                           (VALUES (0, 'await'), (1, 'publish')) AS k(n, k)
                     WHERE pg_catalog.jsonb_typeof(t.st -> k.k) = 'string'
                    UNION ALL
                    SELECT definition -> 'publish' ->> p.k, 10000 + p.n
                      FROM (VALUES (1, 'completed'), (2, 'compensated'), (3, 'cancelled')) AS p(n, k)
                     WHERE pg_catalog.jsonb_typeof(definition -> 'publish') = 'object'
                       AND definition -> 'publish' ? p.k) z
             GROUP BY z.ev) y;

    -- the terminals that publish: compensated (x1) and cancelled (x2) get their own node
    SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'id', p.node, 'shape', 'end', 'lines', pg_catalog.jsonb_build_array(p.k),
               'classes', '["compensation"]'::jsonb) ORDER BY p.n), '[]')
      INTO terminals
      FROM (VALUES (2, 'compensated', 'x1'), (3, 'cancelled', 'x2')) AS p(n, k, node)
     WHERE pg_catalog.jsonb_typeof(definition -> 'publish') = 'object' AND definition -> 'publish' ? p.k;

    -- the nodes: start, steps, end(s), events, deadline
    SELECT pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
               'id', 'b0', 'shape', 'start', 'lines', pg_catalog.to_jsonb(title), 'classes', '[]'::jsonb))
           || pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'id', 's' || (t.o - 1),
               'shape', CASE WHEN t.st ? 'sql' THEN 'sql' WHEN t.st ? 'await' THEN 'await' ELSE 'step' END,
               'lines', pg_catalog.to_jsonb(pg_catalog.array_remove(ARRAY[
                   t.st ->> 'name',
                   CASE WHEN t.st ? 'sql' THEN 'sql: ' || (t.st ->> 'sql')
                                               || CASE WHEN (t.st ->> 'async')::boolean THEN ' (async)' ELSE '' END
                        WHEN t.st ? 'await' THEN 'await: ' || (t.st ->> 'await')
                        ELSE 'topic: ' || (t.st ->> 'topic') END,
                   CASE WHEN t.st ? 'timeout' THEN 'timeout ' || (t.st ->> 'timeout') END,
                   CASE WHEN t.st -> 'retry' ? 'max_attempts'
                        THEN 'attempts ' || (t.st -> 'retry' ->> 'max_attempts') END,
                   CASE WHEN states ? (t.st ->> 'name')
                        THEN (states -> (t.st ->> 'name') ->> 'status')
                             || CASE WHEN COALESCE((states -> (t.st ->> 'name') ->> 'attempts')::integer, 0) > 0
                                     THEN ', attempt ' || (states -> (t.st ->> 'name') ->> 'attempts') ELSE '' END END,
                   CASE WHEN states ? (t.st ->> 'name') AND states -> (t.st ->> 'name') ->> 'error' IS NOT NULL
                        THEN 'error: ' || pg_catalog.left(states -> (t.st ->> 'name') ->> 'error', 60)
                             || CASE WHEN pg_catalog.length(states -> (t.st ->> 'name') ->> 'error') > 60
                                     THEN '...' ELSE '' END END,
                   CASE WHEN (t.st ->> 'pivot')::boolean THEN 'pivot' END], NULL)),
               'classes', pg_catalog.to_jsonb(pg_catalog.array_remove(ARRAY[
                   CASE WHEN states ? (t.st ->> 'name') THEN states -> (t.st ->> 'name') ->> 'status' END,
                   CASE WHEN (t.st ->> 'pivot')::boolean THEN 'pivot' END], NULL))) ORDER BY t.o)
           || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
               'id', 'x0', 'shape', 'end', 'lines', '["completed"]'::jsonb, 'classes', '[]'::jsonb))
           || terminals || events
           || CASE WHEN definition ? 'deadline' THEN pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                  'id', 'd0', 'shape', 'deadline',
                  'lines', pg_catalog.jsonb_build_array('deadline ' || (definition ->> 'deadline'),
                                                        'then compensate'),
                  'classes', '["deadline"]'::jsonb)) ELSE '[]' END
      INTO nodes
      FROM pg_catalog.jsonb_array_elements(steps) WITH ORDINALITY AS t(st, o);

    -- how many edges there are: forward, to the end, compensations, events, deadline
    SELECT pg_catalog.sum(GREATEST(pg_catalog.jsonb_array_length(s.x -> 'preds'), 1))
           + pg_catalog.count(*) FILTER (WHERE NOT referenced ? (s.x ->> 'name'))
           + COALESCE(pg_catalog.sum(GREATEST(pg_catalog.jsonb_array_length(s.x -> 'preds'), 1))
                          FILTER (WHERE s.x ? 'comp' AND s.x ->> 'comp' IS NOT NULL), 0)
      INTO total
      FROM pg_catalog.jsonb_array_elements(plan) AS s(x);

    -- the first max_edges of them, in that order; a part's rows are ordered by (i, o)
    SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
               'from', CASE WHEN e.src_step IS NOT NULL THEN 's' || (idx ->> e.src_step) ELSE e.src END,
               'to', CASE WHEN e.dst_step IS NOT NULL THEN 's' || (idx ->> e.dst_step) ELSE e.dst END,
               'label', e.label, 'style', e.style)) ORDER BY e.part, e.i, e.o), '[]')
      INTO edges
      FROM (SELECT * FROM (
                -- forward: from the start node, or from each step it is after
                SELECT 1 AS part, (s.x ->> 'i')::integer AS i, 0::bigint AS o,
                       'b0' AS src, NULL::text AS src_step, 's' || (s.x ->> 'i') AS dst, NULL::text AS dst_step,
                       NULL::text AS label, NULL::text AS style
                  FROM pg_catalog.jsonb_array_elements(plan) AS s(x)
                 WHERE pg_catalog.jsonb_array_length(s.x -> 'preds') = 0
                UNION ALL
                SELECT 1, (s.x ->> 'i')::integer, p.o, NULL, p.x, 's' || (s.x ->> 'i'), NULL, NULL, NULL
                  FROM pg_catalog.jsonb_array_elements(plan) AS s(x),
                       pg_catalog.jsonb_array_elements_text(s.x -> 'preds') WITH ORDINALITY AS p(x, o)
                UNION ALL
                -- to the end node, from the steps no step is after
                SELECT 2, (s.x ->> 'i')::integer, 0, 's' || (s.x ->> 'i'), NULL, 'x0', NULL, NULL, NULL
                  FROM pg_catalog.jsonb_array_elements(plan) AS s(x)
                 WHERE NOT referenced ? (s.x ->> 'name')
                UNION ALL
                -- compensations: back to the start node, or to each step it is after
                SELECT 3, (s.x ->> 'i')::integer, 0, 's' || (s.x ->> 'i'), NULL, 'b0', NULL, s.x ->> 'comp', 'dashed'
                  FROM pg_catalog.jsonb_array_elements(plan) AS s(x)
                 WHERE s.x ->> 'comp' IS NOT NULL AND pg_catalog.jsonb_array_length(s.x -> 'preds') = 0
                UNION ALL
                SELECT 3, (s.x ->> 'i')::integer, p.o, 's' || (s.x ->> 'i'), NULL, NULL, p.x, s.x ->> 'comp', 'dashed'
                  FROM pg_catalog.jsonb_array_elements(plan) AS s(x),
                       pg_catalog.jsonb_array_elements_text(s.x -> 'preds') WITH ORDINALITY AS p(x, o)
                 WHERE s.x ->> 'comp' IS NOT NULL
                ORDER BY 1, 2, 3 LIMIT max_edges) f
            UNION ALL
            -- events: awaited and published by steps, then published at the end
            SELECT 4, (t.o - 1)::integer, k.n,
                   CASE k.k WHEN 'await' THEN evs ->> (t.st ->> k.k) ELSE 's' || (t.o - 1) END, NULL,
                   CASE k.k WHEN 'await' THEN 's' || (t.o - 1) ELSE evs ->> (t.st ->> k.k) END, NULL,
                   CASE k.k WHEN 'await' THEN 'awaited' ELSE 'publish' END, 'thick'
              FROM pg_catalog.jsonb_array_elements(steps) WITH ORDINALITY AS t(st, o),
                   (VALUES (0, 'await'), (1, 'publish')) AS k(n, k)
             WHERE pg_catalog.jsonb_typeof(t.st -> k.k) = 'string'
            UNION ALL
            -- the compensated and cancelled ends: reached from the start node, where the
            -- compensations lead back to (dashed), then what they publish
            SELECT 5, 0, p.n * 2, 'b0', NULL, p.node, NULL, p.via, 'dashed'
              FROM (VALUES (2, 'compensated', 'x1', 'on failure'), (3, 'cancelled', 'x2', 'on cancel')) AS p(n, k, node, via)
             WHERE pg_catalog.jsonb_typeof(definition -> 'publish') = 'object' AND definition -> 'publish' ? p.k
            UNION ALL
            SELECT 5, 0, p.n * 2 + 1, p.node, NULL, evs ->> (definition -> 'publish' ->> p.k), NULL, 'publish', 'thick'
              FROM (VALUES (1, 'completed', 'x0'), (2, 'compensated', 'x1'), (3, 'cancelled', 'x2')) AS p(n, k, node)
             WHERE pg_catalog.jsonb_typeof(definition -> 'publish') = 'object' AND definition -> 'publish' ? p.k
            UNION ALL
            SELECT 6, 0, 0, 'b0', NULL, 'd0', NULL, NULL, 'dashed'
             WHERE definition ? 'deadline'
            ORDER BY 1, 2, 3 LIMIT max_edges) e;

    total := total + (SELECT pg_catalog.count(*)
                        FROM pg_catalog.jsonb_array_elements(steps) AS t(st),
                             (VALUES ('await'), ('publish')) AS k(k)
                       WHERE pg_catalog.jsonb_typeof(t.st -> k.k) = 'string')
                   + (SELECT pg_catalog.count(*) + pg_catalog.count(*) FILTER (WHERE p.k <> 'completed')
                        FROM (VALUES ('completed'), ('compensated'), ('cancelled')) AS p(k)
                       WHERE pg_catalog.jsonb_typeof(definition -> 'publish') = 'object'
                         AND definition -> 'publish' ? p.k)
                   + CASE WHEN definition ? 'deadline' THEN 1 ELSE 0 END;
    RETURN pg_catalog.jsonb_build_object('direction', 'LR', 'nodes', nodes, 'edges', edges)
           || CASE WHEN total > pg_catalog.jsonb_array_length(edges)
                   THEN pg_catalog.jsonb_build_object('edges_left_out', total - pg_catalog.jsonb_array_length(edges))
                   ELSE '{}' END;
END
$graph$;

/*
 * The graph of a choreography document: a start node (title lines) to the
 * start event, participants (p0, ...: by name) and events (e0, ...: in the
 * order first met: start, each participant's on, emits, fails and
 * compensation, completed, the deadline's), on edges event -> participant,
 * emits participant -> event, fails in red, compensations dashed, the
 * completed events to an end node, and the deadline.  Edges in that order,
 * at most max_edges (500) of them: "edges_left_out" counts the rest.
 * Set-based: linear in the size of the document.
 */
CREATE FUNCTION saga.diagram_choreography_graph(definition jsonb, title text[])
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $graph$
DECLARE
    max_edges CONSTANT integer := 500;     -- as in diagram_render
    order_ text[];               -- the events, each once, in the order first met
    evs jsonb;                   -- event type -> node id
    nodes jsonb;
    edges jsonb;
    total bigint;
    t text[] := title;
BEGIN
    SELECT pg_catalog.array_agg(x.ev ORDER BY x.o1, x.o2, x.o3) INTO order_
      FROM (SELECT DISTINCT ON (y.ev) y.ev, y.o1, y.o2, y.o3
              FROM (SELECT definition ->> 'start' AS ev, 0 AS o1, ''::text COLLATE "C" AS o2, 0::bigint AS o3
                    UNION ALL
                    SELECT l.ev, 1, p.key COLLATE "C", l.o + 1000 * w.o
                      FROM pg_catalog.jsonb_each(definition -> 'participants') AS p
                     CROSS JOIN LATERAL (VALUES (1, p.value -> 'on'), (2, p.value -> 'emits'),
                                                (3, p.value -> 'fails'),
                                                (4, p.value -> 'compensation' -> 'on'),
                                                (5, pg_catalog.jsonb_build_array(p.value -> 'compensation' -> 'emits')))
                                        AS w(o, arr)
                     CROSS JOIN LATERAL pg_catalog.jsonb_array_elements_text(
                                   CASE WHEN pg_catalog.jsonb_typeof(w.arr) = 'array' THEN w.arr ELSE '[]' END)
                                   WITH ORDINALITY AS l(ev, o)
                    UNION ALL
                    SELECT l.ev, 2, '', l.o
                      FROM pg_catalog.jsonb_array_elements_text(COALESCE(definition -> 'completed', '[]'))
                           WITH ORDINALITY AS l(ev, o)
                    UNION ALL
                    SELECT definition -> 'deadline' ->> 'publish', 3, '', 0) y
             WHERE y.ev IS NOT NULL
             ORDER BY y.ev, y.o1, y.o2, y.o3) x;
    SELECT COALESCE(pg_catalog.jsonb_object_agg(u.ev, 'e' || (u.n - 1)), '{}') INTO evs
      FROM pg_catalog.unnest(order_) WITH ORDINALITY AS u(ev, n);

    IF definition ? 'max_hops' THEN
        t := t || ('max hops ' || (definition ->> 'max_hops'));
    END IF;

    -- the nodes: start, participants by name, events (one class each: start, terminal,
    -- failure, deadline, compensation, plain), end, deadline
    WITH fails AS (SELECT DISTINCT f.ev
                     FROM pg_catalog.jsonb_each(definition -> 'participants') AS p,
                          pg_catalog.jsonb_array_elements_text(
                              CASE WHEN pg_catalog.jsonb_typeof(p.value -> 'fails') = 'array'
                                   THEN p.value -> 'fails' ELSE '[]' END) AS f(ev)),
         comps AS (SELECT DISTINCT p.value -> 'compensation' ->> 'emits' AS ev
                     FROM pg_catalog.jsonb_each(definition -> 'participants') AS p)
    SELECT pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
               'id', 'b0', 'shape', 'start', 'lines', pg_catalog.to_jsonb(t), 'classes', '[]'::jsonb))
           || COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                            'id', 'p' || (q.n - 1), 'shape', 'participant',
                            'lines', pg_catalog.jsonb_build_array(q.key),
                            'classes', '["participant"]'::jsonb) ORDER BY q.n)
                          FROM (SELECT p.key, pg_catalog.row_number() OVER (ORDER BY p.key COLLATE "C") AS n
                                  FROM pg_catalog.jsonb_each(definition -> 'participants') AS p) q), '[]')
           || COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                            'id', 'e' || (u.n - 1), 'shape', 'event', 'lines', pg_catalog.jsonb_build_array(u.ev),
                            'classes', pg_catalog.jsonb_build_array(CASE
                                WHEN u.ev = definition ->> 'start' THEN 'start_event'
                                WHEN EXISTS (SELECT FROM fails f WHERE f.ev = u.ev) THEN 'failure'
                                WHEN u.ev = definition -> 'deadline' ->> 'publish' THEN 'deadline'
                                WHEN EXISTS (SELECT FROM comps c WHERE c.ev = u.ev) THEN 'compensation'
                                WHEN definition -> 'completed' ? u.ev THEN 'terminal'
                                ELSE 'event' END)) ORDER BY u.n)
                          FROM pg_catalog.unnest(order_) WITH ORDINALITY AS u(ev, n)), '[]')
           || pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                  'id', 'x0', 'shape', 'end', 'lines', '["completed"]'::jsonb, 'classes', '[]'::jsonb))
           || CASE WHEN definition ? 'deadline' THEN pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                  'id', 'd0', 'shape', 'deadline',
                  'lines', pg_catalog.jsonb_build_array('deadline after ' || (definition -> 'deadline' ->> 'after'),
                           CASE WHEN definition -> 'deadline' ? 'publish'
                                THEN 'then publish ' || (definition -> 'deadline' ->> 'publish') ELSE 'then stuck' END),
                  'classes', '["deadline"]'::jsonb)) ELSE '[]' END
      INTO nodes;

    -- the edges, in order: start, each participant's on, emits, fails, compensation on and
    -- emits, completed, deadline; the first max_edges built, all counted
    WITH e AS (
        SELECT 0 AS part, 0::bigint AS n, 0 AS k, 0::bigint AS o,
               'b0' AS src, evs ->> (definition ->> 'start') AS dst, NULL::text AS label,
               NULL::text AS style, NULL::text AS color
        UNION ALL
        SELECT 1, q.n, w.k, l.o,
               CASE WHEN w.k IN (1, 4) THEN evs ->> l.ev ELSE 'p' || (q.n - 1) END,
               CASE WHEN w.k IN (1, 4) THEN 'p' || (q.n - 1) ELSE evs ->> l.ev END,
               CASE w.k WHEN 2 THEN 'emits' WHEN 3 THEN 'fails' WHEN 4 THEN 'compensate' WHEN 5 THEN 'compensated' END,
               CASE WHEN w.k IN (4, 5) THEN 'dashed' END,
               CASE WHEN w.k = 3 THEN 'fail' END
          FROM (SELECT p.key, p.value, pg_catalog.row_number() OVER (ORDER BY p.key COLLATE "C") AS n
                  FROM pg_catalog.jsonb_each(definition -> 'participants') AS p) q
         CROSS JOIN LATERAL (VALUES (1, COALESCE(q.value -> 'on', '[]')),
                                    (2, COALESCE(q.value -> 'emits', '[]')),
                                    (3, COALESCE(q.value -> 'fails', '[]')),
                                    (4, COALESCE(q.value -> 'compensation' -> 'on', '[]')),
                                    (5, CASE WHEN q.value -> 'compensation' ->> 'emits' IS NOT NULL
                                             THEN pg_catalog.jsonb_build_array(q.value -> 'compensation' ->> 'emits')
                                             ELSE '[]' END)) AS w(k, arr)
         CROSS JOIN LATERAL pg_catalog.jsonb_array_elements_text(w.arr) WITH ORDINALITY AS l(ev, o)
        UNION ALL
        SELECT 2, 0, 0, l.o, evs ->> l.ev, 'x0', NULL, NULL, NULL
          FROM pg_catalog.jsonb_array_elements_text(COALESCE(definition -> 'completed', '[]'))
               WITH ORDINALITY AS l(ev, o)
        UNION ALL
        SELECT 3, 0, 0, 0, 'b0', 'd0', NULL, 'dashed', NULL
         WHERE definition ? 'deadline'
        UNION ALL
        SELECT 3, 0, 0, 1, 'd0', evs ->> (definition -> 'deadline' ->> 'publish'), 'publish', 'dashed', NULL
         WHERE definition ? 'deadline' AND definition -> 'deadline' ? 'publish')
    SELECT (SELECT pg_catalog.count(*) FROM e),
           (SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                       'from', f.src, 'to', f.dst, 'label', f.label, 'style', f.style, 'color', f.color))
                       ORDER BY f.part, f.n, f.k, f.o), '[]')
              FROM (SELECT * FROM e ORDER BY e.part, e.n, e.k, e.o LIMIT max_edges) f)
      INTO total, edges;
    RETURN pg_catalog.jsonb_build_object('direction', 'LR', 'nodes', nodes, 'edges', edges)
           || CASE WHEN total > pg_catalog.jsonb_array_length(edges)
                   THEN pg_catalog.jsonb_build_object('edges_left_out', total - pg_catalog.jsonb_array_length(edges))
                   ELSE '{}' END;
END
$graph$;

CREATE FUNCTION saga.diagram(name text, format text DEFAULT 'mermaid', version integer DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $diagram$
DECLARE
    doc jsonb;
    v integer;
    latest integer;
    kind text;
BEGIN
    IF diagram.name IS NULL OR diagram.format IS NULL THEN
        RAISE EXCEPTION '% must not be null', CASE WHEN diagram.name IS NULL THEN 'name' ELSE 'format' END
            USING ERRCODE = '22004';
    END IF;
    IF diagram.format NOT IN ('mermaid', 'dot') THEN
        RAISE EXCEPTION 'unknown diagram format "%"', pg_catalog.left(diagram.format, 64)
            USING ERRCODE = '22023', HINT = 'The formats are ''mermaid'' and ''dot''.';
    END IF;
    SELECT d.definition, d.version, 'saga definition' INTO doc, v, kind
      FROM saga.definitions d
     WHERE d.name = diagram.name AND (diagram.version IS NULL OR d.version = diagram.version)
     ORDER BY d.version DESC LIMIT 1;
    IF NOT FOUND THEN
        SELECT c.definition, c.version, 'choreography' INTO doc, v, kind
          FROM saga.choreographies c
         WHERE c.name = diagram.name AND (diagram.version IS NULL OR c.version = diagram.version)
         ORDER BY c.version DESC LIMIT 1;
    END IF;
    IF NOT FOUND THEN
        SELECT x.kind, x.latest INTO kind, latest
          FROM (SELECT 'saga definition' AS kind, pg_catalog.max(d.version) AS latest
                  FROM saga.definitions d WHERE d.name = diagram.name
                UNION ALL
                SELECT 'choreography', pg_catalog.max(c.version)
                  FROM saga.choreographies c WHERE c.name = diagram.name) x
         WHERE x.latest IS NOT NULL;
        IF latest IS NULL THEN
            RAISE EXCEPTION 'saga definition or choreography "%" does not exist', pg_catalog.left(diagram.name, 64)
                USING ERRCODE = '42704';
        END IF;
        RAISE EXCEPTION 'version % of % "%" does not exist', diagram.version, kind, diagram.name
            USING ERRCODE = '42704',
                  DETAIL = pg_catalog.format('Its latest version is %s.', latest);
    END IF;
    IF kind = 'saga definition' THEN
        RETURN saga.diagram_render(saga.diagram_saga_graph(doc, ARRAY[diagram.name || ' v' || v]),
                                   diagram.format);
    END IF;
    RETURN saga.diagram_render(saga.diagram_choreography_graph(doc, ARRAY[diagram.name || ' v' || v]),
                               diagram.format);
END
$diagram$;

CREATE FUNCTION saga.diagram(saga_id bigint, format text DEFAULT 'mermaid')
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $diagram$
DECLARE
    s record;
    states jsonb;
    title text[];
BEGIN
    IF diagram.saga_id IS NULL OR diagram.format IS NULL THEN
        RAISE EXCEPTION '% must not be null', CASE WHEN diagram.saga_id IS NULL THEN 'saga_id' ELSE 'format' END
            USING ERRCODE = '22004';
    END IF;
    IF diagram.format NOT IN ('mermaid', 'dot') THEN
        RAISE EXCEPTION 'unknown diagram format "%"', pg_catalog.left(diagram.format, 64)
            USING ERRCODE = '22023', HINT = 'The formats are ''mermaid'' and ''dot''.';
    END IF;
    SELECT i.name, i.version, i.status, i.correlation_id, d.definition INTO s
      FROM saga.instances i
      JOIN saga.definitions d ON d.name = i.name AND d.version = i.version
     WHERE i.id = diagram.saga_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'saga % does not exist', diagram.saga_id USING ERRCODE = '42704';
    END IF;
    SELECT pg_catalog.jsonb_object_agg(r.step, pg_catalog.jsonb_build_object(
               'status', r.status, 'attempts', r.attempts, 'error', r.error))
      INTO states
      FROM saga.step_runs r WHERE r.saga_id = diagram.saga_id;
    title := ARRAY[s.name || ' v' || s.version, 'saga ' || s.status];
    IF s.correlation_id IS NOT NULL THEN
        title := title || ('correlation ' || s.correlation_id);
    END IF;
    RETURN saga.diagram_render(saga.diagram_saga_graph(s.definition, title, states), diagram.format);
END
$diagram$;

/*
 * A flow as a Mermaid sequence diagram: every event of a correlation id in
 * publish order (published_at, id), at most 1000 of them.  An event is drawn
 * from the participant of the flows' choreographies that emits its type
 * (emits, fails or compensation.emits; the one participant, if exactly one
 * does), from "deadline" for a choreography's deadline event nobody emits,
 * and otherwise from the role that published it (an actor).  It goes to
 * each topic that has its delivery: pending or leased in the outbox, a dead
 * letter, or done (a finished delivery leaves no row: the subscriptions of
 * its type older than the event stand for them when their number matches
 * the event's deliveries, else a note says how many were done).  A filter
 * that failed is a crossed arrow.  An event that started a saga (start_saga:
 * saga.instances.event_id) or ended await steps (history "succeeded" with
 * {"event_id"}) goes to a participant "saga <definition>", labelled "starts
 * saga N" or "ends <step> of saga N".  An event nothing received is a note,
 * with its hops only past the hop limit.
 */
CREATE FUNCTION saga.flow_diagram(correlation_id text)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $flow$
DECLARE
    max_events CONSTANT integer := 1000;
    max_arrows CONSTANT integer := 100;    -- per event
    cid text := flow_diagram.correlation_id;
    emitters jsonb := '{}';                -- event type -> participant, or null when several
    deadlines text[] := '{}';
    hop_limit integer;
    parts jsonb := '{}';                   -- key -> id
    decl text[] := '{}';
    body text[] := '{}';
    ev record;
    r record;
    f record;
    b record;
    bridged jsonb := '{}';                 -- event id -> what it did to sagas: started, ended a step
    pub text;
    pkey text;
    tid text;
    label text;
    known integer;
    cands text[];
    arrows integer;
    nev integer := 0;
    total bigint;
    first_id text;
    last_id text;
BEGIN
    IF cid IS NULL THEN
        RAISE EXCEPTION 'correlation_id must not be null' USING ERRCODE = '22004';
    END IF;
    SELECT pg_catalog.count(*) INTO total FROM saga.events e WHERE e.correlation_id = cid;
    IF total = 0 AND NOT EXISTS (SELECT FROM saga.flows fl WHERE fl.correlation_id = cid) THEN
        RAISE EXCEPTION 'no events or flows with correlation id "%"', pg_catalog.left(cid, 64)
            USING ERRCODE = '42704';
    END IF;

    -- who emits what, in the choreographies of the flows of this correlation id
    SELECT COALESCE(pg_catalog.jsonb_object_agg(y.ev, y.part), '{}') INTO emitters
      FROM (SELECT x.ev, CASE WHEN pg_catalog.count(DISTINCT x.part) = 1
                              THEN pg_catalog.to_jsonb(pg_catalog.min(x.part)) END AS part
              FROM (SELECT l.ev, p.key AS part
                      FROM saga.flows fl
                      JOIN saga.choreographies c ON c.name = fl.choreography AND c.version = fl.version
                     CROSS JOIN LATERAL pg_catalog.jsonb_each(c.definition -> 'participants') AS p
                     CROSS JOIN LATERAL pg_catalog.jsonb_array_elements_text(
                                COALESCE(p.value -> 'emits', '[]')
                                || COALESCE(p.value -> 'fails', '[]')
                                || pg_catalog.jsonb_build_array(p.value -> 'compensation' -> 'emits'))
                                AS l(ev)
                     WHERE fl.correlation_id = cid AND l.ev IS NOT NULL) x
             GROUP BY x.ev) y;
    SELECT COALESCE(pg_catalog.array_agg(c.definition -> 'deadline' ->> 'publish'), '{}') INTO deadlines
      FROM saga.flows fl
      JOIN saga.choreographies c ON c.name = fl.choreography AND c.version = fl.version
     WHERE fl.correlation_id = cid AND c.definition -> 'deadline' ? 'publish';

    -- the hop limit: the flows' choreography's max_hops, else saga.max_hops
    SELECT pg_catalog.max((c.definition ->> 'max_hops')::integer) INTO hop_limit
      FROM saga.flows fl
      JOIN saga.choreographies c ON c.name = fl.choreography AND c.version = fl.version
     WHERE fl.correlation_id = cid;
    hop_limit := COALESCE(hop_limit, pg_catalog.current_setting('saga.max_hops', true)::integer, 32);

    -- what the events did to the sagas of this correlation id: the sagas an event started
    -- (start_saga: saga.instances.event_id) and the await steps it ended (history "succeeded"
    -- with detail {"event_id"}); both sagas carry the event's correlation id
    SELECT COALESCE(pg_catalog.jsonb_object_agg(y.ev, y.arr), '{}') INTO bridged
      FROM (SELECT x.ev, pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                       'name', x.name, 'what', x.what, 'start', x.k = 0) ORDER BY x.k, x.sid, x.hid) AS arr
              FROM (SELECT i.event_id::text AS ev, 0 AS k, i.id AS sid, 0::bigint AS hid, i.name,
                           'starts saga ' || i.id AS what
                      FROM saga.instances i
                     WHERE i.correlation_id = cid AND i.event_id IS NOT NULL
                    UNION ALL
                    SELECT h.detail ->> 'event_id', 1, i.id, h.id, i.name,
                           'ends ' || h.step || ' of saga ' || i.id
                      FROM saga.instances i
                      JOIN saga.history h ON h.saga_id = i.id
                     WHERE i.correlation_id = cid AND h.event = 'succeeded' AND h.detail ? 'event_id') x
             GROUP BY x.ev) y;

    FOR ev IN SELECT e.id, e.type, e.publisher, e.hops, e.deliveries, e.late, e.published_at
                FROM saga.events e WHERE e.correlation_id = cid
               ORDER BY e.published_at, e.id LIMIT max_events LOOP
        nev := nev + 1;
        -- the sender
        IF emitters ? ev.type AND pg_catalog.jsonb_typeof(emitters -> ev.type) = 'string' THEN
            pkey := 'topic:' || (emitters ->> ev.type);
            label := emitters ->> ev.type;
        ELSIF ev.type = ANY (deadlines) THEN
            pkey := 'deadline:';
            label := 'deadline';
        ELSE
            pkey := 'role:' || ev.publisher;
            label := ev.publisher;
        END IF;
        IF NOT parts ? pkey THEN
            parts := parts || pg_catalog.jsonb_build_object(pkey, 'p' || pg_catalog.cardinality(decl));
            decl := decl || ('    ' || CASE WHEN pkey LIKE 'role:%' THEN 'actor ' ELSE 'participant ' END
                             || (parts ->> pkey) || ' as ' || saga.diagram_escape(label, 'mermaid'));
        END IF;
        pub := parts ->> pkey;
        label := nev || '. ' || ev.type;

        -- the recipients: pending and leased deliveries, dead letters, failed filters
        known := 0;
        arrows := 0;
        FOR r IN SELECT x.topic, x.state, x.arrow, x.saga
                   FROM (SELECT o.topic, NULL::text AS saga, CASE WHEN o.lease_owner IS NOT NULL THEN 'leased' ELSE 'pending' END
                                || CASE WHEN o.headers ->> 'replay' = 'true' THEN ', replay' ELSE '' END AS state,
                                '-)' AS arrow, o.headers ->> 'replay' = 'true' AS replay
                           FROM saga.outbox o WHERE o.event_id = ev.id AND o.kind = 'event'
                         UNION ALL
                         SELECT d.topic, NULL, 'dead letter'
                                || CASE WHEN d.headers ->> 'replay' = 'true' THEN ', replay' ELSE '' END,
                                '-x', d.headers ->> 'replay' = 'true'
                           FROM saga.dead_letters d WHERE d.event_id = ev.id
                         UNION ALL
                         SELECT s.topic, s.options ->> 'start_saga', 'filter error', '-x', true
                           FROM saga.filter_errors fe JOIN saga.subscriptions s ON s.id = fe.subscription_id
                          WHERE fe.event_id = ev.id) x
                  ORDER BY x.topic COLLATE "C", x.state COLLATE "C" LOOP
            IF r.state NOT LIKE '%replay' AND r.state <> 'filter error' THEN
                known := known + 1;
            END IF;
            arrows := arrows + 1;
            CONTINUE WHEN arrows > max_arrows;
            pkey := CASE WHEN r.saga IS NOT NULL THEN 'saga:' || r.saga ELSE 'topic:' || r.topic END;
            IF NOT parts ? pkey THEN
                parts := parts || pg_catalog.jsonb_build_object(pkey, 'p' || pg_catalog.cardinality(decl));
                decl := decl || ('    participant ' || (parts ->> pkey) || ' as '
                                 || saga.diagram_escape(CASE WHEN r.saga IS NOT NULL THEN 'saga ' || r.saga
                                                             ELSE r.topic END, 'mermaid'));
            END IF;
            body := body || ('    ' || pub || r.arrow || (parts ->> pkey) || ': '
                             || saga.diagram_escape(label || ' (' || CASE WHEN ev.late THEN 'late, ' ELSE '' END
                                                    || r.state || ')', 'mermaid'));
        END LOOP;

        -- the sagas it started (each counts as a delivery) and the await steps it ended
        FOR b IN SELECT x.value ->> 'name' AS name, x.value ->> 'what' AS what, (x.value ->> 'start')::boolean AS start
                   FROM pg_catalog.jsonb_array_elements(COALESCE(bridged -> (ev.id::text), '[]'))
                        WITH ORDINALITY AS x(value, o)
                  ORDER BY x.o LOOP
            IF b.start THEN
                known := known + 1;
            END IF;
            arrows := arrows + 1;
            CONTINUE WHEN arrows > max_arrows;
            pkey := 'saga:' || b.name;
            IF NOT parts ? pkey THEN
                parts := parts || pg_catalog.jsonb_build_object(pkey, 'p' || pg_catalog.cardinality(decl));
                decl := decl || ('    participant ' || (parts ->> pkey) || ' as '
                                 || saga.diagram_escape('saga ' || b.name, 'mermaid'));
            END IF;
            body := body || ('    ' || pub || '->>' || (parts ->> pkey) || ': '
                             || saga.diagram_escape(label || ' (' || CASE WHEN ev.late THEN 'late, ' ELSE '' END
                                                    || b.what || ')', 'mermaid'));
        END LOOP;

        -- the done deliveries: the subscriptions that stand for them (start_saga ones are
        -- the sagas above), when they add up
        IF ev.deliveries > known THEN
            SELECT pg_catalog.array_agg(s.topic ORDER BY s.topic COLLATE "C") INTO cands
              FROM saga.subscriptions s
             WHERE s.event_type = ev.type AND s.created_at <= ev.published_at
               AND NOT s.options ? 'start_saga'
               AND NOT EXISTS (SELECT FROM saga.outbox o WHERE o.event_id = ev.id AND o.subscription_id = s.id)
               AND NOT EXISTS (SELECT FROM saga.dead_letters d WHERE d.event_id = ev.id AND d.subscription_id = s.id)
               AND NOT EXISTS (SELECT FROM saga.filter_errors fe WHERE fe.event_id = ev.id AND fe.subscription_id = s.id);
            IF pg_catalog.cardinality(cands) = ev.deliveries - known THEN
                FOREACH tid IN ARRAY cands LOOP
                    arrows := arrows + 1;
                    CONTINUE WHEN arrows > max_arrows;
                    pkey := 'topic:' || tid;
                    IF NOT parts ? pkey THEN
                        parts := parts || pg_catalog.jsonb_build_object(pkey, 'p' || pg_catalog.cardinality(decl));
                        decl := decl || ('    participant ' || (parts ->> pkey) || ' as ' || saga.diagram_escape(tid, 'mermaid'));
                    END IF;
                    body := body || ('    ' || pub || '->>' || (parts ->> pkey) || ': '
                                     || saga.diagram_escape(label || CASE WHEN ev.late THEN ' (late)' ELSE '' END,
                                                            'mermaid'));
                END LOOP;
            ELSE
                body := body || ('    Note right of ' || pub || ': '
                                 || saga.diagram_escape(label || CASE WHEN ev.late THEN ' (late)' ELSE '' END
                                    || ': ' || (ev.deliveries - known)
                                    || ' deliveries done, to topics not recorded', 'mermaid'));
            END IF;
        END IF;
        IF arrows > max_arrows THEN
            body := body || ('    Note right of ' || pub || ': '
                             || saga.diagram_escape(label || ': ' || (arrows - max_arrows)
                                || ' more deliveries not drawn', 'mermaid'));
        END IF;
        IF ev.deliveries = 0 AND arrows = 0 THEN
            body := body || ('    Note right of ' || pub || ': '
                             || saga.diagram_escape(label || CASE WHEN ev.late THEN ' (late)' ELSE '' END
                                || CASE WHEN ev.hops > hop_limit
                                        THEN ': not delivered, past the hop limit (hops ' || ev.hops || ' > ' || hop_limit || ')'
                                        ELSE ': not delivered' END, 'mermaid'));
        END IF;
    END LOOP;

    IF pg_catalog.cardinality(decl) = 0 THEN
        decl := decl || ('    participant p0 as ' || saga.diagram_escape(cid, 'mermaid'));
    END IF;
    first_id := 'p0';
    last_id := 'p' || (pg_catalog.cardinality(decl) - 1);
    FOR f IN SELECT fl.choreography, fl.version, fl.status, fl.waiting_on
               FROM saga.flows fl WHERE fl.correlation_id = cid
              ORDER BY fl.choreography COLLATE "C", fl.id LOOP
        body := body || ('    Note over ' || first_id
                         || CASE WHEN last_id <> first_id THEN ',' || last_id ELSE '' END || ': '
                         || saga.diagram_escape('flow ' || f.choreography || ' v' || f.version || ': ' || f.status
                            || CASE WHEN pg_catalog.cardinality(f.waiting_on) > 0
                                    THEN ', waiting on ' || pg_catalog.array_to_string(f.waiting_on, ' ')
                                    ELSE '' END, 'mermaid'));
    END LOOP;
    IF total > max_events THEN
        body := body || ('    Note over ' || first_id
                         || CASE WHEN last_id <> first_id THEN ',' || last_id ELSE '' END || ': '
                         || saga.diagram_escape('the first ' || max_events || ' of ' || total
                            || ' events are drawn', 'mermaid'));
    END IF;
    RETURN pg_catalog.array_to_string(
        ARRAY['sequenceDiagram', '    title ' || saga.diagram_escape('flow ' || cid, 'mermaid')]
        || decl || body, E'\n') || E'\n';
END
$flow$;

/*
 * One saga's step runs and compensations as a Mermaid gantt, from its
 * history: a step from its first dispatch (or claim, or outcome for an SQL
 * step that ran at once) to its outcome, a compensation from its dispatch
 * to compensated or compensation_failed; one not finished ends at the
 * saga's latest history entry and is active.  Times are Unix milliseconds.
 */
CREATE FUNCTION saga.timeline(saga_id bigint)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $timeline$
DECLARE
    s record;
    r record;
    out text[];
    section text := '';
    n integer := 0;
BEGIN
    IF timeline.saga_id IS NULL THEN
        RAISE EXCEPTION 'saga_id must not be null' USING ERRCODE = '22004';
    END IF;
    SELECT i.name, i.version, i.status, d.step_names INTO s
      FROM saga.instances i
      JOIN saga.definitions d ON d.name = i.name AND d.version = i.version
     WHERE i.id = timeline.saga_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'saga % does not exist', timeline.saga_id USING ERRCODE = '42704';
    END IF;
    out := ARRAY['gantt',
                 '    title ' || saga.diagram_escape(s.name || ' v' || s.version || ' ' || s.status, 'gantt'),
                 '    dateFormat x',
                 '    axisFormat %H:%M:%S.%L',
                 '    todayMarker off'];
    FOR r IN
        WITH h AS (
            SELECT h.step, h.event, h.at, h.id,
                   h.event IN ('compensation_dispatched', 'compensated', 'compensation_failed',
                               'compensation_retry_scheduled') AS comp
              FROM saga.history h
             WHERE h.saga_id = timeline.saga_id AND h.step IS NOT NULL),
        spans AS (
            SELECT h.step, h.comp,
                   pg_catalog.min(h.at) FILTER (WHERE h.event IN ('dispatched', 'claimed', 'compensation_dispatched',
                                                                   'succeeded', 'failed', 'compensated',
                                                                   'compensation_failed')) AS started,
                   (pg_catalog.array_agg(h.at ORDER BY h.id DESC) FILTER (WHERE h.event IN
                        ('succeeded', 'failed', 'compensated', 'compensation_failed', 'withdrawn')))[1] AS ended,
                   (pg_catalog.array_agg(h.event ORDER BY h.id DESC) FILTER (WHERE h.event IN
                        ('succeeded', 'failed', 'compensated', 'compensation_failed', 'withdrawn')))[1] AS outcome
              FROM h GROUP BY h.step, h.comp)
        SELECT sp.step, sp.comp, sp.outcome,
               pg_catalog.floor(pg_catalog.date_part('epoch', sp.started) * 1000)::bigint AS t0,
               pg_catalog.floor(pg_catalog.date_part('epoch', COALESCE(sp.ended,
                   (SELECT pg_catalog.max(h2.at) FROM saga.history h2 WHERE h2.saga_id = timeline.saga_id)))
                   * 1000)::bigint AS t1
          FROM spans sp
         WHERE sp.started IS NOT NULL
         ORDER BY sp.comp, sp.started, pg_catalog.array_position(s.step_names, sp.step)
    LOOP
        IF section <> (CASE WHEN r.comp THEN 'compensations' ELSE 'steps' END) THEN
            section := CASE WHEN r.comp THEN 'compensations' ELSE 'steps' END;
            out := out || ('    section ' || section);
        END IF;
        out := out || ('    ' || saga.diagram_escape(r.step || ' ' || COALESCE(r.outcome, 'running'), 'gantt')
                       || ' :' || CASE r.outcome WHEN 'succeeded' THEN 'done, ' WHEN 'compensated' THEN 'done, '
                                                 WHEN 'failed' THEN 'crit, ' WHEN 'compensation_failed' THEN 'crit, '
                                                 WHEN 'withdrawn' THEN '' ELSE 'active, ' END
                       || 't' || n || ', ' || r.t0 || ', ' || r.t1);
        n := n + 1;
    END LOOP;
    RETURN pg_catalog.array_to_string(out, E'\n') || E'\n';
END
$timeline$;

REVOKE ALL ON FUNCTION saga.diagram_escape(text, text), saga.diagram_render(jsonb, text),
    saga.diagram_saga_graph(jsonb, text[], jsonb), saga.diagram_choreography_graph(jsonb, text[]),
    saga.diagram(text, text, integer), saga.diagram(bigint, text), saga.flow_diagram(text),
    saga.timeline(bigint)
    FROM PUBLIC;
-- the diagrams are SECURITY INVOKER: their callers need the helpers too
GRANT EXECUTE ON FUNCTION saga.diagram_escape(text, text), saga.diagram_render(jsonb, text),
    saga.diagram_saga_graph(jsonb, text[], jsonb), saga.diagram_choreography_graph(jsonb, text[]),
    saga.diagram(text, text, integer), saga.diagram(bigint, text), saga.flow_diagram(text),
    saga.timeline(bigint)
    TO saga_reader, saga_admin, saga_worker;

COMMENT ON FUNCTION saga.diagram(text, text, integer) IS
'saga.diagram(name, format, version) -> text: draw the latest (or the given) version of the saga definition or choreography of that name, as a Mermaid flowchart (format ''mermaid'', the default: the text starts with "flowchart LR") or Graphviz DOT (''dot'': "digraph"). A saga definition: its steps (topic steps as boxes, SQL steps as subroutines, await steps as hexagons), their "after" edges, compensations as dashed edges back to the steps they follow, the pivot, the events it publishes or awaits (a compensated or cancelled end that publishes is reached by a dashed edge from the start node, "on failure" or "on cancel"), and its deadline. A choreography: participants and events, on, emits, fails (red) and compensation (dashed) edges, the start event, the completed events, and the deadline. Deterministic. At most 500 edges are drawn (Mermaid''s own default maxEdges), the first in that order; past that a last node (o0) says how many were left out (nodes are all drawn, bounded by the definition limits), so the text is bounded and the time linear in the document. Errors: 22004 null name or format, 22023 unknown format, 42704 no such name or version. Granted to saga_reader, saga_admin and saga_worker.';

COMMENT ON FUNCTION saga.diagram(bigint, text) IS
'saga.diagram(saga_id, format) -> text: draw one saga as saga.diagram(name) draws its definition version, with each step''s status (pending, ready, running, succeeded, failed, compensating, compensated, skipped: a style class each), attempt and error, and the saga''s status and correlation id; at most 500 edges, as saga.diagram(name). Errors: 22004 null argument, 22023 unknown format, 42704 no such saga. Granted to saga_reader, saga_admin and saga_worker.';

COMMENT ON FUNCTION saga.flow_diagram(text) IS
'saga.flow_diagram(correlation_id) -> text: a Mermaid sequenceDiagram of the events of a correlation id in publish order (at most 1000; a last note counts the rest), each from the participant of its flows'' choreography that emits its type (else "deadline" for a deadline event, else the publishing role, as an actor) to the topics that have its delivery: done (solid), pending or leased (open arrow), dead letter or filter error (crossed); an event that started a saga (start_saga) or ended await steps as an arrow to a participant "saga <definition>" ("starts saga N", "ends <step> of saga N"); late events marked, events nothing received as a note (with the hops when past the hop limit), and a note with each flow''s status. Errors: 22004 null correlation_id, 42704 no events or flows with that correlation id. Granted to saga_reader, saga_admin and saga_worker.';

COMMENT ON FUNCTION saga.timeline(bigint) IS
'saga.timeline(saga_id) -> text: a Mermaid gantt of one saga''s step runs and compensations from saga.history, each from its dispatch to its outcome (done, crit for a failure, active while unfinished, up to the latest history entry), times as Unix milliseconds (dateFormat x). Errors: 22004 null saga_id, 42704 no such saga. Granted to saga_reader, saga_admin and saga_worker.';

COMMENT ON FUNCTION saga.diagram_escape(text, text) IS
'internal to the diagrams: a string made safe inside a quoted Mermaid (''mermaid'', ''gantt'') or DOT (''dot'') label';
COMMENT ON FUNCTION saga.diagram_render(jsonb, text) IS
'internal to the diagrams: a graph {nodes, edges, edges_left_out} as Mermaid flowchart or DOT text, at most 500 edges, then a node o0 counting those left out';
COMMENT ON FUNCTION saga.diagram_saga_graph(jsonb, text[], jsonb) IS
'internal to the diagrams: the graph of a saga definition document, with step states for one saga; the first 500 edges, edges_left_out counts the rest';
COMMENT ON FUNCTION saga.diagram_choreography_graph(jsonb, text[]) IS
'internal to the diagrams: the graph of a choreography document; the first 500 edges, edges_left_out counts the rest';

/*
 * Change data capture: with saga.cdc on (and wal_level = logical) every
 * dispatch of a task (written to the outbox, or given back by a retry, a
 * release, a lapse or saga.retry) is written as a transactional logical
 * decoding message with the prefix 'saga' (src/cdc.c), for Debezium and any
 * other consumer of logical decoding.  The WHEN clause keeps the trigger
 * from being called at all while saga.cdc is off; a backend that has not
 * loaded the library yet calls it once, which loads it.
 */
CREATE FUNCTION saga.outbox_dispatch() RETURNS trigger
    LANGUAGE C SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'saga_outbox_dispatch';
COMMENT ON FUNCTION saga.outbox_dispatch() IS
'trigger of saga.outbox: with saga.cdc on and wal_level = logical, writes one transactional logical decoding message (prefix ''saga'') per dispatch of a task, a JSON object {id (a random UUID), aggregate_type (the topic), aggregate_id (the correlation id), type (action, compensate, event), task_id, saga_id, step, event_id, attempt, visible_at (ISO 8601, UTC), payload (a JSON string; null when the message would pass 512 kB), payload_omitted, headers, traceparent}; see README, "Change data capture". Not callable otherwise (39P01).';
REVOKE ALL ON FUNCTION saga.outbox_dispatch() FROM PUBLIC;

CREATE TRIGGER outbox_dispatch
    AFTER INSERT OR UPDATE OF visible_at, lease_owner, attempt ON saga.outbox
    FOR EACH ROW
    WHEN (pg_catalog.current_setting('saga.cdc', true) IS DISTINCT FROM 'off')
    EXECUTE FUNCTION saga.outbox_dispatch();

/*
 * Installed where no background worker will serve it (the library not
 * preloaded, or the database not in saga.databases), the extension works
 * but its time-based work waits for saga.tick(): say so now rather than
 * when a timeout does not happen.
 */
DO $warn$
DECLARE
    w record;
BEGIN
    SELECT * INTO w FROM saga.worker_status();
    IF NOT w.served THEN
        RAISE WARNING 'no saga worker serves database "%": step timeouts, deadlines, lapsed leases, retry wake-ups and retention will wait for saga.tick()',
            pg_catalog.current_database()
            USING DETAIL = CASE WHEN w.preloaded THEN 'saga.databases does not name this database.'
                                ELSE 'The saga library is not in shared_preload_libraries, so no background worker runs.' END,
                  HINT = 'Add the database to saga.databases (with shared_preload_libraries = ''saga''), or call saga.tick() every few seconds from a scheduler such as pg_cron.';
    END IF;
END
$warn$;
