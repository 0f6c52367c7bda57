/*-------------------------------------------------------------------------
 *
 * autocollect.h
 *	  The collection rules, the due pass, revival of given-up collections.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_AUTOCOLLECT_H
#define FRESHPAY_AUTOCOLLECT_H

#include "datatype/timestamp.h"

extern TimestampTz autocollect_check(int64 invoice_id);
extern int64 autocollect_queue_due(void);
extern int64 autocollect_revive(void);

#endif							/* FRESHPAY_AUTOCOLLECT_H */
