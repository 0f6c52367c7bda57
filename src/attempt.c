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
 * does to its own transaction can erase it.  The OAuth token is fetched
 * before "record", so the request leaves right after it.
 *
 * What happens on a timeout (README, "What happens on a timeout"): an
 * answer that was lost makes the attempt 'unknown'.  It is looked up at
 * PayTrace again and again (transaction export by invoice number), never
 * while this worker still has the request in flight, and never concluded
 * from absence: PayTrace may process a request long after freshpay stopped
 * waiting, so "not found" proves nothing.  An 'unknown' attempt blocks every
 * new charge of its invoice until PayTrace shows what became of it, or a
 * person settles it with freshpay_resolve(payment_id, 'not_processed').  A
 * late answer or a late export row is recorded even over such a conclusion.
 * Before any new sale or authorization, PayTrace is asked what it already
 * holds for the invoice; a transaction freshpay has no record of is recorded
 * and the charge is refused.
 *
 * The local invoice mirrors FreshPortal only (the sync and the write-back
 * write it); what freshpay collected and FreshPortal does not know yet is
 * computed from freshpay.payments (captured, not registered).
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

/* After freshpay.request_timeout, when the safety-net lookup of an attempt runs. */
#define RESOLVE_GRACE_MS (5 * 1000L)

/* Lookups of an unknown outcome: between 10 s and 15 min apart, growing with its age. */
#define LOOKUP_MIN_MS (10 * 1000L)
#define LOOKUP_MAX_MS (15 * 60 * 1000L)

/* An exported transaction created this long before the attempt is not its outcome. */
#define LOOKUP_CLOCK_SKEW_MS (10 * 60 * 1000L)

/* PayTrace's longest invoice_id [G]; see README, "PayTrace assumptions". */
#define PT_INVOICE_ID_MAX 50

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
	char	   *unregistered;	/* collected, not yet in FreshPortal (numeric text) */
	int64		freshportal_customer_id;
	DateADT		invoice_date;
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
				"       p.created_at, p.response_code IS NOT NULL"
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
	a->has_response_code = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
													  SPI_tuptable->tupdesc, 11, &isnull));
	return a;
}

