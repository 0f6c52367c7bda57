/*-------------------------------------------------------------------------
 *
 * plan.c
 *	  The checks of a money call: against local data before anything is
 *	  sent, against FreshPortal's re-read invoice, and again under the
 *	  invoice's lock when the attempt is recorded.
 *
 * Every refusal is an ERROR in PostgreSQL's voice (SQLSTATE, detail,
 * hint) that reaches the caller as is.  Runs in the caller's transaction;
 * makes no remote call.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "money.h"
#include "plan.h"
#include "spi_txn.h"

/* PayTrace's longest invoice_id [G]; see README, "PayTrace assumptions". */
#define PT_INVOICE_ID_MAX 50

/* A payment of invoice i: its own, or a statement allocating it. */
#define PAYMENT_OF_INVOICE \
	"(p.invoice_id OPERATOR(pg_catalog.=) i.id OR p.id OPERATOR(pg_catalog.=) ANY (ARRAY(" \
	"  SELECT a.payment_id FROM freshpay.payment_allocations a WHERE a.invoice_id OPERATOR(pg_catalog.=) i.id)))"

/*
 * What a collection needs to know of an invoice (plan_collection).  Money
 * not yet in FreshPortal includes a captured statement's unregistered
 * allocations to the invoice.
 */
#define COLLECTION_SQL \
	"SELECT i.administration, i.freshportal_id, i.number, i.type, i.status, i.currency," \
	"       c.id, c.paytrace_customer_id, c.payment_method, c.code," \
	"       i.open_amount OPERATOR(pg_catalog.-) u.amount," \
	"       (SELECT pg_catalog.min(p.id) FROM freshpay.payments p WHERE " PAYMENT_OF_INVOICE \
	"           AND p.status OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'unknown']))," \
	"       a.id, a.amount, a.paytrace_transaction_id, u.amount, i.invoice_date," \
	"       (SELECT pg_catalog.min(p.id) FROM freshpay.payments p WHERE " PAYMENT_OF_INVOICE \
	"           AND p.status OPERATOR(pg_catalog.=) 'unknown')," \
	"       c.freshportal_id" \
	"  FROM freshpay.invoices i" \
	"  LEFT JOIN freshpay.customers c ON c.id OPERATOR(pg_catalog.=) i.customer_id" \
	/* Money freshpay collected that FreshPortal does not count yet. */ \
	"  CROSS JOIN LATERAL (SELECT COALESCE(pg_catalog.sum(p.amount OPERATOR(pg_catalog.-) p.refunded_amount), 0)" \
	"         OPERATOR(pg_catalog.+) COALESCE((SELECT pg_catalog.sum(a.amount) FROM freshpay.payment_allocations a" \
	"              JOIN freshpay.payments s ON s.id OPERATOR(pg_catalog.=) a.payment_id" \
	"             WHERE a.invoice_id OPERATOR(pg_catalog.=) i.id AND s.status OPERATOR(pg_catalog.=) 'captured'" \
	"               AND a.freshportal_payment_id IS NULL), 0) AS amount" \
	"        FROM freshpay.payments p WHERE p.invoice_id OPERATOR(pg_catalog.=) i.id" \
	"         AND p.kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture'])" \
	"         AND p.status OPERATOR(pg_catalog.=) 'captured' AND p.freshportal_payment_id IS NULL) u" \
	"  LEFT JOIN LATERAL (SELECT p.id, p.amount, p.paytrace_transaction_id FROM freshpay.payments p" \
	"        WHERE p.invoice_id OPERATOR(pg_catalog.=) i.id AND p.kind OPERATOR(pg_catalog.=) 'authorization'" \
	"          AND p.status OPERATOR(pg_catalog.=) 'authorized' ORDER BY p.id LIMIT 1) a ON true" \
	" WHERE i.id OPERATOR(pg_catalog.=) $1"

