/*-------------------------------------------------------------------------
 *
 * saga.c
 *	  Module initialisation, GUCs, and the helpers every subsystem shares:
 *	  running as the engine's role, SPI checks, plan caching, limits.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "common/int.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "mb/pg_wchar.h"
#include "parser/parse_func.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/varlena.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"

#include "saga.h"

PG_MODULE_MAGIC;

int			saga_max_payload_size = 1024 * 1024;

/* set by the background worker, which acts for nobody in particular */
const char *saga_actor = NULL;

static void saga_xact_callback(XactEvent event, void *arg);
static void saga_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
								  SubTransactionId parentSubid, void *arg);

void
_PG_init(void)
{
	DefineCustomIntVariable("saga.max_payload_size",
							"Largest input, result or error document a saga accepts.",
							"Documents are measured in their stored jsonb form.",
							&saga_max_payload_size,
							1024 * 1024,
							1024,
							MaxAllocSize / 2,
							PGC_SUSET,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	SagaDefinitionInit();
	SagaEventInit();
	SagaChoreographyInit();
	SagaCdcInit();
	SagaWorkerInit();
	RegisterXactCallback(saga_xact_callback, NULL);
	RegisterSubXactCallback(saga_subxact_callback, NULL);

	MarkGUCPrefixReserved("saga");

}

/*
 * Who is acting.  saga_caller is the role that called the outermost entry
 * point of this backend's current engine call: the actor in history.  An SQL
 * step (a guest) may itself call an entry point; that nested call acts for
 * the same caller, not for the step's definer, as whose role it runs.
 */
static Oid	saga_caller = InvalidOid;
static int	guest_depth = 0;

/*
 * Sagas whose transition this backend is in the middle of: their state is in
 * memory, to be written back.  A nested entry point (from an SQL step) that
 * tried to change one of them would have its change overwritten, so it is
 * refused.  Only the outermost entry point can be left with entries from an
 * earlier error (a guest's error is caught with its subtransaction, and a
 * caller's exception handler may catch ours), so that is where it is reset.
 */
static int64 *active = NULL;
static int	nactive = 0;
static int	maxactive = 0;

/*
 * The state above as each open subtransaction found it.  An error that
 * escapes an entry point or a guest is rolled back to some subtransaction
 * (a caller's exception block, the guest's own): the state goes back with
 * it, so no stale entry refuses a later call, whoever catches the error.
 */
typedef struct SubXactState
{
	SubTransactionId subid;
	int			guest_depth;
	Oid			caller;
	int			nactive;
} SubXactState;

/*
 * What the engine is working on, for the CONTEXT line of every message it
 * (or a guest it runs) raises: which saga, step and task.
 */
static int64 work_saga = 0;
static int64 work_task = 0;
static char work_step[NAMEDATALEN];

static SubXactState *substack = NULL;
static int	nsub = 0;
static int	maxsub = 0;

/* a backend-lifetime array, doubled (it grows with nesting, which is shallow) */
static void *
grow(void *arr, int *max, Size elem)
{
	int			n = *max == 0 ? 8 : *max * 2;

	arr = arr == NULL ? MemoryContextAlloc(TopMemoryContext, elem * n) : repalloc(arr, elem * n);
	*max = n;
	return arr;
}

static void
saga_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					  SubTransactionId parentSubid, void *arg)
{
	switch (event)
	{
		case SUBXACT_EVENT_START_SUB:
			if (nsub == maxsub)
				substack = grow(substack, &maxsub, sizeof(SubXactState));
			substack[nsub].subid = mySubid;
			substack[nsub].guest_depth = guest_depth;
			substack[nsub].caller = saga_caller;
			substack[nsub].nactive = nactive;
			nsub++;
			break;
		case SUBXACT_EVENT_COMMIT_SUB:
		case SUBXACT_EVENT_ABORT_SUB:
			while (nsub > 0 && substack[nsub - 1].subid >= mySubid)
			{
				nsub--;
				if (event == SUBXACT_EVENT_ABORT_SUB && substack[nsub].subid == mySubid)
				{
					guest_depth = substack[nsub].guest_depth;
					saga_caller = substack[nsub].caller;
					nactive = Min(nactive, substack[nsub].nactive);
				}
			}
			break;
		default:
			break;
	}
}

static void
saga_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT ||
		event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT ||
		event == XACT_EVENT_PREPARE)
	{
		nsub = 0;
		guest_depth = 0;
		nactive = 0;
	}
}

