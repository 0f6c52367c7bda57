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
extern SyncCounts sync_paytrace_transactions(const Administration *admin);
extern SyncCounts sync_settlements(const Administration *admin);

#endif							/* FRESHPAY_SYNC_H */
