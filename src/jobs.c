/*-------------------------------------------------------------------------
 *
 * jobs.c
 *	  freshpay.jobs: queue, claim, backoff, prune.
 *
 * A job is claimed in a short transaction; the claim is a lease (the job is
 * not due again before its run can have ended), so one whose worker died
 * comes back.  Write-back and lookups never die: an outcome must
 * reach FreshPortal, and an unknown one must be learned.  A collection may
 * die; the due pass revives it when it can succeed (autocollect.c).
 *
 * This file knows the queue, not what a job does (pipeline.c runs them).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "jobs.h"
#include "mailbox.h"
#include "settings.h"
#include "spi_txn.h"

/* Backoff of failing jobs: 1 s doubling up to freshpay.max_retry_delay, with jitter. */
#define JOB_BACKOFF_BASE_MS 1000L

/* Queue a job (run_at 0 = now); a job of that kind already queued stays. */
void
job_queue(const char *kind, int64 payment_id, TimestampTz run_at)
{
	Oid			types[] = {TEXTOID, INT8OID, TIMESTAMPTZOID};
	Datum		values[] = {CStringGetTextDatum(kind), Int64GetDatum(payment_id),
	TimestampTzGetDatum(run_at)};
	char		nulls[] = {' ', ' ', run_at ? ' ' : 'n'};

	fp_spi_run("INSERT INTO freshpay.jobs (kind, payment_id, next_run_at)"
			" VALUES ($1, $2, COALESCE($3, pg_catalog.now()))"
			" ON CONFLICT (kind, payment_id) WHERE state OPERATOR(pg_catalog.=) 'queued'"
			" DO UPDATE SET next_run_at = LEAST(jobs.next_run_at, EXCLUDED.next_run_at),"
			"               updated_at = pg_catalog.now()",
			3, types, values, nulls, SPI_OK_INSERT);
	mailbox_wake_worker_at_commit();
}

/*
 * Queue a job of kind, due now, for the payment id in column col of each row
 * the last SPI query returned (none for a NULL id); returns how many.  The
 * ids are taken first: each job_queue is a query of its own.
 */
int64
job_queue_each(const char *kind, int col)
{
	int64		n = SPI_processed;
	int64	   *ids = palloc(sizeof(int64) * (n + 1));
	int64		queued = 0;

	for (int64 i = 0; i < n; i++)
	{
		bool		isnull;
		Datum		id = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, col, &isnull);

		if (!isnull)
			ids[queued++] = DatumGetInt64(id);
	}
	for (int64 i = 0; i < queued; i++)
		job_queue(kind, ids[i], 0);
	pfree(ids);
	return queued;
}

void
job_finish(const char *kind, int64 payment_id)
{
	Oid			types[] = {TEXTOID, INT8OID};
	Datum		values[] = {CStringGetTextDatum(kind), Int64GetDatum(payment_id)};

	fp_spi_run("UPDATE freshpay.jobs SET state = 'done', updated_at = pg_catalog.now()"
			" WHERE kind OPERATOR(pg_catalog.=) $1 AND payment_id OPERATOR(pg_catalog.=) $2"
			"   AND state OPERATOR(pg_catalog.=) 'queued'",
			2, types, values, NULL, SPI_OK_UPDATE);
}


static long
job_backoff_ms(int attempts)
{
	long		delay = JOB_BACKOFF_BASE_MS << Min(attempts, 20);

	delay = Min(delay, freshpay_max_retry_delay);
	/* Jitter: between half and all of the delay. */
	return delay / 2 + (long) (pg_prng_double(&pg_global_prng_state) * (delay / 2));
}

/*
 * Record a job's result: done, due again at next_run_at, or failed with
 * error — retried with backoff (at least retry_after_s, a Retry-After the
 * remote API gave; -1 if none), or dead when the failure is permanent or
 * attempts are used up.  In the caller's transaction; the WARNINGs of a
 * job given up or failing for long are sent at once.
 */
