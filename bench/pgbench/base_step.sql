-- baseline step, one statement in its own transaction (autocommit): lock one ready row, delete it,
-- advance the state, enqueue the next step, log.
-- -D topic=... -D nsteps=... -D wrap=0|1 (wrap: step nsteps-1 is followed by step 0 again)
WITH t AS (SELECT id, saga_id, step FROM base.outbox
            WHERE topic = :topic AND visible_at <= now()
            ORDER BY visible_at, id FOR UPDATE SKIP LOCKED LIMIT 1),
     d AS (DELETE FROM base.outbox o USING t WHERE o.id = t.id RETURNING t.saga_id, t.step),
     s AS (UPDATE base.saga s
              SET state = CASE WHEN d.step + 1 < :nsteps THEN d.step + 1 WHEN :wrap = 1 THEN 0 ELSE -1 END,
                  updated_at = now()
             FROM d WHERE s.id = d.saga_id RETURNING s.id, s.state, s.input),
     n AS (INSERT INTO base.outbox (saga_id, step, topic, payload)
           SELECT id, state, :topic, jsonb_build_object('input', input, 'step', state) FROM s WHERE state >= 0),
     h AS (INSERT INTO base.history (saga_id, at, event, step) SELECT saga_id, now(), 'completed', step FROM d)
SELECT count(*) FROM d;
