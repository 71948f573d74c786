/*-------------------------------------------------------------------------
 *
 * engine.c
 *	  The state machine of one saga instance.
 *
 * Every transition follows the same shape: lock the saga's row, load its
 * state into memory, apply the report (or start, cancel, retry), let the
 * graph move as far as it can (dispatch ready steps, run synchronous SQL
 * steps, enqueue the next wave of compensations), then write the row back
 * once, with the outbox and history changes, in the caller's transaction.
 * The row lock serialises every transition of one saga, which is what makes
 * a join fire once and lets a failure withdraw its siblings consistently.
 *
 * The caller has switched to the engine's role and connected to SPI.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "parser/parse_func.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "saga.h"

#define MAX_EVENTS_INIT 8

struct SagaState
{
	int64		id;
	SagaDef    *def;
	const char *status;
	bool		pivoted;
	bool		cancel_requested;
	char	   *cancel_reason;
	int16	   *step_status;
	int32	   *attempts;
	int32	   *deliveries;		/* the delivery that last reported each step's
								 * action, then (from nsteps on) its
								 * compensation: see DELIVERY */
	Jsonb	   *input;
	Jsonb	   *results;
	Jsonb	   *errors;
	Jsonb	   *incident;
	char	   *correlation_id;
	char	   *idempotency_key;
	char	   *traceparent;
	bool		is_new;			/* not yet in saga.sagas */
	bool		deadline_done;	/* the deadline no longer applies */
	TimestampTz started_at;
	int64		event_id;		/* the event that started it (start_saga), or 0 */
	ItemPointerData tid;		/* its row's version: locked by load_saga, or ours */

	/* events to publish once the transition is written ("publish") */
	int			npublish;
	const char **publish_types;
	Jsonb	  **publish_payloads;

	/* changes to write with the row */
	SagaNewTask *tasks;
	int			ntasks;
	int64	   *deletes;
	int			ndeletes;
	/* SQL steps past the pivot whose new retry task waits for its delay */
	int			nsqlretries;
	int		   *sqlretry_step;
	int64	   *sqlretry_delay;
	Datum	   *ev_event;
	Datum	   *ev_step;
	Datum	   *ev_detail;
	bool	   *ev_step_null;
	bool	   *ev_detail_null;
	int			nevents;
	int			maxevents;
};

static SPIPlanPtr plan_load = NULL;
static SPIPlanPtr plan_insert_keyed = NULL;
static SPIPlanPtr plan_insert_keyed_03 = NULL;
static SPIPlanPtr plan_delete_tasks = NULL;
static SPIPlanPtr plan_load_03 = NULL;
static SPIPlanPtr plan_task = NULL;
static SPIPlanPtr plan_take = NULL;
static SPIPlanPtr plan_find_key = NULL;
static SPIPlanPtr plan_saga_tasks = NULL;

typedef struct TaskRow TaskRow;

static void advance(SagaState *st);
static int32 settled_by(const TaskRow *row, SagaFence fence);
static void compensate(SagaState *st);
static void raise_incident(SagaState *st, int step, int attempt, Jsonb *error);
static Jsonb *incident_doc(SagaState *st, int step, int attempts, Jsonb *error);
static void clear_incident(SagaState *st, int step);

/*
 * Fencing outlives the task: the lease that settled a task is kept on the
 * saga, so a report under an older lease is refused after the task is gone.
 * Actions and compensations are kept apart (a row of 0.1 has the actions
 * only; its compensations' entries read as 0, never reported).
 */
#define DELIVERY(st, step, comp)	((st)->deliveries[(comp) ? (st)->def->nsteps + (step) : (step)])

/* ---------- small jsonb builders: see saga.c ---------- */

static Jsonb *
jb_finish(JsonbParseState **ps)
{
	return JsonbValueToJsonb(pushJsonbValue(ps, WJB_END_OBJECT, NULL));
}

/* obj with key set to value */
static Jsonb *
jsonb_put(Jsonb *obj, const char *key, Jsonb *value)
{
	JsonbParseState *ps = NULL;
	Jsonb	   *single;

	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	SagaJbJsonb(&ps, key, value);
	single = jb_finish(&ps);
	return DatumGetJsonbP(DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(obj),
											  JsonbPGetDatum(single)));
}

/* obj->key as a Jsonb, or NULL */
static Jsonb *
jsonb_get(Jsonb *obj, const char *key)
{
	JsonbValue	v;

	if (getKeyJsonValueFromContainer(&obj->root, key, strlen(key), &v) == NULL)
		return NULL;
	return JsonbValueToJsonb(&v);
}

static bool
jsonb_same(Jsonb *a, Jsonb *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return DatumGetBool(DirectFunctionCall2(jsonb_eq, JsonbPGetDatum(a), JsonbPGetDatum(b)));
}

static Jsonb *
empty_object(void)
{
	JsonbParseState *ps = NULL;

	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	return jb_finish(&ps);
}

static Jsonb *
jsonb_reason(const char *reason)
{
	JsonbParseState *ps = NULL;

	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	SagaJbStr(&ps, "reason", reason);
	return jb_finish(&ps);
}

/* ---------- state bookkeeping ---------- */

/* saga.history numbers the events of one transition in 12 bits */
#define MAX_EVENTS	4096

static void
add_event(SagaState *st, const char *event, int step, Jsonb *detail)
{
	if (st->nevents == MAX_EVENTS)
		elog(ERROR, "saga: more than %d events in one transition of saga %lld",
			 MAX_EVENTS, (long long) st->id);
	if (st->nevents == st->maxevents)
	{
		int			n = st->maxevents == 0 ? MAX_EVENTS_INIT : st->maxevents * 2;

		if (st->maxevents == 0)
		{
			st->ev_event = palloc(sizeof(Datum) * n);
			st->ev_step = palloc(sizeof(Datum) * n);
			st->ev_detail = palloc(sizeof(Datum) * n);
			st->ev_step_null = palloc(sizeof(bool) * n);
			st->ev_detail_null = palloc(sizeof(bool) * n);
		}
		else
		{
			st->ev_event = repalloc(st->ev_event, sizeof(Datum) * n);
			st->ev_step = repalloc(st->ev_step, sizeof(Datum) * n);
			st->ev_detail = repalloc(st->ev_detail, sizeof(Datum) * n);
			st->ev_step_null = repalloc(st->ev_step_null, sizeof(bool) * n);
			st->ev_detail_null = repalloc(st->ev_detail_null, sizeof(bool) * n);
		}
		st->maxevents = n;
	}
	st->ev_event[st->nevents] = CStringGetTextDatum(event);
	st->ev_step_null[st->nevents] = (step < 0);
	st->ev_step[st->nevents] = step < 0 ? (Datum) 0
		: CStringGetTextDatum(st->def->steps[step].name);
	st->ev_detail_null[st->nevents] = (detail == NULL);
	st->ev_detail[st->nevents] = detail == NULL ? (Datum) 0 : JsonbPGetDatum(detail);
	st->nevents++;
}

/* an event the definition publishes ("publish"), sent once the transition is written */
static void
queue_publish(SagaState *st, const char *type, Jsonb *payload)
{
	if (st->publish_types == NULL)
	{
		/* each step publishes at most once, and the saga once as it ends */
		st->publish_types = palloc(sizeof(char *) * (st->def->nsteps + 1));
		st->publish_payloads = palloc(sizeof(Jsonb *) * (st->def->nsteps + 1));
	}
	Assert(st->npublish <= st->def->nsteps);
	st->publish_types[st->npublish] = type;
	st->publish_payloads[st->npublish++] = payload;
}

/*
 * The payload of the event a saga publishes as it ends:
 * {"saga_id", "saga", "status", "input", "results", and "errors" unless it
 * completed}.
 */
static Jsonb *
outcome_payload(SagaState *st)
{
	JsonbParseState *ps = NULL;
	Jsonb	   *full;

	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	SagaJbInt(&ps, "saga_id", st->id);
	SagaJbStr(&ps, "saga", st->def->name);
	SagaJbStr(&ps, "status", st->status);
	SagaJbJsonb(&ps, "input", st->input);
	SagaJbJsonb(&ps, "results", st->results);
	if (strcmp(st->status, SAGA_COMPLETED) != 0)
		SagaJbJsonb(&ps, "errors", st->errors);
	if (st->cancel_reason != NULL)
		SagaJbStr(&ps, "reason", st->cancel_reason);
	full = jb_finish(&ps);
	if (VARSIZE(full) <= (Size) saga_max_payload_size)
		return full;

	/*
	 * Input, results and errors are each bounded, not their sum: past the
	 * bound on an event's payload the outcome says only what ended how
	 * (the rest is in saga.instances and saga.step_runs).
	 */
	ps = NULL;
	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	SagaJbInt(&ps, "saga_id", st->id);
	SagaJbStr(&ps, "saga", st->def->name);
	SagaJbStr(&ps, "status", st->status);
	SagaJbBool(&ps, "omitted", true);
	return jb_finish(&ps);
}

static void
set_saga_status(SagaState *st, const char *status)
{
	const char *type = NULL;

	st->status = status;
	add_event(st, status, -1, NULL);
	if (strcmp(status, SAGA_COMPLETED) == 0)
		type = st->def->publish_completed;
	else if (strcmp(status, SAGA_COMPENSATED) == 0)
		type = st->def->publish_compensated;
	else if (strcmp(status, SAGA_CANCELLED) == 0)
		type = st->def->publish_cancelled;
	if (type != NULL)
		queue_publish(st, type, outcome_payload(st));
}

static bool
saga_finished(const char *status)
{
	return strcmp(status, SAGA_COMPLETED) == 0 || strcmp(status, SAGA_COMPENSATED) == 0 ||
		strcmp(status, SAGA_CANCELLED) == 0 || strcmp(status, SAGA_FAILED) == 0;
}

/* queue a task for the step's action or compensation */
static void
enqueue(SagaState *st, int step, bool comp)
{
	SagaStepDef *s = &st->def->steps[step];
	SagaNewTask *t;

	if (st->tasks == NULL)
		st->tasks = palloc(sizeof(SagaNewTask) * st->def->nsteps * 2);
	t = &st->tasks[st->ntasks++];
	t->id = SAGA_TASK_ID(st->id, step, comp);
	t->awaits = comp ? NULL : s->await;
	t->topic = comp ? s->compensate.topic : s->await != NULL ? SAGA_AWAIT_TOPIC : s->action.topic;
	t->kind = comp ? "compensate" : "action";
	t->step = s->name;
	/* compensations, and everything after a pivot, retry until they succeed */
	t->max_attempts = (comp || st->pivoted) ? 0 : s->retry.max_attempts;
	t->timeout = (comp || st->pivoted) ? 0 : s->timeout;
}

static void
delete_task(SagaState *st, int64 task_id)
{
	if (st->deletes == NULL)
		st->deletes = palloc(sizeof(int64) * st->def->nsteps * 2);
	st->deletes[st->ndeletes++] = task_id;
}