static void
engine_errcontext(void *arg)
{
	if (work_task > 0 && work_step[0] != '\0')
		errcontext("saga %lld, step \"%s\", task %lld (%s)",
				   (long long) work_saga, work_step, (long long) work_task,
				   SAGA_TASK_IS_COMP(work_task) ? "compensation" : "action");
	else if (work_task < 0)
		errcontext("event delivery %lld", (long long) work_task);
	else if (work_task > 0)
		errcontext("saga %lld, step #%d, task %lld (%s)",
				   (long long) work_saga, SAGA_TASK_STEP(work_task), (long long) work_task,
				   SAGA_TASK_IS_COMP(work_task) ? "compensation" : "action");
	else if (work_saga > 0)
		errcontext("saga %lld", (long long) work_saga);
}

/* the engine now works on this saga (and task, and step: 0 and NULL if none) */
void
SagaNoteWork(int64 saga_id, int64 task_id, const char *step)
{
	work_saga = saga_id;
	work_task = task_id;
	strlcpy(work_step, step ? step : "", sizeof(work_step));
}

/* the engine now works on this saga: keeps the task if it is the saga's */
void
SagaNoteSaga(int64 saga_id)
{
	if (work_saga != saga_id)
		SagaNoteWork(saga_id, 0, NULL);
}

/*
 * The API functions are callable by the saga roles, which hold no privileges
 * on the tables themselves: the engine does its table work as the owner of
 * schema saga (the role that created the extension).  Unlike SECURITY
 * DEFINER, this keeps the caller's identity visible to us, which we need to
 * record who defined a saga (its SQL steps run as that role) and who acted.
 * The functions' SET clauses pin search_path for the engine's statements;
 * the background worker pins it for the whole process.
 */
Oid
SagaEnter(SagaUserSave *save)
{
	Oid			nsp;
	HeapTuple	tup;
	Oid			owner;
	int			rc;

	nsp = get_namespace_oid("saga", false);
	tup = SearchSysCache1(NAMESPACEOID, ObjectIdGetDatum(nsp));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for namespace %u", nsp);
	owner = ((Form_pg_namespace) GETSTRUCT(tup))->nspowner;
	ReleaseSysCache(tup);

	GetUserIdAndSecContext(&save->userid, &save->sec_context);
	save->prev_caller = saga_caller;
	save->prev_nactive = nactive;
	if (guest_depth == 0)
	{
		saga_caller = save->userid;
		nactive = 0;
		SagaCascadeReset();
	}
	SetUserIdAndSecContext(owner, save->sec_context | SECURITY_LOCAL_USERID_CHANGE);

	save->prev_work_saga = work_saga;
	save->prev_work_task = work_task;
	strlcpy(save->prev_work_step, work_step, NAMEDATALEN);
	SagaNoteWork(0, 0, NULL);
	save->errcb.callback = engine_errcontext;
	save->errcb.arg = NULL;
	save->errcb.previous = error_context_stack;
	error_context_stack = &save->errcb;

	if ((rc = SPI_connect()) != SPI_OK_CONNECT)
		elog(ERROR, "saga: SPI_connect failed: %s", SPI_result_code_string(rc));
	/* the role calling this very function (the actor may be an outer caller) */
	return save->userid;
}

void
SagaLeave(SagaUserSave *save)
{
	int			rc;

	if ((rc = SPI_finish()) != SPI_OK_FINISH)
		elog(ERROR, "saga: SPI_finish failed: %s", SPI_result_code_string(rc));
	SetUserIdAndSecContext(save->userid, save->sec_context);
	saga_caller = save->prev_caller;
	nactive = save->prev_nactive;
	error_context_stack = save->errcb.previous;
	/* an enclosing call resumes its work */
	SagaNoteWork(save->prev_work_saga, save->prev_work_task, save->prev_work_step);
}

/* around a call of user code: nested entry points act for our caller */
void
SagaGuestBegin(SagaGuestSave *save)
{
	save->depth = guest_depth;
	save->caller = saga_caller;
	save->nactive = nactive;
	guest_depth++;
}

/* after the guest returned or failed */
void
SagaGuestEnd(SagaGuestSave *save)
{
	guest_depth = save->depth;
	saga_caller = save->caller;
	nactive = save->nactive;
}

/*
 * The engine is about to change a saga: refuse if an enclosing call of this
 * backend is already changing it.
 */
