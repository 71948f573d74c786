/* saga--0.1--0.2.sql: trust and bounds */

\echo Use "ALTER EXTENSION saga UPDATE TO '0.2'" to load this file. \quit

/*
 * The definer of a definition is kept by name.  A regrole column cannot be
 * restored where the role is missing (its input fails, and with it the whole
 * table), and an oid would map to whichever role has that number in another
 * cluster.  A name maps the way pg_dump maps every owner; a definition whose
 * role is gone runs nothing (42704).
 */
ALTER TABLE saga.definitions
    ALTER COLUMN owner TYPE pg_catalog.name USING pg_catalog.pg_get_userbyid(owner);

/*
 * The transactional poll needs UPDATE on some column of saga.outbox for
 * FOR UPDATE.  0.1 granted visible_at, with which a worker could hide every
 * task or end others' leases; this column is read by nothing.
 */
ALTER TABLE saga.outbox ADD COLUMN poll_lock boolean;
REVOKE UPDATE (visible_at) ON saga.outbox FROM saga_worker;
GRANT UPDATE (poll_lock) ON saga.outbox TO saga_worker;

-- a NULL argument raises 22004, as for every other entry point
ALTER FUNCTION saga.define(text, jsonb) CALLED ON NULL INPUT;
ALTER FUNCTION saga.retry(bigint) CALLED ON NULL INPUT;

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
