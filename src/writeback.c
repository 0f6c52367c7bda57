/*-------------------------------------------------------------------------
 *
 * writeback.c
 *	  Payment outcomes → FreshPortal, exactly once, retried until done.
 *
 * FreshPortal does not reject duplicate registrations, so every write is
 * preceded by a lookup (GET /v1/payments?provider_transaction_id=): a write
 * whose answer was lost is found there on the retry instead of being made
 * twice.  The lookup is made even when the payment was voided or refunded
 * meanwhile: a registration found then is recorded, and the void's or
 * refund's reversal, which had found nothing to take back, runs again
 * (reverse_again_if_stale); so does it when a registration's late answer
 * arrives after the void.  Reversals check the registration's status first
 * for the same reason.
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
 * An ACH debit that came back ('returned') reverses its own registration,
 * which it keeps, as the record of what was reversed.
 *
 * A statement (statement.c) is registered allocation by allocation, one
 * registration per invoice, all naming its one transaction.  Each run first
 * looks up every provider id used for the transaction at once (the sweep)
 * and adopts the live registrations of its invoices it has not recorded;
 * a match is by invoice as well as provider id.  Its
 * void or refund first takes over, in one transaction, every registration
 * that no longer matches its allocation (all, for a void; those a refund
 * reduced, newest invoice first, see payments.c) as rows of
 * allocation_reversals, and reverses them one after the other; then what
 * is left of each reduced allocation is registered anew, as for a sale.
 *
 Each job is a flow of the worker's pipeline (flow.h):
 *
 *	  START      a transaction loads the payment (and, for a reversal, takes
 *	             the registration over); nothing to do ends the job
 *	  FIND       GET /v1/payments?provider_transaction_id=: a write whose
 *	             answer was lost is found there
 *	  REGISTER   POST the registration (or CHECK the registration's status
 *	             and REVERSE it)
 *	  RECORD     one transaction records the registration, the invoice as
 *	             FreshPortal's answer shows it, and the job done; COMMIT
 *	  REFRESH    only when the answer did not show the invoice: re-read it
 *
 * Every registration a lookup sees (FIND, the sweep) is recorded in
 * freshpay.freshportal_registrations, freshpay's own and any made by someone
 * else, and so is each registration freshpay makes: reconciliation's
 * registered_twice is one transaction registered more than once on an
 * invoice.  A registration recorded earlier that a complete answer under
 * its provider id no longer shows is recorded 'gone' (deleted in
 * FreshPortal, or its provider id changed there).  A check_registrations job
 * (queued when PayTrace settles a transaction, or when the pull first sees
 * one settled, payments.c) is the sweep alone: it looks up every provider
 * id of the payment, a single sale's as a statement's, records what it
 * finds, and adopts nothing.  While a settled transaction shows registered
 * twice, every lookup of it that leaves it so queues the next check
 * REGISTRATIONS_RECHECK_MS later, so that an extra registration reversed or
 * deleted in FreshPortal stops showing by itself; freshpay_sync() makes
 * those checks due at once (writeback_recheck_registered_twice).
 *
 * An ERROR anywhere means "retry later with backoff"; the job never dies.
 * No transaction is open during the HTTP calls.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "administration.h"
#include "freshportal.h"
#include "jobs.h"
#include "mailbox.h"
#include "money.h"
#include "spi_txn.h"
#include "writeback.h"

/*
 * How long after a look that left a settled transaction registered twice
 * its registrations are looked up again: a person is asked to reverse the
 * extra one in FreshPortal, which takes hours rather than seconds, and each
 * look costs a FreshPortal call per provider id.
 */
#define REGISTRATIONS_RECHECK_MS (3600 * 1000L)

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
	bool		statement;		/* allocated to several invoices (payment_allocations) */
} Written;

static Written *
written_load(int64 payment_id, MemoryContext context)
{
	Oid			types[] = {INT8OID};
	Datum		values[] = {Int64GetDatum(payment_id)};
	Written    *w = MemoryContextAllocZero(context, sizeof(Written));

	if (fp_spi_run("SELECT p.administration, p.kind, p.status,"
				"       p.amount OPERATOR(pg_catalog.-) p.refunded_amount,"
				"       p.paytrace_transaction_id::text, p.freshportal_payment_id,"
				"       i.freshportal_id, i.currency, c.payment_method, p.parent_id,"
				"       CASE WHEN p.refunded_amount OPERATOR(pg_catalog.>) 0 THEN"
				"         p.paytrace_transaction_id::text OPERATOR(pg_catalog.||) '-r' OPERATOR(pg_catalog.||)"
				"         (SELECT r.paytrace_transaction_id::text FROM freshpay.payments r"
				"           WHERE r.parent_id OPERATOR(pg_catalog.=) p.id AND r.kind OPERATOR(pg_catalog.=) 'refund'"
				"             AND r.status OPERATOR(pg_catalog.=) 'refunded' ORDER BY r.id DESC LIMIT 1)"
				"       ELSE p.paytrace_transaction_id::text END,"
				"       EXISTS (SELECT FROM freshpay.payment_allocations a WHERE a.payment_id OPERATOR(pg_catalog.=) p.id)"
				"  FROM freshpay.payments p"
				"  LEFT JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) p.invoice_id"
				"  LEFT JOIN freshpay.customers c ON c.id OPERATOR(pg_catalog.=) p.customer_id"
				" WHERE p.id OPERATOR(pg_catalog.=) $1",
				1, types, values, NULL, SPI_OK_SELECT) == 0)
		elog(ERROR, "payment " INT64_FORMAT " does not exist", payment_id);
	w->payment_id = payment_id;
	w->administration = fp_spi_text(context, 1);
	w->kind = fp_spi_text(context, 2);
	w->status = fp_spi_text(context, 3);
	w->remaining = fp_spi_text(context, 4);
	w->transaction_id = fp_spi_text(context, 5);
	w->registered = fp_spi_int64(6, &w->freshportal_payment_id);
	fp_spi_int64(7, &w->freshportal_invoice_id);
	w->currency = fp_spi_text(context, 8);
	w->method = fp_spi_text(context, 9);
	w->has_parent = fp_spi_int64(10, &w->parent_id);
	w->provider_id = fp_spi_text(context, 11);
	w->statement = strcmp(fp_spi_text(context, 12), "t") == 0;
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

	fp_spi_run("INSERT INTO freshpay.payment_history (payment_id, old_status, new_status, event, message)"
			" VALUES ($1, $2, $2, $3, $4)", 4, types, values, NULL, SPI_OK_INSERT);
}

