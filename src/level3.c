/*-------------------------------------------------------------------------
 *
 * level3.c
 *	  send_level3 jobs: after an approved card sale or capture, the
 *	  invoice's lines go to PayTrace as Level 3 data (contract section 13),
 *	  as a flow of the worker's pipeline.
 *
 *	  START   a transaction loads the payment, its invoice's lines and the
 *	          administration; when there is nothing to send (turned off,
 *	          settled, not the whole invoice, lines that do not add up) it
 *	          records why and ends the job
 *	  BRAND   the transaction's export with its card's BIN: a Visa or a
 *	          Mastercard gets Level 3, any other card does not
 *	  SEND    level_three/visa or level_three/mastercard
 *	  RECORD  one transaction records PayTrace's answer on the payment
 *
 * Level 3 never changes a payment's status or amounts.  A call that fails
 * to reach PayTrace is retried (the job's backoff) while the sale is
 * unsettled, freshpay.max_attempts times at most, then recorded 'failed'
 * with the last error; a refusal is final — the same lines would be refused
 * again — and recorded as 'failed' with PayTrace's message.  A Level 3 call
 * whose answer was lost is sent again: it moves no money.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "administration.h"
#include "jobs.h"
#include "level3.h"
#include "paytrace.h"
#include "settings.h"
#include "spi_txn.h"

typedef enum Level3State
{
	LEVEL3_START,
	LEVEL3_BRAND,
	LEVEL3_SEND
} Level3State;

typedef struct Level3
{
	Level3State state;
	Administration *admin;
	PtLevel3	data;
	DateADT		created;		/* the payment's day, for the export */
	PtQuery    *query;
} Level3;

/* The outcome on the payment, and the job done. */
static void
record(Flow *f, const char *status, const char *message)
{
	Oid			types[] = {INT8OID, TEXTOID, TEXTOID};
	Datum		values[] = {Int64GetDatum(f->job.payment_id), CStringGetTextDatum(status),
	CStringGetTextDatum(message)};
	MemoryContext caller = fp_txn_begin();

	fp_spi_run("UPDATE freshpay.payments SET level3_status = $2, level3_message = $3"
			   " WHERE id OPERATOR(pg_catalog.=) $1",
			   3, types, values, NULL, SPI_OK_UPDATE);
	job_record(&f->job, true, 0, NULL, false, -1);
	fp_txn_commit(caller);
}

/* The job's last error, for the record of a Level 3 given up. */
static const char *
last_error(int64 job_id)
{
	Oid			types[] = {INT8OID};
	Datum		values[] = {Int64GetDatum(job_id)};
	MemoryContext caller = fp_txn_begin();
	char	   *error = NULL;

	if (fp_spi_run("SELECT last_error FROM freshpay.jobs WHERE id OPERATOR(pg_catalog.=) $1",
				   1, types, values, NULL, SPI_OK_SELECT) == 1)
		error = fp_spi_text(caller, 1);
	fp_txn_commit(caller);
	return error ? error : "no error recorded";
}

/*
 * Why nothing is sent for this payment, or NULL: the lines are loaded into
 * l->data.  Inside START's transaction.
 */
