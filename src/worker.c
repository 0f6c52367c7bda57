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
#include "autocollect.h"
#include "statement.h"
#include "jobs.h"
#include "mailbox.h"
#include "pipeline.h"
#include "request.h"
#include "resolve.h"
#include "settings.h"
#include "spi_txn.h"
#include "sync.h"
#include "sync_paytrace.h"
#include "worker.h"

/* How long the worker waits for a row lock before trying again later. */
#define WORKER_LOCK_TIMEOUT "5s"

/* Longest idle wait: settings and the extension's existence are rechecked. */
#define WORKER_IDLE_TIMEOUT_MS (10 * 1000L)

/* While serving, how often the worker makes sure the extension is still there. */
#define WORKER_READY_RECHECK_MS 1000

/* Under load, how often the pipeline pauses for the due pass and pruning. */
#define WORKER_TIMERS_MS (1000L)

/*
 * How often the sync worker keeps customer_summary's figures of the
 * customers changed since (a second's work over a large ledger for all
 * customers, milliseconds for the few changed in a few seconds).
 */
#define FIGURES_REFRESH_MS (5 * 1000L)

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

/*
 * Pull one administration: FreshPortal's streams page by page, then
 * PayTrace's exports, each applied in a short transaction; none is open
 * while a request is made.
 */
static void
sync_administration(const char *name, MemoryContext context)
{
	MemoryContext caller = fp_txn_begin();
	Administration *admin = administration_load(name, context);
	PaytracePull *transactions;
	List	   *batches;
	bool		profiles_due = sync_profiles_due(name);
	bool		ach_due = sync_ach_due(name);

	fp_txn_commit(caller);
	sync_freshportal_stream_paged(admin, FP_STREAM_CUSTOMERS);
	sync_freshportal_stream_paged(admin, FP_STREAM_INVOICES);

	transactions = sync_paytrace_fetch(admin, profiles_due, ach_due);
	batches = sync_settlements_fetch(admin);
	caller = fp_txn_begin();
	sync_paytrace_apply(admin, transactions);
	sync_settlements_apply(admin, batches);
	fp_txn_commit(caller);
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
	MemoryContext caller = fp_txn_begin();
	List	   *names;
	ListCell   *lc;

	MemoryContextSwitchTo(context);
	names = administration_names();
	fp_txn_commit(caller);

	pgstat_report_activity(STATE_RUNNING, "scheduled sync");
	foreach(lc, names)
	{
		PG_TRY();
		{
			sync_administration(lfirst(lc), context);
		}
		PG_CATCH();
		{
			ErrorData  *edata = fp_txn_catch(context);

			worker_status_error(edata->message);
			elog(LOG, "freshpay worker: scheduled sync of administration \"%s\" failed: %s",
				 (char *) lfirst(lc), edata->message);
		}
		PG_END_TRY();
	}
	autocollect_queue_due();
	statement_queue_due();
	autocollect_revive();
	worker_status_synced();
	mailbox_wake_worker();
}

/*
 * customer_summary's figures of the customers whose invoices or payments
 * changed since they were kept (freshpay._refresh_customer_figures): in a
 * transaction of its own; a failure is logged and tried again next time
 * (the view stays exact meanwhile, only slower).
 */
