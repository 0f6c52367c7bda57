/*-------------------------------------------------------------------------
 *
 * mailbox.c
 *	  Slots in shared memory through which backends hand money calls to the
 *	  worker and get the answers back.
 *
 * It also holds what freshpay.worker_status shows, and the wake-up that an
 * invoice trigger asks for at commit.
 *
 * The mailbox is cluster-wide, the worker serves one database: calls are
 * taken only in that database (mailbox_require_worker_database), and each
 * carries its database so that the worker refuses one that is not for it.
 *
 * The mutex guards slot states only; answers are written before the state
 * says DONE and read after, under the mutex.  Waiting is on a condition
 * variable, so a waiting backend reacts to cancel and termination at once;
 * if it leaves, its slot becomes ABANDONED and the worker, which always
 * finishes what it started, frees it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "mailbox.h"
#include "settings.h"

typedef enum SlotState
{
	SLOT_FREE,
	SLOT_SUBMITTED,				/* waiting for the worker */
	SLOT_WORKING,				/* the worker has it */
	SLOT_DONE,					/* answered; the caller reads and frees it */
	SLOT_ABANDONED				/* the caller left; the worker frees it */
} SlotState;

typedef struct MailboxSlot
{
	SlotState	state;
	uint64		serial;			/* tells a reused slot from the caller's */
	MoneyCall	call;
	MoneyAnswer answer;
	ConditionVariable answered;
} MailboxSlot;

#define MAILBOX_SLOTS 64

typedef struct Mailbox
{
	slock_t		mutex;
	int			worker_pid;		/* 0 when no worker runs */
	Latch	   *worker_latch;
	bool		serving;		/* the worker takes calls */
	bool		jobs_queued;	/* someone queued jobs since the worker last looked */
	/* What freshpay.worker_status shows. */
	WorkerRunState run_state;
	TimestampTz started_at;
	TimestampTz last_activity_at;
	TimestampTz last_sync_at;
	TimestampTz last_error_at;
	int			in_flight;
	char		last_error[256];
	uint64		next_serial;
	MailboxSlot slots[MAILBOX_SLOTS];
} Mailbox;

static Mailbox *shared_mailbox = NULL;

Size
MailboxShmemSize(void)
{
	return MAXALIGN(sizeof(Mailbox));
}

/* In the shmem startup hook, under AddinShmemInitLock. */
void
MailboxShmemInit(void)
{
	bool		found;
	Mailbox    *mailbox = ShmemInitStruct("freshpay mailbox", sizeof(Mailbox), &found);

	if (!found)
	{
		memset(mailbox, 0, sizeof(Mailbox));
		SpinLockInit(&mailbox->mutex);
		mailbox->next_serial = 1;
		for (int i = 0; i < MAILBOX_SLOTS; i++)
		{
			mailbox->slots[i].state = SLOT_FREE;
			ConditionVariableInit(&mailbox->slots[i].answered);
		}
	}
	shared_mailbox = mailbox;
}

static Mailbox *
freshpay_mailbox(void)
{
	Assert(shared_mailbox != NULL);
	return shared_mailbox;
}

/*
 * Jobs were queued: the worker looks at its queue at once.  The worker
 * itself, queueing a job, has no need to wake up.
 */
void
mailbox_wake_worker(void)
{
	Mailbox    *mailbox = freshpay_mailbox();
	Latch	   *latch;

	SpinLockAcquire(&mailbox->mutex);
	latch = mailbox->worker_latch;
	if (latch != MyLatch)
		mailbox->jobs_queued = true;
	SpinLockRelease(&mailbox->mutex);
	if (latch != NULL && latch != MyLatch)
		SetLatch(latch);
}

/* Worker: were jobs queued since the last time it asked? */
bool
mailbox_jobs_queued(void)
{
	Mailbox    *mailbox = freshpay_mailbox();
	bool		queued;

	SpinLockAcquire(&mailbox->mutex);
	queued = mailbox->jobs_queued;
	mailbox->jobs_queued = false;
	SpinLockRelease(&mailbox->mutex);
	return queued;
}