/*
 * Capped exponential backoff: initial * backoff^(attempt-1), at most
 * max_delay; jitter spreads it between half and all of that.
 */
int64
SagaBackoffDelay(const SagaRetry *retry, int attempt)
{
	double		delay = (double) retry->initial_delay *
		pow(retry->backoff, (double) Max(attempt - 1, 0));

	if (delay > (double) retry->max_delay)
		delay = (double) retry->max_delay;
	if (retry->jitter)
		delay *= 0.5 + 0.5 * pg_prng_double(&pg_global_prng_state);
	return (int64) delay;
}

/* ---------- SQL steps ---------- */

static Jsonb *
task_payload(SagaState *st)
{
	JsonbParseState *ps = NULL;

	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	SagaJbJsonb(&ps, "input", st->input);
	SagaJbJsonb(&ps, "results", st->results);
	return jb_finish(&ps);
}

/* a guest's message or detail is stored up to this many bytes */
#define MAX_ERROR_TEXT	8192

static char *
clip_text(const char *s)
{
	return SagaClip(s, MAX_ERROR_TEXT);
}

/* the error document of a failed SQL step: bounded whatever the guest raised */
static Jsonb *
error_to_jsonb(ErrorData *edata)
{
	JsonbParseState *ps = NULL;

	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	SagaJbStr(&ps, "message", clip_text(edata->message));
	SagaJbStr(&ps, "sqlstate", unpack_sql_state(edata->sqlerrcode));
	if (edata->detail)
		SagaJbStr(&ps, "detail", clip_text(edata->detail));
	return jb_finish(&ps);
}

/*
 * Errors that say nothing about the step but about the transaction or the
 * server: a cancel or statement_timeout, a shutdown, a deadlock or
 * serialization failure, running out of memory or disk, an internal error.
 * Turning them into a failed step would compensate work that did not fail
 * (and run past the cancel); they abort the caller's statement instead, as
 * PL/pgSQL's WHEN OTHERS lets a cancel through.  Only when the server raised
 * them: a guest may RAISE any SQLSTATE, and one that raised '40001' on
 * purpose would otherwise abort every caller, the worker's rounds included.
 */
static bool
error_is_not_the_steps(ErrorData *edata)
{
	int			category = ERRCODE_TO_CATEGORY(edata->sqlerrcode);

	if (edata->funcname != NULL &&
		(strcmp(edata->funcname, "exec_stmt_raise") == 0 ||
		 strcmp(edata->funcname, "exec_stmt_assert") == 0))
		return false;
	return category == ERRCODE_OPERATOR_INTERVENTION ||
		category == ERRCODE_TRANSACTION_ROLLBACK ||
		category == ERRCODE_INSUFFICIENT_RESOURCES ||
		category == ERRCODE_SYSTEM_ERROR ||
		category == ERRCODE_INTERNAL_ERROR;
}

/*
 * Run fn(payload) as a guest: in a subtransaction, as the role that defined
 * the saga, and in the sandbox PostgreSQL's maintenance commands use for
 * user code (index expressions in VACUUM, REFRESH MATERIALIZED VIEW): a
 * security-restricted operation (no SET ROLE, no temporary objects, no
 * deferred triggers or held cursors that would run later as somebody else)
 * inside a GUC nest level, so every setting it makes, set_config(..., false)
 * included, is undone when it returns; it starts with search_path =
 * pg_catalog, pg_temp.  The definer, the function, USAGE on its schema and
 * EXECUTE are checked again at each run.  Returns true with *out the
 * result, or false with *out the error (the step's error document).
 */
static bool
run_sql(SagaState *st, const char *fname, Jsonb **out)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	Jsonb	   *payload = task_payload(st);
	volatile bool ok = false;
	SagaGuestSave guest;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	SagaGuestBegin(&guest);
	PG_TRY();
	{
		Oid			definer;
		Oid			fn;
		Oid			save_user;
		int			save_sec;
		int			nestlevel;
		Datum		result;
		LOCAL_FCINFO(fcinfo, 1);
		FmgrInfo	flinfo;

		definer = SagaDefinitionDefiner(st->def);
		fn = SagaGuestFunction(fname, definer, false);

		GetUserIdAndSecContext(&save_user, &save_sec);
		SetUserIdAndSecContext(definer, save_sec | SECURITY_LOCAL_USERID_CHANGE |
							   SECURITY_RESTRICTED_OPERATION);
		nestlevel = NewGUCNestLevel();
		(void) set_config_option("search_path", "pg_catalog, pg_temp",
								 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
		/* the caller's lock_timeout would fail the step for good: its own may */
		(void) set_config_option("lock_timeout", "0",
								 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
		fmgr_info(fn, &flinfo);
		InitFunctionCallInfoData(*fcinfo, &flinfo, 1, InvalidOid, NULL, NULL);
		fcinfo->args[0].value = JsonbPGetDatum(payload);
		fcinfo->args[0].isnull = false;
		result = FunctionCallInvoke(fcinfo);
		AtEOXact_GUC(false, nestlevel);
		SetUserIdAndSecContext(save_user, save_sec);

		MemoryContextSwitchTo(cxt);
		if (fcinfo->isnull)
			*out = JsonbValueToJsonb(&(JsonbValue) {.type = jbvNull});
		else
			*out = DatumGetJsonbPCopy(result);
		SagaCheckPayload(*out, "result of an SQL step");

		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		ok = true;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		/* also undoes the guest's settings and restores our user */
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		SagaGuestEnd(&guest);
		if (error_is_not_the_steps(edata))
			ReThrowError(edata);
		*out = error_to_jsonb(edata);
		FreeErrorData(edata);
	}
	PG_END_TRY();
	SagaGuestEnd(&guest);
	return ok;
}

/* ---------- forward ---------- */

static void
step_succeeded_by(SagaState *st, int step, Jsonb *result, Jsonb *detail)
{
	clear_incident(st, step);
	st->step_status[step] = STEP_SUCCEEDED;
	st->results = jsonb_put(st->results, st->def->steps[step].name, result);
	add_event(st, "succeeded", step, detail);
	if (st->def->steps[step].publish != NULL)
		queue_publish(st, st->def->steps[step].publish, result);
	if (!st->def->steps[step].pivot || st->pivoted)
		return;
	if (strcmp(st->status, SAGA_RUNNING) == 0)
	{
		st->pivoted = true;
		add_event(st, "pivoted", step, NULL);
	}
	else if (st->def->steps[step].compensate.topic == NULL &&
			 st->def->steps[step].compensate.sql == NULL && st->incident == NULL)
	{
		/*
		 * A cancel or a failure got there first, and the saga is going back:
		 * a pivot reported now does not turn it forward (the steps after it
		 * are withdrawn already).  It is undone like any step, but with no
		 * compensation its effect stays: a person decides.
		 */
		st->incident = incident_doc(st, step, 0,
									jsonb_reason("pivot succeeded after the saga began compensating"));
		add_event(st, "incident", step, st->incident);
	}
}

static void
step_succeeded(SagaState *st, int step, Jsonb *result)
{
	step_succeeded_by(st, step, result, NULL);
}

/* an await step's event arrived: its payload is the step's result */
static void
await_succeeded(SagaState *st, int step, int64 event_id, Jsonb *payload)
{
	JsonbParseState *ps = NULL;

	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	SagaJbInt(&ps, "event_id", event_id);
	step_succeeded_by(st, step, payload, jb_finish(&ps));
}

/* a step failed for good: the saga starts compensating in this transaction */
static void
step_failed(SagaState *st, int step, Jsonb *error)
{
	st->step_status[step] = STEP_FAILED;
	st->errors = jsonb_put(st->errors, st->def->steps[step].name, error);
	add_event(st, "failed", step, error);
}

/*
 * The document saga.incidents shows for a saga that needs a person:
 * {"step", "error", "since", and "attempts" when they count (> 0)}.
 */
static Jsonb *
incident_doc(SagaState *st, int step, int attempts, Jsonb *error)
{
	JsonbParseState *ps = NULL;

	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	SagaJbStr(&ps, "step", st->def->steps[step].name);
	if (attempts > 0)
		SagaJbInt(&ps, "attempts", attempts);
	SagaJbJsonb(&ps, "error", error);
	SagaJbStr(&ps, "since", timestamptz_to_str(GetCurrentTimestamp()));
	return jb_finish(&ps);
}

/*
 * The engine gave up on a delivered step whose outcome it cannot know: the
 * failure is recorded (with "in_doubt"), and the step counts as having
 * acted, so compensate() undoes it.
 */
static Jsonb *
mark_in_doubt(SagaState *st, int step, Jsonb *error, int32 lease)
{
	JsonbParseState *ps = NULL;
	JsonbValue	yes = {.type = jbvBool,.val.boolean = true};

	/* the error, marked: {"reason": "timeout", "in_doubt": true} */
	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	SagaJbKey(&ps, "in_doubt");
	pushJsonbValue(&ps, WJB_VALUE, &yes);
	error = DatumGetJsonbP(DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(error),
											   JsonbPGetDatum(jb_finish(&ps))));
	/* compensate() treats it as having acted; its late report is awaited */
	st->step_status[step] = STEP_SUCCEEDED;
	st->errors = jsonb_put(st->errors, st->def->steps[step].name, error);
	DELIVERY(st, step, false) = lease;
	return error;
}

static void
step_in_doubt(SagaState *st, int step, Jsonb *error, int32 lease)
{
	JsonbParseState *ps = NULL;
	Jsonb	   *flag;

	error = mark_in_doubt(st, step, error, lease);
	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	SagaJbStr(&ps, "outcome", "unknown: compensated in doubt");
	SagaJbInt(&ps, "lease", lease);
	flag = jb_finish(&ps);
	add_event(st, "failed", step, DatumGetJsonbP(DirectFunctionCall2(jsonb_concat,
																	 JsonbPGetDatum(error),
																	 JsonbPGetDatum(flag))));
}

/*
 * A late report for a step failed in doubt, under the lease that was out
 * when the engine gave up: recorded, and a success's result is kept for its
 * compensation; a failure means it did nothing, so if its compensation has
 * not started it is not needed.  The compensation in progress goes on:
 * compensations tolerate what did not happen, not the other way round.
 */
