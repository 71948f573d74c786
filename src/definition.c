/*-------------------------------------------------------------------------
 *
 * definition.c
 *	  Saga definitions: validation of the JSON document, storage of new
 *	  versions (saga.define), and a per-backend cache of parsed versions.
 *
 * A stored version never changes, so a parsed copy can be kept for the
 * life of the backend.  Ids come from a sequence and are not reused, even
 * by a define that rolls back; only DROP EXTENSION restarts them.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "parser/parse_func.h"
#include "mb/pg_wchar.h"
#include "commands/trigger.h"
#include "utils/acl.h"
#include "utils/rel.h"
#include "utils/builtins.h"
#include "utils/array.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "common/hashfn.h"
#include "storage/lmgr.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "saga.h"


typedef struct DefCacheEntry
{
	int32		id;
	SagaDef    *def;
	MemoryContext cxt;
} DefCacheEntry;

static HTAB *def_cache = NULL;
static Oid	definitions_relid = InvalidOid;

/*
 * name -> id of its latest version.  saga.define invalidates the relcache
 * entry of saga.definitions when it stores a version, so every backend drops
 * this map at that commit.
 */
typedef struct LatestEntry
{
	char		name[NAMEDATALEN];
	int32		id;
} LatestEntry;

static HTAB *latest_cache = NULL;

/*
 * Set when saga.definitions changed under the cache in a way a new row does
 * not explain (TRUNCATE ... RESTART IDENTITY hands out old ids again).  The
 * invalidation can arrive while a caller holds a parsed definition, so the
 * cache is only marked here and emptied before the next lookup.
 */
static bool def_cache_stale = false;

static SPIPlanPtr plan_latest = NULL;
static SPIPlanPtr plan_load = NULL;
static SPIPlanPtr plan_insert = NULL;
static SPIPlanPtr plan_insert_01 = NULL;

typedef SagaDocParse DefParse;

static const char *const top_keys[] = {"steps", "deadline", "description", "publish", NULL};
static const char *const step_keys[] = {"name", "topic", "sql", "after", "compensate",
"retry", "timeout", "pivot", "async", "description", "await", "publish", NULL};
static const char *const publish_keys[] = {"completed", "compensated", "cancelled", NULL};
static const char *const compensate_keys[] = {"topic", "sql", NULL};
static const char *const retry_keys[] = {"max_attempts", "initial_delay", "backoff",
"max_delay", "jitter", NULL};

PG_FUNCTION_INFO_V1(saga_define);
PG_FUNCTION_INFO_V1(saga_definitions_guard);

static SagaDef *parse_document(const char *name, Jsonb *doc, bool resolve, Oid caller);
static const char *echo(const char *s);

/*
 * Drop every cached version when saga.definitions is not the table the cache
 * was filled from (the extension was dropped and created again, and ids
 * restarted), or when it was marked stale.  Called before an operation takes
 * a definition; a nested one (from an SQL step) may run while its caller
 * holds a parsed definition, so dropped ones are freed with the transaction.
 */
static void
def_cache_validate(void)
{
	Oid			relid = get_relname_relid("definitions", get_namespace_oid("saga", false));
	HASH_SEQ_STATUS status;
	DefCacheEntry *entry;

	if (relid == definitions_relid && !def_cache_stale)
		return;
	hash_seq_init(&status, def_cache);
	while ((entry = hash_seq_search(&status)) != NULL)
	{
		/*
		 * An enclosing call (an SQL step's caller) may still hold this
		 * definition: it lives until the end of the transaction.
		 */
		MemoryContextSetParent(entry->cxt, TopTransactionContext);
		hash_search(def_cache, &entry->id, HASH_REMOVE, NULL);
	}
	definitions_relid = relid;
	def_cache_stale = false;
}

pg_noreturn static void
def_error(int sqlstate, const DefParse *p, const char *path, const char *msg)
{
	ereport(ERROR,
			(errcode(sqlstate),
			 errmsg("invalid %s: %s", p->what, msg),
			 errdetail("The offending value is at %s.", path)));
}

/* is the name a lowercase identifier of at most maxlen bytes */
static bool
valid_name(const char *s, int maxlen)
{
	int			len = strlen(s);

	if (len < 1 || len > maxlen || s[0] < 'a' || s[0] > 'z')
		return false;
	for (int i = 1; i < len; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
			return false;
	return true;
}

static const char *
jbv_type_name(JsonbValue *v)
{
	switch (v->type)
	{
		case jbvNull:
			return "null";
		case jbvString:
			return "string";
		case jbvNumeric:
			return "number";
		case jbvBool:
			return "boolean";
		case jbvBinary:
			return JsonContainerIsArray(v->val.binary.data) ? "array" : "object";
		default:
			return "value";
	}
}

static void
expect_type(const DefParse *p, JsonbValue *v, const char *want, const char *path)
{
	const char *got = jbv_type_name(v);

	if (strcmp(got, want) != 0)
		def_error(ERRCODE_INVALID_PARAMETER_VALUE, p, path,
				  psprintf("expected %s %s, found %s",
						   (want[0] == 'a' || want[0] == 'o') ? "an" : "a", want, got));
}

/* reject keys that are not in the allowed list */
static void
check_keys(const DefParse *p, JsonbContainer *obj, const char *const *allowed, const char *path)
{
	JsonbIterator *it = JsonbIteratorInit(obj);
	JsonbValue	v;
	JsonbIteratorToken tok;

	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		char	   *key;
		bool		known = false;

		if (tok != WJB_KEY)
			continue;
		key = pnstrdup(v.val.string.val, v.val.string.len);
		for (int i = 0; allowed[i] != NULL; i++)
			if (strcmp(allowed[i], key) == 0)
				known = true;
		if (!known)
			def_error(ERRCODE_INVALID_PARAMETER_VALUE, p, psprintf("%s.%s", path, echo(key)),
					  psprintf("unknown key \"%s\"", echo(key)));
	}
}

static bool
get_key(JsonbContainer *obj, const char *key, JsonbValue *out)
{
	return getKeyJsonValueFromContainer(obj, key, strlen(key), out) != NULL;
}

static char *
get_string(const DefParse *p, JsonbValue *v, const char *path)
{
	expect_type(p, v, "string", path);
	return pnstrdup(v->val.string.val, v->val.string.len);
}