void
job_record(const Job *job, bool done, TimestampTz next_run_at, const char *error, bool permanent,
		   int retry_after_s)
{
	int			attempts = job->attempts + 1;

	/*
	 * Write-back and lookups are never given up: an outcome must reach
	 * FreshPortal, and an unknown one must be learned.  They retry with a
	 * backoff capped by freshpay.max_retry_delay; past freshpay.max_attempts
	 * they are an alert in freshpay.exceptions, not an end.  A collection may die; it
	 * comes back when it can succeed (revive_collections).
	 */
	bool		never_dies = strcmp(job->kind, "collect_invoice") != 0 &&
		strcmp(job->kind, "collect_statement") != 0;
	bool		dead = error != NULL && !never_dies && (permanent || attempts >= freshpay_max_attempts);
	long		delay_ms = error ? job_backoff_ms(attempts - 1) : 0;
	Oid			types[] = {INT8OID, TEXTOID, INT4OID, TIMESTAMPTZOID, TEXTOID};
	Datum		values[] = {
		Int64GetDatum(job->id),
		CStringGetTextDatum(done ? "done" : dead ? "dead" : "queued"),
		Int32GetDatum(attempts),
		TimestampTzGetDatum(error ? TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
																 Max(delay_ms, retry_after_s * 1000L))
							: next_run_at),
		error ? CStringGetTextDatum(error) : (Datum) 0
	};
	char		nulls[] = {' ', ' ', ' ', ' ', error ? ' ' : 'n'};

	fp_spi_run("UPDATE freshpay.jobs SET state = $2, attempts = $3, next_run_at = $4, claimed_at = NULL,"
			"       last_error = COALESCE($5, last_error), updated_at = pg_catalog.now()"
			" WHERE id OPERATOR(pg_catalog.=) $1",
			5, types, values, nulls, SPI_OK_UPDATE);
	if (dead)
		elog(WARNING, "freshpay worker: gave up job " INT64_FORMAT " (%s) after %d attempts: %s",
			 job->id, job->kind, attempts, error);
	else if (error != NULL && never_dies && attempts == freshpay_max_attempts)
		elog(WARNING, "freshpay worker: job " INT64_FORMAT " (%s) failed %d times and keeps retrying: %s",
			 job->id, job->kind, attempts, error);
}

/* job_record in a transaction of its own. */
void
job_update(const Job *job, bool done, TimestampTz next_run_at, const char *error, bool permanent,
		   int retry_after_s)
{
	MemoryContext caller = fp_txn_begin();

	job_record(job, done, next_run_at, error, permanent, retry_after_s);
	fp_txn_commit(caller);
}

/*
 * Errors that a retry cannot mend: bad data, a state that forbids the call,
 * missing permissions or features.  Everything else (network, remote 5xx, a
 * collection in progress) is retried.
 */
bool
job_is_permanent(int sqlerrcode)
{
	const char *state = unpack_sql_state(sqlerrcode);

	/* Busy, or a row held by someone else's transaction: later. */
	if (sqlerrcode == ERRCODE_OBJECT_IN_USE || sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE)
		return false;
	return strncmp(state, "22", 2) == 0 || strncmp(state, "42", 2) == 0 ||
		strncmp(state, "0A", 2) == 0 || strncmp(state, "P0", 2) == 0 ||
		strncmp(state, "28", 2) == 0 || strncmp(state, "55", 2) == 0;
}

/*
 * Claim up to max due jobs (of kind only_kind, if given), none of the
 * running ones, in one short transaction.  Administrations take turns: an
 * administration's due jobs queue behind its running ones, and the claim
 * takes the first of each queue, then the second, and so on; so one
 * tenant's month-end backlog cannot hold up another's jobs.  The claim is a lease: a job is
 * not due again before its run can have ended, so one whose worker died
 * comes back.  Returns how many were claimed into jobs[].
 */
