-- baseline publish: one statement writes the event row and its 3 delivery rows (what
-- saga.publish writes for an event type with 3 subscriptions) into base.events and
-- base.ev_outbox, copies of saga.events and saga.outbox with the same indexes
BEGIN;
WITH e AS (
    INSERT INTO base.events (type, payload, correlation_id, traceparent, published_at, publisher, hops, deliveries)
    VALUES ('bench.pub3', '{"n": 1}', 'bench-noflow',
            '00-' || md5(random()::text) || '-' || left(md5(random()::text), 16) || '-01',
            now(), current_user, 0, 3)
    RETURNING id, type, payload, correlation_id, traceparent)
INSERT INTO base.ev_outbox (id, topic, kind, max_attempts, payload, headers, visible_at, created_at,
                            event_id, subscription_id)
SELECT -nextval('base.deliveries_id_seq'), s.topic, 'event', 3, e.payload,
       jsonb_build_object('kind', 'event', 'attempt', 1, 'correlation_id', e.correlation_id,
                          'traceparent', e.traceparent, 'idempotency_key', e.id || ':' || s.id,
                          'event_id', e.id, 'event_type', e.type, 'causation_id', NULL, 'key', NULL,
                          'replay', false),
       now(), now(), e.id, s.id
  FROM e, (VALUES (1, 'pub_a'), (2, 'pub_b'), (3, 'pub_c')) s (id, topic);
COMMIT;
