/* saga--0.3--0.4.sql: bridges between orchestration and choreography, diagrams, topics */

\echo Use "ALTER EXTENSION saga UPDATE TO '0.4'" to load this file. \quit

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

