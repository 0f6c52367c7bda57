/*-------------------------------------------------------------------------
 *
 * attempt.c
 *	  The durable attempt protocol of the money calls.
 *
 * Every money call runs in the background worker as
 *
 *	  plan       a read-only transaction checks the call against local data
 *	  re-read    GET the invoice from FreshPortal (no transaction open)
 *	  record     a transaction locks the invoice, checks again, inserts the
 *	             payment as 'pending' and queues a resolve job; COMMIT
 *	  send       the PayTrace request (no transaction open)
 *	  outcome    a transaction records the answer and its consequences
 *	             (invoice amounts, parent statuses, write-back jobs); COMMIT
 *
 * so the intent is durable before anything is sent, and nothing the caller
 * does to its own transaction can erase it.  If the worker dies after
 * "record", the queued resolve job and the restart pass (attempt_recover)
 * look the attempt up at PayTrace before anything else is sent.  A lookup
 * that finds nothing is conclusive only once freshpay.request_timeout (plus
 * a grace period) has passed since the attempt was recorded: until then the
 * request could still be in process at PayTrace, and it stays 'unknown'.
 * An attempt is never sent twice.
 *
 * The database backs this up: a partial unique index allows one attempt in
 * flight per invoice and per parent transaction.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "jsonconv.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "administration.h"
#include "attempt.h"
#include "freshportal.h"
#include "paytrace.h"
#include "settings.h"
#include "worker.h"

/* After freshpay.request_timeout, how long a lost request may still be in process. */
#define RESOLVE_GRACE_MS (5 * 1000L)

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
	TimestampTz created_at;
} Attempt;

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
	bool		has_parent;
	int64		parent_id;
	int64		parent_transaction_id;
	PtOperation operation;
} CallPlan;

static void
refuse(int sqlerrcode, const char *hint, const char *fmt,...) pg_attribute_printf(3, 4);

/* A refusal of the call, in PostgreSQL's voice; the caller gets it as is. */
static void
refuse(int sqlerrcode, const char *hint, const char *fmt,...)
{
	char		message[512];
	va_list		args;

	va_start(args, fmt);
	vsnprintf(message, sizeof(message), fmt, args);
	va_end(args);
	ereport(ERROR,
			(errcode(sqlerrcode),
			 errmsg_internal("%s", message),
			 hint ? errhint("%s", hint) : 0));
}

static Datum
numeric_of(const char *text)
{
	return DirectFunctionCall3(numeric_in, CStringGetDatum(text),
							   ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
}

static int
numeric_compare(const char *a, const char *b)
{
	return DatumGetInt32(DirectFunctionCall2(numeric_cmp, numeric_of(a), numeric_of(b)));
}

static char *
numeric_text(Datum value)
{
	return DatumGetCString(DirectFunctionCall1(numeric_out, value));
}

static void
history(int64 payment_id, const char *old_status, const char *new_status,
		int response_code, const char *event, const char *message)
{
	Oid			types[] = {INT8OID, TEXTOID, TEXTOID, INT4OID, TEXTOID, TEXTOID};
	Datum		values[] = {
		Int64GetDatum(payment_id),
		old_status ? CStringGetTextDatum(old_status) : (Datum) 0,
		CStringGetTextDatum(new_status),
		Int32GetDatum(response_code),
		CStringGetTextDatum(event),
		message ? CStringGetTextDatum(message) : (Datum) 0
	};
	char		nulls[] = {' ', old_status ? ' ' : 'n', ' ', response_code ? ' ' : 'n', ' ',
	message ? ' ' : 'n'};

	spi_run("INSERT INTO freshpay.payment_history"
			" (payment_id, old_status, new_status, response_code, event, message)"
			" VALUES ($1, $2, $3, $4, $5, $6)",
			6, types, values, nulls, SPI_OK_INSERT);
}

/* Load a payment, locked, into context.  Inside a worker transaction. */
static Attempt *
attempt_load(int64 payment_id, MemoryContext context)
{
	Oid			types[] = {INT8OID};
	Datum		values[] = {Int64GetDatum(payment_id)};
	Attempt    *a = MemoryContextAllocZero(context, sizeof(Attempt));
	bool		isnull;

	if (spi_run("SELECT p.administration, p.kind, p.status, p.amount, p.invoice_number,"
				"       p.invoice_id, p.paytrace_transaction_id, p.parent_id,"
				"       parent.paytrace_transaction_id,"
				"       p.created_at"
				"  FROM freshpay.payments p"
				"  LEFT JOIN freshpay.payments parent ON parent.id OPERATOR(pg_catalog.=) p.parent_id"
				" WHERE p.id OPERATOR(pg_catalog.=) $1"
				"   FOR UPDATE OF p",
				1, types, values, NULL, SPI_OK_SELECT) == 0)
		refuse(ERRCODE_NO_DATA_FOUND, "payment_id is freshpay.payments.id.",
			  "payment " INT64_FORMAT " does not exist", payment_id);
	a->payment_id = payment_id;
	a->administration = spi_text(context, 1);
	a->kind = spi_text(context, 2);
	a->status = spi_text(context, 3);
	a->amount = spi_text(context, 4);
	a->invoice_number = spi_text(context, 5);
	a->has_invoice = spi_int64(6, &a->invoice_id);
	a->has_transaction_id = spi_int64(7, &a->transaction_id);
	a->has_parent = spi_int64(8, &a->parent_id);
	spi_int64(9, &a->parent_transaction_id);
	a->created_at = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0],
													  SPI_tuptable->tupdesc, 10, &isnull));
	return a;
}

static bool
is_in_flight(const char *status)
{
	return strcmp(status, "pending") == 0 || strcmp(status, "unknown") == 0;
}

/* Add delta to what the invoice has collected (negative: give it back). */
static void
invoice_collected(int64 invoice_id, const char *delta)
{
	Oid			types[] = {INT8OID, NUMERICOID};
	Datum		values[] = {Int64GetDatum(invoice_id), numeric_of(delta)};

	spi_run("UPDATE freshpay.invoices"
			"   SET amount_paid = amount_paid OPERATOR(pg_catalog.+) $2,"
			"       open_amount = open_amount OPERATOR(pg_catalog.-) $2,"
			"       status = CASE"
			"         WHEN open_amount OPERATOR(pg_catalog.-) $2 OPERATOR(pg_catalog.<=) 0 THEN 'paid'"
			"         WHEN amount_paid OPERATOR(pg_catalog.+) $2 OPERATOR(pg_catalog.>) 0 THEN 'partially_paid'"
			"         ELSE 'open' END"
			" WHERE id OPERATOR(pg_catalog.=) $1",
			2, types, values, NULL, SPI_OK_UPDATE);
}