/*
 * Raise an ERROR unless this backend is connected to the database the
 * worker serves.  A freshpay installed in another database (left behind
 * when freshpay.database_name moved, or a contrib_regression) has invoices
 * and payments of its own: its ids would be taken by the worker for ids of
 * its database, and what it syncs or queues is never acted on.
 */
void
mailbox_require_worker_database(const char *function)
{
	char	   *current = get_database_name(MyDatabaseId);

	if (current == NULL || strcmp(current, freshpay_database_name) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s can only be called in database \"%s\"", function, freshpay_database_name),
				 errdetail("The freshpay worker serves database \"%s\" (freshpay.database_name); this is database \"%s\", whose invoices and payments it never sees.",
						   freshpay_database_name, current ? current : "?"),
				 errhint("Connect to database \"%s\" to call it, or drop the extension from this database.",
						 freshpay_database_name)));
}

/* Give up a slot the caller no longer waits for. */
static void
mailbox_leave(Mailbox *mailbox, int slot, uint64 serial)
{
	MailboxSlot *s = &mailbox->slots[slot];

	SpinLockAcquire(&mailbox->mutex);
	if (s->serial == serial)
	{
		if (s->state == SLOT_SUBMITTED || s->state == SLOT_DONE)
			s->state = SLOT_FREE;	/* not started, or finished: nothing to keep */
		else if (s->state == SLOT_WORKING)
			s->state = SLOT_ABANDONED;
	}
	SpinLockRelease(&mailbox->mutex);
}

/*
 * Put the call in a free slot; returns the slot, or -1 if none is free.
 * Not inlined: its loop must not share a frame with mailbox_call's PG_TRY.
 */
static pg_noinline int
mailbox_submit(Mailbox *mailbox, const MoneyCall *call, uint64 *serial, Latch **latch)
{
	int			slot = -1;

	SpinLockAcquire(&mailbox->mutex);
	*latch = mailbox->serving ? mailbox->worker_latch : NULL;
	for (int i = 0; *latch != NULL && i < MAILBOX_SLOTS; i++)
	{
		MailboxSlot *s = &mailbox->slots[i];

		if (s->state == SLOT_FREE)
		{
			slot = i;
			*serial = mailbox->next_serial++;
			s->serial = *serial;
			s->call = *call;
			memset(&s->answer, 0, sizeof(MoneyAnswer));
			s->state = SLOT_SUBMITTED;
			break;
		}
	}
	SpinLockRelease(&mailbox->mutex);
	return slot;
}

