/*-------------------------------------------------------------------------
 *
 * statement.h
 *	  Statement collection: one PayTrace charge for several open invoices
 *	  of one customer, allocated invoice by invoice.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_STATEMENT_H
#define FRESHPAY_STATEMENT_H

#include "administration.h"
#include "freshportal.h"
#include "paytrace.h"
#include "plan.h"

/* One invoice of a statement, in CallPlan.items. */
typedef struct StatementItem
{
	int64		invoice_id;
	int64		freshportal_invoice_id;
	int64		freshportal_customer_id;
	char	   *number;
	char	   *amount;			/* what the statement collects of it (numeric text) */
	char	   *unregistered;	/* collected, not yet in FreshPortal */
	DateADT		invoice_date;
	FpCall	   *reread;			/* FreshPortal's invoice */
	PtQuery    *lookup;			/* what PayTrace holds under its number */
	List	   *found;
	bool		read;
	bool		looked;
	bool		left_out;		/* paid in FreshPortal meanwhile */
} StatementItem;

/* In the worker's transactions. */
extern void statement_plan(CallPlan *plan, const MoneyCall *call, MemoryContext context);
extern void statement_lock(CallPlan *plan, MemoryContext context);
extern void statement_allocate(const CallPlan *plan, int64 payment_id);

/* The READING state of its flow: no transaction open. */
extern void statement_send_reads(const Administration *admin, CallPlan *plan, void *owner, int priority);
extern bool statement_read(const Administration *admin, CallPlan *plan, const HttpResponse *response,
						   void *owner, int priority);
extern void statement_check_holdings(const Administration *admin, CallPlan *plan, MemoryContext context);

/* The statement customers whose day it is: their collect_statement jobs.  Own transaction. */
extern int64 statement_queue_due(void);
extern TimestampTz statement_job_check(int64 customer_id, int64 job_id);

#endif							/* FRESHPAY_STATEMENT_H */