static void
set_parent_status(int64 parent_id, const char *status)
{
	Oid			types[] = {INT8OID, TEXTOID};
	Datum		values[] = {Int64GetDatum(parent_id), CStringGetTextDatum(status)};
	char		old_status[32] = "";

	if (spi_run("SELECT status FROM freshpay.payments WHERE id OPERATOR(pg_catalog.=) $1",
				1, types, values, NULL, SPI_OK_SELECT) == 1)
		strlcpy(old_status, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1),
				sizeof(old_status));
	spi_run("UPDATE freshpay.payments SET status = $2, updated_at = pg_catalog.now()"
			" WHERE id OPERATOR(pg_catalog.=) $1",
			2, types, values, NULL, SPI_OK_UPDATE);
	history(parent_id, old_status, status, 0, "followed", "a capture, void or refund of it succeeded");
}

/* The consequences of a money call that happened. */
static void
apply_success(const Attempt *a)
{
	Oid			types[] = {INT8OID, NUMERICOID};

	if (strcmp(a->kind, "sale") == 0 || strcmp(a->kind, "ach_sale") == 0 ||
		strcmp(a->kind, "capture") == 0)
	{
		if (a->has_invoice)
			invoice_collected(a->invoice_id, a->amount);
		if (strcmp(a->kind, "capture") == 0)
			set_parent_status(a->parent_id, "captured");
		job_queue("register_payment", a->payment_id, 0);
	}
	else if (strcmp(a->kind, "void") == 0)
	{
		Datum		values[] = {Int64GetDatum(a->parent_id), (Datum) 0};
		char	   *parent_kind;
		char	   *collected;

		spi_run("SELECT kind, amount OPERATOR(pg_catalog.-) refunded_amount FROM freshpay.payments"
				" WHERE id OPERATOR(pg_catalog.=) $1", 1, types, values, NULL, SPI_OK_SELECT);
		parent_kind = spi_text(CurrentMemoryContext, 1);
		collected = spi_text(CurrentMemoryContext, 2);
		set_parent_status(a->parent_id, "voided");
		if (strcmp(parent_kind, "authorization") != 0)
		{
			if (a->has_invoice)
				invoice_collected(a->invoice_id, psprintf("-%s", collected));
			job_queue("reverse_payment", a->payment_id, 0);
		}
	}
	else if (strcmp(a->kind, "refund") == 0)
	{
		Datum		values[] = {Int64GetDatum(a->parent_id), numeric_of(a->amount)};

		spi_run("UPDATE freshpay.payments"
				"   SET refunded_amount = refunded_amount OPERATOR(pg_catalog.+) $2,"
				"       updated_at = pg_catalog.now()"
				" WHERE id OPERATOR(pg_catalog.=) $1",
				2, types, values, NULL, SPI_OK_UPDATE);
		if (spi_run("SELECT 1 FROM freshpay.payments WHERE id OPERATOR(pg_catalog.=) $1"
					" AND refunded_amount OPERATOR(pg_catalog.=) amount",
					1, types, values, NULL, SPI_OK_SELECT) == 1)
			set_parent_status(a->parent_id, "refunded");
		if (a->has_invoice)
			invoice_collected(a->invoice_id, psprintf("-%s", a->amount));
		job_queue("reverse_payment", a->payment_id, 0);
	}
}

static const char *
success_status(const char *kind)
{
	if (strcmp(kind, "authorization") == 0)
		return "authorized";
	if (strcmp(kind, "void") == 0)
		return "voided";
	if (strcmp(kind, "refund") == 0)
		return "refunded";
	return "captured";
}

/*
 * Record what became of an attempt, once.  Inside a worker transaction.
 * Returns false if the attempt had already been settled (by a lookup that
 * raced the answer, say).
 */
static bool
record_outcome(int64 payment_id, const PtResult *result, const char *event)
{
	Attempt    *a = attempt_load(payment_id, CurrentMemoryContext);
	const char *status;
	bool		has_id = result->has_transaction_id;
	int64		transaction_id = result->transaction_id;
	Oid			types[] = {INT8OID, TEXTOID, INT8OID, INT4OID, TEXTOID, TEXTOID};
	Datum		values[6];
	char		nulls[6];

	if (!is_in_flight(a->status))
		return false;

	switch (result->outcome)
	{
		case PT_APPROVED:
			status = success_status(a->kind);
			/* A capture or void answers with the id of the transaction it acted on. */
			if (!has_id && a->has_parent)
			{
				has_id = true;
				transaction_id = a->parent_transaction_id;
			}
			break;
		case PT_UNKNOWN:
			status = "unknown";
			break;
		default:
			status = "failed";
			break;
	}

	values[0] = Int64GetDatum(payment_id);
	values[1] = CStringGetTextDatum(status);
	values[2] = Int64GetDatum(transaction_id);
	values[3] = Int32GetDatum(result->response_code);
	values[4] = result->approval_code ? CStringGetTextDatum(result->approval_code) : (Datum) 0;
	values[5] = result->message ? CStringGetTextDatum(result->message) : (Datum) 0;
	nulls[0] = nulls[1] = ' ';
	nulls[2] = has_id ? ' ' : 'n';
	nulls[3] = result->response_code ? ' ' : 'n';
	nulls[4] = result->approval_code ? ' ' : 'n';
	nulls[5] = result->message ? ' ' : 'n';
	spi_run("UPDATE freshpay.payments"
			"   SET status = $2,"
			"       paytrace_transaction_id = COALESCE($3, paytrace_transaction_id),"
			"       response_code = COALESCE($4, response_code),"
			"       approval_code = COALESCE($5, approval_code),"
			"       message = COALESCE($6, message),"
			"       updated_at = pg_catalog.now()"
			" WHERE id OPERATOR(pg_catalog.=) $1",
			6, types, values, nulls, SPI_OK_UPDATE);
	history(payment_id, a->status, status, result->response_code, event, result->message);

	if (result->outcome == PT_APPROVED)
		apply_success(a);
	if (result->outcome == PT_UNKNOWN)
		job_queue("resolve_payment", payment_id, 0);
	else
		job_finish("resolve_payment", payment_id);
	return true;
}

/*
 * Checks of a collection (capture or authorize) against local data.  Inside
 * a worker transaction; with lock, the invoice row is locked FOR UPDATE.
 * amount may be NULL (the open amount, or the open authorization's amount).
 */
