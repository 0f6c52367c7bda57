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
