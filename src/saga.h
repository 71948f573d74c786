/*-------------------------------------------------------------------------
 *
 * saga.h
 *	  Declarations shared by the subsystems of the saga extension.
 *
 * Subsystems: saga.c (module init, GUCs, running as the engine's role),
 * definition.c (parsing, validation and caching of definitions),
 * engine.c (the state machine of one saga instance), outbox.c (tasks,
 * claims, leases), api.c (the SQL-callable entry points) and worker.c (the
 * launcher and workers, saga.tick(), and how LISTENers and the worker are
 * woken).
 *
 *-------------------------------------------------------------------------
 */
#ifndef SAGA_H
#define SAGA_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "fmgr.h"
#include "executor/spi.h"
#include "nodes/execnodes.h"
#include "utils/array.h"
#include "utils/jsonb.h"

#include "compat.h"

/*
 * Task ids encode their saga, step and kind, so a task keeps its id across
 * retries and a late report finds its saga without an index on the task.
 */
#define SAGA_MAX_STEPS			512
#define SAGA_TASK_ID(saga_id, step, comp) \
	(((int64) (saga_id) << 10) | ((int64) (step) << 1) | ((comp) ? 1 : 0))
#define SAGA_TASK_SAGA(task_id)	((int64) (task_id) >> 10)
#define SAGA_TASK_STEP(task_id)	((int) (((task_id) >> 1) & 0x1FF))
#define SAGA_TASK_IS_COMP(task_id) (((task_id) & 1) != 0)

/*
 * Bounds on every input, checked before anything is stored (README,
 * "Limits").  Lengths are in bytes.  Intervals are at most ten years so that
 * any sum of them with the current time stays far inside timestamptz.
 */
#define SAGA_MAX_NAME_LEN		(NAMEDATALEN - 1)	/* saga and step names */
#define SAGA_MAX_TOPIC_LEN		48
#define SAGA_MAX_ID_LEN			255 /* correlation ids, idempotency keys, worker names */
#define SAGA_MAX_REASON_LEN		1024	/* cancel reasons */
#define SAGA_TRACEPARENT_LEN	55
#define SAGA_MAX_INTERVAL_DAYS	3650
#define SAGA_MAX_INTERVAL		((int64) SAGA_MAX_INTERVAL_DAYS * USECS_PER_DAY)

/*
 * SQL over saga.outbox o: the task is an action of a saga that stopped
 * running, withdrawn (to be settled, not delivered).  Past its pivot a saga
 * withdraws nothing, also while it waits for saga.retry.
 */
#define SAGA_SQL_WITHDRAWN \
	"(o.kind = 'action' AND NOT EXISTS (SELECT FROM saga.sagas s " \
	"WHERE s.id = o.saga_id AND (s.status = 'running' OR s.pivoted)))"

/* step_status codes, as stored in saga.sagas.step_status */
typedef enum SagaStepStatus
{
	STEP_PENDING = 0,
	STEP_READY = 1,				/* task in the outbox */
	STEP_IN_DOUBT = 2,			/* withdrawn while delivered: awaits its report */
	STEP_SUCCEEDED = 3,
	STEP_FAILED = 4,
	STEP_COMPENSATING = 5,		/* compensation task in the outbox */
	STEP_COMPENSATED = 6,
	STEP_SKIPPED = 7
} SagaStepStatus;

/* saga statuses */
#define SAGA_RUNNING		"running"
#define SAGA_COMPLETED		"completed"
#define SAGA_COMPENSATING	"compensating"
#define SAGA_COMPENSATED	"compensated"
#define SAGA_FAILED			"failed"
#define SAGA_CANCELLED		"cancelled"

typedef struct SagaRetry
{
	int			max_attempts;
	int64		initial_delay;	/* microseconds */
	double		backoff;
	int64		max_delay;		/* microseconds */
	bool		jitter;
} SagaRetry;

