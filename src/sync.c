/*-------------------------------------------------------------------------
 *
 * sync.c
 *	  FreshPortal → freshpay.customers / freshpay.invoices, incrementally.
 *
 * Per administration and stream a cursor in freshpay.sync_state remembers
 * FreshPortal's server time at the start of the last complete pull.  A pull
 * starts freshpay.sync_overlap before it (the API's cursor is inclusive and
 * clocks drift), walks the list ordered by (mutation time, id), and upserts
 * each row unless the stored row is as new or newer — so rows seen twice,
 * by the overlap or by paging, change nothing.
 *
 * Paging is by keyset where it can be: after each page the next request
 * starts at the last row's mutation time (page 1) rather than asking for
 * page n+1, so rows that change while we page (and so move to the end of
 * the list) cannot shift an unseen row past us.  Only when a whole page
 * shares one mutation time does it fall back to page numbers.
 *
 * Everything happens in the caller's transaction: an error anywhere leaves
 * tables and cursor as they were, and a re-run starts from the same cursor.
 * The sync_state row is locked FOR UPDATE, so concurrent syncs of the same
 * administration queue up instead of racing.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "mailbox.h"
#include "paytrace.h"
#include "settings.h"
#include "spi_txn.h"
#include "sync_progress.h"
#include "sync.h"
#include "sync_paytrace.h"
#include "sync_state.h"
#include "writeback.h"

/* 1970-01-01 00:00:00 UTC: "since the beginning" for a first, full pull. */
#define SYNC_EPOCH ((TimestampTz) -INT64CONST(946684800000000))

typedef struct SyncPlans
{
	SPIPlanPtr	update;
	SPIPlanPtr	insert;
} SyncPlans;

static SPIPlanPtr
prepare(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	return plan;
}

/* Arguments shared by the UPDATE and the INSERT of a customer: $1..$10. */
static SyncPlans
prepare_customer_plans(void)
{
	Oid			types[] = {TEXTOID, INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
	INT4OID, BOOLOID, TIMESTAMPTZOID, JSONBOID};
	SyncPlans	plans;

	plans.update = prepare(
		"UPDATE freshpay.customers"
		"   SET code = $3, name = $4, email = $5, currency = $6,"
		"       payment_term_days = $7, blocked = $8, mutation_time = $9,"
		"       raw = $10, synced_at = pg_catalog.now()"
		" WHERE administration OPERATOR(pg_catalog.=) $1"
		"   AND freshportal_id OPERATOR(pg_catalog.=) $2"
		"   AND mutation_time OPERATOR(pg_catalog.<) $9",
		10, types);
	plans.insert = prepare(
		"INSERT INTO freshpay.customers"
		"  (administration, freshportal_id, code, name, email, currency,"
		"   payment_term_days, blocked, mutation_time, raw, synced_at)"
		" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, pg_catalog.now())"
		" ON CONFLICT (administration, freshportal_id) DO NOTHING",
		10, types);
	return plans;
}

/* Arguments shared by the UPDATE and the INSERT of an invoice: $1..$17. */
static SyncPlans
prepare_invoice_plans(void)
{
	Oid			types[] = {TEXTOID, INT8OID, TEXTOID, TEXTOID, INT8OID, DATEOID,
		DATEOID, TEXTOID, NUMERICOID, NUMERICOID, NUMERICOID, NUMERICOID,
	NUMERICOID, TEXTOID, TIMESTAMPTZOID, JSONBOID};
	SyncPlans	plans;

#define CUSTOMER_OF_INVOICE \
	"(SELECT c.id FROM freshpay.customers c" \
	"  WHERE c.administration OPERATOR(pg_catalog.=) $1" \
	"    AND c.freshportal_id OPERATOR(pg_catalog.=) $5)"

	plans.update = prepare(
		"UPDATE freshpay.invoices"
		"   SET number = $3, type = $4, freshportal_customer_id = $5,"
		"       customer_id = " CUSTOMER_OF_INVOICE ","
		"       invoice_date = $6, due_date = $7, currency = $8,"
		"       amount_excl_vat = $9, vat_amount = $10, amount_incl_vat = $11,"
		"       amount_paid = $12, open_amount = $13, status = $14,"
		"       mutation_time = $15, raw = $16, synced_at = pg_catalog.now()"
		" WHERE administration OPERATOR(pg_catalog.=) $1"
		"   AND freshportal_id OPERATOR(pg_catalog.=) $2"
		"   AND mutation_time OPERATOR(pg_catalog.<) $15",
		16, types);
	plans.insert = prepare(
		"INSERT INTO freshpay.invoices"
		"  (administration, freshportal_id, number, type, freshportal_customer_id,"
		"   customer_id, invoice_date, due_date, currency, amount_excl_vat,"
		"   vat_amount, amount_incl_vat, amount_paid, open_amount, status,"
		"   mutation_time, raw, synced_at)"
		" VALUES ($1, $2, $3, $4, $5, " CUSTOMER_OF_INVOICE ", $6, $7, $8, $9,"
		"         $10, $11, $12, $13, $14, $15, $16, pg_catalog.now())"
		" ON CONFLICT (administration, freshportal_id) DO NOTHING",
		16, types);
	return plans;
}