void
SagaTransitionBegin(int64 saga_id)
{
	if (SagaTransitionActive(saga_id))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("saga %lld is already being changed by this transaction",
						(long long) saga_id),
				 errdetail("An SQL step of the saga called the engine for its own saga."),
				 errhint("An SQL step cannot cancel, report for or retry its own saga; "
						 "return an error from the step instead.")));
	if (nactive == maxactive)
		active = grow(active, &maxactive, sizeof(int64));
	active[nactive++] = saga_id;
}

/* is an enclosing call of this backend changing the saga */
bool
SagaTransitionActive(int64 saga_id)
{
	for (int i = 0; i < nactive; i++)
		if (active[i] == saga_id)
			return true;
	return false;
}

/* the saga's new state is written */
void
SagaTransitionEnd(int64 saga_id)
{
	for (int i = nactive - 1; i >= 0; i--)
		if (active[i] == saga_id)
		{
			active[i] = active[--nactive];
			return;
		}
}

/* who history says acted: the background worker, or the calling role */
const char *
SagaActorName(void)
{
	return saga_actor ? saga_actor : GetUserNameFromId(saga_caller, false);
}

/*
 * Run fn(id, why) in a subtransaction of its own, so that one saga's or
 * flow's failing work rolls back only its own change.  Returns NULL when it
 * went through, else its error (the subtransaction is gone).  A cancel or a
 * shutdown is not the work's own failure: it is raised again.
 */
ErrorData *
SagaTryWork(SagaWorkFn fn, int64 id, const char *why)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ErrorData  *volatile edata = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		fn(id, why);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	if (edata != NULL &&
		(edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
		 ERRCODE_TO_CATEGORY(edata->sqlerrcode) == ERRCODE_OPERATOR_INTERVENTION))
		ReThrowError(edata);
	return edata;
}

/*
 * A stored message, cut at limit bytes (on a character boundary) and marked
 * with its full length, so that no error a guest or a filter raises makes a
 * stored row unbounded.
 */
char *
SagaClip(const char *s, int limit)
{
	int			len;

	if (s == NULL)
		return NULL;
	len = strlen(s);
	if (len <= limit)
		return (char *) s;
	return psprintf("%s... [truncated: %d bytes in all]",
					pnstrdup(s, pg_mbcliplen(s, len, limit)), len);
}

/*
 * Small jsonb builders: a key and its value into an object being built
 * (a NULL string is JSON null).
 */

void
SagaJbKey(JsonbParseState **ps, const char *key)
{
	JsonbValue	k;

	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	pushJsonbValue(ps, WJB_KEY, &k);
}

void
SagaJbStr(JsonbParseState **ps, const char *key, const char *value)
{
	JsonbValue	v;

	SagaJbKey(ps, key);
	if (value == NULL)
		v.type = jbvNull;
	else
	{
		v.type = jbvString;
		v.val.string.val = (char *) value;
		v.val.string.len = strlen(value);
	}
	pushJsonbValue(ps, WJB_VALUE, &v);
}

void
SagaJbInt(JsonbParseState **ps, const char *key, int64 value)
{
	JsonbValue	v;

	SagaJbKey(ps, key);
	v.type = jbvNumeric;
	v.val.numeric = int64_to_numeric(value);
	pushJsonbValue(ps, WJB_VALUE, &v);
}

void
SagaJbJsonb(JsonbParseState **ps, const char *key, Jsonb *value)
{
	JsonbValue	v;

	SagaJbKey(ps, key);
	v.type = jbvBinary;
	v.val.binary.data = &value->root;
	v.val.binary.len = VARSIZE(value) - VARHDRSZ;
	pushJsonbValue(ps, WJB_VALUE, &v);
}

void
SagaJbBool(JsonbParseState **ps, const char *key, bool value)
{
	JsonbValue	v;

	SagaJbKey(ps, key);
	v.type = jbvBool;
	v.val.boolean = value;
	pushJsonbValue(ps, WJB_VALUE, &v);
}

/*
 * An optional W3C traceparent argument (saga.start, saga.publish): NULL when
 * not given, else exactly 55 bytes of the W3C format (22023 otherwise; too
 * long is malformed, not 22001).
 */
