/*-------------------------------------------------------------------------
 *
 * holdings.c
 *	  What PayTrace already holds, read before a money call is recorded:
 *	  the transactions of an invoice before a new charge, and whether the
 *	  target of a void has settled.  Steps of attempt.c's READING state.
 *
 * Each opens its own short transaction to record what it learned; none
 * makes a remote call (the export was made by the flow).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "holdings.h"
#include "jobs.h"
#include "payments.h"
#include "spi_txn.h"

/*
 * Before a new sale or authorization: what does PayTrace already hold for
 * this invoice?  An approved transaction freshpay has no record of (an
 * answer lost before a failover, a sale in the Virtual Terminal, a request
 * PayTrace processed late) is recorded, and the charge is refused.
 */
void
holdings_check_charge(const Administration *admin, const CallPlan *plan, List *found)
{
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
		caller = fp_txn_begin();
		known = fp_spi_run("SELECT 1 FROM freshpay.payments WHERE administration OPERATOR(pg_catalog.=) $1"
						" AND paytrace_transaction_id OPERATOR(pg_catalog.=) $2 AND idempotency_key IS NULL",
						2, types, values, NULL, SPI_OK_SELECT) > 0;
		if (!known && payments_apply_paytrace(admin->name, t) != 0 &&
			fp_spi_run("SELECT id FROM freshpay.payments WHERE administration OPERATOR(pg_catalog.=) $1"
					" AND paytrace_transaction_id OPERATOR(pg_catalog.=) $2 AND idempotency_key IS NULL"
					" ORDER BY id LIMIT 1",
					2, types, values, NULL, SPI_OK_SELECT) == 1)
			fp_spi_int64(1, &payment_id);
		fp_txn_commit(caller);
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

/*
 * For a void: PayTrace's word on whether the target is settled, which the
 * local row may not know yet.  Records the settlement if it is, and, as the
 * pull does when it sees a transaction settle (payments.c), has FreshPortal's
 * registrations of it looked up once more: the pull will find it settled
 * already.
 */
bool
holdings_target_settled(const Administration *admin, const CallPlan *plan, List *found)
{
	PtTransaction *t;

	if (found == NIL)
		return false;
	t = linitial(found);
	if (t->state != PT_STATE_SETTLED)
		return false;

	{
		MemoryContext caller = fp_txn_begin();
		Oid			types[] = {INT8OID, INT4OID, TIMESTAMPTZOID};
		Datum		values[] = {Int64GetDatum(plan->parent_id), Int32GetDatum(t->batch_number),
		TimestampTzGetDatum(t->settled_at)};
		char		nulls[] = {' ', ' ', t->has_settled_at ? ' ' : 'n'};
		bool		settles;

		settles = fp_spi_run("SELECT 1 FROM freshpay.payments WHERE id OPERATOR(pg_catalog.=) $1"
							 "   AND batch_number IS DISTINCT FROM $2"
							 "   AND kind OPERATOR(pg_catalog.=) ANY (ARRAY['sale', 'ach_sale', 'capture'])",
							 2, types, values, nulls, SPI_OK_SELECT) == 1;
		fp_spi_run("UPDATE freshpay.payments SET batch_number = $2, settled_at = $3,"
				" updated_at = pg_catalog.now() WHERE id OPERATOR(pg_catalog.=) $1",
				3, types, values, nulls, SPI_OK_UPDATE);
		if (settles)
			job_queue("check_registrations", plan->parent_id, 0);
		fp_txn_commit(caller);
	}
	return true;
}
