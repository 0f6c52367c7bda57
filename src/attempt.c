/*-------------------------------------------------------------------------
 *
 * attempt.c
 *	  The durable attempt protocol of the money calls.
 *
 Every money call is a flow of the worker's pipeline (flow.h), in these
 * states, each remote call made without a transaction open and without
 * holding up any other flow:
 *
 *	  START      a transaction checks the call against local data (plan.c);
 *	             for a collect_invoice job, first whether it still applies
 *	  READING    GET the invoice from FreshPortal (captures,
 *	             authorizations); once it passed the checks, ask PayTrace
 *	             what it already holds for the invoice (sales,
 *	             authorizations); or, for a void, whether its target settled
 *	  RECORD     when PayTrace has room: the token, then one transaction
 *	             locks the invoice, checks again, inserts the payment as
 *	             'pending' and queues its resolve job; COMMIT; the request
 *	             leaves at once
 *	  SENT       the answer: one transaction records the outcome and its
 *	             consequences (parent statuses, write-back jobs), ends the
 *	             collect job and claims the write-back job, which the
 *	             pipeline runs next; COMMIT
 *
 * so the intent is durable before anything is sent, and nothing the caller
 * does to its own transaction can erase it.
 *
 * What happens on a timeout (README, "What happens on a timeout"): an
 * answer that was lost makes the attempt 'unknown'.  It is looked up at
 * PayTrace again and again (transaction export by invoice number), never
 * while this worker still has the request in flight, and never concluded
 * from absence: PayTrace may process a request long after freshpay stopped
 * waiting, so "not found" proves nothing.  An 'unknown' attempt blocks every
 * new charge of its invoice until PayTrace shows what became of it, or a
 * person settles it with freshpay_resolve(payment_id, 'not_processed').  A
 * late answer or a late export row is recorded even over such a conclusion.
 * Before any new sale or authorization, PayTrace is asked what it already
 * holds for the invoice; a transaction freshpay has no record of is recorded
 * and the charge is refused.
 *
 * ACH through PayTrace API v3 (an administration with a merchant id) keeps
 * these steps and adds one: the debit (or refund) carries an idempotency key
 * recorded with the attempt, and a debit's answer is followed by a read of
 * its status (accepted or declined) before the outcome is recorded; a lost
 * answer is looked up by the key (resolve.c), which PayTrace never uses
 * twice.
 *
 * A statement (statement.c) is a sale of several invoices in these same
 * states: its START, READING and RECORD take every invoice.
 *
 * The database backs this up: a partial unique index allows one attempt in
 * flight per invoice and per parent transaction (a statement's invoices
 * are held by their locks when it is recorded, and by its allocations).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "ach.h"
#include "administration.h"
#include "attempt.h"
#include "autocollect.h"
#include "freshportal.h"
#include "holdings.h"
#include "jobs.h"
#include "money.h"
#include "payments.h"
#include "paytrace.h"
#include "paytrace_v3.h"
#include "plan.h"
#include "request.h"
#include "settings.h"
#include "spi_txn.h"
#include "statement.h"

/* After freshpay.request_timeout, when the safety-net lookup of an attempt runs. */
#define RESOLVE_GRACE_MS (5 * 1000L)

