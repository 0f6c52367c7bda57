/*-------------------------------------------------------------------------
 *
 * autocollect.c
 *	  The collection rules: which invoices collect themselves (customers
 *	  on_issue or on_due_date), the due pass, and the revival of
 *	  collections given up earlier.
 *
 * The invoice trigger queues on_issue collections (SQL); the due pass here
 * queues on_due_date ones.  A collect_invoice job checks again when it runs
 * (autocollect_check): nothing is charged that is paid, declined before or
 * no longer on a rule.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/timestamp.h"

#include "autocollect.h"
#include "settings.h"
#include "spi_txn.h"

/* After freshpay.request_timeout, when an invoice with an attempt in flight is looked at again. */
#define AUTOCOLLECT_GRACE_MS (5 * 1000L)
/* When an invoice waiting for its customer's charge in flight is looked at again. */
#define AUTOCOLLECT_PROBE_WAIT_MS (2 * 1000L)

/* The customer's charges of the last 24 hours; false when the invoice has none. */
typedef struct Charges
{
	int64		declines;
	int64		approved;
	int64		in_flight;		/* of other invoices, their answer awaited */
	bool		has_resume;
	TimestampTz resume;			/* when the declines fall below the limit */
} Charges;

static void
count_charges(int64 invoice_id, Charges *c)
{
	Oid			types[] = {INT8OID, INT4OID};
	Datum		values[] = {Int64GetDatum(invoice_id), Int32GetDatum(freshpay_max_declines_per_day)};
	bool		isnull;
	Datum		resume;

	memset(c, 0, sizeof(Charges));
	if (fp_spi_run("WITH charges AS ("
				   "  SELECT p.status, p.created_at, p.invoice_id,"
				   "         p.status OPERATOR(pg_catalog.=) 'failed'"
				   "           AND (p.response_code IS NOT NULL OR p.paytrace_transaction_id IS NOT NULL) AS declined"
				   "    FROM freshpay.payments p JOIN freshpay.invoices i ON i.customer_id OPERATOR(pg_catalog.=) p.customer_id"
				   "   WHERE i.id OPERATOR(pg_catalog.=) $1"
				   "     AND p.kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'authorization', 'ach_sale'])"
				   "     AND (p.created_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) interval '24 hours')"
				   "          OR p.status OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'unknown'])))"
				   " SELECT pg_catalog.count(*) FILTER (WHERE declined),"
				   "        pg_catalog.count(*) FILTER (WHERE status OPERATOR(pg_catalog.<>) ALL (ARRAY['failed', 'pending', 'unknown'])),"
				   "        pg_catalog.count(*) FILTER (WHERE status OPERATOR(pg_catalog.=) 'pending'"
				   "                                    AND (invoice_id IS NULL OR invoice_id OPERATOR(pg_catalog.<>) $1)),"
				   "        (pg_catalog.array_agg(created_at ORDER BY created_at) FILTER (WHERE declined))"
				   "          [CAST(pg_catalog.count(*) FILTER (WHERE declined) OPERATOR(pg_catalog.-) $2 OPERATOR(pg_catalog.+) 1 AS pg_catalog.int4)]"
				   "          OPERATOR(pg_catalog.+) interval '24 hours'"
				   "   FROM charges",
				   2, types, values, NULL, SPI_OK_SELECT) != 1)
		return;
	fp_spi_int64(1, &c->declines);
	fp_spi_int64(2, &c->approved);
	fp_spi_int64(3, &c->in_flight);
	resume = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull);
	c->has_resume = !isnull;
	if (!isnull)
		c->resume = DatumGetTimestampTz(resume);
}

/* Collect jobs of the invoice's customer the worker is running that are older than job_id. */
static int64
older_running(int64 invoice_id, int64 job_id)
{
	Oid			types[] = {INT8OID, INT8OID};
	Datum		values[] = {Int64GetDatum(invoice_id), Int64GetDatum(job_id)};
	int64		n = 0;

	if (fp_spi_run("SELECT pg_catalog.count(*) FROM freshpay.jobs j"
				   "  JOIN freshpay.invoices ji ON ji.id OPERATOR(pg_catalog.=) j.invoice_id"
				   "  JOIN freshpay.invoices me ON me.id OPERATOR(pg_catalog.=) $1"
				   " WHERE j.kind OPERATOR(pg_catalog.=) 'collect_invoice'"
				   "   AND j.state OPERATOR(pg_catalog.=) 'queued' AND j.claimed_at IS NOT NULL"
				   "   AND j.next_run_at OPERATOR(pg_catalog.>) pg_catalog.now()"
				   "   AND j.id OPERATOR(pg_catalog.<) $2"
				   "   AND ji.customer_id OPERATOR(pg_catalog.=) me.customer_id",
				   2, types, values, NULL, SPI_OK_SELECT) == 1)
		fp_spi_int64(1, &n);
	return n;
}

