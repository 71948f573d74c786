/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  Time-based work: the launcher, one worker per database in
 *	  saga.databases, saga.tick(), and the wake-up path from backends.
 *
 * A round is a handful of units, each a batch in one transaction that is
 * safe to run twice and safe against concurrent clients (rows are taken
 * with SKIP LOCKED and every transition goes through the engine, which
 * locks the saga row).  After a round the worker sleeps on its latch until
 * the earliest due time it computed.  A backend that commits work due
 * sooner (a delayed retry, a lease, a timeout, a deadline) sets the latch.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_database.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "port/atomics.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "saga.h"

#define SAGA_RESTART_SECS	5
#define SAGA_LOCKED_RETRY_MS 250	/* see worker_round */


/* GUCs */
char	   *saga_databases = NULL;
/* this process is a saga worker: it never waits for a lock a client holds */
bool		saga_is_worker = false;
int			saga_retention = 7 * 24 * 3600;	/* seconds, -1 keeps forever */
int			saga_batch_size = 500;
int			saga_max_sleep = 60000; /* milliseconds */
int			saga_incident_after = 5;

/* worker side */
static char *my_dbname = NULL;

/* delayed visibility already announced, per process (lost on restart: a hint) */
static TimestampTz notified_until = DT_NOBEGIN;

static SPIPlanPtr plan_timeouts = NULL;
static SPIPlanPtr plan_lapsed = NULL;
static SPIPlanPtr plan_deadlines = NULL;
static SPIPlanPtr plan_topics = NULL;
static SPIPlanPtr plan_purge = NULL;
static SPIPlanPtr plan_purge_history = NULL;
static SPIPlanPtr plan_withdrawn = NULL;
static SPIPlanPtr plan_next = NULL;
static SPIPlanPtr plan_sql_retries = NULL;
static SPIPlanPtr plan_next_flows = NULL;
static SPIPlanPtr plan_flow_deadlines = NULL;
static SPIPlanPtr plan_purge_events = NULL;
static SPIPlanPtr plan_purge_flows = NULL;
static SPIPlanPtr plan_purge_filter_errors = NULL;

PGDLLEXPORT void saga_launcher_main(Datum main_arg);
PGDLLEXPORT void saga_worker_main(Datum main_arg);

PG_FUNCTION_INFO_V1(saga_tick);


/* ---------- the units of a round ---------- */

