/*-------------------------------------------------------------------------
 *
 * level3.h
 *	  send_level3 jobs: Level 3 line items after Visa and Mastercard sales.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_LEVEL3_H
#define FRESHPAY_LEVEL3_H

#include "flow.h"

extern FlowStep level3_step(Flow *f, const HttpResponse *response);

#endif							/* FRESHPAY_LEVEL3_H */
