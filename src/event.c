/*-------------------------------------------------------------------------
 *
 * event.c
 *	  Events, subscriptions and their deliveries: saga.publish,
 *	  saga.subscribe / unsubscribe, reports on deliveries, dead letters,
 *	  saga.redeliver and saga.replay.
 *
 * A publish writes the event and one outbox row (kind 'event') per
 * matching subscription in one statement, in the publisher's transaction.
 * Deliveries are served by the worker protocol of saga tasks (claim, the
 * transactional poll, complete, fail, heartbeat, leases); their ids are
 * negative, from a sequence of their own, because a saga task's id encodes
 * its saga.  A delivery that fails for good moves to saga.dead_letters.
 *
 * Subscribe and publish of one event type exclude each other through a
 * lock on that type (see lock_event_type): publish holds it ROW EXCLUSIVE
 * for its transaction and reads the subscriptions as of the latest
 * snapshot; subscribe takes SHARE ROW EXCLUSIVE, so it waits for the type's
 * publishers in flight and they wait for it.  An event is therefore delivered to exactly the
 * subscriptions committed before it, whatever the isolation level, and a
 * replay_from read after the lock sees every event committed before it.
 * Backends cache the subscriptions of each event type; a subscribe
 * invalidates saga.subscriptions' relcache entry, which every publisher
 * processes when it takes the lock.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "postmaster/bgworker.h"
#include "storage/lock.h"
#include "utils/guc.h"
#include "utils/acl.h"
#include "common/hashfn.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/jsonpath.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "saga.h"

#define SAGA_MAX_FILTER_LEN		4096
#define SUB_CACHE_MAX_TYPES		4096	/* event types a backend keeps subscriptions of */
#define SAGA_MAX_FILTER_ERROR	1024	/* bytes of a filter error kept */
#define REPLAY_CHUNK			1000

int			saga_max_hops = 32;
int			saga_filter_timeout = 100;	/* milliseconds */

/* one subscription as publish needs it */
typedef struct SubInfo
{
	int64		id;
	char		topic[SAGA_TOPIC_SIZE];
	int32		max_attempts;
	JsonPath   *filter;			/* NULL: every event */
	char		start_saga[NAMEDATALEN];	/* "": a delivery; else the saga each event starts */
} SubInfo;

typedef struct SubCacheEntry
{
	char		type[SAGA_MAX_EVENT_TYPE_LEN + 1];
	int			nsubs;
	SubInfo    *subs;
} SubCacheEntry;

static HTAB *sub_cache = NULL;
static MemoryContext sub_cxt = NULL;
static bool sub_cache_stale = false;
static Oid	sub_cache_relid = InvalidOid;

static SPIPlanPtr plan_subs = NULL;
static SPIPlanPtr plan_cause = NULL;
static SPIPlanPtr plan_by_key = NULL;
static SPIPlanPtr plan_publish_flows = NULL;
static SPIPlanPtr plan_event_keyed = NULL;
static SPIPlanPtr plan_deliver_keyed = NULL;
static SPIPlanPtr plan_filter_error = NULL;
static SPIPlanPtr plan_take = NULL;
static SPIPlanPtr plan_lock = NULL;
static SPIPlanPtr plan_retry = NULL;
static SPIPlanPtr plan_dead = NULL;
static SPIPlanPtr plan_dead_lock = NULL;
static SPIPlanPtr plan_dead_resolve = NULL;
static SPIPlanPtr plan_sub_options = NULL;
static SPIPlanPtr plan_existed = NULL;
static SPIPlanPtr plan_subscribe = NULL;
static SPIPlanPtr plan_sub_count = NULL;
static SPIPlanPtr plan_unsubscribe = NULL;
static SPIPlanPtr plan_redeliver = NULL;
static SPIPlanPtr plan_dead_sub = NULL;
static SPIPlanPtr plan_sub_find = NULL;
static SPIPlanPtr plan_replay_events = NULL;
static SPIPlanPtr plan_replay_insert = NULL;

PG_FUNCTION_INFO_V1(saga_publish);
PG_FUNCTION_INFO_V1(saga_subscribe);
PG_FUNCTION_INFO_V1(saga_unsubscribe);
PG_FUNCTION_INFO_V1(saga_redeliver);
PG_FUNCTION_INFO_V1(saga_replay);

/* ---------- small helpers ---------- */

/* the oid of a relation of schema saga, or InvalidOid */
Oid
SagaRelid(const char *relname)
{
	Oid			nsp = get_namespace_oid("saga", true);

	return OidIsValid(nsp) ? get_relname_relid(relname, nsp) : InvalidOid;
}

/* are the choreography objects (0.3) installed in this database */
bool
SagaChoreographyInstalled(void)
{
	return OidIsValid(SagaRelid("flows"));
}

/*
 * Whether the installed extension is 0.4 or later (the bridges' columns
 * exist): the library may be newer than the extension until ALTER
 * EXTENSION saga UPDATE runs.
 */
static int	bridges_installed = -1;	/* -1: not known; reset by ALTER TABLE */
static Oid	bridges_relid = InvalidOid;

static void
bridges_inval(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == bridges_relid)
		bridges_installed = -1;
}

bool
SagaBridgesInstalled(void)
{
	if (bridges_installed < 0)
	{
		/* the update to 0.4 adds the column: its ALTER TABLE resets this */
		bridges_relid = SagaRelid("sagas");
		bridges_installed = OidIsValid(bridges_relid) &&
			get_attnum(bridges_relid, "event_id") != InvalidAttrNumber;
	}
	return bridges_installed == 1;
}

void
SagaRequireBridges(const char *what)
{
	if (!SagaBridgesInstalled())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s need extension version 0.4", what),
				 errhint("Run ALTER EXTENSION saga UPDATE.")));
}

/* ^[A-Za-z][A-Za-z0-9_.]{0,62}$ */
bool
SagaValidEventType(const char *type)
{
	int			len = strlen(type);

	if (len < 1 || len > SAGA_MAX_EVENT_TYPE_LEN ||
		!((type[0] >= 'a' && type[0] <= 'z') || (type[0] >= 'A' && type[0] <= 'Z')))
		return false;
	for (int i = 1; i < len; i++)
	{
		char		c = type[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			  (c >= '0' && c <= '9') || c == '_' || c == '.'))
			return false;
	}
	return true;
}

static void
check_event_type(const char *type)
{
	if (!SagaValidEventType(type))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid event type \"%s\"", SagaEcho(type)),
				 errhint("An event type matches ^[A-Za-z][A-Za-z0-9_.]{0,62}$, such as OrderPlaced or order.placed.")));
}

static Datum
int8_array(Datum *d, int n)
{
	return PointerGetDatum(construct_array(d, n, INT8OID, 8, true, TYPALIGN_DOUBLE));
}

static Datum
text_array(Datum *d, int n)
{
	return PointerGetDatum(construct_array(d, n, TEXTOID, -1, false, TYPALIGN_INT));
}

static Datum
int4_array(Datum *d, int n)
{
	return PointerGetDatum(construct_array(d, n, INT4OID, 4, true, TYPALIGN_INT));
}

static Jsonb *
reason_doc(const char *reason)
{
	JsonbParseState *ps = NULL;

	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	SagaJbStr(&ps, "reason", reason);
	return JsonbValueToJsonb(pushJsonbValue(&ps, WJB_END_OBJECT, NULL));
}

static bool
jsonb_equal(Jsonb *a, Jsonb *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return compareJsonbContainers(&a->root, &b->root) == 0;
}

/* ---------- subscription options ---------- */

static const char *const option_keys[] = {"retry", "filter", "replay_from", "start_saga", NULL};

typedef struct SubOptions
{
	SagaRetry	retry;
	char	   *filter;			/* NULL: none */
	char	   *start_saga;		/* NULL: none */
	bool		has_replay_from;
	TimestampTz replay_from;
} SubOptions;

/* a jsonpath from its text, or an error saying where it does not parse */
static JsonPath *
parse_filter(const char *text, const char *what)
{
	MemoryContext cxt = CurrentMemoryContext;
	Datum		d = (Datum) 0;

	PG_TRY();
	{
		d = DirectFunctionCall1(jsonpath_in, CStringGetDatum(text));
	}
	PG_CATCH();
	{
		ErrorData  *e;

		MemoryContextSwitchTo(cxt);
		e = CopyErrorData();
		FlushErrorState();
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("invalid %s: the filter is not a jsonpath", what),
				 errdetail("%s. The offending value is at $.filter.", e->message),
				 errhint("A filter is a jsonpath predicate on the payload, such as $.amount > 100.")));
	}
	PG_END_TRY();
	return DatumGetJsonPathP(d);
}

/*
 * Subscription options.  stored: options as saga.subscribe kept them, read
 * again by publish and reports: replay_from (normalised at subscribe, and
 * of no use after it) is not read again, so nothing in the reader's session
 * (DateStyle, TimeZone) can make what subscribe accepted fail later.
 */