static void
set_registration(int64 payment_id, bool registered, int64 freshportal_payment_id)
{
	Oid			types[] = {INT8OID, INT8OID};
	Datum		values[] = {Int64GetDatum(payment_id), Int64GetDatum(freshportal_payment_id)};
	char		nulls[] = {' ', registered ? ' ' : 'n'};

	fp_spi_run("UPDATE freshpay.payments SET freshportal_payment_id = $2, updated_at = pg_catalog.now()"
			" WHERE id OPERATOR(pg_catalog.=) $1", 2, types, values, nulls, SPI_OK_UPDATE);
}

/*
 * The local invoice takes FreshPortal's amounts and status, and its raw
 * object: the whole of it (a re-read), or the fields of a summary merged in.
 */
static void
mirror_invoice(const char *administration, int64 id, Datum amount_paid, Datum open_amount,
			   const char *status, TimestampTz mutation_time, Datum raw, bool whole)
{
	Oid			types[] = {TEXTOID, INT8OID, NUMERICOID, NUMERICOID, TEXTOID, TIMESTAMPTZOID, JSONBOID,
	BOOLOID};
	Datum		values[] = {
		CStringGetTextDatum(administration), Int64GetDatum(id), amount_paid, open_amount,
		CStringGetTextDatum(status), TimestampTzGetDatum(mutation_time), raw, BoolGetDatum(whole)
	};

	fp_spi_run("UPDATE freshpay.invoices"
			   "   SET amount_paid = $3, open_amount = $4, status = $5, mutation_time = $6,"
			   "       raw = CASE WHEN $8 THEN $7 ELSE raw OPERATOR(pg_catalog.||) $7 END,"
			   "       synced_at = pg_catalog.now()"
			   " WHERE administration OPERATOR(pg_catalog.=) $1"
			   "   AND freshportal_id OPERATOR(pg_catalog.=) $2"
			   "   AND mutation_time OPERATOR(pg_catalog.<=) $6",
			   8, types, values, NULL, SPI_OK_UPDATE);
}

/*
 * What a lookup saw in FreshPortal: every registration with a provider id
 * is recorded (or brought up to date) in freshpay.freshportal_registrations.
 * Inside a transaction.
 */
static void
record_seen(const char *administration, List *payments)
{
	ListCell   *lc;

	foreach(lc, payments)
	{
		FpPayment  *p = lfirst(lc);
		Oid			types[] = {TEXTOID, INT8OID, INT8OID, TEXTOID, NUMERICOID, TEXTOID};
		Datum		values[6];
		char		nulls[] = {' ', ' ', ' ', ' ', p->amount ? ' ' : 'n', ' '};

		if (p->provider_transaction_id == NULL || p->status == NULL)
			continue;
		values[0] = CStringGetTextDatum(administration);
		values[1] = Int64GetDatum(p->id);
		values[2] = Int64GetDatum(p->invoice_id);
		values[3] = CStringGetTextDatum(p->provider_transaction_id);
		values[4] = p->amount ? money_numeric(p->amount) : (Datum) 0;
		values[5] = CStringGetTextDatum(p->status);
		fp_spi_run("INSERT INTO freshpay.freshportal_registrations"
				   " (administration, freshportal_payment_id, freshportal_invoice_id, provider_transaction_id,"
				   "  amount, status)"
				   " VALUES ($1, $2, $3, $4, $5, $6)"
				   " ON CONFLICT (administration, freshportal_payment_id) DO UPDATE"
				   "   SET freshportal_invoice_id = EXCLUDED.freshportal_invoice_id,"
				   "       provider_transaction_id = EXCLUDED.provider_transaction_id,"
				   "       amount = COALESCE(EXCLUDED.amount, freshportal_registrations.amount),"
				   "       status = EXCLUDED.status, seen_at = pg_catalog.now()",
				   6, types, values, nulls, SPI_OK_INSERT);
	}
}

/*
 * What one lookup, or the lookups of a sweep, saw: every registration it
 * showed (record_seen); and each registration recorded under a provider id
 * in looked_up (those whose answer was complete) that the answer no longer
 * shows is 'gone' — unless a lookup or write since this one's start (since)
 * saw it, whose word is newer.  Inside a transaction.
 */