static int64 *
collect_ids(int *n)
{
	int64	   *ids = palloc(sizeof(int64) * (SPI_processed + 1));
	bool		isnull;

	for (uint64 i = 0; i < SPI_processed; i++)
		ids[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
	*n = (int) SPI_processed;
	return ids;
}

/* steps past their timeout fail for good */
static int
unit_timeouts(TimestampTz now)
{
	Oid			types[2] = {TIMESTAMPTZOID, INT4OID};
	Datum		values[2] = {TimestampTzGetDatum(now), Int32GetDatum(saga_batch_size)};
	int64	   *ids;
	int			n;

	SagaExecute(&plan_timeouts,
				"SELECT id FROM saga.outbox WHERE timeout_at <= $1 "
				"ORDER BY timeout_at LIMIT $2 FOR UPDATE SKIP LOCKED",
				2, types, values, NULL, SPI_OK_SELECT, "finding timed-out tasks");
	ids = collect_ids(&n);
	for (int i = 0; i < n; i++)
		(void) SagaIsolated(SagaExhaustAny, ids[i], "timeout", true);
	return n;
}

/*
 * Leases that lapsed: an attempt is spent; with none left the step fails.
 * An action withdrawn from a saga that stopped running is settled.
 */
static int
unit_lapsed(TimestampTz now)
{
	Oid			types[2] = {TIMESTAMPTZOID, INT4OID};
	Datum		values[2] = {TimestampTzGetDatum(now), Int32GetDatum(saga_batch_size)};
	uint64		n;
	int64	   *ids;
	int		   *what;

	SagaExecute(&plan_lapsed,
				"SELECT o.id, CASE "
				"WHEN " SAGA_SQL_WITHDRAWN " THEN 2 "
				"WHEN o.attempt >= COALESCE(o.max_attempts, 2147483647) THEN 1 "
				"ELSE 0 END "
				"FROM saga.outbox o WHERE o.lease_owner IS NOT NULL "
				"AND o.visible_at <= $1 "
				"ORDER BY o.visible_at LIMIT $2 FOR UPDATE OF o SKIP LOCKED",
				2, types, values, NULL, SPI_OK_SELECT, "finding lapsed leases");
	n = SPI_processed;
	ids = palloc(sizeof(int64) * (n + 1));
	what = palloc(sizeof(int) * (n + 1));
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;

		ids[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		what[i] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
	}
	for (uint64 i = 0; i < n; i++)
	{
		if (what[i] == 2)
			(void) SagaIsolated(SagaSettleWithdrawnWork, ids[i], NULL, true);
		else if (what[i] == 1)
			(void) SagaIsolated(SagaExhaustAny, ids[i], "attempts exhausted: lease expired", true);
		else
			(void) SagaIsolated(SagaOutboxLapseWork, ids[i], NULL, true);
	}
	return (int) n;
}

/* SQL steps past the pivot whose retry is due run again */
static int
unit_sql_retries(TimestampTz now)
{
	Oid			types[3] = {TEXTOID, TIMESTAMPTZOID, INT4OID};
	Datum		values[3] = {CStringGetTextDatum(SAGA_SQL_RETRY_TOPIC), TimestampTzGetDatum(now),
	Int32GetDatum(saga_batch_size)};
	int64	   *ids;
	int			n;

	SagaExecute(&plan_sql_retries,
				"SELECT id FROM saga.outbox WHERE topic = $1 AND visible_at <= $2 "
				"ORDER BY visible_at, id LIMIT $3 FOR UPDATE SKIP LOCKED",
				3, types, values, NULL, SPI_OK_SELECT, "finding SQL steps to retry");
	ids = collect_ids(&n);
	for (int i = 0; i < n; i++)
		(void) SagaIsolated(SagaRetrySqlStep, ids[i], NULL, true);
	return n;
}

/* sagas past their deadline compensate */
static int
unit_deadlines(TimestampTz now)
{
	Oid			types[2] = {TIMESTAMPTZOID, INT4OID};
	Datum		values[2] = {TimestampTzGetDatum(now), Int32GetDatum(saga_batch_size)};
	int64	   *ids;
	int			n;

	SagaExecute(&plan_deadlines,
				"SELECT id FROM saga.sagas WHERE deadline_at <= $1 "
				"ORDER BY deadline_at LIMIT $2 FOR UPDATE SKIP LOCKED",
				2, types, values, NULL, SPI_OK_SELECT, "finding sagas past their deadline");
	ids = collect_ids(&n);
	for (int i = 0; i < n; i++)
		(void) SagaIsolated(SagaDeadlineWork, ids[i], NULL, false);
	return n;
}

/*
 * Wake LISTEN saga_<topic> for topics where work became visible since the
 * last round without a writer to announce it (delayed retries, lapsed
 * leases).  Topics are walked with a skip scan of the claim index.  Also
 * returns the earliest future visibility, for the worker's next wake-up.
 */
static int
unit_notify(TimestampTz now, TimestampTz *next)
{
	Oid			types[2] = {TIMESTAMPTZOID, TIMESTAMPTZOID};
	Datum		values[2];
	int			notified = 0;
	TimestampTz from = notified_until;

	{
		TimestampTz again = SagaWakeupTakeNotifyFrom();

		if (again < from)
			from = again;
	}
	values[0] = TimestampTzGetDatum(from);
	values[1] = TimestampTzGetDatum(now);
	if (!saga_notify)
		values[0] = values[1];	/* nothing to announce; the next due time still counts */

	SagaExecute(&plan_topics,
				"WITH RECURSIVE t(topic) AS ("
				" (SELECT topic FROM saga.outbox ORDER BY topic LIMIT 1)"
				" UNION ALL"
				" SELECT (SELECT o.topic FROM saga.outbox o WHERE o.topic > t.topic"
				" ORDER BY o.topic LIMIT 1) FROM t WHERE t.topic IS NOT NULL) "
				"SELECT t.topic, EXISTS (SELECT FROM saga.outbox o WHERE o.topic = t.topic "
				" AND o.visible_at > $1 AND o.visible_at <= $2), "
				" (SELECT pg_catalog.min(o.visible_at) FROM saga.outbox o WHERE o.topic = t.topic "
				" AND o.visible_at > $2) "
				"FROM t WHERE t.topic IS NOT NULL AND t.topic <> '" SAGA_SQL_RETRY_TOPIC "'",
				2, types, values, NULL, SPI_OK_SELECT, "finding topics to wake");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		bool		isnull;
		Datum		d;

		if (DatumGetBool(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull)))
		{
			SagaNotifyTopic(TextDatumGetCString(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull)));
			notified++;
		}
		d = SPI_getbinval(tup, SPI_tuptable->tupdesc, 3, &isnull);
		if (!isnull && DatumGetTimestampTz(d) < *next)
			*next = DatumGetTimestampTz(d);
	}
	notified_until = now;
	return notified;
}

