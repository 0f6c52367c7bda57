/*-------------------------------------------------------------------------
 *
 * paytrace_v3.h
 *	  PayTrace JSON API v3, beside v1: the only code that knows v3's paths,
 *	  headers and fields (contract section 11).
 *
 * v3 is used where v1 has no JSON call: payment requests, and ACH debits
 * with an idempotency key and a status followed for days.  An
 * administration without a PayTrace merchant id does not use it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_PAYTRACE_V3_H
#define FRESHPAY_PAYTRACE_V3_H

#include "datatype/timestamp.h"

#include "administration.h"
#include "http.h"
#include "paytrace.h"

/* One v3 call, synchronous or in flight in the worker's loop. */
typedef struct PtV3Call PtV3Call;

/* A payment request: PayTrace e-mails the payer a link to its hosted page. */
typedef struct PtV3Invoice
{
	const char *transaction_type;	/* SALE, AUTHORIZATION, CREATE_CUSTOMER, SALE_AND_CUSTOMER */
	const char *invoice_number;
	const char *amount;			/* numeric text "612.00" */
	const char *email;
	const char *customer_label;
	TimestampTz expire_at;
} PtV3Invoice;

/* What an ACH transaction's status means [contract section 11]. */
typedef enum PtAchState
{
	PT_ACH_IN_PROGRESS,			/* accepted, on its way: collected */
	PT_ACH_SETTLED,
	PT_ACH_VOIDED,
	PT_ACH_REFUSED,				/* declined or failed: before acceptance, nothing happened */
	PT_ACH_RETURNED,			/* came back after it was accepted */
	PT_ACH_OTHER				/* a status freshpay does not know: nothing concluded */
} PtAchState;

/* An ACH transaction (debit or refund) as v3 describes it [P]. */
typedef struct PtAchTransaction
{
	int64		ach_id;
	char	   *status;			/* PayTrace's word: ACCEPTED, SETTLED, RETURNED, ... */
	PtAchState	state;
	Datum		amount;			/* numeric(12,2) */
	char	   *invoice_number; /* NULL when none */
	char	   *idempotency_key;	/* NULL when none */
	char	   *return_reason;	/* NULL when none */
	bool		has_settled_at;
	TimestampTz settled_at;
} PtAchTransaction;

extern void paytrace_v3_require(const Administration *admin, const char *what);
extern PtV3Call *paytrace_v3_invoice_call(const Administration *admin, const PtV3Invoice *invoice);
extern void paytrace_v3_prepare(const Administration *admin);
extern void paytrace_v3_send(PtV3Call *call, void *owner, int priority);
extern bool paytrace_v3_answered(PtV3Call *call, const HttpResponse *response, void *owner,
								 int priority);
extern char *paytrace_v3_invoice_of(PtV3Call *call, const HttpResponse *response, bool *lost,
									 char **why);

extern PtV3Call *paytrace_v3_ach_call(const Administration *admin, const PtRequest *request);
extern PtResult *paytrace_v3_money_of(PtV3Call *call, const HttpResponse *response);
extern PtV3Call *paytrace_v3_ach_get_call(const Administration *admin, int64 ach_id);
extern PtV3Call *paytrace_v3_ach_by_key_call(const Administration *admin, const char *key);
extern PtAchTransaction *paytrace_v3_ach_of(PtV3Call *call, const HttpResponse *response);
extern List *paytrace_v3_ach_list(const Administration *admin, DateADT start, DateADT end);

#endif							/* FRESHPAY_PAYTRACE_V3_H */
