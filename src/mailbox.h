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
	MONEY_REVERSE,
	MONEY_REQUEST,				/* a payment request (not a money call: no money moves) */
	MONEY_STATEMENT				/* one charge for several invoices of a customer */
} MoneyOp;

/* The most invoices a statement call can name (its default list has no limit). */
#define STATEMENT_MAX_INVOICES 200

typedef struct MoneyCall
{
	Oid			database_id;	/* the caller's database; the worker serves
								 * only its own */
	MoneyOp		op;
	int64		target_id;		/* invoice id, payment id (void, refund) or customer id (statement) */
	bool		has_amount;
	char		amount[32];		/* numeric text */
	char		requested_by[NAMEDATALEN];
	/* MONEY_REQUEST only */
	char		mode[24];
	char		email[256];		/* "" = the customer's */
	int64		expires_in_s;
	/* MONEY_STATEMENT only: the invoices named, or none for the default */
	int			n_invoices;
	int64		invoice_ids[STATEMENT_MAX_INVOICES];
} MoneyCall;

typedef struct MoneyAnswer
{
	int64		payment_id;		/* the row to return (a payment request's for MONEY_REQUEST); 0 when none */
	int			sqlerrcode;		/* 0: success; else raise this error */
	char		message[512];
	char		detail[1024];
	char		hint[512];
} MoneyAnswer;

typedef enum WorkerRunState
{
	WORKER_STOPPED,
	WORKER_STARTING,			/* running, not serving yet */
	WORKER_IDLE,
	WORKER_WORKING
} WorkerRunState;


extern Size MailboxShmemSize(void);
extern void MailboxShmemInit(void);

/* Backend side. */
extern void mailbox_require_worker_database(const char *function);
extern bool mailbox_call(const MoneyCall *call, MoneyAnswer *answer, int timeout_ms);
extern void mailbox_wake_worker(void);
extern void mailbox_wake_worker_at_commit(void);

/* Worker side. */
extern void mailbox_register_worker(void);
extern void mailbox_attach_worker(void);
extern void mailbox_detach_worker(void);
extern bool mailbox_take(int *slot, MoneyCall *call);
extern bool mailbox_jobs_queued(void);
extern void mailbox_progress(int slot, int64 payment_id);
extern void mailbox_answer(int slot, const MoneyAnswer *answer);

/* What the worker is doing, for freshpay.worker_status. */
extern void worker_status_state(WorkerRunState state);
extern void worker_status_in_flight(int delta);
extern void worker_status_synced(void);
extern void worker_status_error(const char *message);

#endif							/* FRESHPAY_MAILBOX_H */