/* finished sagas past the retention period go, with their history */
static int
unit_purge(TimestampTz now)
{
	Oid			types[2] = {TIMESTAMPTZOID, INT4OID};
	Datum		values[2];
	Oid			htypes[1] = {INT8ARRAYOID};
	Datum		hvalues[1];
	Datum	   *d;
	int			n;

	if (saga_retention < 0)
		return 0;
	values[0] = TimestampTzGetDatum(now - (int64) saga_retention * USECS_PER_SEC);
	values[1] = Int32GetDatum(saga_batch_size);
	SagaExecute(&plan_purge,
				"DELETE FROM saga.sagas WHERE id IN (SELECT id FROM saga.sagas "
				"WHERE finished_at < $1 AND status <> 'failed' "
				"ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING id",
				2, types, values, NULL, SPI_OK_DELETE_RETURNING, "removing finished sagas");
	n = (int) SPI_processed;
	if (n == 0)
		return 0;
	d = palloc(sizeof(Datum) * n);
	for (int i = 0; i < n; i++)
	{
		bool		isnull;

		d[i] = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);
	}
	hvalues[0] = PointerGetDatum(construct_array(d, n, INT8OID, 8, true, TYPALIGN_DOUBLE));
	SagaExecute(&plan_purge_history,
				"DELETE FROM saga.history_log WHERE saga_id = ANY($1)",
				1, htypes, hvalues, NULL, SPI_OK_DELETE, "removing history of finished sagas");
	return n;
}

/*
 * Flows past their deadline: the declared event is published, or they turn
 * stuck.  The batch is read without locks: each flow is locked (SKIP
 * LOCKED) only while its own deadline is handled, so that a sweep holds up
 * no publisher of the other flows, and a flow held by a publisher (or by
 * another sweep) waits for the next round.  Returns how many fired.
 */
static int
unit_flow_deadlines(TimestampTz now)
{
	Oid			types[2] = {TIMESTAMPTZOID, INT4OID};
	Datum		values[2] = {TimestampTzGetDatum(now), Int32GetDatum(saga_batch_size)};
	int64	   *ids;
	int			n;
	int			fired = 0;

	if (!SagaChoreographyInstalled())
		return 0;
	SagaExecuteLatest(&plan_flow_deadlines,
					  "SELECT id FROM saga.flows WHERE deadline_at <= $1 "
					  "ORDER BY deadline_at LIMIT $2",
					  2, types, values, NULL, SPI_OK_SELECT, "finding flows past their deadline");
	ids = collect_ids(&n);
	for (int i = 0; i < n; i++)
		if (SagaFlowIsolated(ids[i]) > 0)
			fired++;
	return fired;
}

/*
 * Events and finished flows past the retention period go.  An event stays
 * while a delivery of it is pending or dead, and while a flow of its
 * correlation id is unfinished (the flow's story, and the cause of its
 * deadline event).
 */
