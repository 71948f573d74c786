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

#define SAGA_MAX_WORKERS	32
#define SAGA_RESTART_SECS	5
#define SAGA_TOPIC_QUEUE	64	/* topics waiting to be announced, per worker */
#define SAGA_TOPIC_SIZE		49	/* ^[a-z][a-z0-9_]{0,47}$ and its NUL */

/* GUCs */
char	   *saga_databases = NULL;
int			saga_retention = 7 * 24 * 3600;	/* seconds, -1 keeps forever */
int			saga_batch_size = 500;
int			saga_max_sleep = 60000; /* milliseconds */
int			saga_incident_after = 5;
bool		saga_notify = true;

typedef struct SagaWorkerSlot
{
	Oid			dboid;
	pid_t		pid;
	Latch	   *latch;
	/* TimestampTz of the next round; backends lower it (never raise it) */
	pg_atomic_uint64 next_wake;
	/* TimestampTz from which to announce visibility again, DT_NOEND: none */
	pg_atomic_uint64 notify_from;

	/*
	 * Topics that committed transactions made work visible on.  The worker
	 * sends their NOTIFYs, so that client commits do not queue on the
	 * server's notification lock.
	 */
	slock_t		topic_lock;
	int			ntopics;
	bool		topic_overflow;
	char		topics[SAGA_TOPIC_QUEUE][SAGA_TOPIC_SIZE];
} SagaWorkerSlot;

typedef struct SagaShared
{
	slock_t		mutex;
	SagaWorkerSlot slots[SAGA_MAX_WORKERS];
} SagaShared;

static SagaShared *shared = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* backend side: earliest due time and delayed visibility of the current transaction */
static TimestampTz pending_wake = DT_NOEND;
static TimestampTz pending_visible = DT_NOEND;

/* ... and the topics it made work visible on, for the worker to announce */
static char pending_topics[SAGA_TOPIC_QUEUE][SAGA_TOPIC_SIZE];
static int	npending_topics = 0;
static bool pending_overflow = false;
static bool xact_callback_registered = false;

/* worker side */
static SagaWorkerSlot *my_slot = NULL;
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

PGDLLEXPORT void saga_launcher_main(Datum main_arg);
PGDLLEXPORT void saga_worker_main(Datum main_arg);

PG_FUNCTION_INFO_V1(saga_tick);

/* ---------- shared memory ---------- */

static void
saga_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(SagaShared)));
}

