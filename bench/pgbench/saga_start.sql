-- saga.start of a 10-step chain (definition st), one per transaction
SELECT saga.start('st', '{"n": 1}');