/*
 * The decline guard (contract section 13).  PayTrace warns on the 3rd
 * failed charge of one card within 24 hours and disables it on the 4th.
 * For the customer of the invoice, over the last 24 hours: after
 * freshpay.max_declines_per_day declined charges, automatic collection
 * pauses until the oldest of them is a day old; and until the card has been
 * charged successfully, or after it declined, one charge at a time, so that
 * a burst of invoices cannot meet a dead card all at once: of a customer's
 * collect jobs the worker runs, the oldest goes first, the others wait
 * (before any remote call).  A charge whose answer was lost ('unknown')
 * does not hold the others up: it waits for a lookup or a person, and the
 * next charge probes the card instead.  Returns 0 (go), or when to look again.  With
 * lock, the customer's row is locked, so that two collections of one
 * customer decide one after the other (the worker checks again when it
 * records the attempt).  Explicit calls are not guarded: a person decides.
 */
TimestampTz
autocollect_guard(int64 invoice_id, int64 job_id, bool lock)
{
	Charges		c;

	if (freshpay_max_declines_per_day <= 0)
		return 0;
	count_charges(invoice_id, &c);
	if (c.declines >= freshpay_max_declines_per_day && c.has_resume)
		return c.resume;
	/* A card charged successfully today, and no decline since: no probing. */
	if (c.declines == 0 && c.approved > 0)
		return 0;
	if (lock)
	{
		Oid			types[] = {INT8OID};
		Datum		values[] = {Int64GetDatum(invoice_id)};

		fp_spi_run("SELECT 1 FROM freshpay.customers c JOIN freshpay.invoices i ON i.customer_id OPERATOR(pg_catalog.=) c.id"
				   " WHERE i.id OPERATOR(pg_catalog.=) $1 FOR UPDATE OF c",
				   1, types, values, NULL, SPI_OK_SELECT);
		/* What the lock waited for may have changed it. */
		count_charges(invoice_id, &c);
		if (c.declines >= freshpay_max_declines_per_day && c.has_resume)
			return c.resume;
		if (c.declines == 0 && c.approved > 0)
			return 0;
	}
	if (c.in_flight > 0 || (job_id != 0 && older_running(invoice_id, job_id) > 0))
		return TimestampTzPlusMilliseconds(GetCurrentTimestamp(), AUTOCOLLECT_PROBE_WAIT_MS);
	return 0;
}

/*
 * A charge of this invoice's customer has its outcome: the customer's
 * collections waiting for it (the guard's one at a time) look again now,
 * not when their wait is over; never one that waits out a failure's
 * backoff.  In the transaction that records it;
 * returns how many.
 */
int64
autocollect_probe_done(int64 invoice_id)
{
	Oid			types[] = {INT8OID, INT4OID};
	Datum		values[] = {Int64GetDatum(invoice_id), Int32GetDatum(AUTOCOLLECT_PROBE_WAIT_MS)};

	if (freshpay_max_declines_per_day <= 0)
		return 0;
	return fp_spi_run("UPDATE freshpay.jobs j SET next_run_at = pg_catalog.now()"
			   "  FROM freshpay.invoices ji, freshpay.invoices me"
			   " WHERE me.id OPERATOR(pg_catalog.=) $1"
			   "   AND ji.customer_id OPERATOR(pg_catalog.=) me.customer_id"
			   "   AND j.invoice_id OPERATOR(pg_catalog.=) ji.id"
			   "   AND j.kind OPERATOR(pg_catalog.=) 'collect_invoice'"
			   "   AND j.state OPERATOR(pg_catalog.=) 'queued' AND j.claimed_at IS NULL"
			   /* a job that failed waits out its backoff (a 429's Retry-After, say) */
			   "   AND j.last_error IS NULL"
			   "   AND j.next_run_at OPERATOR(pg_catalog.>) pg_catalog.now()"
			   "   AND j.next_run_at OPERATOR(pg_catalog.<=) (pg_catalog.now() OPERATOR(pg_catalog.+)"
			   "       pg_catalog.make_interval(secs => $2 OPERATOR(pg_catalog./) 1000.0))",
			   2, types, values, NULL, SPI_OK_UPDATE);
}