static bool
get_bool(const DefParse *p, JsonbValue *v, const char *path)
{
	expect_type(p, v, "boolean", path);
	return v->val.boolean;
}

static double
get_number(const DefParse *p, JsonbValue *v, const char *path)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile double d = 0;

	expect_type(p, v, "number", path);
	/* 1e400 does not fit a double: say where, not the 400 digits */
	PG_TRY();
	{
		d = DatumGetFloat8(DirectFunctionCall1(numeric_float8,
											   NumericGetDatum(v->val.numeric)));
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		FlushErrorState();
		def_error(ERRCODE_INVALID_PARAMETER_VALUE, p, path, "number out of range");
	}
	PG_END_TRY();
	return d;
}

/* a value quoted in an error message: at most 64 bytes of it */
static const char *
echo(const char *s)
{
	int			len = strlen(s);

	if (len <= 64)
		return s;
	return psprintf("%s...", pnstrdup(s, pg_mbcliplen(s, len, 64)));
}

pg_noreturn static void
interval_out_of_range(const DefParse *p, const char *text, const char *path)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATETIME_FIELD_OVERFLOW),
			 errmsg("invalid %s: interval \"%s\" is out of range",
					p->what, echo(text)),
			 errdetail("The offending value is at %s.", path),
			 errhint("An interval is at most %d days.", SAGA_MAX_INTERVAL_DAYS)));
}

/*
 * Parse an interval string into microseconds.  interval_in reports bad input
 * with its own message; we catch it only to add the path and re-throw, so the
 * transaction is aborted as usual.
 */
static int64
get_interval(const DefParse *p, JsonbValue *v, const char *path)
{
	char	   *text = get_string(p, v, path);
	MemoryContext cxt = CurrentMemoryContext;
	Interval   *iv = NULL;
	int64		usecs;

	PG_TRY();
	{
		iv = DatumGetIntervalP(DirectFunctionCall3(interval_in, CStringGetDatum(text),
												   ObjectIdGetDatum(InvalidOid),
												   Int32GetDatum(-1)));
	}
	PG_CATCH();
	{
		ErrorData  *e;

		MemoryContextSwitchTo(cxt);
		e = CopyErrorData();
		FlushErrorState();
		/* "1000000000 years" parses as an interval, but not in one */
		if (e->sqlerrcode == ERRCODE_DATETIME_FIELD_OVERFLOW ||
			e->sqlerrcode == ERRCODE_INTERVAL_FIELD_OVERFLOW)
			interval_out_of_range(p, text, path);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid %s: invalid interval \"%s\"",
						p->what, echo(text)),
				 errdetail("The offending value is at %s.", path),
				 errhint("Write an interval such as \"30 seconds\" or \"5 minutes\".")));
	}
	PG_END_TRY();

	/* months and days are taken as 30 and 1 fixed days: steps are short */
	if (!SagaIntervalUsecs(iv, &usecs) || usecs > SAGA_MAX_INTERVAL)
	{
		if (p->range_is_invalid)
			def_error(ERRCODE_INVALID_PARAMETER_VALUE, p, path,
					  psprintf("interval \"%s\" is out of range (at most %d days)",
							   echo(text), SAGA_MAX_INTERVAL_DAYS));
		interval_out_of_range(p, text, path);
	}
	if (usecs <= 0)
		def_error(ERRCODE_INVALID_PARAMETER_VALUE, p, path,
				  psprintf("interval \"%s\" must be positive", echo(text)));
	return usecs;
}

/*
 * Resolve "schema.fn" for the role that defines the saga (see
 * SagaGuestFunction for what is refused), adding the JSON path to the error.
 * The name must be schema qualified: SQL steps run with search_path =
 * pg_catalog, pg_temp.
 */
static Oid
resolve_function(const DefParse *p, const char *name, const char *path)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile Oid fn = InvalidOid;

	/* two quoted identifiers and a dot at most: longer cannot name anything */
	if (strlen(name) > 2 * (2 * NAMEDATALEN + 2) + 1)
		def_error(ERRCODE_INVALID_NAME, p, path,
				  psprintf("function name \"%s\" is too long", echo(name)));
	if (strchr(name, '.') == NULL)
		def_error(ERRCODE_INVALID_NAME, p, path,
				  psprintf("function name \"%s\" must be schema-qualified", echo(name)));
	if (!p->resolve)
		return InvalidOid;

	PG_TRY();
	{
		fn = SagaGuestFunction(name, p->caller, false);
	}
	PG_CATCH();
	{
		ErrorData  *e;

		/* re-thrown with the path: the transaction aborts as it would have */
		MemoryContextSwitchTo(cxt);
		e = CopyErrorData();
		FlushErrorState();
		ereport(ERROR,
				(errcode(e->sqlerrcode),
				 errmsg("invalid %s: %s", p->what, e->message),
				 e->detail
				 ? errdetail("%s The offending value is at %s.", e->detail, path)
				 : errdetail("The offending value is at %s.", path),
				 e->hint ? errhint("%s", e->hint) : 0));
	}
	PG_END_TRY();
	return fn;
}

/* {"topic": t} or {"sql": "schema.fn"}, exactly one */
static void
parse_action(const DefParse *p, JsonbContainer *obj, SagaAction *a, const char *path,
			 bool is_step)
{
	JsonbValue	v;
	bool		has_topic = get_key(obj, "topic", &v);

	if (has_topic)
	{
		char	   *tpath = psprintf("%s.topic", path);

		a->topic = get_string(p, &v, tpath);
		if (!SagaValidTopic(a->topic))
			def_error(ERRCODE_INVALID_NAME, p, tpath,
					  psprintf("topic \"%s\" must match ^[a-z][a-z0-9_]{0,47}$", echo(a->topic)));
	}
	if (get_key(obj, "sql", &v))
	{
		char	   *spath = psprintf("%s.sql", path);

		if (has_topic)
			def_error(ERRCODE_INVALID_PARAMETER_VALUE, p, path,
					  "\"topic\" and \"sql\" are mutually exclusive");
		a->sql = get_string(p, &v, spath);
		a->fn = resolve_function(p, a->sql, spath);
	}
	else if (!has_topic)
		def_error(ERRCODE_INVALID_PARAMETER_VALUE, p, path,
				  is_step ? "a step needs a \"topic\" or an \"sql\" function"
				  : "a compensation needs a \"topic\" or an \"sql\" function");
}

