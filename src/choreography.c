/*-------------------------------------------------------------------------
 *
 * choreography.c
 *	  Choreography definitions (saga.define_choreography: validation of the
 *	  event graph, versions, the participants' subscriptions) and flows: one
 *	  row per (choreography, correlation id), followed as events are
 *	  published, timed out by the worker, stopped at the hop limit.
 *
 * The graph's nodes are event types.  A participant (a topic) consumes its
 * "on" events and answers with one of its "emits" (it acted) or "fails" (it
 * did nothing); a "compensation.on" event reaching it after it acted is
 * answered with its "compensation.emits".  Edges run from each "on" event
 * to each "emits" and "fails" event, and from each "compensation.on" to the
 * "compensation.emits".
 *
 * A flow stores the event types it has seen; its status and waiting_on are
 * derived from the graph and that set (see derive_flow) in the publishing
 * transaction, under the flow row's lock, which orders the events of one
 * flow and the worker's deadline sweep.  Choreography observes: it never
 * blocks an event, except past the hop limit, where the event is recorded
 * and not delivered.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "saga.h"

#define MAX_PARTICIPANTS	256
#define MAX_EVENTS			512
#define MAX_CHOREO_SUBSCRIPTIONS 1000
#define FLOW_QUARANTINE_SECS 60

typedef struct Participant
{
	char	   *name;			/* a topic */
	int			non;
	int		   *on;				/* event indexes */
	int			nemits;
	int		   *emits;
	int			nfails;
	int		   *fails;
	bool		has_comp;
	int			ncomp_on;
	int		   *comp_on;
	int			comp_emits;
} Participant;

typedef struct Choreo
{
	int32		id;
	char	   *name;
	int32		version;
	int			nevents;
	char	  **events;
	int			start;
	int			nparticipants;
	Participant *participants;
	int			ncompleted;
	int		   *completed;
	int64		deadline;		/* microseconds, 0: none */
	char	   *deadline_text;
	int			deadline_event; /* -1: none (the flow turns stuck) */
	int			max_hops;		/* 0: saga.max_hops */
} Choreo;

/* parsed versions by id: immutable, kept for the backend's life */
typedef struct ChoreoEntry
{
	int32		id;
	Choreo	   *c;
} ChoreoEntry;

static HTAB *choreo_cache = NULL;
static MemoryContext choreo_cxt = NULL;
static Oid	choreo_cache_relid = InvalidOid;

/* what publish asks of every event: does any choreography know its type */
typedef struct TypeEntry
{
	char		type[SAGA_MAX_EVENT_TYPE_LEN + 1];
	int			nstarts;
	int32	   *starts;			/* latest versions starting with this type */
} TypeEntry;

static HTAB *type_index = NULL;
static MemoryContext index_cxt = NULL;
static bool index_stale = true;
static int	index_nchoreos = 0;
static int	index_min_hops = 0; /* the smallest max_hops, 0: none set */

/* whether the last SagaFlowDeadlineWork found its flow due and unlocked */
static bool deadline_fired = false;

static SPIPlanPtr plan_load = NULL;
static SPIPlanPtr plan_all = NULL;
static SPIPlanPtr plan_flows_read = NULL;
static SPIPlanPtr plan_event_late = NULL;
static SPIPlanPtr plan_flow_apply = NULL;
static SPIPlanPtr plan_flows = NULL;
static SPIPlanPtr plan_flow_update = NULL;
static SPIPlanPtr plan_flow_lock = NULL;
static SPIPlanPtr plan_flow_stuck = NULL;
static SPIPlanPtr plan_flow_done = NULL;
static SPIPlanPtr plan_flow_quarantine = NULL;
static SPIPlanPtr plan_is_choreo = NULL;
static SPIPlanPtr plan_latest = NULL;
static SPIPlanPtr plan_insert = NULL;

PG_FUNCTION_INFO_V1(saga_define_choreography);

static const char *const top_keys[] = {"start", "participants", "completed", "deadline",
"max_hops", "description", NULL};
static const char *const participant_keys[] = {"on", "emits", "fails", "compensation",
"description", NULL};
static const char *const compensation_keys[] = {"on", "emits", NULL};
static const char *const deadline_keys[] = {"after", "publish", NULL};

/* ---------- parsing ---------- */

typedef struct ChoreoParse
{
	SagaDocParse doc;
	Choreo	   *c;
	char	  **paths;			/* where each event first appears */
} ChoreoParse;

static int
event_index(ChoreoParse *cp, JsonbValue *v, const char *path)
{
	char	   *name = SagaDocString(&cp->doc, v, path);
	Choreo	   *c = cp->c;

	if (!SagaValidEventType(name))
		SagaDocError(ERRCODE_INVALID_PARAMETER_VALUE, &cp->doc, path,
					 psprintf("event type \"%s\" must match ^[A-Za-z][A-Za-z0-9_.]{0,62}$",
							  SagaEcho(name)));
	for (int i = 0; i < c->nevents; i++)
		if (strcmp(c->events[i], name) == 0)
			return i;
	if (c->nevents == MAX_EVENTS)
		SagaDocError(ERRCODE_PROGRAM_LIMIT_EXCEEDED, &cp->doc, path,
					 psprintf("a choreography has at most %d event types", MAX_EVENTS));
	c->events[c->nevents] = name;
	cp->paths[c->nevents] = pstrdup(path);
	return c->nevents++;
}

/* an array of event types, each once; empty only if allow_empty */
static int
event_list(ChoreoParse *cp, JsonbValue *v, const char *path, int **out, bool allow_empty)
{
	JsonbContainer *arr;
	int			n;
	int			k = 0;

	SagaDocExpect(&cp->doc, v, "array", path);
	arr = v->val.binary.data;
	n = JsonContainerSize(arr);
	if (n == 0 && !allow_empty)
		SagaDocError(ERRCODE_INVALID_PARAMETER_VALUE, &cp->doc, path, "the list is empty");
	if (n > MAX_EVENTS)
		SagaDocError(ERRCODE_PROGRAM_LIMIT_EXCEEDED, &cp->doc, path,
					 psprintf("a list has at most %d event types", MAX_EVENTS));
	*out = palloc(sizeof(int) * (n + 1));
	for (int i = 0; i < n; i++)
	{
		char	   *epath = psprintf("%s[%d]", path, i);
		int			e = event_index(cp, getIthJsonbValueFromContainer(arr, i), epath);

		for (int j = 0; j < k; j++)
			if ((*out)[j] == e)
				SagaDocError(ERRCODE_INVALID_PARAMETER_VALUE, &cp->doc, epath,
							 psprintf("event type \"%s\" is listed twice", cp->c->events[e]));
		(*out)[k++] = e;
	}
	return k;
}

static bool
in_list(int e, const int *list, int n)
{
	for (int i = 0; i < n; i++)
		if (list[i] == e)
			return true;
	return false;
}

