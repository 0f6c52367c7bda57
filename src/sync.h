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
#include "sync_state.h"

extern SyncCounts sync_freshportal_stream(const Administration *admin, FpStream stream);
extern SyncCounts sync_freshportal_stream_paged(const Administration *admin, FpStream stream);

#endif							/* FRESHPAY_SYNC_H */
