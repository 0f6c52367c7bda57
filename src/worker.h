/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  The freshpay background worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_WORKER_H
#define FRESHPAY_WORKER_H

#include "datatype/timestamp.h"
#include "utils/date.h"
#include "utils/palloc.h"

extern void FreshpayWorkerRegister(void);

/* Transactions of the worker, with SPI connected and a snapshot pushed. */
extern MemoryContext worker_begin(void);
extern void worker_commit(MemoryContext caller);
extern void worker_pause_point(const char *point, int64 payment_id);
extern int64 spi_run(const char *sql, int nargs, const Oid *types,
					 const Datum *values, const char *nulls, int expected);
extern char *spi_text(MemoryContext context, int col);
extern bool spi_int64(int col, int64 *result);
extern void job_queue(const char *kind, int64 payment_id, TimestampTz run_at);
extern void job_finish(const char *kind, int64 payment_id);
extern DateADT date_of_timestamp(TimestampTz ts);
extern ErrorData *worker_catch(MemoryContext context);
extern char *worker_error_text(const ErrorData *edata);
extern PGDLLEXPORT void freshpay_worker_main(Datum main_arg);
extern PGDLLEXPORT void freshpay_sync_worker_main(Datum main_arg);

#endif							/* FRESHPAY_WORKER_H */