static void
parse_participant(ChoreoParse *cp, const char *name, JsonbValue *pv, Participant *p)
{
	char	   *path = psprintf("$.participants.%s", name);
	JsonbContainer *obj;
	JsonbValue	v;

	p->name = pstrdup(name);
	p->comp_emits = -1;
	if (!SagaValidTopic(name))
		SagaDocError(ERRCODE_INVALID_PARAMETER_VALUE, &cp->doc, path,
					 psprintf("participant \"%s\" must be a topic: ^[a-z][a-z0-9_]{0,47}$",
							  SagaEcho(name)));
	SagaDocExpect(&cp->doc, pv, "object", path);
	obj = pv->val.binary.data;
	SagaDocCheckKeys(&cp->doc, obj, participant_keys, path);
	if (!SagaDocGetKey(obj, "on", &v))
		SagaDocError(ERRCODE_INVALID_PARAMETER_VALUE, &cp->doc, path,
					 "a participant needs \"on\": the events it consumes");
	p->non = event_list(cp, &v, psprintf("%s.on", path), &p->on, false);
	p->emits = p->fails = NULL;
	if (SagaDocGetKey(obj, "emits", &v))
		p->nemits = event_list(cp, &v, psprintf("%s.emits", path), &p->emits, true);
	if (SagaDocGetKey(obj, "fails", &v))
		p->nfails = event_list(cp, &v, psprintf("%s.fails", path), &p->fails, true);
	if (SagaDocGetKey(obj, "compensation", &v))
	{
		char	   *cpath = psprintf("%s.compensation", path);
		JsonbContainer *cobj;
		JsonbValue	cv;

		SagaDocExpect(&cp->doc, &v, "object", cpath);
		cobj = v.val.binary.data;
		SagaDocCheckKeys(&cp->doc, cobj, compensation_keys, cpath);
		if (!SagaDocGetKey(cobj, "on", &cv))
			SagaDocError(ERRCODE_INVALID_PARAMETER_VALUE, &cp->doc, cpath,
						 "a compensation needs \"on\": the events that undo the participant's work");
		p->ncomp_on = event_list(cp, &cv, psprintf("%s.on", cpath), &p->comp_on, false);
		if (!SagaDocGetKey(cobj, "emits", &cv))
			SagaDocError(ERRCODE_INVALID_PARAMETER_VALUE, &cp->doc, cpath,
						 "a compensation needs \"emits\": the event that says it was undone");
		p->comp_emits = event_index(cp, &cv, psprintf("%s.emits", cpath));
		p->has_comp = true;
	}
	if (SagaDocGetKey(obj, "description", &v))
		(void) SagaDocString(&cp->doc, &v, psprintf("%s.description", path));
}

pg_noreturn static void
rule_error(ChoreoParse *cp, const char *path, const char *rule, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid %s: %s", cp->doc.what, what),
			 errdetail("Rule: %s The offending value is at %s.", rule, path)));
}

/* edges of the event graph: from each consumed event to what answers it */
typedef struct Graph
{
	int			n;
	int		   *nout;
	int		  **out;
	int		  **via;			/* the participant of each edge */
} Graph;

static void
add_edge(Graph *g, int from, int to, int participant)
{
	for (int i = 0; i < g->nout[from]; i++)
		if (g->out[from][i] == to)
			return;
	g->out[from][g->nout[from]] = to;
	g->via[from][g->nout[from]++] = participant;
}

static Graph *
build_graph(Choreo *c)
{
	Graph	   *g = palloc0(sizeof(Graph));

	g->n = c->nevents;
	g->nout = palloc0(sizeof(int) * g->n);
	g->out = palloc(sizeof(int *) * g->n);
	g->via = palloc(sizeof(int *) * g->n);
	for (int i = 0; i < g->n; i++)
	{
		g->out[i] = palloc(sizeof(int) * g->n);
		g->via[i] = palloc(sizeof(int) * g->n);
	}
	for (int p = 0; p < c->nparticipants; p++)
	{
		Participant *pt = &c->participants[p];

		for (int i = 0; i < pt->non; i++)
		{
			for (int k = 0; k < pt->nemits; k++)
				add_edge(g, pt->on[i], pt->emits[k], p);
			for (int k = 0; k < pt->nfails; k++)
				add_edge(g, pt->on[i], pt->fails[k], p);
		}
		if (pt->has_comp)
			for (int i = 0; i < pt->ncomp_on; i++)
				add_edge(g, pt->comp_on[i], pt->comp_emits, p);
	}
	return g;
}

/* the events reachable from the given ones (themselves included) */
static bool *
reachable(Graph *g, const int *from, int nfrom)
{
	bool	   *seen = palloc0(sizeof(bool) * g->n);
	int		   *queue = palloc(sizeof(int) * g->n);
	int			head = 0,
				tail = 0;

	for (int i = 0; i < nfrom; i++)
		if (from[i] >= 0 && !seen[from[i]])
		{
			seen[from[i]] = true;
			queue[tail++] = from[i];
		}
	while (head < tail)
	{
		int			e = queue[head++];

		for (int k = 0; k < g->nout[e]; k++)
			if (!seen[g->out[e][k]])
			{
				seen[g->out[e][k]] = true;
				queue[tail++] = g->out[e][k];
			}
	}
	return seen;
}

/* a cycle, found by depth-first search: reported whole, with its participants */
static void
check_cycles(ChoreoParse *cp, Graph *g)
{
	Choreo	   *c = cp->c;
	int		   *color = palloc0(sizeof(int) * g->n);	/* 0 new, 1 on stack, 2 done */
	int		   *stack = palloc(sizeof(int) * (g->n + 1));
	int		   *next = palloc0(sizeof(int) * g->n);

	for (int root = 0; root < g->n; root++)
	{
		int			depth = 0;

		if (color[root] != 0)
			continue;
		stack[depth++] = root;
		color[root] = 1;
		while (depth > 0)
		{
			int			e = stack[depth - 1];

			CHECK_FOR_INTERRUPTS();
			if (next[e] < g->nout[e])
			{
				int			k = next[e]++;
				int			to = g->out[e][k];

				if (color[to] == 1)
				{
					StringInfoData cycle;
					StringInfoData via;
					int			from = 0;

					while (stack[from] != to)
						from++;
					initStringInfo(&cycle);
					initStringInfo(&via);
					for (int i = from; i < depth; i++)
					{
						int			a = stack[i];
						int			b = (i + 1 < depth) ? stack[i + 1] : to;

						appendStringInfo(&cycle, "%s -> ", c->events[a]);
						for (int j = 0; j < g->nout[a]; j++)
							if (g->out[a][j] == b)
								appendStringInfo(&via, "%s\"%s\"", via.len > 0 ? ", " : "",
												 c->participants[g->via[a][j]].name);
					}
					appendStringInfoString(&cycle, c->events[to]);
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
							 errmsg("invalid %s: its events form a cycle", cp->doc.what),
							 errdetail("Cycle: %s (answered by participants %s). The offending value is at %s.",
									   cycle.data, via.data,
									   cp->paths[to]),
							 errhint("A flow must not be able to feed itself: break the cycle, or model a retry inside the participant.")));
				}
				if (color[to] == 0)
				{
					color[to] = 1;
					stack[depth++] = to;
				}
			}
			else
			{
				color[e] = 2;
				depth--;
			}
		}
	}
}

static char *
participant_path(Participant *p, const char *suffix)
{
	return psprintf("$.participants.%s%s", p->name, suffix);
}

