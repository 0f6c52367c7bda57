/*-------------------------------------------------------------------------
 *
 * ach.h
 *	  ACH debits made through PayTrace API v3, in the ledger.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_ACH_H
#define FRESHPAY_ACH_H

#include "payments.h"
#include "paytrace_v3.h"

extern char *ach_new_key(void);
extern PtResult *ach_result(const Attempt *a, const PtAchTransaction *t);
extern bool ach_note(int64 payment_id, const PtAchTransaction *t);
extern bool ach_record(const Attempt *a, const PtAchTransaction *t, const char *event);
extern char ach_apply(const char *administration, const PtAchTransaction *t);

#endif							/* FRESHPAY_ACH_H */
