/*-------------------------------------------------------------------------
 *
 * sync_progress.c
 *	  One slot per backend running a sync, read by freshpay.sync_progress.
 *
 * With every slot taken a sync still runs, just unobserved.  This file owns
 * no network code and no SQL.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "sync_progress.h"

#define PROGRESS_SLOTS	32

typedef struct ProgressSlot
{
	int			pid;			/* 0 = free */
	char		administration[NAMEDATALEN];
	char		stream[32];
	int			pages;			/* requests answered so far */
	int64		rows_done;
	int64		rows_expected;	/* FreshPortal's total at the first page, or -1 */
	TimestampTz started_at;
} ProgressSlot;

typedef struct SyncProgress
{
	LWLock	   *lock;
	ProgressSlot slots[PROGRESS_SLOTS];
} SyncProgress;

static SyncProgress *progress = NULL;

/* This backend's slot, if it holds one. */
static ProgressSlot *my_progress = NULL;

Size
SyncProgressShmemSize(void)
{
	return MAXALIGN(sizeof(SyncProgress));
}

/* In the shmem startup hook, under AddinShmemInitLock. */
void
SyncProgressShmemInit(void)
{
	bool		found;

	progress = ShmemInitStruct("freshpay sync progress", sizeof(SyncProgress), &found);
	if (!found)
	{
		memset(progress, 0, sizeof(SyncProgress));
		progress->lock = &(GetNamedLWLockTranche(SYNC_PROGRESS_TRANCHE))->lock;
	}
}

static void
sync_progress_release(int code, Datum arg)
{
	sync_progress_end();
}

void
sync_progress_begin(const char *administration, const char *stream)
{
	static bool exit_hook_registered = false;

	Assert(progress != NULL);
	LWLockAcquire(progress->lock, LW_EXCLUSIVE);
	if (my_progress == NULL)
	{
		for (int i = 0; i < PROGRESS_SLOTS; i++)
		{
			if (progress->slots[i].pid == 0)
			{
				my_progress = &progress->slots[i];
				break;
			}
		}
	}
	/* With every slot taken the sync still runs, just unobserved. */
	if (my_progress != NULL)
	{
		my_progress->pid = MyProcPid;
		strlcpy(my_progress->administration, administration, NAMEDATALEN);
		strlcpy(my_progress->stream, stream, sizeof(my_progress->stream));
		my_progress->pages = 0;
		my_progress->rows_done = 0;
		my_progress->rows_expected = -1;
		my_progress->started_at = GetCurrentTimestamp();
	}
	LWLockRelease(progress->lock);

	if (!exit_hook_registered)
	{
		before_shmem_exit(sync_progress_release, (Datum) 0);
		exit_hook_registered = true;
	}
}

void
sync_progress_page(int pages, int64 rows_done, int64 rows_expected)
{
	if (my_progress == NULL)
		return;
	LWLockAcquire(progress->lock, LW_EXCLUSIVE);
	my_progress->pages = pages;
	my_progress->rows_done = rows_done;
	my_progress->rows_expected = rows_expected;
	LWLockRelease(progress->lock);
}

void
sync_progress_end(void)
{
	if (my_progress == NULL || progress == NULL)
		return;
	LWLockAcquire(progress->lock, LW_EXCLUSIVE);
	memset(my_progress, 0, sizeof(ProgressSlot));
	LWLockRelease(progress->lock);
	my_progress = NULL;
}

PG_FUNCTION_INFO_V1(freshpay_sync_progress);

/*
 * freshpay._sync_progress(): one row per backend running a sync, behind the
 * view freshpay.sync_progress.
 */
Datum
freshpay_sync_progress(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ProgressSlot copy[PROGRESS_SLOTS];

	Assert(progress != NULL);
	InitMaterializedSRF(fcinfo, 0);

	LWLockAcquire(progress->lock, LW_SHARED);
	memcpy(copy, progress->slots, sizeof(copy));
	LWLockRelease(progress->lock);

	for (int i = 0; i < PROGRESS_SLOTS; i++)
	{
		Datum		values[7];
		bool		nulls[7] = {0};

		if (copy[i].pid == 0)
			continue;
		values[0] = Int32GetDatum(copy[i].pid);
		values[1] = CStringGetTextDatum(copy[i].administration);
		values[2] = CStringGetTextDatum(copy[i].stream);
		values[3] = Int32GetDatum(copy[i].pages);
		values[4] = Int64GetDatum(copy[i].rows_done);
		values[5] = Int64GetDatum(copy[i].rows_expected);
		nulls[5] = copy[i].rows_expected < 0;
		values[6] = TimestampTzGetDatum(copy[i].started_at);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