/* the graph rules of the README, "Define the choreography" */
static void
check_rules(ChoreoParse *cp)
{
	Choreo	   *c = cp->c;
	Graph	   *g = build_graph(c);
	bool	   *consumed = palloc0(sizeof(bool) * c->nevents);
	bool	   *produced = palloc0(sizeof(bool) * c->nevents);
	bool	   *is_completed = palloc0(sizeof(bool) * c->nevents);
	int			roots[2] = {c->start, c->deadline_event};
	bool	   *reach;
	bool		any_completed = false;

	check_cycles(cp, g);

	for (int p = 0; p < c->nparticipants; p++)
	{
		Participant *pt = &c->participants[p];

		for (int i = 0; i < pt->non; i++)
			consumed[pt->on[i]] = true;
		for (int i = 0; i < pt->ncomp_on; i++)
			consumed[pt->comp_on[i]] = true;
		for (int i = 0; i < pt->nemits; i++)
			produced[pt->emits[i]] = true;
		for (int i = 0; i < pt->nfails; i++)
			produced[pt->fails[i]] = true;
		if (pt->has_comp)
			produced[pt->comp_emits] = true;
	}
	for (int i = 0; i < c->ncompleted; i++)
		is_completed[c->completed[i]] = true;

	if (!consumed[c->start])
		rule_error(cp, "$.start",
				   "the start event is consumed (in some participant's \"on\" or \"compensation.on\").",
				   psprintf("start event \"%s\" is consumed by no participant", c->events[c->start]));

	for (int p = 0; p < c->nparticipants; p++)
	{
		Participant *pt = &c->participants[p];

		for (int k = 0; k < pt->non + pt->ncomp_on; k++)
		{
			int			e = k < pt->non ? pt->on[k] : pt->comp_on[k - pt->non];
			char	   *path = k < pt->non ? participant_path(pt, psprintf(".on[%d]", k))
				: participant_path(pt, psprintf(".compensation.on[%d]", k - pt->non));

			if (e != c->start && e != c->deadline_event && !produced[e])
				rule_error(cp, path,
						   "every consumed event is the start event, the deadline event, or in some \"emits\", \"fails\" or \"compensation.emits\".",
						   psprintf("participant \"%s\" consumes \"%s\", which nothing publishes",
									pt->name, c->events[e]));
		}
		for (int k = 0; k < pt->nemits; k++)
			if (!consumed[pt->emits[k]] && !is_completed[pt->emits[k]])
				rule_error(cp, participant_path(pt, psprintf(".emits[%d]", k)),
						   "every event in an \"emits\" list is consumed (\"on\" or \"compensation.on\") or \"completed\".",
						   psprintf("participant \"%s\" emits \"%s\", which is neither consumed nor completed",
									pt->name, c->events[pt->emits[k]]));
	}

	reach = reachable(g, roots, 2);
	for (int p = 0; p < c->nparticipants; p++)
	{
		Participant *pt = &c->participants[p];
		bool		ok = false;

		for (int i = 0; i < pt->non && !ok; i++)
			ok = reach[pt->on[i]];
		if (!ok)
			rule_error(cp, participant_path(pt, ".on"),
					   "every participant (one of its \"on\" events) is reachable from the start or deadline event.",
					   psprintf("participant \"%s\" can never act: none of its \"on\" events is reachable",
								pt->name));
	}
	for (int i = 0; i < c->ncompleted; i++)
		any_completed |= reach[c->completed[i]];
	if (!any_completed)
		rule_error(cp, "$.completed",
				   "at least one \"completed\" event is reachable from the start or deadline event.",
				   "no flow can complete: no \"completed\" event is reachable");

	/* a participant that fails is answered by the compensation of all that acted before it */
	for (int y = 0; y < c->nparticipants; y++)
	{
		Participant *py = &c->participants[y];
		bool	   *after_y;

		if (!py->has_comp || py->nemits == 0)
			continue;
		/* what Y's acting leads to: one search from all of its emits */
		after_y = reachable(g, py->emits, py->nemits);
		for (int x = 0; x < c->nparticipants; x++)
		{
			Participant *px = &c->participants[x];
			bool		before = false;

			CHECK_FOR_INTERRUPTS();
			if (y == x)
				continue;
			for (int i = 0; i < px->non && !before; i++)
				before = after_y[px->on[i]];
			if (!before)
				continue;
			for (int f = 0; f < px->nfails; f++)
				if (!in_list(px->fails[f], py->comp_on, py->ncomp_on))
					rule_error(cp, participant_path(py, ".compensation.on"),
							   "for each \"fails\" event of a participant, every other participant with a \"compensation\" whose \"emits\" lead to that participant's \"on\" events lists the \"fails\" event in its \"compensation.on\".",
							   psprintf("participant \"%s\" acts before \"%s\" but does not compensate on its failure \"%s\"",
										py->name, px->name, c->events[px->fails[f]]));
		}
		pfree(after_y);
	}

	if (c->deadline_event >= 0)
		for (int p = 0; p < c->nparticipants; p++)
		{
			Participant *pt = &c->participants[p];

			if (pt->has_comp && !in_list(c->deadline_event, pt->comp_on, pt->ncomp_on))
				rule_error(cp, participant_path(pt, ".compensation.on"),
						   "the deadline event is in the \"compensation.on\" of every participant with a \"compensation\".",
						   psprintf("participant \"%s\" does not compensate on the deadline event \"%s\"",
									pt->name, c->events[c->deadline_event]));
		}
}

static Choreo *
parse_choreography(const char *name, Jsonb *doc, bool validate)
{
	ChoreoParse cp;
	Choreo	   *c = palloc0(sizeof(Choreo));
	JsonbValue	v;
	JsonbContainer *parts;
	JsonbIterator *it;
	JsonbIteratorToken tok;
	int			nparts;

	cp.doc.what = psprintf("choreography \"%s\"", name);
	cp.doc.resolve = false;
	cp.doc.caller = InvalidOid;
	cp.doc.range_is_invalid = true;
	cp.c = c;
	cp.paths = palloc(sizeof(char *) * MAX_EVENTS);
	c->name = pstrdup(name);
	c->events = palloc(sizeof(char *) * MAX_EVENTS);
	c->deadline_event = -1;

	if (!JB_ROOT_IS_OBJECT(doc) || JB_ROOT_IS_SCALAR(doc))
		SagaDocError(ERRCODE_INVALID_PARAMETER_VALUE, &cp.doc, "$", "the document must be a JSON object");
	SagaDocCheckKeys(&cp.doc, &doc->root, top_keys, "$");

	if (!SagaDocGetKey(&doc->root, "start", &v))
		SagaDocError(ERRCODE_INVALID_PARAMETER_VALUE, &cp.doc, "$", "\"start\" is missing");
	c->start = event_index(&cp, &v, "$.start");

	if (!SagaDocGetKey(&doc->root, "participants", &v))
		SagaDocError(ERRCODE_INVALID_PARAMETER_VALUE, &cp.doc, "$", "\"participants\" is missing");
	SagaDocExpect(&cp.doc, &v, "object", "$.participants");
	parts = v.val.binary.data;
	nparts = JsonContainerSize(parts);
	if (nparts == 0)
		SagaDocError(ERRCODE_INVALID_PARAMETER_VALUE, &cp.doc, "$.participants", "\"participants\" is empty");
	if (nparts > MAX_PARTICIPANTS)
		SagaDocError(ERRCODE_PROGRAM_LIMIT_EXCEEDED, &cp.doc, "$.participants",
					 psprintf("a choreography has at most %d participants", MAX_PARTICIPANTS));
	c->participants = palloc0(sizeof(Participant) * nparts);
	it = JsonbIteratorInit(parts);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		char	   *pname;
		JsonbValue	pv;

		if (tok != WJB_KEY)
			continue;
		pname = pnstrdup(v.val.string.val, v.val.string.len);
		tok = JsonbIteratorNext(&it, &pv, true);
		parse_participant(&cp, pname, &pv, &c->participants[c->nparticipants++]);
	}

	if (!SagaDocGetKey(&doc->root, "completed", &v))
		SagaDocError(ERRCODE_INVALID_PARAMETER_VALUE, &cp.doc, "$",
					 "\"completed\" is missing: the events that end a flow successfully");
	c->ncompleted = event_list(&cp, &v, "$.completed", &c->completed, false);

	if (SagaDocGetKey(&doc->root, "deadline", &v))
	{
		JsonbContainer *dobj;
		JsonbValue	dv;

		SagaDocExpect(&cp.doc, &v, "object", "$.deadline");
		dobj = v.val.binary.data;
		SagaDocCheckKeys(&cp.doc, dobj, deadline_keys, "$.deadline");
		if (!SagaDocGetKey(dobj, "after", &dv))
			SagaDocError(ERRCODE_INVALID_PARAMETER_VALUE, &cp.doc, "$.deadline",
						 "a deadline needs \"after\": an interval from the flow's start");
		c->deadline = SagaDocInterval(&cp.doc, &dv, "$.deadline.after");
		c->deadline_text = pnstrdup(dv.val.string.val, dv.val.string.len);
		if (SagaDocGetKey(dobj, "publish", &dv))
			c->deadline_event = event_index(&cp, &dv, "$.deadline.publish");
	}
	if (SagaDocGetKey(&doc->root, "max_hops", &v))
	{
		double		n = SagaDocNumber(&cp.doc, &v, "$.max_hops");

		if (n != (double) (int) n || n < 1 || n > 10000)
			SagaDocError(ERRCODE_INVALID_PARAMETER_VALUE, &cp.doc, "$.max_hops",
						 "\"max_hops\" must be an integer between 1 and 10000");
		c->max_hops = (int) n;
	}
	if (SagaDocGetKey(&doc->root, "description", &v))
		(void) SagaDocString(&cp.doc, &v, "$.description");

	/*
	 * The graph rules, at define time only (a stored version passed them),
	 * in a context of their own: their work arrays are not the cache's.
	 */
	if (validate)
	{
		MemoryContext rules = AllocSetContextCreate(CurrentMemoryContext, "saga choreography rules",
													ALLOCSET_DEFAULT_SIZES);
		MemoryContext old = MemoryContextSwitchTo(rules);

		check_rules(&cp);
		MemoryContextSwitchTo(old);
		MemoryContextDelete(rules);
	}
	return c;
}