/*
 * Can this invoice number go to PayTrace as invoice_id and come back the
 * same in its exports?  Lookups match it byte for byte, so anything PayTrace
 * might trim, truncate or re-encode is refused before sending.
 */
bool
plan_invoice_number_sendable(const char *number)
{
	size_t		len = number ? strlen(number) : 0;

	if (len == 0 || len > PT_INVOICE_ID_MAX || number[0] == ' ' || number[len - 1] == ' ')
		return false;
	for (const char *c = number; *c; c++)
		if (*c < 0x20 || *c > 0x7e)
			return false;
	return true;
}

/*
 * Checks of a collection (capture or authorize) against local data.  Inside
 * a worker transaction; with lock, the invoice row is locked FOR UPDATE.
 * amount may be NULL (the open amount, or the open authorization's amount).
 */
typedef enum PlanMode
{
	PLAN_COLLECTION,			/* a capture or authorization */
	PLAN_REQUEST,				/* a payment request: no vault profile needed */
	PLAN_STATEMENT,				/* an invoice named for a statement */
	PLAN_STATEMENT_DEFAULT		/* an invoice a statement takes by default: paid is left out */
} PlanMode;

static void plan_invoice(CallPlan *plan, const MoneyCall *call, bool lock, PlanMode mode,
						 MemoryContext context);

void
plan_collection(CallPlan *plan, const MoneyCall *call, bool lock, MemoryContext context)
{
	plan_invoice(plan, call, lock, PLAN_COLLECTION, context);
}

/*
 * Checks of a payment request against local data: those of a collection,
 * except that the customer needs no vault profile (that is what the
 * request is for).  plan->amount is what is open.
 */
void
plan_request_checks(CallPlan *plan, const MoneyCall *call, MemoryContext context)
{
	plan_invoice(plan, call, false, PLAN_REQUEST, context);
}

/*
 * Checks of one invoice of a statement against local data: those of a
 * capture.  With skip_paid (the statement's default list), an invoice with
 * nothing left to collect is no error: plan->amount is NULL.
 */
void
plan_statement_item(CallPlan *plan, int64 invoice_id, bool lock, bool skip_paid, MemoryContext context)
{
	MoneyCall	call = {.op = MONEY_CAPTURE, .target_id = invoice_id};

	plan_invoice(plan, &call, lock, skip_paid ? PLAN_STATEMENT_DEFAULT : PLAN_STATEMENT, context);
}

