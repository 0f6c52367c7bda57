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

/* What autocollect_check says to do now (times are later dates). */
#define AUTOCOLLECT_CHARGE ((TimestampTz) -1)
#define AUTOCOLLECT_REQUEST ((TimestampTz) -2)

extern TimestampTz autocollect_check(int64 invoice_id, int64 job_id);
extern TimestampTz autocollect_guard(int64 invoice_id, int64 job_id, bool lock);
extern int64 autocollect_probe_done(int64 invoice_id);
extern int64 autocollect_queue_due(void);
extern int64 autocollect_revive(void);

#endif							/* FRESHPAY_AUTOCOLLECT_H */
