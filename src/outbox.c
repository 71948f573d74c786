/*-------------------------------------------------------------------------
 *
 * outbox.c
 *	  The outbox table: writing and withdrawing tasks, retries, parking,
 *	  lapses, and the row work of the leased claim and of heartbeats.  The
 *	  SQL entry points that use these are in api.c; waking whoever waits for
 *	  a task is wakeup.c's.
 *
 * A task is one row that lives from its first dispatch to its final report;
 * retries move its visible_at forward instead of writing a new row.  A
 * lease is a delivery: claim moves visible_at to the lease's end and counts
 * the delivery, and that count is the fencing token a report must quote.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/transam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "saga.h"

static SPIPlanPtr plan_withdraw = NULL;
static SPIPlanPtr plan_held = NULL;
static SPIPlanPtr plan_park = NULL;
static SPIPlanPtr plan_payload = NULL;
static SPIPlanPtr plan_lapse = NULL;
static SPIPlanPtr plan_unpark = NULL;
static SPIPlanPtr plan_saga_exists = NULL;
static SPIPlanPtr plan_retry = NULL;
static SPIPlanPtr plan_candidates = NULL;
static SPIPlanPtr plan_withdrawn_of = NULL;
static SPIPlanPtr plan_heartbeat = NULL;
static SPIPlanPtr plan_release = NULL;

/*
 * Tasks were written (with their saga, in engine.c): wake LISTEN saga_<topic>
 * and, for a task with a timeout, the worker when it is due.
 */
void
SagaOutboxEnqueued(SagaNewTask *tasks, int ntasks, TimestampTz written_at)
{
	for (int i = 0; i < ntasks; i++)
	{
		/* the engine's own topics (SQL retries, await steps) have no listeners */
		if (strcmp(tasks[i].topic, SAGA_SQL_RETRY_TOPIC) != 0 &&
			strcmp(tasks[i].topic, SAGA_AWAIT_TOPIC) != 0)
			SagaAnnounce(tasks[i].topic);
		if (tasks[i].timeout > 0)
			SagaWakeAt(written_at + tasks[i].timeout);
	}
}

/*
 * Delete the given tasks where nobody holds them.  Three kinds stay, in
 * doubt: a leased task (its worker may be acting; a late report or the
 * lapse of the lease settles it), a task locked by another transaction (a
 * poller at work: waiting for it could deadlock, as the poller will want the
 * saga row we hold), and a task locked by our own transaction (the caller
 * may be working on it and report it next).  Returns how many were deleted,
 * with their ids.
 */
int
SagaOutboxWithdraw(int64 *ids, int nids, int64 *withdrawn)
{
	Oid			types[1] = {INT8ARRAYOID};
	Datum	   *d = palloc(sizeof(Datum) * nids);
	Datum		values[1];
	bool		isnull;
	int			nfree = 0;

	for (int i = 0; i < nids; i++)
		d[i] = Int64GetDatum(ids[i]);
	values[0] = PointerGetDatum(construct_array(d, nids, INT8OID, 8, true, TYPALIGN_DOUBLE));
	SagaExecute(&plan_held,
				"SELECT id, xmax FROM saga.outbox WHERE id = ANY($1)",
				1, types, values, NULL, SPI_OK_SELECT, "inspecting tasks to withdraw");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TransactionId xmax = DatumGetTransactionId(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull));

		/* on a visible row, our own xmax can only be a row lock */
		if (TransactionIdIsNormal(xmax) && TransactionIdIsCurrentTransactionId(xmax))
			continue;
		d[nfree++] = SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull);
	}
	if (nfree == 0)
		return 0;

	values[0] = PointerGetDatum(construct_array(d, nfree, INT8OID, 8, true, TYPALIGN_DOUBLE));
	SagaExecute(&plan_withdraw,
				"DELETE FROM saga.outbox WHERE id IN "
				"(SELECT id FROM saga.outbox WHERE id = ANY($1) "
				"AND lease_owner IS NULL FOR UPDATE SKIP LOCKED) RETURNING id",
				1, types, values, NULL, SPI_OK_DELETE_RETURNING, "withdrawing tasks");
	for (uint64 i = 0; i < SPI_processed; i++)
		withdrawn[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
	return (int) SPI_processed;
}

/*
 * Make a task visible again after a delay; its lease, if any, ends.  Past
 * the pivot a step can only be retried, so its timeout no longer applies.
 */