/* Insert the attempt as 'pending' and queue its safety net.  Returns its id. */
static int64
record_attempt(const CallPlan *plan, const char *requested_by, const char *idempotency_key)
{
	Oid			types[] = {TEXTOID, INT8OID, INT8OID, TEXTOID, INT8OID, NUMERICOID, TEXTOID, TEXTOID,
	TEXTOID, TIMESTAMPTZOID, TEXTOID};
	Datum		values[] = {
		CStringGetTextDatum(plan->administration),
		Int64GetDatum(plan->invoice_id),
		Int64GetDatum(plan->customer_id),
		CStringGetTextDatum(plan->kind),
		Int64GetDatum(plan->parent_id),
		money_numeric(plan->amount),
		CStringGetTextDatum(plan->invoice_number),
		CStringGetTextDatum(requested_by),
		CStringGetTextDatum(psprintf("%s of %s requested by %s", plan->kind, plan->amount, requested_by)),
		/* If the worker dies from here on, this job looks the attempt up. */
		TimestampTzGetDatum(TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														freshpay_request_timeout + RESOLVE_GRACE_MS)),
		idempotency_key ? CStringGetTextDatum(idempotency_key) : (Datum) 0
	};
	char		nulls[] = {' ', plan->invoice_id ? ' ' : 'n', plan->customer_id ? ' ' : 'n', ' ',
	plan->has_parent ? ' ' : 'n', ' ', ' ', ' ', ' ', ' ', idempotency_key ? ' ' : 'n'};
	int64		payment_id;

	/* The row, its history and its resolve job, in one statement. */
	fp_spi_run("WITH p AS ("
			   "  INSERT INTO freshpay.payments"
			   "   (administration, invoice_id, customer_id, kind, parent_id, amount, invoice_number,"
			   "    requested_by, status, idempotency_key)"
			   "  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $11::uuid) RETURNING id),"
			   " h AS (INSERT INTO freshpay.payment_history (payment_id, new_status, event, message)"
			   "       SELECT id, 'pending', 'recorded', $9 FROM p),"
			   " j AS (INSERT INTO freshpay.jobs (kind, payment_id, next_run_at)"
			   "       SELECT 'resolve_payment', id, $10 FROM p)"
			   " SELECT id FROM p",
			   11, types, values, nulls, SPI_OK_SELECT);
	fp_spi_int64(1, &payment_id);
	return payment_id;
}

/*
 * The payments whose request this worker has in flight.  Their own answer
 * (or its loss) settles them; a lookup must not race it.
 */
static int64 *in_flight_ids = NULL;
static int	in_flight_count = 0;
static int	in_flight_size = 0;

static void
in_flight_add(int64 payment_id)
{
	if (in_flight_count == in_flight_size)
	{
		in_flight_size = Max(64, in_flight_size * 2);
		in_flight_ids = in_flight_ids == NULL
			? MemoryContextAlloc(TopMemoryContext, in_flight_size * sizeof(int64))
			: repalloc(in_flight_ids, in_flight_size * sizeof(int64));
	}
	in_flight_ids[in_flight_count++] = payment_id;
}

/* Where payment_id is in the set, or -1. */
static int
in_flight_index(int64 payment_id)
{
	for (int i = 0; i < in_flight_count; i++)
		if (in_flight_ids[i] == payment_id)
			return i;
	return -1;
}

static void
in_flight_remove(int64 payment_id)
{
	int			i = in_flight_index(payment_id);

	if (i >= 0)
		in_flight_ids[i] = in_flight_ids[--in_flight_count];
}

/* Has this worker the request of payment_id in flight? */
bool
attempt_in_flight(int64 payment_id)
{
	return in_flight_index(payment_id) >= 0;
}

typedef struct SideOutcome
{
	int64		payment_id;
	const PtResult *result;
	const char *why;
} SideOutcome;

static void
record_unsent_step(void *arg)
{
	SideOutcome *o = arg;

	payments_record_outcome(o->payment_id, o->result, "not sent");
}

/*
 * A request that never left: record that, so the attempt does not stay
 * open.  Failing that, it stays as it is and its resolve job looks it up.
 */
static void
record_unsent(int64 payment_id, const PtResult *result)
{
	SideOutcome o = {.payment_id = payment_id, .result = result};

	if (!fp_txn_on_the_side(record_unsent_step, &o))
		elog(WARNING, "freshpay worker: could not record that payment " INT64_FORMAT " was not sent; it is looked up at PayTrace",
			 payment_id);
}

static void
mark_unknown_step(void *arg)
{
	SideOutcome *o = arg;
	Oid			types[] = {INT8OID, TEXTOID};
	Datum		values[] = {Int64GetDatum(o->payment_id), CStringGetTextDatum(o->why)};

	if (fp_spi_run("UPDATE freshpay.payments SET status = 'unknown', updated_at = pg_catalog.now()"
				" WHERE id OPERATOR(pg_catalog.=) $1"
				"   AND status OPERATOR(pg_catalog.=) 'pending'",
				1, types, values, NULL, SPI_OK_UPDATE) == 1)
		fp_spi_run("INSERT INTO freshpay.payment_history (payment_id, old_status, new_status, event, message)"
				" VALUES ($1, 'pending', 'unknown', 'unrecordable', $2)",
				2, types, values, NULL, SPI_OK_INSERT);
	job_queue("resolve_payment", o->payment_id,
			  TimestampTzPlusMilliseconds(GetCurrentTimestamp(), LOOKUP_MIN_MS));
}

