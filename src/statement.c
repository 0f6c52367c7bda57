/*-------------------------------------------------------------------------
 *
 * statement.c
 *	  Statement collection: one PayTrace sale for several open invoices of
 *	  one customer, allocated invoice by invoice (contract section 13).
 *
 * A statement is a money call like a capture (attempt.c runs it, with the
 * same states), with these differences:
 *
 *	  START      the customer's checks, then each invoice's, as a capture's
 *	             (plan.c); the default list is every open invoice due by
 *	             today, in invoice date order
 *	  READING    every invoice is re-read from FreshPortal, side by side; an
 *	             invoice paid there meanwhile is left out; what PayTrace holds
 *	             under each invoice's number is asked, as before a capture
 *	  RECORD     under the customer's lock and each invoice's, the checks
 *	             again; the payment (invoice_id NULL, customer_id, the
 *	             statement number as invoice_number) and one allocation per
 *	             invoice are inserted, with its resolve job; COMMIT; send
 *	  SENT       as a capture: the outcome, then the write-back, which
 *	             registers every allocation in FreshPortal (writeback.c)
 *
 * PayTrace sees one sale whose invoice_id is the statement number,
 * ST-<customer code>-<YYYYMMDD>-<n>: a lost answer is looked up by it.
 * An allocation in flight blocks its invoice like the invoice's own
 * attempt: no capture, statement or payment request of it starts until
 * the statement's outcome is known.
 *
 * Statements are card sales: an ACH customer is collected invoice by
 * invoice, and an invoice with an open authorization by capturing it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "holdings.h"
#include "money.h"
#include "payments.h"
#include "spi_txn.h"
#include "statement.h"

/*
 * Invoice i is one a statement of customer takes by default: open, due by
 * today, and in no other statement that holds money of it or may.
 */
#define DUE_INVOICE_OF(customer) \
	"i.customer_id OPERATOR(pg_catalog.=) " customer \
	" AND i.type OPERATOR(pg_catalog.=) 'invoice'" \
	" AND i.status OPERATOR(pg_catalog.=) ANY (ARRAY['open', 'partially_paid'])" \
	" AND COALESCE(i.due_date, i.invoice_date) OPERATOR(pg_catalog.<=) CURRENT_DATE" \
	" AND NOT EXISTS (SELECT FROM freshpay.payment_allocations a" \
	"      JOIN freshpay.payments s ON s.id OPERATOR(pg_catalog.=) a.payment_id" \
	"      WHERE a.invoice_id OPERATOR(pg_catalog.=) i.id AND a.amount OPERATOR(pg_catalog.>) 0" \
	"        AND s.status OPERATOR(pg_catalog.=) ANY (ARRAY['captured', 'pending', 'unknown']))"

/* A customer code longer than this names the statement by the customer's id. */
#define STATEMENT_CODE_MAX 30

/* The invoices named, in invoice date order, each checked to be the customer's. */
static List *
named_invoices(const CallPlan *plan, const MoneyCall *call)
{
	Datum	   *ids = palloc(sizeof(Datum) * call->n_invoices);
	ArrayType  *array;
	Oid			types[] = {INT8ARRAYOID, INT8OID};
	Datum		values[2];
	List	   *result = NIL;
	int64		n;

	for (int i = 0; i < call->n_invoices; i++)
		ids[i] = Int64GetDatum(call->invoice_ids[i]);
	array = construct_array(ids, call->n_invoices, INT8OID, 8, true, TYPALIGN_DOUBLE);
	values[0] = PointerGetDatum(array);
	values[1] = Int64GetDatum(plan->customer_id);
	n = fp_spi_run("SELECT u.id, i.id IS NOT NULL, i.customer_id OPERATOR(pg_catalog.=) $2, i.number"
				   "  FROM pg_catalog.unnest($1) u(id)"
				   "  LEFT JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) u.id"
				   " ORDER BY i.invoice_date, i.number, u.id",
				   2, types, values, NULL, SPI_OK_SELECT);
	for (int64 row = 0; row < n; row++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[row];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(tuple, desc, 1, &isnull));
		int64	   *copy;

		if (!DatumGetBool(SPI_getbinval(tuple, desc, 2, &isnull)))
			fp_refuse(ERRCODE_NO_DATA_FOUND, "invoice_ids are freshpay.invoices.id; run freshpay_sync() to pull invoices.",
					  "invoice " INT64_FORMAT " does not exist", id);
		if (!DatumGetBool(SPI_getbinval(tuple, desc, 3, &isnull)) || isnull)
			fp_refuse(ERRCODE_INVALID_PARAMETER_VALUE,
					  "A statement collects invoices of one customer; see freshpay.invoices.customer_id.",
					  "invoice %s is not an invoice of customer %s",
					  SPI_getvalue(tuple, desc, 4), plan->customer_code);
		copy = palloc(sizeof(int64));
		*copy = id;
		result = lappend(result, copy);
	}
	return result;
}

