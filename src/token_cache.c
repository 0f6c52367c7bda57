/*-------------------------------------------------------------------------
 *
 * token_cache.c
 *	  The OAuth token cache: a fixed array of slots in shared memory.
 *
 * One LWLock guards it: every access is a handful of memcpys, far cheaper
 * than the HTTP call around it.  This file owns no network code and no SQL.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "token_cache.h"

#define TOKEN_SLOTS		64

typedef struct TokenSlot
{
	bool		in_use;
	RemoteApi	api;
	uint32		credential_hash;	/* URL + credentials the token belongs to */
	char		administration[NAMEDATALEN];
	TimestampTz expires_at;
	TimestampTz last_used;
	char		token[FRESHPAY_TOKEN_MAX + 1];
} TokenSlot;

typedef struct TokenCache
{
	LWLock	   *lock;
	TokenSlot	slots[TOKEN_SLOTS];
} TokenCache;

static TokenCache *cache = NULL;

Size
TokenCacheShmemSize(void)
{
	return MAXALIGN(sizeof(TokenCache));
}

/* In the shmem startup hook, under AddinShmemInitLock. */
void
TokenCacheShmemInit(void)
{
	bool		found;

	cache = ShmemInitStruct("freshpay token cache", sizeof(TokenCache), &found);
	if (!found)
	{
		memset(cache, 0, sizeof(TokenCache));
		cache->lock = &(GetNamedLWLockTranche(TOKEN_CACHE_TRANCHE))->lock;
	}
}

static TokenSlot *
token_slot_find(const char *administration, RemoteApi api)
{
	for (int i = 0; i < TOKEN_SLOTS; i++)
	{
		TokenSlot  *slot = &cache->slots[i];

		if (slot->in_use && slot->api == api &&
			strcmp(slot->administration, administration) == 0)
			return slot;
	}
	return NULL;
}

/*
 * Copy the cached token of (administration, api) into token[] if there is
 * one for the same credentials that has not expired.  Callers store tokens
 * with an expiry well before the remote API's own.
 */
bool
token_cache_lookup(const char *administration, RemoteApi api,
				   uint32 credential_hash, char *token, Size token_size)
{
	TokenSlot  *slot;
	bool		found = false;
	TimestampTz now = GetCurrentTimestamp();

	Assert(cache != NULL);
	LWLockAcquire(cache->lock, LW_EXCLUSIVE);
	slot = token_slot_find(administration, api);
	if (slot != NULL && slot->credential_hash == credential_hash &&
		slot->expires_at > now &&
		strlen(slot->token) < token_size)
	{
		strlcpy(token, slot->token, token_size);
		slot->last_used = now;
		found = true;
	}
	LWLockRelease(cache->lock);
	return found;
}

/*
 * The token for a call into token[]: the cached one, or — when there is
 * none, or renew (the remote API refused the cached one) — a fresh one from
 * fetch, which caches it.  The fetched copy is wiped.
 */
void
token_cache_get(const char *administration, RemoteApi api, uint32 credential_hash, bool renew,
				TokenFetch fetch, const struct Administration *admin, char *token, Size token_size)
{
	char	   *fresh;

	if (!renew && token_cache_lookup(administration, api, credential_hash, token, token_size))
		return;
	fresh = fetch(admin, credential_hash);
	strlcpy(token, fresh, token_size);
	explicit_bzero(fresh, strlen(fresh));
}

void
token_cache_store(const char *administration, RemoteApi api,
				  uint32 credential_hash, const char *token,
				  TimestampTz expires_at)
{
	TokenSlot  *slot;

	if (strlen(token) > FRESHPAY_TOKEN_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("OAuth token of administration \"%s\" is too long to cache",
						administration),
				 errdetail("Tokens of up to %d bytes are supported.", FRESHPAY_TOKEN_MAX)));

	LWLockAcquire(cache->lock, LW_EXCLUSIVE);
	slot = token_slot_find(administration, api);
	if (slot == NULL)
	{
		/* Take a free slot, or evict the least recently used one. */
		for (int i = 0; i < TOKEN_SLOTS; i++)
		{
			TokenSlot  *candidate = &cache->slots[i];

			if (!candidate->in_use)
			{
				slot = candidate;
				break;
			}
			if (slot == NULL || candidate->last_used < slot->last_used)
				slot = candidate;
		}
	}
	slot->in_use = true;
	slot->api = api;
	slot->credential_hash = credential_hash;
	strlcpy(slot->administration, administration, NAMEDATALEN);
	strlcpy(slot->token, token, sizeof(slot->token));
	slot->expires_at = expires_at;
	slot->last_used = GetCurrentTimestamp();
	LWLockRelease(cache->lock);
}

/*
 * Drop the cached token after the remote API rejected it.  Only the token
 * that was rejected is dropped: another backend may already have stored a
 * fresh one.
 */
void
token_cache_forget(const char *administration, RemoteApi api, const char *token)
{
	TokenSlot  *slot;

	LWLockAcquire(cache->lock, LW_EXCLUSIVE);
	slot = token_slot_find(administration, api);
	if (slot != NULL && strcmp(slot->token, token) == 0)
		memset(slot, 0, sizeof(TokenSlot));
	LWLockRelease(cache->lock);
}

/* Drop whatever token is cached (its owner no longer knows which it used). */
void
token_cache_forget_any(const char *administration, RemoteApi api)
{
	TokenSlot  *slot;

	LWLockAcquire(cache->lock, LW_EXCLUSIVE);
	slot = token_slot_find(administration, api);
	if (slot != NULL)
		memset(slot, 0, sizeof(TokenSlot));
	LWLockRelease(cache->lock);
}