static void
plan_invoice(CallPlan *plan, const MoneyCall *call, bool lock, PlanMode mode, MemoryContext context)
{
	bool		for_request = mode == PLAN_REQUEST;
	Oid			types[] = {INT8OID};
	Datum		values[] = {Int64GetDatum(call->target_id)};
	char	   *type,
			   *status,
			   *currency,
			   *available,
			   *auth_amount;
	int64		auth_id;

	if (fp_spi_run(lock ? COLLECTION_SQL " FOR UPDATE OF i" : COLLECTION_SQL,
				1, types, values, NULL, SPI_OK_SELECT) == 0)
		fp_refuse(ERRCODE_NO_DATA_FOUND, "invoice_id is freshpay.invoices.id; run freshpay_sync() to pull invoices.",
			  "invoice " INT64_FORMAT " does not exist", call->target_id);

	plan->op = call->op;
	plan->invoice_id = call->target_id;
	plan->administration = fp_spi_text(context, 1);
	fp_spi_int64(2, &plan->freshportal_invoice_id);
	plan->invoice_number = fp_spi_text(context, 3);
	type = fp_spi_text(context, 4);
	status = fp_spi_text(context, 5);
	currency = fp_spi_text(context, 6);
	fp_spi_int64(7, &plan->customer_id);
	plan->vault_id = fp_spi_text(context, 8);
	plan->payment_method = fp_spi_text(context, 9);
	available = fp_spi_text(context, 11);
	plan->unregistered = fp_spi_text(context, 16);
	fp_spi_int64(19, &plan->freshportal_customer_id);
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 17, &isnull);

		plan->invoice_date = isnull ? fp_date_of(GetCurrentTimestamp()) - 31 : DatumGetDateADT(d);
	}

	if (strcmp(type, "credit_note") == 0)
		fp_refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
			  "Credit notes are settled in FreshPortal, not collected.",
			  "invoice %s is a credit note", plan->invoice_number);
	if (strcmp(status, "concept") == 0)
		fp_refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
			  "Collect it once it has been issued in FreshPortal.",
			  "invoice %s is a concept invoice", plan->invoice_number);
	if (strcmp(currency, "USD") != 0)
		fp_refuse(ERRCODE_FEATURE_NOT_SUPPORTED,
			  "PayTrace collects US dollars only.",
			  "invoice %s is in %s", plan->invoice_number, currency);
	if (!plan_invoice_number_sendable(plan->invoice_number))
		fp_refuse(ERRCODE_INVALID_PARAMETER_VALUE,
			  "PayTrace's invoice_id takes 1 to 50 printable ASCII characters, and freshpay looks payments up by it; collect this invoice in PayTrace's Virtual Terminal.",
			  "invoice number of invoice " INT64_FORMAT " cannot be sent to PayTrace", call->target_id);
	if (fp_spi_text(context, 18) != NULL)
		fp_refuse(ERRCODE_OBJECT_IN_USE,
			  "freshpay keeps looking it up at PayTrace. If PayTrace's Virtual Terminal shows no transaction for the invoice, settle it with freshpay_resolve(payment_id, 'not_processed').",
			  "the outcome of payment %s of invoice %s is unknown", fp_spi_text(context, 18), plan->invoice_number);
	if (fp_spi_text(context, 12) != NULL)
		fp_refuse(ERRCODE_OBJECT_IN_USE,
			  "Wait for it to finish; freshpay.payments shows its status.",
			  "a collection of invoice %s is already in progress", plan->invoice_number);
	if ((strcmp(status, "paid") == 0 || strcmp(status, "credited") == 0 ||
		 money_compare(available, "0") <= 0) && mode == PLAN_STATEMENT_DEFAULT)
	{
		plan->amount = NULL;
		return;
	}
	if (strcmp(status, "paid") == 0 || strcmp(status, "credited") == 0 ||
		money_compare(available, "0") <= 0)
		fp_refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
			  "Nothing is left to collect.",
			  "invoice %s is already paid", plan->invoice_number);
	if (plan->vault_id == NULL && !for_request)
		fp_refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
			  "Link the customer to a PayTrace vault profile with freshpay_link_customer().",
			  "customer %s of invoice %s has no PayTrace vault profile",
			  fp_spi_text(context, 10) ? fp_spi_text(context, 10) : "(not synced)", plan->invoice_number);

	plan->amount = call->has_amount ? MemoryContextStrdup(context, call->amount) : available;
	if (money_compare(plan->amount, available) > 0)
		fp_refuse(ERRCODE_INVALID_PARAMETER_VALUE,
			  "Collect at most the open amount.",
			  "amount %s exceeds the open amount %s of invoice %s",
			  plan->amount, available, plan->invoice_number);

	if (for_request)
		return;
	plan->has_parent = fp_spi_int64(13, &auth_id);
	if (call->op == MONEY_AUTHORIZE)
	{
		if (strcmp(plan->payment_method, "ach") == 0)
			fp_refuse(ERRCODE_FEATURE_NOT_SUPPORTED,
				  "Collect ACH customers with freshpay_capture().",
				  "ACH payments cannot be authorized");
		if (plan->has_parent)
			fp_refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
				  "Capture it with freshpay_capture(), or void it first.",
				  "invoice %s already has an open authorization", plan->invoice_number);
		plan->kind = "authorization";
		plan->operation = PT_AUTHORIZE;
	}
	else if (plan->has_parent)
	{
		plan->parent_id = auth_id;
		auth_amount = fp_spi_text(context, 14);
		fp_spi_int64(15, &plan->parent_transaction_id);
		if (!call->has_amount && money_compare(auth_amount, plan->amount) < 0)
			plan->amount = auth_amount;
		if (money_compare(plan->amount, auth_amount) > 0)
			fp_refuse(ERRCODE_INVALID_PARAMETER_VALUE,
				  "Capture at most the authorized amount.",
				  "amount %s exceeds the authorized amount %s of invoice %s",
				  plan->amount, auth_amount, plan->invoice_number);
		plan->kind = "capture";
		plan->operation = PT_CAPTURE;
	}
	else if (strcmp(plan->payment_method, "ach") == 0)
	{
		plan->kind = "ach_sale";
		plan->operation = PT_ACH_SALE;
	}
	else
	{
		plan->kind = "sale";
		plan->operation = PT_SALE;
	}
}

