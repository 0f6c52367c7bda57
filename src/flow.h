/*-------------------------------------------------------------------------
 *
 * flow.h
 *	  A flow: one job or money call moving through the worker's pipeline.
 *
 * Each kind of flow is a small state machine in its own file (attempt.c,
 * writeback.c, resolve.c) with one step function: it runs a short
 * transaction or two, starts the next remote call with the flow as its
 * owner, and returns; the pipeline (pipeline.c) calls it again with the
 * call's answer.  A step never lets an error out (cancel and termination
 * aside): it ends its flow with the error recorded where it belongs.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_FLOW_H
#define FRESHPAY_FLOW_H

#include "http.h"
#include "jobs.h"

typedef enum FlowKind
{
	FLOW_MONEY,					/* a money call: mailbox or collect_invoice */
	FLOW_WRITEBACK,				/* register_payment, reverse_payment, check_registrations */
	FLOW_RESOLVE,				/* resolve_payment */
	FLOW_LEVEL3,				/* send_level3 */
	FLOW_REQUEST				/* a payment request from the mailbox */
} FlowKind;

/* What a step left the flow doing. */
typedef enum FlowStep
{
	FLOW_WAITING,				/* a remote call is out; its answer comes back */
	FLOW_PARKED,				/* waits for room at PayTrace; stepped again without an answer */
	FLOW_DONE					/* ended; the pipeline frees it */
} FlowStep;

/* Requests of a call a session waits for leave before those of jobs. */
#define FLOW_PRIORITY_CALL 1
#define FLOW_PRIORITY_JOB 0

typedef struct Flow
{
	FlowKind	kind;
	uint64		serial;			/* tells a flow from a later one at the same address */
	MemoryContext context;		/* everything of the flow; deleted when it ends */
	int			priority;
	Job			job;			/* job.id 0: a money call from the mailbox */
	Job			follow;			/* a job the flow claimed for the pipeline to run next */
	void	   *state;			/* the kind's own */
} Flow;

/* One step of a flow: a short transaction or two, then the next call. */
typedef FlowStep (*FlowAdvance) (Flow *f, const HttpResponse *response);

extern FlowStep flow_job_step(Flow *f, const HttpResponse *response, FlowAdvance advance);
extern void flow_jobs_came_due(void);
extern bool flow_take_jobs_due(void);

#endif							/* FRESHPAY_FLOW_H */
