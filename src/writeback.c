/*-------------------------------------------------------------------------
 *
 * writeback.c
 *	  Payment outcomes → FreshPortal, exactly once, retried until done.
 *
 * FreshPortal does not reject duplicate registrations, so every write is
 * preceded by a lookup (GET /v1/payments?provider_transaction_id=): a write
 * whose answer was lost is found there on the retry instead of being made
 * twice.  Reversals check the registration's status first for the same
 * reason.
 *
 * A partial refund: FreshPortal registrations cannot be reduced, so the
 * sale's registration is reversed and the remainder (captured − refunded) is
 * registered anew, with provider_transaction_id "<sale>-r<refund>"; the sale
 * then points at that registration, so a later refund reverses it in turn.
 * Before the reversal is sent, the void or refund row takes over the id of
 * the registration it reverses and the sale is marked unregistered, in one
 * transaction: from then on freshpay counts the sale's remainder as money
 * FreshPortal does not know, so a collection meanwhile cannot take it again.
 * The remainder is then registered by the sale's own register job.
 *
 * Jobs run in the worker (worker.c); an ERROR here means "retry later with
 * backoff".  No transaction is open during the HTTP calls.  After each
 * write the invoice is re-read from FreshPortal so that the local amounts
 * and status are FreshPortal's.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/timestamp.h"

#include "administration.h"
#include "freshportal.h"
#include "worker.h"
#include "writeback.h"

/* A payment and what writing it back needs. */
typedef struct Written
{
	int64		payment_id;
	char	   *administration;
	char	   *kind;
	char	   *status;
	char	   *remaining;		/* amount − refunded_amount */
	char	   *transaction_id; /* as text */
	bool		registered;
	int64		freshportal_payment_id;
	int64		freshportal_invoice_id;
	char	   *currency;
	char	   *method;
	bool		has_parent;
	int64		parent_id;
	char	   *provider_id;	/* provider_transaction_id of its registration */
} Written;

static Written *
written_load(int64 payment_id, MemoryContext context)
{
	Oid			types[] = {INT8OID};
	Datum		values[] = {Int64GetDatum(payment_id)};
	Written    *w = MemoryContextAllocZero(context, sizeof(Written));

	if (spi_run("SELECT p.administration, p.kind, p.status,"
				"       p.amount OPERATOR(pg_catalog.-) p.refunded_amount,"
				"       p.paytrace_transaction_id::text, p.freshportal_payment_id,"
				"       i.freshportal_id, i.currency, c.payment_method, p.parent_id,"
				"       CASE WHEN p.refunded_amount OPERATOR(pg_catalog.>) 0 THEN"
				"         p.paytrace_transaction_id::text OPERATOR(pg_catalog.||) '-r' OPERATOR(pg_catalog.||)"
				"         (SELECT r.paytrace_transaction_id::text FROM freshpay.payments r"
				"           WHERE r.parent_id OPERATOR(pg_catalog.=) p.id AND r.kind OPERATOR(pg_catalog.=) 'refund'"
				"             AND r.status OPERATOR(pg_catalog.=) 'refunded' ORDER BY r.id DESC LIMIT 1)"
				"       ELSE p.paytrace_transaction_id::text END"
				"  FROM freshpay.payments p"
				"  LEFT JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) p.invoice_id"
				"  LEFT JOIN freshpay.customers c ON c.id OPERATOR(pg_catalog.=) p.customer_id"
				" WHERE p.id OPERATOR(pg_catalog.=) $1",
				1, types, values, NULL, SPI_OK_SELECT) == 0)
		elog(ERROR, "payment " INT64_FORMAT " does not exist", payment_id);
	w->payment_id = payment_id;
	w->administration = spi_text(context, 1);
	w->kind = spi_text(context, 2);
	w->status = spi_text(context, 3);
	w->remaining = spi_text(context, 4);
	w->transaction_id = spi_text(context, 5);
	w->registered = spi_int64(6, &w->freshportal_payment_id);
	spi_int64(7, &w->freshportal_invoice_id);
	w->currency = spi_text(context, 8);
	w->method = spi_text(context, 9);
	w->has_parent = spi_int64(10, &w->parent_id);
	w->provider_id = spi_text(context, 11);
	if (w->method == NULL || strcmp(w->kind, "ach_sale") == 0)
		w->method = strcmp(w->kind, "ach_sale") == 0 ? "ach" : "card";
	return w;
}

static void
note(int64 payment_id, const char *status, const char *event, const char *message)
{
	Oid			types[] = {INT8OID, TEXTOID, TEXTOID, TEXTOID};
	Datum		values[] = {Int64GetDatum(payment_id), CStringGetTextDatum(status),
	CStringGetTextDatum(event), CStringGetTextDatum(message)};

	spi_run("INSERT INTO freshpay.payment_history (payment_id, old_status, new_status, event, message)"
			" VALUES ($1, $2, $2, $3, $4)", 4, types, values, NULL, SPI_OK_INSERT);
}

static void
set_registration(int64 payment_id, bool registered, int64 freshportal_payment_id)
{
	Oid			types[] = {INT8OID, INT8OID};
	Datum		values[] = {Int64GetDatum(payment_id), Int64GetDatum(freshportal_payment_id)};
	char		nulls[] = {' ', registered ? ' ' : 'n'};

	spi_run("UPDATE freshpay.payments SET freshportal_payment_id = $2, updated_at = pg_catalog.now()"
			" WHERE id OPERATOR(pg_catalog.=) $1", 2, types, values, nulls, SPI_OK_UPDATE);
}

