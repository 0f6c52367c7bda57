/*-------------------------------------------------------------------------
 *
 * mailbox.h
 *	  Handing money calls from a backend to the background worker.
 *
 * A backend cannot record an attempt independently of its own transaction,
 * so the worker does the recording: the backend puts the call in a slot of
 * shared memory, wakes the worker and sleeps on the slot's condition
 * variable; the worker claims the slot, runs the attempt in transactions of
 * its own and answers.  If the caller goes away (cancel, timeout, its
 * transaction rolls back), the worker finishes all the same.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_MAILBOX_H
#define FRESHPAY_MAILBOX_H

#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "storage/spin.h"
#include "datatype/timestamp.h"

typedef enum MoneyOp
{
	MONEY_CAPTURE,
	MONEY_AUTHORIZE,
	MONEY_VOID,
	MONEY_REFUND,
	MONEY_REVERSE
} MoneyOp;

typedef struct MoneyCall
{
	Oid			database_id;	/* the caller's database; the worker serves
								 * only its own */
	MoneyOp		op;
	int64		target_id;		/* invoice id, or payment id (void, refund) */
	bool		has_amount;
	char		amount[32];		/* numeric text */
	char		requested_by[NAMEDATALEN];
} MoneyCall;

typedef struct MoneyAnswer
{
	int64		payment_id;		/* the row to return; 0 when none */
	int			sqlerrcode;		/* 0: success; else raise this error */
	char		message[512];
	char		detail[1024];
	char		hint[512];
} MoneyAnswer;

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

typedef enum WorkerRunState
{
	WORKER_STOPPED,
	WORKER_STARTING,			/* running, not serving yet */
	WORKER_IDLE,
	WORKER_WORKING
} WorkerRunState;

typedef struct Mailbox
{
	slock_t		mutex;
	int			worker_pid;		/* 0 when no worker runs */
	Latch	   *worker_latch;
	bool		serving;		/* the worker takes calls */
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

extern void mailbox_init(Mailbox *mailbox);

/* Backend side. */
extern void mailbox_require_worker_database(const char *function);
extern bool mailbox_call(const MoneyCall *call, MoneyAnswer *answer, int timeout_ms);
extern void mailbox_wake_worker(void);

/* Worker side. */
extern void mailbox_register_worker(void);
extern void mailbox_attach_worker(void);
extern void mailbox_detach_worker(void);
extern bool mailbox_take(int *slot, MoneyCall *call);
extern void mailbox_progress(int slot, int64 payment_id);
extern void mailbox_answer(int slot, const MoneyAnswer *answer);

/* What the worker is doing, for freshpay.worker_status. */
extern void worker_status_state(WorkerRunState state);
extern void worker_status_in_flight(int delta);
extern void worker_status_synced(void);
extern void worker_status_error(const char *message);

#endif							/* FRESHPAY_MAILBOX_H */