static void
plan_collection(CallPlan *plan, const MoneyCall *call, bool lock, MemoryContext context)
{
	Oid			types[] = {INT8OID};
	Datum		values[] = {Int64GetDatum(call->target_id)};
	char	   *type,
			   *status,
			   *currency,
			   *available,
			   *auth_amount;
	int64		auth_id;

	if (spi_run(psprintf(
					"SELECT i.administration, i.freshportal_id, i.number, i.type, i.status, i.currency,"
					"       c.id, c.paytrace_customer_id, c.payment_method, c.code,"
					"       i.open_amount OPERATOR(pg_catalog.-) COALESCE((SELECT pg_catalog.sum(p.amount OPERATOR(pg_catalog.-) p.refunded_amount)"
					"          FROM freshpay.payments p WHERE p.invoice_id OPERATOR(pg_catalog.=) i.id"
					"           AND p.status OPERATOR(pg_catalog.=) 'captured' AND p.freshportal_payment_id IS NULL), 0),"
					"       (SELECT pg_catalog.count(*) FROM freshpay.payments p WHERE p.invoice_id OPERATOR(pg_catalog.=) i.id"
					"           AND p.status OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'unknown'])),"
					"       a.id, a.amount, a.paytrace_transaction_id"
					"  FROM freshpay.invoices i"
					"  LEFT JOIN freshpay.customers c ON c.id OPERATOR(pg_catalog.=) i.customer_id"
					"  LEFT JOIN LATERAL (SELECT p.id, p.amount, p.paytrace_transaction_id FROM freshpay.payments p"
					"        WHERE p.invoice_id OPERATOR(pg_catalog.=) i.id AND p.kind OPERATOR(pg_catalog.=) 'authorization'"
					"          AND p.status OPERATOR(pg_catalog.=) 'authorized' ORDER BY p.id LIMIT 1) a ON true"
					" WHERE i.id OPERATOR(pg_catalog.=) $1 %s",
					lock ? "FOR UPDATE OF i" : ""),
				1, types, values, NULL, SPI_OK_SELECT) == 0)
		refuse(ERRCODE_NO_DATA_FOUND, "invoice_id is freshpay.invoices.id; run freshpay_sync() to pull invoices.",
			  "invoice " INT64_FORMAT " does not exist", call->target_id);

	plan->op = call->op;
	plan->invoice_id = call->target_id;
	plan->administration = spi_text(context, 1);
	spi_int64(2, &plan->freshportal_invoice_id);
	plan->invoice_number = spi_text(context, 3);
	type = spi_text(context, 4);
	status = spi_text(context, 5);
	currency = spi_text(context, 6);
	spi_int64(7, &plan->customer_id);
	plan->vault_id = spi_text(context, 8);
	plan->payment_method = spi_text(context, 9);
	available = spi_text(context, 11);

	if (strcmp(type, "credit_note") == 0)
		refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
			  "Credit notes are settled in FreshPortal, not collected.",
			  "invoice %s is a credit note", plan->invoice_number);
	if (strcmp(status, "concept") == 0)
		refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
			  "Collect it once it has been issued in FreshPortal.",
			  "invoice %s is a concept invoice", plan->invoice_number);
	if (strcmp(currency, "USD") != 0)
		refuse(ERRCODE_FEATURE_NOT_SUPPORTED,
			  "PayTrace collects US dollars only.",
			  "invoice %s is in %s", plan->invoice_number, currency);
	if (strcmp(spi_text(context, 12), "0") != 0)
		refuse(ERRCODE_OBJECT_IN_USE,
			  "Wait for it to finish; freshpay.payments shows its status.",
			  "a collection of invoice %s is already in progress", plan->invoice_number);
	if (strcmp(status, "paid") == 0 || strcmp(status, "credited") == 0 ||
		numeric_compare(available, "0") <= 0)
		refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
			  "Nothing is left to collect.",
			  "invoice %s is already paid", plan->invoice_number);
	if (plan->vault_id == NULL)
		refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
			  "Link the customer to a PayTrace vault profile with freshpay_link_customer().",
			  "customer %s of invoice %s has no PayTrace vault profile",
			  spi_text(context, 10) ? spi_text(context, 10) : "(not synced)", plan->invoice_number);

	plan->amount = call->has_amount ? MemoryContextStrdup(context, call->amount) : available;
	if (numeric_compare(plan->amount, available) > 0)
		refuse(ERRCODE_INVALID_PARAMETER_VALUE,
			  "Collect at most the open amount.",
			  "amount %s exceeds the open amount %s of invoice %s",
			  plan->amount, available, plan->invoice_number);

	plan->has_parent = spi_int64(13, &auth_id);
	if (call->op == MONEY_AUTHORIZE)
	{
		if (strcmp(plan->payment_method, "ach") == 0)
			refuse(ERRCODE_FEATURE_NOT_SUPPORTED,
				  "Collect ACH customers with freshpay_capture().",
				  "ACH payments cannot be authorized");
		if (plan->has_parent)
			refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
				  "Capture it with freshpay_capture(), or void it first.",
				  "invoice %s already has an open authorization", plan->invoice_number);
		plan->kind = "authorization";
		plan->operation = PT_AUTHORIZE;
	}
	else if (plan->has_parent)
	{
		plan->parent_id = auth_id;
		auth_amount = spi_text(context, 14);
		spi_int64(15, &plan->parent_transaction_id);
		if (!call->has_amount && numeric_compare(auth_amount, plan->amount) < 0)
			plan->amount = auth_amount;
		if (numeric_compare(plan->amount, auth_amount) > 0)
			refuse(ERRCODE_INVALID_PARAMETER_VALUE,
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

	if (spi_run("SELECT p.administration, p.kind, p.status, p.invoice_id, p.invoice_number,"
				"       p.paytrace_transaction_id, p.amount OPERATOR(pg_catalog.-) p.refunded_amount,"
				"       p.batch_number, p.customer_id,"
				"       (SELECT pg_catalog.count(*) FROM freshpay.payments c WHERE c.parent_id OPERATOR(pg_catalog.=) p.id"
				"           AND c.status OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'unknown']))"
				"  FROM freshpay.payments p WHERE p.id OPERATOR(pg_catalog.=) $1 FOR UPDATE",
				1, types, values, NULL, SPI_OK_SELECT) == 0)
		refuse(ERRCODE_NO_DATA_FOUND, "payment_id is freshpay.payments.id.",
			  "payment " INT64_FORMAT " does not exist", target_id);

	plan->op = op;
	plan->administration = spi_text(context, 1);
	kind = spi_text(context, 2);
	status = spi_text(context, 3);
	spi_int64(4, &plan->invoice_id);
	plan->invoice_number = spi_text(context, 5);
	plan->has_parent = true;
	plan->parent_id = target_id;
	spi_int64(6, &plan->parent_transaction_id);
	remaining = spi_text(context, 7);
	spi_int64(9, &plan->customer_id);

	if (strcmp(kind, "void") == 0 || strcmp(kind, "refund") == 0)
		refuse(ERRCODE_WRONG_OBJECT_TYPE, "Void or refund the sale or capture it acted on.",
			  "payment " INT64_FORMAT " is a %s", target_id, kind);
	if (strcmp(kind, "ach_sale") == 0)
		refuse(ERRCODE_FEATURE_NOT_SUPPORTED,
			  "Void or refund ACH payments in PayTrace's Virtual Terminal; the next sync picks the change up.",
			  "voids and refunds of ACH payments are not supported");
	if (strcmp(spi_text(context, 10), "0") != 0)
		refuse(ERRCODE_OBJECT_IN_USE, "Wait for it to finish; freshpay.payments shows its status.",
			  "a void or refund of payment " INT64_FORMAT " is already in progress", target_id);

	if (op == MONEY_VOID)
	{
		if (strcmp(status, "captured") != 0 && strcmp(status, "authorized") != 0)
			refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, NULL,
				  "payment " INT64_FORMAT " is %s and cannot be voided", target_id, status);
		if (spi_text(context, 8) != NULL)
			refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
				  "Refund it with freshpay_refund() instead.",
				  "payment " INT64_FORMAT " is settled and cannot be voided", target_id);
		plan->kind = "void";
		plan->operation = PT_VOID;
		plan->amount = remaining;
	}
	else
	{
		if (strcmp(status, "captured") != 0)
			refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, NULL,
				  "payment " INT64_FORMAT " is %s and cannot be refunded", target_id, status);
		plan->amount = amount ? MemoryContextStrdup(context, amount) : remaining;
		if (numeric_compare(plan->amount, remaining) > 0)
			refuse(ERRCODE_INVALID_PARAMETER_VALUE,
				  "Refund at most what was captured and not yet refunded.",
				  "amount %s exceeds the refundable amount %s of payment " INT64_FORMAT,
				  plan->amount, remaining, target_id);
		plan->kind = "refund";
		plan->operation = PT_REFUND;
	}
}

