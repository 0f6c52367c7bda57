/*-------------------------------------------------------------------------
 *
 * resolve.c
 *	  resolve_payment jobs: an attempt whose answer was lost (or whose
 *	  worker died) is looked up at PayTrace, as a flow of the pipeline.
 *
 *	  START      a transaction loads the attempt; nothing to do once it is
 *	             settled, and nothing while this worker still has its
 *	             request in flight (its own answer settles it)
 *	  LOOKUP     the export: by the transaction a capture or void acts on,
 *	             by its own transaction id, or by invoice number and date
 *	  RECORD     one transaction records what PayTrace shows, or that it
 *	             is still unknown, and when to look again; COMMIT
 *
 * Only what PayTrace shows concludes an attempt.  Not finding it proves
 * nothing (PayTrace may still process it, long after freshpay stopped
 * waiting): the attempt stays 'unknown', is looked up again, and blocks new
 * charges of its invoice until PayTrace shows it or a person settles it
 * (freshpay_resolve).  One exception is conclusive by PayTrace's rules: a
 * void of a transaction that has settled can no longer happen.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "ach.h"
#include "administration.h"
#include "attempt.h"
#include "jobs.h"
#include "mailbox.h"
#include "payments.h"
#include "paytrace.h"
#include "resolve.h"
#include "spi_txn.h"

typedef struct Lookup
{
	Attempt    *attempt;
	Administration *admin;
	PtQuery    *query;
	PtV3Call   *v3;				/* an ACH call through v3: by id, or by its key */
	bool		on_parent;		/* a capture or void shows on the transaction it acts on */
} Lookup;

/* When to look an unknown attempt up again: sooner while it is young. */
static TimestampTz
next_lookup(const Attempt *a)
{
	TimestampTz now = GetCurrentTimestamp();
	long		age_ms = TimestampDifferenceMilliseconds(a->created_at, now);

	return TimestampTzPlusMilliseconds(now, Min(Max(age_ms / 4, LOOKUP_MIN_MS), LOOKUP_MAX_MS));
}

/* START: load the attempt and send its lookup.  False when there is nothing to look up. */
static bool
start_lookup(Flow *f, Lookup *l)
{
	MemoryContext caller = fp_txn_begin();
	Attempt    *a;

	MemoryContextSwitchTo(f->context);
	a = l->attempt = payments_load(f->job.payment_id, f->context);
	l->admin = payments_in_flight(a->status) ? administration_load(a->administration, f->context) : NULL;
	if (l->admin == NULL)
	{
		job_record(&f->job, true, 0, NULL, false, -1);
		fp_txn_commit(caller);
		return false;
	}
	fp_txn_commit(caller);
	MemoryContextSwitchTo(f->context);

	l->on_parent = strcmp(a->kind, "capture") == 0 || strcmp(a->kind, "void") == 0;
	if (a->ach_v3)
	{
		/* PayTrace keeps one transaction per key: the key finds it, or proves nothing yet. */
		if (l->on_parent)
			l->v3 = paytrace_v3_ach_get_call(l->admin, a->parent_transaction_id);
		else if (a->has_transaction_id)
			l->v3 = paytrace_v3_ach_get_call(l->admin, a->transaction_id);
		else
			l->v3 = paytrace_v3_ach_by_key_call(l->admin, a->idempotency_key);
		paytrace_v3_send(l->v3, f, f->priority);
		return true;
	}
	if (l->on_parent)
		l->query = paytrace_export_by_id_query(l->admin, a->parent_transaction_id);
	else if (a->has_transaction_id)
		l->query = paytrace_export_by_id_query(l->admin, a->transaction_id);
	else
		l->query = paytrace_export_by_date_range_query(l->admin, fp_date_of(a->created_at) - 1,
													   fp_date_of(GetCurrentTimestamp()) + 1,
													   a->invoice_number);
	paytrace_send(l->query, f, f->priority);
	return true;
}

/* Not found (yet): it stays unknown, and is looked up again.  Returns when. */
static TimestampTz
still_unknown(const Attempt *a)
{
	if (strcmp(a->status, "pending") == 0)
	{
		Oid			types[] = {INT8OID};
		Datum		values[] = {Int64GetDatum(a->payment_id)};

		fp_spi_run("UPDATE freshpay.payments SET status = 'unknown', updated_at = pg_catalog.now()"
				   " WHERE id OPERATOR(pg_catalog.=) $1 AND status OPERATOR(pg_catalog.=) 'pending'",
				   1, types, values, NULL, SPI_OK_UPDATE);
		payments_history(a->payment_id, "pending", "unknown", 0, "lookup",
						 "Not found at PayTrace yet. It is looked up again; until PayTrace shows it, or a person settles it with freshpay_resolve(), no new charge of the invoice is made.");
	}
	return next_lookup(a);
}