static bool
is_in_flight(const char *status)
{
	return strcmp(status, "pending") == 0 || strcmp(status, "unknown") == 0;
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

/*
 * The consequences of a money call that happened: parent statuses and the
 * write-back to FreshPortal.  The local invoice is FreshPortal's and is not
 * touched here; the write-back re-reads it.
 */
static void
apply_success(const Attempt *a)
{
	Oid			types[] = {INT8OID, NUMERICOID};

	if (strcmp(a->kind, "sale") == 0 || strcmp(a->kind, "ach_sale") == 0 ||
		strcmp(a->kind, "capture") == 0)
	{
		if (strcmp(a->kind, "capture") == 0)
			set_parent_status(a->parent_id, "captured");
		job_queue("register_payment", a->payment_id, 0);
	}
	else if (strcmp(a->kind, "void") == 0)
	{
		Datum		values[] = {Int64GetDatum(a->parent_id), (Datum) 0};
		char	   *parent_kind;

		spi_run("SELECT kind FROM freshpay.payments WHERE id OPERATOR(pg_catalog.=) $1",
				1, types, values, NULL, SPI_OK_SELECT);
		parent_kind = spi_text(CurrentMemoryContext, 1);
		set_parent_status(a->parent_id, "voided");
		if (strcmp(parent_kind, "authorization") != 0)
			job_queue("reverse_payment", a->payment_id, 0);
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
 * A conclusion PayTrace never gave: 'failed' without a response code and
 * without a transaction (nothing left freshpay, or a person declared it not
 * processed).  A late approval is recorded over it.
 */
static bool
is_open_conclusion(const Attempt *a)
{
	return strcmp(a->status, "failed") == 0 && !a->has_response_code && !a->has_transaction_id;
}

/*
 * Record what became of an attempt, once.  Inside a worker (or caller)
 * transaction.  Returns false if the attempt had already been settled (by a
 * lookup or the PayTrace pull that raced the answer, say).  A late approval
 * is recorded even over an earlier conclusion that PayTrace did not give.
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
	{
		if (result->outcome != PT_APPROVED || !is_open_conclusion(a))
			return false;
		ereport(WARNING,
				(errmsg("freshpay: payment " INT64_FORMAT " of invoice %s was %s after all",
						payment_id, a->invoice_number ? a->invoice_number : "(none)",
						strcmp(a->kind, "authorization") == 0 ? "authorized" : "processed"),
				 errdetail("It had been concluded \"%s\" without PayTrace's word; PayTrace's later answer is recorded over that.",
						   a->status),
				 errhint("Check freshpay.exceptions for an invoice collected twice.")));
		event = "late answer";
	}

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
	/*
	 * A lost answer is looked up after a pause: PayTrace may still be at it,
	 * and the caller is told 'unknown' (the job already queued when the
	 * attempt was recorded may be due sooner).
	 */
	if (result->outcome == PT_UNKNOWN)
		job_queue("resolve_payment", payment_id,
				  TimestampTzPlusMilliseconds(GetCurrentTimestamp(), LOOKUP_MIN_MS));
	else
		job_finish("resolve_payment", payment_id);
	return true;
}

/*
 * Can this invoice number go to PayTrace as invoice_id and come back the
 * same in its exports?  Lookups match it byte for byte, so anything PayTrace
 * might trim, truncate or re-encode is refused before sending.
 */
static bool
invoice_number_sendable(const char *number)
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
					"       i.open_amount OPERATOR(pg_catalog.-) u.amount,"
					"       (SELECT pg_catalog.min(p.id) FROM freshpay.payments p WHERE p.invoice_id OPERATOR(pg_catalog.=) i.id"
					"           AND p.status OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'unknown'])),"
					"       a.id, a.amount, a.paytrace_transaction_id, u.amount, i.invoice_date,"
					"       (SELECT pg_catalog.min(p.id) FROM freshpay.payments p WHERE p.invoice_id OPERATOR(pg_catalog.=) i.id"
					"           AND p.status OPERATOR(pg_catalog.=) 'unknown'),"
					"       c.freshportal_id"
					"  FROM freshpay.invoices i"
					"  LEFT JOIN freshpay.customers c ON c.id OPERATOR(pg_catalog.=) i.customer_id"
					/* Money freshpay collected that FreshPortal does not count yet. */
					"  CROSS JOIN LATERAL (SELECT COALESCE(pg_catalog.sum(p.amount OPERATOR(pg_catalog.-) p.refunded_amount), 0) AS amount"
					"        FROM freshpay.payments p WHERE p.invoice_id OPERATOR(pg_catalog.=) i.id"
					"         AND p.kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture'])"
					"         AND p.status OPERATOR(pg_catalog.=) 'captured' AND p.freshportal_payment_id IS NULL) u"
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
	plan->unregistered = spi_text(context, 16);
	spi_int64(19, &plan->freshportal_customer_id);
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 17, &isnull);

		plan->invoice_date = isnull ? date_of_timestamp(GetCurrentTimestamp()) - 31 : DatumGetDateADT(d);
	}

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
	if (!invoice_number_sendable(plan->invoice_number))
		refuse(ERRCODE_INVALID_PARAMETER_VALUE,
			  "PayTrace's invoice_id takes 1 to 50 printable ASCII characters, and freshpay looks payments up by it; collect this invoice in PayTrace's Virtual Terminal.",
			  "invoice number of invoice " INT64_FORMAT " cannot be sent to PayTrace", call->target_id);
	if (spi_text(context, 18) != NULL)
		refuse(ERRCODE_OBJECT_IN_USE,
			  "freshpay keeps looking it up at PayTrace. If PayTrace's Virtual Terminal shows no transaction for the invoice, settle it with freshpay_resolve(payment_id, 'not_processed').",
			  "the outcome of payment %s of invoice %s is unknown", spi_text(context, 18), plan->invoice_number);
	if (spi_text(context, 12) != NULL)
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
				"           AND c.status OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'unknown'])),"
				"       (SELECT pg_catalog.min(c.id) FROM freshpay.payments c WHERE c.parent_id OPERATOR(pg_catalog.=) p.id"
				"           AND c.kind OPERATOR(pg_catalog.=) 'capture'"
				"           AND c.status OPERATOR(pg_catalog.<>) ALL (ARRAY['failed']))"
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

	/*
	 * PayTrace keeps the authorization's transaction id for its capture: a
	 * void or refund of a captured authorization would act on the captured
	 * money.  The capture is the row to act on.
	 */
	if (strcmp(kind, "authorization") == 0 && spi_text(context, 11) != NULL)
		refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
			  psprintf("Void or refund its capture, payment %s, instead; PayTrace releases the uncaptured rest of the authorization by itself.",
					   spi_text(context, 11)),
			  "authorization " INT64_FORMAT " has been captured", target_id);

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