/* The customer's open invoices due by today, in invoice date order. */
static List *
default_invoices(const CallPlan *plan)
{
	Oid			types[] = {INT8OID};
	Datum		values[] = {Int64GetDatum(plan->customer_id)};
	List	   *result = NIL;
	int64		n;

	n = fp_spi_run("SELECT i.id FROM freshpay.invoices i WHERE " DUE_INVOICE_OF("$1")
				   " ORDER BY i.invoice_date, i.number, i.id",
				   1, types, values, NULL, SPI_OK_SELECT);
	for (int64 row = 0; row < n; row++)
	{
		bool		isnull;
		int64	   *id = palloc(sizeof(int64));

		*id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, 1, &isnull));
		result = lappend(result, id);
	}
	return result;
}

/* One invoice's checks as a capture's, and those of a statement. */
static StatementItem *
check_item(const CallPlan *plan, int64 invoice_id, bool lock, bool skip_paid, MemoryContext context)
{
	CallPlan	one = {0};
	StatementItem *item;

	plan_statement_item(&one, invoice_id, lock, skip_paid, context);
	if (one.customer_id != plan->customer_id)
		fp_refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
				  "Run freshpay_sync() to see FreshPortal's current invoices.",
				  "invoice %s is no longer an invoice of customer %s", one.invoice_number, plan->customer_code);
	if (one.amount == NULL)
		return NULL;
	if (strcmp(one.kind, "sale") != 0)
		fp_refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
				  "Capture it with freshpay_capture(), or void the authorization; a statement charges invoices without one.",
				  "invoice %s has an open authorization", one.invoice_number);
	item = MemoryContextAllocZero(context, sizeof(StatementItem));
	item->invoice_id = invoice_id;
	item->freshportal_invoice_id = one.freshportal_invoice_id;
	item->freshportal_customer_id = one.freshportal_customer_id;
	item->number = one.invoice_number;
	item->amount = one.amount;
	item->unregistered = one.unregistered;
	item->invoice_date = one.invoice_date;
	return item;
}

/* The sum of the invoices still in the statement (in context), and the earliest invoice date. */
static void
sum_items(CallPlan *plan, MemoryContext context)
{
	Datum		sum = money_numeric("0");
	ListCell   *lc;

	foreach(lc, plan->items)
	{
		StatementItem *item = lfirst(lc);

		if (item->left_out)
			continue;
		sum = DirectFunctionCall2(numeric_add, sum, money_numeric(item->amount));
		if (foreach_current_index(lc) == 0 || item->invoice_date < plan->invoice_date)
			plan->invoice_date = item->invoice_date;
	}
	plan->amount = MemoryContextStrdup(context, money_text(sum));
}

/*
 * START: the customer's checks, then each invoice's.  An invoice named that
 * cannot be collected is an error; of the default list, one with nothing
 * left to collect is left out.
 */