static void
late_report(SagaState *st, int step, bool success, Jsonb *payload, int32 lease)
{
	const char *name = st->def->steps[step].name;
	JsonbParseState *ps = NULL;
	Jsonb	   *error = jsonb_get(st->errors, name);

	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	SagaJbStr(&ps, "outcome", success ? "succeeded" : "failed");
	SagaJbInt(&ps, "lease", lease);
	SagaJbJsonb(&ps, success ? "result" : "error", payload);
	add_event(st, "late_report", step, jb_finish(&ps));

	/* no longer in doubt: a repeat of this report is a repeat */
	error = DatumGetJsonbP(DirectFunctionCall2(jsonb_delete, JsonbPGetDatum(error),
											   CStringGetTextDatum("in_doubt")));
	error = jsonb_put(error, success ? "late_result" : "late_error", payload);
	st->errors = jsonb_put(st->errors, name, error);
	if (success)
	{
		st->results = jsonb_put(st->results, name, payload);
		/* its compensation, if waiting in the outbox, learns what to undo */
		if (st->step_status[step] == STEP_COMPENSATING &&
			st->def->steps[step].compensate.topic != NULL)
			SagaOutboxSetPayload(SAGA_TASK_ID(st->id, step, true), task_payload(st));

		/*
		 * Too late: its compensation already ran without this result (and
		 * may not have undone what it now says it did).  A person decides.
		 */
		if (st->step_status[step] == STEP_COMPENSATED && st->incident == NULL &&
			(st->def->steps[step].compensate.topic != NULL ||
			 st->def->steps[step].compensate.sql != NULL))
		{
			st->incident = incident_doc(st, step, 0,
										jsonb_put(jsonb_reason("late success after its compensation ran"),
												  "result", payload));
			add_event(st, "incident", step, st->incident);
		}
	}
	else if (st->step_status[step] == STEP_SUCCEEDED &&
			 strcmp(st->status, SAGA_COMPENSATING) == 0)
	{
		/* it did nothing: there is nothing of it to undo */
		st->step_status[step] = STEP_FAILED;
		compensate(st);
	}
}

static void
withdrawn(SagaState *st, int step, SagaStepStatus status)
{
	JsonbParseState *ps = NULL;

	st->step_status[step] = status;
	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	SagaJbStr(&ps, "outcome", status == STEP_SKIPPED ? "skipped" : "awaiting report");
	add_event(st, "withdrawn", step, jb_finish(&ps));
}

/*
 * Withdraw everything still in flight and start compensating.  Tasks nobody
 * holds are deleted and their steps skipped; a task that is leased, or
 * locked by a poller right now, may be acted on, so its step is in doubt
 * until its report arrives (or its lease lapses).
 */
static void
begin_compensation(SagaState *st)
{
	int			n = st->def->nsteps;
	int64	   *ids = palloc(sizeof(int64) * n);
	int64	   *gone = palloc(sizeof(int64) * n);
	int			nids = 0;
	int			ngone;

	set_saga_status(st, SAGA_COMPENSATING);

	for (int i = 0; i < n; i++)
	{
		if (st->step_status[i] == STEP_PENDING)
			st->step_status[i] = STEP_SKIPPED;
		else if (st->step_status[i] == STEP_READY)
			ids[nids++] = SAGA_TASK_ID(st->id, i, false);
	}

	/* tasks queued by this very transition are not in the table yet */
	for (int t = 0; t < st->ntasks; t++)
	{
		int			step = SAGA_TASK_STEP(st->tasks[t].id);

		if (!SAGA_TASK_IS_COMP(st->tasks[t].id) && st->step_status[step] == STEP_READY)
			withdrawn(st, step, STEP_SKIPPED);
	}
	st->ntasks = 0;

	ngone = nids > 0 ? SagaOutboxWithdraw(ids, nids, gone) : 0;
	for (int k = 0; k < nids; k++)
	{
		int			step = SAGA_TASK_STEP(ids[k]);
		bool		deleted = false;

		if (st->step_status[step] != STEP_READY)
			continue;
		for (int g = 0; g < ngone; g++)
			if (gone[g] == ids[k])
				deleted = true;
		/*
		 * An await step's row is never delivered: it is skipped even when
		 * the publish of its event holds it right now (that publish then
		 * finds the step no longer ready and leaves it).
		 */
		withdrawn(st, step, (deleted || st->def->steps[step].await != NULL)
				  ? STEP_SKIPPED : STEP_IN_DOUBT);
	}
	compensate(st);
}

/*
 * A forward step cannot succeed after the pivot: retry it (forward
 * recovery) instead of compensating.
 */
static void
retry_forward(SagaState *st, int step, int attempt, Jsonb *error, bool reported)
{
	int64		delay = SagaBackoffDelay(&st->def->steps[step].retry, attempt);
	int64		task = SAGA_TASK_ID(st->id, step, false);
	JsonbParseState *ps = NULL;

	st->errors = jsonb_put(st->errors, st->def->steps[step].name, error);
	st->attempts[step] = attempt;
	SagaOutboxRetryLater(task, attempt + 1, delay, st->pivoted);
	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	SagaJbInt(&ps, "attempt", attempt);
	SagaJbInt(&ps, "next_attempt", attempt + 1);
	SagaJbInt(&ps, "delay_ms", delay / 1000);
	SagaJbJsonb(&ps, "error", error);
	add_event(st, reported ? "retry_scheduled" : "redelivery_scheduled", step, jb_finish(&ps));
	if (st->pivoted)
		raise_incident(st, step, attempt, error);
}

/* dispatch every pending step whose predecessors have all succeeded */
/*
 * An SQL step past the pivot failed: like a topic step there, it is
 * retried until it succeeds, after its backoff.  It runs in the caller's
 * transaction, so nobody else can retry it: the background worker does
 * (SagaRetrySqlStep), from a task on SAGA_SQL_RETRY_TOPIC, which no service
 * can claim.  task_exists: the retry task is already in the outbox (the
 * worker's own retry); else it is written with the saga and delayed after.
 */
static void
sql_retry_later(SagaState *st, int step, Jsonb *error, bool task_exists)
{
	SagaStepDef *s = &st->def->steps[step];
	int			attempt = st->attempts[step];
	int64		delay = SagaBackoffDelay(&s->retry, attempt);
	int64		task = SAGA_TASK_ID(st->id, step, false);
	JsonbParseState *ps = NULL;

	st->step_status[step] = STEP_READY;
	st->errors = jsonb_put(st->errors, s->name, error);
	if (task_exists)
		SagaOutboxRetryLater(task, attempt + 1, delay, true);
	else
	{
		SagaNewTask *t;

		if (st->tasks == NULL)
			st->tasks = palloc(sizeof(SagaNewTask) * st->def->nsteps * 2);
		t = &st->tasks[st->ntasks++];
		t->id = task;
		t->topic = SAGA_SQL_RETRY_TOPIC;
		t->awaits = NULL;
		t->kind = "action";
		t->step = s->name;
		t->max_attempts = 0;
		t->timeout = 0;
		if (st->sqlretry_step == NULL)
		{
			st->sqlretry_step = palloc(sizeof(int) * st->def->nsteps);
			st->sqlretry_delay = palloc(sizeof(int64) * st->def->nsteps);
		}
		st->sqlretry_step[st->nsqlretries] = step;
		st->sqlretry_delay[st->nsqlretries++] = delay;
	}
	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	SagaJbInt(&ps, "attempt", attempt);
	SagaJbInt(&ps, "next_attempt", attempt + 1);
	SagaJbInt(&ps, "delay_ms", delay / 1000);
	SagaJbJsonb(&ps, "error", error);
	add_event(st, "retry_scheduled", step, jb_finish(&ps));
	raise_incident(st, step, attempt, error);
}

static void
advance(SagaState *st)
{
	bool		progress;

	do
	{
		progress = false;
		for (int i = 0; i < st->def->nsteps; i++)
		{
			SagaStepDef *s = &st->def->steps[i];
			bool		ready = (st->step_status[i] == STEP_PENDING);

			for (int k = 0; ready && k < s->nafter; k++)
				if (st->step_status[s->after[k]] != STEP_SUCCEEDED)
					ready = false;
			if (!ready)
				continue;

			st->attempts[i] = 1;
			if (s->await != NULL)
			{
				JsonbParseState *ps = NULL;
				int64		event_id;
				Jsonb	   *payload;

				pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
				SagaJbStr(&ps, "await", s->await);
				add_event(st, "dispatched", i, jb_finish(&ps));
				/* the event may be out already: published since the saga started */
				if (SagaAwaitedEvent(s->await, st->correlation_id, st->started_at,
									 &event_id, &payload))
				{
					await_succeeded(st, i, event_id, payload);
					progress = true;
				}
				else
				{
					st->step_status[i] = STEP_READY;
					enqueue(st, i, false);
				}
				continue;
			}
			if (s->action.topic != NULL)
			{
				st->step_status[i] = STEP_READY;
				enqueue(st, i, false);
				add_event(st, "dispatched", i, NULL);
				continue;
			}
			else
			{
				Jsonb	   *out;

				add_event(st, "dispatched", i, NULL);
				if (run_sql(st, s->action.sql, &out))
				{
					step_succeeded(st, i, out);
					progress = true;
				}
				else if (st->pivoted)
				{
					/* past the pivot a step is retried until it succeeds */
					sql_retry_later(st, i, out, false);
					continue;
				}
				else
				{
					step_failed(st, i, out);
					begin_compensation(st);
					return;
				}
			}
		}
	} while (progress);

	for (int i = 0; i < st->def->nsteps; i++)
		if (st->step_status[i] != STEP_SUCCEEDED)
			return;
	set_saga_status(st, SAGA_COMPLETED);
}

/* ---------- backward ---------- */

static bool
blocks_compensation(int16 status)
{
	return status == STEP_SUCCEEDED || status == STEP_COMPENSATING ||
		status == STEP_IN_DOUBT || status == STEP_READY;
}

/*
 * Enqueue every compensation whose turn has come: a succeeded step is
 * compensated once no step that depended on it still holds an effect.
 * Steps without a compensation are compensated at once, and SQL
 * compensations run here, so one call may walk several levels.
 */
static void
compensate(SagaState *st)
{
	bool		progress;

	if (strcmp(st->status, SAGA_FAILED) == 0)
		return;					/* a person must look first: saga.retry */

	do
	{
		progress = false;
		for (int i = st->def->nsteps - 1; i >= 0; i--)
		{
			SagaStepDef *s = &st->def->steps[i];
			bool		turn = (st->step_status[i] == STEP_SUCCEEDED);

			for (int k = 0; turn && k < s->ndependents; k++)
				if (blocks_compensation(st->step_status[s->dependents[k]]))
					turn = false;
			if (!turn)
				continue;

			if (s->compensate.topic != NULL)
			{
				st->step_status[i] = STEP_COMPENSATING;
				enqueue(st, i, true);
				add_event(st, "compensation_dispatched", i, NULL);
			}
			else if (s->compensate.sql != NULL)
			{
				Jsonb	   *out;

				st->step_status[i] = STEP_COMPENSATING;
				add_event(st, "compensation_dispatched", i, NULL);
				if (!run_sql(st, s->compensate.sql, &out))
				{
					st->errors = jsonb_put(st->errors, s->name, out);
					add_event(st, "compensation_failed", i, out);
					st->incident = incident_doc(st, i, 0, out);
					set_saga_status(st, SAGA_FAILED);
					return;
				}
				st->step_status[i] = STEP_COMPENSATED;
				add_event(st, "compensated", i, NULL);
				progress = true;
			}
			else
			{
				st->step_status[i] = STEP_COMPENSATED;
				add_event(st, "compensated", i, NULL);
				progress = true;
			}
		}
	} while (progress);

	for (int i = 0; i < st->def->nsteps; i++)
		if (blocks_compensation(st->step_status[i]))
			return;
	set_saga_status(st, st->cancel_requested ? SAGA_CANCELLED : SAGA_COMPENSATED);
}