static void
saga_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared = ShmemInitStruct("saga", sizeof(SagaShared), &found);
	if (!found)
	{
		SpinLockInit(&shared->mutex);
		for (int i = 0; i < SAGA_MAX_WORKERS; i++)
		{
			shared->slots[i].dboid = InvalidOid;
			shared->slots[i].pid = 0;
			shared->slots[i].latch = NULL;
			pg_atomic_init_u64(&shared->slots[i].next_wake, (uint64) DT_NOEND);
			pg_atomic_init_u64(&shared->slots[i].notify_from, (uint64) DT_NOEND);
			SpinLockInit(&shared->slots[i].topic_lock);
			shared->slots[i].ntopics = 0;
			shared->slots[i].topic_overflow = false;
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

/* ---------- waking the worker ---------- */

/* lower *target to value; true if it was lowered */
static bool
atomic_lower(pg_atomic_uint64 *target, TimestampTz value)
{
	uint64		cur = pg_atomic_read_u64(target);

	while ((TimestampTz) cur > value)
	{
		if (pg_atomic_compare_exchange_u64(target, &cur, (uint64) value))
			return true;
	}
	return false;
}

static SagaWorkerSlot *
find_slot(Oid dboid, Latch **latch)
{
	SagaWorkerSlot *found = NULL;

	SpinLockAcquire(&shared->mutex);
	for (int i = 0; i < SAGA_MAX_WORKERS && found == NULL; i++)
		if (shared->slots[i].dboid == dboid && shared->slots[i].latch != NULL)
		{
			found = &shared->slots[i];
			*latch = found->latch;
		}
	SpinLockRelease(&shared->mutex);
	return found;
}

static void
saga_xact_callback(XactEvent event, void *arg)
{
	TimestampTz due = pending_wake;
	TimestampTz visible = pending_visible;
	SagaWorkerSlot *slot;
	Latch	   *latch = NULL;
	bool		wake = false;

	int			ntopics = npending_topics;
	bool		overflow = pending_overflow;

	if (event != XACT_EVENT_COMMIT && event != XACT_EVENT_ABORT &&
		event != XACT_EVENT_PREPARE)
		return;
	pending_wake = DT_NOEND;
	pending_visible = DT_NOEND;
	npending_topics = 0;
	pending_overflow = false;
	if (event != XACT_EVENT_COMMIT || shared == NULL ||
		(due == DT_NOEND && ntopics == 0 && !overflow))
		return;

	/* only after commit can the worker see what we wrote */
	slot = find_slot(MyDatabaseId, &latch);
	if (slot == NULL)
		return;

	if (ntopics > 0 || overflow)
	{
		SpinLockAcquire(&slot->topic_lock);

		/*
		 * Whoever queued the first topic woke the worker, which has not taken
		 * the queue yet: a signal per commit would only cost a kill() each.
		 */
		if (slot->ntopics == 0 && !slot->topic_overflow)
			wake = true;
		for (int i = 0; i < ntopics && !slot->topic_overflow; i++)
		{
			bool		queued = false;

			for (int k = 0; k < slot->ntopics && !queued; k++)
				queued = strcmp(slot->topics[k], pending_topics[i]) == 0;
			if (queued)
				continue;
			if (slot->ntopics == SAGA_TOPIC_QUEUE)
				slot->topic_overflow = true;
			else
				strlcpy(slot->topics[slot->ntopics++], pending_topics[i], SAGA_TOPIC_SIZE);
		}
		if (overflow)
			slot->topic_overflow = true;
		SpinLockRelease(&slot->topic_lock);
	}

	/*
	 * Work that became visible before we committed may lie behind the
	 * worker's last announcement, which could not see it: have it look
	 * again from there.
	 */
	if (visible != DT_NOEND && visible <= GetCurrentTimestamp() &&
		atomic_lower(&slot->notify_from, visible - 1))
		wake = true;
	if (due != DT_NOEND && atomic_lower(&slot->next_wake, due))
		wake = true;
	if (wake)
		SetLatch(latch);
}

static void
remember(TimestampTz *pending, TimestampTz value)
{
	if (shared == NULL)
		return;					/* not preloaded: saga.tick() does the work */
	if (!xact_callback_registered)
	{
		RegisterXactCallback(saga_xact_callback, NULL);
		xact_callback_registered = true;
	}
	if (value < *pending)
		*pending = value;
}

/*
 * Note that the current transaction creates work due at `due`; at commit
 * the database's worker is woken if it plans to sleep past it.
 */
void
SagaWakeAt(TimestampTz due)
{
	remember(&pending_wake, due);
}

/*
 * Work became visible on a topic: LISTEN saga_<topic> is to be woken.  Where
 * a worker serves the database, it sends the NOTIFY after our commit, one
 * per topic for many transactions; elsewhere we send it ourselves (the
 * server folds repeats within a transaction).
 */
void
SagaAnnounce(const char *topic)
{
	static LocalTransactionId checked_in = InvalidLocalTransactionId;
	static bool via_worker = false;

	if (!saga_notify)
		return;
	if (checked_in != MyProc->lxid)
	{
		Latch	   *latch;

		via_worker = shared != NULL && my_slot == NULL &&
			find_slot(MyDatabaseId, &latch) != NULL;
		checked_in = MyProc->lxid;
	}
	if (!via_worker)
	{
		SagaNotifyTopic(topic);
		return;
	}
	if (!xact_callback_registered)
	{
		RegisterXactCallback(saga_xact_callback, NULL);
		xact_callback_registered = true;
	}
	for (int i = 0; i < npending_topics; i++)
		if (strcmp(pending_topics[i], topic) == 0)
			return;
	if (npending_topics == SAGA_TOPIC_QUEUE)
		pending_overflow = true;
	else
		strlcpy(pending_topics[npending_topics++], topic, SAGA_TOPIC_SIZE);
}

/* a task becomes visible later, at `visible_at`: it must be announced then */
void
SagaVisibleAt(TimestampTz visible_at)
{
	remember(&pending_wake, visible_at);
	remember(&pending_visible, visible_at);
}

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
		(void) SagaIsolated(SagaExhaustTask, ids[i], "timeout", true);
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
			(void) SagaIsolated(SagaExhaustTask, ids[i], "attempts exhausted: lease expired", true);
		else
			(void) SagaIsolated(SagaOutboxLapseWork, ids[i], NULL, true);
	}
	return (int) n;
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

	if (my_slot != NULL)
	{
		TimestampTz again = (TimestampTz) pg_atomic_exchange_u64(&my_slot->notify_from,
																 (uint64) DT_NOEND);

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
				"FROM t WHERE t.topic IS NOT NULL",
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
				"WHERE finished_at IS NOT NULL AND status <> 'failed')",
				0, NULL, NULL, NULL, SPI_OK_SELECT, "computing the next due time");
	for (int c = 0; c < 4; c++)
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
		"timeouts", "lapsed_leases", "deadlines", "notified_topics", "purged_sagas"
	};
	SagaUserSave save;
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz next = DT_NOEND;
	JsonbParseState *ps = NULL;
	int			counts[5];
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

/* send the NOTIFYs that backends queued for us, in one transaction */
static void
announce_queued(void)
{
	char		topics[SAGA_TOPIC_QUEUE][SAGA_TOPIC_SIZE];
	int			ntopics;
	bool		overflow;

	SpinLockAcquire(&my_slot->topic_lock);
	ntopics = my_slot->ntopics;
	overflow = my_slot->topic_overflow;
	memcpy(topics, my_slot->topics, sizeof(topics[0]) * ntopics);
	my_slot->ntopics = 0;
	my_slot->topic_overflow = false;
	SpinLockRelease(&my_slot->topic_lock);

	/* too many to list: announce every topic with visible work */
	if (overflow)
		atomic_lower(&my_slot->notify_from, DT_NOBEGIN);
	if (ntopics == 0 || !saga_notify)
		return;

	StartTransactionCommand();
	for (int i = 0; i < ntopics; i++)
		SagaNotifyTopic(topics[i]);
	CommitTransactionCommand();
	pgstat_report_stat(false);
}