void
statement_plan(CallPlan *plan, const MoneyCall *call, MemoryContext context)
{
	Oid			types[] = {INT8OID};
	Datum		values[] = {Int64GetDatum(call->target_id)};
	char	   *method;
	List	   *ids;
	ListCell   *lc;

	if (fp_spi_run("SELECT administration, code, paytrace_customer_id, payment_method, freshportal_id"
				   "  FROM freshpay.customers WHERE id OPERATOR(pg_catalog.=) $1",
				   1, types, values, NULL, SPI_OK_SELECT) == 0)
		fp_refuse(ERRCODE_NO_DATA_FOUND, "customer_id is freshpay.customers.id; run freshpay_sync() to pull customers.",
				  "customer " INT64_FORMAT " does not exist", call->target_id);
	plan->op = MONEY_STATEMENT;
	plan->customer_id = call->target_id;
	plan->administration = fp_spi_text(context, 1);
	plan->customer_code = fp_spi_text(context, 2);
	plan->vault_id = fp_spi_text(context, 3);
	method = fp_spi_text(context, 4);
	fp_spi_int64(5, &plan->freshportal_customer_id);
	if (plan->customer_code == NULL)
		plan->customer_code = MemoryContextStrdup(context, psprintf(INT64_FORMAT, plan->customer_id));
	plan->payment_method = method;
	plan->kind = "sale";
	plan->operation = PT_SALE;

	if (plan->vault_id == NULL)
		fp_refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
				  "Link the customer to a PayTrace vault profile with freshpay_link_customer(); a statement is charged to the card on file.",
				  "customer %s has no PayTrace vault profile", plan->customer_code);
	if (strcmp(method, "card") != 0)
		fp_refuse(ERRCODE_FEATURE_NOT_SUPPORTED,
				  "Collect ACH customers invoice by invoice with freshpay_capture().",
				  "customer %s pays by ACH; statements are card charges", plan->customer_code);

	ids = call->n_invoices > 0 ? named_invoices(plan, call) : default_invoices(plan);
	plan->items = NIL;
	foreach(lc, ids)
	{
		StatementItem *item = check_item(plan, *(int64 *) lfirst(lc), false, call->n_invoices == 0, context);

		if (item != NULL)
		{
			/* SPI leaves its own memory current, which goes at COMMIT. */
			MemoryContext old = MemoryContextSwitchTo(context);

			plan->items = lappend(plan->items, item);
			MemoryContextSwitchTo(old);
		}
	}
	if (plan->items == NIL)
		fp_refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
				  "A statement takes the customer's open invoices whose due date has come; name invoices with invoice_ids to collect others.",
				  "customer %s has no open invoice due by today", plan->customer_code);
	sum_items(plan, context);
}

/* READING: every invoice is re-read from FreshPortal, side by side. */
void
statement_send_reads(const Administration *admin, CallPlan *plan, void *owner, int priority)
{
	ListCell   *lc;

	foreach(lc, plan->items)
	{
		StatementItem *item = lfirst(lc);

		item->reread = freshportal_get_invoice_call(admin, item->freshportal_invoice_id);
		freshportal_send(item->reread, owner, priority);
	}
}

/*
 * FreshPortal's current view of one invoice: paid meanwhile (by bank
 * transfer, say), it is left out; changed, the statement is refused; else
 * the statement takes what is left of it.
 */
static void
check_reread(CallPlan *plan, StatementItem *item, const FpInvoice *remote)
{
	CallPlan	one = {0};
	char	   *left;

	left = money_text(DirectFunctionCall2(numeric_sub, remote->open_amount,
										  money_numeric(item->unregistered ? item->unregistered : "0")));
	if (remote->id == item->freshportal_invoice_id && strcmp(remote->type, "invoice") == 0 &&
		(strcmp(remote->status, "paid") == 0 || strcmp(remote->status, "credited") == 0 ||
		 money_compare(left, "0") <= 0))
	{
		item->left_out = true;
		return;
	}
	one.freshportal_invoice_id = item->freshportal_invoice_id;
	one.freshportal_customer_id = plan->freshportal_customer_id;
	one.invoice_number = item->number;
	one.unregistered = item->unregistered;
	one.amount = item->amount;
	plan_check_invoice(&one, remote, false);
	item->amount = one.amount;
}

/*
 * READING: one answer, of a re-read or of a lookup.  Once an invoice passed
 * its re-read, PayTrace is asked what it holds under the invoice's number.
 * True when every answer is in.
 */