/*
 * From an error path after a request was sent: the attempt becomes 'unknown'
 * (if it is still open) and is looked up soon; a WARNING says why.  If even
 * that cannot be written, it stays 'pending' and its resolve job, queued
 * when it was recorded, looks it up.
 */
static void
mark_unknown(int64 payment_id, const char *why)
{
	SideOutcome o = {.payment_id = payment_id, .why = why};

	ereport(WARNING,
			(errmsg("freshpay worker: the outcome of payment " INT64_FORMAT " could not be recorded", payment_id),
			 errdetail("%s", why),
			 errhint("The payment is left unknown and looked up at PayTrace.")));
	(void) fp_txn_on_the_side(mark_unknown_step, &o);
}

typedef enum MoneyState
{
	MONEY_START,
	MONEY_READING,				/* the re-read, then the lookup */
	MONEY_RECORD,
	MONEY_SENT
} MoneyState;

/* A money call in its flow: everything lives in the flow's context. */
typedef struct Pending
{
	MoneyState	state;
	int			slot;			/* mailbox slot, or -1 for a collect job */
	MoneyCall	call;
	CallPlan	plan;
	Administration *admin;
	FpCall	   *reread;			/* FreshPortal's invoice; NULL when not asked */
	PtQuery    *lookup;			/* PayTrace's export; NULL when not asked */
	FpInvoice  *remote;			/* the re-read's answer */
	List	   *found;			/* the lookup's answer */
	bool		reread_done;
	bool		lookup_done;
	PtRequest	request;
	int64		payment_id;
	bool		v3;				/* an ACH call through PayTrace API v3 */
	PtV3Call   *v3_call;		/* the v3 money call */
	PtV3Call   *v3_status;		/* then, for a debit: its status */
	PtResult   *v3_result;		/* the debit's answer, while its status is read */
	PtAchTransaction *v3_debit; /* the status read */
} Pending;

/* Turn the error being caught into the caller's answer (and a job's error text). */
static void
answer_from_error(MoneyAnswer *answer, MemoryContext context, char **error, int *sqlerrcode)
{
	ErrorData  *edata = fp_txn_catch(context);

	answer->sqlerrcode = edata->sqlerrcode ? edata->sqlerrcode : ERRCODE_INTERNAL_ERROR;
	strlcpy(answer->message, edata->message ? edata->message : "", sizeof(answer->message));
	strlcpy(answer->detail, edata->detail ? edata->detail : "", sizeof(answer->detail));
	strlcpy(answer->hint, edata->hint ? edata->hint : "", sizeof(answer->hint));
	if (error != NULL)
		*error = fp_error_text(edata);
	if (sqlerrcode != NULL)
		*sqlerrcode = answer->sqlerrcode;
}

/* A money call from a session's mailbox slot becomes a flow. */
void
attempt_for_call(Flow *f, int slot, const MoneyCall *call)
{
	Pending    *p = MemoryContextAllocZero(f->context, sizeof(Pending));

	p->slot = slot;
	p->call = *call;
	f->state = p;
}

typedef enum StartVerdict
{
	START_CALL,					/* go on with the money call */
	START_NOTHING,				/* a job with nothing to do now (its row says when to look again) */
	START_REQUEST				/* a job whose customer has no vault profile: a payment request */
} StartVerdict;

/*
 * START: the checks against local data, in one transaction with, for a
 * collect_invoice job, whether the collection still applies and how.
 */
