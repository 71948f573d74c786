/*-------------------------------------------------------------------------
 *
 * rows.c
 *	  Direct writes of the engine's own rows: a saga's row, its tasks, its
 *	  history, an event and its deliveries, without planning or starting the
 *	  executor for them.
 *
 * A start, a step or a publish writes a handful of rows into tables the
 * extension owns.  Written as one SQL statement (data-modifying CTEs over
 * unnest), executor start-up of four ModifyTable nodes and their function
 * scans, and building jsonb in SQL, cost as much CPU as the rest of the
 * transaction, commit included (perf, bench/README.md).  The rows are
 * written here the way PostgreSQL's logical replication apply worker
 * writes (execReplication.c): the relation opened once per call, a minimal
 * EState, ExecSimpleRelationInsert/Update, which check the constraints,
 * maintain every index (partial ones too) and queue AFTER ROW triggers
 * (the CDC trigger on saga.outbox), fired when the writes end, as at the
 * end of a statement.  The columns an update sets are recorded in the
 * range table's entry, as the planner records an UPDATE's SET list, so
 * that UPDATE OF triggers fire as they would for the statement.
 *
 * Columns are found by name (and must have the type this file writes), and
 * the mapping is cached per relation until the relation changes: the
 * library runs against the schema of an older version until ALTER
 * EXTENSION UPDATE, which lacks some columns (those are skipped).  A
 * column this file does not know of is written as NULL; should it have a
 * default or refuse NULL, the write refuses instead of guessing, so a
 * version that adds such a column must name it here.
 *
 * The caller runs as the engine's role (the tables' owner), so there are
 * no privileges to check, and holds the lock of any row it updates.  What
 * only a statement has is absent: statement-level triggers, transition
 * tables, row-level security, ExecutorStart hooks.  The extension's tables
 * have none of the first three; a hook (pgaudit, say) sees saga.start, not
 * the rows it writes, as with any C function.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "catalog/pg_type.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "saga.h"

typedef struct RowsTable
{
	const char *relname;
	int			ncols;
	const char *const *names;
	const Oid  *types;			/* what each column must be */
	/* the mapping, valid while relid and natts match the relation */
	Oid			relid;
	int			natts;
	AttrNumber	attnum[ROWS_MAX_COLUMNS];	/* 0: not in this schema */
} RowsTable;

/* in the order of the SagaColumn, TaskColumn and HistoryColumn enums */
static const char *const saga_columns[] = {
	"id", "definition_id", "name", "version", "status", "pivoted", "cancel_requested",
	"cancel_reason", "step_status", "attempts", "deliveries", "input", "results", "errors",
	"incident", "correlation_id", "idempotency_key", "traceparent", "started_at", "updated_at",
	"finished_at", "deadline_at", "event_id"
};
static const char *const task_columns[] = {
	"id", "topic", "kind", "saga_id", "step", "attempt", "max_attempts", "deliveries",
	"lease_owner", "lease_length", "payload", "headers", "visible_at", "created_at", "timeout_at",
	"poll_lock", "event_id", "subscription_id", "error", "awaits"
};
static const char *const history_columns[] = {
	"id", "saga_id", "at", "actor", "events", "steps", "details"
};

static const char *const event_columns[] = {
	"id", "type", "payload", "correlation_id", "causation_id", "key", "idempotency_key",
	"traceparent", "published_at", "publisher", "hops", "deliveries", "late"
};

static const Oid saga_types[] = {
	INT8OID, INT4OID, TEXTOID, INT4OID, TEXTOID, BOOLOID, BOOLOID, TEXTOID, INT2ARRAYOID,
	INT4ARRAYOID, INT4ARRAYOID, JSONBOID, JSONBOID, JSONBOID, JSONBOID, TEXTOID, TEXTOID, TEXTOID,
	TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID, INT8OID
};
static const Oid task_types[] = {
	INT8OID, TEXTOID, TEXTOID, INT8OID, TEXTOID, INT4OID, INT4OID, INT4OID, TEXTOID, INTERVALOID,
	JSONBOID, JSONBOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID, BOOLOID, INT8OID, INT8OID,
	JSONBOID, TEXTOID
};
static const Oid history_types[] = {
	INT8OID, INT8OID, TIMESTAMPTZOID, TEXTOID, TEXTARRAYOID, TEXTARRAYOID, JSONBARRAYOID
};
static const Oid event_types[] = {
	INT8OID, TEXTOID, JSONBOID, TEXTOID, INT8OID, TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID,
	TEXTOID, INT4OID, INT4OID, BOOLOID
};