void
SagaOutboxRetryLater(int64 task_id, int attempt, int64 delay_us, bool drop_timeout)
{
	Oid			types[4] = {INT8OID, INT4OID, TIMESTAMPTZOID, BOOLOID};
	Datum		values[4];
	TimestampTz visible_at = GetCurrentTimestamp() + delay_us;

	values[0] = Int64GetDatum(task_id);
	values[1] = Int32GetDatum(attempt);
	values[2] = TimestampTzGetDatum(visible_at);
	values[3] = BoolGetDatum(drop_timeout);
	SagaExecute(&plan_retry,
				"UPDATE saga.outbox SET attempt = $2, lease_owner = NULL, "
				"visible_at = $3, "
				"timeout_at = CASE WHEN $4 THEN NULL ELSE timeout_at END, "
				"headers = headers || pg_catalog.jsonb_build_object('attempt', $2) "
				"WHERE id = $1",
				4, types, values, NULL, SPI_OK_UPDATE, "scheduling a retry");
	/* whoever listens on the topic is told when the delay is over */
	SagaVisibleAt(visible_at);
}

/*
 * A lease lapsed without a report: that was an attempt, and the task is free
 * again.  lease_length goes (until the next claim) to say the last delivery
 * lapsed: should the engine give up on the step before then, that delivery
 * may have acted (report_action).
 */
void
SagaOutboxLapse(int64 task_id)
{
	Oid			types[2] = {INT8OID, TEXTOID};
	Datum		values[2] = {Int64GetDatum(task_id), CStringGetTextDatum(SagaActorName())};

	/* history is append-only: the lapse is logged without taking the saga's lock */
	SagaExecute(&plan_lapse,
				"WITH o AS (SELECT id, lease_owner, deliveries FROM saga.outbox "
				"WHERE id = $1 AND lease_owner IS NOT NULL), "
				"u AS (UPDATE saga.outbox t SET attempt = t.attempt + 1, lease_owner = NULL, "
				"lease_length = NULL, "
				"headers = t.headers || pg_catalog.jsonb_build_object('attempt', t.attempt + 1) "
				"FROM o WHERE t.id = o.id RETURNING t.saga_id, t.step, t.kind, t.attempt) "
				"INSERT INTO saga.history_log (saga_id, at, actor, events, steps, details) "
				"SELECT u.saga_id, pg_catalog.clock_timestamp(), $2, '{lease_lapsed}', "
				"ARRAY[u.step], ARRAY[pg_catalog.jsonb_build_object('kind', u.kind, "
				"'worker', o.lease_owner, 'lease', o.deliveries, 'next_attempt', u.attempt)] "
				"FROM u, o WHERE u.saga_id IS NOT NULL",
				2, types, values, NULL, SPI_OK_INSERT, "ending a lapsed lease");
}

void
SagaOutboxLapseWork(int64 task_id, const char *why)
{
	SagaOutboxLapse(task_id);
}

/* a task's payload changes (a late result its compensation must see) */
void
SagaOutboxSetPayload(int64 task_id, Jsonb *payload)
{
	Oid			types[2] = {INT8OID, JSONBOID};
	Datum		values[2] = {Int64GetDatum(task_id), JsonbPGetDatum(payload)};

	SagaExecute(&plan_payload,
				"UPDATE saga.outbox SET payload = $2 WHERE id = $1",
				2, types, values, NULL, SPI_OK_UPDATE, "updating a payload");
}

/* take a task out of sight until a person calls saga.retry */
void
SagaOutboxPark(int64 task_id)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(task_id)};

	SagaExecute(&plan_park,
				"UPDATE saga.outbox SET lease_owner = NULL, "
				"visible_at = 'infinity' WHERE id = $1",
				1, types, values, NULL, SPI_OK_UPDATE, "parking a task");
}

/* bring a parked task back as its next attempt */
void
SagaOutboxUnpark(int64 task_id)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(task_id)};

	SagaExecute(&plan_unpark,
				"UPDATE saga.outbox SET attempt = attempt + 1, "
				"visible_at = pg_catalog.clock_timestamp(), "
				"headers = headers || pg_catalog.jsonb_build_object('attempt', attempt + 1) "
				"WHERE id = $1 RETURNING topic",
				1, types, values, NULL, SPI_OK_UPDATE_RETURNING, "resuming a task");
	if (SPI_processed == 1)
	{
		bool		isnull;

		SagaAnnounce(TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0],
														  SPI_tuptable->tupdesc, 1, &isnull)));
	}
}