static void
parse_options(Jsonb *doc, SubOptions *o, const char *what, bool stored)
{
	SagaDocParse p = {what, false, InvalidOid, false};
	JsonbValue	v;

	memset(o, 0, sizeof(*o));
	SagaDefaultRetry(&o->retry);
	if (!JB_ROOT_IS_OBJECT(doc) || JB_ROOT_IS_SCALAR(doc))
		SagaDocError(ERRCODE_INVALID_PARAMETER_VALUE, &p, "$", "the options must be a JSON object");
	SagaDocCheckKeys(&p, &doc->root, option_keys, "$");
	if (SagaDocGetKey(&doc->root, "retry", &v))
		SagaDocRetry(&p, &v, &o->retry, "$.retry");
	if (SagaDocGetKey(&doc->root, "filter", &v))
	{
		o->filter = SagaDocString(&p, &v, "$.filter");
		if (strlen(o->filter) > SAGA_MAX_FILTER_LEN)
			SagaDocError(ERRCODE_PROGRAM_LIMIT_EXCEEDED, &p, "$.filter",
						 psprintf("a filter is at most %d bytes", SAGA_MAX_FILTER_LEN));
		if (!stored)
			(void) parse_filter(o->filter, what);
	}
	if (SagaDocGetKey(&doc->root, "start_saga", &v))
	{
		o->start_saga = SagaDocString(&p, &v, "$.start_saga");
		if (!stored)
			SagaRequireBridges("start_saga subscriptions");
		if (SagaDocGetKey(&doc->root, "retry", &v))
			SagaDocError(ERRCODE_INVALID_PARAMETER_VALUE, &p, "$.retry",
						 "a start_saga subscription writes no delivery to retry: it starts the saga in the publishing transaction");
		if (!stored && SagaDefinitionLatest(o->start_saga) == NULL)
		{
			if (SagaNameIsChoreography(o->start_saga))
				ereport(ERROR,
						(errcode(ERRCODE_WRONG_OBJECT_TYPE),
						 errmsg("invalid %s: \"%s\" is a choreography, not a saga definition",
								what, o->start_saga),
						 errdetail("The offending value is at $.start_saga."),
						 errhint("start_saga names a definition stored by saga.define.")));
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("invalid %s: saga definition \"%s\" does not exist",
							what, SagaEcho(o->start_saga)),
					 errdetail("The offending value is at $.start_saga."),
					 errhint("Define it with saga.define first.")));
		}
	}
	if (!stored && SagaDocGetKey(&doc->root, "replay_from", &v))
	{
		char	   *text = SagaDocString(&p, &v, "$.replay_from");
		MemoryContext cxt = CurrentMemoryContext;

		PG_TRY();
		{
			o->replay_from = DatumGetTimestampTz(DirectFunctionCall3(timestamptz_in,
																	 CStringGetDatum(text),
																	 ObjectIdGetDatum(InvalidOid),
																	 Int32GetDatum(-1)));
		}
		PG_CATCH();
		{
			MemoryContextSwitchTo(cxt);
			FlushErrorState();
			SagaDocError(ERRCODE_INVALID_PARAMETER_VALUE, &p, "$.replay_from",
						 psprintf("\"%s\" is not a timestamp with time zone", SagaEcho(text)));
		}
		PG_END_TRY();
		if (TIMESTAMP_NOT_FINITE(o->replay_from))
			SagaDocError(ERRCODE_INVALID_PARAMETER_VALUE, &p, "$.replay_from",
						 "replay_from must be a finite time");
		o->has_replay_from = true;
	}
}

/*
 * The lock that orders subscribe and publish of one event type: publish
 * holds it ROW EXCLUSIVE until it commits, subscribe and unsubscribe SHARE
 * ROW EXCLUSIVE (which conflicts with both).  An object lock on (class
 * saga.subscriptions, hash of the type), so that a subscribe waiting for a
 * long transaction holds up the publishers of its type only.  Taking it
 * processes the invalidations that subscribe sent, so the cache is fresh
 * once it is held.  The background worker does not wait for it: a subscribe
 * left open must not stall its round (55P03, and the work is tried later).
 */
static void
lock_event_type(Oid relid, const char *type, LOCKMODE mode)
{
	LOCKTAG		tag;
	Oid			key = (Oid) hash_bytes((const unsigned char *) type, strlen(type));

	SET_LOCKTAG_OBJECT(tag, MyDatabaseId, relid, key, 0);
	if (LockAcquire(&tag, mode, false, saga_is_worker) == LOCKACQUIRE_NOT_AVAIL)
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("could not lock the subscriptions of event type \"%s\"", type),
				 errdetail("A saga.subscribe or saga.unsubscribe of that type has not committed yet.")));
	AcceptInvalidationMessages();
}

/*
 * A subscription may be changed, removed or replayed into by members of the
 * role that created it (as saga.define keeps a name to its definer's role).
 * A subscription whose role is gone is a superuser's to change.
 */
static void
check_subscription_owner(const char *owner, const char *type, const char *topic, Oid caller)
{
	Oid			owner_oid = get_role_oid(owner, true);

	if (OidIsValid(owner_oid) ? has_privs_of_role(caller, owner_oid) : superuser_arg(caller))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied for the subscription of topic \"%s\" to event type \"%s\"",
					SagaEcho(topic), SagaEcho(type)),
			 OidIsValid(owner_oid)
			 ? errdetail("It belongs to role \"%s\"; only its members may change it.", owner)
			 : errdetail("Role \"%s\", which created it, no longer exists; only a superuser may change it.",
						 owner)));
}

/*
 * A start_saga subscription runs a definition's SQL steps, as its definer,
 * inside every publisher's transaction: only members of the definer's role
 * may bind it to events, as only they may define its next version.
 */
static void
check_start_saga_owner(const char *name, Oid caller)
{
	SagaDef    *def = SagaDefinitionLatest(name);
	Oid			owner = (def != NULL && def->owner != NULL) ? get_role_oid(def->owner, true)
		: InvalidOid;

	if (OidIsValid(owner) ? has_privs_of_role(caller, owner) : superuser_arg(caller))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied to start saga \"%s\" from events", name),
			 OidIsValid(owner)
			 ? errdetail("Saga definition \"%s\" belongs to role \"%s\"; only its members may subscribe it to events.",
						 name, def->owner)
			 : errdetail("The role that defined saga definition \"%s\" no longer exists; only a superuser may subscribe it to events.",
						 name)));
}

/* ---------- the subscription cache ---------- */

static void
sub_cache_inval(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == sub_cache_relid)
		sub_cache_stale = true;
}

/* empty the cache if marked stale; only between uses of its entries */
static void
sub_cache_validate(Oid relid)
{
	if (sub_cache != NULL && !sub_cache_stale && relid == sub_cache_relid)
		return;
	if (sub_cxt == NULL)
		sub_cxt = AllocSetContextCreate(CacheMemoryContext, "saga subscriptions",
										ALLOCSET_DEFAULT_SIZES);
	else
		MemoryContextReset(sub_cxt);
	{
		HASHCTL		ctl;

		ctl.keysize = SAGA_MAX_EVENT_TYPE_LEN + 1;
		ctl.entrysize = sizeof(SubCacheEntry);
		ctl.hcxt = sub_cxt;
		sub_cache = hash_create("saga subscriptions by event type", 64, &ctl,
								HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	}
	sub_cache_relid = relid;
	sub_cache_stale = false;
}

/*
 * The subscriptions of an event type, as of the latest snapshot: the caller
 * holds the lock that keeps them from changing until it commits.
 */
static SubCacheEntry *
subscriptions_of(const char *type, Oid relid)
{
	SubCacheEntry *entry;
	bool		found;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	SPIPlanPtr	plan;
	int			rc;
	MemoryContext old;
	SubInfo    *subs;
	int			nsubs = 0;

	sub_cache_validate(relid);
	entry = hash_search(sub_cache, type, HASH_FIND, NULL);
	if (entry != NULL)
		return entry;

	values[0] = CStringGetTextDatum(type);
	plan = SagaPrepare(&plan_subs,
					   "SELECT id, topic, options FROM saga.subscriptions "
					   "WHERE event_type = $1 ORDER BY id",
					   1, types);
	rc = SPI_execute_snapshot(plan, values, NULL, GetLatestSnapshot(), InvalidSnapshot,
							  true, false, 0);
	SagaSpiCheck(rc, SPI_OK_SELECT, "reading subscriptions");

	/*
	 * The lookup itself may have processed an invalidation; and the cache
	 * keeps the types a backend publishes, which a service may make many
	 * (order.42.placed, ...): past a bound it starts over.
	 */
	if (sub_cache != NULL && hash_get_num_entries(sub_cache) >= SUB_CACHE_MAX_TYPES)
		sub_cache_stale = true;
	sub_cache_validate(relid);

	/* parsed in full before the entry exists: an error leaves no half entry */
	old = MemoryContextSwitchTo(sub_cxt);
	subs = palloc0(sizeof(SubInfo) * (SPI_processed + 1));
	MemoryContextSwitchTo(old);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		bool		isnull;
		SubInfo    *s = &subs[nsubs++];
		SubOptions	o;

		s->id = DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull));
		strlcpy(s->topic, TextDatumGetCString(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull)),
				SAGA_TOPIC_SIZE);
		parse_options(DatumGetJsonbP(SPI_getbinval(tup, SPI_tuptable->tupdesc, 3, &isnull)),
					  &o, "subscription options", true);
		s->max_attempts = o.retry.max_attempts;
		if (o.start_saga != NULL)
			strlcpy(s->start_saga, o.start_saga, NAMEDATALEN);
		if (o.filter != NULL)
		{
			JsonPath   *jp = parse_filter(o.filter, "subscription options");

			s->filter = MemoryContextAlloc(sub_cxt, VARSIZE(jp));
			memcpy(s->filter, jp, VARSIZE(jp));
		}
	}
	entry = hash_search(sub_cache, type, HASH_ENTER, &found);
	entry->subs = subs;
	entry->nsubs = nsubs;
	return entry;
}

/* ---------- filters ---------- */

/*
 * jsonb_path_match(payload, filter) in lax mode.  silent suppresses the
 * errors jsonpath can suppress (a non-boolean result becomes NULL); *isnull
 * is set for a NULL result.
 */
static bool
filter_match(Jsonb *payload, JsonPath *filter, bool silent, bool *isnull)
{
	static Jsonb *no_vars = NULL;
	LOCAL_FCINFO(fcinfo, 4);
	Datum		result;

	if (no_vars == NULL)
	{
		Jsonb	   *v = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));

		no_vars = MemoryContextAlloc(TopMemoryContext, VARSIZE(v));
		memcpy(no_vars, v, VARSIZE(v));
	}
	InitFunctionCallInfoData(*fcinfo, NULL, 4, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = JsonbPGetDatum(payload);
	fcinfo->args[0].isnull = false;
	fcinfo->args[1].value = PointerGetDatum(filter);
	fcinfo->args[1].isnull = false;
	fcinfo->args[2].value = JsonbPGetDatum(no_vars);
	fcinfo->args[2].isnull = false;
	fcinfo->args[3].value = BoolGetDatum(silent);
	fcinfo->args[3].isnull = false;
	result = jsonb_path_match(fcinfo);
	*isnull = fcinfo->isnull;
	return !fcinfo->isnull && DatumGetBool(result);
}

/*
 * A filter's time budget (saga.filter_timeout).  jsonpath can take time
 * exponential in its length ($[0,0,0,0][0,0,0,0]...): the budget makes that
 * one skipped delivery with a reason, not a publisher, report or worker
 * round that never ends.  The timer cancels the statement the way
 * statement_timeout does; the evaluation's subtransaction takes the cancel
 * and, seeing that it was the filter's timer, records it as the filter's
 * error instead of raising it.
 */
static TimeoutId filter_timeout_id = MAX_TIMEOUTS;
static volatile sig_atomic_t filter_timed_out = false;

static void
filter_timeout_handler(void)
{
	filter_timed_out = true;
	InterruptPending = true;
	QueryCancelPending = true;
	SetLatch(MyLatch);
}