static StartVerdict
start_call(Flow *f, Pending *p)
{
	MemoryContext caller = fp_txn_begin();

	MemoryContextSwitchTo(f->context);
	if (f->job.customer_id != 0)
	{
		/* A collect_statement job: the customer's statement, on its day. */
		TimestampTz check = statement_job_check(f->job.customer_id, f->job.id);

		if (check >= 0)
		{
			job_record(&f->job, check == 0, check, NULL, false, -1);
			fp_txn_commit(caller);
			return START_NOTHING;
		}
		p->call.op = MONEY_STATEMENT;
		p->call.target_id = f->job.customer_id;
		strlcpy(p->call.requested_by, "freshpay worker", sizeof(p->call.requested_by));
	}
	else if (f->job.id != 0)
	{
		TimestampTz check = autocollect_check(f->job.invoice_id, f->job.id);

		if (check == AUTOCOLLECT_REQUEST)
		{
			/* No vault profile: the flow becomes a payment request's. */
			fp_txn_commit(caller);
			return START_REQUEST;
		}
		if (check >= 0)
		{
			job_record(&f->job, check == 0, check, NULL, false, -1);
			fp_txn_commit(caller);
			return START_NOTHING;
		}
		p->call.op = MONEY_CAPTURE;
		p->call.target_id = f->job.invoice_id;
		strlcpy(p->call.requested_by, "freshpay worker", sizeof(p->call.requested_by));
	}
	if (p->call.op == MONEY_STATEMENT)
		statement_plan(&p->plan, &p->call, f->context);
	else
		plan_call(&p->plan, &p->call, f->context);
	p->admin = administration_load(p->plan.administration, f->context);
	/* ACH goes through v3 where the administration has a merchant id; a debit's void or refund goes where it went. */
	p->v3 = p->plan.operation == PT_ACH_SALE ? p->admin->paytrace_merchant_id > 0
		: (p->plan.operation == PT_ACH_VOID || p->plan.operation == PT_ACH_REFUND) && p->plan.parent_on_v3;
	fp_txn_commit(caller);
	return START_CALL;
}

/*
 * RECORD: once PayTrace has room, the intent is recorded (with the checks
 * repeated under the invoice's lock, and for a collect_invoice job the
 * decline guard under the customer's) and the request leaves at once.  The
 * token is fetched first, so that nothing but PayTrace decides how long the
 * request is out.  False when the job must wait (the guard said so).
 */
static bool
record_and_send(Flow *f, Pending *p)
{
	MemoryContext caller;

	if (p->v3)
		paytrace_v3_prepare(p->admin);
	else
		paytrace_prepare(p->admin);

	caller = fp_txn_begin();
	MemoryContextSwitchTo(f->context);
	if (f->job.invoice_id != 0)
	{
		TimestampTz later = autocollect_guard(f->job.invoice_id, f->job.id, true);

		if (later != 0)
		{
			job_record(&f->job, false, later, NULL, false, -1);
			fp_txn_commit(caller);
			return false;
		}
	}
	if (p->plan.op == MONEY_STATEMENT)
		statement_lock(&p->plan, f->context);
	else if (p->plan.op == MONEY_CAPTURE || p->plan.op == MONEY_AUTHORIZE)
	{
		CallPlan	locked = {0};

		plan_collection(&locked, &p->call, true, f->context);
		if (!p->call.has_amount && money_compare(locked.amount, p->plan.amount) < 0)
			p->plan.amount = locked.amount;
	}
	p->request = plan_request(&p->plan);
	/* A v3 debit or refund is exactly-once by its key, recorded before it leaves. */
	if (p->v3 && p->plan.operation != PT_ACH_VOID)
		p->request.idempotency_key = ach_new_key();
	p->payment_id = record_attempt(&p->plan, p->call.requested_by, p->request.idempotency_key);
	if (p->plan.op == MONEY_STATEMENT)
		statement_allocate(&p->plan, p->payment_id);
	fp_txn_commit(caller);
	MemoryContextSwitchTo(f->context);
	if (p->slot >= 0)
		mailbox_progress(p->slot, p->payment_id);

	fp_pause_point("before_send", p->payment_id);
	PG_TRY();
	{
		if (p->v3)
		{
			p->v3_call = paytrace_v3_ach_call(p->admin, &p->request);
			paytrace_v3_send(p->v3_call, f, f->priority);
		}
		else
			(void) paytrace_start(p->admin, &p->request, f, f->priority);
	}
	PG_CATCH();
	{
		/* Nothing left: record that, so the attempt does not stay open. */
		ErrorData  *edata;
		PtResult	result = {0};

		MemoryContextSwitchTo(f->context);
		edata = CopyErrorData();
		FlushErrorState();
		result.outcome = PT_NOT_SENT;
		result.retry_after = -1;
		result.message = psprintf("Not sent: %s", edata->message);
		record_unsent(p->payment_id, &result);
		ReThrowError(edata);
	}
	PG_END_TRY();
	in_flight_add(p->payment_id);
	worker_status_in_flight(1);
	p->state = MONEY_SENT;
	return true;
}

