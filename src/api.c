/*-------------------------------------------------------------------------
 *
 * api.c
 *	  SQL-callable entry points of the worker protocol and of the state
 *	  machine: start, claim, complete, fail, heartbeat, cancel and retry.
 *	  Each checks its arguments, switches to the engine's role, and hands
 *	  over inside one SPI connection: to engine.c for a saga's task, to
 *	  event.c for an event delivery (a task with a negative id), and to
 *	  outbox.c for the rows of the claim.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/timestamp.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "saga.h"

PG_FUNCTION_INFO_V1(saga_start);
PG_FUNCTION_INFO_V1(saga_complete);
PG_FUNCTION_INFO_V1(saga_fail);
PG_FUNCTION_INFO_V1(saga_cancel);
PG_FUNCTION_INFO_V1(saga_retry);
PG_FUNCTION_INFO_V1(saga_claim);
PG_FUNCTION_INFO_V1(saga_heartbeat);
PG_FUNCTION_INFO_V1(saga_release);

#define SAGA_MAX_CLAIM 1000

/* a lease number as claim hands them out: 1, 2, ... (NULL: none) */
static void
check_lease(FunctionCallInfo fcinfo, int argno)
{
	if (!PG_ARGISNULL(argno) && PG_GETARG_INT32(argno) < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lease must be positive"),
				 errdetail("The value given was %d; saga.claim numbers leases from 1.",
						   PG_GETARG_INT32(argno))));
}

/* a report's document: SQL NULL is stored as JSON null */
static Jsonb *
report_document(FunctionCallInfo fcinfo, int argno, const char *what)
{
	Jsonb	   *doc;

	if (PG_ARGISNULL(argno))
	{
		JsonbValue	null = {.type = jbvNull};

		return JsonbValueToJsonb(&null);
	}
	doc = PG_GETARG_JSONB_P(argno);
	SagaCheckPayload(doc, what);
	return doc;
}

/* a saga's task has a positive id, an event delivery a negative one */
static bool
report(int64 task_id, bool success, Jsonb *payload, bool retryable, SagaFence fence, int32 lease)
{
	if (task_id < 0)
		return SagaDeliveryReport(task_id, success, payload, retryable, fence, lease);
	return SagaReport(task_id, success, payload, retryable, fence, lease);
}

/*
 * A task failed for good without a report (timeout, last lease lapsed):
 * a saga's step fails, an event delivery becomes a dead letter.
 */
void
SagaExhaustAny(int64 task_id, const char *why)
{
	if (task_id < 0)
		SagaDeliveryExhaust(task_id, why);
	else
		SagaExhaustTask(task_id, why);
}

/* saga.start(name, input, correlation_id, idempotency_key, traceparent) */
Datum
saga_start(PG_FUNCTION_ARGS)
{
	char	   *name;
	Jsonb	   *input;
	char	   *correlation_id = SagaOptionalText(fcinfo, 2, "correlation_id", SAGA_MAX_ID_LEN);
	char	   *idempotency_key = SagaOptionalText(fcinfo, 3, "idempotency_key", SAGA_MAX_ID_LEN);
	char	   *traceparent;
	SagaUserSave save;
	SagaDef    *def;
	int64		id;

	SagaRequireArg(fcinfo, 0, "name");
	SagaRequireArg(fcinfo, 1, "input");
	traceparent = SagaTraceparentArg(fcinfo, 4);
	name = SagaTextArg(PG_GETARG_TEXT_PP(0), SAGA_MAX_NAME_LEN, "saga name");
	input = PG_GETARG_JSONB_P(1);
	SagaCheckPayload(input, "saga input");
	/* a start_saga subscription finds the saga of an event by this key */
	if (idempotency_key != NULL && strncmp(idempotency_key, SAGA_EVENT_KEY_PREFIX,
										   strlen(SAGA_EVENT_KEY_PREFIX)) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency key \"%s\" is reserved", SagaEcho(idempotency_key)),
				 errdetail("Keys that begin with \"%s\" are those of the sagas that start_saga subscriptions start.",
						   SAGA_EVENT_KEY_PREFIX),
				 errhint("Choose a key without that prefix.")));

	SagaEnter(&save);
	def = SagaDefinitionLatest(name);
	if (def == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("saga definition \"%s\" does not exist", name),
				 errhint("Define it first with saga.define().")));
	id = SagaStart(def, input, correlation_id, idempotency_key, traceparent, 0);
	SagaLeave(&save);
	PG_RETURN_INT64(id);
}

