/*-------------------------------------------------------------------------
 *
 * pipeline.h
 *	  The money worker's pipeline of flows.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_PIPELINE_H
#define FRESHPAY_PIPELINE_H

extern bool pipeline_serve(MemoryContext loop_context, const char *only_kind, long max_ms);

#endif							/* FRESHPAY_PIPELINE_H */