/*
 * May the collect_invoice job of this invoice start an attempt?  In the
 * caller's transaction.  Returns AUTOCOLLECT_CHARGE (a charge against the
 * vault profile) or AUTOCOLLECT_REQUEST (a payment request: a card customer
 * without a profile), 0 when there is nothing to do (paid, declined before
 * — freshpay does not charge a declining card again —, an ACH debit that
 * came back — a person decides what next —, a request already
 * sent, no longer on a collection rule), or when to look again (an attempt
 * is in flight).
 */
TimestampTz
autocollect_check(int64 invoice_id, int64 job_id)
{
	Oid			types[] = {INT8OID};
	Datum		values[] = {Int64GetDatum(invoice_id)};
	bool		collectable;
	bool		has_profile = false;
	int64		in_flight;
	TimestampTz guard;

	/*
	 * Without a vault profile a card customer is sent a payment request;
	 * nothing is done while one is open, nor after one was ever sent: a
	 * person decides whether to ask again.
	 */
	collectable = fp_spi_run("SELECT c.paytrace_customer_id IS NOT NULL FROM freshpay.invoices i"
							 "  JOIN freshpay.customers c ON c.id OPERATOR(pg_catalog.=) i.customer_id"
							 " WHERE i.id OPERATOR(pg_catalog.=) $1"
							 "   AND i.type OPERATOR(pg_catalog.=) 'invoice'"
							 "   AND i.status OPERATOR(pg_catalog.=) ANY (ARRAY['open', 'partially_paid'])"
							 "   AND c.collection OPERATOR(pg_catalog.=) ANY (ARRAY['on_issue', 'on_due_date'])"
							 "   AND NOT c.blocked"
							 "   AND (c.paytrace_customer_id IS NOT NULL OR"
							 "        (c.payment_method OPERATOR(pg_catalog.=) 'card'"
							 "         AND NOT EXISTS (SELECT FROM freshpay.payment_requests q"
							 "              WHERE q.invoice_id OPERATOR(pg_catalog.=) i.id"
							 "                AND q.status OPERATOR(pg_catalog.<>) 'failed')))"
							 "   AND NOT EXISTS (SELECT FROM freshpay.payments p"
							 "        WHERE p.invoice_id OPERATOR(pg_catalog.=) i.id"
							 "          AND (p.status OPERATOR(pg_catalog.=) ANY (ARRAY['captured', 'authorized', 'refunded', 'voided', 'returned'])"
							 "               OR (p.status OPERATOR(pg_catalog.=) 'failed' AND p.response_code IS NOT NULL)))"
							 /* collected in a statement meanwhile (an operator's freshpay_capture_statement) */
							 "   AND NOT EXISTS (SELECT FROM freshpay.payment_allocations a"
							 "        JOIN freshpay.payments s ON s.id OPERATOR(pg_catalog.=) a.payment_id"
							 "        WHERE a.invoice_id OPERATOR(pg_catalog.=) i.id"
							 "          AND s.status OPERATOR(pg_catalog.=) ANY (ARRAY['captured', 'refunded']))",
							 1, types, values, NULL, SPI_OK_SELECT) == 1;
	if (collectable)
	{
		bool		isnull;

		has_profile = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	in_flight = fp_spi_run("SELECT 1 FROM freshpay.payments WHERE (invoice_id OPERATOR(pg_catalog.=) $1"
						"     OR id OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT a.payment_id FROM freshpay.payment_allocations a"
						"                                            WHERE a.invoice_id OPERATOR(pg_catalog.=) $1)))"
						"   AND status OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'unknown'])",
						1, types, values, NULL, SPI_OK_SELECT);
	if (!collectable)
		return 0;
	if (in_flight > 0)
		return TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										   freshpay_request_timeout + AUTOCOLLECT_GRACE_MS);
	if (!has_profile)
		return AUTOCOLLECT_REQUEST;
	guard = autocollect_guard(invoice_id, job_id, false);
	return guard != 0 ? guard : AUTOCOLLECT_CHARGE;
}