/* one side of a step: its action or its compensation */
typedef struct SagaAction
{
	char	   *topic;			/* dispatched through the outbox, or */
	char	   *sql;			/* run in-database: "schema.fn" */
	Oid			fn;				/* resolved fn(jsonb) */
} SagaAction;

typedef struct SagaStepDef
{
	char	   *name;
	SagaAction	action;
	SagaAction	compensate;		/* both NULL: nothing to undo */
	int			nafter;
	int		   *after;			/* indexes of the steps this one waits for */
	int			ndependents;
	int		   *dependents;		/* indexes of the steps that wait for this */
	SagaRetry	retry;
	int64		timeout;		/* microseconds, 0 = none */
	bool		pivot;
	bool		retry_given;	/* the document had "retry" (define-time checks) */
	char	   *await;			/* an await step: the event type it waits for */
	char	   *publish;		/* event type published when the step succeeds */
} SagaStepDef;

typedef struct SagaDef
{
	int32		id;
	char	   *name;
	int32		version;
	char	   *owner;			/* name of the role that defined it: runs its
								 * SQL steps; NULL if that role is gone */
	int			nsteps;
	SagaStepDef *steps;
	int64		deadline;		/* microseconds, 0 = none */
	/* event types published when the saga ends so ("publish"), or NULL */
	char	   *publish_completed;
	char	   *publish_compensated;
	char	   *publish_cancelled;
	bool		has_awaits;		/* some step is an await step */
} SagaDef;

/* saga.c */
typedef struct SagaUserSave
{
	Oid			userid;
	int			sec_context;
	Oid			prev_caller;
	int			prev_nactive;
	ErrorContextCallback errcb;
	int64		prev_work_saga;
	int64		prev_work_task;
	char		prev_work_step[NAMEDATALEN];
} SagaUserSave;

/* what run_sql saves around a guest call (see SagaGuestBegin) */
typedef struct SagaGuestSave
{
	int			depth;
	Oid			caller;
	int			nactive;
} SagaGuestSave;

extern int	saga_max_payload_size;
extern const char *saga_actor;

extern void _PG_init(void);
extern Oid	SagaEnter(SagaUserSave *save);
extern void SagaLeave(SagaUserSave *save);
extern void SagaGuestBegin(SagaGuestSave *save);
extern void SagaGuestEnd(SagaGuestSave *save);
extern void SagaTransitionBegin(int64 saga_id);
extern void SagaTransitionEnd(int64 saga_id);
extern bool SagaTransitionActive(int64 saga_id);
extern void SagaNoteWork(int64 saga_id, int64 task_id, const char *step);
extern void SagaNoteSaga(int64 saga_id);
extern void SagaCheckPayload(Jsonb *value, const char *what);
extern char *SagaTextArg(text *t, int limit, const char *argname);
extern char *SagaClip(const char *s, int limit);
extern void SagaJbKey(JsonbParseState **ps, const char *key);
extern void SagaJbStr(JsonbParseState **ps, const char *key, const char *value);
extern void SagaJbInt(JsonbParseState **ps, const char *key, int64 value);
extern void SagaJbBool(JsonbParseState **ps, const char *key, bool value);
extern void SagaJbJsonb(JsonbParseState **ps, const char *key, Jsonb *value);
extern char *SagaTraceparentArg(FunctionCallInfo fcinfo, int argno);
extern void SagaCheckTopic(const char *topic);
extern void SagaRequireArg(FunctionCallInfo fcinfo, int argno, const char *name);
extern char *SagaOptionalText(FunctionCallInfo fcinfo, int argno, const char *name, int limit);
extern bool SagaIntervalUsecs(const Interval *iv, int64 *usecs);
extern int64 SagaCheckInterval(const Interval *iv, const char *argname);
extern Oid	SagaGuestFunction(const char *fname, Oid definer, bool missing_ok);
extern const char *SagaActorName(void);
extern void SagaSpiCheck(int rc, int expected, const char *what);
extern SPIPlanPtr SagaPrepare(SPIPlanPtr *cache, const char *sql, int nargs, Oid *argtypes);
extern void SagaExecute(SPIPlanPtr *cache, const char *sql, int nargs, Oid *argtypes,
						Datum *values, const char *nulls, int expected, const char *what);
