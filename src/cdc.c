/*-------------------------------------------------------------------------
 *
 * cdc.c
 *	  Change data capture: every dispatch as a transactional logical
 *	  decoding message (README, "Change data capture").
 *
 * A dispatch is a task becoming available to a service: a task written to
 * the outbox (a step's action or compensation, an event delivery, a replay,
 * a redelivered dead letter), and a task given back, the lease cleared, by
 * a retry (visible after its backoff), a release, a lapse, or saga.retry
 * taking a parked compensation up again.  A claim, a heartbeat, a
 * transactional poll's lock and the task's end are not dispatches.  With
 * saga.cdc on (and wal_level = logical), the trigger outbox_dispatch on
 * saga.outbox writes one message with the prefix "saga" per dispatch, in
 * the transaction of the dispatch: it is decoded once if that transaction
 * commits and never if it rolls back, also in a subtransaction.
 *
 * Why messages and not rows: an insert-only stream table would have to be
 * in a publication, and pg_dump leaves out the publication membership of
 * an extension's tables while DROP EXTENSION silently removes it; and
 * saga.outbox itself changes by UPDATE, which Debezium's outbox router
 * drops.  A message needs only a publication, which may be empty and
 * belongs to the user.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "replication/message.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "saga.h"

#define CDC_PREFIX		"saga"

/*
 * A message larger than this leaves the payload out (payload null,
 * payload_omitted true): Kafka refuses records over about 1 MB by default,
 * and one record it refuses stops a Debezium connector, whose slot then
 * keeps WAL until the disk fills.  The payload stays in saga.outbox while
 * the task is there to be done.
 */
#define CDC_MAX_MESSAGE	(512 * 1024)

bool		saga_cdc = false;

PG_FUNCTION_INFO_V1(saga_outbox_dispatch);

/* a column of the trigger's row, by name; NULL sets *isnull */
static Datum
column(TriggerData *td, HeapTuple tup, const char *name, bool *isnull)
{
	TupleDesc	desc = RelationGetDescr(td->tg_relation);
	int			attno = SPI_fnumber(desc, name);

	if (attno <= 0)
		elog(ERROR, "saga: saga.outbox has no column \"%s\"", name);
	return heap_getattr(tup, attno, desc, isnull);
}

static bool
text_is(TriggerData *td, HeapTuple tup, const char *name, const char *value)
{
	bool		isnull;
	Datum		d = column(td, tup, name, &isnull);

	return !isnull && strcmp(TextDatumGetCString(d), value) == 0;
}

/* key: the column as a JSON string, or null */
static void
put_text(JsonbParseState **ps, const char *key, TriggerData *td, HeapTuple tup,
		 const char *name)
{
	bool		isnull;
	Datum		d = column(td, tup, name, &isnull);

	SagaJbStr(ps, key, isnull ? NULL : TextDatumGetCString(d));
}

/* key: the column as a JSON number, or null */
static void
put_int8(JsonbParseState **ps, const char *key, TriggerData *td, HeapTuple tup,
		 const char *name)
{
	bool		isnull;
	Datum		d = column(td, tup, name, &isnull);

	if (isnull)
		SagaJbStr(ps, key, NULL);
	else
		SagaJbInt(ps, key, DatumGetInt64(d));
}

/* ISO 8601 in UTC, whatever the session's DateStyle and TimeZone */
static char *
iso_utc(TimestampTz t)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (timestamp2tm(t, NULL, &tm, &fsec, NULL, NULL) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range")));
	return psprintf("%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year, tm.tm_mon, tm.tm_mday,
					tm.tm_hour, tm.tm_min, tm.tm_sec, (int) fsec);
}

/*
 * Whether this change of a task is a dispatch.  The trigger fires for
 * inserts and for updates that set visible_at, lease_owner or attempt; its
 * WHEN clause already checked saga.cdc.
 */
static bool
is_dispatch(TriggerData *td, HeapTuple newtup, HeapTuple oldtup)
{
	bool		isnull;
	Datum		visible = column(td, newtup, "visible_at", &isnull);

	/* the engine's own rows: SQL steps waiting for the worker, await steps */
	if (text_is(td, newtup, "topic", SAGA_SQL_RETRY_TOPIC) ||
		text_is(td, newtup, "topic", SAGA_AWAIT_TOPIC))
		return false;
	/* parked: a compensation that failed for good waits for saga.retry */
	if (isnull || TIMESTAMP_NOT_FINITE(DatumGetTimestampTz(visible)))
		return false;
	/* leased: a claim or a heartbeat */
	(void) column(td, newtup, "lease_owner", &isnull);
	if (!isnull)
		return false;
	if (oldtup != NULL)
	{
		bool		oldnull;
		Datum		oldvisible = column(td, oldtup, "visible_at", &oldnull);
		bool		was_leased;
		bool		attnull;

		bool		owner_null;

		(void) column(td, oldtup, "lease_owner", &owner_null);
		was_leased = !owner_null;

		/*
		 * Available again: its lease ended (a release, a lapse, a retry of a
		 * delivered task), a new attempt was scheduled, or a parked
		 * compensation was taken up (saga.retry).  A task that was free and
		 * stays free with the same attempt was dispatched already, whatever
		 * its visible_at does (a task held back is not dispatched again).
		 */
		if (!was_leased && !oldnull &&
			!TIMESTAMP_NOT_FINITE(DatumGetTimestampTz(oldvisible)) &&
			DatumGetInt32(column(td, oldtup, "attempt", &attnull)) ==
			DatumGetInt32(column(td, newtup, "attempt", &attnull)))
			return false;
	}
	return true;
}