bool
statement_read(const Administration *admin, CallPlan *plan, const HttpResponse *response,
			   void *owner, int priority)
{
	bool		done = true;
	ListCell   *lc;

	foreach(lc, plan->items)
	{
		StatementItem *item = lfirst(lc);

		if (!item->read && freshportal_answers(item->reread, response))
		{
			if (!freshportal_answered(item->reread, response, owner, priority))
				return false;
			check_reread(plan, item, freshportal_invoice_of(item->reread, response));
			item->read = true;
			if (!item->left_out)
			{
				item->lookup = paytrace_export_by_date_range_query(admin, item->invoice_date - 1,
																   fp_date_of(GetCurrentTimestamp()) + 1,
																   item->number);
				paytrace_send(item->lookup, owner, priority);
			}
		}
		else if (item->lookup != NULL && !item->looked && paytrace_answers(item->lookup, response))
		{
			if (!paytrace_answered(item->lookup, response, owner, priority))
				return false;
			item->found = paytrace_export_of(item->lookup, response);
			item->looked = true;
		}
		if (!item->read || (!item->left_out && !item->looked))
			done = false;
	}
	return done;
}

/* Invoices left in the statement, or it is refused; its amount is their sum. */
static void
items_left(CallPlan *plan, MemoryContext context)
{
	bool		any = false;
	ListCell   *lc;

	foreach(lc, plan->items)
		any |= !((StatementItem *) lfirst(lc))->left_out;
	if (!any)
		fp_refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
				  "They were paid in FreshPortal meanwhile (by bank transfer, say); run freshpay_sync() to see it.",
				  "every invoice of the statement of customer %s is already paid in FreshPortal",
				  plan->customer_code);
	sum_items(plan, context);
}

/* Every answer is in: what PayTrace holds of any invoice stops the statement, as a capture. */
void
statement_check_holdings(const Administration *admin, CallPlan *plan, MemoryContext context)
{
	ListCell   *lc;

	foreach(lc, plan->items)
	{
		StatementItem *item = lfirst(lc);
		CallPlan	one = {0};

		if (item->left_out)
			continue;
		one.invoice_number = item->number;
		holdings_check_charge(admin, &one, item->found);
	}
	items_left(plan, context);
}

/* A free statement number: ST-<code>-<YYYYMMDD>-<n>, n counting the customer's statements of the day. */
static char *
statement_number(const CallPlan *plan, MemoryContext context)
{
	Oid			types[] = {INT8OID, TEXTOID, TEXTOID};
	Datum		values[3];
	const char *code = plan->customer_code;

	if (strlen(code) > STATEMENT_CODE_MAX || !plan_invoice_number_sendable(code) || strchr(code, ' ') != NULL)
		code = psprintf(INT64_FORMAT, plan->customer_id);
	values[0] = Int64GetDatum(plan->customer_id);
	values[1] = CStringGetTextDatum(plan->administration);
	values[2] = CStringGetTextDatum(psprintf("ST-%s-", code));
	fp_spi_run("SELECT $3 OPERATOR(pg_catalog.||) pg_catalog.to_char(CURRENT_DATE, 'YYYYMMDD')"
			   "       OPERATOR(pg_catalog.||) '-' OPERATOR(pg_catalog.||) n"
			   "  FROM pg_catalog.generate_series("
			   "        (SELECT pg_catalog.count(*) FROM freshpay.payments p"
			   "          WHERE p.customer_id OPERATOR(pg_catalog.=) $1 AND p.invoice_id IS NULL"
			   "            AND p.kind OPERATOR(pg_catalog.=) 'sale'"
			   "            AND p.created_at OPERATOR(pg_catalog.>=) CURRENT_DATE) OPERATOR(pg_catalog.+) 1,"
			   "        pg_catalog.int8 '1000000') n"
			   " WHERE NOT EXISTS (SELECT FROM freshpay.payments p WHERE p.administration OPERATOR(pg_catalog.=) $2"
			   "          AND p.invoice_number OPERATOR(pg_catalog.=) ($3 OPERATOR(pg_catalog.||)"
			   "              pg_catalog.to_char(CURRENT_DATE, 'YYYYMMDD') OPERATOR(pg_catalog.||) '-' OPERATOR(pg_catalog.||) n))"
			   "   AND NOT EXISTS (SELECT FROM freshpay.invoices i WHERE i.administration OPERATOR(pg_catalog.=) $2"
			   "          AND i.number OPERATOR(pg_catalog.=) ($3 OPERATOR(pg_catalog.||)"
			   "              pg_catalog.to_char(CURRENT_DATE, 'YYYYMMDD') OPERATOR(pg_catalog.||) '-' OPERATOR(pg_catalog.||) n))"
			   " ORDER BY n LIMIT 1",
			   3, types, values, NULL, SPI_OK_SELECT);
	return fp_spi_text(context, 1);
}

