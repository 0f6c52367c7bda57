/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The freshpay background worker: lifecycle, main loop, job queue.
 *
 * One static worker, started once recovery has finished (so it never runs
 * on a hot standby), connected to freshpay.database_name, restarted by the
 * postmaster after a crash.  It follows worker_spi: signal handlers before
 * unblocking signals, latch waits with WL_EXIT_ON_PM_DEATH (never sleep()),
 * SIGHUP re-reads the configuration, SIGTERM ends it through die(), and a
 * memory context reset on every loop.
 *
 * Each loop: money calls handed over by backends (mailbox.c, run by
 * attempt.c), then due jobs of freshpay.jobs (write-back to FreshPortal,
 * lookups of unknown outcomes).  No transaction is ever open across a
 * network wait.  On start, before serving anything new, every attempt left
 * in flight is looked up at PayTrace (attempt_recover + due resolve jobs).
 *
 * A second static worker, the sync worker, runs the scheduled sync
 * (freshpay.sync_interval) in a process of its own, so that a long pull
 * never holds up a money call; it wakes the money worker for the
 * collections it queues.
 *
 * The worker touches freshpay's tables only once the extension exists.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "administration.h"
#include "attempt.h"
#include "mailbox.h"
#include "settings.h"
#include "sync.h"
#include "worker.h"
#include "writeback.h"

/* How long the worker waits for a row lock before trying again later. */
#define WORKER_LOCK_TIMEOUT "5s"

/* Longest idle wait: settings and the extension's existence are rechecked. */
#define WORKER_IDLE_TIMEOUT_MS (10 * 1000L)

/* Backoff of failing jobs: 1 s doubling up to freshpay.max_retry_delay, with jitter. */
#define JOB_BACKOFF_BASE_MS 1000L

void
FreshpayWorkerRegister(void)
{
	BackgroundWorker worker = {0};

	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 1;
	strlcpy(worker.bgw_library_name, "freshpay", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "freshpay_worker_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "freshpay worker", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "freshpay worker", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);

	/* The scheduled sync runs beside it: a long sync never holds up a money call. */
	strlcpy(worker.bgw_function_name, "freshpay_sync_worker_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "freshpay sync worker", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "freshpay sync worker", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

/*
 * Start a transaction with SPI connected and a snapshot, as worker_spi does.
 * Returns the caller's memory context, which worker_commit restores.
 */
MemoryContext
worker_begin(void)
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
worker_commit(MemoryContext caller)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller);
}

/*
 * Run one statement with SPI; raise unless it returns expected.  Returns
 * the number of rows processed.
 */
int64
spi_run(const char *sql, int nargs, const Oid *types, const Datum *values,
		const char *nulls, int expected)
{
	int			rc = SPI_execute_with_args(sql, nargs, (Oid *) types, (Datum *) values,
										   nulls, false, 0);

	if (rc != expected)
		elog(ERROR, "freshpay: statement failed (%s): %s", SPI_result_code_string(rc), sql);
	return (int64) SPI_processed;
}

/* Column col of the first row of the last SPI result as text (NULL if null), in context. */
char *
spi_text(MemoryContext context, int col)
{
	MemoryContext old = MemoryContextSwitchTo(context);
	char	   *value = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col);

	MemoryContextSwitchTo(old);
	return value;
}

/* Column col of the first row of the last SPI result as int8; false if null. */
bool
spi_int64(int col, int64 *result)
{
	bool		isnull;
	Datum		value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col, &isnull);

	if (!isnull)
		*result = DatumGetInt64(value);
	return !isnull;
}

/* Queue a job (run_at 0 = now); a job of that kind already queued stays. */
void
job_queue(const char *kind, int64 payment_id, TimestampTz run_at)
{
	Oid			types[] = {TEXTOID, INT8OID, TIMESTAMPTZOID};
	Datum		values[] = {CStringGetTextDatum(kind), Int64GetDatum(payment_id),
	TimestampTzGetDatum(run_at)};
	char		nulls[] = {' ', ' ', run_at ? ' ' : 'n'};

	spi_run("INSERT INTO freshpay.jobs (kind, payment_id, next_run_at)"
			" VALUES ($1, $2, COALESCE($3, pg_catalog.now()))"
			" ON CONFLICT (kind, payment_id) WHERE state OPERATOR(pg_catalog.=) 'queued'"
			" DO UPDATE SET next_run_at = LEAST(jobs.next_run_at, EXCLUDED.next_run_at),"
			"               updated_at = pg_catalog.now()",
			3, types, values, nulls, SPI_OK_INSERT);
	mailbox_wake_worker();
}

