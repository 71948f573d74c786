-- leased claim of up to :n tasks and their reports, one statement in its own transaction
-- (autocommit, as the baseline step)
SELECT count(saga.complete(t.id, '{"ok": true}', lease => t.lease))
  FROM saga.claim(:topic, 'w', :n, '30 s') t;
