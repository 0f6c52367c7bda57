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
autocollect_check(int64 invoice_id)
{
	Oid			types[] = {INT8OID};
	Datum		values[] = {Int64GetDatum(invoice_id)};
	bool		collectable;
	bool		has_profile = false;
	int64		in_flight;

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
							 "               OR (p.status OPERATOR(pg_catalog.=) 'failed' AND p.response_code IS NOT NULL)))",
							 1, types, values, NULL, SPI_OK_SELECT) == 1;
	if (collectable)
	{
		bool		isnull;

		has_profile = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	in_flight = fp_spi_run("SELECT 1 FROM freshpay.payments WHERE invoice_id OPERATOR(pg_catalog.=) $1"
						"   AND status OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'unknown'])",
						1, types, values, NULL, SPI_OK_SELECT);
	if (!collectable)
		return 0;
	if (in_flight > 0)
		return TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										   freshpay_request_timeout + AUTOCOLLECT_GRACE_MS);
	return has_profile ? AUTOCOLLECT_CHARGE : AUTOCOLLECT_REQUEST;
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