StaticAssertDecl(lengthof(saga_columns) == SC_NCOLUMNS, "saga_columns matches SagaColumn");
StaticAssertDecl(lengthof(task_columns) == TC_NCOLUMNS, "task_columns matches TaskColumn");
StaticAssertDecl(lengthof(history_columns) == HC_NCOLUMNS,
				 "history_columns matches HistoryColumn");
StaticAssertDecl(lengthof(event_columns) == EC_NCOLUMNS, "event_columns matches EventColumn");
StaticAssertDecl(lengthof(saga_types) == SC_NCOLUMNS, "saga_types matches SagaColumn");
StaticAssertDecl(lengthof(task_types) == TC_NCOLUMNS, "task_types matches TaskColumn");
StaticAssertDecl(lengthof(history_types) == HC_NCOLUMNS, "history_types matches HistoryColumn");
StaticAssertDecl(lengthof(event_types) == EC_NCOLUMNS, "event_types matches EventColumn");

static RowsTable tables[] = {
	[ROWS_SAGAS] = {"sagas", SC_NCOLUMNS, saga_columns, saga_types},
	[ROWS_OUTBOX] = {"outbox", TC_NCOLUMNS, task_columns, task_types},
	[ROWS_HISTORY] = {"history_log", HC_NCOLUMNS, history_columns, history_types},
	[ROWS_EVENTS] = {"events", EC_NCOLUMNS, event_columns, event_types},
};
static bool callback_registered = false;

/* any change to one of the tables (ALTER TABLE, ALTER EXTENSION UPDATE) drops its mapping */
static void
rows_relcache_callback(Datum arg, Oid relid)
{
	for (size_t i = 0; i < lengthof(tables); i++)
		if (relid == InvalidOid || relid == tables[i].relid)
			tables[i].relid = InvalidOid;
}

/* (re)build a table's column mapping from the relation as it is now */
static void
map_columns(RowsTable *t, Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);

	t->relid = InvalidOid;
	for (int c = 0; c < t->ncols; c++)
		t->attnum[c] = 0;
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		bool		known = false;

		if (att->attisdropped)
			continue;
		for (int c = 0; c < t->ncols && !known; c++)
			if (strcmp(NameStr(att->attname), t->names[c]) == 0)
			{
				if (att->atttypid != t->types[c])
					ereport(ERROR,
							(errcode(ERRCODE_DATATYPE_MISMATCH),
							 errmsg("column \"%s\" of saga.%s has another type than the saga library writes",
									NameStr(att->attname), t->relname),
							 errdetail("The column is %s; the library writes %s.",
									   format_type_be(att->atttypid), format_type_be(t->types[c])),
							 errhint("Install the saga library of the extension's version.")));
				t->attnum[c] = att->attnum;
				known = true;
			}
		if (!known && (att->attnotnull || att->atthasdef))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("column \"%s\" of saga.%s is unknown to the saga library",
							NameStr(att->attname), t->relname),
					 errdetail("The library writes the engine's rows itself and cannot fill a column with a default or NOT NULL that it does not know."),
					 errhint("Install the saga library of the extension's version.")));
	}
	t->natts = desc->natts;
	t->relid = RelationGetRelid(rel);
}

/*
 * Open one of the engine's tables for direct writes (RowExclusiveLock, its
 * indexes too), in the current memory context.  Refuses, as an INSERT
 * would, in a read-only transaction or in parallel mode.
 */