/* ---------- load and write ---------- */

static void
array_to_int16(ArrayType *arr, int16 *out, int n)
{
	Datum	   *elems;
	bool	   *nulls;
	int			count;

	deconstruct_array(arr, INT2OID, 2, true, TYPALIGN_SHORT, &elems, &nulls, &count);
	if (count != n)
		elog(ERROR, "saga: step state has %d entries, expected %d", count, n);
	for (int i = 0; i < n; i++)
		out[i] = DatumGetInt16(elems[i]);
}

static void
array_to_int32(ArrayType *arr, int32 *out, int n)
{
	Datum	   *elems;
	bool	   *nulls;
	int			count;

	deconstruct_array(arr, INT4OID, 4, true, TYPALIGN_INT, &elems, &nulls, &count);
	if (count != n)
		elog(ERROR, "saga: step attempts have %d entries, expected %d", count, n);
	for (int i = 0; i < n; i++)
		out[i] = DatumGetInt32(elems[i]);
}

/* nsteps entries (a 0.1 row: actions only) or 2 * nsteps */
static void
deliveries_from_array(ArrayType *arr, int32 *out, int n)
{
	Datum	   *elems;
	bool	   *nulls;
	int			count;

	deconstruct_array(arr, INT4OID, 4, true, TYPALIGN_INT, &elems, &nulls, &count);
	if (count != n && count != 2 * n)
		elog(ERROR, "saga: deliveries have %d entries, expected %d or %d", count, n, 2 * n);
	for (int i = 0; i < count; i++)
		out[i] = DatumGetInt32(elems[i]);
}

static char *
getcstring(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

/* lock the saga's row and load its state; NULL if there is no such saga */
static SagaState *
load_saga(int64 saga_id)
{
	Oid			argtypes[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(saga_id)};
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	SagaState  *st;
	Datum		d;

#define LOAD_SAGA(event_id) \
	"SELECT definition_id, status, pivoted, cancel_requested, " \
	"cancel_reason, step_status, attempts, input, results, errors, " \
	"incident, correlation_id, traceparent, deliveries, started_at, " \
	event_id ", ctid FROM saga.sagas WHERE id = $1 FOR UPDATE"
	if (SagaBridgesInstalled())
		SagaExecute(&plan_load, LOAD_SAGA("COALESCE(event_id, 0)"),
					1, argtypes, values, NULL, SPI_OK_SELECT, "locking a saga");
	else
		SagaExecute(&plan_load_03, LOAD_SAGA("0::pg_catalog.int8"),
					1, argtypes, values, NULL, SPI_OK_SELECT, "locking a saga");
	if (SPI_processed == 0)
		return NULL;
	SagaTransitionBegin(saga_id);
	SagaNoteSaga(saga_id);

	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	st = palloc0(sizeof(SagaState));
	st->id = saga_id;
	st->def = SagaDefinitionLoad(DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull)));
	st->status = getcstring(tup, desc, 2);
	st->pivoted = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull));
	st->cancel_requested = DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull));
	st->cancel_reason = getcstring(tup, desc, 5);
	st->step_status = palloc(sizeof(int16) * st->def->nsteps);
	st->attempts = palloc(sizeof(int32) * st->def->nsteps);
	st->deliveries = palloc0(sizeof(int32) * st->def->nsteps * 2);
	array_to_int16(DatumGetArrayTypeP(SPI_getbinval(tup, desc, 6, &isnull)),
				   st->step_status, st->def->nsteps);
	array_to_int32(DatumGetArrayTypeP(SPI_getbinval(tup, desc, 7, &isnull)),
				   st->attempts, st->def->nsteps);
	deliveries_from_array(DatumGetArrayTypeP(SPI_getbinval(tup, desc, 14, &isnull)),
						  st->deliveries, st->def->nsteps);
	st->input = DatumGetJsonbPCopy(SPI_getbinval(tup, desc, 8, &isnull));
	st->results = DatumGetJsonbPCopy(SPI_getbinval(tup, desc, 9, &isnull));
	st->errors = DatumGetJsonbPCopy(SPI_getbinval(tup, desc, 10, &isnull));
	d = SPI_getbinval(tup, desc, 11, &isnull);
	st->incident = isnull ? NULL : DatumGetJsonbPCopy(d);
	st->correlation_id = getcstring(tup, desc, 12);
	st->traceparent = getcstring(tup, desc, 13);
	st->started_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 15, &isnull));
	st->event_id = DatumGetInt64(SPI_getbinval(tup, desc, 16, &isnull));
	st->tid = *(ItemPointer) DatumGetPointer(SPI_getbinval(tup, desc, 17, &isnull));
	return st;
}

static ArrayType *
int16_array(int16 *v, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * n);

	for (int i = 0; i < n; i++)
		d[i] = Int16GetDatum(v[i]);
	return construct_array(d, n, INT2OID, 2, true, TYPALIGN_SHORT);
}

static ArrayType *
int32_array(int32 *v, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * n);

	for (int i = 0; i < n; i++)
		d[i] = Int32GetDatum(v[i]);
	return construct_array(d, n, INT4OID, 4, true, TYPALIGN_INT);
}

static Datum
text_datum(const char *s, bool *isnull)
{
	*isnull = s == NULL;
	return s == NULL ? (Datum) 0 : CStringGetTextDatum(s);
}

static Datum
datum_array(Datum *d, int n, Oid type, int len, bool byval, char align)
{
	return PointerGetDatum(construct_array(d, n, type, len, byval, align));
}

/*
 * A new saga with an idempotency key: its row alone, before anything else
 * happens, with ON CONFLICT, so a concurrent start with the same key waits
 * for ours and then finds it.  Speculative insertion has no direct form,
 * so this row still goes through SQL.  False if the key is taken.
 */
static bool
insert_keyed(SagaState *st, TimestampTz now)
{
	Oid			types[17] = {
		INT8OID, INT4OID, TEXTOID, INT4OID, TEXTOID, INT2ARRAYOID, INT4ARRAYOID, INT4ARRAYOID,
		JSONBOID, JSONBOID, JSONBOID, TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID,
		INT8OID
	};
	Datum		values[17];
	char		nulls[18];
	bool		isnull;
	int			n = st->def->nsteps;

	memset(nulls, ' ', 17);
	nulls[17] = '\0';
	values[0] = Int64GetDatum(st->id);
	values[1] = Int32GetDatum(st->def->id);
	values[2] = CStringGetTextDatum(st->def->name);
	values[3] = Int32GetDatum(st->def->version);
	values[4] = CStringGetTextDatum(st->status);
	values[5] = PointerGetDatum(int16_array(st->step_status, n));
	values[6] = PointerGetDatum(int32_array(st->attempts, n));
	values[7] = PointerGetDatum(int32_array(st->deliveries, 2 * n));
	values[8] = JsonbPGetDatum(st->input);
	values[9] = JsonbPGetDatum(st->results);
	values[10] = JsonbPGetDatum(st->errors);
	values[11] = text_datum(st->correlation_id, &isnull);
	nulls[11] = isnull ? 'n' : ' ';
	values[12] = CStringGetTextDatum(st->idempotency_key);
	values[13] = CStringGetTextDatum(st->traceparent);
	values[14] = TimestampTzGetDatum(now);
	/* deadlines are bounded at define: the sum cannot overflow */
	values[15] = TimestampTzGetDatum(now + st->def->deadline);
	nulls[15] = st->def->deadline > 0 ? ' ' : 'n';
	values[16] = Int64GetDatum(st->event_id);
#define INSERT_KEYED(evcol, evval) \
	"INSERT INTO saga.sagas (id, definition_id, name, version, status, pivoted, step_status, " \
	"attempts, deliveries, input, results, errors, correlation_id, idempotency_key, " \
	"traceparent, started_at, updated_at, deadline_at" evcol ") " \
	"VALUES ($1, $2, $3, $4, $5, false, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15, " \
	"$16" evval ") " \
	"ON CONFLICT (name, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING " \
	"RETURNING ctid"
	if (SagaBridgesInstalled())
		SagaExecute(&plan_insert_keyed, INSERT_KEYED(", event_id", ", NULLIF($17, 0)"),
					17, types, values, nulls, SPI_OK_INSERT_RETURNING, "starting a saga");
	else
		SagaExecute(&plan_insert_keyed_03, INSERT_KEYED("", ""),
					16, types, values, nulls, SPI_OK_INSERT_RETURNING, "starting a saga");
	if (SPI_processed == 0)
		return false;
	st->tid = *(ItemPointer) DatumGetPointer(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
												 1, &isnull));
	return true;
}

/*
 * Write the saga's row: insert a new one, or update the version load_saga
 * locked.  finished_at is set once, when the saga finishes; deadline_at is
 * cleared then, or when the deadline no longer applies.
 */
