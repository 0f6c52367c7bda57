/*-------------------------------------------------------------------------
 *
 * sync.h
 *	  Pulling FreshPortal customers and invoices into freshpay's tables.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_SYNC_H
#define FRESHPAY_SYNC_H

#include "administration.h"
#include "freshportal.h"

typedef struct SyncCounts
{
	int64		fetched;		/* distinct rows received */
	int64		inserted;
	int64		updated;
} SyncCounts;

extern SyncCounts sync_freshportal_stream(const Administration *admin, FpStream stream);
extern SyncCounts sync_freshportal_stream_paged(const Administration *admin, FpStream stream);
extern List *sync_paytrace_fetch(const Administration *admin);
extern SyncCounts sync_paytrace_apply(const Administration *admin, List *transactions);
extern List *sync_settlements_fetch(const Administration *admin);
extern SyncCounts sync_settlements_apply(const Administration *admin, List *batches);

#endif							/* FRESHPAY_SYNC_H */
