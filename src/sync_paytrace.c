/*-------------------------------------------------------------------------
 *
 * sync_paytrace.c
 *	  The PayTrace pull: PayTrace's transactions into freshpay.payments
 *	  (payments.c applies each), the ACH transactions of API v3 (ach.c),
 *	  the cards of linked customers' vault profiles (daily), its
 *	  settlement batches into freshpay.settlements.
 *
 * Fetching and applying are separate calls, so that the worker makes the
 * request without a transaction open and applies the answer in a short
 * one; freshpay_sync() does both in the caller's transaction.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "ach.h"
#include "payments.h"
#include "paytrace.h"
#include "paytrace_v3.h"
#include "spi_txn.h"
#include "sync_paytrace.h"
#include "sync_state.h"

/* How far back PayTrace's transactions are re-read for status changes. */
#define PAYTRACE_LOOKBACK_DAYS 14
/* How long an ACH debit is followed: as long as its bank may still send it back [G]. */
#define ACH_FOLLOW_DAYS 60
/* How far back settlement batches are re-read. */
#define SETTLEMENT_LOOKBACK_DAYS 35

/*
 * PayTrace → freshpay.payments: statuses changed outside freshpay (voids in
 * PayTrace's terminal, settlements, ACH declines) and transactions freshpay
 * did not make, over a look-back window; each change follows to FreshPortal
 * through the usual jobs.  There is no cursor: the window is re-read, and
 * applying a transaction twice changes nothing.
 */
/*
 * Are the vault profiles to be read: a linked card customer of the
 * administration whose card was not read yet, or not for a day?  In a
 * transaction.
 */
bool
sync_profiles_due(const char *administration)
{
	Oid			types[] = {TEXTOID};
	Datum		values[] = {CStringGetTextDatum(administration)};
	bool		due;

	SPI_connect();
	due = fp_spi_run("SELECT 1 FROM freshpay.customers"
					 " WHERE administration OPERATOR(pg_catalog.=) $1"
					 "   AND payment_method OPERATOR(pg_catalog.=) 'card'"
					 "   AND paytrace_customer_id IS NOT NULL"
					 "   AND (card_checked_at IS NULL OR card_checked_at OPERATOR(pg_catalog.<)"
					 "        (pg_catalog.now() OPERATOR(pg_catalog.-) interval '1 day'))"
					 " LIMIT 1",
					 1, types, values, NULL, SPI_OK_SELECT) > 0;
	SPI_finish();
	return due;
}

/*
 * Has the administration ACH debits or refunds made through v3 that can
 * still change (made in the last ACH_FOLLOW_DAYS)?  Only then is PayTrace's
 * ACH list read.  In a transaction.
 */
bool
sync_ach_due(const char *administration)
{
	Oid			types[] = {TEXTOID, INT4OID};
	Datum		values[] = {CStringGetTextDatum(administration), Int32GetDatum(ACH_FOLLOW_DAYS)};
	bool		due;

	SPI_connect();
	due = fp_spi_run("SELECT 1 FROM freshpay.payments"
					 " WHERE administration OPERATOR(pg_catalog.=) $1"
					 "   AND idempotency_key IS NOT NULL"
					 "   AND created_at OPERATOR(pg_catalog.>)"
					 "       (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(days => $2))"
					 " LIMIT 1",
					 2, types, values, NULL, SPI_OK_SELECT) > 0;
	SPI_finish();
	return due;
}

PaytracePull *
sync_paytrace_fetch(const Administration *admin, bool profiles_due, bool ach_due)
{
	DateADT		today = fp_date_of(GetCurrentTimestamp());
	PaytracePull *pull = palloc0(sizeof(PaytracePull));

	pull->transactions = paytrace_export_by_date_range(admin, today - PAYTRACE_LOOKBACK_DAYS,
													   today + 1, NULL);
	/* ACH debits through v3: followed until they can no longer come back. */
	if (admin->paytrace_merchant_id > 0 && ach_due)
		pull->ach = paytrace_v3_ach_list(admin, today - ACH_FOLLOW_DAYS, today + 1);
	/* Card health: each card's expiry, so that finance asks for a new one in time. */
	if (profiles_due)
	{
		pull->profiles = paytrace_export_profiles(admin);
		pull->profiles_read = true;
	}
	return pull;
}

/*
 * Payment requests past their expires_at that the pull just found no
 * payment for are expired; another request may be sent for their invoice.
 */
static void
expire_requests(const char *administration)
{
	Oid			types[] = {TEXTOID};
	Datum		values[] = {CStringGetTextDatum(administration)};

	fp_spi_run("UPDATE freshpay.payment_requests"
			   "   SET status = 'expired', message = 'Expired without a payment.', updated_at = pg_catalog.now()"
			   " WHERE administration OPERATOR(pg_catalog.=) $1"
			   "   AND status OPERATOR(pg_catalog.=) ANY (ARRAY['sent', 'unknown'])"
			   "   AND expires_at OPERATOR(pg_catalog.<=) pg_catalog.now()",
			   1, types, values, NULL, SPI_OK_UPDATE);
}

/*
 * Each linked card customer takes its profile's last four digits and
 * expiry; a customer whose profile PayTrace did not show keeps none.  All
 * are checked now.
 */
