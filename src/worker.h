/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  The freshpay background worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_WORKER_H
#define FRESHPAY_WORKER_H

extern void FreshpayWorkerRegister(void);
extern PGDLLEXPORT void freshpay_worker_main(Datum main_arg);

#endif							/* FRESHPAY_WORKER_H */