static void
worker_errcontext(void *arg)
{
	errcontext("saga worker for database \"%s\"", my_dbname ? my_dbname : "?");
}

static void
worker_detach(int code, Datum arg)
{
	if (my_slot == NULL)
		return;
	SpinLockAcquire(&shared->mutex);
	my_slot->dboid = InvalidOid;
	my_slot->pid = 0;
	my_slot->latch = NULL;
	SpinLockRelease(&shared->mutex);
	my_slot = NULL;
}

static void
worker_attach(Oid dboid)
{
	SpinLockAcquire(&shared->mutex);
	for (int i = 0; i < SAGA_MAX_WORKERS; i++)
	{
		SagaWorkerSlot *slot = &shared->slots[i];

		if (slot->dboid == dboid && slot->pid != 0 && slot->pid != MyProcPid)
		{
			pid_t		other = slot->pid;

			SpinLockRelease(&shared->mutex);
			ereport(LOG, (errmsg("saga worker already running as process %d, exiting", (int) other)));
			proc_exit(0);
		}
	}
	for (int i = 0; i < SAGA_MAX_WORKERS && my_slot == NULL; i++)
		if (!OidIsValid(shared->slots[i].dboid))
			my_slot = &shared->slots[i];
	if (my_slot == NULL)
	{
		SpinLockRelease(&shared->mutex);
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many saga workers"),
				 errdetail("At most %d databases can run a saga worker.", SAGA_MAX_WORKERS)));
	}
	my_slot->dboid = dboid;
	my_slot->pid = MyProcPid;
	my_slot->latch = MyLatch;
	pg_atomic_write_u64(&my_slot->next_wake, (uint64) DT_NOEND);
	SpinLockRelease(&shared->mutex);
	before_shmem_exit(worker_detach, (Datum) 0);
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
		{"saga: retention", unit_purge},
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
	return more ? now : next;
}

static bool
database_listed(const char *dbname)
{
	char	   *raw = pstrdup(saga_databases);
	List	   *names;
	ListCell   *lc;

	if (!SplitIdentifierString(raw, ',', &names))
		return true;			/* a typo in the list must not stop the workers */
	foreach(lc, names)
		if (strcmp((char *) lfirst(lc), dbname) == 0)
			return true;
	return false;
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

	worker_attach(dboid);
	saga_actor = "saga worker";
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
			if (!database_listed(my_dbname))
			{
				ereport(LOG,
						(errmsg("saga worker exiting: database no longer in saga.databases")));
				proc_exit(0);
			}
			/* new settings (retention, batch size, sleep) apply at once */
			pg_atomic_write_u64(&my_slot->next_wake, (uint64) GetCurrentTimestamp());
		}

		if (!RecoveryInProgress())
			announce_queued();

		now = GetCurrentTimestamp();
		if (RecoveryInProgress())
			pg_atomic_write_u64(&my_slot->next_wake,
								(uint64) TimestampTzPlusMilliseconds(now, saga_max_sleep));
		else if (recovery || now >= (TimestampTz) pg_atomic_read_u64(&my_slot->next_wake))
		{
			/* during the round, a commit that creates timed work lowers this */
			pg_atomic_write_u64(&my_slot->next_wake, (uint64) DT_NOEND);
			next = worker_round(recovery);
			recovery = false;
			atomic_lower(&my_slot->next_wake, next);
		}
		else if ((TimestampTz) pg_atomic_read_u64(&my_slot->notify_from) != DT_NOEND)
			(void) run_unit("saga: wake-ups", unit_notify_only, &next);

		next = (TimestampTz) pg_atomic_read_u64(&my_slot->next_wake);
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

/* is a worker attached for this database (perhaps started by an earlier launcher) */
static bool
worker_attached(Oid dboid)
{
	bool		attached = false;

	SpinLockAcquire(&shared->mutex);
	for (int i = 0; i < SAGA_MAX_WORKERS; i++)
		if (shared->slots[i].dboid == dboid && shared->slots[i].pid != 0)
			attached = true;
	SpinLockRelease(&shared->mutex);
	return attached;
}

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
		if (worker_attached(dboid))
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

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = saga_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = saga_shmem_startup;

	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = SAGA_RESTART_SECS;
	snprintf(bgw.bgw_library_name, BGW_MAXLEN, "saga");
	snprintf(bgw.bgw_function_name, BGW_MAXLEN, "saga_launcher_main");
	snprintf(bgw.bgw_name, BGW_MAXLEN, "saga launcher");
	snprintf(bgw.bgw_type, BGW_MAXLEN, "saga launcher");
	RegisterBackgroundWorker(&bgw);
}
