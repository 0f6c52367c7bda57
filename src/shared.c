/*-------------------------------------------------------------------------
 *
 * shared.c
 *	  freshpay's shared memory segment: token cache and sync progress.
 *
 * The segment is small and fixed-size.  One LWLock guards it all: every
 * access is a handful of memcpys, far cheaper than the HTTP call around it.
 * This file owns no network code and no SQL.
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

#include "mailbox.h"
#include "shared.h"

#define TOKEN_SLOTS		64
#define PROGRESS_SLOTS	32

typedef struct TokenSlot
{
	bool		in_use;
	RemoteApi	api;
	uint32		credential_hash;	/* URL + credentials the token belongs to */
	char		administration[NAMEDATALEN];
	TimestampTz expires_at;
	TimestampTz last_used;
	char		token[FRESHPAY_TOKEN_MAX + 1];
} TokenSlot;

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

typedef struct FreshpayShared
{
	LWLock	   *lock;
	TokenSlot	tokens[TOKEN_SLOTS];
	ProgressSlot progress[PROGRESS_SLOTS];
	Mailbox		mailbox;
} FreshpayShared;

static FreshpayShared *shared = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* This backend's progress slot, if it holds one. */
static ProgressSlot *my_progress = NULL;

static void
freshpay_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(FreshpayShared)));
	RequestNamedLWLockTranche("freshpay", 1);
}

static void
freshpay_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared = ShmemInitStruct("freshpay", sizeof(FreshpayShared), &found);
	if (!found)
	{
		memset(shared, 0, sizeof(FreshpayShared));
		shared->lock = &(GetNamedLWLockTranche("freshpay"))->lock;
		mailbox_init(&shared->mailbox);
	}
	LWLockRelease(AddinShmemInitLock);
}

void
FreshpaySharedInit(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = freshpay_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = freshpay_shmem_startup;
}

static void
check_shared(void)
{
	if (shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("freshpay shared memory is not initialized"),
				 errhint("Add freshpay to shared_preload_libraries and restart the server.")));
}

Mailbox *
freshpay_mailbox(void)
{
	check_shared();
	return &shared->mailbox;
}

static TokenSlot *
token_slot_find(const char *administration, RemoteApi api)
{
	for (int i = 0; i < TOKEN_SLOTS; i++)
	{
		TokenSlot  *slot = &shared->tokens[i];

		if (slot->in_use && slot->api == api &&
			strcmp(slot->administration, administration) == 0)
			return slot;
	}
	return NULL;
}

/*
 * Copy the cached token of (administration, api) into token[] if there is
 * one for the same credentials that has not expired.  Callers store tokens
 * with an expiry well before the remote API's own.
 */
bool
token_cache_lookup(const char *administration, RemoteApi api,
				   uint32 credential_hash, char *token, Size token_size)
{
	TokenSlot  *slot;
	bool		found = false;
	TimestampTz now = GetCurrentTimestamp();

	check_shared();
	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	slot = token_slot_find(administration, api);
	if (slot != NULL && slot->credential_hash == credential_hash &&
		slot->expires_at > now &&
		strlen(slot->token) < token_size)
	{
		strlcpy(token, slot->token, token_size);
		slot->last_used = now;
		found = true;
	}
	LWLockRelease(shared->lock);
	return found;
}

void
token_cache_store(const char *administration, RemoteApi api,
				  uint32 credential_hash, const char *token,
				  TimestampTz expires_at)
{
	TokenSlot  *slot;

	check_shared();
	if (strlen(token) > FRESHPAY_TOKEN_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("OAuth token of administration \"%s\" is too long to cache",
						administration),
				 errdetail("Tokens of up to %d bytes are supported.", FRESHPAY_TOKEN_MAX)));

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	slot = token_slot_find(administration, api);
	if (slot == NULL)
	{
		/* Take a free slot, or evict the least recently used one. */
		for (int i = 0; i < TOKEN_SLOTS; i++)
		{
			TokenSlot  *candidate = &shared->tokens[i];

			if (!candidate->in_use)
			{
				slot = candidate;
				break;
			}
			if (slot == NULL || candidate->last_used < slot->last_used)
				slot = candidate;
		}
	}
	slot->in_use = true;
	slot->api = api;
	slot->credential_hash = credential_hash;
	strlcpy(slot->administration, administration, NAMEDATALEN);
	strlcpy(slot->token, token, sizeof(slot->token));
	slot->expires_at = expires_at;
	slot->last_used = GetCurrentTimestamp();
	LWLockRelease(shared->lock);
}

/*
 * Drop the cached token after the remote API rejected it.  Only the token
 * that was rejected is dropped: another backend may already have stored a
 * fresh one.
 */
void
token_cache_forget(const char *administration, RemoteApi api, const char *token)
{
	TokenSlot  *slot;

	check_shared();
	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	slot = token_slot_find(administration, api);
	if (slot != NULL && strcmp(slot->token, token) == 0)
		memset(slot, 0, sizeof(TokenSlot));
	LWLockRelease(shared->lock);
}

/* Drop whatever token is cached (its owner no longer knows which it used). */
void
token_cache_forget_any(const char *administration, RemoteApi api)
{
	TokenSlot  *slot;

	check_shared();
	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	slot = token_slot_find(administration, api);
	if (slot != NULL)
		memset(slot, 0, sizeof(TokenSlot));
	LWLockRelease(shared->lock);
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

	check_shared();
	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	if (my_progress == NULL)
	{
		for (int i = 0; i < PROGRESS_SLOTS; i++)
		{
			if (shared->progress[i].pid == 0)
			{
				my_progress = &shared->progress[i];
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
	LWLockRelease(shared->lock);

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
	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	my_progress->pages = pages;
	my_progress->rows_done = rows_done;
	my_progress->rows_expected = rows_expected;
	LWLockRelease(shared->lock);
}

void
sync_progress_end(void)
{
	if (my_progress == NULL || shared == NULL)
		return;
	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	memset(my_progress, 0, sizeof(ProgressSlot));
	LWLockRelease(shared->lock);
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

	check_shared();
	InitMaterializedSRF(fcinfo, 0);

	LWLockAcquire(shared->lock, LW_SHARED);
	memcpy(copy, shared->progress, sizeof(copy));
	LWLockRelease(shared->lock);

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