/* The local invoice takes FreshPortal's amounts and status. */
static void
refresh_invoice(const Administration *admin, int64 freshportal_invoice_id)
{
	FpInvoice  *inv = freshportal_get_invoice(admin, freshportal_invoice_id);
	MemoryContext caller = worker_begin();
	Oid			types[] = {TEXTOID, INT8OID, NUMERICOID, NUMERICOID, TEXTOID, TIMESTAMPTZOID, JSONBOID};
	Datum		values[] = {
		CStringGetTextDatum(admin->name), Int64GetDatum(freshportal_invoice_id),
		inv->amount_paid, inv->open_amount, CStringGetTextDatum(inv->status),
		TimestampTzGetDatum(inv->mutation_time), inv->raw
	};

	spi_run("UPDATE freshpay.invoices"
			"   SET amount_paid = $3, open_amount = $4, status = $5, mutation_time = $6,"
			"       raw = $7, synced_at = pg_catalog.now()"
			" WHERE administration OPERATOR(pg_catalog.=) $1"
			"   AND freshportal_id OPERATOR(pg_catalog.=) $2"
			"   AND mutation_time OPERATOR(pg_catalog.<=) $6",
			7, types, values, NULL, SPI_OK_UPDATE);
	worker_commit(caller);
}

/*
 * Register amount against the invoice under provider_transaction_id,
 * unless FreshPortal already has it.  Returns FreshPortal's payment id.
 */
static int64
register_once(const Administration *admin, const Written *w, const char *amount,
			  const char *provider_transaction_id, bool *created)
{
	List	   *existing = freshportal_find_payments(admin, provider_transaction_id);
	ListCell   *lc;
	FpRegistration r = {0};

	*created = false;
	/*
	 * Checked here, not only by FreshPortal's filter: a payment counts as
	 * ours only with our provider id on our invoice.
	 */
	foreach(lc, existing)
	{
		FpPayment  *p = lfirst(lc);

		if (strcmp(p->status, "reversed") != 0 && p->invoice_id == w->freshportal_invoice_id &&
			p->provider_transaction_id != NULL &&
			strcmp(p->provider_transaction_id, provider_transaction_id) == 0)
			return p->id;
	}
	r.invoice_id = w->freshportal_invoice_id;
	r.amount = amount;
	r.currency = w->currency;
	r.method = w->method;
	r.provider_transaction_id = provider_transaction_id;
	r.payment_date = date_of_timestamp(GetCurrentTimestamp());
	*created = true;
	return freshportal_register_payment(admin, &r);
}

/* Job register_payment: captured money → a FreshPortal registration. */
void
writeback_register(int64 payment_id)
{
	MemoryContext context = CurrentMemoryContext;
	MemoryContext caller;
	Written    *w;
	Administration *admin;
	int64		freshportal_payment_id;
	bool		created;

	caller = worker_begin();
	MemoryContextSwitchTo(context);
	w = written_load(payment_id, context);
	admin = administration_load(w->administration, context);
	worker_commit(caller);

	/*
	 * Voided or fully refunded before it was registered, or made at PayTrace
	 * for no invoice freshpay knows: nothing to write.
	 */
	if (w->registered || strcmp(w->status, "captured") != 0 || w->transaction_id == NULL ||
		w->freshportal_invoice_id == 0)
		return;

	freshportal_payment_id = register_once(admin, w, w->remaining,
										   w->provider_id ? w->provider_id : w->transaction_id, &created);

	caller = worker_begin();
	set_registration(payment_id, true, freshportal_payment_id);
	note(payment_id, w->status, "registered",
		 psprintf("%s in FreshPortal as payment " INT64_FORMAT,
				  created ? "Registered" : "Found already registered", freshportal_payment_id));
	worker_commit(caller);
	refresh_invoice(admin, w->freshportal_invoice_id);
}

/* Job reverse_payment: a void or refund undoes the sale's registration. */
void
writeback_reverse(int64 payment_id)
{
	MemoryContext context = CurrentMemoryContext;
	MemoryContext caller;
	Written    *w;
	Written    *sale;
	Administration *admin;
	int64		reversing;

	caller = worker_begin();
	MemoryContextSwitchTo(context);
	w = written_load(payment_id, context);
	sale = w->has_parent ? written_load(w->parent_id, context) : NULL;
	admin = administration_load(w->administration, context);
	worker_commit(caller);

	if (sale == NULL)
		return;
	if (w->registered)
		/* An earlier run took the registration over: reverse it. */
		reversing = w->freshportal_payment_id;
	else if (sale->registered)
	{
		/* Take it over before anything is sent (see the header comment). */
		reversing = sale->freshportal_payment_id;
		caller = worker_begin();
		set_registration(payment_id, true, reversing);
		set_registration(sale->payment_id, false, 0);
		note(sale->payment_id, sale->status, "reversing",
			 psprintf("FreshPortal payment " INT64_FORMAT " is being reversed", reversing));
		worker_commit(caller);
	}
	else
		/* Never registered: its register job sees the new status (or the remainder). */
		return;

	if (strcmp(freshportal_get_payment(admin, reversing)->status, "reversed") != 0)
		freshportal_reverse_payment(admin, reversing,
									strcmp(w->kind, "void") == 0 ? "voided" : "refunded",
									w->transaction_id ? w->transaction_id : "",
									date_of_timestamp(GetCurrentTimestamp()));

	/* Reversed: the rest of a partly refunded sale is registered anew. */
	caller = worker_begin();
	note(payment_id, w->status, "reversed",
		 psprintf("Reversed FreshPortal payment " INT64_FORMAT, reversing));
	if (strcmp(sale->status, "captured") == 0 && strcmp(sale->remaining, "0.00") != 0)
		job_queue("register_payment", sale->payment_id, 0);
	worker_commit(caller);
	refresh_invoice(admin, sale->freshportal_invoice_id);
}