extern void SagaExecuteLatest(SPIPlanPtr *cache, const char *sql, int nargs, Oid *argtypes,
							  Datum *values, const char *nulls, int expected, const char *what);
extern bool SagaValidTopic(const char *topic);
extern bool SagaValidTraceparent(const char *tp);
extern char *SagaNewTraceparent(void);
extern char *SagaChildTraceparent(const char *parent);

/* definition.c */
typedef struct SagaDocParse
{
	const char *what;			/* 'saga definition "x"', for messages */
	bool		resolve;		/* look up SQL functions (at define time) */
	Oid			caller;
	bool		range_is_invalid;	/* an interval out of range is 22023, not 22008 */
} SagaDocParse;

pg_noreturn extern void SagaDocError(int sqlstate, const SagaDocParse *p, const char *path,
									 const char *msg);
extern void SagaDocExpect(const SagaDocParse *p, JsonbValue *v, const char *want,
						  const char *path);
extern void SagaDocCheckKeys(const SagaDocParse *p, JsonbContainer *obj,
							 const char *const *allowed, const char *path);
extern bool SagaDocGetKey(JsonbContainer *obj, const char *key, JsonbValue *out);
extern char *SagaDocString(const SagaDocParse *p, JsonbValue *v, const char *path);
extern double SagaDocNumber(const SagaDocParse *p, JsonbValue *v, const char *path);
extern int64 SagaDocInterval(const SagaDocParse *p, JsonbValue *v, const char *path);
extern void SagaDocRetry(const SagaDocParse *p, JsonbValue *rv, SagaRetry *r, const char *path);
extern void SagaDefaultRetry(SagaRetry *r);
extern const char *SagaEcho(const char *s);
extern bool SagaValidName(const char *s, int maxlen);
extern SagaDef *SagaDefinitionLoad(int32 def_id);
extern SagaDef *SagaDefinitionLatest(const char *name);
extern Oid	SagaDefinitionDefiner(SagaDef *def);
extern void SagaDefinitionInit(void);

/* engine.c */
typedef struct SagaState SagaState;

extern int64 SagaStart(SagaDef *def, Jsonb *input, const char *correlation_id,
					   const char *idempotency_key, const char *traceparent, int64 event_id);
extern void SagaAwaitEvent(const char *type, const char *correlation_id, int64 event_id,
						   Jsonb *payload, TimestampTz published_at);
extern bool SagaTypeAwaited(const char *type);
/* how a report proves it may settle its task */
typedef enum SagaFence
{
	FENCE_ENGINE,				/* the engine itself: a timeout, a lapse */
	FENCE_ROW_LOCK,				/* the transactional poll: the caller's row lock */
	FENCE_LEASE					/* a leased claim: the lease number */
} SagaFence;

extern bool SagaReport(int64 task_id, bool success, Jsonb *payload,
					   bool retryable, SagaFence fence, int32 lease);
extern void SagaCancel(int64 saga_id, const char *reason);
extern void SagaRetryFailed(int64 saga_id);
extern void SagaExhaustTask(int64 task_id, const char *why);
extern void SagaSettleWithdrawn(int64 task_id);
extern void SagaDeadlinePassed(int64 saga_id);
extern int64 SagaBackoffDelay(const SagaRetry *retry, int attempt);

typedef void (*SagaWorkFn) (int64 id, const char *why);
extern bool SagaIsolated(SagaWorkFn fn, int64 id, const char *why, bool id_is_task);
extern ErrorData *SagaTryWork(SagaWorkFn fn, int64 id, const char *why);
extern void SagaSettleWithdrawnWork(int64 task_id, const char *why);
extern void SagaDeadlineWork(int64 saga_id, const char *why);
extern void SagaRetrySqlStep(int64 task_id, const char *why);