static void
record_lookup(const char *administration, List *looked_up, List *found, TimestampTz since)
{
	Oid			types[] = {TEXTOID, TEXTARRAYOID, INT8ARRAYOID, TIMESTAMPTZOID};
	Datum		values[4];
	Datum	   *ids;
	Datum	   *seen;
	int			n = 0;
	int			nseen = 0;
	ListCell   *lc;

	record_seen(administration, found);
	if (looked_up == NIL)
		return;
	ids = palloc(sizeof(Datum) * list_length(looked_up));
	seen = palloc(sizeof(Datum) * (list_length(found) + 1));
	foreach(lc, looked_up)
		ids[n++] = CStringGetTextDatum(lfirst(lc));
	foreach(lc, found)
		seen[nseen++] = Int64GetDatum(((FpPayment *) lfirst(lc))->id);
	values[0] = CStringGetTextDatum(administration);
	values[1] = PointerGetDatum(construct_array(ids, n, TEXTOID, -1, false, TYPALIGN_INT));
	values[2] = PointerGetDatum(construct_array(seen, nseen, INT8OID, 8, true, TYPALIGN_DOUBLE));
	values[3] = TimestampTzGetDatum(since);
	fp_spi_run("UPDATE freshpay.freshportal_registrations SET status = 'gone'"
			   " WHERE administration OPERATOR(pg_catalog.=) $1"
			   "   AND provider_transaction_id OPERATOR(pg_catalog.=) ANY ($2)"
			   "   AND freshportal_payment_id OPERATOR(pg_catalog.<>) ALL ($3)"
			   "   AND seen_at OPERATOR(pg_catalog.<) $4"
			   "   AND status OPERATOR(pg_catalog.<>) 'gone'",
			   4, types, values, NULL, SPI_OK_UPDATE);
}

/* A registration freshpay just made, as FreshPortal's answer showed it.  Inside a transaction. */
static void
record_written(const char *administration, int64 freshportal_payment_id, int64 invoice_id,
			   const char *provider_id, const char *amount)
{
	FpPayment	p = {0};

	p.id = freshportal_payment_id;
	p.invoice_id = invoice_id;
	p.status = "registered";
	p.provider_transaction_id = (char *) provider_id;
	p.amount = (char *) amount;
	record_seen(administration, list_make1(&p));
}

/*
 * A settled transaction that what freshpay recorded still shows registered
 * twice (reconciliation's registered_twice) is looked up again later, and
 * so on while it does: once the extra registration is reversed or deleted
 * in FreshPortal, the next look records it and the verdict goes.  Inside
 * the transaction that recorded the look; a check_registrations job must
 * have recorded itself done first (a queued one is kept, not added).
 */
static void
recheck_while_twice(int64 payment_id)
{
	Oid			types[] = {INT8OID};
	Datum		values[] = {Int64GetDatum(payment_id)};

	if (fp_spi_run("SELECT 1 FROM freshpay.payments p"
				   " WHERE p.id OPERATOR(pg_catalog.=) $1"
				   "   AND (p.batch_number IS NOT NULL OR p.settled_at IS NOT NULL)"
				   "   AND p.kind OPERATOR(pg_catalog.<>) 'refund'"
				   "   AND p.status OPERATOR(pg_catalog.<>) 'returned'"
				   "   AND EXISTS (SELECT FROM freshpay._registered_twice(p.administration, p.id))",
				   1, types, values, NULL, SPI_OK_SELECT) == 0)
		return;
	job_queue("check_registrations", payment_id,
			  TimestampTzPlusMilliseconds(GetCurrentTimestamp(), REGISTRATIONS_RECHECK_MS));
}

/*
 * freshpay_sync(): each settled transaction of the administration that
 * freshpay.exceptions shows registered twice is looked up again at once, not
 * when its next check is due; a person who has just reversed or deleted the
 * extra registration sees the exception go.  In the caller's transaction;
 * the worker is woken at its commit.  Returns how many.
 */
int64
writeback_recheck_registered_twice(const char *administration)
{
	Oid			types[] = {TEXTOID};
	Datum		values[] = {CStringGetTextDatum(administration)};
	int64		n;

	SPI_connect();
	fp_spi_run("SELECT DISTINCT e.payment_id FROM freshpay.exceptions e"
			   " WHERE e.kind OPERATOR(pg_catalog.=) 'registered_twice'"
			   "   AND e.administration OPERATOR(pg_catalog.=) $1",
			   1, types, values, NULL, SPI_OK_SELECT);
	n = job_queue_each("check_registrations", 1);
	SPI_finish();
	return n;
}

/* A registration freshpay reversed: so recorded, if a lookup saw it. */
static void
record_seen_reversed(const char *administration, int64 freshportal_payment_id)
{
	Oid			types[] = {TEXTOID, INT8OID};
	Datum		values[] = {CStringGetTextDatum(administration), Int64GetDatum(freshportal_payment_id)};

	fp_spi_run("UPDATE freshpay.freshportal_registrations SET status = 'reversed', seen_at = pg_catalog.now()"
			   " WHERE administration OPERATOR(pg_catalog.=) $1"
			   "   AND freshportal_payment_id OPERATOR(pg_catalog.=) $2",
			   2, types, values, NULL, SPI_OK_UPDATE);
}

typedef enum WriteState
{
	WRITE_START,
	WRITE_SWEEP,				/* a statement: what FreshPortal holds of its transaction */
	WRITE_FIND,					/* register: was it written before? */
	WRITE_REGISTER,
	WRITE_CHECK,				/* reverse: is it reversed already? */
	WRITE_REVERSE,
	WRITE_REFRESH
} WriteState;

typedef struct Write
{
	WriteState	state;
	Written    *w;				/* the payment written back */
	Written    *sale;			/* reverse: the sale whose registration is undone */
	Administration *admin;
	const char *provider_id;	/* register: provider_transaction_id */
	int64		reversing;		/* reverse: FreshPortal's payment id */
	int64		invoice;		/* FreshPortal's invoice id, to re-read */
	FpCall	   *call;
	/* A statement's: one allocation (or reversal of one) after the other */
	bool		statement;
	bool		check;			/* a check_registrations job: the sweep, recorded */
	int64		allocation;		/* register: the allocation's local invoice id */
	char	   *allocated;		/* register: its amount */
	int64		reversal;		/* reverse: allocation_reversals.id */
	bool		swept;			/* register: FreshPortal's registrations looked at */
	List	   *sweep;			/* register: the lookups, FpCall * */
	List	   *sweep_ids;		/* their provider ids, in the same order */
	int			sweeping;		/* of them, unanswered */
	List	   *found;			/* register: what they found, FpPayment * */
	List	   *seen;			/* register: what FIND saw, recorded with the registration */
	List	   *looked_up;		/* the provider ids FIND or the sweep saw all of */
	TimestampTz looked_at;		/* when FIND or the sweep was sent */
} Write;