/* ---------- caches ---------- */

static void
choreo_inval(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == choreo_cache_relid)
		index_stale = true;
}

void
SagaChoreographyInit(void)
{
	CacheRegisterRelcacheCallback(choreo_inval, (Datum) 0);
}

/* a parsed choreography version, from the cache or the table */
static Choreo *
choreo_load(int32 id)
{
	Oid			relid = SagaRelid("choreographies");
	ChoreoEntry *entry;
	bool		found;
	Oid			types[1] = {INT4OID};
	Datum		values[1] = {Int32GetDatum(id)};
	bool		isnull;
	MemoryContext cxt,
				old;
	Choreo	   *c;

	if (choreo_cache == NULL || relid != choreo_cache_relid)
	{
		HASHCTL		ctl;

		/* a new table (the extension was created again): ids start over */
		if (choreo_cxt != NULL)
			MemoryContextSetParent(choreo_cxt, TopTransactionContext);
		choreo_cxt = AllocSetContextCreate(CacheMemoryContext, "saga choreographies",
										   ALLOCSET_DEFAULT_SIZES);
		ctl.keysize = sizeof(int32);
		ctl.entrysize = sizeof(ChoreoEntry);
		ctl.hcxt = choreo_cxt;
		choreo_cache = hash_create("saga choreographies", 16, &ctl,
								   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		choreo_cache_relid = relid;
		index_stale = true;
	}
	entry = hash_search(choreo_cache, &id, HASH_FIND, NULL);
	if (entry != NULL)
		return entry->c;

	SagaExecuteLatest(&plan_load,
				"SELECT name, version, definition FROM saga.choreographies WHERE id = $1",
				1, types, values, NULL, SPI_OK_SELECT, "loading a choreography");
	if (SPI_processed != 1)
		elog(ERROR, "saga: choreography %d does not exist", id);
	cxt = AllocSetContextCreate(CurrentMemoryContext, "saga choreography", ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(cxt);
	c = parse_choreography(TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)),
						   DatumGetJsonbP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull)),
						   false);
	c->id = id;
	c->version = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	MemoryContextSwitchTo(old);
	MemoryContextSetParent(cxt, choreo_cxt);
	entry = hash_search(choreo_cache, &id, HASH_ENTER, &found);
	entry->c = c;
	return c;
}

static int
choreo_event(Choreo *c, const char *type)
{
	for (int i = 0; i < c->nevents; i++)
		if (strcmp(c->events[i], type) == 0)
			return i;
	return -1;
}