/*
 * The interval the engine adds to a time: the microseconds it was checked
 * as.  The caller's own may mix signs ('-1 month 30 days 1 hour'), which
 * timestamptz arithmetic reads by the calendar, not as the bounded duration
 * it was checked to be.
 */
static Interval *
usecs_interval(int64 usecs)
{
	Interval   *iv = palloc0(sizeof(Interval));

	iv->time = usecs;
	return iv;
}

/*
 * The visible tasks of a topic that a claim takes, oldest first, locked
 * (SKIP LOCKED) for the caller's transaction, each with where its row is
 * and what is to become of it: delivered, or settled first because its
 * saga withdrew it, its timeout passed or its lapsed lease used up its last
 * attempt.  Returns how many; *ids, *tids and *fates are palloc'd.
 */
int
SagaOutboxCandidates(const char *topic, TimestampTz now, int max_tasks,
					 int64 **ids, ItemPointerData **tids, SagaTaskFate **fates)
{
	Oid			types[3] = {TEXTOID, TIMESTAMPTZOID, INT4OID};
	Datum		values[3] = {CStringGetTextDatum(topic), TimestampTzGetDatum(now),
	Int32GetDatum(max_tasks)};

	SagaExecute(&plan_candidates,
				"SELECT o.id, o.lease_owner IS NOT NULL "
				"AND o.attempt >= COALESCE(o.max_attempts, 2147483647), "
				"o.timeout_at <= $2, "
				SAGA_SQL_WITHDRAWN ", o.ctid "
				"FROM saga.outbox o WHERE o.topic = $1 AND o.visible_at <= $2 "
				"ORDER BY o.visible_at, o.id LIMIT $3 FOR UPDATE OF o SKIP LOCKED",
				3, types, values, NULL, SPI_OK_SELECT, "finding tasks to claim");

	*ids = palloc(sizeof(int64) * (SPI_processed + 1));
	*tids = palloc(sizeof(ItemPointerData) * (SPI_processed + 1));
	*fates = palloc(sizeof(SagaTaskFate) * (SPI_processed + 1));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		bool		isnull;
		bool		exhausted = DatumGetBool(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull));
		Datum		timed_out = SPI_getbinval(tup, SPI_tuptable->tupdesc, 3, &isnull);
		bool		timeout_null = isnull;
		bool		withdrawn = DatumGetBool(SPI_getbinval(tup, SPI_tuptable->tupdesc, 4, &isnull));

		(*ids)[i] = DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull));
		(*tids)[i] = *(ItemPointer) DatumGetPointer(SPI_getbinval(tup, SPI_tuptable->tupdesc,
																  5, &isnull));
		if (withdrawn)
			(*fates)[i] = TASK_WITHDRAWN;
		else if (!timeout_null && DatumGetBool(timed_out))
			(*fates)[i] = TASK_TIMED_OUT;
		else if (exhausted)
			(*fates)[i] = TASK_EXHAUSTED;
		else
			(*fates)[i] = TASK_DELIVER;
	}
	return (int) SPI_processed;
}

/*
 * Which of the given tasks (locked by SagaOutboxCandidates) their saga no
 * longer wants: a failure settled by the same claim may have stopped it.
 * Sets withdrawn[i]; returns how many.
 */
int
SagaOutboxWithdrawnOf(int64 *ids, int n, bool *withdrawn)
{
	Oid			types[1] = {INT8ARRAYOID};
	Datum	   *d = palloc(sizeof(Datum) * n);
	Datum		values[1];
	bool		isnull;

	for (int i = 0; i < n; i++)
	{
		d[i] = Int64GetDatum(ids[i]);
		withdrawn[i] = false;
	}
	values[0] = PointerGetDatum(construct_array(d, n, INT8OID, 8, true, TYPALIGN_DOUBLE));
	SagaExecute(&plan_withdrawn_of,
				"SELECT o.id FROM saga.outbox o WHERE o.id = ANY($1) AND " SAGA_SQL_WITHDRAWN,
				1, types, values, NULL, SPI_OK_SELECT, "checking tasks to hand out");
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r],
													 SPI_tuptable->tupdesc, 1, &isnull));

		for (int i = 0; i < n; i++)
			if (ids[i] == id)
				withdrawn[i] = true;
	}
	return (int) SPI_processed;
}