static const char *
load(Flow *f, Level3 *l)
{
	Oid			types[] = {INT8OID};
	Datum		values[] = {Int64GetDatum(f->job.payment_id)};
	bool		isnull;

	if (fp_spi_run("SELECT p.administration, a.level3_enabled, p.status, p.settled_at IS NOT NULL,"
				   "       p.paytrace_transaction_id, i.number, i.vat_amount::text,"
				   "       p.amount OPERATOR(pg_catalog.=) i.amount_incl_vat, p.created_at::date,"
				   "       (SELECT pg_catalog.count(*) FROM pg_catalog.jsonb_array_elements("
				   "          CASE WHEN pg_catalog.jsonb_typeof(i.raw OPERATOR(pg_catalog.->) 'lines')"
				   "                    OPERATOR(pg_catalog.=) 'array'"
				   "               THEN i.raw OPERATOR(pg_catalog.->) 'lines' ELSE '[]' END) l"
				   "         WHERE (l OPERATOR(pg_catalog.->>) 'quantity') OPERATOR(pg_catalog.~) '^-?[0-9]+(\\.[0-9]+)?$'"
				   "           AND (l OPERATOR(pg_catalog.->>) 'unit_price') OPERATOR(pg_catalog.~) '^-?[0-9]+(\\.[0-9]+)?$'"
				   "           AND (l OPERATOR(pg_catalog.->>) 'amount_excl_vat') OPERATOR(pg_catalog.~) '^-?[0-9]+(\\.[0-9]+)?$'),"
				   "       pg_catalog.jsonb_array_length(CASE WHEN pg_catalog.jsonb_typeof(i.raw OPERATOR(pg_catalog.->) 'lines')"
				   "          OPERATOR(pg_catalog.=) 'array' THEN i.raw OPERATOR(pg_catalog.->) 'lines' ELSE '[]' END),"
				   "       i.amount_excl_vat"
				   "  FROM freshpay.payments p"
				   "  JOIN freshpay.administrations a ON a.name OPERATOR(pg_catalog.=) p.administration"
				   "  LEFT JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) p.invoice_id"
				   " WHERE p.id OPERATOR(pg_catalog.=) $1",
				   1, types, values, NULL, SPI_OK_SELECT) == 0)
		return "the payment does not exist";
	l->admin = administration_load(fp_spi_text(f->context, 1), f->context);
	if (strcmp(fp_spi_text(f->context, 2), "t") != 0)
		return "Level 3 is turned off for the administration";
	if (strcmp(fp_spi_text(f->context, 3), "captured") != 0)
		return "the payment is not captured";
	if (strcmp(fp_spi_text(f->context, 4), "t") == 0)
		return "the payment settled before Level 3 was sent";
	if (!fp_spi_int64(5, &l->data.transaction_id) || fp_spi_text(f->context, 6) == NULL)
		return "the payment has no PayTrace transaction or no invoice";
	l->data.invoice_number = fp_spi_text(f->context, 6);
	l->data.tax_amount = fp_spi_text(f->context, 7);
	if (strcmp(fp_spi_text(f->context, 8), "t") != 0)
		return "a partial payment: the invoice's lines would not add up to it";
	l->created = DatumGetDateADT(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 9, &isnull));
	if (strcmp(fp_spi_text(f->context, 10), "0") == 0 ||
		strcmp(fp_spi_text(f->context, 10), fp_spi_text(f->context, 11)) != 0)
		return "the invoice has no lines, or a line without a quantity, unit price and amount";

	/* The lines, as FreshPortal gave them; they must add up to the invoice. */
	if (fp_spi_run("SELECT l OPERATOR(pg_catalog.->>) 'description', l OPERATOR(pg_catalog.->>) 'product_id',"
				   "       (l OPERATOR(pg_catalog.->>) 'quantity')::numeric::text,"
				   "       pg_catalog.round((l OPERATOR(pg_catalog.->>) 'unit_price')::numeric, 2)::text,"
				   "       (l OPERATOR(pg_catalog.->>) 'amount_excl_vat')::numeric(12,2)::text,"
				   "       pg_catalog.sum((l OPERATOR(pg_catalog.->>) 'amount_excl_vat')::numeric) OVER ()"
				   "         OPERATOR(pg_catalog.=) i.amount_excl_vat"
				   "  FROM freshpay.payments p JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) p.invoice_id,"
				   "       pg_catalog.jsonb_array_elements(i.raw OPERATOR(pg_catalog.->) 'lines') WITH ORDINALITY AS x(l, n)"
				   " WHERE p.id OPERATOR(pg_catalog.=) $1 ORDER BY x.n",
				   1, types, values, NULL, SPI_OK_SELECT) == 0)
		return "the invoice has no lines";
	if (strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 6), "t") != 0)
		return "the invoice's lines do not add up to its amount excluding tax";
	for (uint64 row = 0; row < SPI_processed; row++)
	{
		MemoryContext old = MemoryContextSwitchTo(f->context);
		PtLevel3Line *line = palloc0(sizeof(PtLevel3Line));
		HeapTuple	tuple = SPI_tuptable->vals[row];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		line->description = SPI_getvalue(tuple, desc, 1);
		line->product_id = SPI_getvalue(tuple, desc, 2);
		line->quantity = SPI_getvalue(tuple, desc, 3);
		line->unit_cost = SPI_getvalue(tuple, desc, 4);
		line->amount = SPI_getvalue(tuple, desc, 5);
		l->data.lines = lappend(l->data.lines, line);
		MemoryContextSwitchTo(old);
	}
	return NULL;
}