/*
 * The outbox topic of SQL steps past the pivot that wait to be retried by
 * the background worker: not a valid topic name, so saga.claim cannot take
 * it and no LISTEN channel is woken for it.
 */
#define SAGA_SQL_RETRY_TOPIC	"saga sql"

/*
 * The outbox topic of await steps waiting for their event: never visible
 * (visible_at is infinity), never claimable; its rows carry the awaited
 * type in saga.outbox.awaits, found by saga.publish through outbox_await.
 */
#define SAGA_AWAIT_TOPIC		"saga await"

/* outbox.c */
typedef struct SagaNewTask
{
	int64		id;
	const char *topic;
	const char *kind;
	const char *step;
	int32		max_attempts;	/* 0 = unlimited */
	int64		timeout;		/* microseconds, 0 = none */
	const char *awaits;			/* an await step's event type, or NULL */
} SagaNewTask;

extern void SagaOutboxEnqueued(SagaNewTask *tasks, int ntasks, TimestampTz written_at);
extern int	SagaOutboxWithdraw(int64 *ids, int nids, int64 *withdrawn);
extern void SagaOutboxRetryLater(int64 task_id, int attempt, int64 delay_us,
								 bool drop_timeout);
extern void SagaOutboxPark(int64 task_id);
extern void SagaOutboxSetPayload(int64 task_id, Jsonb *payload);
extern void SagaOutboxUnpark(int64 task_id);
extern void SagaOutboxLapse(int64 task_id);
extern void SagaOutboxLapseWork(int64 task_id, const char *why);

/* what becomes of a task a claim found */
typedef enum SagaTaskFate
{
	TASK_DELIVER,
	TASK_WITHDRAWN,				/* its saga withdrew it: settle, not deliver */
	TASK_TIMED_OUT,
	TASK_EXHAUSTED				/* its lapsed lease was its last attempt */
} SagaTaskFate;

extern int	SagaOutboxCandidates(const char *topic, TimestampTz now, int max_tasks,
								 int64 **ids, ItemPointerData **tids, SagaTaskFate **fates);
extern int	SagaOutboxWithdrawnOf(int64 *ids, int n, bool *withdrawn);
extern void SagaOutboxLease(int64 *ids, ItemPointerData *tids, int n, const char *worker,
							int64 lease_us, TimestampTz now, ReturnSetInfo *rsinfo,
							MemoryContext result_cxt);
extern TimestampTz SagaOutboxHeartbeat(int64 task_id, int32 lease, int64 extend_us, bool *cancelled);
extern bool SagaOutboxRelease(int64 task_id, int32 lease);
extern bool SagaOutboxTaskExisted(int64 task_id);

/* api.c */
extern void SagaExhaustAny(int64 task_id, const char *why);

/* event.c */
#define SAGA_MAX_EVENT_TYPE_LEN	63
#define SAGA_MAX_SUBSCRIPTIONS	1000	/* per event type */
#define SAGA_MAX_REPLAY			100000	/* deliveries per replay */

typedef struct SagaPublished
{
	int64		id;				/* the event's id */
	bool		existed;		/* an earlier event with the idempotency key */
} SagaPublished;

extern int	saga_max_hops;
extern int	saga_filter_timeout;

extern bool SagaValidEventType(const char *type);
/* the idempotency keys of sagas that events start ("event:<event id>") */
#define SAGA_EVENT_KEY_PREFIX	"event:"
/*
 * Sagas started by events and events published by sagas, within one
 * outermost call: a loop between definitions and start_saga subscriptions
 * is refused past these, whatever the hop limit allows (README, "Limits").
 */
#define SAGA_MAX_CASCADE		1000
#define SAGA_MAX_CASCADE_DEPTH	64

/* what a publish's causation_id is */
typedef enum SagaCause
{
	SAGA_NO_CAUSE,
	SAGA_CAUSE,					/* an event that must exist (42704 if not) */
	SAGA_CAUSE_IF_RETAINED		/* left out if retention purged it */
} SagaCause;

