/*-------------------------------------------------------------------------
 *
 * token_cache.h
 *	  The OAuth tokens of both remote APIs, in shared memory.
 *
 * One token per administration and API, shared by every backend and both
 * workers.  Tokens are never written to a table, a log or an error message.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_TOKEN_CACHE_H
#define FRESHPAY_TOKEN_CACHE_H

#include "datatype/timestamp.h"

typedef enum RemoteApi
{
	REMOTE_FRESHPORTAL = 0,
	REMOTE_PAYTRACE = 1,
	REMOTE_PAYTRACE_V3 = 2		/* v3 tokens are their own */
} RemoteApi;

/* Longest token accepted into the cache; longer ones are refused. */
#define FRESHPAY_TOKEN_MAX 1024

/* The LWLock tranche of the cache (one lock). */
#define TOKEN_CACHE_TRANCHE "freshpay token cache"

extern Size TokenCacheShmemSize(void);
extern void TokenCacheShmemInit(void);

extern bool token_cache_lookup(const char *administration, RemoteApi api,
							   uint32 credential_hash,
							   char *token, Size token_size);
extern void token_cache_store(const char *administration, RemoteApi api,
							  uint32 credential_hash,
							  const char *token, TimestampTz expires_at);
extern void token_cache_forget(const char *administration, RemoteApi api,
							   const char *token);
extern void token_cache_forget_any(const char *administration, RemoteApi api);

/* Fetches a fresh token from the remote API and caches it; returns a palloc'd copy. */
struct Administration;
typedef char *(*TokenFetch) (const struct Administration *admin, uint32 credential_hash);

extern void token_cache_get(const char *administration, RemoteApi api, uint32 credential_hash,
							bool renew, TokenFetch fetch, const struct Administration *admin,
							char *token, Size token_size);

#endif							/* FRESHPAY_TOKEN_CACHE_H */
