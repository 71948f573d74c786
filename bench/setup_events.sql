-- bench/setup_events.sql: the choreography workloads of bench/run.sh (database bench_events,
-- after setup.sql; needs saga 0.3)
\set ON_ERROR_STOP 1

-- publish: an event type with 3 subscriptions (nobody consumes them during the benchmark)
SELECT saga.subscribe('bench.pub3', t) FROM (VALUES ('pub_a'), ('pub_b'), ('pub_c')) v (t);

-- its baseline: copies of saga.events and saga.outbox with the same columns, defaults,
-- constraints, indexes and storage parameters (fillfactor), and sequences of their own
CREATE TABLE base.events (LIKE saga.events INCLUDING ALL);
CREATE TABLE base.ev_outbox (LIKE saga.outbox INCLUDING ALL);
CREATE SEQUENCE base.events_id_seq;
CREATE SEQUENCE base.deliveries_id_seq;
ALTER TABLE base.events ALTER COLUMN id SET DEFAULT nextval('base.events_id_seq');
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT c.relname, array_to_string(c.reloptions, ', ') AS opts
               FROM pg_class c
              WHERE c.oid IN ('saga.events'::regclass, 'saga.outbox'::regclass) AND c.reloptions IS NOT NULL
    LOOP
        EXECUTE format('ALTER TABLE base.%I SET (%s)',
                       CASE r.relname WHEN 'events' THEN 'events' ELSE 'ev_outbox' END, r.opts);
    END LOOP;
END $$;

-- flow tracking: the order choreography of the README (section "Choreography"), with a deadline of
-- a day instead of 10 minutes so that no flow of the benchmark reaches it
SELECT saga.define_choreography('order', '{
  "start": "OrderPlaced",
  "participants": {
    "payments":      {"on": ["OrderPlaced"], "emits": ["PaymentCharged"], "fails": ["PaymentDeclined"],
                      "compensation": {"on": ["StockUnavailable", "OrderTimedOut"], "emits": "PaymentRefunded"}},
    "inventory":     {"on": ["PaymentCharged"], "emits": ["StockReserved"], "fails": ["StockUnavailable"],
                      "compensation": {"on": ["OrderTimedOut"], "emits": "StockReleased"}},
    "notifications": {"on": ["StockReserved"], "emits": ["CustomerNotified"]}
  },
  "completed": ["CustomerNotified"],
  "deadline": {"after": "1 day", "publish": "OrderTimedOut"},
  "max_hops": 20
}');
-- ... and the same two publishes with no choreography concerned: one subscription each, like
-- OrderPlaced (payments) and PaymentCharged (inventory)
SELECT saga.subscribe('Plain.Placed', 'plain_a');
SELECT saga.subscribe('Plain.Charged', 'plain_b');

-- deliveries: one subscription, a pool preloaded by bench_publish_many
SELECT saga.subscribe('bench.work', 'ev_work');

-- fan-out: 1, 10 and 100 subscriptions
SELECT saga.subscribe('bench.fan1', 'fan_1');
SELECT saga.subscribe('bench.fan10', 'fan_' || i) FROM generate_series(1, 10) i;
SELECT saga.subscribe('bench.fan100', 'fan_' || i) FROM generate_series(1, 100) i;

-- publish n events of a type (each its own correlation id), in transactions of at most 10k
-- (preloading; the caller sets synchronous_commit = off to load fast)
CREATE PROCEDURE bench_publish_many(etype text, n int) LANGUAGE plpgsql AS $$
DECLARE done int := 0; k int;
BEGIN
    WHILE done < n LOOP
        k := least(10000, n - done);
        PERFORM saga.publish(etype, '{"n": 1}') FROM generate_series(1, k);
        done := done + k;
        COMMIT;
    END LOOP;
END $$;