static void
refresh_customer_figures(MemoryContext context)
{
	PG_TRY();
	{
		MemoryContext caller = fp_txn_begin();

		pgstat_report_activity(STATE_RUNNING, "refreshing customer figures");
		fp_spi_run("SELECT freshpay._refresh_customer_figures()", 0, NULL, NULL, NULL, SPI_OK_SELECT);
		fp_txn_commit(caller);
	}
	PG_CATCH();
	{
		ErrorData  *edata = fp_txn_catch(context);

		elog(LOG, "freshpay sync worker: keeping customer_summary's figures failed: %s", edata->message);
	}
	PG_END_TRY();
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

/*
 * Serving, and the extension was found ready less than a second ago: skip
 * the check (a transaction) on this wake-up, so that a money call does not
 * wait for it.  A dropped or outdated extension is noticed within a second.
 */
static bool
checked_recently(bool recovered, TimestampTz last_check)
{
	return recovered &&
		!TimestampDifferenceExceeds(last_check, GetCurrentTimestamp(), WORKER_READY_RECHECK_MS);
}

void
freshpay_worker_main(Datum main_arg)
{
	MemoryContext loop_context;
	TimestampTz last_prune = 0;
	TimestampTz last_due_pass = 0;
	TimestampTz last_ready_check = 0;
	bool		ready = false;
	bool		recovered = false;

	worker_start("freshpay worker");
	elog(LOG, "freshpay worker started in database \"%s\"", freshpay_database_name);

	loop_context = AllocSetContextCreate(TopMemoryContext, "freshpay worker loop",
										 ALLOCSET_DEFAULT_SIZES);
	mailbox_register_worker();

	for (;;)
	{
		long		timeout = WORKER_IDLE_TIMEOUT_MS;
		bool		busy = false;

		CHECK_FOR_INTERRUPTS();
		reload_settings_if_asked();

		if (freshpay_worker_enabled && !checked_recently(recovered, last_ready_check))
		{
			ready = extension_ready();
			last_ready_check = GetCurrentTimestamp();
		}
		if (freshpay_worker_enabled && ready)
		{
			if (!recovered)
			{
				/* In-flight attempts are looked up before anything new is sent. */
				job_release_claims();
				resolve_recover();
				request_recover();
				while (pipeline_serve(loop_context, "resolve_payment", WORKER_IDLE_TIMEOUT_MS))
					;
				mailbox_attach_worker();
				recovered = true;
			}
			busy = pipeline_serve(loop_context, NULL, WORKER_TIMERS_MS);

			if (GetCurrentTimestamp() - last_due_pass > USECS_PER_SEC * 60)
			{
				if (autocollect_queue_due() + statement_queue_due() + autocollect_revive() > 0)
					busy = true;
				last_due_pass = GetCurrentTimestamp();
			}
			if (GetCurrentTimestamp() - last_prune > USECS_PER_SEC * 3600)
			{
				jobs_prune();
				last_prune = GetCurrentTimestamp();
			}
			if (!busy)
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
		if (busy)
			continue;

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
 * goes on serving calls and jobs meanwhile; and customer_summary's figures
 * of the customers changed since, every FIGURES_REFRESH_MS.  It follows
 * worker_spi like the money worker; its row locks wait no longer than the
 * money worker's.
 */
void
freshpay_sync_worker_main(Datum main_arg)
{
	MemoryContext loop_context;
	TimestampTz sync_base;		/* the last sync, or when this worker started */
	TimestampTz figures_refreshed = 0;	/* customer_summary's figures last kept */

	worker_start("freshpay sync worker");

	loop_context = AllocSetContextCreate(TopMemoryContext, "freshpay sync worker loop",
										 ALLOCSET_DEFAULT_SIZES);
	sync_base = GetCurrentTimestamp();

	for (;;)
	{
		long		timeout = WORKER_IDLE_TIMEOUT_MS;

		CHECK_FOR_INTERRUPTS();
		reload_settings_if_asked();

		if (freshpay_worker_enabled && extension_ready())
		{
			if (freshpay_sync_interval > 0)
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
			if (TimestampDifferenceExceeds(figures_refreshed, GetCurrentTimestamp(), FIGURES_REFRESH_MS))
			{
				MemoryContextReset(loop_context);
				MemoryContextSwitchTo(loop_context);
				refresh_customer_figures(loop_context);
				figures_refreshed = GetCurrentTimestamp();
			}
			timeout = Min(timeout, FIGURES_REFRESH_MS);
		}
		MemoryContextSwitchTo(TopMemoryContext);

		pgstat_report_activity(STATE_IDLE, NULL);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
