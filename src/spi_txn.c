/*-------------------------------------------------------------------------
 *
 * spi_txn.c
 *	  Short transactions and SPI row access: the one home of that
 *	  boilerplate, below everything that touches freshpay's tables.
 *
 * The workers run every step in a transaction of its own (fp_txn_begin /
 * fp_txn_commit), never one open across a network wait; errors are caught
 * with fp_txn_catch, which ends the failed transaction so the loop goes on.
 * Also the test hook that pauses a worker at a named point.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "postmaster/interrupt.h"

#include "settings.h"
#include "spi_txn.h"

/*
 * Start a transaction with SPI connected and a snapshot, as worker_spi does.
 * Returns the caller's memory context, which fp_txn_commit restores.
 */
MemoryContext
fp_txn_begin(void)
{
	MemoryContext caller = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	return caller;
}

void
fp_txn_commit(MemoryContext caller)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	MemoryContextSwitchTo(caller);
}

/* A statement's plan, prepared once per process and kept (keyed by the SQL's address). */
typedef struct KeptPlan
{
	const char *sql;			/* the key: a string literal */
	SPIPlanPtr	plan;
} KeptPlan;

static HTAB *kept_plans = NULL;

static SPIPlanPtr
kept_plan(const char *sql, int nargs, const Oid *types)
{
	KeptPlan   *entry;
	bool		found;

	if (kept_plans == NULL)
	{
		HASHCTL		ctl = {0};

		ctl.keysize = sizeof(const char *);
		ctl.entrysize = sizeof(KeptPlan);
		kept_plans = hash_create("freshpay kept plans", 128, &ctl, HASH_ELEM | HASH_BLOBS);
	}
	entry = hash_search(kept_plans, &sql, HASH_FIND, NULL);
	if (entry == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare(sql, nargs, (Oid *) types);

		if (plan == NULL)
			elog(ERROR, "freshpay: could not prepare statement (%s): %s",
				 SPI_result_code_string(SPI_result), sql);
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "freshpay: could not keep the plan of: %s", sql);
		entry = hash_search(kept_plans, &sql, HASH_ENTER, &found);
		entry->plan = plan;
	}
	return entry->plan;
}

/*
 * Run one statement with SPI; raise unless it returns expected.  Returns
 * the number of rows processed.  sql must be a string literal: its plan is
 * prepared on first use and kept for the life of the process (the plan
 * cache revalidates it after DDL), keyed by the literal's address.
 */
int64
fp_spi_run(const char *sql, int nargs, const Oid *types, const Datum *values,
		   const char *nulls, int expected)
{
	int			rc = SPI_execute_plan(kept_plan(sql, nargs, types), (Datum *) values, nulls,
									  false, 0);

	if (rc != expected)
		elog(ERROR, "freshpay: statement failed (%s): %s", SPI_result_code_string(rc), sql);
	return (int64) SPI_processed;
}

/* Column col of the first row of the last SPI result as text (NULL if null), in context. */
char *
fp_spi_text(MemoryContext context, int col)
{
	MemoryContext old = MemoryContextSwitchTo(context);
	char	   *value = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col);

	MemoryContextSwitchTo(old);
	return value;
}

/* Column col of the first row of the last SPI result as int8; false if null. */
bool
fp_spi_int64(int col, int64 *result)
{
	bool		isnull;
	Datum		value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col, &isnull);

	if (!isnull)
		*result = DatumGetInt64(value);
	return !isnull;
}

/*
 * In a PG_CATCH block of the worker: take the error (copied into context)
 * and end the transaction it happened in, so the worker can go on.  A cancel
 * or termination is not the worker's to swallow: it is rethrown.
 */
ErrorData *
fp_txn_catch(MemoryContext context)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(context);
	edata = CopyErrorData();
	if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED || edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
		PG_RE_THROW();
	FlushErrorState();
	if (IsTransactionState())
		AbortCurrentTransaction();
	MemoryContextSwitchTo(context);
	return edata;
}

/* "message: detail", for job rows and worker_status. */
char *
fp_error_text(const ErrorData *edata)
{
	return edata->detail ? psprintf("%s: %s", edata->message, edata->detail)
		: pstrdup(edata->message);
}

/* The date of ts in the session's time zone. */
DateADT
fp_date_of(TimestampTz ts)
{
	return DatumGetDateADT(DirectFunctionCall1(timestamptz_date, TimestampTzGetDatum(ts)));
}

/*
 * From an error path: run step(arg) in a transaction of its own, with any
 * transaction the error left aborted first.  Returns false, with the error
 * dropped, when that fails too.
 */
bool
fp_txn_on_the_side(void (*step) (void *arg), void *arg)
{
	MemoryContext outer = CurrentMemoryContext;
	volatile bool done = false;

	PG_TRY();
	{
		MemoryContext caller;

		if (IsTransactionState())
			AbortCurrentTransaction();
		caller = fp_txn_begin();
		step(arg);
		fp_txn_commit(caller);
		done = true;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(outer);
		FlushErrorState();
		if (IsTransactionState())
			AbortCurrentTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(outer);
	return done;
}

/*
 * Test hook: with freshpay.debug_pause_at naming this point, stop here
 * (interruptibly, up to five minutes) so that a test can kill the worker at
 * an exact point of an attempt.  Resetting the setting and reloading ends
 * the pause.
 */
void
fp_pause_point(const char *point, int64 payment_id)
{
	TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 300 * 1000L);

	if (freshpay_debug_pause_at == NULL || strcmp(freshpay_debug_pause_at, point) != 0)
		return;
	elog(LOG, "freshpay worker: pausing at %s for payment " INT64_FORMAT, point, payment_id);
	while (strcmp(freshpay_debug_pause_at, point) == 0 && GetCurrentTimestamp() < until)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 1000L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
	}
}