static void
write_saga_row(SagaState *st, TimestampTz now)
{
	SagaRows   *r = SagaRowsOpen(ROWS_SAGAS);
	int			n = st->def->nsteps;
	bool		finished = saga_finished(st->status);
	bool		isnull;
	Datum		d;

	if (st->is_new)
	{
		SagaRowsNew(r);
		SagaRowsSet(r, SC_ID, Int64GetDatum(st->id), false);
		SagaRowsSet(r, SC_DEFINITION_ID, Int32GetDatum(st->def->id), false);
		SagaRowsSet(r, SC_NAME, CStringGetTextDatum(st->def->name), false);
		SagaRowsSet(r, SC_VERSION, Int32GetDatum(st->def->version), false);
		SagaRowsSet(r, SC_INPUT, JsonbPGetDatum(st->input), false);
		d = text_datum(st->correlation_id, &isnull);
		SagaRowsSet(r, SC_CORRELATION_ID, d, isnull);
		d = text_datum(st->idempotency_key, &isnull);
		SagaRowsSet(r, SC_IDEMPOTENCY_KEY, d, isnull);
		SagaRowsSet(r, SC_TRACEPARENT, CStringGetTextDatum(st->traceparent), false);
		SagaRowsSet(r, SC_STARTED_AT, TimestampTzGetDatum(now), false);
		SagaRowsSet(r, SC_FINISHED_AT, TimestampTzGetDatum(now), !finished);
		/* deadlines are bounded at define: the sum cannot overflow */
		SagaRowsSet(r, SC_DEADLINE_AT, TimestampTzGetDatum(now + st->def->deadline),
					st->def->deadline <= 0 || finished || st->deadline_done);
		SagaRowsSet(r, SC_EVENT_ID, Int64GetDatum(st->event_id), st->event_id == 0);
	}
	else
	{
		if (!SagaRowsFetch(r, &st->tid))
			elog(ERROR, "saga: saga %lld changed while locked", (long long) st->id);
		if (finished)
		{
			(void) SagaRowsOld(r, SC_FINISHED_AT, &isnull);
			if (isnull)
				SagaRowsSet(r, SC_FINISHED_AT, TimestampTzGetDatum(now), false);
		}
		else
			SagaRowsSet(r, SC_FINISHED_AT, (Datum) 0, true);
		if (finished || st->deadline_done)
			SagaRowsSet(r, SC_DEADLINE_AT, (Datum) 0, true);
	}
	SagaRowsSet(r, SC_STATUS, CStringGetTextDatum(st->status), false);
	SagaRowsSet(r, SC_PIVOTED, BoolGetDatum(st->pivoted), false);
	SagaRowsSet(r, SC_STEP_STATUS, PointerGetDatum(int16_array(st->step_status, n)), false);
	SagaRowsSet(r, SC_ATTEMPTS, PointerGetDatum(int32_array(st->attempts, n)), false);
	SagaRowsSet(r, SC_DELIVERIES, PointerGetDatum(int32_array(st->deliveries, 2 * n)), false);
	SagaRowsSet(r, SC_RESULTS, JsonbPGetDatum(st->results), false);
	SagaRowsSet(r, SC_ERRORS, JsonbPGetDatum(st->errors), false);
	SagaRowsSet(r, SC_CANCEL_REQUESTED, BoolGetDatum(st->cancel_requested), false);
	d = text_datum(st->cancel_reason, &isnull);
	SagaRowsSet(r, SC_CANCEL_REASON, d, isnull);
	SagaRowsSet(r, SC_INCIDENT, st->incident ? JsonbPGetDatum(st->incident) : (Datum) 0,
				st->incident == NULL);
	SagaRowsSet(r, SC_UPDATED_AT, TimestampTzGetDatum(now), false);
	if (st->is_new)
		SagaRowsInsert(r, &st->tid);
	else
		SagaRowsUpdate(r, &st->tid);
	SagaRowsClose(r);
}

/* a task's headers: what a service needs to act on it idempotently and in the saga's trace */
static Jsonb *
task_headers(SagaState *st, const SagaNewTask *t)
{
	JsonbParseState *ps = NULL;
	char		parent[64];

	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	SagaJbInt(&ps, "saga_id", st->id);
	SagaJbStr(&ps, "step", t->step);
	SagaJbStr(&ps, "kind", t->kind);
	SagaJbInt(&ps, "attempt", 1);
	SagaJbStr(&ps, "idempotency_key", psprintf(INT64_FORMAT "/%s/%s", st->id, t->step, t->kind));
	SagaJbStr(&ps, "correlation_id", st->correlation_id);
	/* the saga's trace id, the task's id as the parent span (W3C Trace Context) */
	snprintf(parent, sizeof(parent), "%.36s%016llx-01", st->traceparent,
			 (unsigned long long) t->id);
	SagaJbStr(&ps, "traceparent", parent);
	return jb_finish(&ps);
}

/*
 * The transition's new tasks, all with the same payload (the saga's input
 * and the results so far); an await step's task is never visible.
 */
static void
insert_tasks(SagaState *st, TimestampTz now)
{
	JsonbParseState *ps = NULL;
	Datum		payload;
	SagaRows   *r;
	TimestampTz never;

	if (st->ntasks == 0)
		return;
	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	SagaJbJsonb(&ps, "input", st->input);
	SagaJbJsonb(&ps, "results", st->results);
	payload = JsonbPGetDatum(jb_finish(&ps));
	TIMESTAMP_NOEND(never);

	r = SagaRowsOpen(ROWS_OUTBOX);
	for (int i = 0; i < st->ntasks; i++)
	{
		const SagaNewTask *t = &st->tasks[i];
		bool		awaits = t->awaits != NULL;

		if (awaits && !SagaRowsHas(r, TC_AWAITS))
			SagaRequireBridges("await steps");
		SagaRowsNew(r);
		SagaRowsSet(r, TC_ID, Int64GetDatum(t->id), false);
		SagaRowsSet(r, TC_TOPIC, CStringGetTextDatum(t->topic), false);
		SagaRowsSet(r, TC_KIND, CStringGetTextDatum(t->kind), false);
		SagaRowsSet(r, TC_SAGA_ID, Int64GetDatum(st->id), false);
		SagaRowsSet(r, TC_STEP, CStringGetTextDatum(t->step), false);
		SagaRowsSet(r, TC_ATTEMPT, Int32GetDatum(1), false);
		SagaRowsSet(r, TC_MAX_ATTEMPTS, Int32GetDatum(t->max_attempts), t->max_attempts == 0);
		SagaRowsSet(r, TC_DELIVERIES, Int32GetDatum(0), false);
		SagaRowsSet(r, TC_PAYLOAD, payload, false);
		SagaRowsSet(r, TC_HEADERS, JsonbPGetDatum(task_headers(st, t)), false);
		SagaRowsSet(r, TC_VISIBLE_AT, TimestampTzGetDatum(awaits ? never : now), false);
		SagaRowsSet(r, TC_CREATED_AT, TimestampTzGetDatum(now), false);
		/* timeouts are bounded at define: the sum cannot overflow */
		SagaRowsSet(r, TC_TIMEOUT_AT, TimestampTzGetDatum(now + t->timeout), t->timeout <= 0);
		SagaRowsSet(r, TC_AWAITS, awaits ? CStringGetTextDatum(t->awaits) : (Datum) 0, !awaits);
		SagaRowsInsert(r, NULL);
	}
	SagaRowsClose(r);
}

/* the transition's events: one history row */
static void
insert_history(SagaState *st, TimestampTz now)
{
	SagaRows   *r;

	if (st->nevents == 0)
		return;
	r = SagaRowsOpen(ROWS_HISTORY);
	SagaRowsInsertHistory(r, st->id, now, st->nevents, st->ev_event, st->ev_step,
						  st->ev_step_null, st->ev_detail, st->ev_detail_null);
	SagaRowsClose(r);
}

/* tasks the transition withdrew (a rare path: the statement is worth its plan) */
static void
delete_tasks(SagaState *st)
{
	Datum	   *ids = palloc(sizeof(Datum) * st->ndeletes);
	Oid			types[1] = {INT8ARRAYOID};
	Datum		values[1];

	for (int i = 0; i < st->ndeletes; i++)
		ids[i] = Int64GetDatum(st->deletes[i]);
	values[0] = datum_array(ids, st->ndeletes, INT8OID, 8, true, TYPALIGN_DOUBLE);
	SagaExecute(&plan_delete_tasks, "DELETE FROM saga.outbox WHERE id = ANY($1)",
				1, types, values, NULL, SPI_OK_DELETE, "withdrawing tasks");
}

/*
 * Publish what the transition queued ("publish"), now that the saga row is
 * written and its transition over: a publish may end await steps and start
 * sagas, this one's included.  The events carry the saga's correlation id
 * and trace; a saga started by an event (start_saga) gives that event as
 * their cause, so hops count on and the hop limit stops an event loop
 * through sagas.  A cause purged since (saga.retention) is left out.
 */
static void
publish_one(SagaState *st, const char *type, Jsonb *payload)
{
	SagaCascadeEnter();
	PG_TRY();
	{
		(void) SagaPublish(type, payload, st->correlation_id, st->event_id,
						   st->event_id != 0 ? SAGA_CAUSE_IF_RETAINED : SAGA_NO_CAUSE,
						   NULL, NULL, st->traceparent);
	}
	PG_FINALLY();
	{
		SagaCascadeLeave();
	}
	PG_END_TRY();
}

static void
flush_publish(SagaState *st)
{
	int			n = st->npublish;

	st->npublish = 0;
	for (int i = 0; i < n; i++)
		publish_one(st, st->publish_types[i], st->publish_payloads[i]);
}


/*
 * Write the saga's row, then the outbox changes and the history, as direct
 * row writes (rows.c) in the caller's transaction.  Withdrawn tasks go
 * before new ones: a task keeps its id across attempts.  A new saga whose
 * idempotency key is already taken is not written: returns false.
 */
static bool
save_saga(SagaState *st)
{
	TimestampTz now = GetCurrentTimestamp();

	/* a transition went through: an incident of failed time-based work is over */
	if (st->incident != NULL && jsonb_get(st->incident, "work_failed") != NULL)
		st->incident = NULL;
	if (st->is_new && st->idempotency_key != NULL)
	{
		/* SagaStart takes the key before the saga does anything */
		Assert(st->ntasks == 0 && st->nevents == 0 && st->ndeletes == 0);
		if (!insert_keyed(st, now))
		{
			SagaTransitionEnd(st->id);
			return false;
		}
	}
	else
		write_saga_row(st, now);
	st->is_new = false;
	if (st->ndeletes > 0)
		delete_tasks(st);
	insert_tasks(st, now);
	insert_history(st, now);
	SagaTransitionEnd(st->id);

	SagaOutboxEnqueued(st->tasks, st->ntasks, now);
	for (int i = 0; i < st->nsqlretries; i++)
		SagaOutboxRetryLater(SAGA_TASK_ID(st->id, st->sqlretry_step[i], false),
							 st->attempts[st->sqlretry_step[i]] + 1, st->sqlretry_delay[i], true);
	st->nsqlretries = 0;
	st->ntasks = 0;
	st->ndeletes = 0;
	st->nevents = 0;
	flush_publish(st);
	return true;
}

/* ---------- entry points ---------- */

static const char *const step_status_names[] = {
	"pending", "ready", "running", "succeeded", "failed", "compensating", "compensated", "skipped"
};

/* the saga holding (name, key), or 0 */
static int64
find_by_key(const char *name, const char *key)
{
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];
	bool		isnull;

	values[0] = CStringGetTextDatum(name);
	values[1] = CStringGetTextDatum(key);
	SagaExecute(&plan_find_key,
				"SELECT id FROM saga.sagas WHERE name = $1 "
				"AND idempotency_key = $2",
				2, types, values, NULL, SPI_OK_SELECT, "finding an idempotency key");
	if (SPI_processed == 0)
		return 0;
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

