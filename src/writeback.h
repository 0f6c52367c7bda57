/*-------------------------------------------------------------------------
 *
 * writeback.h
 *	  Payment outcomes → FreshPortal registrations, exactly once.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_WRITEBACK_H
#define FRESHPAY_WRITEBACK_H

#include "flow.h"

extern FlowStep writeback_step(Flow *f, const HttpResponse *response);

/* In the caller's transaction (freshpay_sync()). */
extern int64 writeback_recheck_registered_twice(const char *administration);

#endif							/* FRESHPAY_WRITEBACK_H */