/*
 * FreshPortal's current view of the invoice, before anything is charged: it
 * must still be an issued USD invoice of the same customer with money open.
 * What freshpay collected and FreshPortal does not count yet is deducted;
 * a call without an amount collects what is left of that.
 */
static void
reread_invoice(const Administration *admin, CallPlan *plan, bool has_amount)
{
	FpInvoice  *remote = freshportal_get_invoice(admin, plan->freshportal_invoice_id);
	char	   *open = numeric_text(remote->open_amount);
	char	   *left;

	if (remote->id != plan->freshportal_invoice_id)
		refuse(ERRCODE_DATA_CORRUPTED, NULL,
			  "FreshPortal answered invoice " INT64_FORMAT " for invoice %s (FreshPortal id " INT64_FORMAT ")",
			  remote->id, plan->invoice_number, plan->freshportal_invoice_id);
	if (strcmp(remote->type, "invoice") != 0 || strcmp(remote->status, "concept") == 0 ||
		strcmp(remote->currency, "USD") != 0 ||
		(plan->freshportal_customer_id != 0 && remote->customer_id != plan->freshportal_customer_id))
		refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
			  "Run freshpay_sync() to see FreshPortal's current invoice, then collect it if it still applies.",
			  "invoice %s changed in FreshPortal: it is now a %s %s in %s of customer " INT64_FORMAT,
			  plan->invoice_number, remote->status, remote->type, remote->currency, remote->customer_id);
	if (strcmp(remote->status, "paid") == 0 || strcmp(remote->status, "credited") == 0 ||
		numeric_compare(open, "0") <= 0)
		refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
			  "It was paid in FreshPortal meanwhile (by bank transfer, say); run freshpay_sync() to see it.",
			  "invoice %s is already paid in FreshPortal", plan->invoice_number);

	left = numeric_text(DirectFunctionCall2(numeric_sub, remote->open_amount,
											numeric_of(plan->unregistered ? plan->unregistered : "0")));
	if (numeric_compare(left, "0") <= 0)
		refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
			  "Nothing is left to collect; freshpay.payments shows what was collected.",
			  "invoice %s is already paid", plan->invoice_number);
	if (!has_amount && numeric_compare(plan->amount, left) > 0)
		plan->amount = left;
	if (numeric_compare(plan->amount, left) > 0)
		refuse(ERRCODE_INVALID_PARAMETER_VALUE,
			  "Run freshpay_sync() and collect at most the open amount.",
			  "amount %s exceeds FreshPortal's current open amount %s of invoice %s",
			  plan->amount, left, plan->invoice_number);
}

/*
 * Before a new sale or authorization: what does PayTrace already hold for
 * this invoice?  An approved transaction freshpay has no record of (an
 * answer lost before a failover, a sale in the Virtual Terminal, a request
 * PayTrace processed late) is recorded, and the charge is refused.
 */
