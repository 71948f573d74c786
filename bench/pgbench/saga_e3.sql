-- a 3-step saga end to end: a start and three steps (polled: any saga's ready step)
SELECT saga.start('e3', '{"n": 1}');
SELECT saga.complete(id, '{"ok": true}')
  FROM (SELECT id FROM saga.outbox WHERE topic = 'e3' AND visible_at <= now()
         ORDER BY visible_at, id FOR UPDATE SKIP LOCKED LIMIT 1) t;
SELECT saga.complete(id, '{"ok": true}')
  FROM (SELECT id FROM saga.outbox WHERE topic = 'e3' AND visible_at <= now()
         ORDER BY visible_at, id FOR UPDATE SKIP LOCKED LIMIT 1) t;
SELECT saga.complete(id, '{"ok": true}')
  FROM (SELECT id FROM saga.outbox WHERE topic = 'e3' AND visible_at <= now()
         ORDER BY visible_at, id FOR UPDATE SKIP LOCKED LIMIT 1) t;
