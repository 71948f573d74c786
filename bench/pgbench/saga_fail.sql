-- the failure path: the step fails for good, the saga compensates (s1's compensation is enqueued)
BEGIN;
SELECT saga.fail(id, '{"reason": "declined"}', retryable => false)
  FROM (SELECT id FROM saga.outbox WHERE topic = 'fs_b' AND visible_at <= now()
         ORDER BY visible_at, id FOR UPDATE SKIP LOCKED LIMIT 1) t;
COMMIT;
