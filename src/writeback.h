/*-------------------------------------------------------------------------
 *
 * writeback.h
 *	  Writing payment outcomes back to FreshPortal, exactly once.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_WRITEBACK_H
#define FRESHPAY_WRITEBACK_H

extern void writeback_register(int64 payment_id);
extern void writeback_reverse(int64 payment_id);

#endif							/* FRESHPAY_WRITEBACK_H */