static void
filter_timer_start(void)
{
	if (saga_filter_timeout <= 0)
		return;
	if (filter_timeout_id == MAX_TIMEOUTS)
		filter_timeout_id = RegisterTimeout(USER_TIMEOUT, filter_timeout_handler);
	filter_timed_out = false;
	enable_timeout_after(filter_timeout_id, saga_filter_timeout);
}

static void
filter_timer_stop(void)
{
	if (filter_timeout_id == MAX_TIMEOUTS)
		return;
	disable_timeout(filter_timeout_id, false);

	/*
	 * The timer fired after the filter's last interrupt check: the cancel it
	 * asked for is ours and the filter finished; it must not cancel the
	 * publish instead.
	 */
	if (filter_timed_out && QueryCancelPending)
	{
		QueryCancelPending = false;
		filter_timed_out = false;
	}
}

/*
 * What stopped a filter: its own error, or a cancel that was its timer's.
 * A cancel or shutdown that is not the filter's is raised again.  The
 * reason is bounded like every stored error.
 */
static char *
filter_error(ErrorData *e)
{
	if (e->sqlerrcode == ERRCODE_QUERY_CANCELED && filter_timed_out)
	{
		filter_timed_out = false;
		return psprintf("filter took longer than saga.filter_timeout (%d ms)", saga_filter_timeout);
	}
	if (e->sqlerrcode == ERRCODE_QUERY_CANCELED ||
		ERRCODE_TO_CATEGORY(e->sqlerrcode) == ERRCODE_OPERATOR_INTERVENTION ||
		ERRCODE_TO_CATEGORY(e->sqlerrcode) == ERRCODE_INSUFFICIENT_RESOURCES)
		ReThrowError(e);
	return psprintf("%s (SQLSTATE %s)", SagaClip(e->message, SAGA_MAX_FILTER_ERROR),
					unpack_sql_state(e->sqlerrcode));
}

/*
 * Evaluate one filter with errors raised, in a subtransaction: false and
 * the error's message when it fails.
 */
static bool
filter_match_guarded(Jsonb *payload, JsonPath *filter, bool *match, char **error)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool ok = true;
	volatile bool m = false;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		bool		isnull;

		filter_timer_start();
		m = filter_match(payload, filter, false, &isnull);
		filter_timer_stop();
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *e;

		filter_timer_stop();
		MemoryContextSwitchTo(cxt);
		e = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		*error = filter_error(e);
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	*match = m;
	return ok;
}

/*
 * Which of the subscriptions take this payload.  Filters are evaluated
 * silently, all in one subtransaction (a filter can raise errors that
 * silent mode does not suppress); a filter that yields NULL, or a
 * subtransaction that failed, is evaluated again alone with errors raised,
 * to tell a NULL from an error and to say what the error was.  An error
 * skips the delivery and is recorded (errors[i]).
 */
static void
match_filters(SubInfo *subs, int n, Jsonb *payload, bool *deliver, char **errors)
{
	bool		any = false;
	bool	   *unsure = palloc0(sizeof(bool) * n);
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	int			next = 0;
	bool		timed_out;

	for (int i = 0; i < n; i++)
	{
		errors[i] = NULL;
		deliver[i] = subs[i].filter == NULL;
		if (subs[i].filter != NULL)
			any = true;
	}
	if (!any)
		return;

	/*
	 * Silently, in one subtransaction; a filter that raises anyway ends it,
	 * and the pass goes on from the next filter in a new one, so that each
	 * filter runs once here (a filter that timed out is not run again).
	 */
	while (next < n)
	{
		volatile int current = next;

		BeginInternalSubTransaction(NULL);
		MemoryContextSwitchTo(cxt);
		PG_TRY();
		{
			for (; current < n; current++)
			{
				bool		isnull;

				if (subs[current].filter == NULL)
					continue;
				filter_timer_start();
				deliver[current] = filter_match(payload, subs[current].filter, true, &isnull);
				filter_timer_stop();
				unsure[current] = isnull;
			}
			ReleaseCurrentSubTransaction();
		}
		PG_CATCH();
		{
			ErrorData  *e;
			char	   *reason;

			filter_timer_stop();
			MemoryContextSwitchTo(cxt);
			e = CopyErrorData();
			FlushErrorState();
			RollbackAndReleaseCurrentSubTransaction();
			MemoryContextSwitchTo(cxt);
			CurrentResourceOwner = owner;
			timed_out = filter_timed_out && e->sqlerrcode == ERRCODE_QUERY_CANCELED;
			reason = filter_error(e);	/* raises what is not a filter's own */
			deliver[current] = false;
			if (timed_out)
				errors[current] = reason;
			else
				unsure[current] = true; /* run it again alone, for its message */
		}
		PG_END_TRY();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		next = current + 1;
	}

	for (int i = 0; i < n; i++)
	{
		if (subs[i].filter == NULL || !unsure[i])
			continue;
		if (!filter_match_guarded(payload, subs[i].filter, &deliver[i], &errors[i]))
			deliver[i] = false;
	}
}

/*
 * Why a filter skipped a delivery: one row in saga.filter_errors, an
 * insert that waits for nobody (a counter on the subscription row would
 * make every publisher whose payload trips the filter wait for the last).
 */
static void
record_filter_error(int64 sub_id, int64 event_id, const char *error)
{
	Oid			types[3] = {INT8OID, INT8OID, TEXTOID};
	Datum		values[3] = {Int64GetDatum(sub_id), Int64GetDatum(event_id),
	CStringGetTextDatum(error)};

	SagaExecute(&plan_filter_error,
				"INSERT INTO saga.filter_errors (subscription_id, event_id, error, at) "
				"VALUES ($1, $2, $3, pg_catalog.clock_timestamp())",
				3, types, values, NULL, SPI_OK_INSERT, "recording a filter error");
}

/* ---------- publish ---------- */

/*
 * A delivery's headers; without delivery_key (NULL), those every delivery of
 * the event has, for the statement to add each one's idempotency key.
 */
static Jsonb *
delivery_headers(int64 event_id, const char *type, const char *correlation_id,
				 const char *traceparent, int64 causation_id, bool has_cause,
				 const char *key, bool replay, const char *delivery_key)
{
	JsonbParseState *ps = NULL;

	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	SagaJbStr(&ps, "kind", "event");
	SagaJbInt(&ps, "attempt", 1);
	SagaJbStr(&ps, "correlation_id", correlation_id);
	SagaJbStr(&ps, "traceparent", traceparent);
	SagaJbInt(&ps, "event_id", event_id);
	SagaJbStr(&ps, "event_type", type);
	if (has_cause)
		SagaJbInt(&ps, "causation_id", causation_id);
	else
		SagaJbStr(&ps, "causation_id", NULL);
	SagaJbStr(&ps, "key", key);
	SagaJbBool(&ps, "replay", replay);
	if (delivery_key != NULL)
		SagaJbStr(&ps, "idempotency_key", delivery_key);
	return JsonbValueToJsonb(pushJsonbValue(&ps, WJB_END_OBJECT, NULL));
}

/* the event of an idempotency key, or 0 */
static int64
event_by_key(const char *type, const char *key)
{
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2] = {CStringGetTextDatum(type), CStringGetTextDatum(key)};
	bool		isnull;

	SagaExecute(&plan_by_key,
				"SELECT id FROM saga.events WHERE type = $1 AND idempotency_key = $2",
				2, types, values, NULL, SPI_OK_SELECT, "finding an idempotency key");
	if (SPI_processed == 0)
		return 0;
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * The common publish, of no flow and without an idempotency key: the event
 * row and a delivery per subscription (topics, subscription ids,
 * max_attempts and idempotency keys in the arrays), as direct row writes
 * (rows.c).
 */
static void
write_event(int64 id, const char *type, Jsonb *payload, const char *corr, int64 causation_id,
			bool has_cause, const char *key, const char *trace, TimestampTz now, int hops,
			int deliveries, bool late, int n, Datum *topics, Datum *subs, Datum *max_attempts,
			Datum *keys)
{
	SagaRows   *r = SagaRowsOpen(ROWS_EVENTS);
	Oid			seq;

	SagaRowsNew(r);
	SagaRowsSet(r, EC_ID, Int64GetDatum(id), false);
	SagaRowsSet(r, EC_TYPE, CStringGetTextDatum(type), false);
	SagaRowsSet(r, EC_PAYLOAD, JsonbPGetDatum(payload), false);
	SagaRowsSet(r, EC_CORRELATION_ID, CStringGetTextDatum(corr), false);
	SagaRowsSet(r, EC_CAUSATION_ID, Int64GetDatum(causation_id), !has_cause);
	SagaRowsSet(r, EC_KEY, key ? CStringGetTextDatum(key) : (Datum) 0, key == NULL);
	SagaRowsSet(r, EC_TRACEPARENT, CStringGetTextDatum(trace), false);
	SagaRowsSet(r, EC_PUBLISHED_AT, TimestampTzGetDatum(now), false);
	SagaRowsSet(r, EC_PUBLISHER, CStringGetTextDatum(SagaActorName()), false);
	SagaRowsSet(r, EC_HOPS, Int32GetDatum(hops), false);
	SagaRowsSet(r, EC_DELIVERIES, Int32GetDatum(deliveries), false);
	SagaRowsSet(r, EC_LATE, BoolGetDatum(late), false);
	SagaRowsInsert(r, NULL);
	SagaRowsClose(r);
	if (n == 0)
		return;

	seq = SagaRelid("deliveries_id_seq");
	r = SagaRowsOpen(ROWS_OUTBOX);
	for (int i = 0; i < n; i++)
	{
		/* deliveries count down from -1: the ids of saga tasks are positive */
		int64		task_id = -DatumGetInt64(DirectFunctionCall1(nextval_oid,
																 ObjectIdGetDatum(seq)));

		SagaRowsNew(r);
		SagaRowsSet(r, TC_ID, Int64GetDatum(task_id), false);
		SagaRowsSet(r, TC_TOPIC, topics[i], false);
		SagaRowsSet(r, TC_KIND, CStringGetTextDatum("event"), false);
		SagaRowsSet(r, TC_ATTEMPT, Int32GetDatum(1), false);
		SagaRowsSet(r, TC_MAX_ATTEMPTS, max_attempts[i], false);
		SagaRowsSet(r, TC_DELIVERIES, Int32GetDatum(0), false);
		SagaRowsSet(r, TC_PAYLOAD, JsonbPGetDatum(payload), false);
		SagaRowsSet(r, TC_HEADERS,
					JsonbPGetDatum(delivery_headers(id, type, corr, trace, causation_id, has_cause,
													key, false, TextDatumGetCString(keys[i]))),
					false);
		SagaRowsSet(r, TC_VISIBLE_AT, TimestampTzGetDatum(now), false);
		SagaRowsSet(r, TC_CREATED_AT, TimestampTzGetDatum(now), false);
		SagaRowsSet(r, TC_EVENT_ID, Int64GetDatum(id), false);
		SagaRowsSet(r, TC_SUBSCRIPTION_ID, subs[i], false);
		SagaRowsInsert(r, NULL);
	}
	SagaRowsClose(r);
}