/*
 * Queue the collection of invoices of on_due_date customers that are due and
 * have never been collected nor queued.  Returns how many were queued.
 */
int64
autocollect_queue_due(void)
{
	MemoryContext caller = fp_txn_begin();
	int64		queued;

	queued = fp_spi_run("INSERT INTO freshpay.jobs (kind, invoice_id)"
					 " SELECT 'collect_invoice', i.id FROM freshpay.invoices i"
					 "   JOIN freshpay.customers c ON c.id OPERATOR(pg_catalog.=) i.customer_id"
					 "  WHERE c.collection OPERATOR(pg_catalog.=) 'on_due_date'"
					 "    AND NOT c.blocked"
					 "    AND (c.paytrace_customer_id IS NOT NULL OR c.payment_method OPERATOR(pg_catalog.=) 'card')"
					 "    AND i.type OPERATOR(pg_catalog.=) 'invoice'"
					 "    AND i.status OPERATOR(pg_catalog.=) ANY (ARRAY['open', 'partially_paid'])"
					 "    AND i.due_date OPERATOR(pg_catalog.<=) CURRENT_DATE"
					 "    AND NOT EXISTS (SELECT FROM freshpay.jobs j WHERE j.kind OPERATOR(pg_catalog.=) 'collect_invoice'"
					 "                       AND j.invoice_id OPERATOR(pg_catalog.=) i.id)"
					 "    AND NOT EXISTS (SELECT FROM freshpay.payments p WHERE p.invoice_id OPERATOR(pg_catalog.=) i.id)"
					 "    AND NOT EXISTS (SELECT FROM freshpay.payment_allocations a WHERE a.invoice_id OPERATOR(pg_catalog.=) i.id)"
					 " ON CONFLICT DO NOTHING",
					 0, NULL, NULL, NULL, SPI_OK_INSERT);
	fp_txn_commit(caller);
	return queued;
}

/*
 * Dead collections come back when they may succeed: the invoice or its
 * customer changed since the job died (a sync brought news), or an hour
 * has passed (credentials fixed, PayTrace back).  The
 * collect job's own checks then decide.  Returns how many came back.
 */
int64
autocollect_revive(void)
{
	MemoryContext caller = fp_txn_begin();
	int64		revived;

	revived = fp_spi_run("UPDATE freshpay.jobs j SET state = 'queued', attempts = 0,"
					  "       next_run_at = pg_catalog.now(), updated_at = pg_catalog.now()"
					  "  FROM freshpay.invoices i"
					  "  JOIN freshpay.customers c ON c.id OPERATOR(pg_catalog.=) i.customer_id"
					  " WHERE j.kind OPERATOR(pg_catalog.=) 'collect_invoice' AND j.state OPERATOR(pg_catalog.=) 'dead'"
					  "   AND i.id OPERATOR(pg_catalog.=) j.invoice_id"
					  "   AND c.collection OPERATOR(pg_catalog.=) ANY (ARRAY['on_issue', 'on_due_date'])"
					  "   AND i.status OPERATOR(pg_catalog.=) ANY (ARRAY['open', 'partially_paid'])"
					  "   AND (i.synced_at OPERATOR(pg_catalog.>) j.updated_at"
					  "        OR c.synced_at OPERATOR(pg_catalog.>) j.updated_at"
					  "        OR j.updated_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) interval '1 hour'))"
					  "   AND NOT EXISTS (SELECT FROM freshpay.jobs q WHERE q.kind OPERATOR(pg_catalog.=) 'collect_invoice'"
					  "        AND q.invoice_id OPERATOR(pg_catalog.=) j.invoice_id AND q.state OPERATOR(pg_catalog.=) 'queued')",
					  0, NULL, NULL, NULL, SPI_OK_UPDATE);
	fp_txn_commit(caller);
	if (revived > 0)
		elog(LOG, "freshpay worker: " INT64_FORMAT " collections given up earlier are tried again", revived);
	return revived;
}