void
job_finish(const char *kind, int64 payment_id)
{
	Oid			types[] = {TEXTOID, INT8OID};
	Datum		values[] = {CStringGetTextDatum(kind), Int64GetDatum(payment_id)};

	spi_run("UPDATE freshpay.jobs SET state = 'done', updated_at = pg_catalog.now()"
			" WHERE kind OPERATOR(pg_catalog.=) $1 AND payment_id OPERATOR(pg_catalog.=) $2"
			"   AND state OPERATOR(pg_catalog.=) 'queued'",
			2, types, values, NULL, SPI_OK_UPDATE);
}

/*
 * In a PG_CATCH block of the worker: take the error (copied into context)
 * and end the transaction it happened in, so the worker can go on.  A cancel
 * or termination is not the worker's to swallow: it is rethrown.
 */
ErrorData *
worker_catch(MemoryContext context)
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
worker_error_text(const ErrorData *edata)
{
	return edata->detail ? psprintf("%s: %s", edata->message, edata->detail)
		: pstrdup(edata->message);
}

/* The date of ts in the session's time zone. */
DateADT
date_of_timestamp(TimestampTz ts)
{
	return DatumGetDateADT(DirectFunctionCall1(timestamptz_date, TimestampTzGetDatum(ts)));
}

/*
 * Test hook: with freshpay.debug_pause_at naming this point, stop here
 * (interruptibly, up to five minutes) so that a test can kill the worker at
 * an exact point of an attempt.  Resetting the setting and reloading ends
 * the pause.
 */
void
worker_pause_point(const char *point, int64 payment_id)
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

/*
 * Is freshpay created here, at the version of this library?  An extension
 * being created or dropped, or left at an older version after the library
 * was upgraded, is not touched (the latter with a hint, once).
 */