/* which event types any choreography knows, and which start a flow */
static void
index_validate(void)
{
	HASHCTL		ctl;
	int32	   *ids;
	bool	   *latest;
	int			n;

	if (!index_stale && type_index != NULL &&
		SagaRelid("choreographies") == choreo_cache_relid)
		return;
	if (index_cxt == NULL)
		index_cxt = AllocSetContextCreate(CacheMemoryContext, "saga choreography index",
										  ALLOCSET_DEFAULT_SIZES);
	else
		MemoryContextReset(index_cxt);
	type_index = NULL;
	index_stale = false;

	/* as of now, not of a REPEATABLE READ caller's snapshot: the index outlives it */
	SagaExecuteLatest(&plan_all,
				"SELECT id, version = pg_catalog.max(version) OVER (PARTITION BY name) "
				"FROM saga.choreographies ORDER BY id",
				0, NULL, NULL, NULL, SPI_OK_SELECT, "listing choreographies");
	n = (int) SPI_processed;
	ids = palloc(sizeof(int32) * (n + 1));
	latest = palloc(sizeof(bool) * (n + 1));
	for (int i = 0; i < n; i++)
	{
		bool		isnull;

		ids[i] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		latest[i] = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
	}

	ctl.keysize = SAGA_MAX_EVENT_TYPE_LEN + 1;
	ctl.entrysize = sizeof(TypeEntry);
	ctl.hcxt = index_cxt;
	type_index = hash_create("saga choreography event types", 64, &ctl,
							 HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	index_nchoreos = n;
	index_min_hops = 0;
	for (int i = 0; i < n; i++)
	{
		Choreo	   *c = choreo_load(ids[i]);

		if (c->max_hops > 0 && (index_min_hops == 0 || c->max_hops < index_min_hops))
			index_min_hops = c->max_hops;
		for (int e = 0; e < c->nevents; e++)
		{
			bool		found;
			TypeEntry  *te = hash_search(type_index, c->events[e], HASH_ENTER, &found);

			if (!found)
			{
				te->nstarts = 0;
				te->starts = MemoryContextAlloc(index_cxt, sizeof(int32) * n);
			}
			if (latest[i] && e == c->start)
				te->starts[te->nstarts++] = c->id;
		}
	}
}

/*
 * Must publish look at flows for this event: its type is in some
 * choreography, or its hop count is past the smallest limit that could
 * apply.  Everything else skips the flows entirely.
 */
bool
SagaFlowMayConcern(const char *type, int hops)
{
	int			min_limit;

	if (!SagaChoreographyInstalled())
		return false;
	index_validate();
	if (index_nchoreos == 0)
		return false;
	if (hash_search(type_index, type, HASH_FIND, NULL) != NULL)
		return true;
	min_limit = saga_max_hops;
	if (index_min_hops > 0 && index_min_hops < min_limit)
		min_limit = index_min_hops;
	return hops > min_limit;
}

/* ---------- flows ---------- */

static bool
flow_finished(const char *status)
{
	return strcmp(status, "running") != 0 && strcmp(status, "compensating") != 0;
}

static bool
any_seen(const bool *seen, const int *list, int n)
{
	for (int i = 0; i < n; i++)
		if (seen[list[i]])
			return true;
	return false;
}

/*
 * A flow's status and waiting_on from the graph and the events seen, given
 * its status before: running until a completed event (completed) or a
 * failure or the deadline event (compensating); compensating until every
 * participant that acted and has a compensation published it
 * (compensated).
 */
static const char *
derive_flow(Choreo *c, const bool *seen, const char *prev, List **waiting)
{
	const char *status = prev;

	*waiting = NIL;
	if (strcmp(prev, "running") == 0)
	{
		bool		failed = c->deadline_event >= 0 && seen[c->deadline_event];

		for (int p = 0; p < c->nparticipants && !failed; p++)
			failed = any_seen(seen, c->participants[p].fails, c->participants[p].nfails);
		if (any_seen(seen, c->completed, c->ncompleted) && !failed)
			status = "completed";
		else if (failed)
			status = "compensating";
	}
	if (strcmp(status, "running") == 0)
	{
		for (int p = 0; p < c->nparticipants; p++)
		{
			Participant *pt = &c->participants[p];

			if (any_seen(seen, pt->on, pt->non) &&
				!any_seen(seen, pt->emits, pt->nemits) && !any_seen(seen, pt->fails, pt->nfails))
				*waiting = lappend(*waiting, pt->name);
		}
	}
	else if (strcmp(status, "compensating") == 0)
	{
		for (int p = 0; p < c->nparticipants; p++)
		{
			Participant *pt = &c->participants[p];

			if (pt->has_comp && any_seen(seen, pt->emits, pt->nemits) && !seen[pt->comp_emits])
				*waiting = lappend(*waiting, pt->name);
		}
		if (*waiting == NIL)
			status = "compensated";
	}
	return status;
}

static Datum
names_array(List *names)
{
	Datum	   *d = palloc(sizeof(Datum) * (list_length(names) + 1));
	int			n = 0;
	ListCell   *lc;

	foreach(lc, names)
		d[n++] = CStringGetTextDatum((char *) lfirst(lc));
	return PointerGetDatum(construct_array(d, n, TEXTOID, -1, false, TYPALIGN_INT));
}

static Jsonb *
names_jsonb(List *names)
{
	JsonbParseState *ps = NULL;
	ListCell   *lc;

	pushJsonbValue(&ps, WJB_BEGIN_ARRAY, NULL);
	foreach(lc, names)
	{
		JsonbValue	v;

		v.type = jbvString;
		v.val.string.val = (char *) lfirst(lc);
		v.val.string.len = strlen(v.val.string.val);
		pushJsonbValue(&ps, WJB_ELEM, &v);
	}
	return JsonbValueToJsonb(pushJsonbValue(&ps, WJB_END_ARRAY, NULL));
}

/* grow the verdict's arrays by one */
static void
verdict_grow(SagaFlowVerdict *v)
{
	int			n = v->nflows + v->nnew;

	if (n % 8 != 0)
		return;
#define GROW(field, type) \
	v->field = (n == 0) ? palloc(sizeof(type) * 8) : repalloc(v->field, sizeof(type) * (n + 8))
	GROW(flow_ids, Datum);
	GROW(statuses, Datum);
	GROW(seen, Datum);
	GROW(waiting_on, Datum);
	GROW(incidents, Datum);
	GROW(incident_nulls, bool);
	GROW(finished, Datum);
	GROW(keep_deadline, Datum);
	GROW(old_statuses, Datum);
	GROW(old_seen, Datum);
	GROW(new_names, Datum);
	GROW(new_versions, Datum);
	GROW(new_choreo_ids, Datum);
	GROW(new_statuses, Datum);
	GROW(new_seen, Datum);
	GROW(new_waiting, Datum);
	GROW(new_deadlines, Datum);
	GROW(new_deadline_nulls, bool);
#undef GROW
}

static Datum
array_text(Datum arr)
{
	return CStringGetTextDatum(OidOutputFunctionCall(F_ARRAY_OUT, arr));
}

/* a flow whose row changes, with the status and seen it was read with */
static void
verdict_add(SagaFlowVerdict *v, int64 flow_id, const char *status, Datum seen, List *waiting,
			Jsonb *incident, bool finished_now, bool running,
			const char *old_status, Datum old_seen)
{
	int			n;

	verdict_grow(v);
	n = v->nflows++;
	v->flow_ids[n] = Int64GetDatum(flow_id);
	v->statuses[n] = CStringGetTextDatum(status);
	v->seen[n] = array_text(seen);
	v->waiting_on[n] = array_text(names_array(waiting));
	v->incidents[n] = incident ? JsonbPGetDatum(incident) : (Datum) 0;
	v->incident_nulls[n] = incident == NULL;
	v->finished[n] = BoolGetDatum(finished_now);
	v->keep_deadline[n] = BoolGetDatum(running);
	v->old_statuses[n] = CStringGetTextDatum(old_status);
	v->old_seen[n] = array_text(old_seen);
}

/*
 * What one event does to one flow of its correlation id (the flow's
 * choreography c, its status and seen as read): past the hop limit an
 * unfinished flow turns looping; a flow whose graph has the event's type
 * records it and derives its status (*took), unless it has finished
 * (*late).
 */
static void
consider_flow(SagaFlowVerdict *v, Choreo *c, int64 flow_id, const char *status,
			  ArrayType *seen_arr, const char *type, int64 event_id, int hops,
			  TimestampTz now, bool *took, bool *late)
{
	int			e = choreo_event(c, type);
	bool	   *seen;
	Datum	   *names;
	bool	   *nulls;
	int			nnames;
	Datum	   *newseen;
	int			nnew = 0;
	bool		already = false;
	List	   *waiting;
	const char *next;

	if (v->over_limit && hops > (c->max_hops > 0 ? c->max_hops : saga_max_hops))
	{
		JsonbParseState *ps = NULL;
		Jsonb	   *incident;

		if (flow_finished(status))
			return;
		pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
		SagaJbStr(&ps, "reason", "hop limit");
		SagaJbInt(&ps, "event_id", event_id);
		SagaJbStr(&ps, "event_type", type);
		SagaJbInt(&ps, "hops", hops);
		SagaJbInt(&ps, "max_hops", v->hop_limit);
		SagaJbStr(&ps, "since", timestamptz_to_str(now));
		incident = JsonbValueToJsonb(pushJsonbValue(&ps, WJB_END_OBJECT, NULL));
		verdict_add(v, flow_id, "looping", PointerGetDatum(seen_arr), NIL, incident, true, false,
					status, PointerGetDatum(seen_arr));
		return;
	}
	/* past the limit, but not this flow's own: the event is not its loop */
	if (e < 0 || v->over_limit)
		return;
	if (flow_finished(status))
	{
		*late = true;
		return;
	}
	*took = true;

	deconstruct_array(seen_arr, TEXTOID, -1, false, TYPALIGN_INT, &names, &nulls, &nnames);
	seen = palloc0(sizeof(bool) * c->nevents);
	newseen = palloc(sizeof(Datum) * (nnames + 1));
	for (int k = 0; k < nnames; k++)
	{
		int			idx = choreo_event(c, TextDatumGetCString(names[k]));

		if (idx >= 0)
			seen[idx] = true;
		if (idx == e)
			already = true;
		newseen[nnew++] = names[k];
	}
	if (!already)
		newseen[nnew++] = CStringGetTextDatum(type);
	seen[e] = true;
	next = derive_flow(c, seen, status, &waiting);
	verdict_add(v, flow_id, next,
				PointerGetDatum(construct_array(newseen, nnew, TEXTOID, -1, false, TYPALIGN_INT)),
				flow_finished(next) ? NIL : waiting, NULL,
				flow_finished(next), strcmp(next, "running") == 0,
				status, PointerGetDatum(seen_arr));
}

/* a flow the event starts, in its first state */
static void
verdict_new(SagaFlowVerdict *v, Choreo *c, const char *type, TimestampTz now)
{
	bool	   *seen = palloc0(sizeof(bool) * c->nevents);
	List	   *waiting;
	const char *status;
	Datum		one = CStringGetTextDatum(type);
	int			n;

	seen[c->start] = true;
	status = derive_flow(c, seen, "running", &waiting);
	verdict_grow(v);
	n = v->nnew++;
	v->new_names[n] = CStringGetTextDatum(c->name);
	v->new_versions[n] = Int32GetDatum(c->version);
	v->new_choreo_ids[n] = Int32GetDatum(c->id);
	v->new_statuses[n] = CStringGetTextDatum(status);
	v->new_seen[n] = array_text(PointerGetDatum(construct_array(&one, 1, TEXTOID, -1, false,
																TYPALIGN_INT)));
	v->new_waiting[n] = array_text(names_array(flow_finished(status) ? NIL : waiting));
	v->new_deadline_nulls[n] = !(c->deadline > 0 && strcmp(status, "running") == 0);
	v->new_deadlines[n] = TimestampTzGetDatum(now + c->deadline);
	if (!v->new_deadline_nulls[n])
		SagaWakeAt(now + c->deadline);
}

/*
 * The hop limit: that of the flows whose choreography knows the event's
 * type (the smallest, if several), so that no other choreography of the
 * same correlation id can cap them; for an event none of them knows, the
 * largest of the flows' limits; without a flow, saga.max_hops.  Flows the
 * event is about to start count as knowing it.
 */
static void
hop_limit(SagaFlowVerdict *v, Choreo **choreos, int n, const char *type, int hops)
{
	int			graph_limit = -1;
	int			any_limit = -1;

	for (int i = 0; i < n; i++)
	{
		int			lim = choreos[i]->max_hops > 0 ? choreos[i]->max_hops : saga_max_hops;

		if (choreo_event(choreos[i], type) >= 0 && (graph_limit < 0 || lim < graph_limit))
			graph_limit = lim;
		if (lim > any_limit)
			any_limit = lim;
	}
	v->hop_limit = graph_limit >= 0 ? graph_limit : any_limit >= 0 ? any_limit : saga_max_hops;
	v->over_limit = hops > v->hop_limit;
}

/*
 * What an event does to the flows of its correlation id, read without
 * locks: the publish statement writes it (SAGA_SQL_FLOW_CTES) only where
 * each flow still has the status and seen it was read with, and creates
 * the flows a start event begins only where no one else has; SagaFlowSettle
 * then does under the flows' locks whatever a concurrent event made stale.
 * Most events have their flow to themselves, so most publishes of a flow
 * take one read more than others and no row lock of their own.
 */
void
SagaFlowObserve(const char *type, const char *correlation_id, int64 event_id,
				int hops, TimestampTz now, SagaFlowVerdict *v)
{
	TypeEntry  *te = hash_search(type_index, type, HASH_FIND, NULL);
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(correlation_id)};
	SPITupleTable *tt;
	uint64		nflows;
	Choreo	  **choreos;
	int			nchoreos = 0;
	bool		took = false;
	bool		late = false;

	v->type = pstrdup(type);
	v->correlation_id = pstrdup(correlation_id);
	v->hops = hops;
	SagaExecuteLatest(&plan_flows_read,
					  "SELECT id, choreography_id, status, seen FROM saga.flows "
					  "WHERE correlation_id = $1 ORDER BY id",
					  1, types, values, NULL, SPI_OK_SELECT, "reading the flows of an event");
	tt = SPI_tuptable;
	nflows = SPI_processed;
	choreos = palloc(sizeof(Choreo *) * (nflows + (te ? te->nstarts : 0) + 1));
	for (uint64 i = 0; i < nflows; i++)
	{
		bool		isnull;

		choreos[nchoreos++] = choreo_load(DatumGetInt32(SPI_getbinval(tt->vals[i], tt->tupdesc, 2, &isnull)));
	}
	/* a start event begins the flows its choreographies do not have yet */
	for (int s = 0; te != NULL && s < te->nstarts; s++)
	{
		Choreo	   *c = choreo_load(te->starts[s]);
		bool		exists = false;

		for (uint64 i = 0; i < nflows; i++)
			exists |= strcmp(choreos[i]->name, c->name) == 0;
		if (!exists)
		{
			choreos[nchoreos++] = c;
			verdict_new(v, c, type, now);
			took = true;
		}
	}
	hop_limit(v, choreos, nchoreos, type, hops);
	if (v->over_limit && v->nnew > 0)
		v->nnew = 0;			/* a start event past the limit starts nothing */

	for (uint64 i = 0; i < nflows; i++)
	{
		HeapTuple	tup = tt->vals[i];
		bool		isnull;

		consider_flow(v, choreos[i], DatumGetInt64(SPI_getbinval(tup, tt->tupdesc, 1, &isnull)),
					  TextDatumGetCString(SPI_getbinval(tup, tt->tupdesc, 3, &isnull)),
					  DatumGetArrayTypePCopy(SPI_getbinval(tup, tt->tupdesc, 4, &isnull)),
					  type, event_id, hops, now, &took, &late);
	}
	v->late = late && !took;
	v->written_late = v->late;
}

