/*-------------------------------------------------------------------------
 *
 * jobs.h
 *	  freshpay.jobs, the worker's durable queue: collections, write-back to
 *	  FreshPortal, lookups of unknown outcomes.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_JOBS_H
#define FRESHPAY_JOBS_H

#include "datatype/timestamp.h"

typedef struct Job
{
	int64		id;
	char		kind[32];		/* collect_invoice, collect_statement, register_payment, ... */
	int64		payment_id;		/* 0 for collect_invoice and collect_statement */
	int64		invoice_id;		/* collect_invoice only */
	int64		customer_id;	/* collect_statement only */
	int			attempts;
} Job;

/* In the caller's transaction. */
extern void job_queue(const char *kind, int64 payment_id, TimestampTz run_at);
extern int64 job_queue_each(const char *kind, int col);
extern void job_finish(const char *kind, int64 payment_id);
extern bool job_claim_for(const char *kind, int64 payment_id, Job *job);
extern void job_record(const Job *job, bool done, TimestampTz next_run_at, const char *error,
					   bool permanent, int retry_after_s);

/* In transactions of their own. */
extern int	job_claim(Job *jobs, int max, const char *only_kind, const int64 *running, int nrunning);
extern void job_update(const Job *job, bool done, TimestampTz next_run_at, const char *error,
					   bool permanent, int retry_after_s);
extern void job_release_claims(void);
extern TimestampTz job_next_due(void);
extern void jobs_prune(void);

extern bool job_is_permanent(int sqlerrcode);

#endif							/* FRESHPAY_JOBS_H */