/* START of register_payment: false when there is nothing to write. */
static bool
start_register(Flow *f, Write *x)
{
	Written    *w = x->w;

	/*
	 * Made at PayTrace for no invoice freshpay knows: nothing to write.  A
	 * payment voided or refunded since still looks first: a registration
	 * whose answer was lost is taken back only once it is found.
	 */
	if (w->registered || w->transaction_id == NULL || w->freshportal_invoice_id == 0)
		return false;
	x->provider_id = w->provider_id ? w->provider_id : w->transaction_id;
	x->invoice = w->freshportal_invoice_id;
	/* A write whose answer was lost is found here instead of being made twice. */
	x->call = freshportal_find_payments_call(x->admin, x->provider_id);
	x->looked_at = GetCurrentTimestamp();
	x->state = WRITE_FIND;
	freshportal_send(x->call, f, f->priority);
	return true;
}

/* Not registered yet: register it. */
static void
register_now(Flow *f, Write *x)
{
	Written    *w = x->w;
	FpRegistration r = {0};

	r.invoice_id = x->statement ? x->invoice : w->freshportal_invoice_id;
	r.amount = x->statement ? x->allocated : w->remaining;
	r.currency = w->currency;
	r.method = w->method;
	r.provider_transaction_id = x->provider_id;
	r.payment_date = fp_date_of(GetCurrentTimestamp());
	x->call = freshportal_register_call(x->admin, &r);
	x->state = WRITE_REGISTER;
	freshportal_send(x->call, f, f->priority);
}

/*
 * START of reverse_payment, inside its transaction: take the sale's
 * registration over before anything is sent (see the header comment).
 * False when there is nothing to reverse.
 */
static bool
start_reverse(Flow *f, Write *x)
{
	Written    *w = x->w;
	Written    *sale = x->sale;

	if (sale == NULL && strcmp(w->status, "returned") == 0 && w->registered)
	{
		x->reversing = w->freshportal_payment_id;
		x->invoice = w->freshportal_invoice_id;
		note(w->payment_id, w->status, "reversing",
			 psprintf("FreshPortal payment " INT64_FORMAT " is being reversed", x->reversing));
		return true;
	}
	if (sale == NULL)
		return false;
	if (w->registered)
		/* An earlier run took the registration over: reverse it. */
		x->reversing = w->freshportal_payment_id;
	else if (sale->registered)
	{
		x->reversing = sale->freshportal_payment_id;
		set_registration(w->payment_id, true, x->reversing);
		set_registration(sale->payment_id, false, 0);
		note(sale->payment_id, sale->status, "reversing",
			 psprintf("FreshPortal payment " INT64_FORMAT " is being reversed", x->reversing));
	}
	else
		/* Never registered: its register job sees the new status (or the remainder). */
		return false;
	x->invoice = sale->freshportal_invoice_id;
	return true;
}

/* The answer did not show the invoice: re-read it. */
static void
send_refresh(Flow *f, Write *x)
{
	x->call = freshportal_get_invoice_call(x->admin, x->invoice);
	x->state = WRITE_REFRESH;
	freshportal_send(x->call, f, f->priority);
}

/*
 * The end of a write's record transaction.  When FreshPortal's answer showed
 * the invoice, the local invoice takes it and the job is done; COMMIT.
 * Otherwise the invoice is re-read (REFRESH) first.
 */
static FlowStep next_of_statement(Flow *f, Write *x);
static FlowStep check_done(Flow *f, Write *x);
static FlowStep start_sweep(Flow *f, Write *x);
static FlowStep sweep_answer(Flow *f, Write *x, const HttpResponse *response);

static FlowStep
commit_write(Flow *f, Write *x, const FpInvoiceState *invoice, MemoryContext caller)
{
	bool		shown = invoice != NULL && invoice->present && invoice->id == x->invoice;

	if (shown)
	{
		mirror_invoice(x->admin->name, invoice->id, invoice->amount_paid, invoice->open_amount,
					   invoice->status, invoice->mutation_time, invoice->raw, false);
		if (!x->statement)
			job_record(&f->job, true, 0, NULL, false, -1);
	}
	fp_txn_commit(caller);
	if (!shown)
	{
		send_refresh(f, x);
		return FLOW_WAITING;
	}
	return x->statement ? next_of_statement(f, x) : FLOW_DONE;
}

/*
 * A registration just recorded that a void or refund of the payment no
 * longer matches: it was in flight when the void or refund was recorded,
 * whose reversal found nothing registered yet to take back.  That reversal
 * runs again.  invoice_id is the allocation's (a statement), or 0.
 */