/* the arrays SAGA_SQL_FLOW_CTES takes, $19 to $34, into out[0..15] */
void
SagaFlowWriteArrays(SagaFlowVerdict *v, Datum *out)
{
	int			n = v->nflows;
	int			dims[1];
	int			lbs[1] = {1};

#define ARR(d, cnt, type, len, byval, align) \
	PointerGetDatum(construct_array((d) ? (d) : (Datum *) palloc(sizeof(Datum)), cnt, type, len, byval, align))
	out[0] = ARR(v->flow_ids, n, INT8OID, 8, true, TYPALIGN_DOUBLE);
	out[1] = ARR(v->statuses, n, TEXTOID, -1, false, TYPALIGN_INT);
	out[2] = ARR(v->seen, n, TEXTOID, -1, false, TYPALIGN_INT);
	out[3] = ARR(v->waiting_on, n, TEXTOID, -1, false, TYPALIGN_INT);
	dims[0] = n;
	out[4] = PointerGetDatum(construct_md_array(v->incidents, v->incident_nulls, 1, dims, lbs,
												JSONBOID, -1, false, TYPALIGN_INT));
	out[5] = ARR(v->finished, n, BOOLOID, 1, true, TYPALIGN_CHAR);
	out[6] = ARR(v->keep_deadline, n, BOOLOID, 1, true, TYPALIGN_CHAR);
	out[7] = ARR(v->old_statuses, n, TEXTOID, -1, false, TYPALIGN_INT);
	out[8] = ARR(v->old_seen, n, TEXTOID, -1, false, TYPALIGN_INT);
	n = v->nnew;
	out[9] = ARR(v->new_names, n, TEXTOID, -1, false, TYPALIGN_INT);
	out[10] = ARR(v->new_versions, n, INT4OID, 4, true, TYPALIGN_INT);
	out[11] = ARR(v->new_choreo_ids, n, INT4OID, 4, true, TYPALIGN_INT);
	out[12] = ARR(v->new_statuses, n, TEXTOID, -1, false, TYPALIGN_INT);
	out[13] = ARR(v->new_seen, n, TEXTOID, -1, false, TYPALIGN_INT);
	out[14] = ARR(v->new_waiting, n, TEXTOID, -1, false, TYPALIGN_INT);
	dims[0] = n;
	out[15] = PointerGetDatum(construct_md_array(v->new_deadlines, v->new_deadline_nulls, 1, dims, lbs,
												 TIMESTAMPTZOID, 8, true, TYPALIGN_DOUBLE));
#undef ARR
}

/* the parameter types of SAGA_SQL_FLOW_CTES, $19 to $34 */
const Oid	SagaFlowArrayTypes[SAGA_FLOW_ARRAYS] = {
	INT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, JSONBARRAYOID, BOOLARRAYOID,
	BOOLARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, INT4ARRAYOID, INT4ARRAYOID,
	TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TIMESTAMPTZARRAYOID
};

/*
 * After the publish statement: updated are the flows it wrote, created the
 * choreographies whose flow it began.  What it could not write (a
 * concurrent event changed the flow, or began it first) is done now under
 * the flows' row locks, as if read then; and the event's late mark is set
 * again if that changes it.
 */
