/*-------------------------------------------------------------------------
 *
 * wakeup.c
 *	  How committed work wakes whoever waits for it: the database's saga
 *	  worker (through its latch, for work due at a time) and LISTEN
 *	  saga_<topic> (through NOTIFY, sent by the worker for many commits).
 *
 * Everything above calls down into this file and it calls nothing of the
 * extension's own: engine, choreography and outbox say "this transaction
 * made work due at t, or visible on topic x"; at commit this file tells the
 * worker, which owns one slot of the shared memory kept here.
 *
 * Without shared_preload_libraries there is no shared memory and no
 * worker: a backend then sends its own NOTIFYs, and saga.tick() does the
 * time-based work.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "nodes/pg_list.h"
#include "utils/builtins.h"
#include "utils/varlena.h"
#include "commands/dbcommands.h"
#include "access/htup_details.h"
#include "funcapi.h"
#include "commands/async.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/timestamp.h"

#include "saga.h"

#define SAGA_TOPIC_QUEUE	128 /* topics waiting to be announced, per worker */
#define SAGA_ANNOUNCE_GAP_US 1000	/* see SagaWakeupAnnounceQueued */

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
	/* the overflowing commits' work became visible no earlier than this */
	TimestampTz topic_overflow_from;
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

/* the calling process's slot, if it is a worker */
static SagaWorkerSlot *my_slot = NULL;


/* NOTIFY saga_<topic>, in the current transaction */
void
SagaNotifyTopic(const char *topic)
{
	char		channel[NAMEDATALEN];

	snprintf(channel, sizeof(channel), "saga_%s", topic);
	Async_Notify(channel, NULL);
}

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
			shared->slots[i].topic_overflow_from = DT_NOEND;
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

		/*
		 * What overflowed is found again by the worker's look at the topics
		 * whose work became visible since this transaction began (rows it
		 * wrote are visible from their writing, not before).
		 */
		if (slot->topic_overflow &&
			GetCurrentTransactionStartTimestamp() - 1 < slot->topic_overflow_from)
			slot->topic_overflow_from = GetCurrentTransactionStartTimestamp() - 1;
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
	if (checked_in != SagaMyLocalTransactionId())
	{
		Latch	   *latch;

		via_worker = shared != NULL && my_slot == NULL &&
			find_slot(MyDatabaseId, &latch) != NULL;
		checked_in = SagaMyLocalTransactionId();
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

/* the pid of the worker attached for this database, or 0; -1 if not preloaded */
int
SagaWakeupWorkerPid(void)
{
	int			pid = 0;

	if (shared == NULL)
		return -1;
	SpinLockAcquire(&shared->mutex);
	for (int i = 0; i < SAGA_MAX_WORKERS; i++)
		if (shared->slots[i].dboid == MyDatabaseId && shared->slots[i].pid != 0)
			pid = (int) shared->slots[i].pid;
	SpinLockRelease(&shared->mutex);
	return pid;
}

/*
 * Does a background worker do this database's time-based work?  Step
 * timeouts, deadlines (of sagas and flows), lapsed leases the worker would
 * settle, wake-ups of delayed retries and retention need it, or saga.tick().
 * served: the library is preloaded and saga.databases names this database
 * (its worker runs, or starts within seconds).
 */
bool
SagaWorkerServes(int *pid, bool *preloaded, bool *listed)
{
	char	   *dbname = get_database_name(MyDatabaseId);

	*pid = SagaWakeupWorkerPid();
	*preloaded = *pid >= 0;
	*listed = dbname != NULL && SagaDatabaseListed(dbname);
	return *preloaded && *listed;
}

/*
 * The WARNING of a database no worker serves, when something that needs
 * one is created there (the extension, a timeout, a deadline).
 */
void
SagaWarnUnserved(const char *what)
{
	int			pid;
	bool		preloaded;
	bool		listed;

	if (SagaWorkerServes(&pid, &preloaded, &listed))
		return;
	ereport(WARNING,
			(errmsg("no saga worker serves database \"%s\": %s will wait for saga.tick()",
					get_database_name(MyDatabaseId), what),
			 !preloaded
			 ? errdetail("The saga library is not in shared_preload_libraries, so no background worker runs.")
			 : errdetail("saga.databases (\"%s\") does not name this database.", saga_databases),
			 errhint("Add the database to saga.databases (with shared_preload_libraries = 'saga'), or call saga.tick() every few seconds from a scheduler such as pg_cron. saga.worker_status() tells whether a database is served.")));
}

PG_FUNCTION_INFO_V1(saga_worker_status);

/*
 * saga.worker_status() -> (served, preloaded, listed, worker_pid): whether
 * this database's time-based work is done by a background worker.
 */
Datum
saga_worker_status(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};
	int			pid;
	bool		preloaded;
	bool		listed;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "saga.worker_status: return type must be a row type");
	values[0] = BoolGetDatum(SagaWorkerServes(&pid, &preloaded, &listed));
	values[1] = BoolGetDatum(preloaded);
	values[2] = BoolGetDatum(listed);
	values[3] = Int32GetDatum(pid);
	nulls[3] = pid <= 0;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}