/*
 * RECORD, in its transaction: the customer's lock, then each invoice's,
 * with the checks again; an invoice paid meanwhile is left out, anything
 * else that changed refuses the statement.  Names the statement.
 */
void
statement_lock(CallPlan *plan, MemoryContext context)
{
	Oid			types[] = {INT8OID};
	Datum		values[] = {Int64GetDatum(plan->customer_id)};
	ListCell   *lc;

	fp_spi_run("SELECT 1 FROM freshpay.customers WHERE id OPERATOR(pg_catalog.=) $1 FOR UPDATE",
			   1, types, values, NULL, SPI_OK_SELECT);
	foreach(lc, plan->items)
	{
		StatementItem *item = lfirst(lc);
		StatementItem *now;

		if (item->left_out)
			continue;
		now = check_item(plan, item->invoice_id, true, true, context);
		if (now == NULL)
			item->left_out = true;
		else if (money_compare(now->amount, item->amount) < 0)
			item->amount = now->amount;
	}
	items_left(plan, context);
	plan->invoice_number = statement_number(plan, context);
}

/* RECORD, after the payment's row: its allocations, and a line of history naming them. */
void
statement_allocate(const CallPlan *plan, int64 payment_id)
{
	Oid			types[] = {INT8OID, INT8OID, NUMERICOID, TEXTOID};
	StringInfoData in;
	StringInfoData out;
	ListCell   *lc;

	initStringInfo(&in);
	initStringInfo(&out);
	foreach(lc, plan->items)
	{
		StatementItem *item = lfirst(lc);
		Datum		values[] = {Int64GetDatum(payment_id), Int64GetDatum(item->invoice_id),
		money_numeric(item->amount), CStringGetTextDatum(plan->administration)};

		if (item->left_out)
		{
			appendStringInfo(&out, "%s%s", out.len ? ", " : "", item->number);
			continue;
		}
		fp_spi_run("INSERT INTO freshpay.payment_allocations (administration, payment_id, invoice_id, amount)"
				   " VALUES ($4, $1, $2, $3)",
				   4, types, values, NULL, SPI_OK_INSERT);
		appendStringInfo(&in, "%s%s %s", in.len ? ", " : "", item->number, item->amount);
	}
	payments_history(payment_id, "pending", "pending", 0, "allocated",
					 out.len ? psprintf("Statement %s of %s: %s; left out, paid in FreshPortal meanwhile: %s",
										plan->invoice_number, plan->amount, in.data, out.data)
					 : psprintf("Statement %s of %s: %s", plan->invoice_number, plan->amount, in.data));
}

/*
 * The due pass of the statement rules: a customer on statement_weekly or
 * statement_monthly whose latest statement day has come, and not before the
 * day its rule allows (statement_since), gets a collect_statement job; the
 * day after it is then the earliest next one, so a day is collected once,
 * and a day the worker was down is caught up when it is back.  Own
 * transaction; returns how many were queued.
 */
int64
statement_queue_due(void)
{
	MemoryContext caller = fp_txn_begin();
	int64		queued;

	queued = fp_spi_run("WITH due AS ("
						"  UPDATE freshpay.customers c"
						"     SET statement_since = d.day OPERATOR(pg_catalog.+) 1"
						"    FROM (SELECT c2.id, CASE WHEN c2.collection OPERATOR(pg_catalog.=) 'statement_weekly'"
						"            THEN CURRENT_DATE OPERATOR(pg_catalog.-)"
						"                 ((CAST(pg_catalog.date_part('dow', CURRENT_DATE) AS pg_catalog.int4)"
						"                   OPERATOR(pg_catalog.-) c2.statement_day OPERATOR(pg_catalog.+) 7) OPERATOR(pg_catalog.%) 7)"
						"            WHEN CAST(pg_catalog.date_part('day', CURRENT_DATE) AS pg_catalog.int4) OPERATOR(pg_catalog.>=) c2.statement_day"
						"            THEN CAST(pg_catalog.date_trunc('month', CURRENT_DATE) AS pg_catalog.date)"
						"                 OPERATOR(pg_catalog.+) (c2.statement_day OPERATOR(pg_catalog.-) 1)"
						"            ELSE CAST(pg_catalog.date_trunc('month', CURRENT_DATE) OPERATOR(pg_catalog.-) interval '1 month' AS pg_catalog.date)"
						"                 OPERATOR(pg_catalog.+) (c2.statement_day OPERATOR(pg_catalog.-) 1) END AS day"
						"            FROM freshpay.customers c2"
						"           WHERE c2.collection OPERATOR(pg_catalog.=) ANY (ARRAY['statement_weekly', 'statement_monthly'])) d"
						"   WHERE c.id OPERATOR(pg_catalog.=) d.id AND NOT c.blocked"
						"     AND c.paytrace_customer_id IS NOT NULL"
						"     AND d.day OPERATOR(pg_catalog.>=) COALESCE(c.statement_since, d.day)"
						"  RETURNING c.id)"
						" INSERT INTO freshpay.jobs (kind, customer_id)"
						" SELECT 'collect_statement', id FROM due"
						" ON CONFLICT DO NOTHING",
						0, NULL, NULL, NULL, SPI_OK_INSERT);
	fp_txn_commit(caller);
	return queued;
}

