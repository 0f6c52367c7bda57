/*-------------------------------------------------------------------------
 *
 * sync_state.h
 *	  The cursors and counts of freshpay.sync_state.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_SYNC_STATE_H
#define FRESHPAY_SYNC_STATE_H

#include "datatype/timestamp.h"

typedef struct SyncCounts
{
	int64		fetched;		/* distinct rows received */
	int64		inserted;
	int64		updated;
} SyncCounts;

extern bool sync_state_lock(const char *administration, const char *stream, TimestampTz *cursor);
extern void sync_state_store(const char *administration, const char *stream,
							 bool has_cursor, TimestampTz cursor, const SyncCounts *counts);
extern void sync_state_record(const char *administration, const char *stream,
							  const SyncCounts *counts);

#endif							/* FRESHPAY_SYNC_STATE_H */