static FlowStep
advance(Flow *f, const HttpResponse *response)
{
	Level3	   *l = f->state;

	if (l == NULL)
	{
		MemoryContext caller = fp_txn_begin();
		const char *why;

		l = f->state = MemoryContextAllocZero(f->context, sizeof(Level3));
		MemoryContextSwitchTo(f->context);
		why = load(f, l);
		if (why == NULL && f->job.attempts >= freshpay_max_attempts)
		{
			fp_txn_commit(caller);
			record(f, "failed", psprintf("gave up after %d tries: %s", f->job.attempts,
										 last_error(f->job.id)));
			return FLOW_DONE;
		}
		fp_txn_commit(caller);
		MemoryContextSwitchTo(f->context);
		if (why != NULL)
		{
			record(f, "skipped", why);
			return FLOW_DONE;
		}
		/* The card's brand: its BIN, from the transaction's export. */
		l->query = paytrace_export_card_query(l->admin, l->data.transaction_id, l->created - 1,
											  fp_date_of(GetCurrentTimestamp()) + 1);
		l->state = LEVEL3_BRAND;
		paytrace_send(l->query, f, f->priority);
		return FLOW_WAITING;
	}
	if (!paytrace_answered(l->query, response, f, f->priority))
		return FLOW_WAITING;

	if (l->state == LEVEL3_BRAND)
	{
		ListCell   *lc;
		PtTransaction *found = NULL;
		PtBrand		brand;

		foreach(lc, paytrace_export_of(l->query, response))
		{
			PtTransaction *t = lfirst(lc);

			if (t->transaction_id == l->data.transaction_id)
				found = t;
		}
		if (found == NULL)
			elog(ERROR, "PayTrace's export does not show transaction " INT64_FORMAT " yet",
				 l->data.transaction_id);
		if (found->bin[0] == '\0')
		{
			record(f, "not_applicable", "PayTrace's export did not show the card's BIN, so its brand is unknown");
			return FLOW_DONE;
		}
		if (found->state == PT_STATE_SETTLED)
		{
			record(f, "skipped", "the payment settled before Level 3 was sent");
			return FLOW_DONE;
		}
		brand = paytrace_brand_of(found->bin);
		if (brand != PT_BRAND_VISA && brand != PT_BRAND_MASTERCARD)
		{
			record(f, "not_applicable", "Level 3 is for Visa and Mastercard only");
			return FLOW_DONE;
		}
		l->data.mastercard = brand == PT_BRAND_MASTERCARD;
		l->query = paytrace_level3_query(l->admin, &l->data);
		l->state = LEVEL3_SEND;
		paytrace_send(l->query, f, f->priority);
		return FLOW_WAITING;
	}

	{
		PtResult   *result = paytrace_level3_of(l->query, response);

		if (result->outcome == PT_APPROVED)
			record(f, "sent", result->message ? result->message : "sent");
		else if (result->outcome == PT_DECLINED || result->outcome == PT_REJECTED)
			record(f, "failed", result->message ? result->message : "refused");
		else
			elog(ERROR, "Level 3 of transaction " INT64_FORMAT ": %s", l->data.transaction_id,
				 result->message ? result->message : "no answer");
	}
	return FLOW_DONE;
}

/*
 * Step a send_level3 job's flow.  Errors retry the job with backoff (it
 * ends by itself once the payment settles: START skips it then).
 */
FlowStep
level3_step(Flow *f, const HttpResponse *response)
{
	return flow_job_step(f, response, advance);
}