/* Checks of a void or refund of payment target_id. */
static void
plan_reversal(CallPlan *plan, MoneyOp op, int64 target_id, const char *amount, MemoryContext context)
{
	Oid			types[] = {INT8OID};
	Datum		values[] = {Int64GetDatum(target_id)};
	char	   *kind,
			   *status,
			   *remaining;

	if (fp_spi_run("SELECT p.administration, p.kind, p.status, p.invoice_id, p.invoice_number,"
				"       p.paytrace_transaction_id, p.amount OPERATOR(pg_catalog.-) p.refunded_amount,"
				"       COALESCE(p.batch_number::text, p.settled_at::text), p.customer_id,"
				"       (SELECT pg_catalog.count(*) FROM freshpay.payments c WHERE c.parent_id OPERATOR(pg_catalog.=) p.id"
				"           AND c.status OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'unknown'])),"
				"       (SELECT pg_catalog.min(c.id) FROM freshpay.payments c WHERE c.parent_id OPERATOR(pg_catalog.=) p.id"
				"           AND c.kind OPERATOR(pg_catalog.=) 'capture'"
				"           AND c.status OPERATOR(pg_catalog.<>) ALL (ARRAY['failed'])),"
				"       p.idempotency_key IS NOT NULL"
				"  FROM freshpay.payments p WHERE p.id OPERATOR(pg_catalog.=) $1 FOR UPDATE",
				1, types, values, NULL, SPI_OK_SELECT) == 0)
		fp_refuse(ERRCODE_NO_DATA_FOUND, "payment_id is freshpay.payments.id.",
			  "payment " INT64_FORMAT " does not exist", target_id);

	plan->op = op;
	plan->administration = fp_spi_text(context, 1);
	kind = fp_spi_text(context, 2);
	status = fp_spi_text(context, 3);
	fp_spi_int64(4, &plan->invoice_id);
	plan->invoice_number = fp_spi_text(context, 5);
	plan->has_parent = true;
	plan->parent_id = target_id;
	fp_spi_int64(6, &plan->parent_transaction_id);
	remaining = fp_spi_text(context, 7);
	fp_spi_int64(9, &plan->customer_id);
	plan->parent_on_v3 = strcmp(fp_spi_text(context, 12), "t") == 0;

	if (strcmp(kind, "void") == 0 || strcmp(kind, "refund") == 0)
		fp_refuse(ERRCODE_WRONG_OBJECT_TYPE, "Void or refund the sale or capture it acted on.",
			  "payment " INT64_FORMAT " is a %s", target_id, kind);
	if (strcmp(fp_spi_text(context, 10), "0") != 0)
		fp_refuse(ERRCODE_OBJECT_IN_USE, "Wait for it to finish; freshpay.payments shows its status.",
			  "a void or refund of payment " INT64_FORMAT " is already in progress", target_id);

	/*
	 * PayTrace keeps the authorization's transaction id for its capture: a
	 * void or refund of a captured authorization would act on the captured
	 * money.  The capture is the row to act on.
	 */
	if (strcmp(kind, "authorization") == 0 && fp_spi_text(context, 11) != NULL)
		fp_refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
			  psprintf("Void or refund its capture, payment %s, instead; PayTrace releases the uncaptured rest of the authorization by itself.",
					   fp_spi_text(context, 11)),
			  "authorization " INT64_FORMAT " has been captured", target_id);

	if (op == MONEY_VOID)
	{
		if (strcmp(status, "captured") != 0 && strcmp(status, "authorized") != 0)
			fp_refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, NULL,
				  "payment " INT64_FORMAT " is %s and cannot be voided", target_id, status);
		if (fp_spi_text(context, 8) != NULL)
			fp_refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
				  "Refund it with freshpay_refund() instead.",
				  "payment " INT64_FORMAT " is settled and cannot be voided", target_id);
		plan->kind = "void";
		plan->operation = strcmp(kind, "ach_sale") == 0 ? PT_ACH_VOID : PT_VOID;
		plan->amount = remaining;
	}
	else
	{
		if (strcmp(status, "captured") != 0)
			fp_refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, NULL,
				  "payment " INT64_FORMAT " is %s and cannot be refunded", target_id, status);
		plan->amount = amount ? MemoryContextStrdup(context, amount) : remaining;
		if (money_compare(plan->amount, remaining) > 0)
			fp_refuse(ERRCODE_INVALID_PARAMETER_VALUE,
				  "Refund at most what was captured and not yet refunded.",
				  "amount %s exceeds the refundable amount %s of payment " INT64_FORMAT,
				  plan->amount, remaining, target_id);
		plan->kind = "refund";
		plan->operation = strcmp(kind, "ach_sale") == 0 ? PT_ACH_REFUND : PT_REFUND;
	}
}