/* saga.complete(task_id, result, lease): true if recorded, false for a repeat */
Datum
saga_complete(PG_FUNCTION_ARGS)
{
	SagaUserSave save;
	Jsonb	   *result;
	bool		recorded;

	SagaRequireArg(fcinfo, 0, "task_id");
	check_lease(fcinfo, 2);
	result = report_document(fcinfo, 1, "result");

	SagaEnter(&save);
	recorded = report(PG_GETARG_INT64(0), true, result, false,
					  PG_ARGISNULL(2) ? FENCE_ROW_LOCK : FENCE_LEASE,
					  PG_ARGISNULL(2) ? 0 : PG_GETARG_INT32(2));
	SagaLeave(&save);
	PG_RETURN_BOOL(recorded);
}

/* saga.fail(task_id, error, retryable, lease): true if recorded, false for a repeat */
Datum
saga_fail(PG_FUNCTION_ARGS)
{
	SagaUserSave save;
	Jsonb	   *error;
	bool		recorded;

	SagaRequireArg(fcinfo, 0, "task_id");
	check_lease(fcinfo, 3);
	error = report_document(fcinfo, 1, "error");

	SagaEnter(&save);
	recorded = report(PG_GETARG_INT64(0), false, error,
					  PG_ARGISNULL(2) ? true : PG_GETARG_BOOL(2),
					  PG_ARGISNULL(3) ? FENCE_ROW_LOCK : FENCE_LEASE,
					  PG_ARGISNULL(3) ? 0 : PG_GETARG_INT32(3));
	SagaLeave(&save);
	PG_RETURN_BOOL(recorded);
}

/* saga.cancel(saga_id, reason): compensate a running saga; it ends cancelled */
Datum
saga_cancel(PG_FUNCTION_ARGS)
{
	SagaUserSave save;
	char	   *reason;

	SagaRequireArg(fcinfo, 0, "saga_id");
	reason = PG_ARGISNULL(1) ? NULL
		: SagaTextArg(PG_GETARG_TEXT_PP(1), SAGA_MAX_REASON_LEN, "reason");

	SagaEnter(&save);
	SagaCancel(PG_GETARG_INT64(0), reason);
	SagaLeave(&save);
	PG_RETURN_VOID();
}

/* saga.retry(saga_id): resume a saga whose compensation failed */
Datum
saga_retry(PG_FUNCTION_ARGS)
{
	SagaUserSave save;

	SagaRequireArg(fcinfo, 0, "saga_id");
	SagaEnter(&save);
	SagaRetryFailed(PG_GETARG_INT64(0));
	SagaLeave(&save);
	PG_RETURN_VOID();
}

/*
 * saga.claim(topic, worker, max_tasks, lease): lease up to max_tasks visible
 * tasks, oldest first.  A task whose previous lease lapsed counts an attempt;
 * one with no attempts left, or past its timeout, fails here instead of
 * being handed out (an event delivery becomes a dead letter), and an action
 * whose saga has stopped running (withdrawn while someone held it) is
 * settled rather than delivered.
 */