int64
SagaStart(SagaDef *def, Jsonb *input, const char *correlation_id,
		  const char *idempotency_key, const char *traceparent, int64 event_id)
{
	SagaState  *st;

	/* an await step matches events by the saga's correlation id */
	if (def->has_awaits && correlation_id == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("saga \"%s\" needs a correlation_id", def->name),
				 errdetail("It has await steps, which succeed when an event with the saga's correlation id is published."),
				 errhint("Pass correlation_id => the id its events will carry.")));

	/* the caller checked traceparent (SagaTraceparentArg) */
	if (idempotency_key != NULL)
	{
		int64		existing = find_by_key(def->name, idempotency_key);

		if (existing != 0)
			return existing;
	}

	st = palloc0(sizeof(SagaState));
	/* straight to the sequence: one statement fewer on the start path */
	st->id = DatumGetInt64(DirectFunctionCall1(nextval_oid,
											   ObjectIdGetDatum(get_relname_relid("sagas_id_seq",
																				  get_namespace_oid("saga", false)))));
	st->def = def;
	st->status = SAGA_RUNNING;
	st->step_status = palloc0(sizeof(int16) * def->nsteps);
	st->attempts = palloc0(sizeof(int32) * def->nsteps);
	st->deliveries = palloc0(sizeof(int32) * def->nsteps * 2);
	st->input = input;
	st->results = empty_object();
	st->errors = st->results;
	st->correlation_id = correlation_id ? pstrdup(correlation_id) : NULL;
	st->idempotency_key = idempotency_key ? pstrdup(idempotency_key) : NULL;
	st->traceparent = traceparent ? pstrdup(traceparent) : SagaNewTraceparent();
	st->event_id = event_id;
	st->started_at = GetCurrentTimestamp();
	st->is_new = true;
	SagaTransitionBegin(st->id);
	SagaNoteWork(st->id, 0, NULL);

	/*
	 * With a key, take it before any step runs: a concurrent start with the
	 * same key waits on our insert, then finds our saga.
	 */
	if (idempotency_key != NULL)
	{
		if (!save_saga(st))
		{
			int64		existing = find_by_key(def->name, idempotency_key);

			if (existing == 0)
				ereport(ERROR,
						(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
						 errmsg("could not serialize access due to a concurrent saga.start with idempotency key \"%s\"",
								idempotency_key)));
			return existing;
		}
		/* its SQL steps run next, while the state is in memory */
		SagaTransitionBegin(st->id);
	}

	add_event(st, "started", -1, NULL);
	advance(st);
	save_saga(st);
	if (def->deadline > 0)
		SagaWakeAt(GetCurrentTimestamp() + def->deadline);
	return st->id;
}

struct TaskRow
{
	int64		saga_id;
	int32		attempt;
	int32		deliveries;
	bool		leased;
	bool		backing_off;	/* waiting out a retry delay */
	bool		live_lease;		/* leased, and the lease has not lapsed */
	bool		visible;		/* a poller may see it: visible_at has passed */
	bool		parked;			/* a compensation that failed for good */
	bool		lapsed;			/* its last lease lapsed without a report */
};

/*
 * Lock the task's row, or, for a success, delete it at once: it leaves the
 * outbox whatever else the report does, and should the report be refused
 * the error rolls the delete back.
 */
/* what lock_task reads of a task, in TaskRow's order */
#define TASK_ROW_COLUMNS \
	"saga_id, attempt, deliveries, lease_owner IS NOT NULL, " \
	"lease_owner IS NULL AND (attempt > 1 OR visible_at = 'infinity') " \
	"AND visible_at > pg_catalog.clock_timestamp(), " \
	"lease_owner IS NOT NULL AND visible_at > pg_catalog.clock_timestamp(), " \
	"visible_at <= pg_catalog.clock_timestamp(), visible_at = 'infinity', " \
	"lease_owner IS NULL AND deliveries > 0 AND lease_length IS NULL"

static bool
lock_task(int64 task_id, TaskRow *row, bool take)
{
	Oid			argtypes[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(task_id)};
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;

	if (take)
		SagaExecute(&plan_take,
					"DELETE FROM saga.outbox WHERE id = $1 RETURNING " TASK_ROW_COLUMNS,
					1, argtypes, values, NULL, SPI_OK_DELETE_RETURNING, "taking a task");
	else
		SagaExecute(&plan_task,
					"SELECT " TASK_ROW_COLUMNS " FROM saga.outbox WHERE id = $1 FOR UPDATE",
					1, argtypes, values, NULL, SPI_OK_SELECT, "locking a task");
	if (SPI_processed == 0)
		return false;
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	d = SPI_getbinval(tup, desc, 1, &isnull);
	row->saga_id = isnull ? -1 : DatumGetInt64(d);
	row->attempt = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
	row->deliveries = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
	row->leased = DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull));
	row->backing_off = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull));
	row->live_lease = DatumGetBool(SPI_getbinval(tup, desc, 6, &isnull));
	row->visible = DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull));
	row->parked = DatumGetBool(SPI_getbinval(tup, desc, 8, &isnull));
	row->lapsed = DatumGetBool(SPI_getbinval(tup, desc, 9, &isnull));
	return true;
}

pg_noreturn static void
task_not_found(int64 task_id)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("task %lld does not exist", (long long) task_id)));
}

pg_noreturn static void
task_finished(SagaState *st, int64 task_id, int step)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("task %lld has already finished", (long long) task_id),
			 errdetail("Step \"%s\" of saga %lld is %s; a different report for it is refused.",
					   st->def->steps[step].name, (long long) st->id,
					   step_status_names[st->step_status[step]])));
}

/*
 * A task that keeps failing retryably goes on retrying (compensations, and
 * steps past the pivot, have no other way out), but after
 * saga.compensation_incident_after attempts a person is told: the saga is
 * listed in saga.incidents while it keeps its status.
 */
static void
raise_incident(SagaState *st, int step, int attempt, Jsonb *error)
{
	if (attempt < saga_incident_after || st->incident != NULL)
		return;
	st->incident = incident_doc(st, step, attempt, error);
	add_event(st, "incident", step, st->incident);
}

/* the step the incident was about has recovered */
static void
clear_incident(SagaState *st, int step)
{
	JsonbValue	v;
	const char *name = st->def->steps[step].name;

	if (st->incident == NULL || strcmp(st->status, SAGA_FAILED) == 0)
		return;
	if (getKeyJsonValueFromContainer(&st->incident->root, "step", 4, &v) != NULL &&
		v.type == jbvString && v.val.string.len == (int) strlen(name) &&
		strncmp(v.val.string.val, name, v.val.string.len) == 0)
		st->incident = NULL;
}

/* the report of a compensation task that is still in the outbox */
static void
report_compensation(SagaState *st, int step, bool success, Jsonb *payload,
					bool retryable, int attempt)
{
	int64		task = SAGA_TASK_ID(st->id, step, true);

	if (success)
	{
		st->step_status[step] = STEP_COMPENSATED;
		add_event(st, "compensated", step, NULL);
		clear_incident(st, step);
		compensate(st);
	}
	else if (retryable)
	{
		/* compensations retry until they succeed: the delay is capped, not the count */
		int64		delay = SagaBackoffDelay(&st->def->steps[step].retry, attempt);
		JsonbParseState *ps = NULL;

		st->errors = jsonb_put(st->errors, st->def->steps[step].name, payload);
		SagaOutboxRetryLater(task, attempt + 1, delay, false);
		pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
		SagaJbInt(&ps, "attempt", attempt);
		SagaJbInt(&ps, "delay_ms", delay / 1000);
		SagaJbJsonb(&ps, "error", payload);
		add_event(st, "compensation_retry_scheduled", step, jb_finish(&ps));
		raise_incident(st, step, attempt, payload);
	}
	else
	{
		/*
		 * The task stays, out of sight, so saga.retry brings it back with its
		 * delivery count: a report under an old lease stays refused.
		 */
		SagaOutboxPark(task);
		st->errors = jsonb_put(st->errors, st->def->steps[step].name, payload);
		add_event(st, "compensation_failed", step, payload);
		st->incident = incident_doc(st, step, 0, payload);
		set_saga_status(st, SAGA_FAILED);
	}
}

/* the report of an action task that is still in the outbox */
static void
report_action(SagaState *st, int step, bool success, Jsonb *payload,
			  bool retryable, const TaskRow *row, SagaFence fence)
{
	int64		task = SAGA_TASK_ID(st->id, step, false);
	bool		running = strcmp(st->status, SAGA_RUNNING) == 0;
	int			attempt = row->attempt;

	st->attempts[step] = attempt;
	DELIVERY(st, step, false) = settled_by(row, fence);
	if (success)
	{
		step_succeeded(st, step, payload);
		if (running)
			advance(st);
		else
			compensate(st);		/* a late report: its effect is undone too */
	}
	else if (running && (st->pivoted ||
						 (retryable && attempt < st->def->steps[step].retry.max_attempts)))
		retry_forward(st, step, attempt, payload, true);
	else if (fence == FENCE_ENGINE && (row->leased || row->lapsed) && !st->pivoted)
	{
		/*
		 * The engine fails the step (its timeout passed, or its last lease
		 * lapsed) while a delivery of it may have acted and not said so:
		 * its outcome is unknown, so it is compensated, as a withdrawn
		 * sibling that was delivered is.  A late report under that lease is
		 * still recorded (report_absent).
		 */
		delete_task(st, task);
		step_in_doubt(st, step, payload, row->deliveries);
		if (running)
			begin_compensation(st);
		else
			compensate(st);
	}
	else
	{
		delete_task(st, task);
		step_failed(st, step, payload);
		if (running)
			begin_compensation(st);
		else
			compensate(st);
	}
}

/*
 * What fences reports once this one settles the task: the lease it quoted,
 * or, for a transactional poll (which holds no lease), -1, so that no lease
 * handed out before (one that lapsed, say) can report after it.  The
 * engine's own settling keeps the last lease: that delivery's late report is
 * still recorded (report_absent).
 */
static int32
settled_by(const TaskRow *row, SagaFence fence)
{
	return fence == FENCE_ROW_LOCK ? -1 : row->deliveries;
}

/*
 * A report for a task that is no longer in the outbox: a repeat of the
 * report that finished it, or the late report of a withdrawn step.
 */