/*
 * The steps up to the request leaving.  An ERROR here ends the call before
 * anything was sent: the caller gets it, a job retries (or dies, when
 * retrying cannot mend it).
 */
static FlowStep
advance(Flow *f, Pending *p, const HttpResponse *response)
{
	switch (p->state)
	{
		case MONEY_START:
			switch (start_call(f, p))
			{
				case START_NOTHING:
					return FLOW_DONE;
				case START_REQUEST:
					request_for_job(f);
					return request_step(f, NULL);
				case START_CALL:
					break;
			}

			/*
			 * FreshPortal's word first: nothing at all goes to PayTrace for
			 * an invoice that changed or was paid meanwhile.
			 */
			if (p->plan.op == MONEY_STATEMENT)
			{
				statement_send_reads(p->admin, &p->plan, f, f->priority);
				p->state = MONEY_READING;
				return FLOW_WAITING;
			}
			if (p->plan.op == MONEY_CAPTURE || p->plan.op == MONEY_AUTHORIZE)
			{
				p->reread = freshportal_get_invoice_call(p->admin, p->plan.freshportal_invoice_id);
				freshportal_send(p->reread, f, f->priority);
			}
			else if (p->plan.operation == PT_VOID)
			{
				/* PayTrace's word on whether the target settled, which the local row may not know. */
				p->lookup = paytrace_export_by_id_query(p->admin, p->plan.parent_transaction_id);
				paytrace_send(p->lookup, f, f->priority);
			}
			p->reread_done = p->reread == NULL;
			p->lookup_done = p->lookup == NULL;
			p->state = MONEY_READING;
			if (!p->reread_done || !p->lookup_done)
				return FLOW_WAITING;
			break;

		case MONEY_READING:
			if (p->plan.op == MONEY_STATEMENT)
			{
				if (!statement_read(p->admin, &p->plan, response, f, f->priority))
					return FLOW_WAITING;
				statement_check_holdings(p->admin, &p->plan, f->context);
				p->state = MONEY_RECORD;
				break;
			}
			if (p->reread != NULL && freshportal_answers(p->reread, response))
			{
				if (!freshportal_answered(p->reread, response, f, f->priority))
					return FLOW_WAITING;
				p->remote = freshportal_invoice_of(p->reread, response);
				plan_check_invoice(&p->plan, p->remote, p->call.has_amount);
				p->reread_done = true;
				/* Then PayTrace's holdings for the invoice, before a new sale or authorization. */
				if (p->plan.operation != PT_CAPTURE)
				{
					p->lookup = paytrace_export_by_date_range_query(p->admin, p->plan.invoice_date - 1,
																	fp_date_of(GetCurrentTimestamp()) + 1,
																	p->plan.invoice_number);
					paytrace_send(p->lookup, f, f->priority);
					return FLOW_WAITING;
				}
			}
			else
			{
				if (!paytrace_answered(p->lookup, response, f, f->priority))
					return FLOW_WAITING;
				p->found = paytrace_export_of(p->lookup, response);
				p->lookup_done = true;
			}
			if (!p->reread_done || (p->lookup != NULL && !p->lookup_done))
				return FLOW_WAITING;
			break;

		case MONEY_RECORD:
		case MONEY_SENT:
			break;
	}

	if (p->state == MONEY_READING)
	{
		/* The answers are in: FreshPortal's was checked when it came, now PayTrace's. */
		if (p->lookup != NULL && p->plan.operation != PT_VOID)
			holdings_check_charge(p->admin, &p->plan, p->found);
		else if (p->lookup != NULL && holdings_target_settled(p->admin, &p->plan, p->found))
		{
			/* The local row did not know yet: a reversal becomes a refund. */
			if (p->plan.op != MONEY_REVERSE)
				fp_refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
						  "Refund it with freshpay_refund() instead.",
						  "payment " INT64_FORMAT " is settled and cannot be voided", p->plan.parent_id);
			p->plan.kind = "refund";
			p->plan.operation = PT_REFUND;
		}
		p->state = MONEY_RECORD;
	}
	Assert(p->state == MONEY_RECORD);
	if (!http_has_room("PayTrace"))
		return FLOW_PARKED;
	return record_and_send(f, p) ? FLOW_WAITING : FLOW_DONE;
}