extern int64 SagaPublish(const char *type, Jsonb *payload, const char *correlation_id,
						 int64 causation_id, SagaCause cause, const char *key,
						 const char *idempotency_key, const char *traceparent);
extern bool SagaAwaitedEvent(const char *type, const char *correlation_id, TimestampTz since,
							 int64 *event_id, Jsonb **payload);
extern void SagaCascadeEnter(void);
extern void SagaCascadeReset(void);
extern void SagaCascadeLeave(void);
extern void SagaLockAwaitedType(const char *type);
extern bool SagaDeliveryReport(int64 task_id, bool success, Jsonb *payload, bool retryable,
							   SagaFence fence, int32 lease);
extern void SagaDeliveryExhaust(int64 task_id, const char *why);
extern bool SagaDeliveryExisted(int64 task_id);
extern int64 SagaSubscribeAs(const char *type, const char *topic, Jsonb *options,
							 const char *choreography, Oid caller);
extern bool SagaChoreographyInstalled(void);
extern bool SagaBridgesInstalled(void);
extern void SagaRequireBridges(const char *what);
extern void SagaEventInit(void);
extern Oid	SagaRelid(const char *relname);

/* choreography.c */
/*
 * What an event does to the flows of its correlation id (SagaFlowObserve),
 * for the publish statement to write in the CTEs below.
 */
typedef struct SagaFlowVerdict
{
	int			hop_limit;		/* the limit that applied */
	bool		over_limit;		/* deliver nothing */
	bool		late;			/* after its flow finished */
	bool		written_late;	/* what the publish statement wrote as late */
	char	   *type;
	char	   *correlation_id;
	int			hops;
	/* flows whose row changes, with the status and seen they were read with */
	int			nflows;
	Datum	   *flow_ids;
	Datum	   *statuses;
	Datum	   *seen;			/* text of a text[] each */
	Datum	   *waiting_on;		/* text of a text[] each */
	Datum	   *incidents;		/* jsonb or NULL */
	bool	   *incident_nulls;
	Datum	   *finished;		/* bool: finished now */
	Datum	   *keep_deadline;	/* bool: still running */
	Datum	   *old_statuses;
	Datum	   *old_seen;
	/* flows the event begins */
	int			nnew;
	Datum	   *new_names;
	Datum	   *new_versions;
	Datum	   *new_choreo_ids;
	Datum	   *new_statuses;
	Datum	   *new_seen;
	Datum	   *new_waiting;
	Datum	   *new_deadlines;
	bool	   *new_deadline_nulls;
} SagaFlowVerdict;

/*
 * The flows' share of a publish statement: f updates each flow still as it
 * was read, n begins the new ones where nobody has; the statement returns
 * what they wrote (SAGA_SQL_FLOW_RESULT) for SagaFlowSettle.  $1 is the
 * event id, $4 the correlation id, $9 the time, $19 to $34 the arrays of
 * SagaFlowWriteArrays.
 */
#define SAGA_FLOW_FIRST_PARAM	19
#define SAGA_FLOW_ARRAYS		16
#define SAGA_SQL_FLOW_CTES \
	"f AS (UPDATE saga.flows fl SET status = d.status, seen = d.seen::pg_catalog.text[], " \
	"waiting_on = d.waiting::pg_catalog.text[], incident = COALESCE(d.incident, fl.incident), " \
	"finished_at = CASE WHEN d.finished THEN $9 ELSE fl.finished_at END, " \
	"deadline_at = CASE WHEN d.running THEN fl.deadline_at END, last_event_id = $1, updated_at = $9 " \
	"FROM ROWS FROM (pg_catalog.unnest($19), pg_catalog.unnest($20), pg_catalog.unnest($21), " \
	"pg_catalog.unnest($22), pg_catalog.unnest($23), pg_catalog.unnest($24), pg_catalog.unnest($25), " \
	"pg_catalog.unnest($26), pg_catalog.unnest($27)) " \
	"AS d(id, status, seen, waiting, incident, finished, running, old_status, old_seen) " \
	"WHERE fl.id = d.id AND fl.status = d.old_status AND fl.seen = d.old_seen::pg_catalog.text[] " \
	"RETURNING fl.id), " \
	"n AS (INSERT INTO saga.flows (choreography, version, correlation_id, status, started_at, " \
	"waiting_on, choreography_id, seen, last_event_id, deadline_at, updated_at, finished_at) " \
	"SELECT d.name, d.version, $4, d.status, $9, d.waiting::pg_catalog.text[], d.cid, " \
	"d.seen::pg_catalog.text[], $1, d.deadline, $9, " \
	"CASE WHEN d.status IN ('running', 'compensating') THEN NULL ELSE $9 END " \
	"FROM ROWS FROM (pg_catalog.unnest($28), pg_catalog.unnest($29), pg_catalog.unnest($30), " \
	"pg_catalog.unnest($31), pg_catalog.unnest($32), pg_catalog.unnest($33), pg_catalog.unnest($34)) " \
	"AS d(name, version, cid, status, seen, waiting, deadline) " \
	"ON CONFLICT (choreography, correlation_id) DO NOTHING RETURNING choreography_id)"
