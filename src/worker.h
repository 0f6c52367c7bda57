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

extern PGDLLEXPORT void freshpay_worker_main(Datum main_arg);
extern PGDLLEXPORT void freshpay_sync_worker_main(Datum main_arg);

#endif							/* FRESHPAY_WORKER_H */
