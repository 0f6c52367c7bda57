/*-------------------------------------------------------------------------
 *
 * payments.c
 *	  The payments ledger: freshpay.payments and its history, what an
 *	  outcome changes (parent statuses, write-back jobs), and what
 *	  PayTrace's exports say of payments.
 *
 * Every function runs inside the caller's transaction with SPI connected
 * (a worker step or a SQL function); none makes a remote call.
 *
 * The local invoice mirrors FreshPortal only (the sync and the write-back
 * write it); what freshpay collected and FreshPortal does not know yet is
 * computed from freshpay.payments (captured, not registered).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "jobs.h"
#include "money.h"
#include "payments.h"
#include "spi_txn.h"

/* An exported transaction created this long before the attempt is not its outcome. */
#define LOOKUP_CLOCK_SKEW_MS (10 * 60 * 1000L)

void
payments_history(int64 payment_id, const char *old_status, const char *new_status,
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

	fp_spi_run("INSERT INTO freshpay.payment_history"
			" (payment_id, old_status, new_status, response_code, event, message)"
			" VALUES ($1, $2, $3, $4, $5, $6)",
			6, types, values, nulls, SPI_OK_INSERT);
}

/* Load a payment, locked, into context.  Inside a worker transaction. */
Attempt *
payments_load(int64 payment_id, MemoryContext context)
{
	Oid			types[] = {INT8OID};
	Datum		values[] = {Int64GetDatum(payment_id)};
	Attempt    *a = MemoryContextAllocZero(context, sizeof(Attempt));
	bool		isnull;

	if (fp_spi_run("SELECT p.administration, p.kind, p.status, p.amount, p.invoice_number,"
				"       p.invoice_id, p.paytrace_transaction_id, p.parent_id,"
				"       parent.paytrace_transaction_id,"
				"       p.created_at, p.response_code IS NOT NULL, p.idempotency_key::text,"
				"       p.idempotency_key IS NOT NULL OR parent.idempotency_key IS NOT NULL"
				"  FROM freshpay.payments p"
				"  LEFT JOIN freshpay.payments parent ON parent.id OPERATOR(pg_catalog.=) p.parent_id"
				" WHERE p.id OPERATOR(pg_catalog.=) $1"
				"   FOR UPDATE OF p",
				1, types, values, NULL, SPI_OK_SELECT) == 0)
		fp_refuse(ERRCODE_NO_DATA_FOUND, "payment_id is freshpay.payments.id.",
			  "payment " INT64_FORMAT " does not exist", payment_id);
	a->payment_id = payment_id;
	a->administration = fp_spi_text(context, 1);
	a->kind = fp_spi_text(context, 2);
	a->status = fp_spi_text(context, 3);
	a->amount = fp_spi_text(context, 4);
	a->invoice_number = fp_spi_text(context, 5);
	a->has_invoice = fp_spi_int64(6, &a->invoice_id);
	a->has_transaction_id = fp_spi_int64(7, &a->transaction_id);
	a->has_parent = fp_spi_int64(8, &a->parent_id);
	fp_spi_int64(9, &a->parent_transaction_id);
	a->created_at = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0],
													  SPI_tuptable->tupdesc, 10, &isnull));
	a->has_response_code = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
													  SPI_tuptable->tupdesc, 11, &isnull));
	a->idempotency_key = fp_spi_text(context, 12);
	a->ach_v3 = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 13, &isnull));
	return a;
}

bool
payments_in_flight(const char *status)
{
	return strcmp(status, "pending") == 0 || strcmp(status, "unknown") == 0;
}