#define SAGA_SQL_FLOW_RESULT \
	"SELECT ARRAY(SELECT id FROM f), ARRAY(SELECT choreography_id FROM n)"

extern const Oid SagaFlowArrayTypes[SAGA_FLOW_ARRAYS];

extern void SagaFlowObserve(const char *type, const char *correlation_id, int64 event_id,
							int hops, TimestampTz now, SagaFlowVerdict *v);
extern bool SagaFlowMayConcern(const char *type, int hops);
extern void SagaFlowWriteArrays(SagaFlowVerdict *v, Datum *out);
extern void SagaFlowSettle(SagaFlowVerdict *v, ArrayType *updated, ArrayType *created,
						   int64 event_id, TimestampTz now);
extern void SagaFlowApply(SagaFlowVerdict *v, int64 event_id, TimestampTz now);
extern void SagaFlowWrite(SagaFlowVerdict *v, int64 event_id, TimestampTz now);
extern void SagaFlowDeadlineWork(int64 flow_id, const char *why);
extern int	SagaFlowIsolated(int64 flow_id);
extern bool SagaNameIsChoreography(const char *name);
extern void SagaChoreographyInit(void);

/* worker.c */
extern int	saga_incident_after;
extern int	saga_retention;
extern int	saga_batch_size;

extern char *saga_databases;
extern bool saga_is_worker;

extern void SagaWorkerInit(void);

/* cdc.c */
extern bool saga_cdc;

extern void SagaCdcInit(void);

/* wakeup.c */
#define SAGA_MAX_WORKERS	32
#define SAGA_TOPIC_SIZE		(SAGA_MAX_TOPIC_LEN + 1)

extern bool saga_notify;

extern void SagaWakeAt(TimestampTz due);
extern void SagaVisibleAt(TimestampTz visible_at);
extern void SagaAnnounce(const char *topic);
extern void SagaNotifyTopic(const char *topic);
extern void SagaWakeupInit(void);
extern pid_t SagaWakeupAttach(Oid dboid);
extern bool SagaWakeupAttached(Oid dboid);
extern TimestampTz SagaWakeupNext(void);
extern void SagaWakeupSetNext(TimestampTz next);
extern void SagaWakeupLowerNext(TimestampTz next);
extern TimestampTz SagaWakeupTakeNotifyFrom(void);
extern bool SagaWakeupNotifyPending(void);
extern void SagaWakeupAnnounceQueued(void);
extern int	SagaWakeupWorkerPid(void);
extern bool SagaDatabaseListed(const char *dbname);
extern bool SagaWorkerServes(int *pid, bool *preloaded, bool *listed);
extern void SagaWarnUnserved(const char *what);

/* rows.c: direct writes of the engine's rows (saga.sagas, saga.outbox, saga.history_log) */
typedef enum SagaRowsTable
{
	ROWS_SAGAS,
	ROWS_OUTBOX,
	ROWS_HISTORY,
	ROWS_EVENTS
} SagaRowsTable;