char *
SagaTraceparentArg(FunctionCallInfo fcinfo, int argno)
{
	char	   *tp;

	if (!PG_ARGISNULL(argno) &&
		VARSIZE_ANY_EXHDR(PG_GETARG_TEXT_PP(argno)) > SAGA_TRACEPARENT_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid traceparent"),
				 errdetail("It is %zu bytes long; a W3C traceparent has %d.",
						   (Size) VARSIZE_ANY_EXHDR(PG_GETARG_TEXT_PP(argno)), SAGA_TRACEPARENT_LEN),
				 errhint("A W3C traceparent looks like 00-<32 hex digits>-<16 hex digits>-<2 hex digits>, in lower case.")));
	tp = SagaOptionalText(fcinfo, argno, "traceparent", SAGA_TRACEPARENT_LEN);
	if (tp != NULL && !SagaValidTraceparent(tp))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid traceparent \"%s\"", tp),
				 errhint("A W3C traceparent looks like 00-<32 hex digits>-<16 hex digits>-<2 hex digits>, in lower case.")));
	return tp;
}

/* a topic argument: ^[a-z][a-z0-9_]{0,47}$ (42602 otherwise) */
void
SagaCheckTopic(const char *topic)
{
	if (!SagaValidTopic(topic))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("invalid topic \"%s\"", SagaEcho(topic)),
				 errhint("A topic matches ^[a-z][a-z0-9_]{0,47}$.")));
}

/* an argument without a default: NULL is 22004 */
void
SagaRequireArg(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", name)));
}

/* an optional text argument of at most limit bytes, not empty; NULL when not given */
char *
SagaOptionalText(FunctionCallInfo fcinfo, int argno, const char *name, int limit)
{
	char	   *s;

	if (PG_ARGISNULL(argno))
		return NULL;
	s = SagaTextArg(PG_GETARG_TEXT_PP(argno), limit, name);
	if (s[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", name),
				 errhint("Pass NULL to leave it out.")));
	return s;
}

/*
 * Text arguments are bounded before anything else looks at them, so that an
 * error message never echoes megabytes and no key outgrows its index.
 * Returns the argument as a C string.
 */
char *
SagaTextArg(text *t, int limit, const char *argname)
{
	Size		len = VARSIZE_ANY_EXHDR(t);

	if (len > (Size) limit)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("%s is too long", argname),
				 errdetail("It is %zu bytes long; the limit is %d bytes.", len, limit)));
	return text_to_cstring(t);
}

/*
 * An interval in microseconds, months and days taken as 30 days and 1 day
 * (the engine's intervals are durations).  False if it overflows int64.
 */
bool
SagaIntervalUsecs(const Interval *iv, int64 *usecs)
{
	int64		days;
	int64		day_usecs;

	days = (int64) iv->month * DAYS_PER_MONTH + iv->day;	/* cannot overflow */
	if (pg_mul_s64_overflow(days, USECS_PER_DAY, &day_usecs) ||
		pg_add_s64_overflow(day_usecs, iv->time, usecs))
		return false;
	return true;
}

/* an interval argument: positive and at most SAGA_MAX_INTERVAL; microseconds */
int64
SagaCheckInterval(const Interval *iv, const char *argname)
{
	int64		usecs;

	if (!SagaIntervalUsecs(iv, &usecs) || usecs > SAGA_MAX_INTERVAL)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_FIELD_OVERFLOW),
				 errmsg("%s is out of range", argname),
				 errdetail("An interval is at most %d days.", SAGA_MAX_INTERVAL_DAYS)));
	if (usecs <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a positive interval", argname)));
	return usecs;
}

/*
 * A step function may bring its own search_path (SET search_path = app,
 * pg_temp), but only with pg_temp listed last: PostgreSQL searches the
 * temporary schema first when the path does not name it, so a caller's
 * temporary table named like one of the function's would capture its
 * unqualified names, and with them its writes and triggers, run as the
 * definer.  Without a SET clause the step inherits the sandbox's
 * pg_catalog, pg_temp, which is safe.
 */
static void
check_guest_search_path(HeapTuple proctup, const char *fname)
{
	bool		isnull;
	Datum		d = SysCacheGetAttr(PROCOID, proctup, Anum_pg_proc_proconfig, &isnull);
	ArrayType  *config;
	Datum	   *items;
	int			nitems;

	if (isnull)
		return;
	config = DatumGetArrayTypeP(d);
	deconstruct_array(config, TEXTOID, -1, false, TYPALIGN_INT, &items, NULL, &nitems);
	for (int i = 0; i < nitems; i++)
	{
		char	   *item = TextDatumGetCString(items[i]);
		List	   *elems;
		bool		safe;

		if (pg_strncasecmp(item, "search_path=", 12) != 0)
			continue;
		safe = SplitIdentifierString(pstrdup(item + 12), ',', &elems) &&
			list_length(elems) > 0 &&
			strcmp((char *) llast(elems), "pg_temp") == 0;
		/* and nowhere before: the first mention is where it is searched */
		for (int k = 0; safe && k < list_length(elems) - 1; k++)
			if (strncmp((char *) list_nth(elems, k), "pg_temp", 7) == 0)
				safe = false;
		if (!safe)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
					 errmsg("function %s sets search_path without pg_temp last", fname),
					 errdetail("Its setting is \"%s\"; a caller's temporary tables would come first and capture its unqualified names.",
							   item),
					 errhint("ALTER FUNCTION %s(jsonb) SET search_path = <its schemas>, pg_temp", fname)));
	}
}