/* a history detail of a lease: {"kind", "worker", "lease", <key>: attempt[, "lease_seconds"]} */
static Datum
lease_detail(Datum kind, Datum worker, int32 lease, const char *attempt_key, int32 attempt,
			 Datum lease_seconds)
{
	JsonbParseState *ps = NULL;
	JsonbValue	v;

	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	SagaJbStr(&ps, "kind", TextDatumGetCString(kind));
	SagaJbStr(&ps, "worker", TextDatumGetCString(worker));
	SagaJbInt(&ps, "lease", lease);
	SagaJbInt(&ps, attempt_key, attempt);
	if (lease_seconds != (Datum) 0)
	{
		SagaJbKey(&ps, "lease_seconds");
		v.type = jbvNumeric;
		v.val.numeric = DatumGetNumeric(lease_seconds);
		pushJsonbValue(&ps, WJB_VALUE, &v);
	}
	return JsonbPGetDatum(JsonbValueToJsonb(pushJsonbValue(&ps, WJB_END_OBJECT, NULL)));
}

/*
 * Lease the given tasks (locked by SagaOutboxCandidates, at tids) to a
 * worker for lease_us, and put them into the claim's result in the order
 * given.  A lease that lapsed without a report was an attempt.  A lease
 * never outlasts the step's timeout: lease_expires_at is capped at it, so
 * the service knows when its work stops counting.  The rows are written
 * directly (rows.c): a claim is the hot path of leased work.
 *
 * Who had the task when: each lease is a "claimed" event in the saga's
 * history, after a "lease_lapsed" when the last lease had lapsed unreported
 * (the claim counts that attempt).  Event deliveries have no saga and no
 * history.
 */
void
SagaOutboxLease(int64 *ids, ItemPointerData *tids, int n, const char *worker, int64 lease_us,
				TimestampTz now, ReturnSetInfo *rsinfo, MemoryContext result_cxt)
{
	SagaRows   *r = SagaRowsOpen(ROWS_OUTBOX);
	SagaRows   *h = NULL;
	Datum		worker_d = CStringGetTextDatum(worker);
	Datum		lease_d = IntervalPGetDatum(usecs_interval(lease_us));
	/* the interval's epoch as date_part gives it, a float8, in JSON as numeric_in reads it */
	Datum		lease_seconds = DirectFunctionCall3(numeric_in,
													CStringGetDatum(float8out_internal(lease_us / 1000000.0)),
													ObjectIdGetDatum(InvalidOid),
													Int32GetDatum(-1));
	/* leases are bounded (SagaCheckInterval): the sum cannot overflow */
	TimestampTz expires = now + lease_us;

	for (int i = 0; i < n; i++)
	{
		static const int out_columns[10] = {
			TC_ID, TC_TOPIC, TC_KIND, TC_SAGA_ID, TC_STEP, TC_ATTEMPT, TC_DELIVERIES, TC_PAYLOAD,
			TC_HEADERS, TC_VISIBLE_AT
		};
		Datum		out[10];
		bool		outnull[10];
		bool		isnull;
		bool		lapsed;
		Datum		old_owner;
		int32		old_lease;
		int32		attempt;
		TimestampTz visible = expires;
		Datum		d;
		MemoryContext old;

		/*
		 * The tasks stay locked, and withdrawing leaves alone those we lock
		 * (SagaOutboxWithdraw); should a settle above have removed one all
		 * the same, it is not handed out, as a statement would not find it.
		 */
		if (!SagaRowsFetch(r, &tids[i]))
			continue;
		if (DatumGetInt64(SagaRowsOld(r, TC_ID, &isnull)) != ids[i])
			elog(ERROR, "saga: task %lld moved while locked", (long long) ids[i]);
		old_owner = SagaRowsOld(r, TC_LEASE_OWNER, &isnull);
		lapsed = !isnull;
		old_lease = DatumGetInt32(SagaRowsOld(r, TC_DELIVERIES, &isnull));
		attempt = DatumGetInt32(SagaRowsOld(r, TC_ATTEMPT, &isnull)) + (lapsed ? 1 : 0);
		d = SagaRowsOld(r, TC_TIMEOUT_AT, &isnull);
		if (!isnull && DatumGetTimestampTz(d) < visible)
			visible = DatumGetTimestampTz(d);

		SagaRowsSet(r, TC_DELIVERIES, Int32GetDatum(old_lease + 1), false);
		SagaRowsSet(r, TC_LEASE_OWNER, worker_d, false);
		SagaRowsSet(r, TC_LEASE_LENGTH, lease_d, false);
		SagaRowsSet(r, TC_VISIBLE_AT, TimestampTzGetDatum(visible), false);
		SagaRowsSet(r, TC_ATTEMPT, Int32GetDatum(attempt), false);
		if (lapsed)
		{
			JsonbParseState *ps = NULL;
			Jsonb	   *headers = DatumGetJsonbP(SagaRowsOld(r, TC_HEADERS, &isnull));
			Jsonb	   *patch;

			pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
			SagaJbInt(&ps, "attempt", attempt);
			patch = JsonbValueToJsonb(pushJsonbValue(&ps, WJB_END_OBJECT, NULL));
			SagaRowsSet(r, TC_HEADERS, DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(headers),
														   JsonbPGetDatum(patch)), false);
		}
		SagaRowsUpdate(r, NULL);

		/* the leased row, as claim returns it */
		for (int c = 0; c < 10; c++)
			out[c] = SagaRowsNewValue(r, out_columns[c], &outnull[c]);
		old = MemoryContextSwitchTo(result_cxt);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, outnull);
		MemoryContextSwitchTo(old);

		if (outnull[3])
			continue;			/* an event delivery */
		if (h == NULL)
			h = SagaRowsOpen(ROWS_HISTORY);
		{
			Datum		claimed = lease_detail(out[2], worker_d, old_lease + 1, "attempt", attempt,
											   lease_seconds);
			Datum		events[2];
			Datum		steps[2] = {out[4], out[4]};
			Datum		details[2];
			int			k = 0;

			if (lapsed)
			{
				events[k] = CStringGetTextDatum("lease_lapsed");
				details[k++] = lease_detail(out[2], old_owner, old_lease, "next_attempt", attempt,
											(Datum) 0);
			}
			events[k] = CStringGetTextDatum("claimed");
			details[k++] = claimed;
			SagaRowsInsertHistory(h, DatumGetInt64(out[3]), GetCurrentTimestamp(), k, events,
								  steps, NULL, details, NULL);
		}
	}
	/* last opened, first closed: each ends its own trigger query level */
	if (h != NULL)
		SagaRowsClose(h);
	SagaRowsClose(r);
	if (n > 0)
		SagaWakeAt(expires);
}