/* Insert the attempt as 'pending' and queue its safety net.  Returns its id. */
static int64
record_attempt(const CallPlan *plan, const char *requested_by)
{
	Oid			types[] = {TEXTOID, INT8OID, INT8OID, TEXTOID, INT8OID, NUMERICOID, TEXTOID, TEXTOID};
	Datum		values[] = {
		CStringGetTextDatum(plan->administration),
		Int64GetDatum(plan->invoice_id),
		Int64GetDatum(plan->customer_id),
		CStringGetTextDatum(plan->kind),
		Int64GetDatum(plan->parent_id),
		numeric_of(plan->amount),
		CStringGetTextDatum(plan->invoice_number),
		CStringGetTextDatum(requested_by)
	};
	char		nulls[] = {' ', plan->invoice_id ? ' ' : 'n', plan->customer_id ? ' ' : 'n', ' ',
	plan->has_parent ? ' ' : 'n', ' ', ' ', ' '};
	int64		payment_id;

	spi_run("INSERT INTO freshpay.payments"
			" (administration, invoice_id, customer_id, kind, parent_id, amount, invoice_number,"
			"  requested_by, status)"
			" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending') RETURNING id",
			8, types, values, nulls, SPI_OK_INSERT_RETURNING);
	spi_int64(1, &payment_id);
	history(payment_id, NULL, "pending", 0, "recorded",
			psprintf("%s of %s requested by %s", plan->kind, plan->amount, requested_by));
	/* If the worker dies from here on, this job looks the attempt up. */
	job_queue("resolve_payment", payment_id,
			  TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										  freshpay_request_timeout + RESOLVE_GRACE_MS));
	return payment_id;
}

/* FreshPortal's current view of the invoice, before anything is charged. */
static void
reread_invoice(const Administration *admin, CallPlan *plan)
{
	FpInvoice  *remote = freshportal_get_invoice(admin, plan->freshportal_invoice_id);
	char	   *open = numeric_text(remote->open_amount);

	if (strcmp(remote->status, "paid") == 0 || strcmp(remote->status, "credited") == 0 ||
		numeric_compare(open, "0") <= 0)
		refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
			  "It was paid in FreshPortal meanwhile (by bank transfer, say); run freshpay_sync() to see it.",
			  "invoice %s is already paid in FreshPortal", plan->invoice_number);
	if (numeric_compare(plan->amount, open) > 0)
		refuse(ERRCODE_INVALID_PARAMETER_VALUE,
			  "Run freshpay_sync() and collect at most the open amount.",
			  "amount %s exceeds FreshPortal's current open amount %s of invoice %s",
			  plan->amount, open, plan->invoice_number);
}

static PtRequest
request_of(const CallPlan *plan)
{
	PtRequest	request = {0};

	request.operation = plan->operation;
	request.customer_id = plan->vault_id;
	request.transaction_id = plan->parent_transaction_id;
	request.amount = plan->operation == PT_VOID ? NULL : plan->amount;
	request.invoice_number = plan->invoice_number;
	return request;
}

/*
 * For a void: PayTrace's word on whether the target is settled, which the
 * local row may not know yet.  Records the settlement if it is.
 */
static bool
target_is_settled(const Administration *admin, const CallPlan *plan)
{
	List	   *found = paytrace_export_by_id(admin, plan->parent_transaction_id);
	PtTransaction *t;

	if (found == NIL)
		return false;
	t = linitial(found);
	if (t->state != PT_STATE_SETTLED)
		return false;

	{
		MemoryContext caller = worker_begin();
		Oid			types[] = {INT8OID, INT4OID, TIMESTAMPTZOID};
		Datum		values[] = {Int64GetDatum(plan->parent_id), Int32GetDatum(t->batch_number),
		TimestampTzGetDatum(t->settled_at)};
		char		nulls[] = {' ', ' ', t->has_settled_at ? ' ' : 'n'};

		spi_run("UPDATE freshpay.payments SET batch_number = $2, settled_at = $3,"
				" updated_at = pg_catalog.now() WHERE id OPERATOR(pg_catalog.=) $1",
				3, types, values, nulls, SPI_OK_UPDATE);
		worker_commit(caller);
	}
	return true;
}

