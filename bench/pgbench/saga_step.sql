-- the transactional poll, -D topic=... -D n=<tasks per transaction>
SELECT saga.complete(id, '{"ok": true}')
  FROM (SELECT id FROM saga.outbox WHERE topic = :topic AND visible_at <= now()
         ORDER BY visible_at, id FOR UPDATE SKIP LOCKED LIMIT :n) t;