/* a heartbeat or release for a task no longer in the outbox: 42704 if it never was */
pg_noreturn static void
task_left_outbox(int64 task_id)
{
	if (!SagaOutboxTaskExisted(task_id))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("task %lld does not exist", (long long) task_id)));
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("task %lld is not leased", (long long) task_id),
			 errdetail("It has left the outbox: it finished, was withdrawn or is a dead letter.")));
}

/*
 * Extend a held lease by extend_us from now (or, when extend_us < 0, by the
 * claim's lease length); returns when it now expires.  Raises 42704 for a
 * task that never existed, 55000 for one that is no longer leased or whose
 * lease is not the one quoted.
 */
TimestampTz
SagaOutboxHeartbeat(int64 task_id, int32 lease, int64 extend_us, bool *cancelled)
{
	Oid			types[4] = {INT8OID, INT4OID, INTERVALOID, TIMESTAMPTZOID};
	Datum		values[4];
	char		nulls[4] = "    ";
	bool		isnull;
	TimestampTz until;
	HeapTuple	tup;
	TupleDesc	desc;
	int32		deliveries;
	bool		leased;
	bool		withdrawn;

	values[0] = Int64GetDatum(task_id);
	values[1] = Int32GetDatum(lease);
	values[2] = extend_us < 0 ? (Datum) 0 : IntervalPGetDatum(usecs_interval(extend_us));
	nulls[2] = extend_us < 0 ? 'n' : ' ';
	values[3] = TimestampTzGetDatum(GetCurrentTimestamp());
	/*
	 * A task withdrawn from a saga that stopped running (cancelled, or
	 * compensating after another step failed) is not extended: the caller
	 * hears that its work is no longer wanted (Temporal's heartbeats deliver
	 * cancellation the same way), and its lease runs out.
	 */
	SagaExecute(&plan_heartbeat,
				"WITH t AS (SELECT o.id, o.deliveries, o.lease_owner IS NOT NULL AS leased, "
				SAGA_SQL_WITHDRAWN " AS withdrawn "
				"FROM saga.outbox o WHERE o.id = $1 FOR UPDATE OF o), "
				"u AS (UPDATE saga.outbox o SET visible_at = LEAST($4 + COALESCE($3, o.lease_length), "
				"COALESCE(o.timeout_at, 'infinity')) "
				"FROM t WHERE o.id = t.id AND t.deliveries = $2 AND t.leased AND NOT t.withdrawn "
				"RETURNING o.visible_at) "
				"SELECT t.deliveries, t.leased, (SELECT visible_at FROM u), t.withdrawn FROM t",
				4, types, values, nulls, SPI_OK_SELECT, "extending a lease");
	if (SPI_processed == 0)
		task_left_outbox(task_id);
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	deliveries = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
	leased = DatumGetBool(SPI_getbinval(tup, desc, 2, &isnull));
	withdrawn = DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull));
	until = DatumGetTimestampTz(SPI_getbinval(tup, desc, 3, &isnull));
	*cancelled = isnull && withdrawn && leased && deliveries == lease;
	if (*cancelled)
		return 0;
	if (isnull)
	{
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("lease %d of task %lld is no longer held", lease, (long long) task_id),
				 deliveries != lease
				 ? errdetail("The task's current delivery is %d.", deliveries)
				 : errdetail("The delivery has ended: it was reported, or its lease lapsed.")));
	}
	return until;
}