static int
unit_purge_events(TimestampTz now)
{
	Oid			types[2] = {TIMESTAMPTZOID, INT4OID};
	Datum		values[2];
	int			n;

	if (saga_retention < 0 || !SagaChoreographyInstalled())
		return 0;
	values[0] = TimestampTzGetDatum(now - (int64) saga_retention * USECS_PER_SEC);
	values[1] = Int32GetDatum(saga_batch_size);
	SagaExecute(&plan_purge_events,
				"DELETE FROM saga.events WHERE id IN (SELECT e.id FROM saga.events e "
				"WHERE e.published_at < $1 "
				"AND NOT EXISTS (SELECT FROM saga.outbox o WHERE o.event_id = e.id) "
				"AND NOT EXISTS (SELECT FROM saga.dead_letters d WHERE d.event_id = e.id) "
				"AND NOT EXISTS (SELECT FROM saga.flows f WHERE f.correlation_id = e.correlation_id "
				"AND f.finished_at IS NULL) "
				"ORDER BY e.id LIMIT $2 FOR UPDATE SKIP LOCKED)",
				2, types, values, NULL, SPI_OK_DELETE, "removing old events");
	n = (int) SPI_processed;
	/* the filters' reasons go with the events they were about */
	SagaExecute(&plan_purge_filter_errors,
				"DELETE FROM saga.filter_errors WHERE ctid = ANY (ARRAY(SELECT ctid FROM saga.filter_errors "
				"WHERE at < $1 ORDER BY at LIMIT $2))",
				2, types, values, NULL, SPI_OK_DELETE, "removing old filter errors");
	return Max(n, (int) SPI_processed);
}

static int
unit_purge_flows(TimestampTz now)
{
	Oid			types[2] = {TIMESTAMPTZOID, INT4OID};
	Datum		values[2];

	if (saga_retention < 0 || !SagaChoreographyInstalled())
		return 0;
	values[0] = TimestampTzGetDatum(now - (int64) saga_retention * USECS_PER_SEC);
	values[1] = Int32GetDatum(saga_batch_size);
	SagaExecute(&plan_purge_flows,
				"DELETE FROM saga.flows WHERE id IN (SELECT id FROM saga.flows "
				"WHERE finished_at < $1 ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
				2, types, values, NULL, SPI_OK_DELETE, "removing finished flows");
	return (int) SPI_processed;
}

/*
 * After a crash, tasks that a dead transaction held when their saga stopped
 * running are unlocked again and must not be handed out.  This scans the
 * outbox, so it runs once, when the worker starts.
 */
static int
unit_withdrawn(void)
{
	Oid			types[1] = {INT4OID};
	Datum		values[1] = {Int32GetDatum(saga_batch_size)};
	int64	   *ids;
	int			n;

	SagaExecute(&plan_withdrawn,
				"SELECT o.id FROM saga.outbox o WHERE " SAGA_SQL_WITHDRAWN " "
				"LIMIT $1 FOR UPDATE OF o SKIP LOCKED",
				1, types, values, NULL, SPI_OK_SELECT, "finding withdrawn tasks");
	ids = collect_ids(&n);
	for (int i = 0; i < n; i++)
		(void) SagaIsolated(SagaSettleWithdrawnWork, ids[i], NULL, true);
	return n;
}

/*
 * The earliest time any unit has work, from the indexes that order it.
 * Retention is added here rather than in SQL: there is no exact
 * bigint * interval operator, and the engine's statements use only exact
 * matches.
 */
