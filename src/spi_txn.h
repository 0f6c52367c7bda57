/*-------------------------------------------------------------------------
 *
 * spi_txn.h
 *	  Short transactions of the workers and SPI row access.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_SPI_TXN_H
#define FRESHPAY_SPI_TXN_H

#include "datatype/timestamp.h"
#include "utils/date.h"
#include "utils/palloc.h"

/* A transaction with SPI connected and a snapshot pushed; commit restores the caller's context. */
extern MemoryContext fp_txn_begin(void);
extern void fp_txn_commit(MemoryContext caller);
extern ErrorData *fp_txn_catch(MemoryContext context);
extern bool fp_txn_on_the_side(void (*step) (void *arg), void *arg);

/* sql must be a string literal: its plan is kept, keyed by its address. */
extern int64 fp_spi_run(const char *sql, int nargs, const Oid *types,
						const Datum *values, const char *nulls, int expected);
extern char *fp_spi_text(MemoryContext context, int col);
extern bool fp_spi_int64(int col, int64 *result);

extern char *fp_error_text(const ErrorData *edata);
extern DateADT fp_date_of(TimestampTz ts);
extern void fp_pause_point(const char *point, int64 payment_id);

#endif							/* FRESHPAY_SPI_TXN_H */