static bool
report_absent(SagaState *st, int64 task_id, int step, bool comp, bool success, Jsonb *payload,
			  bool has_lease, int32 lease)
{
	const char *name = st->def->steps[step].name;
	int16		cur = st->step_status[step];

	if (has_lease && DELIVERY(st, step, comp) != 0 && lease != DELIVERY(st, step, comp) &&
		cur != STEP_SKIPPED && cur != STEP_PENDING)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("lease %d of task %lld is no longer held", lease, (long long) task_id),
				 DELIVERY(st, step, comp) > 0
				 ? errdetail("The task was reported under lease %d.", DELIVERY(st, step, comp))
				 : errdetail("The task was settled by a transactional poll, without a lease.")));

	if (comp)
	{
		if (cur == STEP_COMPENSATED && success)
			return false;
		if (cur == STEP_COMPENSATING && !success && st->incident != NULL &&
			jsonb_same(jsonb_get(st->incident, "error"), payload))
			return false;
		if (cur != STEP_COMPENSATING && cur != STEP_COMPENSATED)
			task_not_found(task_id);
		task_finished(st, task_id, step);
	}

	/* a step the engine failed in doubt: its late report is recorded */
	if (has_lease && lease == DELIVERY(st, step, false))
	{
		Jsonb	   *error = jsonb_get(st->errors, name);

		if (error != NULL && jsonb_get(error, "in_doubt") != NULL)
		{
			late_report(st, step, success, payload, lease);
			return true;
		}
		if (error != NULL && !success &&
			jsonb_same(jsonb_get(error, "late_error"), payload))
			return false;
	}

	switch (cur)
	{
		case STEP_SUCCEEDED:
		case STEP_COMPENSATING:
		case STEP_COMPENSATED:
			if (success && jsonb_same(jsonb_get(st->results, name), payload))
				return false;
			task_finished(st, task_id, step);
		case STEP_FAILED:
			if (!success && jsonb_same(jsonb_get(st->errors, name), payload))
				return false;
			task_finished(st, task_id, step);
		case STEP_IN_DOUBT:
			if (success)
				step_succeeded(st, step, payload);
			else
				step_failed(st, step, payload);
			compensate(st);
			return true;
		case STEP_SKIPPED:
			if (st->attempts[step] == 0)
				task_not_found(task_id);	/* never dispatched */
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("task %lld was withdrawn", (long long) task_id),
					 errdetail("Saga %lld stopped running before anyone took the task.",
							   (long long) st->id)));
			pg_unreachable();
		default:
			task_not_found(task_id);
	}
}

/*
 * A report for a task.  The fence says what entitles the reporter: a lease
 * number (leased claim), the caller's row lock (transactional poll: refused
 * while another worker holds a live lease on the task), or the engine itself
 * (a timeout or a lapsed lease).  Returns false for a repeat of the report
 * that settled the task, which changes nothing.
 */
bool
SagaReport(int64 task_id, bool success, Jsonb *payload, bool retryable,
		   SagaFence fence, int32 lease)
{
	int			step = SAGA_TASK_STEP(task_id);
	bool		comp = SAGA_TASK_IS_COMP(task_id);
	bool		has_lease = (fence == FENCE_LEASE);
	TaskRow		row = {0};
	bool		have_row;
	SagaState  *st;
	bool		recorded = true;

	if (task_id <= 0)
		task_not_found(task_id);

	/*
	 * The task row first, then the saga: the order every path takes.  The
	 * error context names the saga once it is known to exist, not from the
	 * bits of an id that may name nothing.
	 */
	have_row = lock_task(task_id, &row, success);
	if (have_row && row.saga_id != SAGA_TASK_SAGA(task_id))
		task_not_found(task_id);
	st = load_saga(SAGA_TASK_SAGA(task_id));
	if (st == NULL || step >= st->def->nsteps)
		task_not_found(task_id);
	SagaNoteWork(st->id, task_id, st->def->steps[step].name);
	if (!comp && st->def->steps[step].action.sql != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("task %lld is an SQL step's", (long long) task_id),
				 errdetail("Step \"%s\" of saga %lld runs in the database; only the engine reports it.",
						   st->def->steps[step].name, (long long) st->id)));
	if (!comp && st->def->steps[step].await != NULL && fence != FENCE_ENGINE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("task %lld is an await step's", (long long) task_id),
				 errdetail("Step \"%s\" of saga %lld succeeds when an event of type \"%s\" with its correlation id is published.",
						   st->def->steps[step].name, (long long) st->id, st->def->steps[step].await),
				 errhint("Publish the event with saga.publish.")));

	if (have_row)
	{
		Jsonb	   *last = jsonb_get(st->errors, st->def->steps[step].name);

		if (has_lease && lease != row.deliveries)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("lease %d of task %lld is no longer held", lease, (long long) task_id),
					 lease < row.deliveries
					 ? errdetail("The task has been delivered again since (delivery %d); a report under an earlier lease is refused.",
								 row.deliveries)
					 : errdetail("The task has been delivered %d times.", row.deliveries)));
		if (fence == FENCE_ROW_LOCK && row.live_lease)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("task %lld is leased to another worker", (long long) task_id),
					 errdetail("Delivery %d holds a lease on it that has not lapsed.",
							   row.deliveries),
					 errhint("Report with lease => n, the lease saga.claim returned, or wait until the lease lapses.")));
		if (has_lease && !row.leased)
		{
			/* this delivery already ended in a retryable failure */
			if (!success && retryable != row.parked && jsonb_same(last, payload))
				recorded = false;
			else
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("lease %d of task %lld has ended", lease, (long long) task_id),
						 row.lapsed
						 ? errdetail("The lease lapsed without a report; attempt %d waits for its next delivery.",
									 row.attempt)
						 : row.backing_off
						 ? errdetail("A retryable failure was reported under it; attempt %d waits for its retry delay.",
									 row.attempt)
						 : errdetail("The delivery was released, or its lease lapsed; attempt %d waits for its next delivery.",
									 row.attempt),
						 errhint("Drop this result: the next delivery does the work again.")));
		}
		else if (!has_lease && !success && row.backing_off &&
				 retryable != row.parked && jsonb_same(last, payload))
			recorded = false;	/* the failure that made it wait, again */
		else if (fence == FENCE_ROW_LOCK && !row.visible)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("task %lld is not visible", (long long) task_id),
					 errdetail("It waits for its next delivery, after a retry delay or saga.retry."),
					 errhint("A report without lease => n is for a task the transactional poll found visible and locked.")));
		else if (comp)
		{
			DELIVERY(st, step, true) = settled_by(&row, fence);
			report_compensation(st, step, success, payload, retryable, row.attempt);
		}
		else
			report_action(st, step, success, payload, retryable, &row, fence);
	}
	else
		recorded = report_absent(st, task_id, step, comp, success, payload, has_lease, lease);

	if (recorded)
		save_saga(st);
	else
		SagaTransitionEnd(st->id);
	return recorded;
}

/*
 * An event of an awaited type was published (saga.publish, after writing
 * it, holding the type's lock): every await step waiting for that type with
 * the event's correlation id succeeds, its result the payload.  The waiting
 * tasks are found as of the latest snapshot; an await step that became
 * ready in a transaction still open is not among them, but that transaction
 * waits for the type's lock and then finds this event (SagaAwaitedEvent).
 * A REPEATABLE READ publisher cannot lock a task committed after its
 * snapshot: it gets 40001, to retry, rather than miss it.
 */
void
SagaAwaitEvent(const char *type, const char *correlation_id, int64 event_id, Jsonb *payload,
			   TimestampTz published_at)
{
	static SPIPlanPtr plan_waiting = NULL;
	static SPIPlanPtr plan_still_there = NULL;
	Oid			types[3] = {TEXTOID, TEXTOID, TIMESTAMPTZOID};
	Datum		values[3] = {CStringGetTextDatum(type), CStringGetTextDatum(correlation_id),
	TimestampTzGetDatum(published_at)};
	int64	   *ids;
	int			n;

	/* only sagas that started before the event (not one it started itself) */
	SagaExecuteLatest(&plan_waiting,
					  "SELECT o.id FROM saga.outbox o JOIN saga.sagas s ON s.id = o.saga_id "
					  "WHERE o.awaits = $1 "
					  "AND o.headers OPERATOR(pg_catalog.->>) 'correlation_id' = $2 "
					  "AND s.started_at <= $3 ORDER BY o.id",
					  3, types, values, NULL, SPI_OK_SELECT, "finding await steps");
	n = (int) SPI_processed;
	ids = palloc(sizeof(int64) * (n + 1));
	for (int i = 0; i < n; i++)
	{
		bool		isnull;

		ids[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
	}
	for (int i = 0; i < n; i++)
	{
		int			step = SAGA_TASK_STEP(ids[i]);
		TaskRow		row = {0};
		SagaState  *st;

		if (!lock_task(ids[i], &row, true))
		{
			Oid			ttypes[1] = {INT8OID};
			Datum		tvalues[1] = {Int64GetDatum(ids[i])};

			/*
			 * Gone as of now too (its timeout, its saga's end, or an event
			 * this very loop published took it): nothing to do.  Still there
			 * as of now but not in this REPEATABLE READ snapshot: committed
			 * after it, which this transaction cannot lock.
			 */
			SagaExecuteLatest(&plan_still_there, "SELECT 1 FROM saga.outbox WHERE id = $1",
							  1, ttypes, tvalues, NULL, SPI_OK_SELECT, "finding an await step");
			if (SPI_processed > 0 && IsolationUsesXactSnapshot())
				ereport(ERROR,
						(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
						 errmsg("could not serialize access due to an await step that became ready concurrently"),
						 errdetail("Task %lld awaits event type \"%s\" and was written after this transaction's snapshot.",
								   (long long) ids[i], type)));
			continue;			/* its timeout or its saga's end took it first */
		}
		st = load_saga(SAGA_TASK_SAGA(ids[i]));
		if (st == NULL)
			continue;
		if (step >= st->def->nsteps || st->def->steps[step].await == NULL)
			elog(ERROR, "saga: await task %lld does not match its saga", (long long) ids[i]);
		if (st->step_status[step] != STEP_READY)
		{
			/* withdrawn while we waited for the saga: its row goes with this publish */
			SagaTransitionEnd(st->id);
			continue;
		}
		SagaNoteWork(st->id, ids[i], st->def->steps[step].name);
		DELIVERY(st, step, false) = settled_by(&row, FENCE_ENGINE);
		await_succeeded(st, step, event_id, payload);
		if (strcmp(st->status, SAGA_RUNNING) == 0)
			advance(st);
		else
			compensate(st);
		save_saga(st);
	}
}

/*
 * A withdrawn task came back to the outbox's surface: the poller that held
 * it when its saga stopped running rolled back, or its lease lapsed without
 * a report.  Never delivered: nothing happened, skip it.  Delivered: the
 * worker may have acted and vanished, so its effect is compensated in doubt
 * (compensations must tolerate an action that did not happen).
 */
void
SagaSettleWithdrawn(int64 task_id)
{
	int			step = SAGA_TASK_STEP(task_id);
	TaskRow		row = {0};
	SagaState  *st;
	JsonbParseState *ps = NULL;

	if (!lock_task(task_id, &row, false))
		return;
	st = load_saga(SAGA_TASK_SAGA(task_id));
	if (st == NULL)
		return;
	/* past the pivot nothing is withdrawn: a failed saga there moves forward */
	if (step >= st->def->nsteps || strcmp(st->status, SAGA_RUNNING) == 0 || st->pivoted)
	{
		SagaTransitionEnd(st->id);
		return;
	}

	delete_task(st, task_id);
	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	if (row.deliveries == 0)
	{
		st->step_status[step] = STEP_SKIPPED;
		SagaJbStr(&ps, "outcome", "skipped");
	}
	else
	{
		/*
		 * Not leased, yet its lease did not lapse (a lapse drops the lease
		 * length): it was given back with saga.release.
		 */
		const char *how = (!row.leased && !row.lapsed) ? "released without a report"
			: "lease lapsed without a report";

		(void) mark_in_doubt(st, step, jsonb_reason(psprintf("withdrawn: %s", how)),
							 row.deliveries);
		SagaJbStr(&ps, "outcome", psprintf("%s: compensated in doubt", how));
	}
	add_event(st, "withdrawn", step, jb_finish(&ps));
	compensate(st);
	save_saga(st);
}

/* the saga's deadline passed: compensate everything, unless past the pivot */
void
SagaDeadlinePassed(int64 saga_id)
{
	SagaState  *st = load_saga(saga_id);
	JsonbParseState *ps = NULL;

	if (st == NULL)
		return;
	st->deadline_done = true;
	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	if (strcmp(st->status, SAGA_RUNNING) != 0)
		SagaJbStr(&ps, "outcome", "already stopped running");
	else if (st->pivoted)
		SagaJbStr(&ps, "outcome", "past the pivot: moving forward");
	else
		SagaJbStr(&ps, "outcome", "compensating");
	add_event(st, "deadline_passed", -1, jb_finish(&ps));
	if (strcmp(st->status, SAGA_RUNNING) == 0 && !st->pivoted)
		begin_compensation(st);
	save_saga(st);
}

/* a task's lease lapsed once too often, or its timeout passed */
void
SagaExhaustTask(int64 task_id, const char *why)
{
	(void) SagaReport(task_id, false, jsonb_reason(why), false, FENCE_ENGINE, 0);
}

void
SagaCancel(int64 saga_id, const char *reason)
{
	SagaState  *st = load_saga(saga_id);
	JsonbParseState *ps = NULL;

	if (st == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("saga %lld does not exist", (long long) saga_id)));
	if (strcmp(st->status, SAGA_COMPENSATING) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("saga %lld is already compensating", (long long) saga_id)));
	if (strcmp(st->status, SAGA_RUNNING) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("saga %lld has already finished", (long long) saga_id),
				 errdetail("Its status is \"%s\".", st->status)));
	if (st->pivoted)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("saga %lld cannot be cancelled", (long long) saga_id),
				 errdetail("It has passed its pivot step and can only move forward.")));

	st->cancel_requested = true;
	st->cancel_reason = reason ? pstrdup(reason) : NULL;
	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	SagaJbStr(&ps, "reason", reason);
	add_event(st, "cancel_requested", -1, jb_finish(&ps));
	begin_compensation(st);
	save_saga(st);
}