static Datum
text_or_null(const char *value, char *null_flag)
{
	*null_flag = value ? ' ' : 'n';
	return value ? CStringGetTextDatum(value) : (Datum) 0;
}

static int
customer_args(const Administration *admin, FpCustomer *c, Datum *values, char *nulls)
{
	memset(nulls, ' ', 10);
	values[0] = CStringGetTextDatum(admin->name);
	values[1] = Int64GetDatum(c->id);
	values[2] = CStringGetTextDatum(c->code);
	values[3] = CStringGetTextDatum(c->name);
	values[4] = text_or_null(c->email, &nulls[4]);
	values[5] = text_or_null(c->currency, &nulls[5]);
	values[6] = Int32GetDatum(c->payment_term_days);
	nulls[6] = c->has_payment_term_days ? ' ' : 'n';
	values[7] = BoolGetDatum(c->blocked);
	values[8] = TimestampTzGetDatum(c->mutation_time);
	values[9] = c->raw;
	return 10;
}

static int
invoice_args(const Administration *admin, FpInvoice *inv, Datum *values, char *nulls)
{
	memset(nulls, ' ', 16);
	values[0] = CStringGetTextDatum(admin->name);
	values[1] = Int64GetDatum(inv->id);
	values[2] = CStringGetTextDatum(inv->number);
	values[3] = CStringGetTextDatum(inv->type);
	values[4] = Int64GetDatum(inv->customer_id);
	values[5] = DateADTGetDatum(inv->invoice_date);
	values[6] = DateADTGetDatum(inv->due_date);
	nulls[6] = inv->has_due_date ? ' ' : 'n';
	values[7] = CStringGetTextDatum(inv->currency);
	values[8] = inv->amount_excl_vat;
	values[9] = inv->vat_amount;
	values[10] = inv->amount_incl_vat;
	values[11] = inv->amount_paid;
	values[12] = inv->open_amount;
	values[13] = CStringGetTextDatum(inv->status);
	values[14] = TimestampTzGetDatum(inv->mutation_time);
	values[15] = inv->raw;
	return 16;
}

/*
 * Store one row: update it if ours is older, else insert it if new; a row we
 * already hold at the same or a later mutation time changes nothing.
 */
static void
upsert_item(const Administration *admin, FpStream stream, SyncPlans *plans,
			void *item, SyncCounts *counts)
{
	Datum		values[16];
	char		nulls[16];
	int			rc;

	if (stream == FP_STREAM_CUSTOMERS)
		customer_args(admin, (FpCustomer *) item, values, nulls);
	else
		invoice_args(admin, (FpInvoice *) item, values, nulls);

	rc = SPI_execute_plan(plans->update, values, nulls, false, 0);
	if (rc != SPI_OK_UPDATE)
		elog(ERROR, "updating a synced row failed: %s", SPI_result_code_string(rc));
	if (SPI_processed > 0)
	{
		counts->updated++;
		return;
	}
	rc = SPI_execute_plan(plans->insert, values, nulls, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "inserting a synced row failed: %s", SPI_result_code_string(rc));
	if (SPI_processed > 0)
		counts->inserted++;
}

