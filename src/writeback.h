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

#endif							/* FRESHPAY_WRITEBACK_H */
