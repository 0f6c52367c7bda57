/*-------------------------------------------------------------------------
 *
 * paytrace_v3.h
 *	  PayTrace JSON API v3, beside v1: the only code that knows v3's paths,
 *	  headers and fields (contract section 11).
 *
 * v3 is used where v1 has no JSON call: payment requests.  An
 * administration without a PayTrace merchant id does not use it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_PAYTRACE_V3_H
#define FRESHPAY_PAYTRACE_V3_H

#include "datatype/timestamp.h"

#include "administration.h"
#include "http.h"

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

extern void paytrace_v3_require(const Administration *admin, const char *what);
extern PtV3Call *paytrace_v3_invoice_call(const Administration *admin, const PtV3Invoice *invoice);
extern void paytrace_v3_send(PtV3Call *call, void *owner, int priority);
extern bool paytrace_v3_answered(PtV3Call *call, const HttpResponse *response, void *owner,
								 int priority);
extern char *paytrace_v3_invoice_of(PtV3Call *call, const HttpResponse *response, bool *lost,
									 char **why);

#endif							/* FRESHPAY_PAYTRACE_V3_H */