/* Invoices whose customer arrived after them get linked now. */
static void
link_orphan_invoices(const char *administration)
{
	Oid			types[] = {TEXTOID};
	Datum		values[] = {CStringGetTextDatum(administration)};
	int			rc;

	rc = SPI_execute_with_args(
		"UPDATE freshpay.invoices i SET customer_id = c.id"
		"  FROM freshpay.customers c"
		" WHERE i.administration OPERATOR(pg_catalog.=) $1"
		"   AND i.customer_id IS NULL"
		"   AND c.administration OPERATOR(pg_catalog.=) i.administration"
		"   AND c.freshportal_id OPERATOR(pg_catalog.=) i.freshportal_customer_id",
		1, types, values, NULL, false, 0);
	if (rc != SPI_OK_UPDATE)
		elog(ERROR, "could not link invoices to customers: %s", SPI_result_code_string(rc));
}

static bool
id_seen(List *seen, int64 id)
{
	ListCell   *lc;

	foreach(lc, seen)
		if (*((int64 *) lfirst(lc)) == id)
			return true;
	return false;
}

static List *
remember_id(List *seen, int64 id)
{
	int64	   *copy = palloc(sizeof(int64));

	*copy = id;
	return lappend(seen, copy);
}

/*
 * The paging loop of one stream: read the cursor, walk the list, upsert,
 * store the new cursor.  In the caller's transaction (SPI connected), or —
 * own_transactions, for the worker — with each step in a short transaction
 * of its own and none open while a page is fetched: rows of a pull that
 * fails midway are kept (they are newer data), the cursor moves only at the
 * end, and the next pull re-reads from the old cursor, changing nothing twice.
 */
static void
pull_stream(const Administration *admin, FpStream stream, SyncCounts *counts,
			bool own_transactions)
{
	MemoryContext caller = NULL;
	const char *stream_name = freshportal_stream_name(stream);
	MemoryContext outer = CurrentMemoryContext;
	MemoryContext page_context;
	SyncPlans	plans;
	TimestampTz cursor;
	TimestampTz since;
	TimestampTz next_cursor = 0;
	bool		has_next_cursor = false;
	List	   *seen = NIL;		/* ids already handled at mutation time "since" */
	int			page = 1;
	int			pages = 0;
	int64		expected = -1;

	if (own_transactions)
		caller = fp_txn_begin();
	if (sync_state_lock(admin->name, stream_name, &cursor))
		since = cursor - (TimestampTz) freshpay_sync_overlap * USECS_PER_SEC;
	else
		since = SYNC_EPOCH;
	if (own_transactions)
		fp_txn_commit(caller);
	else
		plans = stream == FP_STREAM_CUSTOMERS ? prepare_customer_plans() : prepare_invoice_plans();
	page_context = AllocSetContextCreate(outer, "freshpay sync page", ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		FpPage	   *result;
		ListCell   *lc;
		bool		finished;

		CHECK_FOR_INTERRUPTS();
		MemoryContextSwitchTo(page_context);
		result = freshportal_list(admin, stream, since, page, freshpay_sync_page_size);
		if (!has_next_cursor && result->has_server_time)
		{
			next_cursor = result->server_time;
			has_next_cursor = true;
		}

		if (own_transactions)
		{
			fp_txn_begin();
			MemoryContextSwitchTo(page_context);
			plans = stream == FP_STREAM_CUSTOMERS ? prepare_customer_plans() : prepare_invoice_plans();
		}
		foreach(lc, result->items)
		{
			void	   *item = lfirst(lc);

			if (freshportal_item_mutation_time(stream, item) == since &&
				id_seen(seen, freshportal_item_id(stream, item)))
				continue;
			counts->fetched++;
			upsert_item(admin, stream, &plans, item, counts);
		}
		if (own_transactions)
			fp_txn_commit(page_context);
		if (pages++ == 0)
			expected = result->total;
		sync_progress_page(pages, counts->fetched, expected);
		MemoryContextSwitchTo(outer);

		finished = result->items == NIL || result->current_page >= result->last_page;
		if (!finished)
		{
			TimestampTz last_time = freshportal_item_mutation_time(stream, llast(result->items));

			if (last_time > since)
			{
				/* Keyset step: restart the list at the last row's time. */
				list_free_deep(seen);
				seen = NIL;
				since = last_time;
				page = 1;
			}
			else
				page++;			/* the whole page shares "since" */
			foreach(lc, result->items)
				if (freshportal_item_mutation_time(stream, lfirst(lc)) == since)
					seen = remember_id(seen, freshportal_item_id(stream, lfirst(lc)));
		}
		MemoryContextReset(page_context);
		if (finished)
			break;
	}
	MemoryContextDelete(page_context);

	if (own_transactions)
		caller = fp_txn_begin();
	if (stream == FP_STREAM_INVOICES)
		link_orphan_invoices(admin->name);
	if (own_transactions)
		(void) sync_state_lock(admin->name, stream_name, &cursor);
	sync_state_store(admin->name, stream_name, has_next_cursor, next_cursor, counts);
	if (own_transactions)
		fp_txn_commit(caller);
}

