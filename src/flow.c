/*-------------------------------------------------------------------------
 *
 * flow.c
 *	  What the flows of jobs share: a step whose ERROR retries the job.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "flow.h"
#include "jobs.h"
#include "mailbox.h"
#include "spi_txn.h"

/*
 * Run advance(f, response) in the flow's context.  An ERROR ends the flow
 * and retries its job with backoff (write-back and lookups never die);
 * cancel and termination are rethrown.
 */
FlowStep
flow_job_step(Flow *f, const HttpResponse *response, FlowAdvance advance)
{
	MemoryContext outer = CurrentMemoryContext;
	volatile FlowStep next = FLOW_DONE;

	PG_TRY();
	{
		MemoryContextSwitchTo(f->context);
		next = advance(f, response);
	}
	PG_CATCH();
	{
		ErrorData  *edata = fp_txn_catch(outer);
		char	   *error = fp_error_text(edata);

		worker_status_error(error);
		job_update(&f->job, false, 0, error, false, -1);
		next = FLOW_DONE;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(outer);
	return next;
}

/* Set by a step that made queued jobs due now; the pipeline claims at once. */
static bool jobs_came_due = false;

void
flow_jobs_came_due(void)
{
	jobs_came_due = true;
}

bool
flow_take_jobs_due(void)
{
	bool		due = jobs_came_due;

	jobs_came_due = false;
	return due;
}