/* Sleep until the slot is answered or the deadline passes. */
static pg_noinline bool
mailbox_wait(Mailbox *mailbox, int slot, MoneyAnswer *answer, TimestampTz deadline)
{
	MailboxSlot *s = &mailbox->slots[slot];
	bool		done = false;

	ConditionVariablePrepareToSleep(&s->answered);
	for (;;)
	{
		long		remaining;

		SpinLockAcquire(&mailbox->mutex);
		done = s->state == SLOT_DONE;
		*answer = s->answer;
		SpinLockRelease(&mailbox->mutex);
		if (done)
			break;
		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (remaining <= 0)
			break;
		(void) ConditionVariableTimedSleep(&s->answered, Min(remaining, 1000),
										   PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();
	return done;
}

/*
 * Hand a call to the worker and wait for its answer, at most timeout_ms.
 * Returns true with the answer filled in, or false on timeout (with
 * answer->payment_id set if the worker had recorded the attempt by then).
 * Raises an ERROR if no worker serves the mailbox or every slot is taken;
 * a cancel while waiting propagates, and the worker carries on.
 */
bool
mailbox_call(const MoneyCall *call, MoneyAnswer *answer, int timeout_ms)
{
	Mailbox    *mailbox = freshpay_mailbox();
	uint64		serial = 0;
	Latch	   *latch;
	int			slot;
	bool		done;

	slot = mailbox_submit(mailbox, call, &serial, &latch);
	for (int waited = 0; latch == NULL && waited < 50; waited++)
	{
		/*
		 * A worker that does not serve yet (it is starting, the extension was
		 * just created, or it is looking up attempts left in flight) is woken
		 * and given a few seconds.
		 */
		Latch	   *worker;

		SpinLockAcquire(&mailbox->mutex);
		worker = mailbox->worker_latch;
		SpinLockRelease(&mailbox->mutex);
		if (worker != NULL)
			SetLatch(worker);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 100L,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		slot = mailbox_submit(mailbox, call, &serial, &latch);
	}
	if (latch == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the freshpay worker is not running"),
				 errdetail("Money calls are recorded and sent by the worker, so that no transaction of the caller can lose them."),
				 errhint("Check freshpay.worker_enabled and freshpay.database_name, and the server log.")));
	if (slot < 0)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many money calls are waiting for the freshpay worker"),
				 errdetail("%d calls are queued.", MAILBOX_SLOTS),
				 errhint("Nothing was sent; try again in a moment.")));
	SetLatch(latch);

	PG_TRY();
	{
		done = mailbox_wait(mailbox, slot, answer,
							TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms));
	}
	PG_CATCH();
	{
		ConditionVariableCancelSleep();
		mailbox_leave(mailbox, slot, serial);
		PG_RE_THROW();
	}
	PG_END_TRY();

	mailbox_leave(mailbox, slot, serial);
	return done;
}

static void
mailbox_worker_exit(int code, Datum arg)
{
	Mailbox    *mailbox = freshpay_mailbox();

	mailbox_detach_worker();
	SpinLockAcquire(&mailbox->mutex);
	if (mailbox->worker_pid == MyProcPid)
	{
		mailbox->worker_pid = 0;
		mailbox->worker_latch = NULL;
		mailbox->run_state = WORKER_STOPPED;
		mailbox->in_flight = 0;
	}
	SpinLockRelease(&mailbox->mutex);
}

/* The worker runs: backends can wake it. */
void
mailbox_register_worker(void)
{
	Mailbox    *mailbox = freshpay_mailbox();

	SpinLockAcquire(&mailbox->mutex);
	mailbox->worker_pid = MyProcPid;
	mailbox->worker_latch = MyLatch;
	mailbox->run_state = WORKER_STARTING;
	mailbox->started_at = GetCurrentTimestamp();
	mailbox->in_flight = 0;
	SpinLockRelease(&mailbox->mutex);
	before_shmem_exit(mailbox_worker_exit, (Datum) 0);
}

/* The worker starts taking calls. */
void
mailbox_attach_worker(void)
{
	Mailbox    *mailbox = freshpay_mailbox();

	SpinLockAcquire(&mailbox->mutex);
	mailbox->serving = true;
	SpinLockRelease(&mailbox->mutex);
}

/*
 * The worker stops serving: callers still waiting learn that their attempt
 * will be settled by the next worker, and new calls are refused.
 */
void
mailbox_detach_worker(void)
{
	Mailbox    *mailbox = freshpay_mailbox();

	SpinLockAcquire(&mailbox->mutex);
	if (mailbox->worker_pid != MyProcPid)
	{
		SpinLockRelease(&mailbox->mutex);
		return;
	}
	mailbox->serving = false;
	for (int i = 0; i < MAILBOX_SLOTS; i++)
	{
		MailboxSlot *s = &mailbox->slots[i];

		if (s->state == SLOT_WORKING || s->state == SLOT_SUBMITTED)
		{
			s->answer.sqlerrcode = ERRCODE_ADMIN_SHUTDOWN;
			strlcpy(s->answer.message, "the freshpay worker stopped before the money call was finished",
					sizeof(s->answer.message));
			strlcpy(s->answer.detail, "An attempt already recorded stays pending until the worker restarts and looks it up at PayTrace.",
					sizeof(s->answer.detail));
			strlcpy(s->answer.hint, "Look at freshpay.payments for the invoice before trying again.",
					sizeof(s->answer.hint));
			s->state = SLOT_DONE;
		}
		else if (s->state == SLOT_ABANDONED)
			s->state = SLOT_FREE;
	}
	SpinLockRelease(&mailbox->mutex);
	for (int i = 0; i < MAILBOX_SLOTS; i++)
		ConditionVariableBroadcast(&mailbox->slots[i].answered);
}

