/*-------------------------------------------------------------------------
 *
 * attempt.h
 *	  The durable attempt protocol: money calls recorded before they are
 *	  sent, their outcome recorded after.
 *
 * Runs in the money worker only, as flows of its pipeline.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_ATTEMPT_H
#define FRESHPAY_ATTEMPT_H

#include "flow.h"
#include "mailbox.h"

extern void attempt_for_call(Flow *f, int slot, const MoneyCall *call);
extern FlowStep attempt_step(Flow *f, const HttpResponse *response);
extern bool attempt_in_flight(int64 payment_id);

#endif							/* FRESHPAY_ATTEMPT_H */