static void
parse_retry(const DefParse *p, JsonbValue *rv, SagaRetry *r, const char *path)
{
	JsonbContainer *obj;
	JsonbValue	v;

	expect_type(p, rv, "object", path);
	obj = rv->val.binary.data;
	check_keys(p, obj, retry_keys, path);

	if (get_key(obj, "max_attempts", &v))
	{
		char	   *kpath = psprintf("%s.max_attempts", path);
		double		n = get_number(p, &v, kpath);

		if (n != floor(n) || n < 1 || n > 1000000)
			def_error(ERRCODE_INVALID_PARAMETER_VALUE, p, kpath,
					  "\"max_attempts\" must be an integer between 1 and 1000000");
		r->max_attempts = (int) n;
	}
	if (get_key(obj, "initial_delay", &v))
		r->initial_delay = get_interval(p, &v, psprintf("%s.initial_delay", path));
	if (get_key(obj, "backoff", &v))
	{
		char	   *kpath = psprintf("%s.backoff", path);

		r->backoff = get_number(p, &v, kpath);
		if (r->backoff < 1.0 || r->backoff > 100.0)
			def_error(ERRCODE_INVALID_PARAMETER_VALUE, p, kpath,
					  "\"backoff\" must be between 1 and 100");
	}
	if (get_key(obj, "jitter", &v))
		r->jitter = get_bool(p, &v, psprintf("%s.jitter", path));
	if (get_key(obj, "max_delay", &v))
	{
		char	   *kpath = psprintf("%s.max_delay", path);

		r->max_delay = get_interval(p, &v, kpath);
		if (r->max_delay < r->initial_delay)
			def_error(ERRCODE_INVALID_PARAMETER_VALUE, p, kpath,
					  "\"max_delay\" must not be shorter than \"initial_delay\"");
	}
	else if (r->max_delay < r->initial_delay)
		r->max_delay = r->initial_delay;	/* the default cap gives way */
}

/* an event type the saga publishes or awaits */
static char *
get_event_type(const DefParse *p, JsonbValue *v, const char *path)
{
	char	   *type = get_string(p, v, path);

	if (!SagaValidEventType(type))
		def_error(ERRCODE_INVALID_NAME, p, path,
				  psprintf("event type \"%s\" must match ^[A-Za-z][A-Za-z0-9_.]{0,62}$", echo(type)));
	return type;
}

/*
 * {"await": "EventType"}: the step succeeds when an event of that type with
 * the saga's correlation id is published; nothing is dispatched, so it has
 * no topic or function, and nothing is retried (a timeout fails it).
 */
static void
parse_await(const DefParse *p, JsonbContainer *obj, SagaStepDef *s, const char *path)
{
	JsonbValue	v;

	(void) get_key(obj, "await", &v);
	s->await = get_event_type(p, &v, psprintf("%s.await", path));
	if (get_key(obj, "topic", &v) || get_key(obj, "sql", &v))
		def_error(ERRCODE_INVALID_PARAMETER_VALUE, p, path,
				  "an await step has no \"topic\" or \"sql\": the event it awaits is its result");
	if (get_key(obj, "retry", &v))
		def_error(ERRCODE_INVALID_PARAMETER_VALUE, p, psprintf("%s.retry", path),
				  "an await step is not retried: it waits until its event is published or its \"timeout\" passes");
	if (get_key(obj, "async", &v))
		def_error(ERRCODE_INVALID_PARAMETER_VALUE, p, psprintf("%s.async", path),
				  "\"async\" is for SQL steps");
}

static void
parse_step(const DefParse *p, JsonbContainer *obj, SagaStepDef *s, const char *path)
{
	JsonbValue	v;

	check_keys(p, obj, step_keys, path);

	if (!get_key(obj, "name", &v))
		def_error(ERRCODE_INVALID_PARAMETER_VALUE, p, path, "a step needs a \"name\"");
	s->name = get_string(p, &v, psprintf("%s.name", path));
	if (!valid_name(s->name, NAMEDATALEN - 1))
		def_error(ERRCODE_INVALID_NAME, p, psprintf("%s.name", path),
				  psprintf("step name \"%s\" must match ^[a-z][a-z0-9_]{0,62}$", echo(s->name)));

	if (get_key(obj, "await", &v))
		parse_await(p, obj, s, path);
	else
		parse_action(p, obj, &s->action, path, true);
	if (get_key(obj, "publish", &v))
		s->publish = get_event_type(p, &v, psprintf("%s.publish", path));

	if (get_key(obj, "compensate", &v))
	{
		char	   *cpath = psprintf("%s.compensate", path);

		expect_type(p, &v, "object", cpath);
		check_keys(p, v.val.binary.data, compensate_keys, cpath);
		parse_action(p, v.val.binary.data, &s->compensate, cpath, false);
	}

	SagaDefaultRetry(&s->retry);
	if (get_key(obj, "retry", &v))
	{
		/* whether it has any effect is known once the graph is (link_steps) */
		s->retry_given = true;
		parse_retry(p, &v, &s->retry, psprintf("%s.retry", path));
	}

	if (get_key(obj, "timeout", &v))
		s->timeout = get_interval(p, &v, psprintf("%s.timeout", path));
	if (get_key(obj, "pivot", &v))
		s->pivot = get_bool(p, &v, psprintf("%s.pivot", path));
	if (get_key(obj, "async", &v) && get_bool(p, &v, psprintf("%s.async", path)))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("invalid %s: asynchronous SQL steps are not supported yet",
						p->what),
				 errdetail("The offending value is at %s.async.", path),
				 errhint("Omit \"async\" to run the SQL step in the transaction that makes it ready.")));
	if (get_key(obj, "description", &v))
		(void) get_string(p, &v, psprintf("%s.description", path));
}