/* Plan a call: its checks against local data.  In the caller's transaction. */
void
plan_call(CallPlan *plan, const MoneyCall *call, MemoryContext context)
{
	if (call->op == MONEY_CAPTURE || call->op == MONEY_AUTHORIZE)
		plan_collection(plan, call, false, context);
	else if (call->op == MONEY_REVERSE)
	{
		/* The invoice's collected sale or capture: void or refund it. */
		Oid			types[] = {INT8OID};
		Datum		values[] = {Int64GetDatum(call->target_id)};
		int64		target;

		if (fp_spi_run("SELECT 1 FROM freshpay.invoices WHERE id OPERATOR(pg_catalog.=) $1",
					1, types, values, NULL, SPI_OK_SELECT) == 0)
			fp_refuse(ERRCODE_NO_DATA_FOUND, "invoice_id is freshpay.invoices.id.",
				  "invoice " INT64_FORMAT " does not exist", call->target_id);
		if (fp_spi_run("SELECT id, batch_number IS NOT NULL FROM freshpay.payments"
					" WHERE invoice_id OPERATOR(pg_catalog.=) $1"
					"   AND kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'capture', 'ach_sale'])"
					"   AND status OPERATOR(pg_catalog.=) 'captured'"
					" ORDER BY id DESC LIMIT 1",
					1, types, values, NULL, SPI_OK_SELECT) == 0)
		{
			/* Collected in a statement: the statement is what can be voided or refunded. */
			if (fp_spi_run("SELECT p.id, p.invoice_number FROM freshpay.payment_allocations a"
						   "  JOIN freshpay.payments p ON p.id OPERATOR(pg_catalog.=) a.payment_id"
						   " WHERE a.invoice_id OPERATOR(pg_catalog.=) $1 AND a.amount OPERATOR(pg_catalog.>) 0"
						   "   AND p.status OPERATOR(pg_catalog.=) 'captured'"
						   " ORDER BY p.id DESC LIMIT 1",
						   1, types, values, NULL, SPI_OK_SELECT) == 1)
				fp_refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
						  psprintf("Void or refund the statement, payment %s; a partial refund comes off its newest invoices first.",
								   fp_spi_text(context, 1)),
						  "invoice " INT64_FORMAT " was collected in statement %s", call->target_id,
						  fp_spi_text(context, 2));
			fp_refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, "Only collected invoices can be reversed.",
				  "invoice " INT64_FORMAT " has no collected payment to reverse", call->target_id);
		}
		fp_spi_int64(1, &target);
		/* Known settled: refund; otherwise void, unless PayTrace says settled. */
		plan_reversal(plan, strcmp(fp_spi_text(context, 2), "t") == 0 ? MONEY_REFUND : MONEY_VOID,
					  target, NULL, context);
		plan->op = MONEY_REVERSE;
	}
	else
		plan_reversal(plan, call->op, call->target_id,
					  call->has_amount ? call->amount : NULL, context);
}