/* the event row's parameters, $1 to $11, as both publish statements take them */
#define EVENT_PARAMS 11
static Oid event_types[EVENT_PARAMS] = {INT8OID, TEXTOID, JSONBOID, TEXTOID, INT8OID,
TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, TEXTOID, INT4OID};

static void
event_params(Datum *values, char *nulls, int64 id, const char *type, Jsonb *payload,
			 const char *corr, int64 causation_id, bool has_cause, const char *key,
			 const char *idempotency_key, const char *trace, TimestampTz now, int hops)
{
	memset(nulls, ' ', EVENT_PARAMS);
	values[0] = Int64GetDatum(id);
	values[1] = CStringGetTextDatum(type);
	values[2] = JsonbPGetDatum(payload);
	values[3] = CStringGetTextDatum(corr);
	values[4] = Int64GetDatum(causation_id);
	nulls[4] = has_cause ? ' ' : 'n';
	values[5] = key ? CStringGetTextDatum(key) : (Datum) 0;
	nulls[5] = key ? ' ' : 'n';
	values[6] = idempotency_key ? CStringGetTextDatum(idempotency_key) : (Datum) 0;
	nulls[6] = idempotency_key ? ' ' : 'n';
	values[7] = CStringGetTextDatum(trace);
	values[8] = TimestampTzGetDatum(now);
	values[9] = CStringGetTextDatum(SagaActorName());
	values[10] = Int32GetDatum(hops);
}

/*
 * A start_saga subscription's delivery: the saga starts in the publishing
 * transaction, its input the payload, its correlation id the event's, its
 * trace a span in the event's, its cause the event (see flush_publish).  The
 * idempotency key "event:<id>" makes a replay of the event find the saga it
 * started rather than start another; the prefix keeps the keys clear of
 * those callers choose.
 */
static int64
start_from_event(const char *name, int64 sub_id, int64 event_id, Jsonb *payload,
				 const char *correlation_id, const char *traceparent)
{
	SagaDef    *def = SagaDefinitionLatest(name);
	int64		saga_id;

	/*
	 * Its versions were deleted (saga.definitions allows that for versions
	 * no saga uses): the publisher must not fail for it; the subscription
	 * records why, as for a filter that fails.
	 */
	if (def == NULL)
	{
		record_filter_error(sub_id, event_id,
							psprintf("saga definition \"%s\" of start_saga does not exist", name));
		return 0;
	}
	SagaCascadeEnter();
	PG_TRY();
	{
		saga_id = SagaStart(def, payload, correlation_id,
							psprintf(SAGA_EVENT_KEY_PREFIX "%lld", (long long) event_id),
							SagaChildTraceparent(traceparent), event_id);
	}
	PG_FINALLY();
	{
		SagaCascadeLeave();
	}
	PG_END_TRY();
	return saga_id;
}

/*
 * The bridges nest: an event starts a saga, whose transition publishes an
 * event, which starts sagas...  The hop limit bounds the depth of such a
 * chain but not its breadth (two definitions that each publish the event
 * that starts both double at every level), and all of it runs in the
 * outermost caller's transaction and C stack.  So one outermost call may
 * start and publish at most SAGA_MAX_CASCADE of them, nested at most
 * SAGA_MAX_CASCADE_DEPTH deep; past that the call fails (54000) and
 * nothing of it stays.
 */
static int	cascade_depth = 0;
static int	cascade_work = 0;

/* a new outermost call (SagaEnter outside any guest): a budget of its own */
void
SagaCascadeReset(void)
{
	cascade_work = 0;
}

void
SagaCascadeEnter(void)
{
	if (cascade_depth >= SAGA_MAX_CASCADE_DEPTH || cascade_work >= SAGA_MAX_CASCADE)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many sagas started and events published by one call"),
				 errdetail("Sagas started by start_saga subscriptions and events published by saga definitions went past %d in all or %d levels deep.",
						   SAGA_MAX_CASCADE, SAGA_MAX_CASCADE_DEPTH),
				 errhint("A definition probably publishes an event that starts it, or another such definition, again: break the loop.")));
	cascade_work++;
	cascade_depth++;
}

void
SagaCascadeLeave(void)
{
	Assert(cascade_depth > 0);
	cascade_depth--;
}

/*
 * An event a saga awaits, published since it started: the first of that
 * type with that correlation id, as of the latest snapshot.  Taking the
 * type's lock in SHARE mode waits for its publishers in flight (which hold
 * it ROW EXCLUSIVE) and holds off new ones until we commit; they then find
 * our await step (SagaAwaitEvent), or we find their event here.
 */
/*
 * The lock that orders an await step becoming ready (SHARE) and a publish of
 * its event (ROW EXCLUSIVE), per event type and correlation id: an object
 * lock on (class saga.outbox, hash of the type, hash of the correlation
 * id), so that a transaction left open after making an await step ready
 * holds up only the publishers of that type with that correlation id.  A
 * collision of the hashes makes two pairs wait for each other, nothing
 * worse.  The background worker does not wait (55P03, tried later).
 */
static void
lock_awaited(const char *type, const char *correlation_id, LOCKMODE mode)
{
	LOCKTAG		tag;
	uint32		t = hash_bytes((const unsigned char *) type, strlen(type));
	uint32		c = hash_bytes((const unsigned char *) correlation_id, strlen(correlation_id));

	SET_LOCKTAG_OBJECT(tag, MyDatabaseId, SagaRelid("outbox"), t ^ (c >> 16), c & 0xFFFF);
	if (LockAcquire(&tag, mode, false, saga_is_worker) == LOCKACQUIRE_NOT_AVAIL)
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("could not lock the await steps of event type \"%s\" and correlation id \"%s\"",
						type, SagaEcho(correlation_id)),
				 errdetail("A transaction that made such a step ready, or published such an event, has not committed yet.")));
}

/*
 * A define that makes a type awaited waits for the type's publishers in
 * flight, as a subscribe does: every publisher that starts after it
 * commits knows the type is awaited (SagaTypeAwaited), and a saga of the
 * definition starts after the publishers before it have committed.
 */
void
SagaLockAwaitedType(const char *type)
{
	lock_event_type(SagaRelid("subscriptions"), type, ShareRowExclusiveLock);
}