/* the ids of the saga's tasks that are in the outbox */
static int
saga_tasks(int64 saga_id, int64 *out)
{
	Oid			types[2] = {INT8OID, INT8OID};
	Datum		values[2] = {Int64GetDatum(SAGA_TASK_ID(saga_id, 0, false)),
	Int64GetDatum(SAGA_TASK_ID(saga_id + 1, 0, false))};
	bool		isnull;

	SagaExecute(&plan_saga_tasks,
				"SELECT id FROM saga.outbox WHERE id >= $1 AND id < $2 "
				"AND visible_at = 'infinity'",
				2, types, values, NULL, SPI_OK_SELECT, "listing a saga's tasks");
	for (uint64 i = 0; i < SPI_processed; i++)
		out[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
	return (int) SPI_processed;
}

void
SagaRetryFailed(int64 saga_id)
{
	SagaState  *st = load_saga(saga_id);

	if (st == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("saga %lld does not exist", (long long) saga_id)));
	if (strcmp(st->status, SAGA_FAILED) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("saga %lld has not failed", (long long) saga_id),
				 errdetail("Its status is \"%s\".", st->status),
				 errhint("saga.retry resumes a saga listed in saga.incidents.")));

	st->incident = NULL;
	add_event(st, "retried", -1, NULL);
	if (st->pivoted)
	{
		/* a synchronous SQL step failed after the pivot: run forward again */
		for (int i = 0; i < st->def->nsteps; i++)
			if (st->step_status[i] == STEP_FAILED)
				st->step_status[i] = STEP_PENDING;
		set_saga_status(st, SAGA_RUNNING);
		advance(st);
	}
	else
	{
		int64	   *present = palloc(sizeof(int64) * st->def->nsteps * 2);
		int			npresent = saga_tasks(saga_id, present);

		set_saga_status(st, SAGA_COMPENSATING);
		for (int i = 0; i < st->def->nsteps; i++)
		{
			bool		parked = false;

			if (st->step_status[i] != STEP_COMPENSATING)
				continue;
			for (int k = 0; k < npresent; k++)
				if (present[k] == SAGA_TASK_ID(saga_id, i, true))
					parked = true;
			if (parked)
			{
				SagaOutboxUnpark(SAGA_TASK_ID(saga_id, i, true));
				add_event(st, "compensation_dispatched", i, NULL);
			}
			else if (st->def->steps[i].compensate.sql != NULL)
				st->step_status[i] = STEP_SUCCEEDED;	/* compensate() runs it again */
		}
		compensate(st);
	}
	save_saga(st);
}

/* ---------- isolating time-based work ---------- */

/* how long the time-based work of a saga that raised waits before it is tried again */
#define QUARANTINE_SECS 60

/*
 * The work of one saga failed: record why on the saga (an incident, and a
 * history event), and move the due time that selected it a minute on, so
 * that the worker neither spins on it nor stops serving the others.  Runs
 * in a subtransaction of its own; if even that fails, the log has it.
 */
static void
quarantine(int64 id, bool is_task, ErrorData *edata)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	int64		saga_id = is_task ? SAGA_TASK_SAGA(id) : id;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		Oid			types[5] = {INT8OID, INT8OID, TIMESTAMPTZOID, JSONBOID, TEXTOID};
		Datum		values[5];
		char		nulls[6] = "     ";
		TimestampTz again = GetCurrentTimestamp() + QUARANTINE_SECS * USECS_PER_SEC;
		JsonbParseState *ps = NULL;
		Jsonb	   *detail;
		static SPIPlanPtr plan_quarantine = NULL;

		pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
		SagaJbStr(&ps, "message", clip_text(edata->message));
		SagaJbStr(&ps, "sqlstate", unpack_sql_state(edata->sqlerrcode));
		if (is_task)
			SagaJbInt(&ps, "task", id);
		SagaJbInt(&ps, "retry_in_s", QUARANTINE_SECS);
		detail = jb_finish(&ps);

		values[0] = Int64GetDatum(saga_id);
		values[1] = Int64GetDatum(is_task ? id : 0);
		values[2] = TimestampTzGetDatum(again);
		values[3] = JsonbPGetDatum(detail);
		values[4] = CStringGetTextDatum(SagaActorName());
		SagaExecute(&plan_quarantine,
					"WITH o AS (UPDATE saga.outbox SET "
					"timeout_at = CASE WHEN timeout_at <= pg_catalog.clock_timestamp() THEN $3 "
					"ELSE timeout_at END, "
					"visible_at = CASE WHEN visible_at <= pg_catalog.clock_timestamp() THEN $3 "
					"ELSE visible_at END "
					"WHERE id = $2 RETURNING step), "
					"s AS (UPDATE saga.sagas SET "
					"deadline_at = CASE WHEN $2 = 0 AND deadline_at <= pg_catalog.clock_timestamp() "
					"THEN $3 ELSE deadline_at END, "
					"incident = COALESCE(incident, pg_catalog.jsonb_build_object("
					"'step', (SELECT step FROM o), 'error', $4, "
					"'since', pg_catalog.clock_timestamp(), 'work_failed', true)) "
					"WHERE id = $1 RETURNING id) "
					"INSERT INTO saga.history_log (saga_id, at, actor, events, steps, details) "
					"SELECT $1, pg_catalog.clock_timestamp(), $5, '{work_failed}', "
					"ARRAY[(SELECT step FROM o)], ARRAY[$4] FROM s",
					5, types, values, nulls, SPI_OK_INSERT, "recording failed work");
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		EmitErrorReport();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
}

/*
 * Run one saga's share of the time-based work (a timeout, a lapsed lease, a
 * deadline, a withdrawn task to settle) in a subtransaction, so that one
 * saga whose work raises (an SQL compensation that errors, a corrupt row)
 * rolls back only its own change.  The worker's round, saga.tick() and
 * saga.claim go on with the others; the failure is logged with the saga's
 * context and recorded on it (see quarantine).  Returns false if it failed.
 */
bool
SagaIsolated(SagaWorkFn fn, int64 id, const char *why, bool id_is_task)
{
	ErrorData  *edata;

	/* a saga.tick() nested in this saga's own SQL step leaves the saga to its caller */
	if (SagaTransitionActive(id_is_task ? SAGA_TASK_SAGA(id) : id))
		return true;
	SagaNoteWork(id_is_task ? SAGA_TASK_SAGA(id) : id, id_is_task ? id : 0, NULL);
	edata = SagaTryWork(fn, id, why);
	if (edata == NULL)
		return true;
	ereport(LOG,
			(errcode(edata->sqlerrcode),
			 errmsg("saga %lld: time-based work failed, retrying in %d s: %s",
					(long long) (id_is_task ? SAGA_TASK_SAGA(id) : id), QUARANTINE_SECS,
					clip_text(edata->message)),
			 edata->detail ? errdetail("%s", clip_text(edata->detail)) : 0));
	quarantine(id, id_is_task, edata);
	FreeErrorData(edata);
	return false;
}

/*
 * The background worker runs an SQL step past the pivot again (see
 * sql_retry_later): on success the saga goes on, on failure the next retry
 * waits for the step's backoff, and after saga.compensation_incident_after
 * attempts the saga is listed in saga.incidents, still running.  A task whose
 * step no longer waits for it is dropped.
 */
void
SagaRetrySqlStep(int64 task_id, const char *why)
{
	int			step = SAGA_TASK_STEP(task_id);
	SagaState  *st = load_saga(SAGA_TASK_SAGA(task_id));
	Jsonb	   *out;

	if (st == NULL)
		return;
	if (step >= st->def->nsteps || SAGA_TASK_IS_COMP(task_id) ||
		st->def->steps[step].action.sql == NULL || st->step_status[step] != STEP_READY ||
		!st->pivoted || strcmp(st->status, SAGA_RUNNING) != 0)
	{
		delete_task(st, task_id);
		save_saga(st);
		return;
	}
	SagaNoteWork(st->id, task_id, st->def->steps[step].name);
	st->attempts[step]++;
	add_event(st, "dispatched", step, NULL);
	if (run_sql(st, st->def->steps[step].action.sql, &out))
	{
		delete_task(st, task_id);
		clear_incident(st, step);
		step_succeeded(st, step, out);
		advance(st);
	}
	else
		sql_retry_later(st, step, out, true);
	save_saga(st);
}

/* SagaWorkFn adapters for the work that needs no reason */
void
SagaSettleWithdrawnWork(int64 task_id, const char *why)
{
	SagaSettleWithdrawn(task_id);
}

void
SagaDeadlineWork(int64 saga_id, const char *why)
{
	SagaDeadlinePassed(saga_id);
}