/* does saga.databases name this database (a list that does not parse names all) */
bool
SagaDatabaseListed(const char *dbname)
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

/* ---------- the worker's side ---------- */

void
SagaWakeupInit(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = saga_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = saga_shmem_startup;
}

static void
wakeup_detach(int code, Datum arg)
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

/*
 * Take the slot of a database for the calling worker.  Returns the pid of a
 * worker already serving it instead (0 when the slot is ours).
 */
pid_t
SagaWakeupAttach(Oid dboid)
{
	SpinLockAcquire(&shared->mutex);
	for (int i = 0; i < SAGA_MAX_WORKERS; i++)
	{
		SagaWorkerSlot *slot = &shared->slots[i];

		if (slot->dboid == dboid && slot->pid != 0 && slot->pid != MyProcPid)
		{
			pid_t		other = slot->pid;

			SpinLockRelease(&shared->mutex);
			return other;
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
	before_shmem_exit(wakeup_detach, (Datum) 0);
	return 0;
}

/* is a worker attached for this database (perhaps started by an earlier launcher) */
bool
SagaWakeupAttached(Oid dboid)
{
	bool		attached = false;

	SpinLockAcquire(&shared->mutex);
	for (int i = 0; i < SAGA_MAX_WORKERS; i++)
		if (shared->slots[i].dboid == dboid && shared->slots[i].pid != 0)
			attached = true;
	SpinLockRelease(&shared->mutex);
	return attached;
}

/* when the worker's next round is due; backends lower it */
TimestampTz
SagaWakeupNext(void)
{
	return (TimestampTz) pg_atomic_read_u64(&my_slot->next_wake);
}

void
SagaWakeupSetNext(TimestampTz next)
{
	pg_atomic_write_u64(&my_slot->next_wake, (uint64) next);
}

void
SagaWakeupLowerNext(TimestampTz next)
{
	(void) atomic_lower(&my_slot->next_wake, next);
}

/*
 * From when visibility must be announced again (a commit made work visible
 * behind the last announcement), or DT_NOEND; take resets it.
 */
TimestampTz
SagaWakeupTakeNotifyFrom(void)
{
	if (my_slot == NULL)
		return DT_NOEND;
	return (TimestampTz) pg_atomic_exchange_u64(&my_slot->notify_from, (uint64) DT_NOEND);
}

bool
SagaWakeupNotifyPending(void)
{
	return (TimestampTz) pg_atomic_read_u64(&my_slot->notify_from) != DT_NOEND;
}

/*
 * Send the NOTIFYs that backends queued for the worker, in one transaction
 * (the worker's, between rounds).  A queue that overflowed is announced by
 * the next round's look at the topics whose work became visible since the
 * overflowing transactions began.
 *
 * At most one such transaction per SAGA_ANNOUNCE_GAP_US: the first commit
 * wakes the worker, and the commits of the next moment join its queue, so
 * that under load one NOTIFY transaction carries many commits (it costs a
 * commit, and takes the server's notification lock) for at most that much
 * more latency.
 */
void
SagaWakeupAnnounceQueued(void)
{
	static TimestampTz last_announced = 0;
	char		topics[SAGA_TOPIC_QUEUE][SAGA_TOPIC_SIZE];
	int			ntopics;
	bool		overflow;
	TimestampTz overflow_from;
	TimestampTz now = GetCurrentTimestamp();

	if (now - last_announced < SAGA_ANNOUNCE_GAP_US)
		pg_usleep(SAGA_ANNOUNCE_GAP_US - (now - last_announced));

	SpinLockAcquire(&my_slot->topic_lock);
	ntopics = my_slot->ntopics;
	overflow = my_slot->topic_overflow;
	overflow_from = my_slot->topic_overflow_from;
	memcpy(topics, my_slot->topics, sizeof(topics[0]) * ntopics);
	my_slot->ntopics = 0;
	my_slot->topic_overflow = false;
	my_slot->topic_overflow_from = DT_NOEND;
	SpinLockRelease(&my_slot->topic_lock);

	/* too many to list: announce the topics with work visible since then */
	if (overflow)
		atomic_lower(&my_slot->notify_from, overflow_from);
	if (ntopics == 0 || !saga_notify)
		return;

	StartTransactionCommand();
	for (int i = 0; i < ntopics; i++)
		SagaNotifyTopic(topics[i]);
	CommitTransactionCommand();
	last_announced = GetCurrentTimestamp();
}
