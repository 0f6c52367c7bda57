/*-------------------------------------------------------------------------
 *
 * shared.h
 *	  freshpay's shared memory: the OAuth token cache and sync progress.
 *
 * Tokens of both remote APIs are cached here, one per administration and
 * API, shared by every backend and the worker.  They are never written to a
 * table, a log or an error message.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_SHARED_H
#define FRESHPAY_SHARED_H

#include "datatype/timestamp.h"

typedef enum RemoteApi
{
	REMOTE_FRESHPORTAL = 0,
	REMOTE_PAYTRACE = 1
} RemoteApi;

/* Longest token accepted into the cache; longer ones are refused. */
#define FRESHPAY_TOKEN_MAX 1024

extern void FreshpaySharedInit(void);
extern struct Mailbox *freshpay_mailbox(void);

extern bool token_cache_lookup(const char *administration, RemoteApi api,
							   uint32 credential_hash,
							   char *token, Size token_size);
extern void token_cache_store(const char *administration, RemoteApi api,
							  uint32 credential_hash,
							  const char *token, TimestampTz expires_at);
extern void token_cache_forget(const char *administration, RemoteApi api,
							   const char *token);
extern void token_cache_forget_any(const char *administration, RemoteApi api);

extern void sync_progress_begin(const char *administration, const char *stream);
extern void sync_progress_page(int pages, int64 rows_done, int64 rows_expected);
extern void sync_progress_end(void);

#endif							/* FRESHPAY_SHARED_H */