/* CallPlan a call in a read-only transaction of its own. */
static void
plan_call(CallPlan *plan, const MoneyCall *call, MemoryContext context)
{
	MemoryContext caller = worker_begin();

	if (call->op == MONEY_CAPTURE || call->op == MONEY_AUTHORIZE)
		plan_collection(plan, call, false, context);
	else if (call->op == MONEY_REVERSE)
	{
		/* The invoice's collected sale or capture: void or refund it. */
		Oid			types[] = {INT8OID};
		Datum		values[] = {Int64GetDatum(call->target_id)};
		int64		target;

		if (spi_run("SELECT 1 FROM freshpay.invoices WHERE id OPERATOR(pg_catalog.=) $1",
					1, types, values, NULL, SPI_OK_SELECT) == 0)
			refuse(ERRCODE_NO_DATA_FOUND, "invoice_id is freshpay.invoices.id.",
				  "invoice " INT64_FORMAT " does not exist", call->target_id);
		if (spi_run("SELECT id, batch_number IS NOT NULL FROM freshpay.payments"
					" WHERE invoice_id OPERATOR(pg_catalog.=) $1"
					"   AND kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'capture', 'ach_sale'])"
					"   AND status OPERATOR(pg_catalog.=) 'captured'"
					" ORDER BY id DESC LIMIT 1",
					1, types, values, NULL, SPI_OK_SELECT) == 0)
			refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, "Only collected invoices can be reversed.",
				  "invoice " INT64_FORMAT " has no collected payment to reverse", call->target_id);
		spi_int64(1, &target);
		/* Known settled: refund; otherwise void, unless PayTrace says settled. */
		plan_reversal(plan, strcmp(spi_text(context, 2), "t") == 0 ? MONEY_REFUND : MONEY_VOID,
					  target, NULL, context);
		plan->op = MONEY_REVERSE;
	}
	else
		plan_reversal(plan, call->op, call->target_id,
					  call->has_amount ? call->amount : NULL, context);
	worker_commit(caller);
}

/* A money call in flight: everything it needs lives in its own context. */
struct Pending
{
	MemoryContext context;
	int			slot;			/* mailbox slot, or -1 for a job */
	int64		job_id;			/* collect_invoice job, or 0 */
	int			job_attempts;
	MoneyCall	call;
	CallPlan	plan;
	Administration *admin;
	PtRequest	request;
	int64		payment_id;
};

/* Turn the error being caught into the caller's answer (and a job's error text). */
static void
answer_from_error(MoneyAnswer *answer, MemoryContext context, char **error, int *sqlerrcode)
{
	ErrorData  *edata = worker_catch(context);

	answer->sqlerrcode = edata->sqlerrcode ? edata->sqlerrcode : ERRCODE_INTERNAL_ERROR;
	strlcpy(answer->message, edata->message ? edata->message : "", sizeof(answer->message));
	strlcpy(answer->detail, edata->detail ? edata->detail : "", sizeof(answer->detail));
	strlcpy(answer->hint, edata->hint ? edata->hint : "", sizeof(answer->hint));
	if (error != NULL)
		*error = worker_error_text(edata);
	if (sqlerrcode != NULL)
		*sqlerrcode = answer->sqlerrcode;
}

/*
 * The first half of a money call, up to the request leaving: plan, re-read
 * the invoice, record the attempt (committed), start the PayTrace request.
 */
static void
begin_call(Pending *p)
{
	MemoryContext context = p->context;
	MemoryContext caller;

	plan_call(&p->plan, &p->call, context);
	caller = worker_begin();
	MemoryContextSwitchTo(context);
	p->admin = administration_load(p->plan.administration, context);
	worker_commit(caller);

	if (p->plan.op == MONEY_CAPTURE || p->plan.op == MONEY_AUTHORIZE)
		reread_invoice(p->admin, &p->plan);
	else if (p->plan.operation == PT_VOID && target_is_settled(p->admin, &p->plan))
	{
		/* The local row did not know yet: a reversal becomes a refund. */
		if (p->plan.op != MONEY_REVERSE)
			refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
				   "Refund it with freshpay_refund() instead.",
				   "payment " INT64_FORMAT " is settled and cannot be voided", p->plan.parent_id);
		p->plan.kind = "refund";
		p->plan.operation = PT_REFUND;
	}

	/* Record the intent, with the checks repeated under the invoice's lock. */
	caller = worker_begin();
	MemoryContextSwitchTo(context);
	if (p->plan.op == MONEY_CAPTURE || p->plan.op == MONEY_AUTHORIZE)
	{
		CallPlan	locked = {0};

		plan_collection(&locked, &p->call, true, context);
		if (numeric_compare(p->plan.amount, locked.amount) != 0 && !p->call.has_amount)
			p->plan.amount = locked.amount;
	}
	p->payment_id = record_attempt(&p->plan, p->call.requested_by);
	worker_commit(caller);
	MemoryContextSwitchTo(context);
	if (p->slot >= 0)
		mailbox_progress(p->slot, p->payment_id);

	worker_pause_point("before_send", p->payment_id);
	p->request = request_of(&p->plan);
	(void) paytrace_start(p->admin, &p->request, p);
	worker_status_in_flight(1);
}

/*
 * Worker: begin a money call (from the mailbox when slot >= 0, else for the
 * collect_invoice job job_id).  Returns the call in flight, or NULL when it
 * ended before anything was sent: a mailbox caller has its answer then, a
 * job gets *error and *sqlerrcode.
 */
