/*-------------------------------------------------------------------------
 *
 * pipeline.c
 *	  The money worker's pipeline: every money call and every job is a flow
 *	  (flow.h), and every remote call of every flow is in flight at once.
 *
 * One loop: answers that arrived step their flows; flows parked for room
 * at PayTrace are stepped when there is room (calls sessions wait for
 * first); money calls handed over by sessions start at once; due jobs are
 * claimed in batches while there is room for them.  Then it waits on the
 * latch, postmaster death and libcurl's sockets and timer together
 * (http_drive), so a money call, SIGTERM, SIGHUP and every answer are
 * handled as they happen.
 *
 * Requests in flight are bounded per remote API by
 * freshpay.max_parallel_requests (http.c queues the rest, fairly between
 * administrations); flows of jobs are bounded by three times that, so that
 * both APIs can be kept busy without claiming more jobs than can run.
 *
 * No transaction is ever open here; the flows' steps open and commit their
 * own, short ones.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "attempt.h"
#include "flow.h"
#include "http.h"
#include "jobs.h"
#include "level3.h"
#include "mailbox.h"
#include "pipeline.h"
#include "request.h"
#include "resolve.h"
#include "settings.h"
#include "writeback.h"

/* Flows of jobs at most, per request allowed in flight. */
#define JOB_FLOWS_PER_REQUEST 3

/* With nothing due, how long before the queue is asked again (a wake-up asks at once). */
#define CLAIM_IDLE_MS 1000L

static List *flows = NIL;		/* every flow, in TopMemoryContext */
static uint64 next_serial = 1;
static List *parked = NIL;		/* flows waiting for room at PayTrace, oldest first */
static int	job_flows = 0;


static TimestampTz next_claim_at = 0;

static Flow *
flow_new(FlowKind kind, int priority, const Job *job)
{
	MemoryContext context = AllocSetContextCreate(TopMemoryContext, "freshpay flow",
												  ALLOCSET_SMALL_SIZES);
	Flow	   *f = MemoryContextAllocZero(context, sizeof(Flow));
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

	f->kind = kind;
	f->serial = next_serial++;
	f->context = context;
	f->priority = priority;
	if (job != NULL)
	{
		f->job = *job;
		job_flows++;
	}

	flows = lappend(flows, f);
	MemoryContextSwitchTo(old);
	return f;
}

static FlowKind
kind_of_job(const Job *job)
{
	if (strcmp(job->kind, "collect_invoice") == 0 || strcmp(job->kind, "collect_statement") == 0)
		return FLOW_MONEY;
	if (strcmp(job->kind, "resolve_payment") == 0)
		return FLOW_RESOLVE;
	if (strcmp(job->kind, "send_level3") == 0)
		return FLOW_LEVEL3;
	/* register_payment, reverse_payment, check_registrations */
	return FLOW_WRITEBACK;
}

static void flow_step(Flow *f, const HttpResponse *response);

/* Start a flow for a claimed job. */
static void
flow_start_job(const Job *job)
{
	flow_step(flow_new(kind_of_job(job), FLOW_PRIORITY_JOB, job), NULL);
}

/* Step a flow with the answer it waited for (or none), and act on what it did. */
static void
flow_step(Flow *f, const HttpResponse *response)
{
	FlowStep	next;
	Job			follow;

	switch (f->kind)
	{
		case FLOW_MONEY:
			next = attempt_step(f, response);
			break;
		case FLOW_WRITEBACK:
			next = writeback_step(f, response);
			break;
		case FLOW_RESOLVE:
			next = resolve_step(f, response);
			break;
		case FLOW_LEVEL3:
			next = level3_step(f, response);
			break;
		case FLOW_REQUEST:
			next = request_step(f, response);
			break;
		default:
			elog(ERROR, "unknown flow kind %d", (int) f->kind);
	}

	if (next == FLOW_PARKED)
	{
		if (!list_member_ptr(parked, f))
		{
			MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

			parked = lappend(parked, f);
			MemoryContextSwitchTo(old);
		}
		return;
	}
	parked = list_delete_ptr(parked, f);
	if (next != FLOW_DONE)
		return;

	follow = f->follow;
	/* A read of it may still be out (its other answer made it fail). */
	http_cancel(f);
	flows = list_delete_ptr(flows, f);
	if (f->job.id != 0)
		job_flows--;

	MemoryContextDelete(f->context);
	/* The write-back the flow claimed runs at once, in a flow of its own. */
	if (follow.id != 0)
		flow_start_job(&follow);
}

static void resume_parked(void);

/*
 * Step every flow whose answer arrived.  The places these answers free at
 * PayTrace go to parked flows first, all of them before any answer is
 * recorded, so that no place is idle while a burst of answers is.
 * Returns how many.
 */