/* RECORD: what the export shows; returns 0 when settled, or when to look again. */
static TimestampTz
record_lookup(Lookup *l, List *candidates)
{
	Attempt    *a = l->attempt;
	PtTransaction *found;

	if (l->on_parent || a->has_transaction_id)
		found = candidates != NIL ? linitial(candidates) : NULL;
	else
		found = payments_pick_outcome(a, candidates);

	if (found != NULL)
	{
		PtResult   *result = payments_result_from(a, found);
		bool		conclusive;

		if (l->on_parent)
			/* Not visible on the parent yet: it may still be in process. */
			conclusive = result->outcome == PT_APPROVED ||
				(strcmp(a->kind, "void") == 0 && found->state == PT_STATE_SETTLED);
		else
			conclusive = true;
		if (conclusive)
		{
			if (result->outcome != PT_APPROVED && l->on_parent)
				result->message = psprintf("Transaction " INT64_FORMAT " settled before the void reached it.",
										   found->transaction_id);
			payments_record_outcome(a->payment_id, result, "resolved");
			return 0;
		}
	}

	return still_unknown(a);
}

static FlowStep
advance_lookup(Flow *f, const HttpResponse *response)
{
	Lookup	   *l = f->state;

	if (l == NULL)
	{
		f->state = palloc0(sizeof(Lookup));
		if (attempt_in_flight(f->job.payment_id))
		{
			/* The worker's own request is still out: its answer settles it. */
			job_update(&f->job, false,
					   TimestampTzPlusMilliseconds(GetCurrentTimestamp(), LOOKUP_MIN_MS),
					   NULL, false, -1);
			return FLOW_DONE;
		}
		return start_lookup(f, f->state) ? FLOW_WAITING : FLOW_DONE;
	}
	if (l->v3 != NULL ? !paytrace_v3_answered(l->v3, response, f, f->priority)
		: !paytrace_answered(l->query, response, f, f->priority))
		return FLOW_WAITING;
	{
		List	   *candidates = l->v3 ? NIL : paytrace_export_of(l->query, response);
		PtAchTransaction *ach = l->v3 ? paytrace_v3_ach_of(l->v3, response) : NULL;
		MemoryContext caller = fp_txn_begin();
		Attempt    *reloaded;
		TimestampTz again = 0;

		MemoryContextSwitchTo(f->context);
		/* Locked again: the pull or an answer may have settled it meanwhile. */
		reloaded = payments_load(f->job.payment_id, f->context);
		if (payments_in_flight(reloaded->status))
		{
			l->attempt = reloaded;
			if (l->v3 == NULL)
				again = record_lookup(l, candidates);
			else if (ach == NULL || !ach_record(reloaded, ach, "resolved"))
				again = still_unknown(reloaded);
		}
		job_record(&f->job, again == 0, again, NULL, false, -1);
		fp_txn_commit(caller);
	}
	return FLOW_DONE;
}

/*
 * Step a resolve_payment job's flow.  Errors (PayTrace unreachable, say)
 * retry the job with backoff; it never dies.
 */
FlowStep
resolve_step(Flow *f, const HttpResponse *response)
{
	return flow_job_step(f, response, advance_lookup);
}

/*
 * On worker start: attempts left 'pending' by a previous worker were maybe
 * sent; they become 'unknown' and each gets a resolve job due now.  The
 * worker runs those before it takes any new call.
 */
void
resolve_recover(void)
{
	MemoryContext caller = fp_txn_begin();
	int64		n;

	n = fp_spi_run("WITH lost AS ("
				"  UPDATE freshpay.payments SET status = 'unknown', updated_at = pg_catalog.now()"
				"   WHERE status OPERATOR(pg_catalog.=) 'pending' RETURNING id)"
				" INSERT INTO freshpay.payment_history (payment_id, old_status, new_status, event, message)"
				" SELECT id, 'pending', 'unknown', 'restart',"
				"        'The worker restarted while the attempt was in flight; it is looked up at PayTrace.'"
				"   FROM lost",
				0, NULL, NULL, NULL, SPI_OK_INSERT);
	fp_spi_run("INSERT INTO freshpay.jobs (kind, payment_id, next_run_at)"
			" SELECT 'resolve_payment', p.id, pg_catalog.now() FROM freshpay.payments p"
			"  WHERE p.status OPERATOR(pg_catalog.=) 'unknown'"
			" ON CONFLICT (kind, payment_id) WHERE state OPERATOR(pg_catalog.=) 'queued'"
			" DO UPDATE SET next_run_at = pg_catalog.now()",
			0, NULL, NULL, NULL, SPI_OK_INSERT);
	fp_txn_commit(caller);
	if (n > 0)
		elog(LOG, "freshpay worker: " INT64_FORMAT " attempts were in flight at restart; looking them up at PayTrace", n);
}