void
SagaFlowSettle(SagaFlowVerdict *v, ArrayType *updated, ArrayType *created,
			   int64 event_id, TimestampTz now)
{
	Datum	   *ids;
	Datum	   *cids;
	int			nids;
	int			ncids;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	SPITupleTable *tt;
	SagaFlowVerdict slow = {0};
	bool		took = false;
	bool		late = false;
	uint64		nlocked;

	deconstruct_array(updated, INT8OID, 8, true, TYPALIGN_DOUBLE, &ids, NULL, &nids);
	deconstruct_array(created, INT4OID, 4, true, TYPALIGN_INT, &cids, NULL, &ncids);
	if (nids == v->nflows && ncids == v->nnew)
		return;

	values[0] = CStringGetTextDatum(v->correlation_id);
	SagaExecuteLatest(&plan_flows,
					  "SELECT id, choreography_id, status, seen FROM saga.flows "
					  "WHERE correlation_id = $1 ORDER BY id FOR UPDATE",
					  1, types, values, NULL, SPI_OK_SELECT, "locking the flows of an event");
	tt = SPI_tuptable;
	nlocked = SPI_processed;
	slow.hop_limit = v->hop_limit;
	slow.over_limit = v->over_limit;
	for (uint64 i = 0; i < nlocked; i++)
	{
		HeapTuple	tup = tt->vals[i];
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(tup, tt->tupdesc, 1, &isnull));
		int32		cid = DatumGetInt32(SPI_getbinval(tup, tt->tupdesc, 2, &isnull));
		bool		written = false;

		for (int k = 0; k < nids && !written; k++)
			written = DatumGetInt64(ids[k]) == id;
		for (int k = 0; k < ncids && !written; k++)
			written = DatumGetInt32(cids[k]) == cid;
		if (written)
		{
			took |= !v->over_limit;
			continue;
		}
		consider_flow(&slow, choreo_load(cid), id,
					  TextDatumGetCString(SPI_getbinval(tup, tt->tupdesc, 3, &isnull)),
					  DatumGetArrayTypePCopy(SPI_getbinval(tup, tt->tupdesc, 4, &isnull)),
					  v->type, event_id, v->hops, now, &took, &late);
	}
	if (slow.nflows > 0)
		SagaFlowWrite(&slow, event_id, now);
	v->late = late && !took;
	if (v->late != v->written_late)
	{
		Oid			etypes[2] = {INT8OID, BOOLOID};
		Datum		evalues[2] = {Int64GetDatum(event_id), BoolGetDatum(v->late)};

		SagaExecuteLatest(&plan_event_late,
						  "UPDATE saga.events SET late = $2 WHERE id = $1",
						  2, etypes, evalues, NULL, SPI_OK_UPDATE, "marking an event late");
	}
}

/*
 * Write the flows' changes alone (after the event row): for a publish with
 * an idempotency key, whose event is written first.
 */
void
SagaFlowApply(SagaFlowVerdict *v, int64 event_id, TimestampTz now)
{
	Oid			types[SAGA_FLOW_FIRST_PARAM - 1 + SAGA_FLOW_ARRAYS];
	Datum		values[SAGA_FLOW_FIRST_PARAM - 1 + SAGA_FLOW_ARRAYS];
	char		nulls[SAGA_FLOW_FIRST_PARAM - 1 + SAGA_FLOW_ARRAYS];
	bool		isnull;

	for (int i = 0; i < SAGA_FLOW_FIRST_PARAM - 1; i++)
	{
		types[i] = TEXTOID;
		values[i] = (Datum) 0;
		nulls[i] = 'n';
	}
	types[0] = INT8OID;
	values[0] = Int64GetDatum(event_id);
	nulls[0] = ' ';
	values[3] = CStringGetTextDatum(v->correlation_id);
	nulls[3] = ' ';
	types[8] = TIMESTAMPTZOID;
	values[8] = TimestampTzGetDatum(now);
	nulls[8] = ' ';
	memcpy(types + SAGA_FLOW_FIRST_PARAM - 1, SagaFlowArrayTypes, sizeof(SagaFlowArrayTypes));
	memset(nulls + SAGA_FLOW_FIRST_PARAM - 1, ' ', SAGA_FLOW_ARRAYS);
	SagaFlowWriteArrays(v, values + SAGA_FLOW_FIRST_PARAM - 1);
	SagaExecuteLatest(&plan_flow_apply,
					  "WITH " SAGA_SQL_FLOW_CTES " " SAGA_SQL_FLOW_RESULT,
					  SAGA_FLOW_FIRST_PARAM - 1 + SAGA_FLOW_ARRAYS, types, values, nulls,
					  SPI_OK_SELECT, "following the flows of an event");
	SagaFlowSettle(v,
				   DatumGetArrayTypePCopy(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)),
				   DatumGetArrayTypePCopy(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)),
				   event_id, now);
}

/* write flows' changes one statement each, under the locks the caller holds */
void
SagaFlowWrite(SagaFlowVerdict *v, int64 event_id, TimestampTz now)
{
	for (int i = 0; i < v->nflows; i++)
	{
		Oid			types[9] = {INT8OID, TEXTOID, TEXTOID, TEXTOID, JSONBOID, BOOLOID,
		BOOLOID, INT8OID, TIMESTAMPTZOID};
		Datum		values[9];
		char		nulls[9] = "         ";

		values[0] = v->flow_ids[i];
		values[1] = v->statuses[i];
		values[2] = v->seen[i];
		values[3] = v->waiting_on[i];
		values[4] = v->incidents[i];
		nulls[4] = v->incident_nulls[i] ? 'n' : ' ';
		values[5] = v->finished[i];
		values[6] = v->keep_deadline[i];
		values[7] = Int64GetDatum(event_id);
		values[8] = TimestampTzGetDatum(now);
		SagaExecuteLatest(&plan_flow_update,
						  "UPDATE saga.flows SET status = $2, seen = $3::pg_catalog.text[], "
						  "waiting_on = $4::pg_catalog.text[], incident = COALESCE($5, incident), "
						  "finished_at = CASE WHEN $6 THEN $9 ELSE finished_at END, "
						  "deadline_at = CASE WHEN $7 THEN deadline_at END, "
						  "last_event_id = $8, updated_at = $9 WHERE id = $1",
						  9, types, values, nulls, SPI_OK_UPDATE, "following a flow");
	}
}

/*
 * A flow's deadline passed: while it is still running, publish the
 * declared event (with the flow's correlation id, its latest event as
 * cause), which turns it compensating; without one, it turns stuck.  Under
 * the flow's row lock, and the deadline is cleared in the same transaction:
 * it fires once, whoever sweeps (the worker, saga.tick()).
 */
void
SagaFlowDeadlineWork(int64 flow_id, const char *why)
{
	Oid			types[2] = {INT8OID, TIMESTAMPTZOID};
	Datum		values[2];
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Choreo	   *c;
	char	   *corr;
	char	   *status;
	int64		last_event;
	TimestampTz now = GetCurrentTimestamp();
	ArrayType  *seen_arr;
	Datum	   *names;
	bool	   *nulls;
	int			nnames;
	bool	   *seen;
	List	   *waiting;

	values[0] = Int64GetDatum(flow_id);
	values[1] = TimestampTzGetDatum(now);
	SagaExecuteLatest(&plan_flow_lock,
				"SELECT choreography_id, correlation_id, status, last_event_id, seen "
				"FROM saga.flows WHERE id = $1 AND deadline_at <= $2 FOR UPDATE SKIP LOCKED",
				2, types, values, NULL, SPI_OK_SELECT, "locking a flow past its deadline");
	if (SPI_processed == 0)
		return;					/* not due, or another sweep holds it */
	deadline_fired = true;
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	c = choreo_load(DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull)));
	corr = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
	status = TextDatumGetCString(SPI_getbinval(tup, desc, 3, &isnull));
	last_event = DatumGetInt64(SPI_getbinval(tup, desc, 4, &isnull));
	seen_arr = DatumGetArrayTypePCopy(SPI_getbinval(tup, desc, 5, &isnull));

	if (strcmp(status, "running") == 0)
	{
		deconstruct_array(seen_arr, TEXTOID, -1, false, TYPALIGN_INT, &names, &nulls, &nnames);
		seen = palloc0(sizeof(bool) * c->nevents);
		for (int k = 0; k < nnames; k++)
		{
			int			idx = choreo_event(c, TextDatumGetCString(names[k]));

			if (idx >= 0)
				seen[idx] = true;
		}
		(void) derive_flow(c, seen, status, &waiting);

		if (c->deadline_event >= 0)
		{
			JsonbParseState *ps = NULL;
			Jsonb	   *payload;

			pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
			SagaJbStr(&ps, "deadline", c->deadline_text);
			SagaJbJsonb(&ps, "waiting_on", names_jsonb(waiting));
			payload = JsonbValueToJsonb(pushJsonbValue(&ps, WJB_END_OBJECT, NULL));
			(void) SagaPublish(c->events[c->deadline_event], payload, corr,
							   last_event, last_event > 0 ? SAGA_CAUSE_IF_RETAINED : SAGA_NO_CAUSE,
							   NULL, NULL, NULL);
		}
		else
		{
			JsonbParseState *ps = NULL;
			Oid			stypes[2] = {INT8OID, JSONBOID};
			Datum		svalues[2];
			Jsonb	   *incident;

			pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
			SagaJbStr(&ps, "reason", "deadline passed");
			SagaJbStr(&ps, "deadline", c->deadline_text);
			SagaJbJsonb(&ps, "waiting_on", names_jsonb(waiting));
			SagaJbStr(&ps, "since", timestamptz_to_str(now));
			incident = JsonbValueToJsonb(pushJsonbValue(&ps, WJB_END_OBJECT, NULL));
			svalues[0] = Int64GetDatum(flow_id);
			svalues[1] = JsonbPGetDatum(incident);
			SagaExecuteLatest(&plan_flow_stuck,
						"UPDATE saga.flows SET status = 'stuck', waiting_on = '{}', incident = $2, "
						"finished_at = pg_catalog.clock_timestamp(), "
						"updated_at = pg_catalog.clock_timestamp() WHERE id = $1",
						2, stypes, svalues, NULL, SPI_OK_UPDATE, "marking a flow stuck");
		}
	}
	/* fired (or no longer running): never again */
	SagaExecuteLatest(&plan_flow_done,
				"UPDATE saga.flows SET deadline_at = NULL WHERE id = $1",
				1, types, values, NULL, SPI_OK_UPDATE, "clearing a flow's deadline");
}

