/*-------------------------------------------------------------------------
 *
 * sync_paytrace.h
 *	  Pulling PayTrace's transactions and settlement batches.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_SYNC_PAYTRACE_H
#define FRESHPAY_SYNC_PAYTRACE_H

#include "nodes/pg_list.h"

#include "administration.h"
#include "sync_state.h"

/* What the pull of PayTrace's transactions fetched: v1's export, and v3's ACH list. */
typedef struct PaytracePull
{
	List	   *transactions;	/* PtTransaction */
	List	   *ach;			/* PtAchTransaction; NIL without a merchant id */
	bool		profiles_read;	/* the vault profiles were read (daily) */
	List	   *profiles;		/* PtProfile */
} PaytracePull;

extern bool sync_profiles_due(const char *administration);
extern bool sync_ach_due(const char *administration);
extern PaytracePull *sync_paytrace_fetch(const Administration *admin, bool profiles_due, bool ach_due);
extern SyncCounts sync_paytrace_apply(const Administration *admin, PaytracePull *pull);
extern List *sync_settlements_fetch(const Administration *admin);
extern SyncCounts sync_settlements_apply(const Administration *admin, List *batches);

#endif							/* FRESHPAY_SYNC_PAYTRACE_H */