Datum
saga_claim(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *topic;
	char	   *worker;
	int32		max_tasks;
	int64		lease_us;
	SagaUserSave save;
	TimestampTz now;
	int64	   *ids;
	ItemPointerData *tids;
	SagaTaskFate *fates;
	int			n;
	int			ndeliver = 0;
	MemoryContext caller_cxt = CurrentMemoryContext;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2) || PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("saga.claim arguments must not be null")));
	topic = SagaTextArg(PG_GETARG_TEXT_PP(0), SAGA_MAX_TOPIC_LEN, "topic");
	worker = SagaTextArg(PG_GETARG_TEXT_PP(1), SAGA_MAX_ID_LEN, "worker name");
	max_tasks = PG_GETARG_INT32(2);

	SagaCheckTopic(topic);
	if (worker[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("worker name must not be empty")));
	if (max_tasks < 1 || max_tasks > SAGA_MAX_CLAIM)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_tasks must be between 1 and %d", SAGA_MAX_CLAIM),
				 errdetail("The value given was %d.", max_tasks)));
	lease_us = SagaCheckInterval(PG_GETARG_INTERVAL_P(3), "lease");

	InitMaterializedSRF(fcinfo, 0);

	SagaEnter(&save);
	now = GetCurrentTimestamp();
	n = SagaOutboxCandidates(topic, now, max_tasks, &ids, &tids, &fates);

	/* failures first: they may withdraw sibling tasks we were about to hand out */
	for (int i = 0; i < n; i++)
	{
		/* another saga's trouble must not stop this claim */
		switch (fates[i])
		{
			case TASK_DELIVER:
				tids[ndeliver] = tids[i];
				ids[ndeliver++] = ids[i];
				break;
			case TASK_WITHDRAWN:
				(void) SagaIsolated(SagaSettleWithdrawnWork, ids[i], NULL, true);
				break;
			case TASK_TIMED_OUT:
				(void) SagaIsolated(SagaExhaustAny, ids[i], "timeout", true);
				break;
			case TASK_EXHAUSTED:
				(void) SagaIsolated(SagaExhaustAny, ids[i], "attempts exhausted: lease expired", true);
				break;
		}
	}

	/*
	 * A failure settled above may have stopped the saga of a task about to
	 * be handed out; withdrawing leaves alone the tasks this claim locked,
	 * so such a task is settled here, as the next claim would find it.
	 */
	if (ndeliver > 0 && ndeliver < n)
	{
		bool	   *withdrawn = palloc(sizeof(bool) * ndeliver);
		int			keep = 0;

		if (SagaOutboxWithdrawnOf(ids, ndeliver, withdrawn) > 0)
		{
			for (int i = 0; i < ndeliver; i++)
			{
				if (withdrawn[i])
				{
					(void) SagaIsolated(SagaSettleWithdrawnWork, ids[i], NULL, true);
					continue;
				}
				ids[keep] = ids[i];
				tids[keep++] = tids[i];
			}
			ndeliver = keep;
		}
	}
	if (ndeliver > 0)
		SagaOutboxLease(ids, tids, ndeliver, worker, lease_us, now, rsinfo, caller_cxt);

	SagaLeave(&save);
	return (Datum) 0;
}

/*
 * saga.heartbeat(task_id, lease, extend): keep a lease; returns its new end,
 * or NULL when the task's saga stopped running (cancelled, or compensating):
 * the work is no longer wanted, and the lease is not extended.
 */
Datum
saga_heartbeat(PG_FUNCTION_ARGS)
{
	int64		extend_us = -1;
	SagaUserSave save;
	TimestampTz until;
	bool		cancelled;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("task_id and lease must not be null")));
	check_lease(fcinfo, 1);
	if (!PG_ARGISNULL(2))
		extend_us = SagaCheckInterval(PG_GETARG_INTERVAL_P(2), "extend");

	SagaEnter(&save);
	until = SagaOutboxHeartbeat(PG_GETARG_INT64(0), PG_GETARG_INT32(1), extend_us, &cancelled);
	SagaLeave(&save);
	if (cancelled)
		PG_RETURN_NULL();
	PG_RETURN_TIMESTAMPTZ(until);
}

/* saga.release(task_id, lease): hand a leased task back, visible now, no attempt spent */
Datum
saga_release(PG_FUNCTION_ARGS)
{
	SagaUserSave save;
	bool		released;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("task_id and lease must not be null")));
	check_lease(fcinfo, 1);
	SagaEnter(&save);
	released = SagaOutboxRelease(PG_GETARG_INT64(0), PG_GETARG_INT32(1));
	SagaLeave(&save);
	PG_RETURN_BOOL(released);
}
