/*-------------------------------------------------------------------------
 *
 * stubs.c
 *	  Stand-ins for the parts of freshpay the fuzzed parsers call but that
 *	  have nothing to do with parsing: the HTTP layer (src/http.c), the token
 *	  cache in shared memory (src/token_cache.c) and the credential hash
 *	  (src/administration.c).
 *
 * http_perform() does not talk to any network: it answers every request with
 * the body and HTTP status the fuzz target chose for the current input (see
 * fuzz_http_answer/fuzz_http_answers in fuzz.h: the statuses are used one
 * per request, the last one repeated), so that the real request functions of
 * src/paytrace.c and src/freshportal.c run their real parsing code on fuzz
 * input, including the token, error-message and retry paths.
 *
 * Each answer body is a separate malloc'd block of exactly body_len + 1 bytes
 * (the NUL that http.c promises), so AddressSanitizer sees a read past its
 * end.  The blocks are freed after each input by fuzz_http_reset().
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <stdlib.h>

#include "administration.h"
#include "http.h"
#include "token_cache.h"

#include "fuzz.h"

#define MAX_ANSWERS 64

#define MAX_STATUSES 8

static const char *answer_body = "";
static size_t answer_len = 0;
static long answer_statuses[MAX_STATUSES] = {200};
static int	n_statuses = 1;
static int	next_status = 0;
static bool token_cached = true;

static char *answers[MAX_ANSWERS];
static int	n_answers = 0;

void
fuzz_http_answer(long status, const char *body, size_t len)
{
	fuzz_http_answers(&status, 1, body, len);
}

void
fuzz_http_answers(const long *statuses, int n, const char *body, size_t len)
{
	Assert(n >= 1 && n <= MAX_STATUSES);
	memcpy(answer_statuses, statuses, sizeof(long) * n);
	n_statuses = n;
	next_status = 0;
	answer_body = body;
	answer_len = len;
}

void
fuzz_token_cached(bool cached)
{
	token_cached = cached;
}

void
fuzz_http_reset(void)
{
	for (int i = 0; i < n_answers; i++)
		free(answers[i]);
	n_answers = 0;
	answer_body = "";
	answer_len = 0;
	answer_statuses[0] = 200;
	n_statuses = 1;
	next_status = 0;
	token_cached = true;
}

/* -- src/http.c ------------------------------------------------------------ */

void
http_perform(const HttpRequest *request, HttpResponse *response)
{
	char	   *body;

	memset(response, 0, sizeof(HttpResponse));
	if (n_answers >= MAX_ANSWERS)
		elog(ERROR, "fuzz stub: more than %d HTTP requests for one input", MAX_ANSWERS);
	body = malloc(answer_len + 1);
	if (body == NULL)
		elog(ERROR, "fuzz stub: out of memory");
	memcpy(body, answer_body, answer_len);
	body[answer_len] = '\0';
	answers[n_answers++] = body;

	response->transport = HTTP_TRANSPORT_OK;
	response->curl_code = CURLE_OK;
	response->status = answer_statuses[next_status];
	if (next_status < n_statuses - 1)
		next_status++;
	response->body = body;
	response->body_len = answer_len;
	response->retry_after = -1;
}

HttpTransfer *
http_start(const HttpRequest *request, void *owner, int priority)
{
	elog(ERROR, "fuzz stub: http_start is not available");
	return NULL;
}

bool
http_drive(long timeout_ms)
{
	return false;
}

bool
http_has_room(const char *service)
{
	return true;
}

void
http_cancel(void *owner)
{
}

bool
http_finished(HttpResponse *response, void **owner)
{
	return false;
}

void
http_report_transport_error(const HttpRequest *request, const HttpResponse *response)
{
	ereport(ERROR,
			(errcode(ERRCODE_CONNECTION_FAILURE),
			 errmsg("fuzz stub: transport error in %s", request->call ? request->call : "?")));
	pg_unreachable();
}

void
http_check_url(const char *url, const char *what)
{
}

char *
http_url_escape(const char *text)
{
	return pstrdup(text);
}

/* -- src/token_cache.c ---------------------------------------------------------- */

bool
token_cache_lookup(const char *administration, RemoteApi api, uint32 credential_hash,
				   char *token, Size token_size)
{
	if (!token_cached)
		return false;
	strlcpy(token, "fuzz-token", token_size);
	return true;
}

void
token_cache_store(const char *administration, RemoteApi api, uint32 credential_hash,
				  const char *token, TimestampTz expires_at)
{
	/* read the whole token, as the real cache would */
	if (strlen(token) > FRESHPAY_TOKEN_MAX)
		elog(ERROR, "fuzz stub: token too long");
	token_cached = true;
}

void
token_cache_forget(const char *administration, RemoteApi api, const char *token)
{
	(void) strlen(token);
	token_cached = false;
}

void
token_cache_forget_any(const char *administration, RemoteApi api)
{
	token_cached = false;
}

/* As the real one: the cached token, else (or to renew) one from fetch. */
void
token_cache_get(const char *administration, RemoteApi api, uint32 credential_hash, bool renew,
				TokenFetch fetch, const struct Administration *admin, char *token, Size token_size)
{
	if (!renew && token_cache_lookup(administration, api, credential_hash, token, token_size))
		return;
	strlcpy(token, fetch(admin, credential_hash), token_size);
}

/* -- src/administration.c -------------------------------------------------- */

uint32
administration_credential_hash(const char *url, const char *secret)
{
	return (uint32) (strlen(url) * 31 + strlen(secret));
}