/*
 * Hand a leased task back: visible again at once, the attempt not counted
 * (the lease did not lapse), the lease numbers going on (a report under the
 * released lease is refused).  SQS's visibility timeout set to zero.
 * Returns false when the lease already ended (released before, lapsed even
 * if the lapse is not processed yet, or reported a retryable failure):
 * releasing twice is harmless, and a lapse still counts its attempt.  Raises 42704
 * for a task that never existed, 55000 for one that left the outbox or
 * whose current delivery is another.
 */
bool
SagaOutboxRelease(int64 task_id, int32 lease)
{
	Oid			types[3] = {INT8OID, INT4OID, TEXTOID};
	Datum		values[3] = {Int64GetDatum(task_id), Int32GetDatum(lease),
	CStringGetTextDatum(SagaActorName())};
	bool		isnull;
	int32		deliveries;
	Datum		topic;

	SagaExecute(&plan_release,
				"WITH t AS (SELECT id, deliveries, lease_owner, visible_at FROM saga.outbox "
				"WHERE id = $1 FOR UPDATE), "
				"u AS (UPDATE saga.outbox o SET lease_owner = NULL, "
				"visible_at = pg_catalog.clock_timestamp() "
				"FROM t WHERE o.id = t.id AND t.deliveries = $2 AND t.lease_owner IS NOT NULL "
				"AND t.visible_at > pg_catalog.clock_timestamp() "
				"RETURNING o.saga_id, o.step, o.kind, o.topic, t.lease_owner), "
				"h AS (INSERT INTO saga.history_log (saga_id, at, actor, events, steps, details) "
				"SELECT u.saga_id, pg_catalog.clock_timestamp(), $3, '{released}', ARRAY[u.step], "
				"ARRAY[pg_catalog.jsonb_build_object('kind', u.kind, 'worker', u.lease_owner, 'lease', $2)] "
				"FROM u WHERE u.saga_id IS NOT NULL) "
				"SELECT t.deliveries, (SELECT topic FROM u) FROM t",
				3, types, values, NULL, SPI_OK_SELECT, "releasing a task");
	if (SPI_processed == 0)
		task_left_outbox(task_id);
	deliveries = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	topic = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	if (deliveries != lease)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("lease %d of task %lld is no longer held", lease, (long long) task_id),
				 errdetail("The task's current delivery is %d.", deliveries)));
	if (isnull)
		return false;
	SagaAnnounce(TextDatumGetCString(topic));
	return true;
}

/*
 * Did a task of this id ever exist (it may have finished since)?  A saga
 * task's id names its saga; an event delivery's (negative) id was handed
 * out by the deliveries' sequence.
 */
bool
SagaOutboxTaskExisted(int64 task_id)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1];

	if (task_id == 0)
		return false;
	if (task_id < 0)
		return SagaDeliveryExisted(task_id);
	values[0] = Int64GetDatum(SAGA_TASK_SAGA(task_id));
	SagaExecute(&plan_saga_exists,
				"SELECT FROM saga.sagas WHERE id = $1",
				1, types, values, NULL, SPI_OK_SELECT, "finding a saga");
	return SPI_processed > 0;
}