/* resolve "after" names and reject cycles (Kahn's algorithm) */
static void
link_steps(const DefParse *p, SagaDef *def, JsonbContainer **step_objs)
{
	int		   *indegree = palloc0(sizeof(int) * def->nsteps);
	int		   *queue = palloc(sizeof(int) * def->nsteps);
	int			head = 0,
				tail = 0;

	for (int i = 0; i < def->nsteps; i++)
	{
		SagaStepDef *s = &def->steps[i];
		JsonbValue	v;

		if (!get_key(step_objs[i], "after", &v))
		{
			s->nafter = (i == 0) ? 0 : 1;
			s->after = palloc(sizeof(int));
			s->after[0] = i - 1;
			continue;
		}

		{
			char	   *apath = psprintf("$.steps[%d].after", i);
			JsonbContainer *arr;
			int			n;

			expect_type(p, &v, "array", apath);
			arr = v.val.binary.data;
			n = JsonContainerSize(arr);
			s->nafter = 0;
			s->after = palloc(sizeof(int) * Max(n, 1));
			for (int k = 0; k < n; k++)
			{
				JsonbValue *e = getIthJsonbValueFromContainer(arr, k);
				char	   *epath = psprintf("%s[%d]", apath, k);
				char	   *dep = get_string(p, e, epath);
				int			found = -1;

				for (int j = 0; j < def->nsteps; j++)
					if (strcmp(def->steps[j].name, dep) == 0)
						found = j;
				if (found < 0)
					ereport(ERROR,
							(errcode(ERRCODE_UNDEFINED_OBJECT),
							 errmsg("invalid %s: step \"%s\" waits for unknown step \"%s\"",
									p->what, s->name, echo(dep)),
							 errdetail("The offending value is at %s.", epath)));
				for (int j = 0; j < s->nafter; j++)
					if (s->after[j] == found)
						def_error(ERRCODE_INVALID_PARAMETER_VALUE, p, epath,
								  psprintf("step \"%s\" is listed twice", echo(dep)));
				s->after[s->nafter++] = found;
			}
		}
	}

	/* dependents, the reverse edges, drive compensation order */
	for (int i = 0; i < def->nsteps; i++)
		def->steps[i].dependents = palloc(sizeof(int) * def->nsteps);
	for (int i = 0; i < def->nsteps; i++)
	{
		SagaStepDef *s = &def->steps[i];

		indegree[i] = s->nafter;
		for (int k = 0; k < s->nafter; k++)
		{
			SagaStepDef *d = &def->steps[s->after[k]];

			d->dependents[d->ndependents++] = i;
		}
	}

	for (int i = 0; i < def->nsteps; i++)
		if (indegree[i] == 0)
			queue[tail++] = i;
	while (head < tail)
	{
		SagaStepDef *s = &def->steps[queue[head++]];

		for (int k = 0; k < s->ndependents; k++)
			if (--indegree[s->dependents[k]] == 0)
				queue[tail++] = s->dependents[k];
	}
	if (tail < def->nsteps)
	{
		for (int i = 0; i < def->nsteps; i++)
			if (indegree[i] > 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
						 errmsg("invalid %s: the steps' \"after\" lists form a cycle",
								p->what),
						 errdetail("Step \"%s\" at $.steps[%d] is on a cycle.",
								   def->steps[i].name, i)));
	}
}

/*
 * An SQL step runs once, in the transaction that makes it ready, before the
 * pivot; its "retry" paces its compensation's retries, and past a pivot its
 * own retries (the worker runs it again until it succeeds).  On an SQL step
 * with neither it would be silently ignored: refused at define instead.
 * (Stored versions load as they were.)
 */
static void
check_sql_retries(const DefParse *p, SagaDef *def)
{
	bool	   *past = palloc0(sizeof(bool) * def->nsteps);
	bool		changed = true;

	/* past a pivot: a pivot's dependents, and theirs, transitively */
	while (changed)
	{
		changed = false;
		for (int i = 0; i < def->nsteps; i++)
			for (int k = 0; k < def->steps[i].nafter && !past[i]; k++)
			{
				int			a = def->steps[i].after[k];

				if (def->steps[a].pivot || past[a])
				{
					past[i] = true;
					changed = true;
				}
			}
	}
	for (int i = 0; i < def->nsteps; i++)
	{
		SagaStepDef *s = &def->steps[i];

		if (s->retry_given && s->action.sql != NULL && !past[i] &&
			s->compensate.topic == NULL && s->compensate.sql == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid %s: \"retry\" on an SQL step before the pivot without a compensation has no effect",
							p->what),
					 errdetail("Step \"%s\" is an SQL step: it runs once, in the transaction that makes it ready, and its error fails the step; its \"retry\" paces only its compensation's retries, or its own past a pivot. The offending value is at $.steps[%d].retry.",
							   s->name, i),
					 errhint("Leave \"retry\" out, or make the step a topic step served by a worker, which is retried.")));
	}
}

/*
 * At define: the bridges need 0.4; a definition that publishes events
 * publishes them as its definer, who must be allowed to publish
 * (saga.publish is saga_worker's, not saga_admin's); a type it newly
 * awaits is locked against its publishers in flight (SagaLockAwaitedType).
 */
static void
check_bridges(const DefParse *p, SagaDef *def, bool publishes)
{
	static SPIPlanPtr plan_may_publish = NULL;
	const char *where = publishes ? "$.publish" : NULL;

	for (int i = 0; i < def->nsteps && where == NULL; i++)
		if (def->steps[i].publish != NULL)
			where = psprintf("$.steps[%d].publish", i);
	if (where == NULL && !def->has_awaits)
		return;
	SagaRequireBridges("await steps and \"publish\"");
	if (where != NULL)
	{
		Oid			types[1] = {OIDOID};
		Datum		values[1] = {ObjectIdGetDatum(p->caller)};
		bool		isnull;

		SagaExecute(&plan_may_publish,
					"SELECT pg_catalog.has_function_privilege($1, "
					"'saga.publish(text,jsonb,text,bigint,text,text,text)'::pg_catalog.regprocedure, "
					"'EXECUTE')",
					1, types, values, NULL, SPI_OK_SELECT, "checking the right to publish");
		if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied to publish events from %s", p->what),
					 errdetail("The definition publishes at %s, as the role that defines it, which may not execute saga.publish.",
							   where),
					 errhint("Grant saga_worker to the defining role, or leave \"publish\" out.")));
	}
	for (int i = 0; i < def->nsteps; i++)
		if (def->steps[i].await != NULL)
			SagaLockAwaitedType(def->steps[i].await);
}