static void
lookup_before_charge(const Administration *admin, const CallPlan *plan)
{
	List	   *found = paytrace_export_by_date_range(admin, plan->invoice_date - 1,
													  date_of_timestamp(GetCurrentTimestamp()) + 1,
													  plan->invoice_number);
	ListCell   *lc;

	foreach(lc, found)
	{
		PtTransaction *t = lfirst(lc);
		Oid			types[] = {TEXTOID, INT8OID};
		Datum		values[] = {CStringGetTextDatum(admin->name), Int64GetDatum(t->transaction_id)};
		MemoryContext caller;
		bool		known;
		int64		payment_id = 0;

		if (strcmp(t->invoice_id, plan->invoice_number) != 0 ||
			(t->state != PT_STATE_PENDING_SETTLEMENT && t->state != PT_STATE_SETTLED &&
			 t->state != PT_STATE_AUTHORIZED))
			continue;
		caller = worker_begin();
		known = spi_run("SELECT 1 FROM freshpay.payments WHERE administration OPERATOR(pg_catalog.=) $1"
						" AND paytrace_transaction_id OPERATOR(pg_catalog.=) $2",
						2, types, values, NULL, SPI_OK_SELECT) > 0;
		if (!known && attempt_apply_paytrace(admin->name, t) != 0 &&
			spi_run("SELECT id FROM freshpay.payments WHERE administration OPERATOR(pg_catalog.=) $1"
					" AND paytrace_transaction_id OPERATOR(pg_catalog.=) $2 ORDER BY id LIMIT 1",
					2, types, values, NULL, SPI_OK_SELECT) == 1)
			spi_int64(1, &payment_id);
		worker_commit(caller);
		if (known)
			continue;
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("PayTrace already holds transaction " INT64_FORMAT " for invoice %s",
						t->transaction_id, plan->invoice_number),
				 payment_id ? errdetail("freshpay had no record of it; it is now recorded as payment " INT64_FORMAT ".",
										payment_id)
				 : errdetail("freshpay had no record of it."),
				 errhint("See freshpay.payments; collect what is still open once FreshPortal shows it.")));
	}
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

/*
 * The payments whose request this worker has in flight.  Their own answer
 * (or its loss) settles them; a lookup must not race it.
 */
static int64 *in_flight_ids = NULL;
static int	in_flight_count = 0;
static int	in_flight_size = 0;

static void
in_flight_add(int64 payment_id)
{
	if (in_flight_count == in_flight_size)
	{
		in_flight_size = Max(64, in_flight_size * 2);
		in_flight_ids = in_flight_ids == NULL
			? MemoryContextAlloc(TopMemoryContext, in_flight_size * sizeof(int64))
			: repalloc(in_flight_ids, in_flight_size * sizeof(int64));
	}
	in_flight_ids[in_flight_count++] = payment_id;
}

/* Where payment_id is in the set, or -1. */
static int
in_flight_index(int64 payment_id)
{
	for (int i = 0; i < in_flight_count; i++)
		if (in_flight_ids[i] == payment_id)
			return i;
	return -1;
}

static void
in_flight_remove(int64 payment_id)
{
	int			i = in_flight_index(payment_id);

	if (i >= 0)
		in_flight_ids[i] = in_flight_ids[--in_flight_count];
}

static bool
in_flight_here(int64 payment_id)
{
	return in_flight_index(payment_id) >= 0;
}

/*
 * From an error path: run step(arg) in a transaction of its own, with any
 * transaction the error left aborted first.  Returns false, with the error
 * dropped, when that fails too.
 */