static void
apply_profiles(const char *administration, List *profiles)
{
	Oid			types[] = {TEXTOID, TEXTOID, TEXTOID, INT2OID, INT2OID};
	ListCell   *lc;

	foreach(lc, profiles)
	{
		PtProfile  *p = lfirst(lc);
		Datum		values[] = {CStringGetTextDatum(administration), CStringGetTextDatum(p->customer_id),
			CStringGetTextDatum(p->last4), Int16GetDatum(p->expiry_month), Int16GetDatum(p->expiry_year)};
		char		nulls[] = {' ', ' ', p->last4[0] ? ' ' : 'n', p->expiry_month ? ' ' : 'n',
		p->expiry_month ? ' ' : 'n'};

		fp_spi_run("UPDATE freshpay.customers"
				   "   SET card_last4 = $3, card_expiry_month = $4, card_expiry_year = $5,"
				   "       card_checked_at = pg_catalog.now()"
				   " WHERE administration OPERATOR(pg_catalog.=) $1"
				   "   AND paytrace_customer_id OPERATOR(pg_catalog.=) $2"
				   "   AND payment_method OPERATOR(pg_catalog.=) 'card'",
				   5, types, values, nulls, SPI_OK_UPDATE);
	}
	{
		Datum		values[] = {CStringGetTextDatum(administration)};

		fp_spi_run("UPDATE freshpay.customers"
				   "   SET card_last4 = NULL, card_expiry_month = NULL, card_expiry_year = NULL,"
				   "       card_checked_at = pg_catalog.now()"
				   " WHERE administration OPERATOR(pg_catalog.=) $1"
				   "   AND payment_method OPERATOR(pg_catalog.=) 'card'"
				   "   AND paytrace_customer_id IS NOT NULL"
				   "   AND card_checked_at IS DISTINCT FROM pg_catalog.now()",
				   1, types, values, NULL, SPI_OK_UPDATE);
	}
}

SyncCounts
sync_paytrace_apply(const Administration *admin, PaytracePull *pull)
{
	SyncCounts	counts = {0};
	ListCell   *lc;

	SPI_connect();
	foreach(lc, pull->transactions)
	{
		char		change = payments_apply_paytrace(admin->name, lfirst(lc));

		counts.fetched++;
		counts.inserted += change == 'i';
		counts.updated += change == 'u';
	}
	foreach(lc, pull->ach)
	{
		counts.fetched++;
		counts.updated += ach_apply(admin->name, lfirst(lc)) == 'u';
	}
	if (pull->profiles_read)
		apply_profiles(admin->name, pull->profiles);
	expire_requests(admin->name);
	sync_state_record(admin->name, "paytrace_transactions", &counts);
	SPI_finish();
	return counts;
}

/* PayTrace's settlement batches → freshpay.settlements. */
List *
sync_settlements_fetch(const Administration *admin)
{
	DateADT		today = fp_date_of(GetCurrentTimestamp());

	return paytrace_export_batches(admin, today - SETTLEMENT_LOOKBACK_DAYS, today + 1);
}

SyncCounts
sync_settlements_apply(const Administration *admin, List *batches)
{
	SyncCounts	counts = {0};
	ListCell   *lc;
	Oid			types[] = {TEXTOID, INT4OID, TIMESTAMPTZOID, INT4OID, NUMERICOID, NUMERICOID,
	NUMERICOID, JSONBOID};

	SPI_connect();
	foreach(lc, batches)
	{
		PtBatch    *b = lfirst(lc);
		Datum		values[] = {CStringGetTextDatum(admin->name), Int32GetDatum(b->number),
			TimestampTzGetDatum(b->settled_at), Int32GetDatum(b->transaction_count),
		b->sales_amount, b->refund_amount, b->net_amount, b->raw};
		char		nulls[] = {' ', ' ', b->has_settled_at ? ' ' : 'n', ' ', ' ', ' ', ' ', ' '};
		int			rc;

		counts.fetched++;
		rc = SPI_execute_with_args(
			"INSERT INTO freshpay.settlements AS s"
			" (administration, batch_number, settled_at, transaction_count, sales_amount,"
			"  refund_amount, net_amount, raw, synced_at)"
			" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, pg_catalog.now())"
			" ON CONFLICT (administration, batch_number) DO UPDATE"
			"   SET settled_at = EXCLUDED.settled_at, transaction_count = EXCLUDED.transaction_count,"
			"       sales_amount = EXCLUDED.sales_amount, refund_amount = EXCLUDED.refund_amount,"
			"       net_amount = EXCLUDED.net_amount, raw = EXCLUDED.raw, synced_at = EXCLUDED.synced_at"
			"   WHERE s.raw IS DISTINCT FROM EXCLUDED.raw"
			" RETURNING (s.xmax OPERATOR(pg_catalog.=) 0)",
			8, types, values, nulls, false, 0);
		if (rc != SPI_OK_INSERT_RETURNING)
			elog(ERROR, "could not store settlement batch %d: %s", b->number, SPI_result_code_string(rc));
		if (SPI_processed == 1)
		{
			bool		isnull;

			if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
				counts.inserted++;
			else
				counts.updated++;
		}
	}
	sync_state_record(admin->name, "settlements", &counts);
	SPI_finish();
	return counts;
}