/*
 * Resolve "schema.fn" to the function fn(jsonb) returns jsonb that a role
 * may run as an SQL step, at define time and again before each run (the
 * function, the schema or the grants may have changed since).  Refused: a
 * function in a temporary schema (it would resolve in whichever session runs
 * the step), one that is not a plain function (aggregate, window function,
 * procedure) or returns a set, and one the role lacks USAGE on the schema or
 * EXECUTE on the function for.  Errors carry no path: callers add it in
 * their context.  With missing_ok, a missing function gives InvalidOid.
 */
Oid
SagaGuestFunction(const char *fname, Oid definer, bool missing_ok)
{
	List	   *names = stringToQualifiedNameList(fname, NULL);
	Oid			argtype = JSONBOID;
	char	   *schema = NULL;
	char	   *name;
	Oid			fn;
	HeapTuple	tup;
	Form_pg_proc proc;
	Oid			nsp;

	DeconstructQualifiedName(names, &schema, &name);
	if (schema == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("function name \"%s\" must be schema-qualified", fname)));
	if (strncmp(schema, "pg_temp", 7) == 0 || strncmp(schema, "pg_toast_temp", 13) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("function %s is in a temporary schema", fname),
				 errdetail("A temporary function would be looked up in the session that runs the step.")));

	fn = LookupFuncName(names, 1, &argtype, true);
	if (!OidIsValid(fn))
	{
		if (missing_ok)
			return InvalidOid;
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function %s(jsonb) does not exist", fname)));
	}

	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for function %u", fn);
	proc = (Form_pg_proc) GETSTRUCT(tup);
	nsp = proc->pronamespace;
	if (proc->prokind != PROKIND_FUNCTION || proc->proretset)
	{
		const char *what = proc->prokind == PROKIND_AGGREGATE ? "an aggregate function"
			: proc->prokind == PROKIND_WINDOW ? "a window function"
			: proc->prokind == PROKIND_PROCEDURE ? "a procedure"
			: "a set-returning function";

		ReleaseSysCache(tup);
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("function %s(jsonb) is %s", fname, what),
				 errhint("An SQL step is a plain function fn(jsonb) returns jsonb.")));
	}
	if (proc->prorettype != JSONBOID)
	{
		ReleaseSysCache(tup);
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("function %s(jsonb) must return jsonb", fname)));
	}
	check_guest_search_path(tup, fname);
	ReleaseSysCache(tup);

	if (isAnyTempNamespace(nsp))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("function %s is in a temporary schema", fname),
				 errdetail("A temporary function would be looked up in the session that runs the step.")));
	if (object_aclcheck(NamespaceRelationId, nsp, definer, ACL_USAGE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for schema %s", get_namespace_name(nsp)),
				 errdetail("SQL steps run as role \"%s\", which lacks USAGE on the schema of function %s.",
						   GetUserNameFromId(definer, false), fname)));
	if (object_aclcheck(ProcedureRelationId, fn, definer, ACL_EXECUTE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for function %s", fname),
				 errdetail("SQL steps run as role \"%s\", which lacks EXECUTE on the function.",
						   GetUserNameFromId(definer, false))));
	return fn;
}

void
SagaCheckPayload(Jsonb *value, const char *what)
{
	if (value != NULL && VARSIZE(value) > (Size) saga_max_payload_size)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s is too large", what),
				 errdetail("The document takes %zu bytes; saga.max_payload_size is %d bytes.",
						   (Size) VARSIZE(value), saga_max_payload_size)));
}

void
SagaSpiCheck(int rc, int expected, const char *what)
{
	if (rc != expected)
		elog(ERROR, "saga: %s failed: %s", what, SPI_result_code_string(rc));
}