bool
SagaAwaitedEvent(const char *type, const char *correlation_id, TimestampTz since,
				 int64 *event_id, Jsonb **payload)
{
	static SPIPlanPtr plan_awaited_event = NULL;
	Oid			types[3] = {TEXTOID, TEXTOID, TIMESTAMPTZOID};
	Datum		values[3];
	bool		isnull;

	if (correlation_id == NULL)
		return false;
	lock_awaited(type, correlation_id, ShareLock);
	values[0] = CStringGetTextDatum(type);
	values[1] = CStringGetTextDatum(correlation_id);
	values[2] = TimestampTzGetDatum(since);
	SagaExecuteLatest(&plan_awaited_event,
					  "SELECT id, payload FROM saga.events WHERE correlation_id = $2 AND type = $1 "
					  "AND published_at >= $3 ORDER BY published_at, id LIMIT 1",
					  3, types, values, NULL, SPI_OK_SELECT, "finding an awaited event");
	if (SPI_processed == 0)
		return false;
	*event_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	*payload = DatumGetJsonbPCopy(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	return true;
}

/*
 * Record an event and deliver it to every subscription of its type whose
 * filter takes it, in the current transaction.  Returns the event's id (an
 * earlier event's, for a repeated idempotency key).  The caller checked the
 * arguments' bounds and runs as the engine.  A start_saga subscription starts its
 * saga, and await steps waiting for the event succeed, before it returns.
 */
int64
SagaPublish(const char *type, Jsonb *payload, const char *correlation_id,
			int64 causation_id, SagaCause cause, const char *key,
			const char *idempotency_key, const char *traceparent)
{
	bool		has_cause = (cause != SAGA_NO_CAUSE);
	int			nstart = 0;
	int		   *start_idx;
	Oid			relid = SagaRelid("subscriptions");
	SubCacheEntry *entry;
	int			nsubs;
	SubInfo    *subs;
	bool	   *deliver;
	char	  **errors;
	int			hops = 0;
	int64		id;
	char	   *corr;
	char	   *trace;
	TimestampTz now;
	SagaFlowVerdict verdict = {0};
	Datum	   *d_topics,
			   *d_subs,
			   *d_max,
			   *d_keys;
	int			ndeliver = 0;
	Jsonb	   *shared_headers;
	bool		direct;
	char	   *cause_trace = NULL;

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("saga events need extension version 0.3"),
				 errhint("Run ALTER EXTENSION saga UPDATE.")));

	/* the cause gives the correlation, the trace and the hop count */
	if (has_cause)
	{
		Oid			types[1] = {INT8OID};
		Datum		values[1] = {Int64GetDatum(causation_id)};

		SagaExecute(&plan_cause,
					"SELECT correlation_id, traceparent, hops FROM saga.events WHERE id = $1",
					1, types, values, NULL, SPI_OK_SELECT, "finding the cause of an event");
		if (SPI_processed == 0 && cause == SAGA_CAUSE_IF_RETAINED)
			has_cause = false;
		else if (SPI_processed == 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("event %lld does not exist", (long long) causation_id),
					 errdetail("causation_id names the event being handled; it may have been purged (saga.retention).")));
	}
	if (has_cause)
	{
		char	   *cause_corr;
		bool		isnull;

		cause_corr = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		cause_trace = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
		hops = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
		if (correlation_id != NULL && strcmp(correlation_id, cause_corr) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("correlation_id \"%s\" differs from that of its cause", SagaEcho(correlation_id)),
					 errdetail("Event %lld has correlation id \"%s\"; an event inherits its cause's.",
							   (long long) causation_id, SagaEcho(cause_corr)),
					 errhint("Leave correlation_id out when passing causation_id.")));
		correlation_id = cause_corr;
		if (hops < INT_MAX)
			hops++;
	}

	if (idempotency_key != NULL)
	{
		int64		existing = event_by_key(type, idempotency_key);

		if (existing != 0)
			return existing;
	}

	id = DatumGetInt64(DirectFunctionCall1(nextval_oid,
										   ObjectIdGetDatum(SagaRelid("events_id_seq"))));
	corr = correlation_id ? pstrdup(correlation_id) : psprintf("%lld", (long long) id);
	/* the event is a span of its own, in its cause's trace or the caller's */
	if (traceparent != NULL)
		trace = SagaChildTraceparent(traceparent);
	else if (cause_trace != NULL && SagaValidTraceparent(cause_trace))
		trace = SagaChildTraceparent(cause_trace);
	else
		trace = SagaNewTraceparent();
	now = GetCurrentTimestamp();

	/*
	 * With a key, take it before anything else: a concurrent publish with
	 * the same key waits on our insert, then finds our event.
	 */
	if (idempotency_key != NULL)
	{
		Datum		values[EVENT_PARAMS];
		char		nulls[EVENT_PARAMS];

		event_params(values, nulls, id, type, payload, corr, causation_id, has_cause, key,
					 idempotency_key, trace, now, hops);
		SagaExecute(&plan_event_keyed,
					"INSERT INTO saga.events (id, type, payload, correlation_id, causation_id, key, "
					"idempotency_key, traceparent, published_at, publisher, hops, deliveries) "
					"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0) "
					"ON CONFLICT (type, idempotency_key) WHERE idempotency_key IS NOT NULL "
					"DO NOTHING RETURNING id",
					EVENT_PARAMS, event_types, values, nulls, SPI_OK_INSERT_RETURNING,
					"recording an event");
		if (SPI_processed == 0)
		{
			int64		existing = event_by_key(type, idempotency_key);

			if (existing == 0)
				ereport(ERROR,
						(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
						 errmsg("could not serialize access due to a concurrent saga.publish with idempotency key \"%s\"",
								idempotency_key)));
			return existing;
		}
	}

	/* until we commit, no subscription of this type comes or goes */
	lock_event_type(relid, type, RowExclusiveLock);
	entry = subscriptions_of(type, relid);
	nsubs = entry->nsubs;
	subs = palloc(sizeof(SubInfo) * (nsubs + 1));
	memcpy(subs, entry->subs, sizeof(SubInfo) * nsubs);
	/* the filters live in the cache, which an invalidation may empty */
	for (int i = 0; i < nsubs; i++)
		if (subs[i].filter != NULL)
		{
			JsonPath   *copy = palloc(VARSIZE(subs[i].filter));

			memcpy(copy, subs[i].filter, VARSIZE(subs[i].filter));
			subs[i].filter = copy;
		}

	/* flows first: the hop limit decides whether anything is delivered */
	verdict.hop_limit = saga_max_hops;
	if (SagaFlowMayConcern(type, hops))
		SagaFlowObserve(type, corr, id, hops, now, &verdict);
	else
		verdict.over_limit = hops > saga_max_hops;

	deliver = palloc(sizeof(bool) * (nsubs + 1));
	errors = palloc(sizeof(char *) * (nsubs + 1));
	if (verdict.over_limit)
		memset(deliver, 0, sizeof(bool) * (nsubs + 1));
	else
		match_filters(subs, nsubs, payload, deliver, errors);

	d_topics = palloc(sizeof(Datum) * (nsubs + 1));
	d_subs = palloc(sizeof(Datum) * (nsubs + 1));
	d_max = palloc(sizeof(Datum) * (nsubs + 1));
	d_keys = palloc(sizeof(Datum) * (nsubs + 1));
	start_idx = palloc(sizeof(int) * (nsubs + 1));
	for (int i = 0; i < nsubs; i++)
	{
		if (!verdict.over_limit && errors[i] != NULL)
			record_filter_error(subs[i].id, id, errors[i]);
		if (!deliver[i])
			continue;
		if (subs[i].start_saga[0] != '\0')
		{
			start_idx[nstart++] = i;
			continue;
		}
		d_topics[ndeliver] = CStringGetTextDatum(subs[i].topic);
		d_subs[ndeliver] = Int64GetDatum(subs[i].id);
		d_max[ndeliver] = Int32GetDatum(subs[i].max_attempts);
		d_keys[ndeliver] = CStringGetTextDatum(psprintf("%lld:%lld", (long long) id,
														  (long long) subs[i].id));
		ndeliver++;
	}
	/* the common publish is written directly; the statements add each delivery's key to these */
	direct = idempotency_key == NULL && verdict.nflows == 0 && verdict.nnew == 0;
	shared_headers = direct ? NULL : delivery_headers(id, type, corr, trace, causation_id,
													  has_cause, key, false, NULL);
	if (direct)
		write_event(id, type, payload, corr, causation_id, has_cause, key, trace, now, hops,
					ndeliver + nstart, verdict.late, ndeliver, d_topics, d_subs, d_max, d_keys);
	else if (idempotency_key == NULL)
	{
		/*
		 * The event, its deliveries and its flows in one statement, as of
		 * the latest snapshot (the flows were read so); what it could not
		 * write is settled under the flows' locks.
		 */
		Oid			types[SAGA_FLOW_FIRST_PARAM - 1 + SAGA_FLOW_ARRAYS];
		Datum		values[SAGA_FLOW_FIRST_PARAM - 1 + SAGA_FLOW_ARRAYS];
		char		nulls[SAGA_FLOW_FIRST_PARAM - 1 + SAGA_FLOW_ARRAYS];
		const Oid	more[7] = {INT4OID, BOOLOID, JSONBOID, TEXTARRAYOID, INT8ARRAYOID,
		INT4ARRAYOID, TEXTARRAYOID};
		bool		isnull;

		StaticAssertStmt(EVENT_PARAMS + 7 + 1 == SAGA_FLOW_FIRST_PARAM,
						 "the flows' parameters follow the publish statement's");
		memcpy(types, event_types, sizeof(event_types));
		memcpy(types + EVENT_PARAMS, more, sizeof(more));
		memcpy(types + SAGA_FLOW_FIRST_PARAM - 1, SagaFlowArrayTypes, sizeof(SagaFlowArrayTypes));
		memset(nulls, ' ', sizeof(nulls));
		event_params(values, nulls, id, type, payload, corr, causation_id, has_cause, key,
					 NULL, trace, now, hops);
		values[11] = Int32GetDatum(ndeliver + nstart);
		values[12] = BoolGetDatum(verdict.late);
		values[13] = JsonbPGetDatum(shared_headers);
		values[14] = text_array(d_topics, ndeliver);
		values[15] = int8_array(d_subs, ndeliver);
		values[16] = int4_array(d_max, ndeliver);
		values[17] = text_array(d_keys, ndeliver);
		SagaFlowWriteArrays(&verdict, values + SAGA_FLOW_FIRST_PARAM - 1);
		SagaExecuteLatest(&plan_publish_flows,
						  "WITH e AS (INSERT INTO saga.events (id, type, payload, correlation_id, "
						  "causation_id, key, idempotency_key, traceparent, published_at, publisher, hops, "
						  "deliveries, late) "
						  "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)), "
						  "o AS (INSERT INTO saga.outbox (id, topic, kind, attempt, max_attempts, payload, "
						  "headers, visible_at, created_at, event_id, subscription_id) "
						  "SELECT -pg_catalog.nextval('saga.deliveries_id_seq'::pg_catalog.regclass), "
						  "d.topic, 'event', 1, d.max_attempts, $3, "
						  "$14 OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('idempotency_key', d.ikey), "
						  "$9, $9, $1, d.sub "
						  "FROM ROWS FROM (pg_catalog.unnest($15), pg_catalog.unnest($16), "
						  "pg_catalog.unnest($17), pg_catalog.unnest($18)) AS d(topic, sub, max_attempts, ikey)), "
						  SAGA_SQL_FLOW_CTES " " SAGA_SQL_FLOW_RESULT,
						  SAGA_FLOW_FIRST_PARAM - 1 + SAGA_FLOW_ARRAYS, types, values, nulls,
						  SPI_OK_SELECT, "publishing an event of a flow");
		SagaFlowSettle(&verdict,
					   DatumGetArrayTypePCopy(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)),
					   DatumGetArrayTypePCopy(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)),
					   id, now);
	}
	else
	{
		Oid			types[9] = {INT8OID, JSONBOID, TIMESTAMPTZOID, INT4OID, BOOLOID, JSONBOID,
		TEXTARRAYOID, INT8ARRAYOID, INT4ARRAYOID};
		Datum		values[10];
		Oid			types10[10];

		memcpy(types10, types, sizeof(types));
		types10[9] = TEXTARRAYOID;
		values[0] = Int64GetDatum(id);
		values[1] = JsonbPGetDatum(payload);
		values[2] = TimestampTzGetDatum(now);
		values[3] = Int32GetDatum(ndeliver + nstart);
		values[4] = BoolGetDatum(verdict.late);
		values[5] = JsonbPGetDatum(shared_headers);
		values[6] = text_array(d_topics, ndeliver);
		values[7] = int8_array(d_subs, ndeliver);
		values[8] = int4_array(d_max, ndeliver);
		values[9] = text_array(d_keys, ndeliver);
		SagaExecute(&plan_deliver_keyed,
					"WITH e AS (UPDATE saga.events SET deliveries = $4, late = $5 WHERE id = $1) "
					"INSERT INTO saga.outbox (id, topic, kind, attempt, max_attempts, payload, headers, "
					"visible_at, created_at, event_id, subscription_id) "
					"SELECT -pg_catalog.nextval('saga.deliveries_id_seq'::pg_catalog.regclass), "
					"d.topic, 'event', 1, d.max_attempts, $2, "
					"$6 OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('idempotency_key', d.ikey), "
					"$3, $3, $1, d.sub "
					"FROM ROWS FROM (pg_catalog.unnest($7), pg_catalog.unnest($8), "
					"pg_catalog.unnest($9), pg_catalog.unnest($10)) AS d(topic, sub, max_attempts, ikey)",
					10, types10, values, NULL, SPI_OK_INSERT, "delivering an event");
		if (verdict.nflows > 0 || verdict.nnew > 0)
			SagaFlowApply(&verdict, id, now);
	}

	for (int i = 0; i < ndeliver; i++)
		SagaAnnounce(TextDatumGetCString(d_topics[i]));

	/* the bridges to sagas: those it starts, and the await steps it ends */
	for (int i = 0; i < nstart; i++)
		(void) start_from_event(subs[start_idx[i]].start_saga, subs[start_idx[i]].id, id, payload,
								corr, trace);
	if (!verdict.over_limit && SagaTypeAwaited(type))
	{
		lock_awaited(type, corr, RowExclusiveLock);
		SagaAwaitEvent(type, corr, id, payload, now);
	}
	return id;
}