SagaRows *
SagaRowsOpen(SagaRowsTable which)
{
	RowsTable  *t = &tables[which];
	SagaRows   *r = palloc0(sizeof(SagaRows));
	Oid			relid = SagaRelid(t->relname);
	RangeTblEntry *rte;
	MemoryContext old;

	PreventCommandIfReadOnly("a write of the saga engine");
	PreventCommandIfParallelMode("a write of the saga engine");
	if (!OidIsValid(relid))
		elog(ERROR, "saga: relation saga.%s does not exist", t->relname);
	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(rows_relcache_callback, (Datum) 0);
		callback_registered = true;
	}
	r->rel = table_open(relid, RowExclusiveLock);
	if (t->relid != relid || t->natts != RelationGetDescr(r->rel)->natts)
		map_columns(t, r->rel);
	r->attnum = t->attnum;

	r->estate = CreateExecutorState();
	/* what the executor keeps goes with its state, freed at SagaRowsClose */
	old = MemoryContextSwitchTo(r->estate->es_query_cxt);
	r->estate->es_output_cid = GetCurrentCommandId(true);
	rte = makeNode(RangeTblEntry);
	rte->rtekind = RTE_RELATION;
	rte->relid = relid;
	rte->relkind = r->rel->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
	r->updated = SagaInitRangeTable(r->estate, rte);
	r->rri = makeNode(ResultRelInfo);
	InitResultRelInfo(r->rri, r->rel, 1, NULL, 0);
	r->estate->es_opened_result_relations = list_make1(r->rri);
	ExecOpenIndices(r->rri, false);
	r->slot = ExecInitExtraTupleSlot(r->estate, RelationGetDescr(r->rel), &TTSOpsVirtual);
	/* AFTER ROW triggers are queued as for a statement of their own */
	r->triggers = r->rel->trigdesc != NULL;
	if (r->triggers)
		AfterTriggerBeginQuery();
	MemoryContextSwitchTo(old);
	return r;
}

/* start a new row: every column NULL until set */
void
SagaRowsNew(SagaRows *r)
{
	TupleTableSlot *slot = r->slot;

	r->updating = false;
	ExecClearTuple(slot);
	memset(slot->tts_isnull, true, sizeof(bool) * slot->tts_tupleDescriptor->natts);
}

/* set a column of the row being built; a column the schema lacks is skipped */
void
SagaRowsSet(SagaRows *r, int column, Datum value, bool isnull)
{
	AttrNumber	a = r->attnum[column];

	if (a == 0)
		return;
	r->slot->tts_values[a - 1] = value;
	r->slot->tts_isnull[a - 1] = isnull;
	/* an update SETs it, as far as UPDATE OF triggers are concerned */
	if (r->updating)
	{
		MemoryContext old = MemoryContextSwitchTo(r->estate->es_query_cxt);

		*r->updated = bms_add_member(*r->updated, a - FirstLowInvalidHeapAttributeNumber);
		MemoryContextSwitchTo(old);
	}
}

/* does this schema have the column */
bool
SagaRowsHas(SagaRows *r, int column)
{
	return r->attnum[column] != 0;
}

/* insert the row built; *tid (if given) gets where it went */
void
SagaRowsInsert(SagaRows *r, ItemPointer tid)
{
	ExecStoreVirtualTuple(r->slot);
	ExecSimpleRelationInsert(r->rri, r->estate, r->slot);
	if (tid != NULL)
		*tid = r->slot->tts_tid;
	ResetPerTupleExprContext(r->estate);
}

/*
 * Start an update of the row version at tid, which the caller has locked:
 * the new row begins as a copy of it.  False if that version is no longer
 * the row's current one for this transaction (it deleted or updated the
 * row since it learnt the tid); nothing is started then.
 */
bool
SagaRowsFetch(SagaRows *r, ItemPointer tid)
{
	TupleTableSlot *old;

	if (r->old == NULL)
	{
		MemoryContext cxt = MemoryContextSwitchTo(r->estate->es_query_cxt);

		r->old = ExecInitExtraTupleSlot(r->estate, RelationGetDescr(r->rel),
										table_slot_callbacks(r->rel));
		MemoryContextSwitchTo(cxt);
	}
	old = r->old;
	/* SnapshotSelf: our own changes count, to the current command */
	if (!table_tuple_fetch_row_version(r->rel, tid, SnapshotSelf, old))
		return false;
	slot_getallattrs(old);
	r->updating = true;
	*r->updated = NULL;
	ExecClearTuple(r->slot);
	memcpy(r->slot->tts_values, old->tts_values, sizeof(Datum) * old->tts_nvalid);
	memcpy(r->slot->tts_isnull, old->tts_isnull, sizeof(bool) * old->tts_nvalid);
	return true;
}

