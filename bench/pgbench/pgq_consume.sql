-- PgQ consumer: one batch per transaction
SELECT bench_pgq_consume();