/*
 * Parse and validate a definition document; allocates in CurrentMemoryContext.
 * A stored document is parsed again in every backend that loads it, so its
 * intervals must not depend on the session: IntervalStyle sql_standard reads
 * "-1 day 25 hours" as wholly negative, postgres as one hour.  The style is
 * fixed to postgres for the parse (errors pop the level with the
 * transaction).
 */
static SagaDef *
parse_definition(const char *name, Jsonb *doc, bool resolve, Oid caller)
{
	int			nestlevel = NewGUCNestLevel();
	SagaDef    *def;

	(void) set_config_option("intervalstyle", "postgres", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	def = parse_document(name, doc, resolve, caller);
	AtEOXact_GUC(false, nestlevel);
	return def;
}

static SagaDef *
parse_document(const char *name, Jsonb *doc, bool resolve, Oid caller)
{
	DefParse	p = {psprintf("saga definition \"%s\"", name), resolve, caller, false};
	SagaDef    *def = palloc0(sizeof(SagaDef));
	JsonbValue	v;
	JsonbContainer *steps;
	JsonbContainer **step_objs;

	def->name = pstrdup(name);
	if (!JB_ROOT_IS_OBJECT(doc) || JB_ROOT_IS_SCALAR(doc))
		def_error(ERRCODE_INVALID_PARAMETER_VALUE, &p, "$", "the document must be a JSON object");
	check_keys(&p, &doc->root, top_keys, "$");

	if (!get_key(&doc->root, "steps", &v))
		def_error(ERRCODE_INVALID_PARAMETER_VALUE, &p, "$", "\"steps\" is missing");
	expect_type(&p, &v, "array", "$.steps");
	steps = v.val.binary.data;
	def->nsteps = JsonContainerSize(steps);
	if (def->nsteps == 0)
		def_error(ERRCODE_INVALID_PARAMETER_VALUE, &p, "$.steps", "\"steps\" is empty");
	if (def->nsteps > SAGA_MAX_STEPS)
		def_error(ERRCODE_PROGRAM_LIMIT_EXCEEDED, &p, "$.steps",
				  psprintf("a saga has at most %d steps", SAGA_MAX_STEPS));

	def->steps = palloc0(sizeof(SagaStepDef) * def->nsteps);
	step_objs = palloc(sizeof(JsonbContainer *) * def->nsteps);
	for (int i = 0; i < def->nsteps; i++)
	{
		JsonbValue *e = getIthJsonbValueFromContainer(steps, i);
		char	   *path = psprintf("$.steps[%d]", i);

		expect_type(&p, e, "object", path);
		step_objs[i] = e->val.binary.data;
		parse_step(&p, step_objs[i], &def->steps[i], path);
		for (int j = 0; j < i; j++)
			if (strcmp(def->steps[j].name, def->steps[i].name) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_DUPLICATE_OBJECT),
						 errmsg("invalid %s: step name \"%s\" is used twice",
								p.what, def->steps[i].name),
						 errdetail("The offending value is at %s.name.", path)));
	}
	link_steps(&p, def, step_objs);
	if (resolve)
		check_sql_retries(&p, def);

	for (int i = 0; i < def->nsteps; i++)
		if (def->steps[i].await != NULL)
			def->has_awaits = true;
	if (resolve)
		check_bridges(&p, def, get_key(&doc->root, "publish", &v));

	if (get_key(&doc->root, "deadline", &v))
		def->deadline = get_interval(&p, &v, "$.deadline");
	if (get_key(&doc->root, "description", &v))
		(void) get_string(&p, &v, "$.description");
	if (get_key(&doc->root, "publish", &v))
	{
		JsonbContainer *obj;

		expect_type(&p, &v, "object", "$.publish");
		obj = v.val.binary.data;
		check_keys(&p, obj, publish_keys, "$.publish");
		if (JsonContainerSize(obj) == 0)
			def_error(ERRCODE_INVALID_PARAMETER_VALUE, &p, "$.publish",
					  "\"publish\" names no event: give \"completed\", \"compensated\" or \"cancelled\"");
		if (get_key(obj, "completed", &v))
			def->publish_completed = get_event_type(&p, &v, "$.publish.completed");
		if (get_key(obj, "compensated", &v))
			def->publish_compensated = get_event_type(&p, &v, "$.publish.compensated");
		if (get_key(obj, "cancelled", &v))
			def->publish_cancelled = get_event_type(&p, &v, "$.publish.cancelled");
	}
	return def;
}

/*
 * The definer's role name.  0.1 stored it as regrole (whose dump cannot be
 * restored without the role, losing every definition); 0.2 as a name,
 * resolved each time a step runs.  Read either, in case the library is
 * newer than the installed extension.  NULL if the role is gone.
 */
static char *
owner_name(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	if (isnull)
		return NULL;
	if (SPI_gettypeid(desc, col) == NAMEOID)
		return pstrdup(NameStr(*DatumGetName(d)));
	return GetUserNameFromId(DatumGetObjectId(d), true);
}

/*
 * The role a definition's SQL steps run as.  A definition names its definer
 * by name (as pg_dump names owners), so a restore maps it to the role of
 * that name; a role that is gone (dropped, or absent where a dump was
 * restored) runs nothing.
 */
Oid
SagaDefinitionDefiner(SagaDef *def)
{
	Oid			role = def->owner ? get_role_oid(def->owner, true) : InvalidOid;

	if (!OidIsValid(role))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("role \"%s\" that defined saga \"%s\" version %d does not exist",
						def->owner ? def->owner : "?", def->name, def->version),
				 errhint("Create the role again, or define the saga again as an existing role.")));
	return role;
}