static TimestampTz
next_due(TimestampTz next)
{
	SagaExecute(&plan_next,
				"SELECT (SELECT pg_catalog.min(timeout_at) FROM saga.outbox WHERE timeout_at IS NOT NULL), "
				"(SELECT pg_catalog.min(visible_at) FROM saga.outbox WHERE lease_owner IS NOT NULL), "
				"(SELECT pg_catalog.min(deadline_at) FROM saga.sagas WHERE deadline_at IS NOT NULL), "
				"(SELECT pg_catalog.min(finished_at) FROM saga.sagas "
				"WHERE finished_at IS NOT NULL AND status <> 'failed'), "
				"(SELECT pg_catalog.min(visible_at) FROM saga.outbox WHERE topic = '" SAGA_SQL_RETRY_TOPIC "')",
				0, NULL, NULL, NULL, SPI_OK_SELECT, "computing the next due time");
	for (int c = 0; c < 5; c++)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, c + 1, &isnull);
		TimestampTz due;

		if (isnull)
			continue;
		due = DatumGetTimestampTz(d);
		if (c == 3)
		{
			if (saga_retention < 0)
				continue;
			due += (int64) saga_retention * USECS_PER_SEC;
		}
		if (due < next)
			next = due;
	}
	if (SagaChoreographyInstalled())
	{
		/*
		 * Events older than the retention that are still here are kept on
		 * purpose (a pending delivery, a dead letter, an unfinished flow
		 * needs them): they are no due time, or the worker would spin.  The
		 * next event to age out is the oldest younger one (ids follow
		 * publish order); a kept one that is released later goes at the
		 * next round.
		 */
		Oid			types[1] = {TIMESTAMPTZOID};
		Datum		values[1] = {TimestampTzGetDatum(GetCurrentTimestamp() -
													 (int64) Max(saga_retention, 0) * USECS_PER_SEC)};

		SagaExecute(&plan_next_flows,
					"SELECT (SELECT pg_catalog.min(deadline_at) FROM saga.flows WHERE deadline_at IS NOT NULL), "
					"(SELECT pg_catalog.min(finished_at) FROM saga.flows WHERE finished_at IS NOT NULL), "
					"(SELECT published_at FROM saga.events WHERE published_at >= $1 ORDER BY id LIMIT 1)",
					1, types, values, NULL, SPI_OK_SELECT, "computing the next due time of flows");
		for (int c = 0; c < 3; c++)
		{
			bool		isnull;
			Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, c + 1, &isnull);
			TimestampTz due;

			if (isnull)
				continue;
			due = DatumGetTimestampTz(d);
			if (c > 0)
			{
				if (saga_retention < 0)
					continue;
				due += (int64) saga_retention * USECS_PER_SEC;
			}
			if (due < next)
				next = due;
		}
	}
	return next;
}

/* ---------- saga.tick() ---------- */

static bool
extension_ready(void)
{
	Oid			ext = get_extension_oid("saga", true);

	return OidIsValid(ext) && !creating_extension;
}

/* saga.tick(): one round of the time-based work, in the caller's transaction */
Datum
saga_tick(PG_FUNCTION_ARGS)
{
	static const char *const keys[] = {
		"timeouts", "lapsed_leases", "deadlines", "notified_topics", "purged_sagas",
		"flow_deadlines", "purged_events", "purged_flows", "sql_retries"
	};
	SagaUserSave save;
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz next = DT_NOEND;
	JsonbParseState *ps = NULL;
	int			counts[9];
	const char *volatile prev_actor;

	SagaEnter(&save);
	/* the work is the worker's, whoever schedules it: history says so */
	prev_actor = saga_actor;
	if (saga_actor == NULL)
		saga_actor = "saga tick";
	PG_TRY();
	{
		counts[0] = unit_timeouts(now);
		counts[1] = unit_lapsed(now);
		counts[2] = unit_deadlines(now);
		counts[3] = unit_notify(now, &next);
		counts[4] = unit_purge(now);
		counts[5] = unit_flow_deadlines(now);
		counts[6] = unit_purge_events(now);
		counts[7] = unit_purge_flows(now);
		counts[8] = unit_sql_retries(now);
	}
	PG_FINALLY();
	{
		/* a guest the worker runs may call saga.tick(): the worker stays itself */
		saga_actor = prev_actor;
	}
	PG_END_TRY();
	SagaLeave(&save);

	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	for (int i = 0; i < (int) lengthof(keys); i++)
	{
		JsonbValue	k,
					v;

		k.type = jbvString;
		k.val.string.val = (char *) keys[i];
		k.val.string.len = strlen(keys[i]);
		pushJsonbValue(&ps, WJB_KEY, &k);
		v.type = jbvNumeric;
		v.val.numeric = int64_to_numeric(counts[i]);
		pushJsonbValue(&ps, WJB_VALUE, &v);
	}
	PG_RETURN_JSONB_P(JsonbValueToJsonb(pushJsonbValue(&ps, WJB_END_OBJECT, NULL)));
}

/* ---------- the worker ---------- */


static void
worker_errcontext(void *arg)
{
	errcontext("saga worker for database \"%s\"", my_dbname ? my_dbname : "?");
}

typedef int (*UnitFn) (TimestampTz now);

/*
 * Run one unit in a transaction of its own.  Returns how many rows it
 * handled, or -1 when the extension is absent or the unit failed (the error
 * is logged and the round goes on: one bad saga must not stop the others).
 */