static void
set_parent_status(int64 parent_id, const char *status)
{
	Oid			types[] = {INT8OID, TEXTOID};
	Datum		values[] = {Int64GetDatum(parent_id), CStringGetTextDatum(status)};
	char		old_status[32] = "";

	if (fp_spi_run("SELECT status FROM freshpay.payments WHERE id OPERATOR(pg_catalog.=) $1",
				1, types, values, NULL, SPI_OK_SELECT) == 1)
		strlcpy(old_status, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1),
				sizeof(old_status));
	fp_spi_run("UPDATE freshpay.payments SET status = $2, updated_at = pg_catalog.now()"
			" WHERE id OPERATOR(pg_catalog.=) $1",
			2, types, values, NULL, SPI_OK_UPDATE);
	payments_history(parent_id, old_status, status, 0, "followed", "a capture, void or refund of it succeeded");
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
		/* A card's sale or capture gets its invoice's lines as Level 3 data. */
		if (strcmp(a->kind, "ach_sale") != 0 && a->has_invoice)
		{
			Datum		values[] = {Int64GetDatum(a->payment_id), (Datum) 0};

			if (fp_spi_run("UPDATE freshpay.payments p SET level3_status = 'pending'"
						   "  FROM freshpay.administrations a"
						   " WHERE p.id OPERATOR(pg_catalog.=) $1"
						   "   AND a.name OPERATOR(pg_catalog.=) p.administration AND a.level3_enabled",
						   1, types, values, NULL, SPI_OK_UPDATE) == 1)
				job_queue("send_level3", a->payment_id, 0);
		}
	}
	else if (strcmp(a->kind, "void") == 0)
	{
		Datum		values[] = {Int64GetDatum(a->parent_id), (Datum) 0};
		char	   *parent_kind;

		fp_spi_run("SELECT kind FROM freshpay.payments WHERE id OPERATOR(pg_catalog.=) $1",
				1, types, values, NULL, SPI_OK_SELECT);
		parent_kind = fp_spi_text(CurrentMemoryContext, 1);
		set_parent_status(a->parent_id, "voided");
		if (strcmp(parent_kind, "authorization") != 0)
			job_queue("reverse_payment", a->payment_id, 0);
	}
	else if (strcmp(a->kind, "refund") == 0)
	{
		Datum		values[] = {Int64GetDatum(a->parent_id), money_numeric(a->amount)};

		fp_spi_run("UPDATE freshpay.payments"
				"   SET refunded_amount = refunded_amount OPERATOR(pg_catalog.+) $2,"
				"       updated_at = pg_catalog.now()"
				" WHERE id OPERATOR(pg_catalog.=) $1",
				2, types, values, NULL, SPI_OK_UPDATE);
		if (fp_spi_run("SELECT 1 FROM freshpay.payments WHERE id OPERATOR(pg_catalog.=) $1"
					" AND refunded_amount OPERATOR(pg_catalog.=) amount",
					1, types, values, NULL, SPI_OK_SELECT) == 1)
			set_parent_status(a->parent_id, "refunded");

		/*
		 * A statement's refund comes off its allocations newest invoice
		 * first (latest invoice date, then highest number): the invoices
		 * paid longest stay paid.  The write-back reverses the registrations
		 * that no longer match and registers what is left.
		 */
		fp_spi_run("WITH a AS ("
				   "  SELECT a.invoice_id, a.amount, pg_catalog.sum(a.amount) OVER ("
				   "           ORDER BY i.invoice_date DESC, i.number DESC, i.id DESC"
				   "           ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS newer"
				   "    FROM freshpay.payment_allocations a JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) a.invoice_id"
				   "   WHERE a.payment_id OPERATOR(pg_catalog.=) $1)"
				   " UPDATE freshpay.payment_allocations x"
				   "    SET amount = x.amount OPERATOR(pg_catalog.-) LEAST(a.amount, $2 OPERATOR(pg_catalog.-) COALESCE(a.newer, 0))"
				   "   FROM a WHERE x.payment_id OPERATOR(pg_catalog.=) $1 AND x.invoice_id OPERATOR(pg_catalog.=) a.invoice_id"
				   "    AND $2 OPERATOR(pg_catalog.>) COALESCE(a.newer, 0)",
				   2, types, values, NULL, SPI_OK_UPDATE);
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
bool
payments_record_outcome(int64 payment_id, const PtResult *result, const char *event)
{
	Attempt    *a = payments_load(payment_id, CurrentMemoryContext);
	const char *status;
	bool		has_id = result->has_transaction_id;
	int64		transaction_id = result->transaction_id;
	Oid			types[] = {INT8OID, TEXTOID, INT8OID, INT4OID, TEXTOID, TEXTOID};
	Datum		values[6];
	char		nulls[6];

	if (!payments_in_flight(a->status))
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
	fp_spi_run("UPDATE freshpay.payments"
			"   SET status = $2,"
			"       paytrace_transaction_id = COALESCE($3, paytrace_transaction_id),"
			"       response_code = COALESCE($4, response_code),"
			"       approval_code = COALESCE($5, approval_code),"
			"       message = COALESCE($6, message),"
			"       updated_at = pg_catalog.now()"
			" WHERE id OPERATOR(pg_catalog.=) $1",
			6, types, values, nulls, SPI_OK_UPDATE);
	payments_history(payment_id, a->status, status, result->response_code, event, result->message);

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

/* Does an exported transaction stand for this attempt? */
static bool
matches(const Attempt *a, const PtTransaction *t)
{
	const char *type = t->type ? t->type : "";

	if (strcmp(t->invoice_id, a->invoice_number ? a->invoice_number : "") != 0)
		return false;
	if (money_compare(money_text(t->amount), a->amount) != 0)
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
PtResult *
payments_result_from(const Attempt *a, const PtTransaction *t)
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

	return fp_spi_run("SELECT 1 FROM freshpay.payments WHERE administration OPERATOR(pg_catalog.=) $1"
				   " AND paytrace_transaction_id OPERATOR(pg_catalog.=) $2 AND idempotency_key IS NULL"
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
PtTransaction *
payments_pick_outcome(const Attempt *a, List *candidates)
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

/*
 * A refund made outside freshpay (PayTrace's Virtual Terminal): recorded as a
 * refund row of the payment it refunds, so that everything a refund of ours
 * does follows (the parent's refunded amount and status, the reversal in
 * FreshPortal and the remainder registered anew).  The export does not name
 * the refunded transaction [G]: the parent is freshpay's latest collection
 * of the refund's invoice number with at least that much left to refund.
 * Returns false (nothing recorded) when there is none.
 */
static bool
record_outside_refund(const char *administration, const PtTransaction *t)
{
	Oid			types[] = {TEXTOID, TEXTOID, NUMERICOID, INT8OID, TEXTOID};
	Datum		values[] = {CStringGetTextDatum(administration), CStringGetTextDatum(t->invoice_id),
		t->amount, Int64GetDatum(t->transaction_id),
		CStringGetTextDatum(psprintf("Refunded at PayTrace, outside freshpay (transaction " INT64_FORMAT ").",
									 t->transaction_id))};
	int64		refund_id;
	PtResult	result = {0};

	if (t->invoice_id[0] == '\0' ||
		fp_spi_run("WITH parent AS ("
				   "  SELECT p.id FROM freshpay.payments p"
				   "   WHERE p.administration OPERATOR(pg_catalog.=) $1"
				   "     AND p.invoice_number OPERATOR(pg_catalog.=) $2"
				   "     AND p.kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture'])"
				   "     AND p.status OPERATOR(pg_catalog.=) 'captured'"
				   "     AND p.amount OPERATOR(pg_catalog.-) p.refunded_amount OPERATOR(pg_catalog.>=) $3"
				   "   ORDER BY p.id DESC LIMIT 1 FOR UPDATE)"
				   " INSERT INTO freshpay.payments"
				   " (administration, invoice_id, customer_id, kind, parent_id, amount, status,"
				   "  invoice_number, message, requested_by)"
				   " SELECT p.administration, p.invoice_id, p.customer_id, 'refund', p.id, $3, 'pending',"
				   "        p.invoice_number, $5, 'paytrace'"
				   "   FROM parent JOIN freshpay.payments p ON p.id OPERATOR(pg_catalog.=) parent.id"
				   " RETURNING id",
				   5, types, values, NULL, SPI_OK_INSERT_RETURNING) != 1)
		return false;
	fp_spi_int64(1, &refund_id);
	payments_history(refund_id, NULL, "pending", 0, "learned", "A refund made at PayTrace outside freshpay.");
	result.outcome = PT_APPROVED;
	result.retry_after = -1;
	result.has_transaction_id = true;
	result.transaction_id = t->transaction_id;
	result.message = TextDatumGetCString(values[4]);
	return payments_record_outcome(refund_id, &result, "learned");
}

/*
 * The payment request of ours this transaction was paid through: one of the
 * invoice's requests that was open (sent, or unknown: PayTrace may have made
 * it), or that expired after the payment was made.  Locked; 0 when none.
 */
static int64
request_paid_through(const char *administration, const PtTransaction *t, const char *kind)
{
	Oid			types[] = {TEXTOID, TEXTOID, TIMESTAMPTZOID};
	Datum		values[] = {CStringGetTextDatum(administration), CStringGetTextDatum(t->invoice_id),
	TimestampTzGetDatum(t->created_at)};
	char		nulls[] = {' ', ' ', t->has_created_at ? ' ' : 'n'};
	int64		id = 0;

	if (t->invoice_id[0] == '\0' || strcmp(kind, "ach_sale") == 0)
		return 0;
	if (fp_spi_run("SELECT q.id FROM freshpay.payment_requests q"
				   "  JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) q.invoice_id"
				   " WHERE q.administration OPERATOR(pg_catalog.=) $1"
				   "   AND i.number OPERATOR(pg_catalog.=) $2"
				   "   AND q.payment_id IS NULL AND q.mode OPERATOR(pg_catalog.<>) 'onboard'"
				   "   AND (q.status OPERATOR(pg_catalog.=) ANY (ARRAY['sent', 'unknown'])"
				   "        OR (q.status OPERATOR(pg_catalog.=) 'expired'"
				   "            AND $3 OPERATOR(pg_catalog.<=) q.expires_at))"
				   " ORDER BY q.id DESC LIMIT 1 FOR UPDATE OF q",
				   3, types, values, nulls, SPI_OK_SELECT) == 1)
		fp_spi_int64(1, &id);
	return id;
}

/*
 * A payment request was paid with payment_id: the request says so, and a
 * payer who stored a card links the customer to the new vault profile (a
 * customer already linked keeps the profile it has).
 */
static void
request_settle(int64 request_id, int64 payment_id, const PtTransaction *t)
{
	Oid			types[] = {INT8OID, INT8OID, TEXTOID};
	Datum		values[] = {Int64GetDatum(request_id), Int64GetDatum(payment_id),
	CStringGetTextDatum(t->customer_id ? t->customer_id : "")};
	bool		linked;

	linked = t->customer_id != NULL && t->customer_id[0] != '\0' &&
		fp_spi_run("UPDATE freshpay.customers c SET paytrace_customer_id = $3, payment_method = 'card'"
				   "  FROM freshpay.payment_requests q"
				   " WHERE q.id OPERATOR(pg_catalog.=) $1 AND c.id OPERATOR(pg_catalog.=) q.customer_id"
				   "   AND c.paytrace_customer_id IS NULL",
				   3, types, values, NULL, SPI_OK_UPDATE) > 0;
	fp_spi_run(linked
			   ? "UPDATE freshpay.payment_requests SET status = 'onboarded', payment_id = $2,"
			   "       message = 'Paid; the payer stored a card, and the customer is linked to it.',"
			   "       updated_at = pg_catalog.now() WHERE id OPERATOR(pg_catalog.=) $1"
			   : "UPDATE freshpay.payment_requests SET status = 'paid', payment_id = $2,"
			   "       message = 'Paid.', updated_at = pg_catalog.now() WHERE id OPERATOR(pg_catalog.=) $1",
			   2, types, values, NULL, SPI_OK_UPDATE);
}

/* Is a void of this payment recorded (by its transaction), or one of ours in flight? */
static bool
void_known(const char *administration, int64 transaction_id, int64 payment_id)
{
	Oid			types[] = {TEXTOID, INT8OID, INT8OID};
	Datum		values[] = {CStringGetTextDatum(administration), Int64GetDatum(transaction_id),
	Int64GetDatum(payment_id)};

	return fp_spi_run("SELECT 1 FROM freshpay.payments WHERE administration OPERATOR(pg_catalog.=) $1"
					  "   AND kind OPERATOR(pg_catalog.=) 'void'"
					  "   AND (paytrace_transaction_id OPERATOR(pg_catalog.=) $2"
					  "        OR (parent_id OPERATOR(pg_catalog.=) $3"
					  "            AND status OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'unknown'])))",
					  3, types, values, NULL, SPI_OK_SELECT) > 0;
}

/*
 * A void made at PayTrace outside freshpay (its Virtual Terminal, say) of
 * payment_id: recorded as a 'void' row, so that everything a void of ours
 * does follows (parent status, the reversal in FreshPortal).  Not when a
 * void of it is recorded already, or one of ours is in flight (its answer
 * records it).  Returns whether it was recorded.
 */
bool
payments_record_outside_void(const char *administration, int64 payment_id, int64 transaction_id,
							 const char *status_message)
{
	Oid			types[] = {INT8OID, INT8OID, TEXTOID};
	Datum		values[] = {Int64GetDatum(payment_id), Int64GetDatum(transaction_id),
		CStringGetTextDatum(psprintf("Voided at PayTrace, outside freshpay: %s",
									 status_message ? status_message : "no status"))};
	int64		void_id;
	PtResult	result = {0};

	if (void_known(administration, transaction_id, payment_id))
		return false;
	fp_spi_run("INSERT INTO freshpay.payments"
			   " (administration, invoice_id, customer_id, kind, parent_id, amount, status,"
			   "  paytrace_transaction_id, message, invoice_number, requested_by)"
			   " SELECT administration, invoice_id, customer_id, 'void', id,"
			   "        amount OPERATOR(pg_catalog.-) refunded_amount, 'pending', $2, $3,"
			   "        invoice_number, 'paytrace'"
			   "   FROM freshpay.payments WHERE id OPERATOR(pg_catalog.=) $1"
			   " RETURNING id",
			   3, types, values, NULL, SPI_OK_INSERT_RETURNING);
	fp_spi_int64(1, &void_id);
	payments_history(void_id, NULL, "pending", 0, "learned", "A void made at PayTrace outside freshpay.");
	result.outcome = PT_APPROVED;
	result.retry_after = -1;
	result.message = psprintf("Voided at PayTrace, outside freshpay (transaction " INT64_FORMAT ").",
							  transaction_id);
	return payments_record_outcome(void_id, &result, "learned");
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
payments_apply_paytrace(const char *administration, const PtTransaction *t)
{
	Oid			types[] = {TEXTOID, INT8OID, INT4OID, TIMESTAMPTZOID};
	Datum		values[] = {CStringGetTextDatum(administration), Int64GetDatum(t->transaction_id),
		Int32GetDatum(t->batch_number), TimestampTzGetDatum(t->settled_at)};
	char		nulls[] = {' ', ' ', ' ', t->has_settled_at ? ' ' : 'n'};
	int64		payment_id;
	char	   *status;
	char		change = 0;

	/* (a v1 export never shows a debit or refund made through v3: those are ach.c's) */
	if (fp_spi_run("SELECT id, status FROM freshpay.payments"
				" WHERE administration OPERATOR(pg_catalog.=) $1"
				"   AND paytrace_transaction_id OPERATOR(pg_catalog.=) $2"
				"   AND idempotency_key IS NULL"
				"   AND kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture', 'authorization', 'refund'])"
				" ORDER BY (kind OPERATOR(pg_catalog.=) 'authorization'), id LIMIT 1",
				2, types, values, NULL, SPI_OK_SELECT) == 1)
	{
		fp_spi_int64(1, &payment_id);
		status = fp_spi_text(CurrentMemoryContext, 2);

		if (t->state == PT_STATE_SETTLED)
		{
			int64		settled;

			settled = fp_spi_run("UPDATE freshpay.payments SET batch_number = $3, settled_at = $4,"
								 "       updated_at = pg_catalog.now()"
								 " WHERE administration OPERATOR(pg_catalog.=) $1"
								 "   AND paytrace_transaction_id OPERATOR(pg_catalog.=) $2"
								 "   AND idempotency_key IS NULL"
								 "   AND kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture', 'refund'])"
			/* a refund settles under its own id, not under its sale's */
								 "   AND (kind OPERATOR(pg_catalog.<>) 'refund' OR NOT EXISTS (SELECT FROM freshpay.payments s"
								 "        WHERE s.id OPERATOR(pg_catalog.=) payments.parent_id"
								 "          AND s.paytrace_transaction_id OPERATOR(pg_catalog.=) payments.paytrace_transaction_id))"
								 "   AND batch_number IS DISTINCT FROM $3"
								 " RETURNING CASE WHEN kind OPERATOR(pg_catalog.<>) 'refund' THEN id END",
								 4, types, values, nulls, SPI_OK_UPDATE_RETURNING);
			/*
			 * Settled: FreshPortal's registrations of it are looked up once
			 * more, so that one made again by someone else shows
			 * (reconciliation's registered_twice); not a refund's.
			 */
			(void) job_queue_each("check_registrations", 1);
			if (settled > 0)
				change = 'u';
		}

		/*
		 * A void of it already recorded (one of ours, say) is not learned
		 * twice, nor one of ours still in flight: its answer records it.
		 */
		if ((t->state == PT_STATE_VOIDED || t->state == PT_STATE_DECLINED) &&
			(strcmp(status, "captured") == 0 || strcmp(status, "authorized") == 0) &&
			payments_record_outside_void(administration, payment_id, t->transaction_id, t->status_message))
			change = 'u';
		return change;
	}

	/* A transaction freshpay did not make. */
	if (t->state == PT_STATE_PENDING_SETTLEMENT || t->state == PT_STATE_SETTLED ||
		t->state == PT_STATE_AUTHORIZED)
	{
		const char *type = t->type ? t->type : "";
		const char *kind = pg_strcasecmp(type, "SALE") == 0 ? "sale" :
			pg_strncasecmp(type, "CHECK", 5) == 0 ? "ach_sale" :
			pg_strncasecmp(type, "AUTH", 4) == 0 ? "authorization" :
			pg_strcasecmp(type, "REFUND") == 0 ? "refund" : NULL;
		Oid			itypes[] = {TEXTOID, INT8OID, TEXTOID, NUMERICOID, TEXTOID, TEXTOID, INT4OID,
		TIMESTAMPTZOID, TEXTOID, TEXTOID, TEXTOID};
		Datum		ivalues[11];
		char		inulls[11];
		int64		request_id;
		int64		new_id;
		Attempt    *a;

		if (kind == NULL)
			return 0;

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

			if (fp_spi_run("SELECT id, status FROM freshpay.payments"
						" WHERE administration OPERATOR(pg_catalog.=) $1"
						"   AND invoice_number OPERATOR(pg_catalog.=) $2"
						"   AND kind OPERATOR(pg_catalog.=) $3 AND amount OPERATOR(pg_catalog.=) $4"
						"   AND paytrace_transaction_id IS NULL AND idempotency_key IS NULL"
						"   AND (status OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'unknown'])"
						"        OR (status OPERATOR(pg_catalog.=) 'failed' AND response_code IS NULL))"
						" ORDER BY (status OPERATOR(pg_catalog.=) 'failed'), id DESC LIMIT 1",
						4, otypes, ovalues, NULL, SPI_OK_SELECT) == 1)
			{
				fp_spi_int64(1, &own_id);
				if (strcmp(fp_spi_text(CurrentMemoryContext, 2), "pending") == 0)
					return 0;
				a = payments_load(own_id, CurrentMemoryContext);
				return payments_record_outcome(own_id, payments_result_from(a, t), "learned") ? 'u' : 0;
			}
		}
		/* A refund made at PayTrace of money freshpay collected. */
		if (strcmp(kind, "refund") == 0)
			return record_outside_refund(administration, t) ? 'i' : 0;

		request_id = request_paid_through(administration, t, kind);
		ivalues[0] = CStringGetTextDatum(administration);
		ivalues[1] = Int64GetDatum(t->transaction_id);
		ivalues[2] = CStringGetTextDatum(kind);
		ivalues[3] = t->amount;
		ivalues[4] = CStringGetTextDatum(strcmp(kind, "authorization") == 0 ? "authorized" : "captured");
		ivalues[5] = CStringGetTextDatum(t->invoice_id);
		ivalues[6] = Int32GetDatum(t->batch_number);
		ivalues[7] = TimestampTzGetDatum(t->settled_at);
		ivalues[8] = t->approval_code ? CStringGetTextDatum(t->approval_code) : (Datum) 0;
		ivalues[9] = CStringGetTextDatum(request_id ? "payment request" : "paytrace");
		ivalues[10] = CStringGetTextDatum(request_id ? psprintf("Paid through payment request " INT64_FORMAT ".", request_id)
										  : "Made at PayTrace, outside freshpay.");
		memset(inulls, ' ', sizeof(inulls));
		inulls[6] = t->batch_number ? ' ' : 'n';
		inulls[7] = t->has_settled_at ? ' ' : 'n';
		inulls[8] = t->approval_code && t->approval_code[0] ? ' ' : 'n';
		fp_spi_run("INSERT INTO freshpay.payments"
				" (administration, invoice_id, customer_id, kind, amount, status,"
				"  paytrace_transaction_id, invoice_number, batch_number, settled_at,"
				"  approval_code, message, requested_by)"
				" SELECT $1, i.id, i.customer_id, $3, $4, 'pending', $2, NULLIF($6, ''), $7, $8, $9,"
				"        $11, $10"
				"   FROM (SELECT 1) one"
				"   LEFT JOIN freshpay.invoices i ON i.administration OPERATOR(pg_catalog.=) $1"
				"        AND i.number OPERATOR(pg_catalog.=) $6"
				" ORDER BY i.id LIMIT 1"
				" RETURNING id",
				11, itypes, ivalues, inulls, SPI_OK_INSERT_RETURNING);
		fp_spi_int64(1, &new_id);
		payments_history(new_id, NULL, "pending", 0, "learned",
						 request_id ? "A payment made through a payment request." : "A transaction made at PayTrace outside freshpay.");
		/* Recorded as approved, so that the invoice and FreshPortal follow. */
		a = payments_load(new_id, CurrentMemoryContext);
		{
			Oid			stypes[] = {INT8OID, TEXTOID};
			Datum		svalues[] = {Int64GetDatum(new_id), CStringGetTextDatum(success_status(kind))};

			fp_spi_run("UPDATE freshpay.payments SET status = $2 WHERE id OPERATOR(pg_catalog.=) $1",
					   2, stypes, svalues, NULL, SPI_OK_UPDATE);
		}
		payments_history(new_id, "pending", success_status(kind), 0, "learned", NULL);
		apply_success(a);

		/*
		 * First seen settled (made in PayTrace's terminal before a pull saw
		 * it, say): FreshPortal's registrations of it are looked up as at
		 * settlement, under every provider id freshpay uses for it.
		 */
		if (t->state == PT_STATE_SETTLED && strcmp(kind, "authorization") != 0)
			job_queue("check_registrations", new_id, 0);
		if (request_id != 0)
			request_settle(request_id, new_id, t);
		return 'i';
	}
	return 0;
}