static bool
on_the_side(void (*step) (void *arg), void *arg)
{
	MemoryContext outer = CurrentMemoryContext;
	volatile bool done = false;

	PG_TRY();
	{
		MemoryContext caller;

		if (IsTransactionState())
			AbortCurrentTransaction();
		caller = worker_begin();
		step(arg);
		worker_commit(caller);
		done = true;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(outer);
		FlushErrorState();
		if (IsTransactionState())
			AbortCurrentTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(outer);
	return done;
}

typedef struct SideOutcome
{
	int64		payment_id;
	const PtResult *result;
	const char *why;
} SideOutcome;

static void
record_unsent_step(void *arg)
{
	SideOutcome *o = arg;

	record_outcome(o->payment_id, o->result, "not sent");
}

/*
 * A request that never left: record that, so the attempt does not stay
 * open.  Failing that, it stays as it is and its resolve job looks it up.
 */
static void
record_unsent(int64 payment_id, const PtResult *result)
{
	SideOutcome o = {.payment_id = payment_id, .result = result};

	if (!on_the_side(record_unsent_step, &o))
		elog(WARNING, "freshpay worker: could not record that payment " INT64_FORMAT " was not sent; it is looked up at PayTrace",
			 payment_id);
}

static void
mark_unknown_step(void *arg)
{
	SideOutcome *o = arg;
	Oid			types[] = {INT8OID, TEXTOID};
	Datum		values[] = {Int64GetDatum(o->payment_id), CStringGetTextDatum(o->why)};

	if (spi_run("UPDATE freshpay.payments SET status = 'unknown', updated_at = pg_catalog.now()"
				" WHERE id OPERATOR(pg_catalog.=) $1"
				"   AND status OPERATOR(pg_catalog.=) 'pending'",
				1, types, values, NULL, SPI_OK_UPDATE) == 1)
		spi_run("INSERT INTO freshpay.payment_history (payment_id, old_status, new_status, event, message)"
				" VALUES ($1, 'pending', 'unknown', 'unrecordable', $2)",
				2, types, values, NULL, SPI_OK_INSERT);
	job_queue("resolve_payment", o->payment_id,
			  TimestampTzPlusMilliseconds(GetCurrentTimestamp(), LOOKUP_MIN_MS));
}

/*
 * From an error path after a request was sent: the attempt becomes 'unknown'
 * (if it is still open) and is looked up soon; a WARNING says why.  If even
 * that cannot be written, it stays 'pending' and its resolve job, queued
 * when it was recorded, looks it up.
 */
static void
mark_unknown(int64 payment_id, const char *why)
{
	SideOutcome o = {.payment_id = payment_id, .why = why};

	ereport(WARNING,
			(errmsg("freshpay worker: the outcome of payment " INT64_FORMAT " could not be recorded", payment_id),
			 errdetail("%s", why),
			 errhint("The payment is left unknown and looked up at PayTrace.")));
	(void) on_the_side(mark_unknown_step, &o);
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
	{
		reread_invoice(p->admin, &p->plan, p->call.has_amount);
		if (p->plan.operation != PT_CAPTURE)
			lookup_before_charge(p->admin, &p->plan);
	}
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
		if (!p->call.has_amount && numeric_compare(locked.amount, p->plan.amount) < 0)
			p->plan.amount = locked.amount;
	}
	p->request = request_of(&p->plan);
	worker_commit(caller);
	MemoryContextSwitchTo(context);

	/*
	 * The token first: the request must leave right after the attempt is
	 * recorded, so that nothing but PayTrace decides how long it is out.
	 */
	paytrace_prepare(p->admin);

	caller = worker_begin();
	MemoryContextSwitchTo(context);
	p->payment_id = record_attempt(&p->plan, p->call.requested_by);
	worker_commit(caller);
	MemoryContextSwitchTo(context);
	if (p->slot >= 0)
		mailbox_progress(p->slot, p->payment_id);

	worker_pause_point("before_send", p->payment_id);
	PG_TRY();
	{
		(void) paytrace_start(p->admin, &p->request, p);
	}
	PG_CATCH();
	{
		/* Nothing left: record that, so the attempt does not stay open. */
		ErrorData  *edata;
		PtResult	result = {0};

		MemoryContextSwitchTo(context);
		edata = CopyErrorData();
		FlushErrorState();
		result.outcome = PT_NOT_SENT;
		result.retry_after = -1;
		result.message = psprintf("Not sent: %s", edata->message);
		record_unsent(p->payment_id, &result);
		ReThrowError(edata);
	}
	PG_END_TRY();
	in_flight_add(p->payment_id);
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
	volatile bool recorded = false;

	end->job_id = p->job_id;
	end->job_attempts = p->job_attempts;
	end->retry_after = -1;
	worker_status_in_flight(-1);
	in_flight_remove(p->payment_id);

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
		recorded = true;

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
		if (recorded)
		{
			/* Recorded, and refused by PayTrace: the caller's error. */
			end->error = message;
			end->sqlerrcode = code;
		}
		else
		{
			/*
			 * The request was sent and its answer could not be read or
			 * recorded: the outcome is unknown, and looked up at PayTrace.
			 * Never an ERROR: PayTrace may have moved the money.
			 */
			mark_unknown(p->payment_id, message);
			memset(&answer, 0, sizeof(answer));
			answer.payment_id = p->payment_id;
			worker_status_error(message);
		}
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

/* Is this transaction's state a sign that the attempt happened? */
static bool
shows_success(const Attempt *a, const PtTransaction *t)
{
	if (strcmp(a->kind, "void") == 0)
		return t->state == PT_STATE_VOIDED;
	if (strcmp(a->kind, "authorization") == 0)
		return t->state == PT_STATE_AUTHORIZED || t->state == PT_STATE_PENDING_SETTLEMENT ||
			t->state == PT_STATE_SETTLED;
	return t->state == PT_STATE_PENDING_SETTLEMENT || t->state == PT_STATE_SETTLED;
}

/* Turn what an export shows into the answer the lost request would have had. */
static PtResult *
result_from_transaction(const Attempt *a, const PtTransaction *t)
{
	PtResult   *result = palloc0(sizeof(PtResult));

	result->outcome = shows_success(a, t) ? PT_APPROVED : PT_DECLINED;
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
 * Of the exported transactions, the one that is this attempt's outcome, or
 * NULL.  For a sale, authorization, ACH debit or refund: same invoice number,
 * amount and type, not created well before the attempt, not another
 * payment's; an approved one wins over a declined or voided one (which may
 * be an earlier attempt's).  Inside a worker transaction.
 */
static PtTransaction *
pick_outcome(const Attempt *a, List *candidates)
{
	PtTransaction *best = NULL;
	TimestampTz not_before = TimestampTzPlusMilliseconds(a->created_at, -LOOKUP_CLOCK_SKEW_MS);
	ListCell   *lc;

	foreach(lc, candidates)
	{
		PtTransaction *t = lfirst(lc);

		if (!matches(a, t) || (t->has_created_at && t->created_at < not_before) ||
			adopted_elsewhere(a, t->transaction_id))
			continue;
		if (best == NULL || (shows_success(a, t) && !shows_success(a, best)))
			best = t;
	}
	return best;
}

/* When to look an unknown attempt up again: sooner while it is young. */
static TimestampTz
next_lookup(const Attempt *a)
{
	TimestampTz now = GetCurrentTimestamp();
	long		age_ms = TimestampDifferenceMilliseconds(a->created_at, now);

	return TimestampTzPlusMilliseconds(now, Min(Max(age_ms / 4, LOOKUP_MIN_MS), LOOKUP_MAX_MS));
}

/*
 * Look a pending or unknown attempt up at PayTrace and record what it shows.
 * Returns 0 when the attempt is settled, or when to look again.
 *
 * Only what PayTrace shows concludes an attempt.  Not finding it proves
 * nothing (PayTrace may still process it, long after freshpay stopped
 * waiting): the attempt stays 'unknown', is looked up again, and blocks new
 * charges of its invoice until PayTrace shows it or a person settles it
 * (freshpay_resolve).  One exception is conclusive by PayTrace's rules: a
 * void of a transaction that has settled can no longer happen.
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
	bool		on_parent;

	/* The worker's own request is still out: its answer settles it. */
	if (in_flight_here(payment_id))
		return TimestampTzPlusMilliseconds(GetCurrentTimestamp(), LOOKUP_MIN_MS);

	caller = worker_begin();
	MemoryContextSwitchTo(context);
	a = attempt_load(payment_id, context);
	admin = is_in_flight(a->status) ? administration_load(a->administration, context) : NULL;
	worker_commit(caller);
	if (admin == NULL)
		return 0;

	/* Ask PayTrace.  Captures and voids show on the transaction they act on. */
	on_parent = strcmp(a->kind, "capture") == 0 || strcmp(a->kind, "void") == 0;
	if (on_parent)
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
	if (on_parent || a->has_transaction_id)
		found = candidates != NIL ? linitial(candidates) : NULL;
	else
		found = pick_outcome(a, candidates);

	if (found != NULL)
	{
		PtResult   *result = result_from_transaction(a, found);
		bool		conclusive;

		if (on_parent)
			/* Not visible on the parent yet: it may still be in process. */
			conclusive = result->outcome == PT_APPROVED ||
				(strcmp(a->kind, "void") == 0 && found->state == PT_STATE_SETTLED);
		else
			conclusive = true;
		if (conclusive)
		{
			if (result->outcome != PT_APPROVED && on_parent)
				result->message = psprintf("Transaction " INT64_FORMAT " settled before the void reached it.",
										   found->transaction_id);
			record_outcome(payment_id, result, "resolved");
			worker_commit(caller);
			return 0;
		}
	}

	/* Not found (yet): it stays unknown, and is looked up again. */
	if (strcmp(a->status, "pending") == 0)
	{
		Oid			types[] = {INT8OID};
		Datum		values[] = {Int64GetDatum(payment_id)};

		spi_run("UPDATE freshpay.payments SET status = 'unknown', updated_at = pg_catalog.now()"
				" WHERE id OPERATOR(pg_catalog.=) $1", 1, types, values, NULL, SPI_OK_UPDATE);
		history(payment_id, "pending", "unknown", 0, "lookup",
				"Not found at PayTrace yet. It is looked up again; until PayTrace shows it, or a person settles it with freshpay_resolve(), no new charge of the invoice is made.");
	}
	worker_commit(caller);
	return next_lookup(a);
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
				"   AND kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture', 'authorization', 'refund'])"
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
					"   AND kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture', 'refund'])"
					/* a refund settles under its own id, not under its sale's */
					"   AND (kind OPERATOR(pg_catalog.<>) 'refund' OR NOT EXISTS (SELECT FROM freshpay.payments s"
					"        WHERE s.id OPERATOR(pg_catalog.=) payments.parent_id"
					"          AND s.paytrace_transaction_id OPERATOR(pg_catalog.=) payments.paytrace_transaction_id))"
					"   AND batch_number IS DISTINCT FROM $3",
					4, types, values, nulls, SPI_OK_UPDATE) > 0)
			change = 'u';

		/* A void of it already recorded (one of ours, say) is not learned twice. */
		if ((t->state == PT_STATE_VOIDED || t->state == PT_STATE_DECLINED) &&
			(strcmp(status, "captured") == 0 || strcmp(status, "authorized") == 0) &&
			spi_run("SELECT 1 FROM freshpay.payments WHERE administration OPERATOR(pg_catalog.=) $1"
					"   AND paytrace_transaction_id OPERATOR(pg_catalog.=) $2"
					"   AND kind OPERATOR(pg_catalog.=) 'void'",
					2, types, values, NULL, SPI_OK_SELECT) == 0)
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

		/*
		 * One of freshpay's own attempts whose answer it does not have:
		 * PayTrace's record is its outcome.  An attempt still in flight is
		 * left to its answer.
		 */
		if (t->invoice_id[0] != '\0')
		{
			Oid			otypes[] = {TEXTOID, TEXTOID, TEXTOID, NUMERICOID};
			Datum		ovalues[] = {CStringGetTextDatum(administration), CStringGetTextDatum(t->invoice_id),
				CStringGetTextDatum(kind), t->amount};
			int64		own_id;

			if (spi_run("SELECT id, status FROM freshpay.payments"
						" WHERE administration OPERATOR(pg_catalog.=) $1"
						"   AND invoice_number OPERATOR(pg_catalog.=) $2"
						"   AND kind OPERATOR(pg_catalog.=) $3 AND amount OPERATOR(pg_catalog.=) $4"
						"   AND paytrace_transaction_id IS NULL"
						"   AND (status OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'unknown'])"
						"        OR (status OPERATOR(pg_catalog.=) 'failed' AND response_code IS NULL))"
						" ORDER BY (status OPERATOR(pg_catalog.=) 'failed'), id DESC LIMIT 1",
						4, otypes, ovalues, NULL, SPI_OK_SELECT) == 1)
			{
				spi_int64(1, &own_id);
				if (strcmp(spi_text(CurrentMemoryContext, 2), "pending") == 0)
					return 0;
				a = attempt_load(own_id, CurrentMemoryContext);
				return record_outcome(own_id, result_from_transaction(a, t), "learned") ? 'u' : 0;
			}
		}
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
