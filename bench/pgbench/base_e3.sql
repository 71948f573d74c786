-- the baseline 3-step saga end to end: a start and three polled steps
WITH s AS (INSERT INTO base.saga (state, input, updated_at) VALUES (0, '{"n": 1}', now()) RETURNING id),
     o AS (INSERT INTO base.outbox (saga_id, step, topic, payload)
           SELECT id, 0, 'e3', '{"input": {"n": 1}, "step": 0}' FROM s),
     h AS (INSERT INTO base.history (saga_id, at, event, step) SELECT id, now(), 'started', 0 FROM s)
SELECT id FROM s;
WITH t AS (SELECT id, saga_id, step FROM base.outbox
            WHERE topic = 'e3' AND visible_at <= now()
            ORDER BY visible_at, id FOR UPDATE SKIP LOCKED LIMIT 1),
     d AS (DELETE FROM base.outbox o USING t WHERE o.id = t.id RETURNING t.saga_id, t.step),
     s AS (UPDATE base.saga s
              SET state = CASE WHEN d.step + 1 < 3 THEN d.step + 1 WHEN 0 = 1 THEN 0 ELSE -1 END,
                  updated_at = now()
             FROM d WHERE s.id = d.saga_id RETURNING s.id, s.state, s.input),
     n AS (INSERT INTO base.outbox (saga_id, step, topic, payload)
           SELECT id, state, 'e3', jsonb_build_object('input', input, 'step', state) FROM s WHERE state >= 0),
     h AS (INSERT INTO base.history (saga_id, at, event, step) SELECT saga_id, now(), 'completed', step FROM d)
SELECT count(*) FROM d;
WITH t AS (SELECT id, saga_id, step FROM base.outbox
            WHERE topic = 'e3' AND visible_at <= now()
            ORDER BY visible_at, id FOR UPDATE SKIP LOCKED LIMIT 1),
     d AS (DELETE FROM base.outbox o USING t WHERE o.id = t.id RETURNING t.saga_id, t.step),
     s AS (UPDATE base.saga s
              SET state = CASE WHEN d.step + 1 < 3 THEN d.step + 1 WHEN 0 = 1 THEN 0 ELSE -1 END,
                  updated_at = now()
             FROM d WHERE s.id = d.saga_id RETURNING s.id, s.state, s.input),
     n AS (INSERT INTO base.outbox (saga_id, step, topic, payload)
           SELECT id, state, 'e3', jsonb_build_object('input', input, 'step', state) FROM s WHERE state >= 0),
     h AS (INSERT INTO base.history (saga_id, at, event, step) SELECT saga_id, now(), 'completed', step FROM d)
SELECT count(*) FROM d;
WITH t AS (SELECT id, saga_id, step FROM base.outbox
            WHERE topic = 'e3' AND visible_at <= now()
            ORDER BY visible_at, id FOR UPDATE SKIP LOCKED LIMIT 1),
     d AS (DELETE FROM base.outbox o USING t WHERE o.id = t.id RETURNING t.saga_id, t.step),
     s AS (UPDATE base.saga s
              SET state = CASE WHEN d.step + 1 < 3 THEN d.step + 1 WHEN 0 = 1 THEN 0 ELSE -1 END,
                  updated_at = now()
             FROM d WHERE s.id = d.saga_id RETURNING s.id, s.state, s.input),
     n AS (INSERT INTO base.outbox (saga_id, step, topic, payload)
           SELECT id, state, 'e3', jsonb_build_object('input', input, 'step', state) FROM s WHERE state >= 0),
     h AS (INSERT INTO base.history (saga_id, at, event, step) SELECT saga_id, now(), 'completed', step FROM d)
SELECT count(*) FROM d;