/* saga.publish(event_type, payload, correlation_id, causation_id, key, idempotency_key, traceparent) */
Datum
saga_publish(PG_FUNCTION_ARGS)
{
	char	   *type;
	Jsonb	   *payload;
	char	   *correlation_id = SagaOptionalText(fcinfo, 2, "correlation_id", SAGA_MAX_ID_LEN);
	char	   *key = SagaOptionalText(fcinfo, 4, "key", SAGA_MAX_ID_LEN);
	char	   *idempotency_key = SagaOptionalText(fcinfo, 5, "idempotency_key", SAGA_MAX_ID_LEN);
	char	   *traceparent;
	SagaUserSave save;
	int64		id;

	SagaRequireArg(fcinfo, 0, "event_type");
	SagaRequireArg(fcinfo, 1, "payload");
	traceparent = SagaTraceparentArg(fcinfo, 6);
	type = SagaTextArg(PG_GETARG_TEXT_PP(0), SAGA_MAX_EVENT_TYPE_LEN, "event type");
	check_event_type(type);
	payload = PG_GETARG_JSONB_P(1);
	SagaCheckPayload(payload, "event payload");

	SagaEnter(&save);
	id = SagaPublish(type, payload, correlation_id,
					 PG_ARGISNULL(3) ? 0 : PG_GETARG_INT64(3),
					 PG_ARGISNULL(3) ? SAGA_NO_CAUSE : SAGA_CAUSE,
					 key, idempotency_key, traceparent);
	SagaLeave(&save);
	PG_RETURN_INT64(id);
}

/* ---------- reports on deliveries ---------- */

/* what a report reads of a delivery, in this order */
#define DELIVERY_COLUMNS \
	"attempt, COALESCE(max_attempts, 2147483647), deliveries, lease_owner IS NOT NULL, " \
	"lease_owner IS NOT NULL AND visible_at > pg_catalog.clock_timestamp(), " \
	"visible_at <= pg_catalog.clock_timestamp(), " \
	"lease_owner IS NULL AND visible_at > pg_catalog.clock_timestamp(), " \
	"subscription_id, error"

typedef struct DeliveryRow
{
	int32		attempt;
	int32		max_attempts;
	int32		deliveries;
	bool		leased;
	bool		live_lease;
	bool		visible;
	bool		backing_off;
	int64		subscription_id;	/* 0: none */
	Jsonb	   *error;
} DeliveryRow;

static bool
read_delivery(DeliveryRow *row)
{
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;

	if (SPI_processed == 0)
		return false;
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	row->attempt = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
	row->max_attempts = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
	row->deliveries = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
	row->leased = DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull));
	row->live_lease = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull));
	row->visible = DatumGetBool(SPI_getbinval(tup, desc, 6, &isnull));
	row->backing_off = DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull));
	d = SPI_getbinval(tup, desc, 8, &isnull);
	row->subscription_id = isnull ? 0 : DatumGetInt64(d);
	d = SPI_getbinval(tup, desc, 9, &isnull);
	row->error = isnull ? NULL : DatumGetJsonbPCopy(d);
	return true;
}

/* lock a delivery, or (for a success) take it out of the outbox at once */
static bool
lock_delivery(int64 task_id, DeliveryRow *row, bool take)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(task_id)};

	if (take)
		SagaExecute(&plan_take,
					"DELETE FROM saga.outbox WHERE id = $1 AND kind = 'event' RETURNING " DELIVERY_COLUMNS,
					1, types, values, NULL, SPI_OK_DELETE_RETURNING, "taking a delivery");
	else
		SagaExecute(&plan_lock,
					"SELECT " DELIVERY_COLUMNS " FROM saga.outbox WHERE id = $1 AND kind = 'event' "
					"FOR UPDATE",
					1, types, values, NULL, SPI_OK_SELECT, "locking a delivery");
	return read_delivery(row);
}

/* the retry policy of a subscription; the default if it is gone */
static void
subscription_retry(int64 sub_id, SagaRetry *retry)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(sub_id)};
	SubOptions	o;
	bool		isnull;

	SagaDefaultRetry(retry);
	if (sub_id == 0)
		return;
	SagaExecute(&plan_sub_options,
				"SELECT options FROM saga.subscriptions WHERE id = $1",
				1, types, values, NULL, SPI_OK_SELECT, "reading a subscription");
	if (SPI_processed == 0)
		return;
	parse_options(DatumGetJsonbP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)),
				  &o, "subscription options", true);
	*retry = o.retry;
}

/* a delivery failed for good: out of the outbox, into the dead letters */
static void
bury(int64 task_id, Jsonb *error)
{
	Oid			types[2] = {INT8OID, JSONBOID};
	Datum		values[2] = {Int64GetDatum(task_id), JsonbPGetDatum(error)};

	SagaExecute(&plan_dead,
				"WITH d AS (DELETE FROM saga.outbox WHERE id = $1 AND kind = 'event' "
				"RETURNING id, topic, event_id, subscription_id, payload, headers, attempt, deliveries) "
				"INSERT INTO saga.dead_letters (id, topic, event_id, subscription_id, payload, headers, "
				"attempts, deliveries, error, dead_at) "
				"SELECT id, topic, event_id, subscription_id, payload, headers, attempt, deliveries, $2, "
				"pg_catalog.clock_timestamp() FROM d",
				2, types, values, NULL, SPI_OK_INSERT, "recording a dead letter");
}

pg_noreturn static void
lease_lost(int64 task_id, int32 lease, int32 deliveries)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("lease %d of task %lld is no longer held", lease, (long long) task_id),
			 lease < deliveries
			 ? errdetail("The delivery has been delivered again since (delivery %d); a report under an earlier lease is refused.",
						 deliveries)
			 : errdetail("The delivery has been delivered %d times.", deliveries)));
}

/*
 * A report for a delivery no longer in the outbox: one of the dead letters
 * (a repeat of the failure that buried it, or a late success, which
 * resolves it), or one that finished (false: a repeat).  Row lock order:
 * the outbox row, else the dead letter, as saga.redeliver takes them.
 */
static bool
report_gone(int64 task_id, bool success, Jsonb *payload, SagaFence fence, int32 lease)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(task_id)};
	bool		isnull;
	int32		deliveries;
	Jsonb	   *error;

	SagaExecute(&plan_dead_lock,
				"SELECT deliveries, error FROM saga.dead_letters WHERE id = $1 FOR UPDATE",
				1, types, values, NULL, SPI_OK_SELECT, "locking a dead letter");
	if (SPI_processed == 0)
	{
		DeliveryRow row;

		/* redelivered while we looked: the outbox has it again, fenced */
		if (lock_delivery(task_id, &row, false))
		{
			if (fence == FENCE_LEASE && lease != row.deliveries)
				lease_lost(task_id, lease, row.deliveries);
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("task %lld has been redelivered", (long long) task_id),
					 errdetail("saga.redeliver put it back into the outbox; report under its next lease.")));
		}
		if (!SagaDeliveryExisted(task_id))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("task %lld does not exist", (long long) task_id)));
		return false;			/* it finished: a repeat of its report */
	}
	deliveries = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	error = DatumGetJsonbPCopy(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	if (fence == FENCE_LEASE && lease != deliveries)
		lease_lost(task_id, lease, deliveries);
	if (!success && jsonb_equal(error, payload))
		return false;
	if (success && fence == FENCE_LEASE)
	{
		/* the last delivery did the work after all */
		SagaExecute(&plan_dead_resolve,
					"DELETE FROM saga.dead_letters WHERE id = $1",
					1, types, values, NULL, SPI_OK_DELETE, "resolving a dead letter");
		return true;
	}
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("task %lld is a dead letter", (long long) task_id),
			 errdetail("It failed for good; a different report for it is refused."),
			 errhint("saga.redeliver(task_id) sends it again.")));
}

/*
 * A report for an event delivery: fenced as a saga's task is (see
 * SagaReport).  A success removes the delivery; a retryable failure with
 * attempts left makes it visible again after the subscription's backoff;
 * any other failure buries it among the dead letters.  Returns false for a
 * repeat of the report that settled it.
 */
bool
SagaDeliveryReport(int64 task_id, bool success, Jsonb *payload, bool retryable,
				   SagaFence fence, int32 lease)
{
	DeliveryRow row;

	SagaNoteWork(0, task_id, NULL);
	if (!lock_delivery(task_id, &row, success))
		return report_gone(task_id, success, payload, fence, lease);

	if (fence == FENCE_LEASE && lease != row.deliveries)
		lease_lost(task_id, lease, row.deliveries);
	if (fence == FENCE_ROW_LOCK && row.live_lease)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("task %lld is leased to another worker", (long long) task_id),
				 errdetail("Delivery %d holds a lease on it that has not lapsed.", row.deliveries),
				 errhint("Report with lease => n, the lease saga.claim returned, or wait until the lease lapses.")));
	if (fence == FENCE_LEASE && !row.leased)
	{
		/* this delivery already ended in a retryable failure */
		if (!success && retryable && jsonb_equal(row.error, payload))
			return false;
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("lease %d of task %lld has ended", lease, (long long) task_id),
				 errdetail("The delivery was reported as a retryable failure, its lease lapsed, or it was redelivered; the task waits for its next delivery.")));
	}
	if (fence == FENCE_ROW_LOCK && !row.visible)
	{
		if (!success && retryable && row.backing_off && jsonb_equal(row.error, payload))
			return false;
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("task %lld is not visible", (long long) task_id),
				 errdetail("It waits for its next delivery, after a retry delay."),
				 errhint("A report without lease => n is for a task the transactional poll found visible and locked.")));
	}
	if (success)
		return true;			/* lock_delivery took it */

	if (retryable && row.attempt < row.max_attempts)
	{
		SagaRetry	retry;
		int64		delay;
		TimestampTz visible_at;
		Oid			types[4] = {INT8OID, INT4OID, TIMESTAMPTZOID, JSONBOID};
		Datum		values[4];

		subscription_retry(row.subscription_id, &retry);
		delay = SagaBackoffDelay(&retry, row.attempt);
		visible_at = GetCurrentTimestamp() + delay;
		values[0] = Int64GetDatum(task_id);
		values[1] = Int32GetDatum(row.attempt + 1);
		values[2] = TimestampTzGetDatum(visible_at);
		values[3] = JsonbPGetDatum(payload);
		SagaExecute(&plan_retry,
					"UPDATE saga.outbox SET attempt = $2, lease_owner = NULL, visible_at = $3, "
					"error = $4, headers = headers OPERATOR(pg_catalog.||) "
					"pg_catalog.jsonb_build_object('attempt', $2) WHERE id = $1",
					4, types, values, NULL, SPI_OK_UPDATE, "scheduling a redelivery");
		SagaVisibleAt(visible_at);
		return true;
	}
	bury(task_id, payload);
	return true;
}