static int
run_unit(const char *what, UnitFn fn, TimestampTz *next)
{
	volatile int n = -1;
	MemoryContext cxt = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, what);

	PG_TRY();
	{
		if (extension_ready())
		{
			SagaUserSave save;
			TimestampTz now = GetCurrentTimestamp();

			SagaEnter(&save);
			if (fn != NULL)
				n = fn(now);
			else
			{
				TimestampTz nx = *next;

				n = unit_notify(now, &nx);
				*next = next_due(nx);
			}
			SagaLeave(&save);
		}
		PopActiveSnapshot();
		CommitTransactionCommand();
		/* what the unit deleted and updated counts for autovacuum now */
		pgstat_report_stat(false);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		HOLD_INTERRUPTS();
		EmitErrorReport();
		AbortCurrentTransaction();
		FlushErrorState();
		RESUME_INTERRUPTS();
		n = -1;
	}
	PG_END_TRY();

	/*
	 * The worker takes no session-level advisory locks of its own, so any it
	 * holds were taken by an SQL step it ran (a guest can take one with
	 * pg_advisory_lock; the sandbox cannot stop that): give them back, or
	 * they would be held until the worker exits.
	 */
	LockReleaseSession(USER_LOCKMETHOD);
	pgstat_report_activity(STATE_IDLE, NULL);
	return n;
}

static int
unit_withdrawn_fn(TimestampTz now)
{
	return unit_withdrawn();
}

/* announce what a late commit made visible, between rounds */
static int
unit_notify_only(TimestampTz now)
{
	TimestampTz ignored = DT_NOEND;

	return unit_notify(now, &ignored);
}

/* one round; returns when the next should start */
static TimestampTz
worker_round(bool recovery)
{
	static const struct
	{
		const char *what;
		UnitFn		fn;
	}			units[] = {
		{"saga: step timeouts", unit_timeouts},
		{"saga: lapsed leases", unit_lapsed},
		{"saga: deadlines", unit_deadlines},
		{"saga: SQL step retries", unit_sql_retries},
		{"saga: retention", unit_purge},
		{"saga: flow deadlines", unit_flow_deadlines},
		{"saga: event retention", unit_purge_events},
		{"saga: flow retention", unit_purge_flows},
	};
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz next = TimestampTzPlusMilliseconds(now, saga_max_sleep);
	bool		more = false;

	if (recovery)
	{
		while (run_unit("saga: recovery", unit_withdrawn_fn, &next) >= saga_batch_size)
			CHECK_FOR_INTERRUPTS();
	}

	for (int u = 0; u < (int) lengthof(units); u++)
	{
		int			n = run_unit(units[u].what, units[u].fn, &next);

		if (n < 0)
			return next;		/* no extension here (yet), or an error: try later */
		/* a full batch: go again at once rather than after a sleep */
		if (n >= saga_batch_size)
			more = true;
		CHECK_FOR_INTERRUPTS();
	}
	(void) run_unit("saga: wake-ups", NULL, &next);
	if (more)
		return now;

	/*
	 * Work still due after a round that took everything it could is held by
	 * a transaction (a flow or saga row a client keeps locked, skipped by
	 * SKIP LOCKED): look again shortly, not at once, or the worker spins.
	 */
	if (next <= GetCurrentTimestamp())
		next = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), SAGA_LOCKED_RETRY_MS);
	return next;
}