/* a parsed definition version, from the cache or the table */
SagaDef *
SagaDefinitionLoad(int32 def_id)
{
	DefCacheEntry *entry;
	bool		found;
	Oid			argtypes[1] = {INT4OID};
	Datum		values[1];
	bool		isnull;
	HeapTuple	tup;
	TupleDesc	desc;
	MemoryContext cxt,
				old;
	SagaDef    *def;

	if (def_cache == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(int32);
		ctl.entrysize = sizeof(DefCacheEntry);
		ctl.hcxt = CacheMemoryContext;
		def_cache = hash_create("saga definitions", 32, &ctl,
								HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	def_cache_validate();

	entry = hash_search(def_cache, &def_id, HASH_FIND, NULL);
	if (entry != NULL)
		return entry->def;

	values[0] = Int32GetDatum(def_id);
	SagaExecute(&plan_load,
				"SELECT name, version, definition, owner "
				"FROM saga.definitions WHERE id = $1",
				1, argtypes, values, NULL, SPI_OK_SELECT, "loading a definition");
	if (SPI_processed != 1)
		elog(ERROR, "saga: definition %d does not exist", def_id);
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;

	/* parse into a context of its own, which joins the cache only on success */
	cxt = AllocSetContextCreate(CurrentMemoryContext, "saga definition",
								ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(cxt);
	def = parse_definition(TextDatumGetCString(SPI_getbinval(tup, desc, 1, &isnull)),
						   DatumGetJsonbP(SPI_getbinval(tup, desc, 3, &isnull)),
						   false, InvalidOid);
	def->id = def_id;
	def->version = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
	def->owner = owner_name(tup, desc, 4);
	MemoryContextSwitchTo(old);
	MemoryContextSetParent(cxt, CacheMemoryContext);

	entry = hash_search(def_cache, &def_id, HASH_ENTER, &found);
	entry->def = def;
	entry->cxt = cxt;
	return def;
}

/* id of the latest version of a definition, or 0 */
static int32
latest_id(const char *name)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	bool		isnull;

	values[0] = CStringGetTextDatum(name);
	SagaExecute(&plan_latest,
				"SELECT id FROM saga.definitions WHERE name = $1 "
				"ORDER BY version DESC LIMIT 1",
				1, argtypes, values, NULL, SPI_OK_SELECT, "finding a definition");
	if (SPI_processed == 0)
		return 0;
	return DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * The event types some definition awaits, so that saga.publish looks for
 * waiting await steps only for those.  Definitions are never deleted, so
 * the set only grows; a define invalidates it with the latest versions.
 * Publish reads it after taking its event type's lock (which processes
 * invalidations): an await step that became ready before has a committed
 * definition, so the set is fresh enough to find it (SagaAwaitEvent).
 */
static char **awaited_types = NULL;
static int	nawaited_types = -1;	/* -1: not loaded */
static int	nawaited_alloc = 0;		/* strings in awaited_types to free */
static uint64 awaited_generation = 0;	/* bumped by every invalidation */
static SPIPlanPtr plan_awaited = NULL;

bool
SagaTypeAwaited(const char *type)
{
	/*
	 * An invalidation processed during the read (the plan's revalidation
	 * takes a lock, which accepts them) may come from a define the read's
	 * snapshot predates: read again until none comes.
	 */
	while (nawaited_types < 0)
	{
		uint64		generation = awaited_generation;
		SPIPlanPtr	plan = SagaPrepare(&plan_awaited,
									   "SELECT DISTINCT s.value OPERATOR(pg_catalog.->>) 'await' "
									   "FROM saga.definitions d, "
									   "pg_catalog.jsonb_array_elements(d.definition OPERATOR(pg_catalog.->) 'steps') s "
									   "WHERE s.value OPERATOR(pg_catalog.?) 'await'",
									   0, NULL);
		int			rc = SPI_execute_snapshot(plan, NULL, NULL, GetLatestSnapshot(),
											  InvalidSnapshot, true, false, 0);
		MemoryContext old;
		int			n;

		SagaSpiCheck(rc, SPI_OK_SELECT, "reading awaited event types");
		old = MemoryContextSwitchTo(CacheMemoryContext);
		if (awaited_types != NULL)
		{
			for (int i = 0; i < nawaited_alloc; i++)
				pfree(awaited_types[i]);
			pfree(awaited_types);
		}
		awaited_types = palloc(sizeof(char *) * (SPI_processed + 1));
		n = 0;
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			bool		isnull;
			Datum		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);

			if (!isnull)
				awaited_types[n++] = TextDatumGetCString(d);
		}
		MemoryContextSwitchTo(old);
		nawaited_alloc = n;
		nawaited_types = (generation == awaited_generation) ? n : -1;
	}
	for (int i = 0; i < nawaited_types; i++)
		if (strcmp(awaited_types[i], type) == 0)
			return true;
	return false;
}

static void
latest_cache_flush(Datum arg, Oid relid)
{
	if (relid != InvalidOid && relid != definitions_relid)
		return;
	def_cache_stale = true;
	nawaited_types = -1;
	awaited_generation++;
	if (latest_cache != NULL)
	{
		hash_destroy(latest_cache);
		latest_cache = NULL;
	}
}

void
SagaDefinitionInit(void)
{
	CacheRegisterRelcacheCallback(latest_cache_flush, (Datum) 0);
}