/* a delivery's last lease lapsed with no attempt left: a dead letter */
void
SagaDeliveryExhaust(int64 task_id, const char *why)
{
	DeliveryRow row;

	SagaNoteWork(0, task_id, NULL);
	if (lock_delivery(task_id, &row, false))
		bury(task_id, reason_doc(why));
}

/* was this delivery id handed out (it may have finished since) */
bool
SagaDeliveryExisted(int64 task_id)
{
	bool		isnull;
	int64		last;

	if (!OidIsValid(SagaRelid("deliveries_id_seq")))
		return false;
	SagaExecute(&plan_existed,
				"SELECT last_value, is_called FROM saga.deliveries_id_seq",
				0, NULL, NULL, NULL, SPI_OK_SELECT, "reading the deliveries sequence");
	last = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)))
		last--;
	return task_id < 0 && task_id != PG_INT64_MIN && -task_id <= last;
}

/* ---------- subscriptions ---------- */

/*
 * Deliver the retained events of a type published in [since, until) to one
 * subscription, in publish order, its filter applied.  replay says these are
 * deliveries of events handled before: they get idempotency keys of their
 * own.  Reads the events as of the latest snapshot: the caller holds what
 * keeps publishers out (subscribe) or accepts that a concurrent publish
 * delivers on its own.  Returns how many deliveries it wrote.
 */
static int64
replay_into(int64 sub_id, const char *type, const char *topic, const char *filter_text,
			int32 max_attempts, const char *start_saga, TimestampTz since, TimestampTz until,
			bool replay)
{
	JsonPath   *filter = filter_text ? parse_filter(filter_text, "subscription options") : NULL;
	SubInfo		sub = {0};
	int64		written = 0;
	int64		after_id = 0;
	Oid			types[4] = {TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID, INT8OID};
	SPIPlanPtr	plan = SagaPrepare(&plan_replay_events,
								   "SELECT id, payload, correlation_id, causation_id, key, traceparent "
								   "FROM saga.events WHERE type = $1 AND id > $4 "
								   "AND published_at >= $2 AND published_at < $3 "
								   "ORDER BY id LIMIT 1000",
								   4, types);

	MemoryContext chunk_cxt = AllocSetContextCreate(CurrentMemoryContext, "saga replay chunk",
													ALLOCSET_DEFAULT_SIZES);
	MemoryContext outer = CurrentMemoryContext;

	sub.id = sub_id;
	strlcpy(sub.topic, topic, SAGA_TOPIC_SIZE);
	sub.max_attempts = max_attempts;
	sub.filter = filter;

	/* memory for one chunk of events at a time, however many are replayed */
	for (;;)
	{
		Datum		values[4] = {CStringGetTextDatum(type), TimestampTzGetDatum(since),
		TimestampTzGetDatum(until), Int64GetDatum(after_id)};
		int			rc = SPI_execute_snapshot(plan, values, NULL, GetLatestSnapshot(),
											  InvalidSnapshot, true, false, 0);
		SPITupleTable *tt;
		uint64		n;
		Datum	   *ev_ids,
				   *payloads,
				   *headers,
				   *keys;
		int			m = 0;

		SagaSpiCheck(rc, SPI_OK_SELECT, "reading events to replay");
		tt = SPI_tuptable;
		n = SPI_processed;
		if (n == 0)
		{
			SPI_freetuptable(tt);
			break;
		}
		CHECK_FOR_INTERRUPTS();
		MemoryContextSwitchTo(chunk_cxt);
		ev_ids = palloc(sizeof(Datum) * n);
		payloads = palloc(sizeof(Datum) * n);
		headers = palloc(sizeof(Datum) * n);
		keys = palloc(sizeof(Datum) * n);
		for (uint64 i = 0; i < n; i++)
		{
			HeapTuple	tup = tt->vals[i];
			bool		isnull;
			bool		cause_null;
			int64		eid = DatumGetInt64(SPI_getbinval(tup, tt->tupdesc, 1, &isnull));
			Jsonb	   *payload = DatumGetJsonbPCopy(SPI_getbinval(tup, tt->tupdesc, 2, &isnull));
			char	   *corr = TextDatumGetCString(SPI_getbinval(tup, tt->tupdesc, 3, &isnull));
			Datum		cause = SPI_getbinval(tup, tt->tupdesc, 4, &cause_null);
			Datum		keyd = SPI_getbinval(tup, tt->tupdesc, 5, &isnull);
			char	   *key = isnull ? NULL : TextDatumGetCString(keyd);
			char	   *trace = TextDatumGetCString(SPI_getbinval(tup, tt->tupdesc, 6, &isnull));
			bool		deliver;
			char	   *error;

			after_id = eid;
			match_filters(&sub, 1, payload, &deliver, &error);
			if (error != NULL)
				record_filter_error(sub_id, eid, error);
			if (!deliver)
				continue;
			if (written + m >= SAGA_MAX_REPLAY)
				ereport(ERROR,
						(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
						 errmsg("too many events to replay"),
						 errdetail("One replay writes at most %d deliveries.", SAGA_MAX_REPLAY),
						 errhint("Replay a shorter interval at a time.")));
			if (start_saga != NULL)
			{
				/* the event's saga, started now unless it was before */
				(void) start_from_event(start_saga, sub_id, eid, payload, corr, trace);
				written++;
				continue;
			}
			ev_ids[m] = Int64GetDatum(eid);
			payloads[m] = JsonbPGetDatum(payload);
			headers[m] = JsonbPGetDatum(delivery_headers(eid, type, corr, trace,
														 cause_null ? 0 : DatumGetInt64(cause),
														 !cause_null, key, replay, NULL));
			keys[m] = CStringGetTextDatum(replay
										  ? psprintf("%lld:%lld:replay:%lld", (long long) eid,
													 (long long) sub_id,
													 (long long) GetCurrentTimestamp())
										  : psprintf("%lld:%lld", (long long) eid, (long long) sub_id));
			m++;
		}
		if (m > 0)
		{
			Oid			itypes[7] = {TEXTOID, INT8OID, INT4OID, INT8ARRAYOID, JSONBARRAYOID,
			JSONBARRAYOID, TEXTARRAYOID};
			Datum		ivalues[7];

			ivalues[0] = CStringGetTextDatum(topic);
			ivalues[1] = Int64GetDatum(sub_id);
			ivalues[2] = Int32GetDatum(max_attempts);
			ivalues[3] = int8_array(ev_ids, m);
			ivalues[4] = PointerGetDatum(construct_array(payloads, m, JSONBOID, -1, false, TYPALIGN_INT));
			ivalues[5] = PointerGetDatum(construct_array(headers, m, JSONBOID, -1, false, TYPALIGN_INT));
			ivalues[6] = text_array(keys, m);
			SagaExecute(&plan_replay_insert,
						"INSERT INTO saga.outbox (id, topic, kind, attempt, max_attempts, payload, headers, "
						"visible_at, created_at, event_id, subscription_id) "
						"SELECT -pg_catalog.nextval('saga.deliveries_id_seq'::pg_catalog.regclass), "
						"$1, 'event', 1, $3, d.payload, "
						"d.headers OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('idempotency_key', d.ikey), "
						"pg_catalog.clock_timestamp(), pg_catalog.clock_timestamp(), d.event_id, $2 "
						"FROM ROWS FROM (pg_catalog.unnest($4), pg_catalog.unnest($5), "
						"pg_catalog.unnest($6), pg_catalog.unnest($7)) "
						"WITH ORDINALITY AS d(event_id, payload, headers, ikey, n) ORDER BY d.n",
						7, itypes, ivalues, NULL, SPI_OK_INSERT, "replaying events");
			written += m;
		}
		MemoryContextSwitchTo(outer);
		SPI_freetuptable(tt);
		MemoryContextReset(chunk_cxt);
		if (n < 1000)
			break;
	}
	MemoryContextDelete(chunk_cxt);
	if (written > 0)
		SagaAnnounce(topic);
	return written;
}

/*
 * The options with replay_from as ISO 8601 in UTC, whatever the caller's
 * DateStyle and TimeZone were: what is stored reads the same in any session.
 */