/* Pull one stream of one administration inside the caller's transaction. */
SyncCounts
sync_freshportal_stream(const Administration *admin, FpStream stream)
{
	SyncCounts	counts = {0};

	SPI_connect();
	sync_progress_begin(admin->name, freshportal_stream_name(stream));
	PG_TRY();
	{
		pull_stream(admin, stream, &counts, false);
	}
	PG_FINALLY();
	{
		sync_progress_end();
	}
	PG_END_TRY();
	SPI_finish();
	return counts;
}

/* The same for the worker: no transaction open while a page is fetched. */
SyncCounts
sync_freshportal_stream_paged(const Administration *admin, FpStream stream)
{
	SyncCounts	counts = {0};

	sync_progress_begin(admin->name, freshportal_stream_name(stream));
	PG_TRY();
	{
		pull_stream(admin, stream, &counts, true);
	}
	PG_FINALLY();
	{
		sync_progress_end();
	}
	PG_END_TRY();
	return counts;
}

PG_FUNCTION_INFO_V1(freshpay_sync);

static void
sync_result(ReturnSetInfo *rsinfo, const char *administration, const char *stream,
			SyncCounts counts)
{
	Datum		values[5];
	bool		nulls[5] = {0};

	values[0] = CStringGetTextDatum(administration);
	values[1] = CStringGetTextDatum(stream);
	values[2] = Int64GetDatum(counts.fetched);
	values[3] = Int64GetDatum(counts.inserted);
	values[4] = Int64GetDatum(counts.updated);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

/*
 * freshpay_sync(administration text DEFAULT NULL): pull customers, then
 * invoices, then PayTrace's transactions and settlement batches, of one
 * administration or of all; one result row per stream.
 */
Datum
freshpay_sync(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	List	   *names;
	ListCell   *lc;

	/* What a sync stores elsewhere is never collected nor written back. */
	mailbox_require_worker_database("freshpay_sync");
	InitMaterializedSRF(fcinfo, 0);

	if (PG_ARGISNULL(0))
		names = administration_names();
	else
		names = list_make1(text_to_cstring(PG_GETARG_TEXT_PP(0)));

	foreach(lc, names)
	{
		Administration *admin = administration_load(lfirst(lc), CurrentMemoryContext);
		static const FpStream streams[] = {FP_STREAM_CUSTOMERS, FP_STREAM_INVOICES};

		for (size_t i = 0; i < lengthof(streams); i++)
			sync_result(rsinfo, admin->name, freshportal_stream_name(streams[i]),
						sync_freshportal_stream(admin, streams[i]));
		sync_result(rsinfo, admin->name, "paytrace_transactions",
					sync_paytrace_apply(admin, sync_paytrace_fetch(admin, sync_profiles_due(admin->name),
																	 sync_ach_due(admin->name))));
		sync_result(rsinfo, admin->name, "settlements",
					sync_settlements_apply(admin, sync_settlements_fetch(admin)));
		/* A person who put a registration right in FreshPortal has freshpay look again now. */
		(void) writeback_recheck_registered_twice(admin->name);
	}
	return (Datum) 0;
}