static bool
extension_ready(void)
{
	static bool warned = false;
	char	   *version = NULL;
	bool		ready;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (OidIsValid(get_extension_oid("freshpay", true)) && !creating_extension)
	{
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		if (SPI_execute("SELECT extversion FROM pg_catalog.pg_extension"
						" WHERE extname OPERATOR(pg_catalog.=) 'freshpay'", true, 1) == SPI_OK_SELECT &&
			SPI_processed == 1)
			version = MemoryContextStrdup(TopMemoryContext,
										  SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
		PopActiveSnapshot();
		SPI_finish();
	}
	CommitTransactionCommand();

	ready = version != NULL && strcmp(version, FRESHPAY_VERSION) == 0;
	if (version != NULL && !ready && !warned)
	{
		ereport(WARNING,
				(errmsg("freshpay worker: extension version %s is installed, the library is version %s",
						version, FRESHPAY_VERSION),
				 errhint("Run ALTER EXTENSION freshpay UPDATE in database \"%s\"; the worker waits until then.",
						 freshpay_database_name)));
		warned = true;
	}
	if (version != NULL)
		pfree(version);
	return ready;
}

static long
job_backoff_ms(int attempts)
{
	long		delay = JOB_BACKOFF_BASE_MS << Min(attempts, 20);

	delay = Min(delay, freshpay_max_retry_delay);
	/* Jitter: between half and all of the delay. */
	return delay / 2 + (long) (pg_prng_double(&pg_global_prng_state) * (delay / 2));
}

typedef struct Job
{
	int64		id;
	char		kind[32];
	int64		payment_id;		/* 0 for collect_invoice */
	int64		invoice_id;		/* collect_invoice only */
	int			attempts;
} Job;


/*
 * Claim the next due job (of kind only_kind, if given) in a short
 * transaction of its own.  The claim is a lease: the job is not due again
 * before its run can have ended, so a job in flight is not claimed twice and
 * one whose worker died comes back.
 */
static bool
job_next(Job *job, const char *only_kind)
{
	MemoryContext caller = worker_begin();
	Oid			types[] = {TEXTOID, INT4OID};
	Datum		values[] = {CStringGetTextDatum(only_kind ? only_kind : ""),
	Int32GetDatum(2 * (freshpay_request_timeout + freshpay_connect_timeout) / 1000 + 60)};
	bool		found;

	found = spi_run("UPDATE freshpay.jobs SET next_run_at = pg_catalog.now() OPERATOR(pg_catalog.+)"
					"       pg_catalog.make_interval(secs => $2), claimed_at = pg_catalog.now()"
					" WHERE id = (SELECT id FROM freshpay.jobs"
					"   WHERE state OPERATOR(pg_catalog.=) 'queued'"
					"     AND next_run_at OPERATOR(pg_catalog.<=) pg_catalog.now()"
					"     AND ($1 OPERATOR(pg_catalog.=) '' OR kind OPERATOR(pg_catalog.=) $1)"
					"   ORDER BY next_run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)"
					" RETURNING id, kind, COALESCE(payment_id, 0), attempts, COALESCE(invoice_id, 0)",
					2, types, values, NULL, SPI_OK_UPDATE_RETURNING) == 1;
	if (found)
	{
		bool		isnull;
		HeapTuple	row = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		job->id = DatumGetInt64(SPI_getbinval(row, desc, 1, &isnull));
		strlcpy(job->kind, SPI_getvalue(row, desc, 2), sizeof(job->kind));
		job->payment_id = DatumGetInt64(SPI_getbinval(row, desc, 3, &isnull));
		job->attempts = DatumGetInt32(SPI_getbinval(row, desc, 4, &isnull));
		job->invoice_id = DatumGetInt64(SPI_getbinval(row, desc, 5, &isnull));
	}
	worker_commit(caller);
	return found;
}

/*
 * Record a job's result: done, due again at next_run_at, or failed with
 * error — retried with backoff (at least retry_after_s, a Retry-After the
 * remote API gave; -1 if none), or dead when the failure is permanent or
 * attempts are used up.
 */
static void
job_update(const Job *job, bool done, TimestampTz next_run_at, const char *error, bool permanent,
		   int retry_after_s)
{
	MemoryContext caller = worker_begin();
	int			attempts = job->attempts + 1;

	/*
	 * Write-back and lookups are never given up: an outcome must reach
	 * FreshPortal, and an unknown one must be learned.  They retry with a
	 * backoff capped by freshpay.max_retry_delay; past freshpay.max_attempts
	 * they are an alert in freshpay.exceptions, not an end.  A collection may die; it
	 * comes back when it can succeed (revive_collections).
	 */
	bool		never_dies = strcmp(job->kind, "collect_invoice") != 0;
	bool		dead = error != NULL && !never_dies && (permanent || attempts >= freshpay_max_attempts);
	long		delay_ms = error ? job_backoff_ms(attempts - 1) : 0;
	Oid			types[] = {INT8OID, TEXTOID, INT4OID, TIMESTAMPTZOID, TEXTOID};
	Datum		values[] = {
		Int64GetDatum(job->id),
		CStringGetTextDatum(done ? "done" : dead ? "dead" : "queued"),
		Int32GetDatum(attempts),
		TimestampTzGetDatum(error ? TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
																 Max(delay_ms, retry_after_s * 1000L))
							: next_run_at),
		error ? CStringGetTextDatum(error) : (Datum) 0
	};
	char		nulls[] = {' ', ' ', ' ', ' ', error ? ' ' : 'n'};

	spi_run("UPDATE freshpay.jobs SET state = $2, attempts = $3, next_run_at = $4, claimed_at = NULL,"
			"       last_error = COALESCE($5, last_error), updated_at = pg_catalog.now()"
			" WHERE id OPERATOR(pg_catalog.=) $1",
			5, types, values, nulls, SPI_OK_UPDATE);
	worker_commit(caller);
	if (dead)
		elog(WARNING, "freshpay worker: gave up job " INT64_FORMAT " (%s) after %d attempts: %s",
			 job->id, job->kind, attempts, error);
	else if (error != NULL && never_dies && attempts == freshpay_max_attempts)
		elog(WARNING, "freshpay worker: job " INT64_FORMAT " (%s) failed %d times and keeps retrying: %s",
			 job->id, job->kind, attempts, error);
}

