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
'saga.define(name, definition) -> integer: validate and store a saga definition, returning its version (1, 2, ...; an identical document returns the current version and stores nothing). name matches ^[a-z][a-z0-9_]{0,62}$; definition is an object with "steps" (1 to 512), an optional "deadline" and an optional "publish" ({"completed", "compensated", "cancelled"}: the event type published when the saga ends so), at most saga.max_payload_size bytes; a step has a "topic", an "sql" function or an "await" event type, and may "publish" an event type when it succeeds (payload: its result); intervals are positive and at most 3650 days. SQL steps run as the calling role. Errors: 22004 null argument, 22001 name over 63 bytes, 42602 bad name, topic or event type, 22023 bad document (also "retry", "topic" or "sql" on an await step), 22008 interval out of range, 42710 duplicate step, 42704 unknown step in "after", 42P17 cycle, 42883 missing function, 42809 not a plain function, 42804 function not returning jsonb, 42P13 a function whose own search_path does not end in pg_temp, 42501 the caller lacks USAGE on its schema or EXECUTE, or the name''s latest version belongs to a role the caller is not a member of, 54000 too large, 0A000 "async". Granted to saga_admin.';

COMMENT ON FUNCTION saga.start(text, jsonb, text, text, text) IS
'saga.start(name, input jsonb, correlation_id, idempotency_key, traceparent) -> bigint: start a saga of the latest version of a definition and return its id; steps without predecessors are dispatched (SQL steps run, await steps find an event already published) in the caller''s transaction. correlation_id and idempotency_key are at most 255 bytes, traceparent is W3C (55 bytes), input at most saga.max_payload_size bytes. The same name and idempotency_key return the first saga. Errors: 22004 null name or input, or no correlation_id for a definition with await steps, 22001 argument too long, 22023 empty argument or bad traceparent, 42704 unknown definition, 54000 input too large. Granted to saga_admin and saga_worker.';

COMMENT ON FUNCTION saga.subscribe(text, text, jsonb) IS
'saga.subscribe(event_type, topic, options jsonb) -> bigint: deliver every later event of event_type to topic (subscribing again updates options); returns the subscription id. options: retry (as for steps; default 3 attempts), filter (a jsonpath predicate on the payload, lax mode, at most 4096 bytes and saga.filter_timeout per event: false or null skip the delivery, an error skips it and is recorded in saga.filter_errors), replay_from (timestamptz: also deliver the retained events published since then), start_saga (a saga definition''s name: instead of a delivery, each event starts that saga in the publishing transaction, input the payload, correlation id and trace the event''s, idempotency key ''event:<event id>'', so a replayed event finds its saga rather than starting another; not with retry). Errors: 22004 null argument, 22001 too long, 22023 bad event type or options, 42602 bad topic, 42601 a filter that does not parse, 42704 start_saga names no saga definition, 42809 start_saga names a choreography, 22008 interval out of range, 54000 filter too long or 1000 subscriptions of the type already, 42501 the subscription belongs to a role the caller is not a member of. Granted to saga_admin.';


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