/* the latest version of a definition, or NULL */
SagaDef *
SagaDefinitionLatest(const char *name)
{
	LatestEntry *entry;
	bool		found;
	int32		id;

	if (strlen(name) >= NAMEDATALEN)
		return NULL;			/* define accepts no such name */
	if (latest_cache == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = NAMEDATALEN;
		ctl.entrysize = sizeof(LatestEntry);
		ctl.hcxt = CacheMemoryContext;
		latest_cache = hash_create("saga latest definitions", 32, &ctl,
								   HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	}
	entry = hash_search(latest_cache, name, HASH_FIND, NULL);
	if (entry != NULL)
		return SagaDefinitionLoad(entry->id);

	id = latest_id(name);
	if (id == 0)
		return NULL;
	/* the lookup may have processed an invalidation that dropped the map */
	if (latest_cache != NULL)
	{
		entry = hash_search(latest_cache, name, HASH_ENTER, &found);
		entry->id = id;
	}
	return SagaDefinitionLoad(id);
}

/* saga.define(name, definition): validate and store a new version */
Datum
saga_define(PG_FUNCTION_ARGS)
{
	char	   *name;
	Jsonb	   *doc;
	SagaUserSave save;
	Oid			caller;
	SagaDef    *def;
	Datum	   *names;
	int			rc;
	int32		version = 1;
	int32		latest;
	bool		isnull;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", PG_ARGISNULL(0) ? "name" : "definition")));
	name = SagaTextArg(PG_GETARG_TEXT_PP(0), SAGA_MAX_NAME_LEN, "saga name");
	doc = PG_GETARG_JSONB_P(1);
	if (!valid_name(name, NAMEDATALEN - 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("invalid saga name \"%s\"", name),
				 errhint("A saga name matches ^[a-z][a-z0-9_]{0,62}$.")));
	SagaCheckPayload(doc, "saga definition");

	caller = SagaEnter(&save);
	def = parse_definition(name, doc, true, caller);
	{
		bool		timed = def->deadline > 0;

		for (int i = 0; i < def->nsteps && !timed; i++)
			timed = def->steps[i].timeout > 0;
		if (timed)
			SagaWarnUnserved("step timeouts and deadlines");
	}

	names = palloc(sizeof(Datum) * def->nsteps);
	for (int i = 0; i < def->nsteps; i++)
		names[i] = CStringGetTextDatum(def->steps[i].name);

	/*
	 * Serialise defines of one name.  An object lock on a tag no real object
	 * has (class saga.definitions, the name's hash) rather than an advisory
	 * lock: SQL can take any advisory lock, and a session-level one taken by
	 * anybody (an SQL step, say) would block every define of the name.
	 */
	LockDatabaseObject(get_relname_relid("definitions", get_namespace_oid("saga", false)),
					   (Oid) hash_bytes((const unsigned char *) name, strlen(name)), 0,
					   ExclusiveLock);

	if (SagaNameIsChoreography(name))
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is a choreography", name),
				 errdetail("Saga definitions and choreographies share one namespace of names."),
				 errhint("Choose another name for the saga.")));

	latest = latest_id(name);
	if (latest != 0)
	{
		Oid			types[2] = {INT4OID, JSONBOID};
		Datum		values[2] = {Int32GetDatum(latest), JsonbPGetDatum(doc)};
		char	   *owner;
		Oid			owner_oid;

		rc = SPI_execute_with_args("SELECT version, definition OPERATOR(pg_catalog.=) $2, owner "
								   "FROM saga.definitions WHERE id = $1",
								   2, types, values, NULL, false, 1);
		SagaSpiCheck(rc, SPI_OK_SELECT, "comparing definitions");

		/*
		 * A name belongs to the role that defined its latest version: only
		 * its members store the next, or anybody with saga_admin could put
		 * their own SQL steps behind another admin's saga.
		 */
		owner = owner_name(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);
		owner_oid = owner ? get_role_oid(owner, true) : InvalidOid;
		if (OidIsValid(owner_oid) ? !has_privs_of_role(caller, owner_oid) : !superuser_arg(caller))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied for saga \"%s\"", name),
					 OidIsValid(owner_oid)
					 ? errdetail("Its versions belong to role \"%s\"; only its members may define new ones.", owner)
					 : errdetail("Role \"%s\", which defined it, no longer exists; only a superuser may define new versions.",
								 owner ? owner : "?")));
		version = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		/* an identical document is not a new version: define is idempotent */
		if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)))
		{
			SagaLeave(&save);
			PG_RETURN_INT32(version);
		}
		version++;
	}

	{
		Oid			types[5] = {TEXTOID, INT4OID, JSONBOID, TEXTARRAYOID, OIDOID};
		Datum		values[5];
		Oid			relid = get_relname_relid("definitions", get_namespace_oid("saga", false));
		bool		by_name = get_atttype(relid, get_attnum(relid, "owner")) == NAMEOID;

		values[0] = CStringGetTextDatum(name);
		values[1] = Int32GetDatum(version);
		values[2] = JsonbPGetDatum(doc);
		values[3] = PointerGetDatum(construct_array(names, def->nsteps, TEXTOID, -1, false,
													TYPALIGN_INT));
		values[4] = ObjectIdGetDatum(caller);
		/* 0.2 keeps the role's name (see owner_name); 0.1 its oid */
		if (by_name)
			SagaExecute(&plan_insert,
						"INSERT INTO saga.definitions (name, version, definition, step_names, owner) "
						"SELECT $1, $2, $3, $4, r.rolname FROM pg_catalog.pg_roles r "
						"WHERE r.oid OPERATOR(pg_catalog.=) $5",
						5, types, values, NULL, SPI_OK_INSERT, "storing a definition");
		else
			SagaExecute(&plan_insert_01,
						"INSERT INTO saga.definitions (name, version, definition, step_names, owner) "
						"VALUES ($1, $2, $3, $4, $5)",
						5, types, values, NULL, SPI_OK_INSERT, "storing a definition");
		/* at commit, every backend forgets which version is the latest */
		CacheInvalidateRelcacheByRelid(get_relname_relid("definitions",
														 get_namespace_oid("saga", false)));
	}

	SagaLeave(&save);
	PG_RETURN_INT32(version);
}

/* the same guard for saga.choreographies, whose versions flows refer to */
static Datum
choreographies_guard(TriggerData *td)
{
	Relation	rel = td->tg_relation;
	TupleDesc	desc = RelationGetDescr(rel);
	bool		isnull;
	int			rc;

	if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("choreography definitions cannot be changed"),
				 errdetail("Version %d of choreography \"%s\" is immutable.",
						   DatumGetInt32(heap_getattr(td->tg_trigtuple,
													  SPI_fnumber(desc, "version"), desc, &isnull)),
						   TextDatumGetCString(heap_getattr(td->tg_trigtuple,
															SPI_fnumber(desc, "name"), desc, &isnull))),
				 errhint("Store a new version with saga.define_choreography().")));

	if ((rc = SPI_connect()) != SPI_OK_CONNECT)
		elog(ERROR, "saga: SPI_connect failed: %s", SPI_result_code_string(rc));
	if (TRIGGER_FIRED_BY_TRUNCATE(td->tg_event))
		rc = SPI_execute("SELECT FROM saga.flows LIMIT 1", true, 1);
	else
	{
		Oid			types[1] = {INT4OID};
		Datum		values[1];

		values[0] = heap_getattr(td->tg_trigtuple, SPI_fnumber(desc, "id"), desc, &isnull);
		rc = SPI_execute_with_args("SELECT FROM saga.flows "
								   "WHERE choreography_id OPERATOR(pg_catalog.=) $1 LIMIT 1",
								   1, types, values, NULL, true, 1);
	}
	SagaSpiCheck(rc, SPI_OK_SELECT, "looking for flows");
	if (SPI_processed > 0)
		ereport(ERROR,
				(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
				 errmsg("choreography definitions are in use"),
				 errdetail("Flows were started from them."),
				 errhint("Flows keep the version they started with; delete it once they have been purged.")));
	SagaSpiCheck(SPI_finish(), SPI_OK_FINISH, "SPI_finish");
	CacheInvalidateRelcache(rel);
	return PointerGetDatum(TRIGGER_FIRED_BY_DELETE(td->tg_event) ? td->tg_trigtuple : NULL);
}

