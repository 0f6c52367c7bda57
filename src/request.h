/*-------------------------------------------------------------------------
 *
 * request.h
 *	  Payment requests: PayTrace's hosted payment page, sent by e-mail.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_REQUEST_H
#define FRESHPAY_REQUEST_H

#include "flow.h"
#include "mailbox.h"

extern void request_for_call(Flow *f, int slot, const MoneyCall *call);
extern void request_for_job(Flow *f);
extern FlowStep request_step(Flow *f, const HttpResponse *response);
extern void request_recover(void);

#endif							/* FRESHPAY_REQUEST_H */