static void
reverse_again_if_stale(int64 payment_id, int64 invoice_id, const char *registered)
{
	Oid			types[] = {INT8OID, INT8OID, NUMERICOID};
	Datum		values[] = {Int64GetDatum(payment_id), Int64GetDatum(invoice_id), money_numeric(registered)};
	int64		reversal;

	if (fp_spi_run("SELECT c.id FROM freshpay.payments c"
				   "  JOIN freshpay.payments s ON s.id OPERATOR(pg_catalog.=) c.parent_id"
				   " WHERE s.id OPERATOR(pg_catalog.=) $1"
				   "   AND c.kind OPERATOR(pg_catalog.=) ANY (ARRAY['void', 'refund'])"
				   "   AND c.status OPERATOR(pg_catalog.=) ANY (ARRAY['voided', 'refunded'])"
				   "   AND (s.status OPERATOR(pg_catalog.<>) 'captured'"
				   "        OR COALESCE((SELECT a.amount FROM freshpay.payment_allocations a"
				   "                      WHERE a.payment_id OPERATOR(pg_catalog.=) s.id"
				   "                        AND a.invoice_id OPERATOR(pg_catalog.=) $2),"
				   "                    s.amount OPERATOR(pg_catalog.-) s.refunded_amount) OPERATOR(pg_catalog.<) $3)"
				   " ORDER BY c.id DESC LIMIT 1",
				   3, types, values, NULL, SPI_OK_SELECT) != 1)
		return;
	fp_spi_int64(1, &reversal);
	job_queue("reverse_payment", reversal, 0);
}

/* A statement's allocation is registered: the registration and its amount. */
static void
register_allocation(Write *x, int64 freshportal_payment_id)
{
	Oid			types[] = {INT8OID, INT8OID, INT8OID, NUMERICOID};
	Datum		values[] = {Int64GetDatum(x->w->payment_id), Int64GetDatum(x->allocation),
		Int64GetDatum(freshportal_payment_id), money_numeric(x->allocated)};

	fp_spi_run("UPDATE freshpay.payment_allocations SET freshportal_payment_id = $3, registered_amount = $4"
			   " WHERE payment_id OPERATOR(pg_catalog.=) $1 AND invoice_id OPERATOR(pg_catalog.=) $2",
			   4, types, values, NULL, SPI_OK_UPDATE);
	reverse_again_if_stale(x->w->payment_id, x->allocation, x->allocated);
}

/*
 * START of a statement's void or refund, in its transaction: the
 * registrations of its allocations that no longer match (all of a voided
 * statement; those a refund reduced) become reversals of this payment,
 * and their allocations unregistered, before anything is sent.
 */
static void
take_over_allocations(Write *x)
{
	Oid			types[] = {INT8OID, INT8OID};
	Datum		values[] = {Int64GetDatum(x->sale->payment_id), Int64GetDatum(x->w->payment_id)};
	int64		n;

	n = fp_spi_run("INSERT INTO freshpay.allocation_reversals (administration, payment_id, invoice_id, freshportal_payment_id, amount)"
				   " SELECT s.administration, $2, a.invoice_id, a.freshportal_payment_id, a.registered_amount"
				   "   FROM freshpay.payment_allocations a JOIN freshpay.payments s ON s.id OPERATOR(pg_catalog.=) a.payment_id"
				   "  WHERE a.payment_id OPERATOR(pg_catalog.=) $1 AND a.freshportal_payment_id IS NOT NULL"
				   "    AND (s.status OPERATOR(pg_catalog.<>) 'captured' OR a.amount OPERATOR(pg_catalog.<) a.registered_amount)"
				   " ON CONFLICT DO NOTHING",
				   2, types, values, NULL, SPI_OK_INSERT);
	fp_spi_run("UPDATE freshpay.payment_allocations a SET freshportal_payment_id = NULL, registered_amount = NULL"
			   "  FROM freshpay.allocation_reversals r"
			   " WHERE a.payment_id OPERATOR(pg_catalog.=) $1"
			   "   AND r.freshportal_payment_id OPERATOR(pg_catalog.=) a.freshportal_payment_id",
			   1, types, values, NULL, SPI_OK_UPDATE);
	if (n > 0)
		note(x->sale->payment_id, x->sale->status, "reversing",
			 psprintf(INT64_FORMAT " FreshPortal registration(s) of its allocations are being reversed", n));
}

/* A check_registrations job has recorded what it saw: done. */
static FlowStep
check_done(Flow *f, Write *x)
{
	MemoryContext caller = fp_txn_begin();

	MemoryContextSwitchTo(f->context);
	job_record(&f->job, true, 0, NULL, false, -1);
	fp_txn_commit(caller);
	MemoryContextSwitchTo(f->context);
	return FLOW_DONE;
}

/*
 * A statement's write-back looks before it writes, once per run: it asks
 * FreshPortal for the registrations under every provider id freshpay used
 * for the transaction (its id, and <id>-r<refund> after each refund), side
 * by side.  A registration whose answer was lost is found there, even when
 * the statement was voided or refunded since.
 */