/*
 * Errors that a retry cannot mend: bad data, a state that forbids the call,
 * missing permissions or features.  Everything else (network, remote 5xx, a
 * collection in progress) is retried.
 */
static bool
is_permanent(int sqlerrcode)
{
	const char *state = unpack_sql_state(sqlerrcode);

	/* Busy, or a row held by someone else's transaction: later. */
	if (sqlerrcode == ERRCODE_OBJECT_IN_USE || sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE)
		return false;
	return strncmp(state, "22", 2) == 0 || strncmp(state, "42", 2) == 0 ||
		strncmp(state, "0A", 2) == 0 || strncmp(state, "P0", 2) == 0 ||
		strncmp(state, "28", 2) == 0 || strncmp(state, "55", 2) == 0;
}

/* Run one job; errors become a retry with backoff, never the worker's end. */
static void
job_run(const Job *job)
{
	MemoryContext context = CurrentMemoryContext;
	volatile TimestampTz again = 0;
	char	   *volatile error = NULL;

	pgstat_report_activity(STATE_RUNNING, job->kind);
	worker_status_state(WORKER_WORKING);
	PG_TRY();
	{
		if (strcmp(job->kind, "resolve_payment") == 0)
			again = attempt_resolve(job->payment_id);
		else if (strcmp(job->kind, "register_payment") == 0)
			writeback_register(job->payment_id);
		else if (strcmp(job->kind, "reverse_payment") == 0)
			writeback_reverse(job->payment_id);
	}
	PG_CATCH();
	{
		ErrorData  *edata = worker_catch(context);

		error = worker_error_text(edata);
		worker_status_error(error);
	}
	PG_END_TRY();
	/* Write-back and lookups are never permanent failures: job_update retries them. */
	job_update(job, error == NULL && again == 0, again, error, false, -1);
}

/*
 * On worker start: the claims of a worker that died are void; its jobs are
 * due at once rather than when their lease runs out.
 */
static void
job_release_claims(void)
{
	MemoryContext caller = worker_begin();
	int64		released;

	released = spi_run("UPDATE freshpay.jobs SET next_run_at = pg_catalog.now(), claimed_at = NULL"
					   " WHERE state OPERATOR(pg_catalog.=) 'queued' AND claimed_at IS NOT NULL",
					   0, NULL, NULL, NULL, SPI_OK_UPDATE);
	worker_commit(caller);
	if (released > 0)
		elog(LOG, "freshpay worker: " INT64_FORMAT " jobs claimed by a previous worker are due again", released);
}

/* When the next queued job is due, or 0 if none is queued. */
static TimestampTz
job_next_due(void)
{
	MemoryContext caller = worker_begin();
	TimestampTz due = 0;

	if (spi_run("SELECT pg_catalog.min(next_run_at) FROM freshpay.jobs"
				" WHERE state OPERATOR(pg_catalog.=) 'queued'",
				0, NULL, NULL, NULL, SPI_OK_SELECT) == 1)
	{
		bool		isnull;
		Datum		value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			due = DatumGetTimestampTz(value);
	}
	worker_commit(caller);
	return due;
}

/*
 * Queue the collection of invoices of on_due_date customers that are due and
 * have never been collected nor queued.  Returns how many were queued.
 */