int
job_claim(Job *jobs, int max, const char *only_kind, const int64 *running, int nrunning)
{
	MemoryContext caller = fp_txn_begin();
	Datum	   *ids = palloc((nrunning + 1) * sizeof(Datum));
	Oid			types[] = {TEXTOID, INT4OID, INT4OID, INT8ARRAYOID};
	Datum		values[4];
	int64		n;

	for (int i = 0; i < nrunning; i++)
		ids[i] = Int64GetDatum(running[i]);
	values[0] = CStringGetTextDatum(only_kind ? only_kind : "");
	values[1] = Int32GetDatum(2 * (freshpay_request_timeout + freshpay_connect_timeout) / 1000 + 60);
	values[2] = Int32GetDatum(max);
	values[3] = PointerGetDatum(construct_array(ids, nrunning, INT8OID, 8, true, TYPALIGN_DOUBLE));

	n = fp_spi_run("WITH ready AS ("
				   "  SELECT j.id, j.next_run_at, j.id OPERATOR(pg_catalog.=) ANY ($4) AS running,"
				   "         pg_catalog.row_number() OVER ("
				   "           PARTITION BY COALESCE(i.administration, p.administration, c.administration)"
				   "           ORDER BY j.id OPERATOR(pg_catalog.=) ANY ($4) DESC, j.next_run_at, j.id) AS turn"
				   "    FROM freshpay.jobs j"
				   "    LEFT JOIN freshpay.invoices i ON i.id OPERATOR(pg_catalog.=) j.invoice_id"
				   "    LEFT JOIN freshpay.payments p ON p.id OPERATOR(pg_catalog.=) j.payment_id"
				   "    LEFT JOIN freshpay.customers c ON c.id OPERATOR(pg_catalog.=) j.customer_id"
				   "   WHERE j.state OPERATOR(pg_catalog.=) 'queued'"
				   "     AND (j.id OPERATOR(pg_catalog.=) ANY ($4)"
				   "          OR (j.next_run_at OPERATOR(pg_catalog.<=) pg_catalog.now()"
				   "              AND ($1 OPERATOR(pg_catalog.=) '' OR j.kind OPERATOR(pg_catalog.=) $1)))),"
				   " due AS ("
				   "  SELECT j.id FROM freshpay.jobs j JOIN ready r ON r.id OPERATOR(pg_catalog.=) j.id"
				   "   WHERE NOT r.running AND j.state OPERATOR(pg_catalog.=) 'queued'"
				   "   ORDER BY r.turn, r.next_run_at, r.id LIMIT $3 FOR UPDATE OF j SKIP LOCKED)"
				   " UPDATE freshpay.jobs j SET next_run_at = pg_catalog.now() OPERATOR(pg_catalog.+)"
				   "        pg_catalog.make_interval(secs => $2), claimed_at = pg_catalog.now()"
				   "   FROM due WHERE j.id OPERATOR(pg_catalog.=) due.id"
				   " RETURNING j.id, j.kind, COALESCE(j.payment_id, 0), j.attempts,"
				   "           COALESCE(j.invoice_id, 0), COALESCE(j.customer_id, 0)",
				   4, types, values, NULL, SPI_OK_UPDATE_RETURNING);
	for (int64 i = 0; i < n; i++)
	{
		bool		isnull;
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Job		   *job = &jobs[i];

		job->id = DatumGetInt64(SPI_getbinval(row, desc, 1, &isnull));
		strlcpy(job->kind, SPI_getvalue(row, desc, 2), sizeof(job->kind));
		job->payment_id = DatumGetInt64(SPI_getbinval(row, desc, 3, &isnull));
		job->attempts = DatumGetInt32(SPI_getbinval(row, desc, 4, &isnull));
		job->invoice_id = DatumGetInt64(SPI_getbinval(row, desc, 5, &isnull));
		job->customer_id = DatumGetInt64(SPI_getbinval(row, desc, 6, &isnull));
	}
	fp_txn_commit(caller);
	return (int) n;
}