/* the message of one dispatch; omit: the payload left out */
static char *
build_message(TriggerData *td, HeapTuple newtup, Jsonb *headers, const char *payload_text,
			  bool omit)
{
	JsonbParseState *ps = NULL;
	JsonbValue	null = {.type = jbvNull};
	JsonbValue	corr_key = {.type = jbvString, .val.string = {14, "correlation_id"}};
	JsonbValue	tp_key = {.type = jbvString, .val.string = {11, "traceparent"}};
	JsonbValue *corr = findJsonbValueFromContainer(&headers->root, JB_FOBJECT, &corr_key);
	JsonbValue *tp = findJsonbValueFromContainer(&headers->root, JB_FOBJECT, &tp_key);
	bool		isnull;

	/*
	 * The id is a random UUID rather than a sequence's number: consumers
	 * deduplicate on it, and a sequence would start over after DROP and
	 * CREATE EXTENSION and hand out ids they have already seen.
	 */
	pushJsonbValue(&ps, WJB_BEGIN_OBJECT, NULL);
	SagaJbStr(&ps, "id",
			  DatumGetCString(DirectFunctionCall1(uuid_out,
												  DirectFunctionCall1(gen_random_uuid, (Datum) 0))));
	put_text(&ps, "aggregate_type", td, newtup, "topic");
	if (corr != NULL && corr->type == jbvString)
	{
		SagaJbKey(&ps, "aggregate_id");
		pushJsonbValue(&ps, WJB_VALUE, corr);
	}
	else
	{
		bool		idnull;

		/* a string, as a correlation id is: Kafka keys of one type */
		SagaJbStr(&ps, "aggregate_id",
				  psprintf("%lld", (long long) DatumGetInt64(column(td, newtup, "id", &idnull))));
	}
	put_text(&ps, "type", td, newtup, "kind");
	put_int8(&ps, "task_id", td, newtup, "id");
	put_int8(&ps, "saga_id", td, newtup, "saga_id");
	put_text(&ps, "step", td, newtup, "step");
	put_int8(&ps, "event_id", td, newtup, "event_id");
	SagaJbInt(&ps, "attempt", DatumGetInt32(column(td, newtup, "attempt", &isnull)));
	SagaJbStr(&ps, "visible_at",
			  iso_utc(DatumGetTimestampTz(column(td, newtup, "visible_at", &isnull))));
	SagaJbStr(&ps, "payload", omit ? NULL : payload_text);
	SagaJbBool(&ps, "payload_omitted", omit);
	SagaJbJsonb(&ps, "headers", headers);
	SagaJbKey(&ps, "traceparent");
	pushJsonbValue(&ps, WJB_VALUE, (tp != NULL && tp->type == jbvString) ? tp : &null);
	return JsonbToCString(NULL, &JsonbValueToJsonb(pushJsonbValue(&ps, WJB_END_OBJECT, NULL))->root, 0);
}

/*
 * saga.outbox_dispatch(): the AFTER ROW trigger of saga.outbox.  The
 * message is a JSON object with every key always present (Debezium's
 * outbox router fails on a missing one): id (a random UUID, unique per
 * dispatch), aggregate_type (the topic), aggregate_id (the correlation id),
 * type (action, compensate or event), task_id, saga_id, step, event_id,
 * attempt, visible_at (not to be worked on before), payload (the task's
 * payload as a JSON string, or null past CDC_MAX_MESSAGE), payload_omitted,
 * headers (the task's headers) and traceparent.  Without wal_level = logical nothing could decode it: no
 * message is written.
 */
Datum
saga_outbox_dispatch(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	HeapTuple	newtup;
	HeapTuple	oldtup = NULL;
	Jsonb	   *headers;
	Jsonb	   *payload;
	bool		isnull;
	char	   *payload_text;
	char	   *message;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("saga.outbox_dispatch() must be called as an AFTER ROW trigger of saga.outbox")));
	if (!saga_cdc || !XLogLogicalInfoActive())
		return PointerGetDatum(NULL);
	if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
	{
		newtup = td->tg_newtuple;
		oldtup = td->tg_trigtuple;
	}
	else
		newtup = td->tg_trigtuple;
	if (!is_dispatch(td, newtup, oldtup))
		return PointerGetDatum(NULL);

	headers = DatumGetJsonbP(column(td, newtup, "headers", &isnull));
	payload = DatumGetJsonbP(column(td, newtup, "payload", &isnull));
	payload_text = JsonbToCString(NULL, &payload->root, VARSIZE(payload));
	message = build_message(td, newtup, headers, payload_text, false);
	if (strlen(message) > CDC_MAX_MESSAGE)
		message = build_message(td, newtup, headers, payload_text, true);
	SagaLogLogicalMessage(CDC_PREFIX, message, strlen(message), true);
	return PointerGetDatum(NULL);
}

void
SagaCdcInit(void)
{
	DefineCustomBoolVariable("saga.cdc",
							 "Writes every dispatch of a task as a logical decoding message.",
							 "Transactional messages with the prefix \"saga\", for change data capture (Debezium); needs wal_level = logical.",
							 &saga_cdc, false, PGC_SUSET, 0, NULL, NULL, NULL);
}