static int64
queue_due_collections(void)
{
	MemoryContext caller = worker_begin();
	int64		queued;

	queued = spi_run("INSERT INTO freshpay.jobs (kind, invoice_id)"
					 " SELECT 'collect_invoice', i.id FROM freshpay.invoices i"
					 "   JOIN freshpay.customers c ON c.id OPERATOR(pg_catalog.=) i.customer_id"
					 "  WHERE c.collection OPERATOR(pg_catalog.=) 'on_due_date'"
					 "    AND c.paytrace_customer_id IS NOT NULL AND NOT c.blocked"
					 "    AND i.type OPERATOR(pg_catalog.=) 'invoice'"
					 "    AND i.status OPERATOR(pg_catalog.=) ANY (ARRAY['open', 'partially_paid'])"
					 "    AND i.due_date OPERATOR(pg_catalog.<=) CURRENT_DATE"
					 "    AND NOT EXISTS (SELECT FROM freshpay.jobs j WHERE j.kind OPERATOR(pg_catalog.=) 'collect_invoice'"
					 "                       AND j.invoice_id OPERATOR(pg_catalog.=) i.id)"
					 "    AND NOT EXISTS (SELECT FROM freshpay.payments p WHERE p.invoice_id OPERATOR(pg_catalog.=) i.id)"
					 " ON CONFLICT DO NOTHING",
					 0, NULL, NULL, NULL, SPI_OK_INSERT);
	worker_commit(caller);
	return queued;
}

/*
 * Dead collections come back when they may succeed: the invoice or its
 * customer changed since the job died (a sync brought news), or an hour
 * has passed (credentials fixed, PayTrace back).  The
 * collect job's own checks then decide.  Returns how many came back.
 */