/*
 * Prepare a statement once per backend, for a generic plan.  Kept plans
 * survive the transaction and are re-analysed by the plan cache when the
 * tables change, so an extension dropped and created again is fine.
 */
SPIPlanPtr
SagaPrepare(SPIPlanPtr *cache, const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan;

	if (*cache != NULL)
		return *cache;
	/* our statements are key lookups: a custom plan per call would only cost */
	plan = SPI_prepare_cursor(sql, nargs, argtypes, CURSOR_OPT_GENERIC_PLAN);
	if (plan == NULL)
		elog(ERROR, "saga: SPI_prepare failed for \"%s\": %s",
			 sql, SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "saga: SPI_keepplan failed");
	*cache = plan;
	return plan;
}

/*
 * Run a statement prepared once per backend (see SagaPrepare) and check
 * that SPI reports what the statement does.
 */
void
SagaExecute(SPIPlanPtr *cache, const char *sql, int nargs, Oid *argtypes,
			Datum *values, const char *nulls, int expected, const char *what)
{
	SagaSpiCheck(SPI_execute_plan(SagaPrepare(cache, sql, nargs, argtypes),
								  values, nulls, false, 0),
				 expected, what);
}

/*
 * SagaExecute as of the latest snapshot rather than the transaction's: for
 * the engine's own rows that must be read as they are now whatever the
 * caller's isolation level (a flow under REPEATABLE READ would otherwise
 * fail with 40001 when another transaction had moved it and committed; one
 * still in flight that changes the same row makes it fail all the same, as
 * any REPEATABLE READ update of a row changed concurrently does).
 */
void
SagaExecuteLatest(SPIPlanPtr *cache, const char *sql, int nargs, Oid *argtypes,
				  Datum *values, const char *nulls, int expected, const char *what)
{
	/* fire_triggers: saga.outbox has one (saga.outbox_dispatch, for saga.cdc) */
	SagaSpiCheck(SPI_execute_snapshot(SagaPrepare(cache, sql, nargs, argtypes),
									  values, nulls, GetLatestSnapshot(), InvalidSnapshot,
									  false, true, 0),
				 expected, what);
}

/* topic names: ^[a-z][a-z0-9_]{0,47}$ (the LISTEN channel adds "saga_") */
bool
SagaValidTopic(const char *topic)
{
	int			len = strlen(topic);

	if (len < 1 || len > 48 || topic[0] < 'a' || topic[0] > 'z')
		return false;
	for (int i = 1; i < len; i++)
	{
		char		c = topic[i];

		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
			return false;
	}
	return true;
}

/* W3C traceparent: 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags> */
bool
SagaValidTraceparent(const char *tp)
{
	static const int hexes[] = {2, 32, 16, 2};
	const char *p = tp;

	for (int part = 0; part < 4; part++)
	{
		bool		all_zero = true;

		for (int i = 0; i < hexes[part]; i++, p++)
		{
			if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
				return false;
			if (*p != '0')
				all_zero = false;
		}
		if ((part == 1 || part == 2) && all_zero)
			return false;
		if (part < 3 && *p++ != '-')
			return false;
	}
	/* version ff is forbidden by the spec */
	return *p == '\0' && strncmp(tp, "ff", 2) != 0;
}

char *
SagaNewTraceparent(void)
{
	static const char digits[] = "0123456789abcdef";
	char		hex[49];

	/*
	 * Trace and span ids need to be unpredictable enough not to collide, not
	 * secret (W3C trace context): the backend's PRNG, seeded from a strong
	 * source at its start, saves a system call per saga and per event.
	 */
	for (int i = 0; i < 48; i += 16)
	{
		uint64		r = pg_prng_uint64(&pg_global_prng_state);

		for (int k = 0; k < 16; k++)
			hex[i + k] = digits[(r >> (4 * k)) & 0xF];
	}
	hex[48] = '\0';
	/* an all-zero id is invalid; 2^-64 odds, but cheap to rule out */
	hex[47] = '1';
	return psprintf("00-%.32s-%.16s-01", hex, hex + 32);
}

/*
 * A span of the same trace as parent (a valid traceparent): the trace id
 * and flags are kept, the span id is new (W3C trace context: a child).
 */
char *
SagaChildTraceparent(const char *parent)
{
	char	   *fresh = SagaNewTraceparent();

	/* 00-<trace 32>-<span 16>-<flags 2>: positions 3..34 and 53..54 */
	return psprintf("00-%.32s-%.16s-%.2s", parent + 3, fresh + 36, parent + 53);
}