/*
 * The outcome of a collect job's call, in the transaction that records it:
 * done, again later (unknown: its resolve job looks it up; a statement's
 * job is done, its resolve job follows the statement), or failed (not
 * sent, rate limited) and retried.
 */
static void
end_collect_job(Flow *f, const PtResult *result)
{
	if (result->outcome == PT_NOT_SENT || result->outcome == PT_RETRY_LATER)
		job_record(&f->job, false, 0, result->message, false, result->retry_after);
	else if (result->outcome == PT_UNKNOWN && f->job.customer_id == 0)
		job_record(&f->job, false,
				   TimestampTzPlusMilliseconds(GetCurrentTimestamp(), freshpay_request_timeout + 10000L),
				   NULL, false, -1);
	else
		job_record(&f->job, true, 0, NULL, false, -1);
}

/*
 * The outcome of an ACH call through v3, or NULL while a second answer is
 * awaited: a debit's answer names its transaction, whose status tells
 * whether it was accepted or declined.  Never an ERROR: what cannot be read
 * leaves the outcome unknown (with PayTrace's id of the debit, when known)
 * for its resolve job, which looks it up by that id or by the key.
 */
static PtResult *
v3_answer(Flow *f, Pending *p, const HttpResponse *response)
{
	MemoryContext outer = CurrentMemoryContext;
	PtResult   *volatile result = NULL;

	PG_TRY();
	{
		MemoryContextSwitchTo(f->context);
		if (p->v3_status == NULL)
		{
			if (paytrace_v3_answered(p->v3_call, response, f, f->priority))
			{
				result = paytrace_v3_money_of(p->v3_call, response);
				if (result->outcome == PT_APPROVED && p->plan.operation == PT_ACH_SALE)
				{
					p->v3_result = result;
					p->v3_status = paytrace_v3_ach_get_call(p->admin, result->transaction_id);
					paytrace_v3_send(p->v3_status, f, f->priority);
					result = NULL;
				}
			}
		}
		else if (paytrace_v3_answered(p->v3_status, response, f, f->priority))
		{
			Attempt		debit = {.kind = "ach_sale"};

			p->v3_debit = paytrace_v3_ach_of(p->v3_status, response);
			if (p->v3_debit == NULL)
				elog(ERROR, "PayTrace does not show it yet");
			result = ach_result(&debit, p->v3_debit);
		}
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		PtResult   *lost;

		MemoryContextSwitchTo(f->context);
		edata = CopyErrorData();
		FlushErrorState();
		lost = palloc0(sizeof(PtResult));
		lost->outcome = PT_UNKNOWN;
		lost->retry_after = -1;
		if (p->v3_result != NULL)
		{
			lost->has_transaction_id = true;
			lost->transaction_id = p->v3_result->transaction_id;
			lost->message = psprintf("PayTrace made ACH transaction " INT64_FORMAT "; its status could not be read: %s",
									 lost->transaction_id, edata->message);
		}
		else
			lost->message = psprintf("The answer of PayTrace could not be read: %s", edata->message);
		result = lost;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(outer);
	return result;
}

/*
 * SENT: PayTrace answered (or did not).  Record the outcome and its
 * consequences, end the job, claim the write-back, answer the caller.
 */
static FlowStep
finish(Flow *f, Pending *p, const HttpResponse *response)
{
	MemoryContext outer = CurrentMemoryContext;
	MoneyAnswer answer = {0};
	volatile bool recorded = false;
	PtResult   *volatile v3_result = NULL;

	if (p->v3 && (v3_result = v3_answer(f, p, response)) == NULL)
		return FLOW_WAITING;
	worker_status_in_flight(-1);
	in_flight_remove(p->payment_id);

	PG_TRY();
	{
		PtResult   *result;
		MemoryContext caller;

		MemoryContextSwitchTo(f->context);
		fp_pause_point("after_answer", p->payment_id);
		result = p->v3 ? v3_result : paytrace_finish(p->admin, &p->request, response);

		caller = fp_txn_begin();
		MemoryContextSwitchTo(f->context);
		if (payments_record_outcome(p->payment_id, result, "answered") && p->v3_debit != NULL)
			(void) ach_note(p->payment_id, p->v3_debit);
		if (f->job.id != 0)
		{
			end_collect_job(f, result);
			if (f->job.invoice_id != 0 && autocollect_probe_done(f->job.invoice_id) > 0)
				flow_jobs_came_due();
		}
		/* Its write-back runs next (a void of an authorization has none). */
		if (result->outcome == PT_APPROVED &&
			!job_claim_for("register_payment", p->payment_id, &f->follow))
			(void) job_claim_for("reverse_payment", p->payment_id, &f->follow);
		fp_txn_commit(caller);
		recorded = true;

		answer.payment_id = p->payment_id;
		if (result->outcome == PT_NOT_SENT || result->outcome == PT_RETRY_LATER)
			worker_status_error(result->message);

		/* PayTrace refusing a void or refund is the caller's error, not an outcome. */
		if (result->outcome == PT_REJECTED && p->plan.operation != PT_SALE &&
			p->plan.operation != PT_AUTHORIZE && p->plan.operation != PT_ACH_SALE)
			fp_refuse(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
					  "The attempt is recorded as failed in freshpay.payments.",
					  "PayTrace refused the %s of payment " INT64_FORMAT ": %s",
					  p->plan.kind, p->plan.parent_id, result->message);
	}
	PG_CATCH();
	{
		char	   *message;
		int			code;

		answer_from_error(&answer, outer, &message, &code);
		answer.payment_id = p->payment_id;
		if (!recorded)
		{
			/*
			 * The request was sent and its answer could not be read or
			 * recorded: the outcome is unknown, and looked up at PayTrace.
			 * Never an ERROR: PayTrace may have moved the money.  A job
			 * looks again later, as for any unknown outcome.
			 */
			mark_unknown(p->payment_id, message);
			memset(&answer, 0, sizeof(answer));
			answer.payment_id = p->payment_id;
			worker_status_error(message);
			if (f->job.id != 0)
				job_update(&f->job, false,
						   TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   freshpay_request_timeout + 10000L),
						   NULL, false, -1);
		}
	}
	PG_END_TRY();
	MemoryContextSwitchTo(outer);
	if (p->slot >= 0)
		mailbox_answer(p->slot, &answer);
	return FLOW_DONE;
}