/*
 * May a collect_statement job charge its customer now?  0: no (no longer on
 * a statement rule, blocked, unlinked, nothing due; a statement of the
 * customer was declined today: a person decides; or the job made its
 * statement already — a job run again after a crash with the statement in
 * flight must not make a second one that day, whatever became of the
 * first, unless PayTrace never processed it: not sent, turned away);
 * AUTOCOLLECT_CHARGE (-1): yes; else when to look again (a charge of the
 * customer is in flight).  In the caller's transaction.
 */
TimestampTz
statement_job_check(int64 customer_id, int64 job_id)
{
	Oid			types[] = {INT8OID, INT8OID};
	Datum		values[] = {Int64GetDatum(customer_id), Int64GetDatum(job_id)};

	if (fp_spi_run("SELECT 1 FROM freshpay.customers c"
				   " WHERE c.id OPERATOR(pg_catalog.=) $1"
				   "   AND c.collection OPERATOR(pg_catalog.=) ANY (ARRAY['statement_weekly', 'statement_monthly'])"
				   "   AND NOT c.blocked AND c.paytrace_customer_id IS NOT NULL"
				   "   AND c.payment_method OPERATOR(pg_catalog.=) 'card'"
				   "   AND EXISTS (SELECT FROM freshpay.invoices i WHERE " DUE_INVOICE_OF("c.id") ")"
				   "   AND NOT EXISTS (SELECT FROM freshpay.payments p"
				   "        WHERE p.customer_id OPERATOR(pg_catalog.=) c.id AND p.invoice_id IS NULL"
				   "          AND p.kind OPERATOR(pg_catalog.=) 'sale'"
				   "          AND p.status OPERATOR(pg_catalog.=) 'failed' AND p.response_code IS NOT NULL"
				   "          AND p.created_at OPERATOR(pg_catalog.>=) CURRENT_DATE)"
				   "   AND NOT EXISTS (SELECT FROM freshpay.payments p, freshpay.jobs j"
				   "        WHERE j.id OPERATOR(pg_catalog.=) $2"
				   "          AND p.customer_id OPERATOR(pg_catalog.=) c.id AND p.invoice_id IS NULL"
				   "          AND p.kind OPERATOR(pg_catalog.=) 'sale'"
				   "          AND p.requested_by OPERATOR(pg_catalog.=) 'freshpay worker'"
				   "          AND p.created_at OPERATOR(pg_catalog.>=) j.created_at"
				   /* one PayTrace never processed (not sent, turned away) does not count */
				   "          AND NOT (p.status OPERATOR(pg_catalog.=) 'failed' AND p.response_code IS NULL"
				   "                   AND p.paytrace_transaction_id IS NULL))",
				   2, types, values, NULL, SPI_OK_SELECT) == 0)
		return 0;
	if (fp_spi_run("SELECT 1 FROM freshpay.payments p"
				   " WHERE p.customer_id OPERATOR(pg_catalog.=) $1"
				   "   AND p.status OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'unknown'])",
				   1, types, values, NULL, SPI_OK_SELECT) > 0)
		return TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 30 * 1000L);
	return (TimestampTz) -1;
}
