/*-------------------------------------------------------------------------
 *
 * sync_progress.h
 *	  What each running sync has done so far, in shared memory, behind the
 *	  view freshpay.sync_progress.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_SYNC_PROGRESS_H
#define FRESHPAY_SYNC_PROGRESS_H

/* The LWLock tranche of the progress slots (one lock). */
#define SYNC_PROGRESS_TRANCHE "freshpay sync progress"

extern Size SyncProgressShmemSize(void);
extern void SyncProgressShmemInit(void);

extern void sync_progress_begin(const char *administration, const char *stream);
extern void sync_progress_page(int pages, int64 rows_done, int64 rows_expected);
extern void sync_progress_end(void);

#endif							/* FRESHPAY_SYNC_PROGRESS_H */