/*
 * Claim the queued job (kind, payment_id) in the caller's transaction, for
 * the worker to run it at once (the write-back right after the outcome that
 * queued it).  False if there is none.
 */
bool
job_claim_for(const char *kind, int64 payment_id, Job *job)
{
	Oid			types[] = {TEXTOID, INT8OID, INT4OID};
	Datum		values[] = {CStringGetTextDatum(kind), Int64GetDatum(payment_id),
	Int32GetDatum(2 * (freshpay_request_timeout + freshpay_connect_timeout) / 1000 + 60)};
	bool		isnull;

	if (fp_spi_run("WITH this AS ("
				   "  SELECT id FROM freshpay.jobs"
				   "   WHERE kind OPERATOR(pg_catalog.=) $1 AND payment_id OPERATOR(pg_catalog.=) $2"
				   "     AND state OPERATOR(pg_catalog.=) 'queued' FOR UPDATE SKIP LOCKED)"
				   " UPDATE freshpay.jobs j SET next_run_at = pg_catalog.now() OPERATOR(pg_catalog.+)"
				   "        pg_catalog.make_interval(secs => $3), claimed_at = pg_catalog.now()"
				   "   FROM this WHERE j.id OPERATOR(pg_catalog.=) this.id"
				   " RETURNING j.id, j.attempts",
				   3, types, values, NULL, SPI_OK_UPDATE_RETURNING) != 1)
		return false;
	job->id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	job->attempts = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	strlcpy(job->kind, kind, sizeof(job->kind));
	job->payment_id = payment_id;
	job->invoice_id = 0;
	return true;
}

/*
 * On worker start: the claims of a worker that died are void; its jobs are
 * due at once rather than when their lease runs out.
 */
void
job_release_claims(void)
{
	MemoryContext caller = fp_txn_begin();
	int64		released;

	released = fp_spi_run("UPDATE freshpay.jobs SET next_run_at = pg_catalog.now(), claimed_at = NULL"
						  " WHERE state OPERATOR(pg_catalog.=) 'queued' AND claimed_at IS NOT NULL",
					   0, NULL, NULL, NULL, SPI_OK_UPDATE);
	fp_txn_commit(caller);
	if (released > 0)
		elog(LOG, "freshpay worker: " INT64_FORMAT " jobs claimed by a previous worker are due again", released);
}

/* When the next queued job is due, or 0 if none is queued. */
TimestampTz
job_next_due(void)
{
	MemoryContext caller = fp_txn_begin();
	TimestampTz due = 0;

	if (fp_spi_run("SELECT pg_catalog.min(next_run_at) FROM freshpay.jobs"
				" WHERE state OPERATOR(pg_catalog.=) 'queued'",
				0, NULL, NULL, NULL, SPI_OK_SELECT) == 1)
	{
		bool		isnull;
		Datum		value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			due = DatumGetTimestampTz(value);
	}
	fp_txn_commit(caller);
	return due;
}

/* Drop history and finished jobs older than freshpay.history_retention. */
void
jobs_prune(void)
{
	MemoryContext caller = fp_txn_begin();
	Oid			types[] = {INT4OID};
	Datum		values[] = {Int32GetDatum(freshpay_history_retention)};

	fp_spi_run("DELETE FROM freshpay.payment_history"
			   " WHERE at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-)"
			   "       pg_catalog.make_interval(days => $1))",
			   1, types, values, NULL, SPI_OK_DELETE);
	fp_spi_run("DELETE FROM freshpay.jobs WHERE state OPERATOR(pg_catalog.=) ANY (ARRAY['done', 'dead'])"
			   "   AND updated_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-)"
			   "       pg_catalog.make_interval(days => $1))",
			   1, types, values, NULL, SPI_OK_DELETE);
	fp_txn_commit(caller);
}