void
saga_worker_main(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	ErrorContextCallback errcallback;
	bool		recovery = true;
	MemoryContext loop_cxt;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);

	/*
	 * What the SQL functions' SET clauses do for backends (see the install
	 * script).  The worker runs as the bootstrap superuser: its search_path
	 * must not be the database's or the role's, which their owners may set
	 * to schemas where anybody can plant an operator.  PGC_S_OVERRIDE wins
	 * over ALTER DATABASE / ALTER ROLE settings.
	 */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);
	/* its units are written for read committed, whatever the database's default */
	SetConfigOption("default_transaction_isolation", "read committed", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("enable_seqscan", "off", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("jit", "off", PGC_SUSET, PGC_S_OVERRIDE);

	StartTransactionCommand();
	my_dbname = MemoryContextStrdup(TopMemoryContext, get_database_name(dboid));
	CommitTransactionCommand();

	errcallback.callback = worker_errcontext;
	errcallback.arg = NULL;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	{
		pid_t		other = SagaWakeupAttach(dboid);

		if (other != 0)
		{
			ereport(LOG, (errmsg("saga worker already running as process %d, exiting", (int) other)));
			proc_exit(0);
		}
	}
	saga_actor = "saga worker";
	saga_is_worker = true;
	ereport(LOG, (errmsg("saga worker started")));

	loop_cxt = AllocSetContextCreate(TopMemoryContext, "saga worker loop",
									 ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		TimestampTz now;
		TimestampTz next;
		long		timeout_ms;

		MemoryContextReset(loop_cxt);
		MemoryContextSwitchTo(loop_cxt);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			if (!SagaDatabaseListed(my_dbname))
			{
				ereport(LOG,
						(errmsg("saga worker exiting: database no longer in saga.databases")));
				proc_exit(0);
			}
			/* new settings (retention, batch size, sleep) apply at once */
			SagaWakeupSetNext(GetCurrentTimestamp());
		}

		if (!RecoveryInProgress())
		{
			SagaWakeupAnnounceQueued();
			pgstat_report_stat(false);
		}

		now = GetCurrentTimestamp();
		if (RecoveryInProgress())
			SagaWakeupSetNext(TimestampTzPlusMilliseconds(now, saga_max_sleep));
		else if (recovery || now >= SagaWakeupNext())
		{
			/* during the round, a commit that creates timed work lowers this */
			SagaWakeupSetNext(DT_NOEND);
			next = worker_round(recovery);
			recovery = false;
			SagaWakeupLowerNext(next);
		}
		else if (SagaWakeupNotifyPending())
			(void) run_unit("saga: wake-ups", unit_notify_only, &next);

		next = SagaWakeupNext();
		timeout_ms = (long) ((next - GetCurrentTimestamp()) / 1000);
		if (timeout_ms > 0)
		{
			/* stats the rate limit held back go out before a long sleep */
			pgstat_report_stat(true);
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 timeout_ms, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
	}
}

/* ---------- the launcher ---------- */

typedef struct LaunchedWorker
{
	Oid			dboid;
	BackgroundWorkerHandle *handle; /* in TopMemoryContext */
	TimestampTz launched_at;
} LaunchedWorker;

static LaunchedWorker launched[SAGA_MAX_WORKERS];
static int	nlaunched = 0;

static void
launcher_errcontext(void *arg)
{
	errcontext("saga launcher");
}

/*
 * The launcher has no database, so no relcache for pg_database's indexes:
 * a plain heap scan of the shared catalog finds the name.
 */
static Oid
database_oid(const char *dbname)
{
	Relation	rel = table_open(DatabaseRelationId, AccessShareLock);
	TableScanDesc scan = table_beginscan_catalog(rel, 0, NULL);
	HeapTuple	tup;
	Oid			dboid = InvalidOid;

	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (strcmp(NameStr(db->datname), dbname) == 0 && db->datallowconn)
		{
			dboid = db->oid;
			break;
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	return dboid;
}

/*
 * Start a worker for every listed database that has none running.  Workers
 * are not restarted by the postmaster: the launcher, told when one stops,
 * starts it again, at most once per SAGA_RESTART_SECS.  Returns when it
 * wants to look again.
 */
static TimestampTz
launch_workers(void)
{
	TimestampTz now = GetCurrentTimestamp();
	/* a listed database that does not exist (yet) is looked for as often */
	TimestampTz again = now + SAGA_RESTART_SECS * USECS_PER_SEC;
	List	   *names;
	char	   *raw = pstrdup(saga_databases);
	ListCell   *lc;

	if (!SplitIdentifierString(raw, ',', &names))
	{
		ereport(LOG,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid list syntax in parameter \"saga.databases\"")));
		return again;
	}

	StartTransactionCommand();
	foreach(lc, names)
	{
		char	   *dbname = (char *) lfirst(lc);
		Oid			dboid = database_oid(dbname);
		LaunchedWorker *lw = NULL;
		BackgroundWorker bgw = {0};
		pid_t		pid;
		MemoryContext old;

		if (!OidIsValid(dboid))
		{
			ereport(LOG, (errmsg("saga.databases names database \"%s\", which does not exist", dbname)));
			continue;
		}
		if (SagaWakeupAttached(dboid))
			continue;
		for (int i = 0; i < nlaunched; i++)
			if (launched[i].dboid == dboid)
				lw = &launched[i];
		if (lw != NULL && lw->handle != NULL &&
			GetBackgroundWorkerPid(lw->handle, &pid) != BGWH_STOPPED)
			continue;
		/* one that keeps dying at start is not relaunched in a tight loop */
		if (lw != NULL && now < lw->launched_at + SAGA_RESTART_SECS * USECS_PER_SEC)
		{
			again = Min(again, lw->launched_at + SAGA_RESTART_SECS * USECS_PER_SEC);
			continue;
		}
		if (lw == NULL)
		{
			if (nlaunched == SAGA_MAX_WORKERS)
			{
				ereport(LOG, (errmsg("saga launcher: at most %d databases can run a saga worker",
									 SAGA_MAX_WORKERS)));
				break;
			}
			lw = &launched[nlaunched++];
			lw->dboid = dboid;
			lw->handle = NULL;
			lw->launched_at = 0;
		}

		bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
		bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
		bgw.bgw_restart_time = BGW_NEVER_RESTART;
		snprintf(bgw.bgw_library_name, BGW_MAXLEN, "saga");
		snprintf(bgw.bgw_function_name, BGW_MAXLEN, "saga_worker_main");
		snprintf(bgw.bgw_name, BGW_MAXLEN, "saga worker for database %s", dbname);
		snprintf(bgw.bgw_type, BGW_MAXLEN, "saga worker");
		bgw.bgw_main_arg = ObjectIdGetDatum(dboid);
		bgw.bgw_notify_pid = MyProcPid;
		if (lw->handle != NULL)
			pfree(lw->handle);
		lw->handle = NULL;
		lw->launched_at = now;
		old = MemoryContextSwitchTo(TopMemoryContext);
		if (!RegisterDynamicBackgroundWorker(&bgw, &lw->handle))
			ereport(LOG,
					(errmsg("could not start a saga worker for database \"%s\"", dbname),
					 errhint("Raise max_worker_processes.")));
		MemoryContextSwitchTo(old);
	}
	CommitTransactionCommand();
	return again;
}