/* a column of a slot's row; a column the schema lacks reads as NULL */
static Datum
slot_column(SagaRows *r, TupleTableSlot *slot, int column, bool *isnull)
{
	AttrNumber	a = r->attnum[column];

	*isnull = a == 0 || slot->tts_isnull[a - 1];
	return *isnull ? (Datum) 0 : slot->tts_values[a - 1];
}

/* a column of the row SagaRowsFetch read */
Datum
SagaRowsOld(SagaRows *r, int column, bool *isnull)
{
	return slot_column(r, r->old, column, isnull);
}

/* a column of the row just inserted or updated (valid until the next row) */
Datum
SagaRowsNewValue(SagaRows *r, int column, bool *isnull)
{
	return slot_column(r, r->slot, column, isnull);
}

/*
 * Write the row built over the one SagaRowsFetch read (a HOT update when
 * no indexed column changed); *tid (if given) gets the new version.
 */
void
SagaRowsUpdate(SagaRows *r, ItemPointer tid)
{
	ExecStoreVirtualTuple(r->slot);
	/* no EPQ: the caller holds the row's lock, so no one else updates it */
	ExecSimpleRelationUpdate(r->rri, r->estate, NULL, r->old, r->slot);
	if (tid != NULL)
		*tid = r->slot->tts_tid;
	ResetPerTupleExprContext(r->estate);
}

/*
 * One saga.history_log row on h (opened on ROWS_HISTORY): n events of a
 * saga at the given time, by the current actor; steps_null and
 * details_null may be NULL when none is.
 */
void
SagaRowsInsertHistory(SagaRows *h, int64 saga_id, TimestampTz at, int n, Datum *events,
					  Datum *steps, bool *steps_null, Datum *details, bool *details_null)
{
	int			dims[1] = {n};
	int			lbs[1] = {1};

	SagaRowsNew(h);
	SagaRowsSet(h, HC_ID, DirectFunctionCall1(nextval_oid,
											  ObjectIdGetDatum(SagaRelid("history_id_seq"))),
				false);
	SagaRowsSet(h, HC_SAGA_ID, Int64GetDatum(saga_id), false);
	SagaRowsSet(h, HC_AT, TimestampTzGetDatum(at), false);
	SagaRowsSet(h, HC_ACTOR, CStringGetTextDatum(SagaActorName()), false);
	SagaRowsSet(h, HC_EVENTS, PointerGetDatum(construct_array(events, n, TEXTOID, -1, false,
															  TYPALIGN_INT)), false);
	SagaRowsSet(h, HC_STEPS,
				PointerGetDatum(construct_md_array(steps, steps_null, 1, dims, lbs, TEXTOID, -1,
												   false, TYPALIGN_INT)), false);
	SagaRowsSet(h, HC_DETAILS,
				PointerGetDatum(construct_md_array(details, details_null, 1, dims, lbs, JSONBOID,
												   -1, false, TYPALIGN_INT)), false);
	SagaRowsInsert(h, NULL);
}

/*
 * Fire the AFTER ROW triggers the writes queued, release the executor
 * state, and make the writes visible to what follows in the transaction
 * (as SPI does after a statement).  The table stays locked until the
 * transaction ends.
 */
void
SagaRowsClose(SagaRows *r)
{
	if (r->triggers)
		AfterTriggerEndQuery(r->estate);
	ExecCloseIndices(r->rri);
	ExecResetTupleTable(r->estate->es_tupleTable, false);
	FreeExecutorState(r->estate);
	table_close(r->rel, NoLock);
	pfree(r);
	CommandCounterIncrement();
}