/*
 * Run one flow's deadline in a subtransaction: a failure (an error from
 * the deadline event's publish) is logged and the deadline is looked at
 * again a minute later, so the sweep neither spins nor stops.
 */
int
SagaFlowIsolated(int64 flow_id)
{
	ErrorData  *edata;
	Oid			types[2] = {INT8OID, TIMESTAMPTZOID};
	Datum		values[2];

	deadline_fired = false;
	edata = SagaTryWork(SagaFlowDeadlineWork, flow_id, NULL);
	if (edata == NULL)
		return deadline_fired ? 1 : 0;
	ereport(LOG,
			(errcode(edata->sqlerrcode),
			 errmsg("saga flow %lld: deadline failed, retrying in %d s: %s",
					(long long) flow_id, FLOW_QUARANTINE_SECS, edata->message)));
	values[0] = Int64GetDatum(flow_id);
	values[1] = TimestampTzGetDatum(GetCurrentTimestamp() + FLOW_QUARANTINE_SECS * USECS_PER_SEC);
	SagaExecuteLatest(&plan_flow_quarantine,
					  "UPDATE saga.flows SET deadline_at = $2 WHERE id = $1 AND deadline_at IS NOT NULL",
					  2, types, values, NULL, SPI_OK_UPDATE, "postponing a flow's deadline");
	FreeErrorData(edata);
	return -1;
}

/* ---------- saga.define_choreography ---------- */

/* is the name a choreography's (saga.define refuses it) */
bool
SagaNameIsChoreography(const char *name)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(name)};

	if (!SagaChoreographyInstalled())
		return false;
	SagaExecute(&plan_is_choreo,
				"SELECT FROM saga.choreographies WHERE name = $1 LIMIT 1",
				1, types, values, NULL, SPI_OK_SELECT, "looking up a choreography");
	return SPI_processed > 0;
}

/* saga.define_choreography(name, definition): validate and store a new version */
Datum
saga_define_choreography(PG_FUNCTION_ARGS)
{
	char	   *name;
	Jsonb	   *doc;
	SagaUserSave save;
	Oid			caller;
	Choreo	   *c;
	int32		version = 1;
	bool		isnull;
	Oid			types[2] = {TEXTOID, JSONBOID};
	Datum		values[2];
	int			nestlevel;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", PG_ARGISNULL(0) ? "name" : "definition")));
	name = SagaTextArg(PG_GETARG_TEXT_PP(0), SAGA_MAX_NAME_LEN, "choreography name");
	doc = PG_GETARG_JSONB_P(1);
	if (!SagaValidName(name, NAMEDATALEN - 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("invalid choreography name \"%s\"", SagaEcho(name)),
				 errhint("A choreography name matches ^[a-z][a-z0-9_]{0,62}$.")));
	SagaCheckPayload(doc, "choreography definition");

	caller = SagaEnter(&save);
	if (!SagaChoreographyInstalled())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("choreographies need extension version 0.3"),
				 errhint("Run ALTER EXTENSION saga UPDATE.")));
	nestlevel = NewGUCNestLevel();
	(void) set_config_option("intervalstyle", "postgres", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	c = parse_choreography(name, doc, true);
	AtEOXact_GUC(false, nestlevel);
	if (c->deadline > 0)
		SagaWarnUnserved("its flows' deadlines");

	/* one namespace with saga.define, which takes the same lock */
	LockDatabaseObject(SagaRelid("definitions"),
					   (Oid) hash_bytes((const unsigned char *) name, strlen(name)), 0,
					   ExclusiveLock);
	if (SagaDefinitionLatest(name) != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is a saga definition", name),
				 errdetail("Saga definitions and choreographies share one namespace of names."),
				 errhint("Choose another name for the choreography.")));

	values[0] = CStringGetTextDatum(name);
	values[1] = JsonbPGetDatum(doc);
	SagaExecute(&plan_latest,
				"SELECT version, definition OPERATOR(pg_catalog.=) $2, owner "
				"FROM saga.choreographies WHERE name = $1 ORDER BY version DESC LIMIT 1",
				2, types, values, NULL, SPI_OK_SELECT, "comparing choreographies");
	if (SPI_processed > 0)
	{
		char	   *owner = NameStr(*DatumGetName(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull)));
		Oid			owner_oid = get_role_oid(owner, true);

		if (OidIsValid(owner_oid) ? !has_privs_of_role(caller, owner_oid) : !superuser_arg(caller))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied for choreography \"%s\"", name),
					 errdetail("Its versions belong to role \"%s\"; only its members may define new ones.", owner)));
		version = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)))
		{
			SagaLeave(&save);
			PG_RETURN_INT32(version);
		}
		version++;
	}

	{
		Oid			itypes[4] = {TEXTOID, INT4OID, JSONBOID, OIDOID};
		Datum		ivalues[4];

		ivalues[0] = CStringGetTextDatum(name);
		ivalues[1] = Int32GetDatum(version);
		ivalues[2] = JsonbPGetDatum(doc);
		ivalues[3] = ObjectIdGetDatum(caller);
		SagaExecute(&plan_insert,
					"INSERT INTO saga.choreographies (name, version, definition, owner) "
					"SELECT $1, $2, $3, r.rolname FROM pg_catalog.pg_roles r "
					"WHERE r.oid OPERATOR(pg_catalog.=) $4",
					4, itypes, ivalues, NULL, SPI_OK_INSERT, "storing a choreography");
	}

	/* each participant hears its events: a bounded number of subscriptions */
	{
		int			nsubs = 0;

		for (int p = 0; p < c->nparticipants; p++)
			nsubs += c->participants[p].non + c->participants[p].ncomp_on;
		if (nsubs > MAX_CHOREO_SUBSCRIPTIONS)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("invalid choreography \"%s\": it would create %d subscriptions", name, nsubs),
					 errdetail("A choreography subscribes its participants to at most %d events in all.",
							   MAX_CHOREO_SUBSCRIPTIONS)));
	}
	for (int p = 0; p < c->nparticipants; p++)
	{
		Participant *pt = &c->participants[p];

		for (int i = 0; i < pt->non; i++)
			(void) SagaSubscribeAs(c->events[pt->on[i]], pt->name, NULL, name, caller);
		for (int i = 0; i < pt->ncomp_on; i++)
			(void) SagaSubscribeAs(c->events[pt->comp_on[i]], pt->name, NULL, name, caller);
	}

	/* every backend looks at the choreographies again at commit */
	CacheInvalidateRelcacheByRelid(SagaRelid("choreographies"));
	index_stale = true;
	SagaLeave(&save);
	PG_RETURN_INT32(version);
}