Pending *
attempt_begin(int slot, const MoneyCall *call, int64 job_id, int job_attempts,
			  char **error, int *sqlerrcode)
{
	MemoryContext outer = CurrentMemoryContext;
	MemoryContext context = AllocSetContextCreate(TopMemoryContext, "freshpay money call",
												  ALLOCSET_SMALL_SIZES);
	Pending    *p = MemoryContextAllocZero(context, sizeof(Pending));
	volatile bool started = false;

	p->context = context;
	p->slot = slot;
	p->job_id = job_id;
	p->job_attempts = job_attempts;
	p->call = *call;
	*error = NULL;
	*sqlerrcode = 0;

	PG_TRY();
	{
		MemoryContextSwitchTo(context);
		begin_call(p);
		started = true;
	}
	PG_CATCH();
	{
		MoneyAnswer answer = {0};
		char	   *message;

		answer_from_error(&answer, outer, &message, sqlerrcode);
		*error = message;
		answer.payment_id = p->payment_id;
		if (slot >= 0)
			mailbox_answer(slot, &answer);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(outer);
	if (started)
		return p;
	MemoryContextDelete(context);
	return NULL;
}

/*
 * Worker: the second half, once PayTrace answered (or did not): record the
 * outcome and its consequences, answer the caller.  Returns what a job needs
 * to know (allocated in the current context); frees the call.
 */
AttemptEnd *
attempt_finish(Pending *p, const HttpResponse *response)
{
	MemoryContext outer = CurrentMemoryContext;
	AttemptEnd *end = palloc0(sizeof(AttemptEnd));
	MoneyAnswer answer = {0};

	end->job_id = p->job_id;
	end->job_attempts = p->job_attempts;
	end->retry_after = -1;
	worker_status_in_flight(-1);

	PG_TRY();
	{
		PtResult   *result;
		MemoryContext caller;

		MemoryContextSwitchTo(p->context);
		worker_pause_point("after_answer", p->payment_id);
		result = paytrace_finish(p->admin, &p->request, response);

		caller = worker_begin();
		MemoryContextSwitchTo(p->context);
		record_outcome(p->payment_id, result, "answered");
		worker_commit(caller);

		end->outcome = result->outcome;
		end->retry_after = result->retry_after;
		answer.payment_id = p->payment_id;
		if (result->outcome == PT_NOT_SENT || result->outcome == PT_RETRY_LATER)
			end->error = MemoryContextStrdup(outer, result->message);

		/* PayTrace refusing a void or refund is the caller's error, not an outcome. */
		if (result->outcome == PT_REJECTED && p->plan.operation != PT_SALE &&
			p->plan.operation != PT_AUTHORIZE && p->plan.operation != PT_ACH_SALE)
			refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
				   "The attempt is recorded as failed in freshpay.payments.",
				   "PayTrace refused the %s of payment " INT64_FORMAT ": %s",
				   p->plan.kind, p->plan.parent_id, result->message);
	}
	PG_CATCH();
	{
		char	   *message;
		int			code;

		answer_from_error(&answer, outer, &message, &code);
		answer.payment_id = p->payment_id;
		end->outcome = PT_UNKNOWN;
		end->error = message;
		end->sqlerrcode = code;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(outer);
	if (p->slot >= 0)
		mailbox_answer(p->slot, &answer);
	MemoryContextDelete(p->context);
	return end;
}

/* Does an exported transaction stand for this attempt? */
static bool
matches(const Attempt *a, const PtTransaction *t)
{
	const char *type = t->type ? t->type : "";

	if (strcmp(t->invoice_id, a->invoice_number ? a->invoice_number : "") != 0)
		return false;
	if (numeric_compare(numeric_text(t->amount), a->amount) != 0)
		return false;
	if (strcmp(a->kind, "sale") == 0)
		return pg_strcasecmp(type, "SALE") == 0;
	if (strcmp(a->kind, "authorization") == 0)
		return pg_strncasecmp(type, "AUTH", 4) == 0;
	if (strcmp(a->kind, "ach_sale") == 0)
		return pg_strncasecmp(type, "CHECK", 5) == 0 || pg_strncasecmp(type, "ACH", 3) == 0;
	if (strcmp(a->kind, "refund") == 0)
		return pg_strcasecmp(type, "REFUND") == 0;
	return false;
}

/* Turn what an export shows into the answer the lost request would have had. */
static PtResult *
result_from_transaction(const Attempt *a, const PtTransaction *t)
{
	PtResult   *result = palloc0(sizeof(PtResult));
	bool		happened;

	if (strcmp(a->kind, "void") == 0)
		happened = t->state == PT_STATE_VOIDED;
	else if (strcmp(a->kind, "capture") == 0)
		happened = t->state == PT_STATE_PENDING_SETTLEMENT || t->state == PT_STATE_SETTLED;
	else if (strcmp(a->kind, "authorization") == 0)
		happened = t->state == PT_STATE_AUTHORIZED || t->state == PT_STATE_PENDING_SETTLEMENT ||
			t->state == PT_STATE_SETTLED;
	else
		happened = t->state == PT_STATE_PENDING_SETTLEMENT || t->state == PT_STATE_SETTLED;

	result->outcome = happened ? PT_APPROVED : PT_DECLINED;
	result->has_transaction_id = true;
	result->transaction_id = t->transaction_id;
	result->approval_code = (t->approval_code && t->approval_code[0]) ? t->approval_code : NULL;
	result->message = psprintf("Found at PayTrace by transaction export: transaction " INT64_FORMAT ", %s.",
							   t->transaction_id, t->status_message ? t->status_message : "no status");
	result->retry_after = -1;
	return result;
}

/* Is this transaction already another payment's? */
static bool
adopted_elsewhere(const Attempt *a, int64 transaction_id)
{
	Oid			types[] = {TEXTOID, INT8OID, TEXTOID, INT8OID};
	Datum		values[] = {CStringGetTextDatum(a->administration), Int64GetDatum(transaction_id),
		CStringGetTextDatum(a->kind), Int64GetDatum(a->payment_id)};

	return spi_run("SELECT 1 FROM freshpay.payments WHERE administration OPERATOR(pg_catalog.=) $1"
				   " AND paytrace_transaction_id OPERATOR(pg_catalog.=) $2"
				   " AND kind OPERATOR(pg_catalog.=) $3 AND id OPERATOR(pg_catalog.<>) $4",
				   4, types, values, NULL, SPI_OK_SELECT) > 0;
}

/*
 * Look a pending or unknown attempt up at PayTrace and record what it shows.
 * Returns 0 when the attempt is settled, or when to look again.
 */
TimestampTz
attempt_resolve(int64 payment_id)
{
	MemoryContext context = CurrentMemoryContext;
	MemoryContext caller;
	Attempt    *a;
	Administration *admin;
	List	   *candidates = NIL;
	PtTransaction *found = NULL;
	ListCell   *lc;
	TimestampTz conclusive_at;

	caller = worker_begin();
	MemoryContextSwitchTo(context);
	a = attempt_load(payment_id, context);
	admin = is_in_flight(a->status) ? administration_load(a->administration, context) : NULL;
	worker_commit(caller);
	if (admin == NULL)
		return 0;

	/* Ask PayTrace.  Captures and voids show on the transaction they act on. */
	if (strcmp(a->kind, "capture") == 0 || strcmp(a->kind, "void") == 0)
		candidates = paytrace_export_by_id(admin, a->parent_transaction_id);
	else if (a->has_transaction_id)
		candidates = paytrace_export_by_id(admin, a->transaction_id);
	else
	{
		DateADT		from = date_of_timestamp(a->created_at) - 1;
		DateADT		to = date_of_timestamp(GetCurrentTimestamp()) + 1;

		candidates = paytrace_export_by_date_range(admin, from, to, a->invoice_number);
	}

	caller = worker_begin();
	MemoryContextSwitchTo(context);
	foreach(lc, candidates)
	{
		PtTransaction *t = lfirst(lc);

		if (strcmp(a->kind, "capture") == 0 || strcmp(a->kind, "void") == 0 ||
			a->has_transaction_id ||
			(matches(a, t) && !adopted_elsewhere(a, t->transaction_id)))
		{
			found = t;
			break;
		}
	}

	conclusive_at = TimestampTzPlusMilliseconds(a->created_at,
												freshpay_request_timeout + RESOLVE_GRACE_MS);
	if (found != NULL)
	{
		PtResult   *result = result_from_transaction(a, found);

		/* A capture or void not visible yet may still be in process. */
		if (result->outcome == PT_APPROVED || GetCurrentTimestamp() >= conclusive_at ||
			(strcmp(a->kind, "capture") != 0 && strcmp(a->kind, "void") != 0))
		{
			record_outcome(payment_id, result, "resolved");
			worker_commit(caller);
			return 0;
		}
	}
	else if (GetCurrentTimestamp() >= conclusive_at)
	{
		PtResult	result = {0};

		result.outcome = PT_NOT_SENT;
		result.retry_after = -1;
		result.message = psprintf("PayTrace has no record of the request %d s after it was recorded: it was not processed.",
								  (freshpay_request_timeout + (int) RESOLVE_GRACE_MS) / 1000);
		record_outcome(payment_id, &result, "resolved");
		worker_commit(caller);
		return 0;
	}

	/* Not conclusive yet: it may still be in process at PayTrace. */
	if (strcmp(a->status, "pending") == 0)
	{
		Oid			types[] = {INT8OID};
		Datum		values[] = {Int64GetDatum(payment_id)};

		spi_run("UPDATE freshpay.payments SET status = 'unknown', updated_at = pg_catalog.now()"
				" WHERE id OPERATOR(pg_catalog.=) $1", 1, types, values, NULL, SPI_OK_UPDATE);
		history(payment_id, "pending", "unknown", 0, "lookup",
				"Not found at PayTrace yet; looked up again once the request cannot be in process any more.");
	}
	worker_commit(caller);
	return conclusive_at;
}

/*
 * On worker start: attempts left 'pending' by a previous worker were maybe
 * sent; they become 'unknown' and each gets a resolve job due now.  The
 * worker runs those before it takes any new call.
 */
void
attempt_recover(void)
{
	MemoryContext caller = worker_begin();
	int64		n;

	n = spi_run("WITH lost AS ("
				"  UPDATE freshpay.payments SET status = 'unknown', updated_at = pg_catalog.now()"
				"   WHERE status OPERATOR(pg_catalog.=) 'pending' RETURNING id)"
				" INSERT INTO freshpay.payment_history (payment_id, old_status, new_status, event, message)"
				" SELECT id, 'pending', 'unknown', 'restart',"
				"        'The worker restarted while the attempt was in flight; it is looked up at PayTrace.'"
				"   FROM lost",
				0, NULL, NULL, NULL, SPI_OK_INSERT);
	spi_run("INSERT INTO freshpay.jobs (kind, payment_id, next_run_at)"
			" SELECT 'resolve_payment', p.id, pg_catalog.now() FROM freshpay.payments p"
			"  WHERE p.status OPERATOR(pg_catalog.=) 'unknown'"
			" ON CONFLICT (kind, payment_id) WHERE state OPERATOR(pg_catalog.=) 'queued'"
			" DO UPDATE SET next_run_at = pg_catalog.now()",
			0, NULL, NULL, NULL, SPI_OK_INSERT);
	worker_commit(caller);
	if (n > 0)
		elog(LOG, "freshpay worker: " INT64_FORMAT " attempts were in flight at restart; looking them up at PayTrace", n);
}

/*
 * Worker: may the collect_invoice job of this invoice start an attempt?
 * Returns -1 to go ahead, 0 when there is nothing to do (paid, declined
 * before — freshpay does not charge a declining card again —, no longer on
 * a collection rule), or when to look again (an attempt is in flight).
 */
TimestampTz
attempt_collect_check(int64 invoice_id)
{
	MemoryContext caller = worker_begin();
	Oid			types[] = {INT8OID};
	Datum		values[] = {Int64GetDatum(invoice_id)};
	bool		collectable;
	int64		in_flight;

	collectable = spi_run("SELECT 1 FROM freshpay.invoices i"
						  "  JOIN freshpay.customers c ON c.id OPERATOR(pg_catalog.=) i.customer_id"
						  " WHERE i.id OPERATOR(pg_catalog.=) $1"
						  "   AND i.type OPERATOR(pg_catalog.=) 'invoice'"
						  "   AND i.status OPERATOR(pg_catalog.=) ANY (ARRAY['open', 'partially_paid'])"
						  "   AND c.collection OPERATOR(pg_catalog.=) ANY (ARRAY['on_issue', 'on_due_date'])"
						  "   AND c.paytrace_customer_id IS NOT NULL AND NOT c.blocked"
						  "   AND NOT EXISTS (SELECT FROM freshpay.payments p"
						  "        WHERE p.invoice_id OPERATOR(pg_catalog.=) i.id"
						  "          AND (p.status OPERATOR(pg_catalog.=) ANY (ARRAY['captured', 'authorized', 'refunded', 'voided'])"
						  "               OR (p.status OPERATOR(pg_catalog.=) 'failed' AND p.response_code IS NOT NULL)))",
						  1, types, values, NULL, SPI_OK_SELECT) == 1;
	in_flight = spi_run("SELECT 1 FROM freshpay.payments WHERE invoice_id OPERATOR(pg_catalog.=) $1"
						"   AND status OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'unknown'])",
						1, types, values, NULL, SPI_OK_SELECT);
	worker_commit(caller);
	if (!collectable)
		return 0;
	if (in_flight > 0)
		return TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										   freshpay_request_timeout + RESOLVE_GRACE_MS);
	return -1;
}

