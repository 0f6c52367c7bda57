/*-------------------------------------------------------------------------
 *
 * plan.h
 *	  The checks of a money call, and what they found.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_PLAN_H
#define FRESHPAY_PLAN_H

#include "utils/date.h"

#include "freshportal.h"
#include "mailbox.h"
#include "paytrace.h"

/* What the checks of a money call found. */
typedef struct CallPlan
{
	MoneyOp		op;
	char	   *administration;
	int64		invoice_id;
	int64		freshportal_invoice_id;
	char	   *invoice_number;
	int64		customer_id;
	char	   *vault_id;
	char	   *payment_method;
	char	   *kind;			/* of the payment row to insert */
	char	   *amount;			/* numeric text */
	char	   *unregistered;	/* collected, not yet in FreshPortal (numeric text) */
	int64		freshportal_customer_id;
	DateADT		invoice_date;
	bool		has_parent;
	int64		parent_id;
	int64		parent_transaction_id;
	bool		parent_on_v3;	/* the ACH debit acted on was made through API v3 */
	PtOperation operation;
	/* A statement (MONEY_STATEMENT): its invoices, StatementItem (statement.h) */
	List	   *items;
	char	   *customer_code;
} CallPlan;

extern void plan_call(CallPlan *plan, const MoneyCall *call, MemoryContext context);
extern void plan_collection(CallPlan *plan, const MoneyCall *call, bool lock, MemoryContext context);
extern void plan_request_checks(CallPlan *plan, const MoneyCall *call, MemoryContext context);
extern bool plan_invoice_number_sendable(const char *number);
extern void plan_statement_item(CallPlan *plan, int64 invoice_id, bool lock, bool skip_paid,
								MemoryContext context);
extern void plan_check_invoice(CallPlan *plan, const FpInvoice *remote, bool has_amount);
extern PtRequest plan_request(const CallPlan *plan);

#endif							/* FRESHPAY_PLAN_H */
