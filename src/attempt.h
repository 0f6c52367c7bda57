/*-------------------------------------------------------------------------
 *
 * attempt.h
 *	  The durable attempt protocol: money calls recorded before they are
 *	  sent, their outcome recorded after, lost outcomes looked up at PayTrace.
 *
 * Runs in the background worker only.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_ATTEMPT_H
#define FRESHPAY_ATTEMPT_H

#include "datatype/timestamp.h"

#include "mailbox.h"
#include "paytrace.h"

extern void attempt_run_call(int slot, const MoneyCall *call);
extern TimestampTz attempt_resolve(int64 payment_id);
extern void attempt_recover(void);
extern TimestampTz attempt_collect_queued(int64 invoice_id);
extern char attempt_apply_paytrace(const char *administration, const PtTransaction *t);

#endif							/* FRESHPAY_ATTEMPT_H */