/*
 * Answer a call that came from another database than the worker's own: a
 * second line of defence behind mailbox_require_worker_database, so that no
 * call is ever carried out against the wrong database's invoices.
 */
static void
mailbox_refuse_foreign(int slot, const MoneyCall *call)
{
	MoneyAnswer answer = {0};

	ereport(LOG,
			(errmsg("freshpay worker refused a money call from the database with OID %u",
					call->database_id),
			 errdetail("The worker serves database \"%s\" (OID %u).",
					   freshpay_database_name, MyDatabaseId)));
	answer.sqlerrcode = ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE;
	strlcpy(answer.message, "the freshpay worker refused a money call from another database",
			sizeof(answer.message));
	snprintf(answer.detail, sizeof(answer.detail),
			 "The call came from the database with OID %u; the worker serves database \"%s\" (OID %u). Nothing was sent.",
			 call->database_id, freshpay_database_name, MyDatabaseId);
	snprintf(answer.hint, sizeof(answer.hint),
			 "Call the money functions in database \"%s\".", freshpay_database_name);
	mailbox_answer(slot, &answer);
}

/*
 * Claim the oldest submitted call for this worker's database; calls from
 * any other database are answered with an error on the way.
 */
bool
mailbox_take(int *slot, MoneyCall *call)
{
	Mailbox    *mailbox = freshpay_mailbox();

	for (;;)
	{
		int			found = -1;

		SpinLockAcquire(&mailbox->mutex);
		for (int i = 0; i < MAILBOX_SLOTS; i++)
		{
			MailboxSlot *s = &mailbox->slots[i];

			if (s->state == SLOT_SUBMITTED &&
				(found < 0 || s->serial < mailbox->slots[found].serial))
				found = i;
		}
		if (found >= 0)
		{
			mailbox->slots[found].state = SLOT_WORKING;
			*call = mailbox->slots[found].call;
		}
		SpinLockRelease(&mailbox->mutex);

		if (found < 0)
			return false;
		if (call->database_id == MyDatabaseId)
		{
			*slot = found;
			return true;
		}
		mailbox_refuse_foreign(found, call);
	}
}

/* The attempt is recorded: a caller that times out can return its row. */
void
mailbox_progress(int slot, int64 payment_id)
{
	Mailbox    *mailbox = freshpay_mailbox();

	SpinLockAcquire(&mailbox->mutex);
	mailbox->slots[slot].answer.payment_id = payment_id;
	SpinLockRelease(&mailbox->mutex);
}

void
mailbox_answer(int slot, const MoneyAnswer *answer)
{
	Mailbox    *mailbox = freshpay_mailbox();
	MailboxSlot *s = &mailbox->slots[slot];

	SpinLockAcquire(&mailbox->mutex);
	if (s->state == SLOT_ABANDONED)
		s->state = SLOT_FREE;
	else if (s->state == SLOT_WORKING)
	{
		s->answer = *answer;
		s->state = SLOT_DONE;
	}
	SpinLockRelease(&mailbox->mutex);
	ConditionVariableBroadcast(&s->answered);
}

void
worker_status_state(WorkerRunState state)
{
	Mailbox    *mailbox = freshpay_mailbox();

	SpinLockAcquire(&mailbox->mutex);
	if (mailbox->run_state == WORKER_WORKING && state == WORKER_IDLE)
		mailbox->last_activity_at = GetCurrentTimestamp();
	mailbox->run_state = state;
	SpinLockRelease(&mailbox->mutex);
}

