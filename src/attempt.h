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

#include "http.h"
#include "mailbox.h"
#include "paytrace.h"

/* A money call in flight (the worker keeps many). */
typedef struct Pending Pending;

/* How a money call ended, for the job that asked for it. */
typedef struct AttemptEnd
{
	int64		job_id;			/* 0 for a mailbox call */
	int			job_attempts;
	PtOutcome	outcome;
	int			retry_after;	/* seconds, or -1 */
	char	   *error;			/* not processed, or an error: the job retries */
	int			sqlerrcode;
} AttemptEnd;

extern Pending *attempt_begin(int slot, const MoneyCall *call, int64 job_id, int job_attempts,
							  char **error, int *sqlerrcode);
extern AttemptEnd *attempt_finish(Pending *p, const HttpResponse *response);
extern TimestampTz attempt_resolve(int64 payment_id);
extern void attempt_recover(void);
extern TimestampTz attempt_collect_check(int64 invoice_id);
extern char attempt_apply_paytrace(const char *administration, const PtTransaction *t);

#endif							/* FRESHPAY_ATTEMPT_H */
