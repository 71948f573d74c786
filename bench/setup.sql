-- bench/setup.sql: schemas and definitions for bench/run.sh (run once per benchmark database)
\set ON_ERROR_STOP 1
CREATE EXTENSION IF NOT EXISTS saga;

-- the baseline: a hand-written saga in plain SQL, one state row, one outbox row per ready step,
-- one history row per transition
CREATE SCHEMA base;
CREATE TABLE base.saga (
    id         bigserial PRIMARY KEY,
    state      int NOT NULL,
    input      jsonb NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE TABLE base.outbox (
    id         bigserial PRIMARY KEY,
    saga_id    bigint NOT NULL,
    step       int NOT NULL,
    topic      text NOT NULL,
    payload    jsonb NOT NULL,
    visible_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX ON base.outbox (topic, visible_at, id);
CREATE TABLE base.history (
    id      bigserial,
    saga_id bigint NOT NULL,
    at      timestamptz NOT NULL,
    event   text NOT NULL,
    step    int
);
CREATE INDEX ON base.history (saga_id, id);
-- the commit ceiling: a one-row INSERT per transaction
CREATE TABLE base.ceiling (id bigint, at timestamptz);

-- start n baseline sagas on a topic (preloading)
CREATE FUNCTION base.start_many(topic text, n int) RETURNS bigint LANGUAGE sql AS $$
    WITH s AS (INSERT INTO base.saga (state, input, updated_at)
               SELECT 0, '{"n": 1}', now() FROM generate_series(1, n) RETURNING id),
         o AS (INSERT INTO base.outbox (saga_id, step, topic, payload)
               SELECT id, 0, topic, jsonb_build_object('input', '{"n": 1}'::jsonb, 'step', 0) FROM s),
         h AS (INSERT INTO base.history (saga_id, at, event, step)
               SELECT id, now(), 'started', 0 FROM s)
    SELECT count(*) FROM s
$$;

-- saga definitions: chains of n steps on one topic
CREATE FUNCTION pg_temp.chain(n int, topic text) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('steps',
        (SELECT jsonb_agg(jsonb_build_object('name', 's' || i, 'topic', topic) ORDER BY i)
           FROM generate_series(0, n - 1) i))
$$;
SELECT saga.define('chain', pg_temp.chain(10, 'chain'));    -- step throughput
SELECT saga.define('st', pg_temp.chain(10, 'st'));          -- starts
SELECT saga.define('e3', pg_temp.chain(3, 'e3'));           -- end to end
SELECT saga.define('disp', pg_temp.chain(1, 'disp'));       -- dispatch latency
SELECT saga.define('mem', pg_temp.chain(1, 'mem'));         -- memory per backend
SELECT saga.define('lat', pg_temp.chain(10, 'lat'));        -- claim latency, own topic
SELECT saga.define('bulk', pg_temp.chain(10, 'bulk'));      -- claim latency, the 1M backlog
-- failure vs success: s2 succeeds (s3 is dispatched) or fails for good (s1 is compensated)
SELECT saga.define('fs', '{"steps": [
    {"name": "s1", "topic": "fs_a", "compensate": {"topic": "fs_c"}},
    {"name": "s2", "topic": "fs_b"},
    {"name": "s3", "topic": "fs_d"}]}');

-- start n sagas of a definition, in transactions of at most 10k (preloading; the caller sets
-- synchronous_commit = off to load fast)
CREATE PROCEDURE bench_start_many(def text, n int) LANGUAGE plpgsql AS $$
DECLARE done int := 0; k int;
BEGIN
    WHILE done < n LOOP
        k := least(10000, n - done);
        PERFORM saga.start(def, '{"n": 1}') FROM generate_series(1, k);
        done := done + k;
        COMMIT;
    END LOOP;
END $$;


-- complete up to n ready tasks of a topic, in transactions of at most 10k (preloading)
CREATE PROCEDURE bench_complete_topic(topic text, n int) LANGUAGE plpgsql AS $$
DECLARE done int := 0; k int;
BEGIN
    LOOP
        SELECT count(saga.complete(t.id, '{"ok": true}')) INTO k
          FROM (SELECT o.id FROM saga.outbox o
                 WHERE o.topic = bench_complete_topic.topic AND o.visible_at <= now()
                 ORDER BY o.visible_at, o.id LIMIT least(10000, n - done)) t;
        done := done + k;
        COMMIT;
        EXIT WHEN k = 0 OR done >= n;
    END LOOP;
END $$;
