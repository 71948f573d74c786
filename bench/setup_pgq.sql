-- bench/setup_pgq.sql: PgQ, the reference queue, for bench/run.sh (database bench only)
\set ON_ERROR_STOP 1
-- PgQ, the reference queue: one queue, one consumer; ticks are made by hand (pgq.ticker)
CREATE EXTENSION IF NOT EXISTS pgq;
SELECT pgq.create_queue('bq');
SELECT pgq.register_consumer('bq', 'c');
-- a tick (the end of a batch) after every 50 events, like the saga batches of 50
SELECT pgq.set_queue_config('bq', 'ticker_max_count', '50');

-- fill the queue: n events in batches of b, each batch closed by a tick in a transaction of
-- its own (a tick only covers events committed before it); the caller sets
-- synchronous_commit = off to load fast
CREATE PROCEDURE bench_pgq_fill(n int, b int) LANGUAGE plpgsql AS $$
DECLARE done int := 0;
BEGIN
    WHILE done < n LOOP
        PERFORM pgq.insert_event('bq', 'step', '{"n": 1}') FROM generate_series(1, b);
        done := done + b;
        COMMIT;
        PERFORM pgq.ticker('bq');
        COMMIT;
    END LOOP;
END $$;

-- consume one batch: next_batch, read its events, finish_batch; returns the number of events
CREATE FUNCTION bench_pgq_consume() RETURNS int LANGUAGE plpgsql AS $$
DECLARE b bigint; n int;
BEGIN
    b := pgq.next_batch('bq', 'c');
    IF b IS NULL THEN
        RETURN 0;
    END IF;
    SELECT count(*) INTO n FROM pgq.get_batch_events(b);
    PERFORM pgq.finish_batch(b);
    RETURN n;
END $$;