static FlowStep
start_sweep(Flow *f, Write *x)
{
	Oid			types[] = {INT8OID};
	Datum		values[] = {Int64GetDatum(x->w->payment_id)};
	MemoryContext caller = fp_txn_begin();
	int64		n;
	List	   *ids = NIL;
	ListCell   *lc;

	n = fp_spi_run("SELECT s.paytrace_transaction_id::text FROM freshpay.payments s"
				   " WHERE s.id OPERATOR(pg_catalog.=) $1 AND s.paytrace_transaction_id IS NOT NULL"
				   " UNION"
				   " SELECT s.paytrace_transaction_id::text OPERATOR(pg_catalog.||) '-r' OPERATOR(pg_catalog.||)"
				   "        r.paytrace_transaction_id::text"
				   "   FROM freshpay.payments s JOIN freshpay.payments r ON r.parent_id OPERATOR(pg_catalog.=) s.id"
				   "  WHERE s.id OPERATOR(pg_catalog.=) $1 AND r.kind OPERATOR(pg_catalog.=) 'refund'"
				   "    AND r.status OPERATOR(pg_catalog.=) 'refunded' AND r.paytrace_transaction_id IS NOT NULL",
				   1, types, values, NULL, SPI_OK_SELECT);
	for (int64 i = 0; i < n; i++)
	{
		MemoryContext old = MemoryContextSwitchTo(f->context);

		ids = lappend(ids, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
		MemoryContextSwitchTo(old);
	}
	fp_txn_commit(caller);
	MemoryContextSwitchTo(f->context);
	x->swept = true;
	if (ids == NIL)
		return x->check ? check_done(f, x) : next_of_statement(f, x);
	x->looked_at = GetCurrentTimestamp();
	x->sweep_ids = ids;
	foreach(lc, ids)
	{
		FpCall	   *call = freshportal_find_payments_call(x->admin, lfirst(lc));

		x->sweep = lappend(x->sweep, call);
		x->sweeping++;
		freshportal_send(call, f, f->priority);
	}
	x->state = WRITE_SWEEP;
	return FLOW_WAITING;
}

/*
 * An answer of the sweep.  Once all are in, each live registration of an
 * invoice of the statement that freshpay has not recorded is adopted by its
 * allocation; one that no longer matches is then taken back by the
 * reversal (reverse_again_if_stale).
 */
static FlowStep
sweep_answer(Flow *f, Write *x, const HttpResponse *response)
{
	MemoryContext caller;
	ListCell   *lc;
	ListCell   *id;

	forboth(lc, x->sweep, id, x->sweep_ids)
	{
		FpCall	   *call = lfirst(lc);
		bool		complete;

		if (!freshportal_answers(call, response))
			continue;
		if (!freshportal_answered(call, response, f, f->priority))
			return FLOW_WAITING;
		x->found = list_concat(x->found, freshportal_payments_found(call, response, &complete));
		if (complete)
			x->looked_up = lappend(x->looked_up, lfirst(id));
		x->sweeping--;
		break;
	}
	if (x->sweeping > 0)
		return FLOW_WAITING;

	caller = fp_txn_begin();
	MemoryContextSwitchTo(f->context);
	/*
	 * A check adopts nothing: it records what it saw (and, if it is still
	 * twice, is looked at again later: done first, so that is a new job).
	 */
	if (x->check)
		job_record(&f->job, true, 0, NULL, false, -1);
	record_lookup(x->admin->name, x->looked_up, x->found, x->looked_at);
	foreach(lc, x->check ? NIL : x->found)
	{
		FpPayment  *p = lfirst(lc);
		Oid			types[] = {INT8OID, INT8OID, INT8OID, NUMERICOID};
		Datum		values[] = {Int64GetDatum(x->w->payment_id), Int64GetDatum(p->invoice_id),
			Int64GetDatum(p->id), p->amount ? money_numeric(p->amount) : (Datum) 0};
		char		nulls[] = {' ', ' ', ' ', p->amount ? ' ' : 'n'};
		int64		invoice_id;
		char	   *registered;

		if (strcmp(p->status, "registered") != 0 ||
			fp_spi_run("UPDATE freshpay.payment_allocations a"
					   "   SET freshportal_payment_id = $3, registered_amount = COALESCE($4, a.amount)"
					   "  FROM freshpay.invoices i"
					   " WHERE a.payment_id OPERATOR(pg_catalog.=) $1 AND i.id OPERATOR(pg_catalog.=) a.invoice_id"
					   "   AND i.freshportal_id OPERATOR(pg_catalog.=) $2 AND a.freshportal_payment_id IS NULL"
					   "   AND NOT EXISTS (SELECT FROM freshpay.allocation_reversals r"
					   "        WHERE r.freshportal_payment_id OPERATOR(pg_catalog.=) $3)"
					   "   AND NOT EXISTS (SELECT FROM freshpay.payment_allocations b"
					   "        WHERE b.freshportal_payment_id OPERATOR(pg_catalog.=) $3)"
					   " RETURNING a.invoice_id, a.registered_amount::text",
					   4, types, values, nulls, SPI_OK_UPDATE_RETURNING) != 1)
			continue;
		fp_spi_int64(1, &invoice_id);
		registered = fp_spi_text(f->context, 2);
		note(x->w->payment_id, x->w->status, "registered",
			 psprintf("Found already registered in FreshPortal as payment " INT64_FORMAT " of FreshPortal invoice " INT64_FORMAT,
					  p->id, p->invoice_id));
		reverse_again_if_stale(x->w->payment_id, invoice_id, registered);
	}
	recheck_while_twice(x->w->payment_id);
	fp_txn_commit(caller);
	MemoryContextSwitchTo(f->context);
	return x->check ? FLOW_DONE : next_of_statement(f, x);
}

/*
 * A statement's next step, in a transaction of its own: register its next
 * unregistered allocation, or reverse the next registration this void or
 * refund took over.  When none is left the job is done; after the last
 * reversal, what is left of a captured statement is registered anew.
 */
static FlowStep
next_of_statement(Flow *f, Write *x)
{
	bool		reverse = strcmp(f->job.kind, "reverse_payment") == 0;
	Oid			types[] = {INT8OID};
	Datum		values[] = {Int64GetDatum(x->w->payment_id)};
	MemoryContext caller = fp_txn_begin();
	bool		found;

	MemoryContextSwitchTo(f->context);
	if (reverse)
	{
		found = fp_spi_run("SELECT r.id, r.freshportal_payment_id, i.freshportal_id"
						   "  FROM freshpay.allocation_reversals r"
						   "  JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) r.invoice_id"
						   " WHERE r.payment_id OPERATOR(pg_catalog.=) $1 AND r.reversed_at IS NULL"
						   " ORDER BY r.id LIMIT 1",
						   1, types, values, NULL, SPI_OK_SELECT) == 1;
		if (found)
		{
			fp_spi_int64(1, &x->reversal);
			fp_spi_int64(2, &x->reversing);
			fp_spi_int64(3, &x->invoice);
		}
		else if (strcmp(x->sale->status, "captured") == 0)
			/* A refund: its register job registers what is left of each allocation it reduced. */
			job_queue("register_payment", x->sale->payment_id, 0);
	}
	else if (!x->swept)
	{
		fp_txn_commit(caller);
		MemoryContextSwitchTo(f->context);
		return start_sweep(f, x);
	}
	else
	{
		found = x->w->transaction_id != NULL &&
			fp_spi_run("SELECT a.invoice_id, i.freshportal_id, a.amount::text, i.currency"
					   "  FROM freshpay.payment_allocations a"
					   "  JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) a.invoice_id"
					   "  JOIN freshpay.payments s ON s.id OPERATOR(pg_catalog.=) a.payment_id"
					   " WHERE a.payment_id OPERATOR(pg_catalog.=) $1 AND s.status OPERATOR(pg_catalog.=) 'captured'"
					   "   AND a.amount OPERATOR(pg_catalog.>) 0 AND a.freshportal_payment_id IS NULL"
					   " ORDER BY i.invoice_date, i.number, i.id LIMIT 1",
					   1, types, values, NULL, SPI_OK_SELECT) == 1;
		if (found)
		{
			fp_spi_int64(1, &x->allocation);
			fp_spi_int64(2, &x->invoice);
			x->allocated = fp_spi_text(f->context, 3);
			x->w->currency = fp_spi_text(f->context, 4);
		}
	}
	if (!found)
		job_record(&f->job, true, 0, NULL, false, -1);
	fp_txn_commit(caller);
	MemoryContextSwitchTo(f->context);
	if (!found)
		return FLOW_DONE;
	if (reverse)
	{
		x->call = freshportal_get_payment_call(x->admin, x->reversing);
		x->state = WRITE_CHECK;
	}
	else
	{
		/* The sweep of this run found none for it: written now. */
		x->provider_id = x->w->provider_id ? x->w->provider_id : x->w->transaction_id;
		register_now(f, x);
		return FLOW_WAITING;
	}
	freshportal_send(x->call, f, f->priority);
	return FLOW_WAITING;
}

static bool
returned_meanwhile(int64 payment_id)
{
	Oid			types[] = {INT8OID};
	Datum		values[] = {Int64GetDatum(payment_id)};

	return fp_spi_run("SELECT 1 FROM freshpay.payments WHERE id OPERATOR(pg_catalog.=) $1"
					  "   AND status OPERATOR(pg_catalog.=) 'returned'",
					  1, types, values, NULL, SPI_OK_SELECT) > 0;
}

/* FreshPortal registration id found or made: record it (and the invoice, when shown). */
static FlowStep
record_registration(Flow *f, Write *x, int64 freshportal_payment_id, bool created,
					const FpInvoiceState *invoice)
{
	MemoryContext caller = fp_txn_begin();

	/* What the lookup before it saw (a single sale's FIND), and what it wrote. */
	record_lookup(x->admin->name, x->looked_up, x->seen, x->looked_at);
	x->seen = NIL;
	x->looked_up = NIL;
	if (created)
		record_written(x->admin->name, freshportal_payment_id,
					   x->statement ? x->invoice : x->w->freshportal_invoice_id,
					   x->provider_id, x->statement ? x->allocated : x->w->remaining);
	recheck_while_twice(x->w->payment_id);
	if (x->statement)
	{
		register_allocation(x, freshportal_payment_id);
		note(x->w->payment_id, x->w->status, "registered",
			 psprintf("%s in FreshPortal as payment " INT64_FORMAT " of FreshPortal invoice " INT64_FORMAT " (%s)",
					  created ? "Registered" : "Found already registered", freshportal_payment_id,
					  x->invoice, x->allocated));
		return commit_write(f, x, invoice, caller);
	}
	set_registration(x->w->payment_id, true, freshportal_payment_id);
	note(x->w->payment_id, x->w->status, "registered",
		 psprintf("%s in FreshPortal as payment " INT64_FORMAT,
				  created ? "Registered" : "Found already registered", freshportal_payment_id));
	reverse_again_if_stale(x->w->payment_id, 0, x->w->remaining);
	/* An ACH debit that came back while this was in flight: reversed in turn. */
	if (returned_meanwhile(x->w->payment_id))
		job_queue("reverse_payment", x->w->payment_id, 0);
	return commit_write(f, x, invoice, caller);
}

/* Reversed: the rest of a partly refunded sale is registered anew. */
static FlowStep
record_reversal(Flow *f, Write *x, const FpInvoiceState *invoice)
{
	MemoryContext caller = fp_txn_begin();

	note(x->w->payment_id, x->w->status, "reversed",
		 psprintf("Reversed FreshPortal payment " INT64_FORMAT, x->reversing));
	record_seen_reversed(x->admin->name, x->reversing);
	if (x->statement)
	{
		Oid			types[] = {INT8OID};
		Datum		values[] = {Int64GetDatum(x->reversal)};

		fp_spi_run("UPDATE freshpay.allocation_reversals SET reversed_at = pg_catalog.now()"
				   " WHERE id OPERATOR(pg_catalog.=) $1", 1, types, values, NULL, SPI_OK_UPDATE);
		return commit_write(f, x, invoice, caller);
	}
	if (x->sale != NULL && strcmp(x->sale->status, "captured") == 0 &&
		strcmp(x->sale->remaining, "0.00") != 0)
		job_queue("register_payment", x->sale->payment_id, 0);
	return commit_write(f, x, invoice, caller);
}

/* FreshPortal's reason of a reversal; an ACH return is the bank taking the money back [G]. */
static const char *
reversal_reason(const Written *w)
{
	if (strcmp(w->status, "returned") == 0)
		return "chargeback";
	return strcmp(w->kind, "void") == 0 ? "voided" : "refunded";
}

static FlowStep
advance(Flow *f, Write *x, const HttpResponse *response)
{
	bool		reverse = strcmp(f->job.kind, "reverse_payment") == 0;

	if (x->state == WRITE_SWEEP)
		return sweep_answer(f, x, response);
	if (x->state != WRITE_START && !freshportal_answered(x->call, response, f, f->priority))
		return FLOW_WAITING;

	switch (x->state)
	{
		case WRITE_START:
			{
				MemoryContext caller = fp_txn_begin();
				bool		go;

				MemoryContextSwitchTo(f->context);
				x->w = written_load(f->job.payment_id, f->context);
				x->sale = reverse && x->w->has_parent ? written_load(x->w->parent_id, f->context) : NULL;
				x->admin = administration_load(x->w->administration, f->context);
				if (strcmp(f->job.kind, "check_registrations") == 0)
				{
					/* Every provider id of the payment looked up, and recorded. */
					x->check = true;
					fp_txn_commit(caller);
					MemoryContextSwitchTo(f->context);
					return start_sweep(f, x);
				}
				x->statement = reverse ? x->sale != NULL && x->sale->statement : x->w->statement;
				if (x->statement)
				{
					/* A statement's allocations, one after the other. */
					if (reverse)
						take_over_allocations(x);
					fp_txn_commit(caller);
					MemoryContextSwitchTo(f->context);
					return next_of_statement(f, x);
				}
				go = reverse ? start_reverse(f, x) : true;
				if (!go)
					job_record(&f->job, true, 0, NULL, false, -1);
				fp_txn_commit(caller);
				MemoryContextSwitchTo(f->context);
				if (!go)
					return FLOW_DONE;
				if (reverse)
				{
					x->call = freshportal_get_payment_call(x->admin, x->reversing);
					x->state = WRITE_CHECK;
					freshportal_send(x->call, f, f->priority);
					return FLOW_WAITING;
				}
				if (!start_register(f, x))
				{
					job_update(&f->job, true, 0, NULL, false, -1);
					return FLOW_DONE;
				}
				return FLOW_WAITING;
			}

		case WRITE_SWEEP:
			break;				/* its answers are taken above */

		case WRITE_FIND:
			{
				ListCell   *lc;
				bool		complete;
				List	   *seen = freshportal_payments_found(x->call, response, &complete);

				/* What FreshPortal holds under the provider id: recorded with the outcome. */
				x->seen = seen;
				x->looked_up = complete ? list_make1(pstrdup(x->provider_id)) : NIL;

				/*
				 * Checked here, not only by FreshPortal's filter: a payment
				 * counts as ours only with our provider id on our invoice.
				 */
				foreach(lc, seen)
				{
					FpPayment  *p = lfirst(lc);

					if (strcmp(p->status, "reversed") != 0 && p->invoice_id == x->invoice &&
						p->provider_transaction_id != NULL &&
						strcmp(p->provider_transaction_id, x->provider_id) == 0)
					{
						return record_registration(f, x, p->id, false, NULL);
					}
				}
				if (strcmp(x->w->status, "captured") != 0)
				{
					/* Voided or refunded before it was registered: nothing to write. */
					MemoryContext caller = fp_txn_begin();

					MemoryContextSwitchTo(f->context);
					record_lookup(x->admin->name, x->looked_up, x->seen, x->looked_at);
					recheck_while_twice(x->w->payment_id);
					job_record(&f->job, true, 0, NULL, false, -1);
					fp_txn_commit(caller);
					return FLOW_DONE;
				}
				register_now(f, x);
				return FLOW_WAITING;
			}

		case WRITE_REGISTER:
			{
				FpInvoiceState *invoice;
				int64		id = freshportal_registered_of(x->call, response, &invoice);

				return record_registration(f, x, id, true, invoice);
			}

		case WRITE_CHECK:
			if (strcmp(freshportal_payment_of(x->call, response)->status, "reversed") != 0)
			{
				x->call = freshportal_reverse_call(x->admin, x->reversing, reversal_reason(x->w),
												   x->w->transaction_id ? x->w->transaction_id : "",
												   fp_date_of(GetCurrentTimestamp()));
				x->state = WRITE_REVERSE;
				freshportal_send(x->call, f, f->priority);
				return FLOW_WAITING;
			}
			return record_reversal(f, x, NULL);

		case WRITE_REVERSE:
			return record_reversal(f, x, freshportal_reversed_of(x->call, response));

		case WRITE_REFRESH:
			{
				FpInvoice  *inv = freshportal_invoice_of(x->call, response);
				MemoryContext caller = fp_txn_begin();

				mirror_invoice(x->admin->name, inv->id, inv->amount_paid, inv->open_amount,
							   inv->status, inv->mutation_time, inv->raw, true);
				if (!x->statement)
					job_record(&f->job, true, 0, NULL, false, -1);
				fp_txn_commit(caller);
				return x->statement ? next_of_statement(f, x) : FLOW_DONE;
			}
	}
	return FLOW_DONE;			/* keep compiler quiet */
}

static FlowStep
advance_write(Flow *f, const HttpResponse *response)
{
	if (f->state == NULL)
		f->state = palloc0(sizeof(Write));
	return advance(f, f->state, response);
}

/*
 * Step a register_payment, reverse_payment or check_registrations job's
 * flow.  Errors retry the job with backoff; it never dies.
 */
FlowStep
writeback_step(Flow *f, const HttpResponse *response)
{
	return flow_job_step(f, response, advance_write);
}