static Jsonb *
normalised_replay_from(Jsonb *options, TimestampTz at)
{
	int			nestlevel = NewGUCNestLevel();
	char	   *text;
	JsonbParseState *ps = NULL;
	Jsonb	   *patch;

	(void) set_config_option("datestyle", "ISO, YMD", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("timezone", "UTC", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	text = DatumGetCString(DirectFunctionCall1(timestamptz_out, TimestampTzGetDatum(at)));
	AtEOXact_GUC(false, nestlevel);

	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	SagaJbStr(&ps, "replay_from", text);
	patch = JsonbValueToJsonb(pushJsonbValue(&ps, WJB_END_OBJECT, NULL));
	return DatumGetJsonbP(DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(options),
											  JsonbPGetDatum(patch)));
}

/*
 * Create or update the subscription (type, topic) for the caller; options
 * NULL keeps an existing subscription's (a new one gets '{}'), choreography
 * NULL keeps its choreography.  Waits for the publishers in flight (see the
 * file's header).  A new subscription with replay_from receives the retained
 * events published since then.  Returns its id.
 */
int64
SagaSubscribeAs(const char *type, const char *topic, Jsonb *options,
				const char *choreography, Oid caller)
{
	Oid			relid = SagaRelid("subscriptions");
	SubOptions	o;
	Oid			types[6] = {TEXTOID, TEXTOID, JSONBOID, TEXTOID, TIMESTAMPTZOID, OIDOID};
	Datum		values[6];
	char		nulls[6] = "      ";
	int64		id;
	bool		inserted;
	bool		isnull;

	check_event_type(type);
	SagaCheckTopic(topic);
	if (options != NULL)
	{
		SagaCheckPayload(options, "subscription options");
		parse_options(options, &o, "subscription options", false);
	}

	lock_event_type(relid, type, ShareRowExclusiveLock);

	/*
	 * Every publish of the type writes one row per subscription: bounded.
	 * An existing subscription is its owner's to change.
	 */
	{
		Oid			ctypes[2] = {TEXTOID, TEXTOID};
		Datum		cvalues[2] = {CStringGetTextDatum(type), CStringGetTextDatum(topic)};
		bool		cnull;
		Datum		owner;

		SagaExecute(&plan_sub_count,
					"SELECT pg_catalog.count(*), "
					"pg_catalog.max(owner::pg_catalog.text) FILTER (WHERE topic = $2) "
					"FROM saga.subscriptions WHERE event_type = $1",
					2, ctypes, cvalues, NULL, SPI_OK_SELECT, "counting subscriptions");
		owner = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &cnull);
		if (!cnull)
			check_subscription_owner(TextDatumGetCString(owner), type, topic, caller);
		else if (DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &cnull)) >= SAGA_MAX_SUBSCRIPTIONS)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("too many subscriptions of event type \"%s\"", type),
					 errdetail("An event type has at most %d subscriptions.", SAGA_MAX_SUBSCRIPTIONS)));
	}
	if (options != NULL && o.has_replay_from)
		options = normalised_replay_from(options, o.replay_from);
	if (options != NULL && o.start_saga != NULL)
		check_start_saga_owner(o.start_saga, caller);

	values[0] = CStringGetTextDatum(type);
	values[1] = CStringGetTextDatum(topic);
	values[2] = options ? JsonbPGetDatum(options) : (Datum) 0;
	nulls[2] = options ? ' ' : 'n';
	values[3] = choreography ? CStringGetTextDatum(choreography) : (Datum) 0;
	nulls[3] = choreography ? ' ' : 'n';
	values[4] = TimestampTzGetDatum(GetCurrentTimestamp());
	values[5] = ObjectIdGetDatum(caller);
	SagaExecute(&plan_subscribe,
				"INSERT INTO saga.subscriptions AS s (event_type, topic, options, choreography, "
				"created_at, updated_at, owner) "
				"SELECT $1, $2, COALESCE($3, '{}'::pg_catalog.jsonb), $4, $5, $5, r.rolname "
				"FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) $6 "
				"ON CONFLICT (event_type, topic) DO UPDATE SET "
				"options = COALESCE($3, s.options), choreography = COALESCE($4, s.choreography), "
				"updated_at = $5 "
				"RETURNING s.id, s.xmax OPERATOR(pg_catalog.=) '0'::pg_catalog.xid, s.options",
				6, types, values, nulls, SPI_OK_INSERT_RETURNING, "storing a subscription");
	if (SPI_processed != 1)
		elog(ERROR, "saga: role %u not found for a subscription", caller);
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	inserted = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));

	/* every backend reads the subscriptions of this table again */
	CacheInvalidateRelcacheByRelid(relid);
	sub_cache_stale = true;

	if (inserted && options != NULL && o.has_replay_from)
		(void) replay_into(id, type, topic, o.filter, o.retry.max_attempts, o.start_saga,
						   o.replay_from, GetCurrentTimestamp(), false);
	return id;
}

/* saga.subscribe(event_type, topic, options) */
Datum
saga_subscribe(PG_FUNCTION_ARGS)
{
	char	   *type;
	char	   *topic;
	Jsonb	   *options;
	SagaUserSave save;
	Oid			caller;
	int64		id;

	SagaRequireArg(fcinfo, 0, "event_type");
	SagaRequireArg(fcinfo, 1, "topic");
	SagaRequireArg(fcinfo, 2, "options");
	type = SagaTextArg(PG_GETARG_TEXT_PP(0), SAGA_MAX_EVENT_TYPE_LEN, "event type");
	topic = SagaTextArg(PG_GETARG_TEXT_PP(1), SAGA_MAX_TOPIC_LEN, "topic");
	options = PG_GETARG_JSONB_P(2);

	caller = SagaEnter(&save);
	if (!OidIsValid(SagaRelid("subscriptions")))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("saga subscriptions need extension version 0.3"),
				 errhint("Run ALTER EXTENSION saga UPDATE.")));
	id = SagaSubscribeAs(type, topic, options, NULL, caller);
	SagaLeave(&save);
	PG_RETURN_INT64(id);
}

/* saga.unsubscribe(event_type, topic): pending deliveries drain */
Datum
saga_unsubscribe(PG_FUNCTION_ARGS)
{
	char	   *type;
	char	   *topic;
	SagaUserSave save;
	Oid			relid;
	Oid			caller;
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];

	SagaRequireArg(fcinfo, 0, "event_type");
	SagaRequireArg(fcinfo, 1, "topic");
	type = SagaTextArg(PG_GETARG_TEXT_PP(0), SAGA_MAX_EVENT_TYPE_LEN, "event type");
	topic = SagaTextArg(PG_GETARG_TEXT_PP(1), SAGA_MAX_TOPIC_LEN, "topic");

	caller = SagaEnter(&save);
	relid = SagaRelid("subscriptions");
	lock_event_type(relid, type, ShareRowExclusiveLock);
	values[0] = CStringGetTextDatum(type);
	values[1] = CStringGetTextDatum(topic);
	SagaExecute(&plan_unsubscribe,
				"DELETE FROM saga.subscriptions WHERE event_type = $1 AND topic = $2 RETURNING owner::pg_catalog.text",
				2, types, values, NULL, SPI_OK_DELETE_RETURNING, "removing a subscription");
	if (SPI_processed == 1)
	{
		bool		isnull;

		check_subscription_owner(TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0],
																	SPI_tuptable->tupdesc, 1, &isnull)),
								 type, topic, caller);
	}
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("subscription of topic \"%s\" to event type \"%s\" does not exist",
						SagaEcho(topic), SagaEcho(type))));
	CacheInvalidateRelcacheByRelid(relid);
	sub_cache_stale = true;
	SagaLeave(&save);
	PG_RETURN_VOID();
}

/* saga.redeliver(task_id): a dead letter back into the outbox, fresh attempts */
Datum
saga_redeliver(PG_FUNCTION_ARGS)
{
	SagaUserSave save;
	int64		task_id;
	Oid			types[2] = {INT8OID, INT4OID};
	Datum		values[2];
	bool		isnull;
	SagaRetry	retry;

	SagaRequireArg(fcinfo, 0, "task_id");
	task_id = PG_GETARG_INT64(0);
	SagaEnter(&save);
	if (task_id < 0)
		SagaNoteWork(0, task_id, NULL);
	values[0] = Int64GetDatum(task_id);
	SagaDefaultRetry(&retry);

	/*
	 * The attempts start again, with the subscription's retry (the default
	 * if it is gone); the lease numbers go on, so that a report under a
	 * lease from before is refused.
	 */
	SagaExecute(&plan_dead_sub,
				"SELECT subscription_id FROM saga.dead_letters WHERE id = $1",
				1, types, values, NULL, SPI_OK_SELECT, "finding a dead letter");
	if (SPI_processed == 1)
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		subscription_retry(isnull ? 0 : DatumGetInt64(d), &retry);
	}
	values[1] = Int32GetDatum(retry.max_attempts);
	SagaExecute(&plan_redeliver,
				"WITH d AS (DELETE FROM saga.dead_letters WHERE id = $1 RETURNING *) "
				"INSERT INTO saga.outbox (id, topic, kind, attempt, max_attempts, deliveries, payload, "
				"headers, visible_at, created_at, event_id, subscription_id) "
				"SELECT d.id, d.topic, 'event', 1, $2, "
				"d.deliveries, d.payload, d.headers OPERATOR(pg_catalog.||) '{\"attempt\": 1}'::pg_catalog.jsonb, "
				"pg_catalog.clock_timestamp(), pg_catalog.clock_timestamp(), d.event_id, d.subscription_id "
				"FROM d RETURNING topic",
				2, types, values, NULL, SPI_OK_INSERT_RETURNING, "redelivering a dead letter");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("dead letter %lld does not exist", (long long) task_id),
				 errhint("saga.dead_letters lists them.")));
	SagaAnnounce(TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)));
	SagaLeave(&save);
	PG_RETURN_VOID();
}

/* saga.replay(event_type, topic, since, until): retained events again, to one subscription */
Datum
saga_replay(PG_FUNCTION_ARGS)
{
	char	   *type;
	char	   *topic;
	TimestampTz since;
	TimestampTz until;
	SagaUserSave save;
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];
	bool		isnull;
	int64		sub_id;
	SubOptions	o;
	int64		n;
	Oid			caller;

	SagaRequireArg(fcinfo, 0, "event_type");
	SagaRequireArg(fcinfo, 1, "topic");
	SagaRequireArg(fcinfo, 2, "since");
	SagaRequireArg(fcinfo, 3, "until");
	type = SagaTextArg(PG_GETARG_TEXT_PP(0), SAGA_MAX_EVENT_TYPE_LEN, "event type");
	topic = SagaTextArg(PG_GETARG_TEXT_PP(1), SAGA_MAX_TOPIC_LEN, "topic");
	since = PG_GETARG_TIMESTAMPTZ(2);
	until = PG_GETARG_TIMESTAMPTZ(3);
	if (until < since)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("until must not be before since"),
				 errdetail("since is %s, until is %s.", pstrdup(timestamptz_to_str(since)),
						   pstrdup(timestamptz_to_str(until)))));

	caller = SagaEnter(&save);
	values[0] = CStringGetTextDatum(type);
	values[1] = CStringGetTextDatum(topic);
	SagaExecute(&plan_sub_find,
				"SELECT id, options, owner::pg_catalog.text FROM saga.subscriptions "
				"WHERE event_type = $1 AND topic = $2",
				2, types, values, NULL, SPI_OK_SELECT, "finding a subscription");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("subscription of topic \"%s\" to event type \"%s\" does not exist",
						SagaEcho(topic), SagaEcho(type)),
				 errhint("A replay goes to an existing subscription: saga.subscribe first.")));
	check_subscription_owner(TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0],
																SPI_tuptable->tupdesc, 3, &isnull)),
							 type, topic, caller);
	sub_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	parse_options(DatumGetJsonbPCopy(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)),
				  &o, "subscription options", true);
	n = replay_into(sub_id, type, topic, o.filter, o.retry.max_attempts, o.start_saga,
					since, until, true);
	SagaLeave(&save);
	PG_RETURN_INT64(n);
}

void
SagaEventInit(void)
{
	CacheRegisterRelcacheCallback(sub_cache_inval, (Datum) 0);
	CacheRegisterRelcacheCallback(bridges_inval, (Datum) 0);
	DefineCustomIntVariable("saga.max_hops",
							"Hops an event may be from its first cause and still be delivered.",
							"A choreography's own max_hops applies to the events of its flows.",
							&saga_max_hops, 32, 0, 10000,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("saga.filter_timeout",
							"Longest a subscription's filter may take on one event.",
							"A filter that takes longer skips that delivery and is recorded in saga.filter_errors; 0 means no limit.",
							&saga_filter_timeout, 100, 0, 60000,
							PGC_SUSET, GUC_UNIT_MS, NULL, NULL, NULL);
}