static int
harvest(void)
{
	HttpResponse *responses = NULL;
	Flow	  **owners = NULL;
	uint64	   *serials = NULL;
	int			n = 0;
	int			size = 0;

	for (;;)
	{
		HttpResponse response;
		void	   *owner;

		if (!http_finished(&response, &owner))
			break;
		if (n == size)
		{
			size = Max(16, 2 * size);
			responses = responses ? repalloc(responses, size * sizeof(HttpResponse))
				: palloc(size * sizeof(HttpResponse));
			owners = owners ? repalloc(owners, size * sizeof(Flow *)) : palloc(size * sizeof(Flow *));
			serials = serials ? repalloc(serials, size * sizeof(uint64)) : palloc(size * sizeof(uint64));
		}
		responses[n] = response;
		owners[n] = owner;
		serials[n] = owners[n]->serial;
		n++;
	}
	if (n == 0)
		return 0;
	resume_parked();
	/* Calls sessions wait for first, then jobs. */
	for (int priority = FLOW_PRIORITY_CALL; priority >= FLOW_PRIORITY_JOB; priority--)
	{
		for (int i = 0; i < n; i++)
		{
			/* A flow that ended meanwhile (its other answer failed it) gets no more. */
			if (owners[i] != NULL && list_member_ptr(flows, owners[i]) &&
				owners[i]->serial == serials[i] && owners[i]->priority == priority)
			{
				Flow	   *f = owners[i];

				owners[i] = NULL;
				flow_step(f, &responses[i]);
			}
		}
	}
	return n;
}

/* Step parked flows while PayTrace has room: calls sessions wait for first, then the oldest. */
static void
resume_parked(void)
{
	while (parked != NIL && http_has_room("PayTrace"))
	{
		Flow	   *next = NULL;
		ListCell   *lc;

		foreach(lc, parked)
		{
			Flow	   *f = lfirst(lc);

			if (next == NULL || f->priority > next->priority)
				next = f;
		}
		flow_step(next, NULL);
	}
}

/* Money calls handed over by sessions start at once. */
static bool
admit_calls(void)
{
	int			slot;
	MoneyCall	call;
	bool		any = false;

	while (mailbox_take(&slot, &call))
	{
		Flow	   *f = flow_new(call.op == MONEY_REQUEST ? FLOW_REQUEST : FLOW_MONEY,
									 FLOW_PRIORITY_CALL, NULL);

		if (call.op == MONEY_REQUEST)
			request_for_call(f, slot, &call);
		else
			attempt_for_call(f, slot, &call);
		flow_step(f, NULL);
		any = true;
	}
	return any;
}

/*
 * Claim due jobs (of kind only_kind, if given) while there is room for
 * their flows, and start them.  Returns how many started.
 */
static int
admit_jobs(const char *only_kind)
{
	int			room = JOB_FLOWS_PER_REQUEST * freshpay_max_parallel_requests - job_flows;
	int64	   *running;
	Job		   *jobs;
	int			nrunning = 0;
	int			n;
	ListCell   *lc;

	if (room <= 0)
		return 0;
	running = palloc(sizeof(int64) * (list_length(flows) + 1));
	foreach(lc, flows)
	{
		Flow	   *f = lfirst(lc);

		if (f->job.id != 0)
			running[nrunning++] = f->job.id;
	}
	jobs = palloc(sizeof(Job) * room);
	n = job_claim(jobs, room, only_kind, running, nrunning);
	next_claim_at = n > 0 ? 0 : TimestampTzPlusMilliseconds(GetCurrentTimestamp(), CLAIM_IDLE_MS);
	for (int i = 0; i < n; i++)
		flow_start_job(&jobs[i]);
	return n;
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
 * Run the pipeline until no flow is left, or for about max_ms while flows
 * are still in flight.  With only_kind, only jobs of that kind are claimed
 * and no money call is taken (the lookups on start).  Returns true when
 * flows are left.
 */
bool
pipeline_serve(MemoryContext loop_context, const char *only_kind, long max_ms)
{
	TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), max_ms);

	next_claim_at = 0;
	for (;;)
	{
		bool		busy = false;

		CHECK_FOR_INTERRUPTS();
		reload_settings_if_asked();
		MemoryContextReset(loop_context);
		MemoryContextSwitchTo(loop_context);

		http_drive(0);
		/* A money call a session waits for starts before any answer is recorded. */
		if (only_kind == NULL)
			busy |= admit_calls();
		busy |= harvest() > 0;
		resume_parked();
		if (flow_take_jobs_due())
			next_claim_at = 0;
		if (GetCurrentTimestamp() >= next_claim_at)
			busy |= admit_jobs(only_kind) > 0;

		if (flows == NIL)
			return false;
		pgstat_report_activity(STATE_RUNNING, "freshpay pipeline");
		worker_status_state(WORKER_WORKING);
		if (GetCurrentTimestamp() >= until)
			return true;
		if (busy)
			continue;

		/*
		 * Wait for an answer, a money call or a wake-up; the queue is asked
		 * again at once when someone queued jobs meanwhile.
		 */
		(void) http_drive(next_claim_at == 0 ? CLAIM_IDLE_MS :
						  Max(1, TimestampDifferenceMilliseconds(GetCurrentTimestamp(), next_claim_at)));
		if (mailbox_jobs_queued())
			next_claim_at = 0;
	}
}