static int64
revive_collections(void)
{
	MemoryContext caller = worker_begin();
	int64		revived;

	revived = spi_run("UPDATE freshpay.jobs j SET state = 'queued', attempts = 0,"
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
	worker_commit(caller);
	if (revived > 0)
		elog(LOG, "freshpay worker: " INT64_FORMAT " collections given up earlier are tried again", revived);
	return revived;
}

/*
 * Pull one administration: FreshPortal's streams page by page, then
 * PayTrace's exports, each applied in a short transaction; none is open
 * while a request is made.
 */
static void
sync_administration(const char *name, MemoryContext context)
{
	MemoryContext caller = worker_begin();
	Administration *admin = administration_load(name, context);
	List	   *transactions;
	List	   *batches;

	worker_commit(caller);
	sync_freshportal_stream_paged(admin, FP_STREAM_CUSTOMERS);
	sync_freshportal_stream_paged(admin, FP_STREAM_INVOICES);

	transactions = sync_paytrace_fetch(admin);
	batches = sync_settlements_fetch(admin);
	caller = worker_begin();
	sync_paytrace_apply(admin, transactions);
	sync_settlements_apply(admin, batches);
	worker_commit(caller);
}

/*
 * The scheduled sync (freshpay.sync_interval), in the sync worker: every
 * administration, each on its own so that one failing does not stop the
 * others; then due invoices, and dead collections that may succeed now; the
 * money worker is woken for what that queued.
 */
static void
scheduled_sync(void)
{
	MemoryContext context = CurrentMemoryContext;
	MemoryContext caller = worker_begin();
	List	   *names;
	ListCell   *lc;

	MemoryContextSwitchTo(context);
	names = administration_names();
	worker_commit(caller);

	pgstat_report_activity(STATE_RUNNING, "scheduled sync");
	foreach(lc, names)
	{
		PG_TRY();
		{
			sync_administration(lfirst(lc), context);
		}
		PG_CATCH();
		{
			ErrorData  *edata = worker_catch(context);

			worker_status_error(edata->message);
			elog(LOG, "freshpay worker: scheduled sync of administration \"%s\" failed: %s",
				 (char *) lfirst(lc), edata->message);
		}
		PG_END_TRY();
	}
	queue_due_collections();
	revive_collections();
	worker_status_synced();
	mailbox_wake_worker();
}

/* Drop history and finished jobs older than freshpay.history_retention. */
static void
prune_history(void)
{
	MemoryContext caller = worker_begin();
	Oid			types[] = {INT4OID};
	Datum		values[] = {Int32GetDatum(freshpay_history_retention)};

	spi_run("DELETE FROM freshpay.payment_history"
			" WHERE at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-)"
			"       pg_catalog.make_interval(days => $1))",
			1, types, values, NULL, SPI_OK_DELETE);
	spi_run("DELETE FROM freshpay.jobs WHERE state OPERATOR(pg_catalog.=) ANY (ARRAY['done', 'dead'])"
			"   AND updated_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-)"
			"       pg_catalog.make_interval(days => $1))",
			1, types, values, NULL, SPI_OK_DELETE);
	worker_commit(caller);
}

static void
reload_settings_if_asked(void)
{
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
}

/* A collect_invoice job's money call ended: done, again later, or failed. */
static void
collect_job_ended(const AttemptEnd *end)
{
	Job			job = {.id = end->job_id, .kind = "collect_invoice", .attempts = end->job_attempts};

	if (end->error != NULL)
	{
		worker_status_error(end->error);
		job_update(&job, false, 0, end->error, end->sqlerrcode != 0 && is_permanent(end->sqlerrcode),
				   end->retry_after);
	}
	else if (end->outcome == PT_UNKNOWN)
		/* Its resolve job looks it up; this one waits while it is unknown. */
		job_update(&job, false,
				   TimestampTzPlusMilliseconds(GetCurrentTimestamp(), freshpay_request_timeout + 10000L),
				   NULL, false, -1);
	else
		job_update(&job, true, 0, NULL, false, -1);
}

/* Start the money call of a collect_invoice job, unless there is nothing to do. */
static void
collect_job_start(const Job *job)
{
	MemoryContext context = CurrentMemoryContext;
	volatile TimestampTz check = 0;
	char	   *error = NULL;
	int			sqlerrcode = 0;

	PG_TRY();
	{
		check = attempt_collect_check(job->invoice_id);
	}
	PG_CATCH();
	{
		ErrorData  *edata = worker_catch(context);

		worker_status_error(edata->message);
		job_update(job, false, 0, worker_error_text(edata), false, -1);
		return;
	}
	PG_END_TRY();

	if (check >= 0)
		job_update(job, check == 0, check, NULL, false, -1);
	else
	{
		MoneyCall	call = {0};

		call.op = MONEY_CAPTURE;
		call.target_id = job->invoice_id;
		strlcpy(call.requested_by, "freshpay worker", sizeof(call.requested_by));
		if (attempt_begin(-1, &call, job->id, job->attempts, &error, &sqlerrcode) == NULL)
		{
			worker_status_error(error);
			job_update(job, false, 0, error, is_permanent(sqlerrcode), -1);
		}
	}
}

/* Record the outcome of every money call PayTrace has answered. */
static void
harvest(void)
{
	HttpResponse response;
	void	   *owner;

	while (http_finished(&response, &owner))
	{
		AttemptEnd *end = attempt_finish((Pending *) owner, &response);

		if (end->job_id != 0)
			collect_job_ended(end);
	}
}

/*
 * Work until nothing is due: money calls from the mailbox first, then due
 * jobs; up to freshpay.max_parallel_requests PayTrace requests in flight,
 * driven between the short transactions that plan and record them.
 */
static void
serve(MemoryContext loop_context)
{
	int			slot;
	MoneyCall	call;
	Job			job;
	char	   *error;
	int			sqlerrcode;

	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		reload_settings_if_asked();
		MemoryContextReset(loop_context);
		MemoryContextSwitchTo(loop_context);
		/* Keep transfers moving between jobs, not only when idle. */
		http_drive(0);
		harvest();

		if (http_in_flight() < freshpay_max_parallel_requests)
		{
			if (mailbox_take(&slot, &call))
			{
				pgstat_report_activity(STATE_RUNNING, "money call");
				worker_status_state(WORKER_WORKING);
				(void) attempt_begin(slot, &call, 0, 0, &error, &sqlerrcode);
				continue;
			}
			if (job_next(&job, NULL))
			{
				if (strcmp(job.kind, "collect_invoice") == 0)
					collect_job_start(&job);
				else
					job_run(&job);
				continue;
			}
		}
		if (http_in_flight() > 0)
		{
			pgstat_report_activity(STATE_RUNNING, "waiting for PayTrace");
			http_drive(100);
			continue;
		}
		break;
	}
}

/*
 * The start of both workers, as worker_spi does it: signal handlers, then
 * signals unblocked, then the database.  Neither ever waits long on a row a
 * user's transaction holds (an idle session that called freshpay_sync(),
 * say): the step fails with 55P03 and is tried again later, and every other
 * call goes on.
 */
