/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  Lifecycle of the freshpay background worker.
 *
 * One static worker, started once recovery has finished (so it never runs
 * on a hot standby), connected to freshpay.database_name, restarted by the
 * postmaster after a crash.  It follows worker_spi: signal handlers before
 * unblocking signals, latch waits with WL_EXIT_ON_PM_DEATH (never sleep()),
 * SIGHUP re-reads the configuration, SIGTERM ends it through die().
 *
 * In this version the worker only keeps its place: queue processing and
 * scheduled syncs arrive with the job protocol.  It must not touch
 * freshpay's tables before the extension exists.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"

#include "settings.h"
#include "worker.h"

/* How often the idle worker looks at its settings without being woken. */
#define WORKER_IDLE_TIMEOUT_MS (60 * 1000L)

void
FreshpayWorkerRegister(void)
{
	BackgroundWorker worker = {0};

	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 10;
	strlcpy(worker.bgw_library_name, "freshpay", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "freshpay_worker_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "freshpay worker", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "freshpay worker", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

void
freshpay_worker_main(Datum main_arg)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnection(freshpay_database_name, NULL, 0);
	pgstat_report_appname("freshpay worker");
	elog(LOG, "freshpay worker started in database \"%s\"", freshpay_database_name);

	for (;;)
	{
		pgstat_report_activity(STATE_IDLE, NULL);
		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 WORKER_IDLE_TIMEOUT_MS,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
	}
}
