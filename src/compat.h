/*-------------------------------------------------------------------------
 *
 * compat.h
 *	  What differs between the PostgreSQL majors saga builds against
 *	  (15, 16, 17, 18), in one place.
 *
 * The code is written against the newest API; each macro or inline here
 * maps it to the older one, so the build on 15 compiles to what it compiled
 * to before this file existed.  Included from saga.h, so every file sees it;
 * each shim includes the headers it needs.  Test other majors with
 * scripts/other-major.sh.
 *
 *-------------------------------------------------------------------------
 */
#ifndef SAGA_COMPAT_H
#define SAGA_COMPAT_H

#include "postgres.h"

#include "catalog/pg_namespace.h"
#include "catalog/pg_proc.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/regproc.h"
#if PG_VERSION_NUM >= 160000
#include "parser/parse_relation.h"
#endif

#if PG_VERSION_NUM < 150000
#error "saga needs PostgreSQL 15 or later"
#endif

/*
 * 18 replaced pg_attribute_noreturn(), written after the declarator, by
 * pg_noreturn, written first (C11 _Noreturn).  GCC and clang take the
 * attribute at the start of a declaration as well.
 */
#ifndef pg_noreturn
#define pg_noreturn pg_attribute_noreturn()
#endif

/*
 * 16 folded the per-catalog pg_xxx_aclcheck() functions into
 * object_aclcheck(classid, ...).
 */
#if PG_VERSION_NUM < 160000
static inline AclResult
object_aclcheck(Oid classid, Oid objectid, Oid roleid, AclMode mode)
{
	if (classid == NamespaceRelationId)
		return pg_namespace_aclcheck(objectid, roleid, mode);
	Assert(classid == ProcedureRelationId);
	return pg_proc_aclcheck(objectid, roleid, mode);
}
#endif

/*
 * 16 gave stringToQualifiedNameList() a soft-error context; NULL throws
 * as 15 does.
 */
#if PG_VERSION_NUM < 160000
#define stringToQualifiedNameList(string, escontext) stringToQualifiedNameList(string)
#endif

/* 17 moved PGPROC's local transaction id into its virtual transaction id */
#if PG_VERSION_NUM >= 170000
#define SagaMyLocalTransactionId() (MyProc->vxid.lxid)
#else
#define SagaMyLocalTransactionId() (MyProc->lxid)
#endif

/* 17 replaced the flag IsBackgroundWorker by a test of MyBackendType */
#if PG_VERSION_NUM < 170000
#define AmBackgroundWorkerProcess() IsBackgroundWorker
#endif

/* 17 gave LogLogicalMessage() a flush argument (false: as before) */
#if PG_VERSION_NUM >= 170000
#define SagaLogLogicalMessage(prefix, message, size, transactional) \
	LogLogicalMessage(prefix, message, size, transactional, false)
#else
#define SagaLogLogicalMessage(prefix, message, size, transactional) \
	LogLogicalMessage(prefix, message, size, transactional)
#endif

/*
 * The range table of an EState built by hand (rows.c): one relation.
 * Returns where the columns an UPDATE sets go (UPDATE OF triggers read
 * them): the entry itself before 16, its RTEPermissionInfo since; 18 also
 * takes the relations left after pruning.
 */
static inline Bitmapset **
SagaInitRangeTable(EState *estate, RangeTblEntry *rte)
{
#if PG_VERSION_NUM >= 160000
	List	   *perminfos = NIL;
	RTEPermissionInfo *perminfo = addRTEPermissionInfo(&perminfos, rte);

#if PG_VERSION_NUM >= 180000
	ExecInitRangeTable(estate, list_make1(rte), perminfos, bms_make_singleton(1));
#else
	ExecInitRangeTable(estate, list_make1(rte), perminfos);
#endif
	return &perminfo->updatedCols;
#else
	ExecInitRangeTable(estate, list_make1(rte));
	return &rte->updatedCols;
#endif
}

#endif							/* SAGA_COMPAT_H */