static void
worker_start(const char *name)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnection(freshpay_database_name, NULL, 0);
	pgstat_report_appname(name);
	SetConfigOption("lock_timeout", WORKER_LOCK_TIMEOUT, PGC_SUSET, PGC_S_OVERRIDE);
}

void
freshpay_worker_main(Datum main_arg)
{
	MemoryContext loop_context;
	TimestampTz last_prune = 0;
	TimestampTz last_due_pass = 0;
	bool		recovered = false;

	worker_start("freshpay worker");
	elog(LOG, "freshpay worker started in database \"%s\"", freshpay_database_name);

	loop_context = AllocSetContextCreate(TopMemoryContext, "freshpay worker loop",
										 ALLOCSET_DEFAULT_SIZES);
	mailbox_register_worker();

	for (;;)
	{
		long		timeout = WORKER_IDLE_TIMEOUT_MS;

		CHECK_FOR_INTERRUPTS();
		reload_settings_if_asked();

		if (freshpay_worker_enabled && extension_ready())
		{
			if (!recovered)
			{
				/* In-flight attempts are looked up before anything new is sent. */
				MemoryContextSwitchTo(loop_context);
				job_release_claims();
				attempt_recover();
				for (;;)
				{
					Job			job;

					MemoryContextReset(loop_context);
					if (!job_next(&job, "resolve_payment"))
						break;
					job_run(&job);
				}
				mailbox_attach_worker();
				recovered = true;
			}
			serve(loop_context);

			if (GetCurrentTimestamp() - last_due_pass > USECS_PER_SEC * 60)
			{
				if (queue_due_collections() + revive_collections() > 0)
					serve(loop_context);
				last_due_pass = GetCurrentTimestamp();
			}

			if (GetCurrentTimestamp() - last_prune > USECS_PER_SEC * 3600)
			{
				prune_history();
				last_prune = GetCurrentTimestamp();
			}
			{
				TimestampTz due = job_next_due();

				if (due != 0)
					timeout = Max(Min(timeout, TimestampDifferenceMilliseconds(GetCurrentTimestamp(), due)), 10);
			}
		}
		else if (recovered)
		{
			/* Disabled, or the extension was dropped: stop taking calls. */
			mailbox_detach_worker();
			recovered = false;
		}
		MemoryContextSwitchTo(TopMemoryContext);

		pgstat_report_activity(STATE_IDLE, NULL);
		if (recovered)
			worker_status_state(WORKER_IDLE);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/*
 * The sync worker: the scheduled pull of every administration, every
 * freshpay.sync_interval, in a process of its own so that the money worker
 * goes on serving calls and jobs meanwhile.  It follows worker_spi like the
 * money worker; its row locks wait no longer than the money worker's.
 */
void
freshpay_sync_worker_main(Datum main_arg)
{
	MemoryContext loop_context;
	TimestampTz sync_base;		/* the last sync, or when this worker started */

	worker_start("freshpay sync worker");

	loop_context = AllocSetContextCreate(TopMemoryContext, "freshpay sync worker loop",
										 ALLOCSET_DEFAULT_SIZES);
	sync_base = GetCurrentTimestamp();

	for (;;)
	{
		long		timeout = WORKER_IDLE_TIMEOUT_MS;

		CHECK_FOR_INTERRUPTS();
		reload_settings_if_asked();

		if (freshpay_worker_enabled && freshpay_sync_interval > 0 && extension_ready())
		{
			TimestampTz next_sync = sync_base + (TimestampTz) freshpay_sync_interval * USECS_PER_SEC;

			if (GetCurrentTimestamp() >= next_sync)
			{
				MemoryContextReset(loop_context);
				MemoryContextSwitchTo(loop_context);
				scheduled_sync();
				sync_base = GetCurrentTimestamp();
				next_sync = sync_base + (TimestampTz) freshpay_sync_interval * USECS_PER_SEC;
			}
			timeout = Max(Min(timeout, TimestampDifferenceMilliseconds(GetCurrentTimestamp(), next_sync)), 10);
		}
		MemoryContextSwitchTo(TopMemoryContext);

		pgstat_report_activity(STATE_IDLE, NULL);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
