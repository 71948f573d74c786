-- leased claim of up to :n tasks and their reports, in one transaction
BEGIN;
SELECT count(saga.complete(t.id, '{"ok": true}', lease => t.lease))
  FROM saga.claim(:topic, 'w', :n, '30 s') t;
COMMIT;