/*
 * FreshPortal's current view of the invoice, before anything is charged: it
 * must still be an issued USD invoice of the same customer with money open.
 * What freshpay collected and FreshPortal does not count yet is deducted;
 * a call without an amount collects what is left of that.
 */
void
plan_check_invoice(CallPlan *plan, const FpInvoice *remote, bool has_amount)
{
	char	   *open = money_text(remote->open_amount);
	char	   *left;

	if (remote->id != plan->freshportal_invoice_id)
		fp_refuse(ERRCODE_DATA_CORRUPTED, NULL,
			  "FreshPortal answered invoice " INT64_FORMAT " for invoice %s (FreshPortal id " INT64_FORMAT ")",
			  remote->id, plan->invoice_number, plan->freshportal_invoice_id);
	if (strcmp(remote->type, "invoice") != 0 || strcmp(remote->status, "concept") == 0 ||
		strcmp(remote->currency, "USD") != 0 ||
		(plan->freshportal_customer_id != 0 && remote->customer_id != plan->freshportal_customer_id))
		fp_refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
			  "Run freshpay_sync() to see FreshPortal's current invoice, then collect it if it still applies.",
			  "invoice %s changed in FreshPortal: it is now a %s %s in %s of customer " INT64_FORMAT,
			  plan->invoice_number, remote->status, remote->type, remote->currency, remote->customer_id);
	if (strcmp(remote->status, "paid") == 0 || strcmp(remote->status, "credited") == 0 ||
		money_compare(open, "0") <= 0)
		fp_refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
			  "It was paid in FreshPortal meanwhile (by bank transfer, say); run freshpay_sync() to see it.",
			  "invoice %s is already paid in FreshPortal", plan->invoice_number);

	left = money_text(DirectFunctionCall2(numeric_sub, remote->open_amount,
											money_numeric(plan->unregistered ? plan->unregistered : "0")));
	if (money_compare(left, "0") <= 0)
		fp_refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
			  "Nothing is left to collect; freshpay.payments shows what was collected.",
			  "invoice %s is already paid", plan->invoice_number);
	if (!has_amount && money_compare(plan->amount, left) > 0)
		plan->amount = left;
	if (money_compare(plan->amount, left) > 0)
		fp_refuse(ERRCODE_INVALID_PARAMETER_VALUE,
			  "Run freshpay_sync() and collect at most the open amount.",
			  "amount %s exceeds FreshPortal's current open amount %s of invoice %s",
			  plan->amount, left, plan->invoice_number);
}

PtRequest
plan_request(const CallPlan *plan)
{
	PtRequest	request = {0};

	request.operation = plan->operation;
	request.customer_id = plan->vault_id;
	request.transaction_id = plan->parent_transaction_id;
	request.amount = plan->operation == PT_VOID || plan->operation == PT_ACH_VOID ? NULL : plan->amount;
	request.invoice_number = plan->invoice_number;
	return request;
}