/*
 * saga.definitions_guard(): BEFORE UPDATE OR DELETE (per row) and BEFORE
 * TRUNCATE trigger of saga.definitions.  A stored version is immutable
 * (55000); a version that sagas were started from cannot be deleted, nor the
 * table truncated while any saga exists (2BP01): those sagas could no longer
 * move while saga.claim still handed out their tasks.  Deleting a version
 * nothing refers to is allowed; backends remember each name's latest version
 * and parsed versions by id, so the deletion invalidates both at commit.
 */
Datum
saga_definitions_guard(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	desc;
	bool		isnull;
	int			rc;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(td->tg_event))
		elog(ERROR, "saga_definitions_guard: not called as a BEFORE trigger");
	rel = td->tg_relation;
	desc = RelationGetDescr(rel);
	if (strcmp(RelationGetRelationName(rel), "choreographies") == 0)
		return choreographies_guard(td);

	if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("saga definitions cannot be changed"),
				 errdetail("Version %d of saga \"%s\" is immutable.",
						   DatumGetInt32(heap_getattr(td->tg_trigtuple,
													  SPI_fnumber(desc, "version"), desc, &isnull)),
						   TextDatumGetCString(heap_getattr(td->tg_trigtuple,
															SPI_fnumber(desc, "name"), desc, &isnull))),
				 errhint("Store a new version with saga.define().")));

	if ((rc = SPI_connect()) != SPI_OK_CONNECT)
		elog(ERROR, "saga: SPI_connect failed: %s", SPI_result_code_string(rc));
	if (TRIGGER_FIRED_BY_TRUNCATE(td->tg_event))
	{
		rc = SPI_execute("SELECT FROM saga.sagas LIMIT 1", true, 1);
		SagaSpiCheck(rc, SPI_OK_SELECT, "looking for sagas");
		if (SPI_processed > 0)
			ereport(ERROR,
					(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
					 errmsg("saga definitions are in use"),
					 errdetail("Sagas were started from them."),
					 errhint("Sagas keep the version they started with; delete it once they have been purged.")));
	}
	else
	{
		Oid			types[1] = {INT4OID};
		Datum		values[1];
		int64		n;

		values[0] = heap_getattr(td->tg_trigtuple, SPI_fnumber(desc, "id"), desc, &isnull);
		rc = SPI_execute_with_args("SELECT pg_catalog.count(*) FROM saga.sagas "
								   "WHERE definition_id OPERATOR(pg_catalog.=) $1",
								   1, types, values, NULL, true, 1);
		SagaSpiCheck(rc, SPI_OK_SELECT, "counting the sagas of a definition");
		n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		if (n > 0)
			ereport(ERROR,
					(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
					 errmsg("saga definition \"%s\" version %d is in use",
							TextDatumGetCString(heap_getattr(td->tg_trigtuple,
															 SPI_fnumber(desc, "name"), desc, &isnull)),
							DatumGetInt32(heap_getattr(td->tg_trigtuple,
													   SPI_fnumber(desc, "version"), desc, &isnull))),
					 errdetail("%lld sagas were started from it.", (long long) n),
					 errhint("Sagas keep the version they started with; delete it once they have been purged.")));
	}
	SagaSpiCheck(SPI_finish(), SPI_OK_FINISH, "SPI_finish");

	/* every backend forgets latest versions and parsed ones at commit */
	CacheInvalidateRelcache(rel);
	return PointerGetDatum(TRIGGER_FIRED_BY_DELETE(td->tg_event) ? td->tg_trigtuple : NULL);
}

/*
 * The document parser's pieces, for the other documents (choreographies,
 * subscription options): the same messages, SQLSTATEs and JSON paths.
 */
void
SagaDocError(int sqlstate, const SagaDocParse *p, const char *path, const char *msg)
{
	def_error(sqlstate, p, path, msg);
}

void
SagaDocExpect(const SagaDocParse *p, JsonbValue *v, const char *want, const char *path)
{
	expect_type(p, v, want, path);
}

void
SagaDocCheckKeys(const SagaDocParse *p, JsonbContainer *obj, const char *const *allowed,
				 const char *path)
{
	check_keys(p, obj, allowed, path);
}

bool
SagaDocGetKey(JsonbContainer *obj, const char *key, JsonbValue *out)
{
	return get_key(obj, key, out);
}

char *
SagaDocString(const SagaDocParse *p, JsonbValue *v, const char *path)
{
	return get_string(p, v, path);
}

double
SagaDocNumber(const SagaDocParse *p, JsonbValue *v, const char *path)
{
	return get_number(p, v, path);
}

/* an interval in microseconds, read with IntervalStyle postgres (see parse_definition) */
int64
SagaDocInterval(const SagaDocParse *p, JsonbValue *v, const char *path)
{
	int			nestlevel = NewGUCNestLevel();
	int64		usecs;

	(void) set_config_option("intervalstyle", "postgres", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	usecs = get_interval(p, v, path);
	AtEOXact_GUC(false, nestlevel);
	return usecs;
}

/* a "retry" object over the defaults the README gives */
void
SagaDocRetry(const SagaDocParse *p, JsonbValue *rv, SagaRetry *r, const char *path)
{
	int			nestlevel = NewGUCNestLevel();

	SagaDefaultRetry(r);
	(void) set_config_option("intervalstyle", "postgres", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	parse_retry(p, rv, r, path);
	AtEOXact_GUC(false, nestlevel);
}

void
SagaDefaultRetry(SagaRetry *r)
{
	r->max_attempts = 3;
	r->initial_delay = USECS_PER_SEC;
	r->backoff = 2.0;
	r->max_delay = 5 * USECS_PER_MINUTE;
	r->jitter = true;
}

const char *
SagaEcho(const char *s)
{
	return echo(s);
}

bool
SagaValidName(const char *s, int maxlen)
{
	return valid_name(s, maxlen);
}
