/*-------------------------------------------------------------------------
 *
 * payments.h
 *	  The payments ledger (freshpay.payments and payment_history).
 *
 * Everything here runs in the caller's transaction, SPI connected.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_PAYMENTS_H
#define FRESHPAY_PAYMENTS_H

#include "datatype/timestamp.h"
#include "nodes/pg_list.h"

#include "paytrace.h"

/* Lookups of an unknown outcome: between 10 s and 15 min apart, growing with its age. */
#define LOOKUP_MIN_MS (10 * 1000L)
#define LOOKUP_MAX_MS (15 * 60 * 1000L)

/* An attempt as stored in freshpay.payments, with what resolving it needs. */
typedef struct Attempt
{
	int64		payment_id;
	char	   *administration;
	char	   *kind;
	char	   *status;
	char	   *amount;			/* numeric text */
	char	   *invoice_number;
	bool		has_invoice;
	int64		invoice_id;
	bool		has_transaction_id;
	int64		transaction_id;
	bool		has_parent;
	int64		parent_id;
	int64		parent_transaction_id;
	bool		has_response_code;	/* PayTrace's own word on it */
	char	   *idempotency_key;	/* API v3 ACH debit or refund; NULL otherwise */
	bool		ach_v3;			/* made through API v3 (or acts on a debit that was) */
	TimestampTz created_at;
} Attempt;

extern Attempt *payments_load(int64 payment_id, MemoryContext context);
extern bool payments_in_flight(const char *status);
extern void payments_history(int64 payment_id, const char *old_status, const char *new_status,
							 int response_code, const char *event, const char *message);
extern bool payments_record_outcome(int64 payment_id, const PtResult *result, const char *event);
extern PtResult *payments_result_from(const Attempt *a, const PtTransaction *t);
extern PtTransaction *payments_pick_outcome(const Attempt *a, List *candidates);
extern char payments_apply_paytrace(const char *administration, const PtTransaction *t);
extern bool payments_record_outside_void(const char *administration, int64 payment_id,
										 int64 transaction_id, const char *status_message);

#endif							/* FRESHPAY_PAYMENTS_H */