void
saga_launcher_main(Datum main_arg)
{
	ErrorContextCallback errcallback;
	TimestampTz again;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	errcallback.callback = launcher_errcontext;
	errcallback.arg = NULL;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	ereport(LOG, (errmsg("saga launcher started")));
	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		again = launch_workers();
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(1L, (long) ((again - GetCurrentTimestamp()) / 1000)),
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/* ---------- initialisation ---------- */

void
SagaWorkerInit(void)
{
	BackgroundWorker bgw = {0};

	DefineCustomStringVariable("saga.databases",
							   "Databases in which a saga worker does the time-based work.",
							   "A comma-separated list; a database without the extension is left alone.",
							   &saga_databases, "postgres", PGC_SIGHUP, 0,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("saga.retention",
							"How long finished sagas and their history are kept.",
							"-1 keeps them forever.  Sagas that failed are kept until retried.",
							&saga_retention, 7 * 24 * 3600, -1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("saga.batch_size",
							"Rows each unit of the time-based work handles per transaction.",
							NULL, &saga_batch_size, 500, 1, 100000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("saga.max_sleep",
							"Longest the saga worker sleeps when no work is due.",
							"Work due sooner wakes it; this bounds the wait should a wake-up be missed.",
							&saga_max_sleep, 60000, 100, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomBoolVariable("saga.notify",
							 "Whether LISTEN saga_<topic> is woken when work becomes visible.",
							 "Off leaves pollers to their own polling interval.",
							 &saga_notify, true, PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("saga.compensation_incident_after",
							"Attempts after which a failing compensation is listed in saga.incidents.",
							"The compensation keeps being retried.",
							&saga_incident_after, 5, 1, 1000000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);

	if (!process_shared_preload_libraries_in_progress)
		return;

	SagaWakeupInit();

	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = SAGA_RESTART_SECS;
	snprintf(bgw.bgw_library_name, BGW_MAXLEN, "saga");
	snprintf(bgw.bgw_function_name, BGW_MAXLEN, "saga_launcher_main");
	snprintf(bgw.bgw_name, BGW_MAXLEN, "saga launcher");
	snprintf(bgw.bgw_type, BGW_MAXLEN, "saga launcher");
	RegisterBackgroundWorker(&bgw);
}