/*-------------------------------------------------------------------------
 *
 * freshpay.c
 *	  Entry point: module magic, _PG_init and freshpay's shared memory.
 *
 * freshpay keeps tokens in shared memory and runs background workers, so
 * it must be loaded through shared_preload_libraries; anything else is
 * refused with a hint.  _PG_init only calls the subsystems' initialisers.
 *
 * Shared memory follows PostgreSQL's own idiom (ipci.c): each area has its
 * own XxxShmemSize() and XxxShmemInit(); the hooks here only add the sizes
 * up and call the initialisers.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"

#include "mailbox.h"
#include "settings.h"
#include "sync_progress.h"
#include "token_cache.h"
#include "worker.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
freshpay_shmem_request(void)
{
	Size		size = 0;

	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	size = add_size(size, MailboxShmemSize());
	size = add_size(size, TokenCacheShmemSize());
	size = add_size(size, SyncProgressShmemSize());
	RequestAddinShmemSpace(size);
	RequestNamedLWLockTranche(TOKEN_CACHE_TRANCHE, 1);
	RequestNamedLWLockTranche(SYNC_PROGRESS_TRANCHE, 1);
}

static void
freshpay_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	MailboxShmemInit();
	TokenCacheShmemInit();
	SyncProgressShmemInit();
	LWLockRelease(AddinShmemInitLock);
}

void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("freshpay must be loaded via shared_preload_libraries"),
				 errhint("Add freshpay to shared_preload_libraries in postgresql.conf and restart the server.")));

	FreshpaySettingsInit();

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = freshpay_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = freshpay_shmem_startup;

	FreshpayWorkerRegister();
}
