/*-------------------------------------------------------------------------
 *
 * saga.c
 *	  Module initialisation, GUCs, and the helpers every subsystem shares:
 *	  running as the engine's role, SPI checks, plan caching, limits.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#include "saga.h"

PG_MODULE_MAGIC;

int			saga_max_payload_size = 1024 * 1024;

/* the role that called the current API function: the actor in history */
Oid			saga_caller = InvalidOid;

/* set by the background worker, which acts for nobody in particular */
const char *saga_actor = NULL;

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
	SagaWorkerInit();

	MarkGUCPrefixReserved("saga");

}

/*
 * The API functions are callable by the saga roles, which hold no privileges
 * on the tables themselves: the engine does its table work as the owner of
 * schema saga (the role that created the extension).  Unlike SECURITY
 * DEFINER, this keeps the caller's identity visible to us, which we need to
 * record who defined a saga (its SQL steps run as that role) and who acted.
 */
Oid
SagaBecomeOwner(SagaUserSave *save)
{
	Oid			nsp;
	HeapTuple	tup;
	Oid			owner;
	Oid			caller;

	nsp = get_namespace_oid("saga", false);
	tup = SearchSysCache1(NAMESPACEOID, ObjectIdGetDatum(nsp));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for namespace %u", nsp);
	owner = ((Form_pg_namespace) GETSTRUCT(tup))->nspowner;
	ReleaseSysCache(tup);

	GetUserIdAndSecContext(&save->userid, &save->sec_context);
	caller = save->userid;
	saga_caller = caller;
	SetUserIdAndSecContext(owner, save->sec_context | SECURITY_LOCAL_USERID_CHANGE);
	return caller;
}

void
SagaRestoreUser(SagaUserSave *save)
{
	SetUserIdAndSecContext(save->userid, save->sec_context);
}

/* what every entry point does first: become the engine's role, connect to SPI */
Oid
SagaEnter(SagaUserSave *save)
{
	Oid			caller = SagaBecomeOwner(save);
	int			rc;

	if ((rc = SPI_connect()) != SPI_OK_CONNECT)
		elog(ERROR, "saga: SPI_connect failed: %s", SPI_result_code_string(rc));
	return caller;
}

void
SagaLeave(SagaUserSave *save)
{
	int			rc;

	if ((rc = SPI_finish()) != SPI_OK_FINISH)
		elog(ERROR, "saga: SPI_finish failed: %s", SPI_result_code_string(rc));
	SagaRestoreUser(save);
}

/* who history says acted: the background worker, or the calling role */
const char *
SagaActorName(void)
{
	return saga_actor ? saga_actor : GetUserNameFromId(saga_caller, false);
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
