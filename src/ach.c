/*-------------------------------------------------------------------------
 *
 * ach.c
 *	  ACH debits made through PayTrace API v3, in the ledger: their
 *	  idempotency keys, what a transaction's status makes of an attempt, and
 *	  the status followed until the debit can no longer come back.
 *
 * A v3 debit (or refund) is recorded with a fresh idempotency key before it
 * is sent; PayTrace makes one transaction per key, so a lost answer is looked
 * up by the key, and the attempt stays 'unknown' while PayTrace has none.
 *
 * The pull reads every ACH transaction of the last 60 days and applies its
 * status (contract section 12):
 *	  accepted, in progress   captured (as the money call recorded it)
 *	  SETTLED                 settled_at
 *	  VOIDED                  a void row, as for a void made in PayTrace
 *	  declined, RETURNED...   'returned' once it had been captured: the
 *	                          FreshPortal registration is reversed (once, by
 *	                          the reverse_payment job), automatic collection
 *	                          of the invoice stops, and it is an exception
 *
 * Every function runs in the caller's transaction with SPI connected.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "ach.h"
#include "jobs.h"
#include "payments.h"
#include "spi_txn.h"

/* A new idempotency key: a random (version 4) UUID, as text. */
char *
ach_new_key(void)
{
	uint8		b[16];

	if (!pg_strong_random(b, sizeof(b)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate an idempotency key")));
	b[6] = (b[6] & 0x0f) | 0x40;
	b[8] = (b[8] & 0x3f) | 0x80;
	return psprintf("%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
					b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
					b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

static char *
describe(const PtAchTransaction *t)
{
	return psprintf("ACH transaction " INT64_FORMAT " at PayTrace: %s%s%s.", t->ach_id, t->status,
					t->return_reason ? ", reason " : "", t->return_reason ? t->return_reason : "");
}

/*
 * What a transaction's status makes of the attempt that made it: a debit or
 * refund accepted or settled happened; voided, declined or failed, it did
 * not; a status freshpay does not know concludes nothing.  For a void, t is
 * the transaction it acted on: voided, it happened; settled or come back,
 * it never can; in progress, it may still.
 */
PtResult *
ach_result(const Attempt *a, const PtAchTransaction *t)
{
	PtResult   *r = palloc0(sizeof(PtResult));
	bool		is_void = strcmp(a->kind, "void") == 0;

	r->retry_after = -1;
	r->message = describe(t);
	r->has_transaction_id = !is_void;
	r->transaction_id = t->ach_id;
	switch (t->state)
	{
		case PT_ACH_IN_PROGRESS:
			r->outcome = is_void ? PT_UNKNOWN : PT_APPROVED;
			break;
		case PT_ACH_SETTLED:
			r->outcome = is_void ? PT_DECLINED : PT_APPROVED;
			break;
		case PT_ACH_VOIDED:
			r->outcome = is_void ? PT_APPROVED : PT_DECLINED;
			break;
		case PT_ACH_REFUSED:
		case PT_ACH_RETURNED:
			r->outcome = PT_DECLINED;
			break;
		case PT_ACH_OTHER:
			r->outcome = PT_UNKNOWN;
			break;
	}
	return r;
}

/* The row keeps PayTrace's ACH status, its settlement and a return's reason; true if changed. */
bool
ach_note(int64 payment_id, const PtAchTransaction *t)
{
	Oid			types[] = {INT8OID, TEXTOID, TEXTOID, TIMESTAMPTZOID};
	Datum		values[] = {Int64GetDatum(payment_id), CStringGetTextDatum(t->status),
		t->return_reason ? CStringGetTextDatum(t->return_reason) : (Datum) 0,
	TimestampTzGetDatum(t->settled_at)};
	char		nulls[] = {' ', ' ', t->return_reason ? ' ' : 'n', t->has_settled_at ? ' ' : 'n'};

	bool		settles;

	/* Settled now: FreshPortal's registrations of the debit are looked up once more. */
	settles = t->has_settled_at &&
		fp_spi_run("SELECT 1 FROM freshpay.payments WHERE id OPERATOR(pg_catalog.=) $1"
				   "   AND settled_at IS NULL AND kind OPERATOR(pg_catalog.=) 'ach_sale'",
				   1, types, values, NULL, SPI_OK_SELECT) == 1;
	if (fp_spi_run("UPDATE freshpay.payments"
				   "   SET ach_status = $2, return_reason = COALESCE($3, return_reason),"
				   "       settled_at = COALESCE(settled_at, $4), updated_at = pg_catalog.now()"
				   " WHERE id OPERATOR(pg_catalog.=) $1"
				   "   AND (ach_status IS DISTINCT FROM $2 OR return_reason IS DISTINCT FROM COALESCE($3, return_reason)"
				   "        OR (settled_at IS NULL AND $4 IS NOT NULL))",
				   4, types, values, nulls, SPI_OK_UPDATE) == 0)
		return false;
	if (settles)
		job_queue("check_registrations", payment_id, 0);
	return true;
}

/*
 * Record what PayTrace shows of an attempt's own transaction (a debit or
 * refund), or of the debit a void acted on.  False when it concludes
 * nothing or the attempt was settled already.
 */
bool
ach_record(const Attempt *a, const PtAchTransaction *t, const char *event)
{
	PtResult   *r = ach_result(a, t);

	if (r->outcome == PT_UNKNOWN)
		return false;
	if (!payments_record_outcome(a->payment_id, r, event))
		return false;
	if (strcmp(a->kind, "void") != 0)
		(void) ach_note(a->payment_id, t);
	return true;
}

/* A captured debit came back: 'returned', and its registration is reversed. */
static void
record_return(int64 payment_id, const char *old_status, const PtAchTransaction *t)
{
	Oid			types[] = {INT8OID, TEXTOID};
	Datum		values[] = {Int64GetDatum(payment_id), CStringGetTextDatum(describe(t))};

	fp_spi_run("UPDATE freshpay.payments SET status = 'returned', message = $2, updated_at = pg_catalog.now()"
			   " WHERE id OPERATOR(pg_catalog.=) $1",
			   2, types, values, NULL, SPI_OK_UPDATE);
	(void) ach_note(payment_id, t);
	payments_history(payment_id, old_status, "returned", 0, "returned", describe(t));
	/* FreshPortal's registration is reversed by the job, exactly once. */
	job_queue("reverse_payment", payment_id, 0);
}

/*
 * Apply what PayTrace shows of one ACH transaction to freshpay's payment
 * made with it (found by id or by key; transactions freshpay did not make
 * are left alone).  Returns 'u' when something changed, else 0.
 */
char
ach_apply(const char *administration, const PtAchTransaction *t)
{
	Oid			types[] = {TEXTOID, INT8OID, TEXTOID};
	Datum		values[] = {CStringGetTextDatum(administration), Int64GetDatum(t->ach_id),
	CStringGetTextDatum(t->idempotency_key ? t->idempotency_key : "")};
	int64		payment_id;
	char	   *status;
	char	   *kind;
	Attempt    *a;

	if (fp_spi_run("SELECT id, status, kind,"
				   "       paytrace_transaction_id IS NULL AND response_code IS NULL"
				   "  FROM freshpay.payments"
				   " WHERE administration OPERATOR(pg_catalog.=) $1"
				   "   AND idempotency_key IS NOT NULL"
				   "   AND (paytrace_transaction_id OPERATOR(pg_catalog.=) $2"
				   "        OR idempotency_key::text OPERATOR(pg_catalog.=) pg_catalog.lower($3))"
				   " ORDER BY id LIMIT 1 FOR UPDATE",
				   3, types, values, NULL, SPI_OK_SELECT) == 0)
		return 0;
	fp_spi_int64(1, &payment_id);
	status = fp_spi_text(CurrentMemoryContext, 2);
	kind = fp_spi_text(CurrentMemoryContext, 3);

	/* In flight: its own answer settles it. */
	if (strcmp(status, "pending") == 0)
		return 0;
	/* Unknown, or concluded without PayTrace's word (freshpay_resolve): PayTrace's record is its outcome. */
	if (strcmp(status, "unknown") == 0 ||
		(strcmp(status, "failed") == 0 && strcmp(fp_spi_text(CurrentMemoryContext, 4), "t") == 0))
	{
		a = payments_load(payment_id, CurrentMemoryContext);
		return ach_record(a, t, "learned") ? 'u' : 0;
	}
	if (strcmp(status, "captured") == 0 && strcmp(kind, "ach_sale") == 0)
	{
		if (t->state == PT_ACH_REFUSED || t->state == PT_ACH_RETURNED)
		{
			record_return(payment_id, status, t);
			return 'u';
		}
		if (t->state == PT_ACH_VOIDED)
		{
			/* Voided in PayTrace: recorded as a void made there, with all that follows. */
			(void) payments_record_outside_void(administration, payment_id, t->ach_id, t->status);
			(void) ach_note(payment_id, t);
			return 'u';
		}
	}
	return ach_note(payment_id, t) ? 'u' : 0;
}