/*
 * Apply what PayTrace's export shows of one transaction (inside a worker or
 * caller transaction, SPI connected): settlement of our payments; a void made
 * outside freshpay (PayTrace's Virtual Terminal, say), recorded as a 'void'
 * row so that everything a void of ours does follows (parent status, invoice
 * amounts, the reversal in FreshPortal); and a sale, ACH debit or
 * authorization freshpay did not make, recorded and matched to an invoice by
 * number when it can be.  Returns 'i'nserted, 'u'pdated or 0.
 */
char
attempt_apply_paytrace(const char *administration, const PtTransaction *t)
{
	Oid			types[] = {TEXTOID, INT8OID, INT4OID, TIMESTAMPTZOID};
	Datum		values[] = {CStringGetTextDatum(administration), Int64GetDatum(t->transaction_id),
		Int32GetDatum(t->batch_number), TimestampTzGetDatum(t->settled_at)};
	char		nulls[] = {' ', ' ', ' ', t->has_settled_at ? ' ' : 'n'};
	int64		payment_id;
	char	   *status;
	char		change = 0;

	if (spi_run("SELECT id, status FROM freshpay.payments"
				" WHERE administration OPERATOR(pg_catalog.=) $1"
				"   AND paytrace_transaction_id OPERATOR(pg_catalog.=) $2"
				"   AND kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture', 'authorization'])"
				" ORDER BY (kind OPERATOR(pg_catalog.=) 'authorization'), id LIMIT 1",
				2, types, values, NULL, SPI_OK_SELECT) == 1)
	{
		spi_int64(1, &payment_id);
		status = spi_text(CurrentMemoryContext, 2);

		if (t->state == PT_STATE_SETTLED &&
			spi_run("UPDATE freshpay.payments SET batch_number = $3, settled_at = $4,"
					"       updated_at = pg_catalog.now()"
					" WHERE administration OPERATOR(pg_catalog.=) $1"
					"   AND paytrace_transaction_id OPERATOR(pg_catalog.=) $2"
					"   AND kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture'])"
					"   AND batch_number IS DISTINCT FROM $3",
					4, types, values, nulls, SPI_OK_UPDATE) > 0)
			change = 'u';

		if ((t->state == PT_STATE_VOIDED || t->state == PT_STATE_DECLINED) &&
			(strcmp(status, "captured") == 0 || strcmp(status, "authorized") == 0))
		{
			Oid			vtypes[] = {INT8OID, INT8OID, TEXTOID};
			Datum		vvalues[] = {Int64GetDatum(payment_id), Int64GetDatum(t->transaction_id),
				CStringGetTextDatum(psprintf("Voided at PayTrace, outside freshpay: %s",
											 t->status_message ? t->status_message : "no status"))};
			int64		void_id;

			spi_run("INSERT INTO freshpay.payments"
					" (administration, invoice_id, customer_id, kind, parent_id, amount, status,"
					"  paytrace_transaction_id, message, invoice_number, requested_by)"
					" SELECT administration, invoice_id, customer_id, 'void', id,"
					"        amount OPERATOR(pg_catalog.-) refunded_amount, 'pending', $2, $3,"
					"        invoice_number, 'paytrace'"
					"   FROM freshpay.payments WHERE id OPERATOR(pg_catalog.=) $1"
					" RETURNING id",
					3, vtypes, vvalues, NULL, SPI_OK_INSERT_RETURNING);
			spi_int64(1, &void_id);
			history(void_id, NULL, "pending", 0, "learned", "A void made at PayTrace outside freshpay.");
			{
				PtResult	result = {0};

				result.outcome = PT_APPROVED;
				result.retry_after = -1;
				result.message = psprintf("Voided at PayTrace, outside freshpay (transaction " INT64_FORMAT ").",
										  t->transaction_id);
				record_outcome(void_id, &result, "learned");
			}
			change = 'u';
		}
		return change;
	}

	/* A transaction freshpay did not make. */
	if (t->state == PT_STATE_PENDING_SETTLEMENT || t->state == PT_STATE_SETTLED ||
		t->state == PT_STATE_AUTHORIZED)
	{
		const char *type = t->type ? t->type : "";
		const char *kind = pg_strcasecmp(type, "SALE") == 0 ? "sale" :
			pg_strncasecmp(type, "CHECK", 5) == 0 ? "ach_sale" :
			pg_strncasecmp(type, "AUTH", 4) == 0 ? "authorization" : NULL;
		Oid			itypes[] = {TEXTOID, INT8OID, TEXTOID, NUMERICOID, TEXTOID, TEXTOID, INT4OID,
		TIMESTAMPTZOID, TEXTOID};
		Datum		ivalues[9];
		char		inulls[9];
		int64		new_id;
		Attempt    *a;

		if (kind == NULL)
			return 0;			/* refunds without a parent of ours are not recorded */
		ivalues[0] = CStringGetTextDatum(administration);
		ivalues[1] = Int64GetDatum(t->transaction_id);
		ivalues[2] = CStringGetTextDatum(kind);
		ivalues[3] = t->amount;
		ivalues[4] = CStringGetTextDatum(strcmp(kind, "authorization") == 0 ? "authorized" : "captured");
		ivalues[5] = CStringGetTextDatum(t->invoice_id);
		ivalues[6] = Int32GetDatum(t->batch_number);
		ivalues[7] = TimestampTzGetDatum(t->settled_at);
		ivalues[8] = t->approval_code ? CStringGetTextDatum(t->approval_code) : (Datum) 0;
		memset(inulls, ' ', sizeof(inulls));
		inulls[6] = t->batch_number ? ' ' : 'n';
		inulls[7] = t->has_settled_at ? ' ' : 'n';
		inulls[8] = t->approval_code && t->approval_code[0] ? ' ' : 'n';
		spi_run("INSERT INTO freshpay.payments"
				" (administration, invoice_id, customer_id, kind, amount, status,"
				"  paytrace_transaction_id, invoice_number, batch_number, settled_at,"
				"  approval_code, message, requested_by)"
				" SELECT $1, i.id, i.customer_id, $3, $4, 'pending', $2, NULLIF($6, ''), $7, $8, $9,"
				"        'Made at PayTrace, outside freshpay.', 'paytrace'"
				"   FROM (SELECT 1) one"
				"   LEFT JOIN freshpay.invoices i ON i.administration OPERATOR(pg_catalog.=) $1"
				"        AND i.number OPERATOR(pg_catalog.=) $6"
				" ORDER BY i.id LIMIT 1"
				" RETURNING id",
				9, itypes, ivalues, inulls, SPI_OK_INSERT_RETURNING);
		spi_int64(1, &new_id);
		history(new_id, NULL, "pending", 0, "learned", "A transaction made at PayTrace outside freshpay.");
		/* Recorded as approved, so that the invoice and FreshPortal follow. */
		a = attempt_load(new_id, CurrentMemoryContext);
		spi_run(psprintf("UPDATE freshpay.payments SET status = '%s' WHERE id OPERATOR(pg_catalog.=) " INT64_FORMAT,
						 success_status(kind), new_id), 0, NULL, NULL, NULL, SPI_OK_UPDATE);
		history(new_id, "pending", success_status(kind), 0, "learned", NULL);
		apply_success(a);
		return 'i';
	}
	return 0;
}