/* columns of saga.sagas, in rows.c's saga_columns order */
typedef enum SagaColumn
{
	SC_ID, SC_DEFINITION_ID, SC_NAME, SC_VERSION, SC_STATUS, SC_PIVOTED, SC_CANCEL_REQUESTED,
	SC_CANCEL_REASON, SC_STEP_STATUS, SC_ATTEMPTS, SC_DELIVERIES, SC_INPUT, SC_RESULTS,
	SC_ERRORS, SC_INCIDENT, SC_CORRELATION_ID, SC_IDEMPOTENCY_KEY, SC_TRACEPARENT,
	SC_STARTED_AT, SC_UPDATED_AT, SC_FINISHED_AT, SC_DEADLINE_AT, SC_EVENT_ID,
	SC_NCOLUMNS
} SagaColumn;

/* columns of saga.outbox */
typedef enum TaskColumn
{
	TC_ID, TC_TOPIC, TC_KIND, TC_SAGA_ID, TC_STEP, TC_ATTEMPT, TC_MAX_ATTEMPTS, TC_DELIVERIES,
	TC_LEASE_OWNER, TC_LEASE_LENGTH, TC_PAYLOAD, TC_HEADERS, TC_VISIBLE_AT, TC_CREATED_AT,
	TC_TIMEOUT_AT, TC_POLL_LOCK, TC_EVENT_ID, TC_SUBSCRIPTION_ID, TC_ERROR, TC_AWAITS,
	TC_NCOLUMNS
} TaskColumn;

/* columns of saga.history_log */
typedef enum HistoryColumn
{
	HC_ID, HC_SAGA_ID, HC_AT, HC_ACTOR, HC_EVENTS, HC_STEPS, HC_DETAILS,
	HC_NCOLUMNS
} HistoryColumn;

/* columns of saga.events */
typedef enum EventColumn
{
	EC_ID, EC_TYPE, EC_PAYLOAD, EC_CORRELATION_ID, EC_CAUSATION_ID, EC_KEY, EC_IDEMPOTENCY_KEY,
	EC_TRACEPARENT, EC_PUBLISHED_AT, EC_PUBLISHER, EC_HOPS, EC_DELIVERIES, EC_LATE,
	EC_NCOLUMNS
} EventColumn;

#define ROWS_MAX_COLUMNS 24

/* one table opened for direct writes (SagaRowsOpen .. SagaRowsClose) */
typedef struct SagaRows
{
	Relation	rel;
	struct EState *estate;
	struct ResultRelInfo *rri;
	struct TupleTableSlot *slot;	/* the row being built */
	struct TupleTableSlot *old;	/* an update's row as it was */
	const AttrNumber *attnum;	/* column -> attribute number, 0 if absent */
	bool		triggers;		/* AFTER ROW triggers may be queued */
	bool		updating;		/* the row being built is an update's */
	Bitmapset **updated;		/* the columns it sets (the range table's) */
} SagaRows;

extern SagaRows *SagaRowsOpen(SagaRowsTable which);
extern void SagaRowsNew(SagaRows *r);
extern void SagaRowsSet(SagaRows *r, int column, Datum value, bool isnull);
extern bool SagaRowsHas(SagaRows *r, int column);
extern void SagaRowsInsert(SagaRows *r, ItemPointer tid);
extern bool SagaRowsFetch(SagaRows *r, ItemPointer tid);
extern Datum SagaRowsOld(SagaRows *r, int column, bool *isnull);
extern Datum SagaRowsNewValue(SagaRows *r, int column, bool *isnull);
extern void SagaRowsUpdate(SagaRows *r, ItemPointer tid);
extern void SagaRowsInsertHistory(SagaRows *h, int64 saga_id, TimestampTz at, int n,
								  Datum *events, Datum *steps, bool *steps_null,
								  Datum *details, bool *details_null);
extern void SagaRowsClose(SagaRows *r);

#endif							/* SAGA_H */