/*
 * Step a money call's flow: response is the answer of the call it waited
 * for, or NULL (the first step, or PayTrace has room for a parked flow).
 */
FlowStep
attempt_step(Flow *f, const HttpResponse *response)
{
	MemoryContext outer = CurrentMemoryContext;
	Pending    *p;
	volatile FlowStep next = FLOW_DONE;

	if (f->state == NULL)
	{
		/* A collect_invoice or collect_statement job. */
		Pending    *job_call = MemoryContextAllocZero(f->context, sizeof(Pending));

		job_call->slot = -1;
		f->state = job_call;
	}
	p = f->state;
	if (p->state == MONEY_SENT)
		return finish(f, p, response);

	PG_TRY();
	{
		MemoryContextSwitchTo(f->context);
		next = advance(f, p, response);
	}
	PG_CATCH();
	{
		MoneyAnswer answer = {0};
		char	   *message;
		int			sqlerrcode;

		answer_from_error(&answer, outer, &message, &sqlerrcode);
		answer.payment_id = p->payment_id;
		if (p->slot >= 0)
			mailbox_answer(p->slot, &answer);
		else
		{
			worker_status_error(message);
			job_update(&f->job, false, 0, message, job_is_permanent(sqlerrcode), -1);
		}
		next = FLOW_DONE;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(outer);
	return next;
}