void
worker_status_in_flight(int delta)
{
	Mailbox    *mailbox = freshpay_mailbox();

	SpinLockAcquire(&mailbox->mutex);
	mailbox->in_flight += delta;
	SpinLockRelease(&mailbox->mutex);
}

void
worker_status_synced(void)
{
	Mailbox    *mailbox = freshpay_mailbox();

	SpinLockAcquire(&mailbox->mutex);
	mailbox->last_sync_at = GetCurrentTimestamp();
	SpinLockRelease(&mailbox->mutex);
}

void
worker_status_error(const char *message)
{
	Mailbox    *mailbox = freshpay_mailbox();

	SpinLockAcquire(&mailbox->mutex);
	strlcpy(mailbox->last_error, message, sizeof(mailbox->last_error));
	mailbox->last_error_at = GetCurrentTimestamp();
	SpinLockRelease(&mailbox->mutex);
}

PG_FUNCTION_INFO_V1(freshpay_worker_state);

/* freshpay._worker_state(): the row behind freshpay.worker_status. */
Datum
freshpay_worker_state(PG_FUNCTION_ARGS)
{
	static const char *const names[] = {
		[WORKER_STOPPED] = "stopped",
		[WORKER_STARTING] = "starting",
		[WORKER_IDLE] = "idle",
		[WORKER_WORKING] = "working",
	};
	Mailbox    *mailbox = freshpay_mailbox();
	Mailbox		copy;
	TupleDesc	desc;
	Datum		values[8];
	bool		nulls[8] = {0};

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	SpinLockAcquire(&mailbox->mutex);
	memcpy(&copy, mailbox, offsetof(Mailbox, slots));
	SpinLockRelease(&mailbox->mutex);

	values[0] = Int32GetDatum(copy.worker_pid);
	nulls[0] = copy.worker_pid == 0;
	values[1] = CStringGetTextDatum(names[copy.worker_pid == 0 ? WORKER_STOPPED : copy.run_state]);
	values[2] = TimestampTzGetDatum(copy.started_at);
	nulls[2] = copy.started_at == 0;
	values[3] = TimestampTzGetDatum(copy.last_activity_at);
	nulls[3] = copy.last_activity_at == 0;
	values[4] = Int32GetDatum(copy.in_flight);
	values[5] = CStringGetTextDatum(copy.last_error);
	nulls[5] = copy.last_error[0] == '\0';
	values[6] = TimestampTzGetDatum(copy.last_error_at);
	nulls[6] = copy.last_error_at == 0;
	values[7] = TimestampTzGetDatum(copy.last_sync_at);
	nulls[7] = copy.last_sync_at == 0;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}

/* Set by freshpay._wake_worker_at_commit(), acted on by the callback. */
static bool wake_at_commit = false;

static void
wake_at_commit_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wake_at_commit)
				mailbox_wake_worker();
			wake_at_commit = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			/* Rolled back: nothing to do.  Prepared: the worker's next idle pass finds the job. */
			wake_at_commit = false;
			break;
		default:
			break;
	}
}

PG_FUNCTION_INFO_V1(freshpay_wake_worker_at_commit);

/*
 * freshpay._wake_worker_at_commit(): the worker is woken when (and only if)
 * the current transaction commits, so that work queued in it starts at once,
 * without polling.
 */
Datum
freshpay_wake_worker_at_commit(PG_FUNCTION_ARGS)
{
	mailbox_require_worker_database("freshpay._wake_worker_at_commit");
	mailbox_wake_worker_at_commit();
	PG_RETURN_VOID();
}

/*
 * The worker is woken when the current transaction commits: woken before,
 * it would not see the jobs yet, and idle on.
 */
void
mailbox_wake_worker_at_commit(void)
{
	static bool registered = false;

	if (!registered)
	{
		RegisterXactCallback(wake_at_commit_callback, NULL);
		registered = true;
	}
	wake_at_commit = true;
}
