/*-------------------------------------------------------------------------
 *
 * http.c
 *	  The one place freshpay speaks HTTP: libcurl with PostgreSQL manners.
 *
 * What this file guarantees to its callers (the PayTrace and FreshPortal
 * clients), so that they never touch libcurl themselves:
 *
 *	- CURLOPT_NOSIGNAL: PostgreSQL owns SIGALRM (statement_timeout and friends);
 *	  libcurl must not install handlers of its own.
 *	- Interruptible: a progress callback aborts the transfer when a query
 *	  cancel or termination is pending; once libcurl has returned and its
 *	  memory is released, CHECK_FOR_INTERRUPTS() raises the usual error.
 *	  libcurl calls the callback about once a second even on an idle socket.
 *	- https with peer and host verification always on; http:// only when
 *	  freshpay.allow_plain_http is on and the host is a loopback address; no
 *	  redirects (a payment POST must not wander off to another host).
 *	- A cap on the response size, enforced while receiving.
 *	- Requests that are not idempotent (a sale, a payment registration) never
 *	  go out on a reused connection: when a reused keep-alive connection dies
 *	  without an answer, libcurl silently sends the request again on a new
 *	  one, and a sale the server had already committed would be charged
 *	  twice.  On a fresh connection libcurl does not retry.
 *	- No leaks: libcurl allocates with malloc.  The response is collected in
 *	  a malloc'd buffer (palloc cannot be used inside a libcurl callback: an
 *	  out-of-memory ERROR would longjmp through libcurl's stack) and copied
 *	  into palloc'd memory afterwards; header lists and buffers are freed in
 *	  PG_FINALLY.  The easy handle is cached for the life of the process so
 *	  that connections are kept alive between calls; it is freed at exit.
 *
 * It must not know any remote API: no paths, no JSON, no secrets beyond the
 * bearer token it is handed (which it never prints).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>

#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/wait_event.h"

#include "http.h"
#include "http_int.h"
#include "settings.h"

#if LIBCURL_VERSION_NUM < 0x075500
#error "freshpay needs libcurl 7.85 or later (CURLOPT_PROTOCOLS_STR, curl_easy_header)"
#endif

/* A libcurl handle kept for the life of the process, for keep-alive reuse. */
static CURL *cached_handle = NULL;


typedef struct UrlParts
{
	char		scheme[16];
	char		host[256];
	bool		has_credentials;
} UrlParts;

static void
http_release(int code, Datum arg)
{
	if (cached_handle != NULL)
	{
		curl_easy_cleanup(cached_handle);
		cached_handle = NULL;
	}
	curl_global_cleanup();
}

CURL *
http_handle(void)
{
	if (cached_handle == NULL)
	{
		static bool initialized = false;

		if (!initialized)
		{
			if (curl_global_init(CURL_GLOBAL_ALL) != CURLE_OK)
				ereport(ERROR,
						(errcode(ERRCODE_SYSTEM_ERROR),
						 errmsg("could not initialize libcurl")));
			on_proc_exit(http_release, (Datum) 0);
			initialized = true;
		}
		cached_handle = curl_easy_init();
		if (cached_handle == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("could not create a libcurl handle")));
	}
	return cached_handle;
}

/*
 * Split a URL with libcurl's own parser, so that what we check is what
 * libcurl will connect to.  Fixed-size buffers: nothing here can ERROR while
 * libcurl memory is held.
 */
static bool
url_parse(const char *url, UrlParts *parts)
{
	CURLU	   *u = curl_url();
	char	   *scheme = NULL;
	char	   *host = NULL;
	char	   *user = NULL;
	bool		ok;

	memset(parts, 0, sizeof(UrlParts));
	if (u == NULL)
		return false;
	ok = curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
		curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
		curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
		strlen(scheme) < sizeof(parts->scheme) &&
		strlen(host) < sizeof(parts->host);
	if (ok)
	{
		strlcpy(parts->scheme, scheme, sizeof(parts->scheme));
		strlcpy(parts->host, host, sizeof(parts->host));
		parts->has_credentials =
			curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK;
	}
	curl_free(user);
	curl_free(host);
	curl_free(scheme);
	curl_url_cleanup(u);
	return ok;
}

static bool
host_is_loopback(const char *host)
{
	struct in_addr addr4;
	struct in6_addr addr6;
	char		bare[256];
	size_t		len = strlen(host);

	if (pg_strcasecmp(host, "localhost") == 0)
		return true;
	if (inet_pton(AF_INET, host, &addr4) == 1)
		return (ntohl(addr4.s_addr) >> 24) == 127;
	if (len > 2 && host[0] == '[' && host[len - 1] == ']' && len < sizeof(bare))
	{
		memcpy(bare, host + 1, len - 2);
		bare[len - 2] = '\0';
		host = bare;
	}
	if (inet_pton(AF_INET6, host, &addr6) == 1)
		return IN6_IS_ADDR_LOOPBACK(&addr6);
	return false;
}

/*
 * Raise an ERROR unless url is one freshpay may connect to.  what names the
 * URL for the message: an argument at definition time ("freshportal_url"),
 * or "the FreshPortal URL of administration "main"" at request time.  Only
 * the host is printed: a full URL carries query strings.
 */
void
http_check_url(const char *url, const char *what)
{
	UrlParts	parts;

	if (url == NULL || !url_parse(url, &parts))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid %s: \"%s\"", what, url ? url : ""),
				 errhint("Give an absolute URL such as https://850255-api.freshportal.com.")));

	if (parts.has_credentials)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not contain credentials", what),
				 errhint("Pass secrets in their own arguments, preferably as env: or file: references.")));

	if (pg_strcasecmp(parts.scheme, "https") == 0)
		return;

	if (pg_strcasecmp(parts.scheme, "http") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unsupported URL scheme \"%s\" in %s", parts.scheme, what),
				 errhint("Use an https:// URL.")));

	if (!freshpay_allow_plain_http)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("plain http is not allowed for %s", what),
				 errhint("Use an https:// URL. freshpay.allow_plain_http permits http:// to loopback addresses only, for tests and local stand-ins.")));

	if (!host_is_loopback(parts.host))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("plain http is allowed only to loopback addresses"),
				 errdetail("%s points at host \"%s\".", what, parts.host),
				 errhint("Use an https:// URL for any host other than 127.0.0.1, ::1 or localhost.")));
}

/* The URL policy for a request: errors name the service and administration. */
void
http_check_request_url(const HttpRequest *request)
{
	http_check_url(request->url,
				   psprintf("the %s URL of administration \"%s\"",
							request->service, request->administration));
}

static size_t
body_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	BodyBuffer *buf = (BodyBuffer *) userdata;
	size_t		n = size * nmemb;

	if (buf->len + n > buf->limit)
	{
		buf->too_large = true;
		return 0;				/* makes libcurl stop with CURLE_WRITE_ERROR */
	}
	if (buf->len + n + 1 > buf->cap)
	{
		size_t		cap = Max(Max(buf->cap * 2, buf->len + n + 1), 8192);
		char	   *data = realloc(buf->data, cap);

		if (data == NULL)
			return 0;
		buf->data = data;
		buf->cap = cap;
	}
	memcpy(buf->data + buf->len, ptr, n);
	buf->len += n;
	buf->data[buf->len] = '\0';
	return n;
}

static int
transfer_progress(void *clientp, curl_off_t dltotal, curl_off_t dlnow,
				  curl_off_t ultotal, curl_off_t ulnow)
{
	/* Non-zero aborts the transfer with CURLE_ABORTED_BY_CALLBACK. */
	return (InterruptPending && (QueryCancelPending || ProcDiePending)) ? 1 : 0;
}

static struct curl_slist *
header_append(struct curl_slist *list, const char *header)
{
	struct curl_slist *grown = curl_slist_append(list, header);

	if (grown == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory while building an HTTP request")));
	return grown;
}

/*
 * Retry-After (RFC 9110 10.2.3): delta-seconds or an HTTP-date.  Returns
 * seconds from now, capped at a day, or -1 when absent or unreadable.
 */
int
http_parse_retry_after(const char *value, time_t now)
{
	const long	cap = 24 * 60 * 60;

	while (value != NULL && (*value == ' ' || *value == '\t'))
		value++;
	if (value == NULL || *value == '\0')
		return -1;
	if (isdigit((unsigned char) *value))
	{
		long		seconds = 0;

		for (; isdigit((unsigned char) *value); value++)
			seconds = Min(seconds * 10 + (*value - '0'), cap);
		while (*value == ' ' || *value == '\t')
			value++;
		return *value == '\0' ? (int) seconds : -1;
	}
	else
	{
		/* IMF-fixdate, e.g. "Sun, 06 Nov 1994 08:49:37 GMT"; curl parses it. */
		time_t		at = curl_getdate(value, NULL);

		if (at == -1)
			return -1;
		return at <= now ? 0 : (int) Min((long) (at - now), cap);
	}
}

static HttpTransport
classify_failure(CURLcode code, long request_size)
{
	switch (code)
	{
		case CURLE_UNSUPPORTED_PROTOCOL:
		case CURLE_URL_MALFORMAT:
		case CURLE_COULDNT_RESOLVE_PROXY:
		case CURLE_COULDNT_RESOLVE_HOST:
		case CURLE_COULDNT_CONNECT:
		case CURLE_SSL_CONNECT_ERROR:
		case CURLE_PEER_FAILED_VERIFICATION:
		case CURLE_SSL_CERTPROBLEM:
		case CURLE_SSL_CIPHER:
		case CURLE_SSL_CACERT_BADFILE:
			return HTTP_TRANSPORT_NOT_SENT;
		default:
			/* A timeout or reset after the request was written may have been processed. */
			return request_size > 0 ? HTTP_TRANSPORT_LOST : HTTP_TRANSPORT_NOT_SENT;
	}
}

/*
 * Set handle up for request: the options every request gets, its headers
 * (into *headers, which the caller frees) and its body (copied by libcurl, so
 * that an asynchronous transfer does not depend on the caller's memory).
 */
void
http_transfer_setup(CURL *handle, const HttpRequest *request, BodyBuffer *buf, char *errbuf,
			   struct curl_slist **headers)
{
	UrlParts	parts;

	url_parse(request->url, &parts);
	buf->limit = (size_t) freshpay_max_response_size * 1024;

	curl_easy_setopt(handle, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(handle, CURLOPT_URL, request->url);
	curl_easy_setopt(handle, CURLOPT_PROTOCOLS_STR,
					 freshpay_allow_plain_http ? "http,https" : "https");
	curl_easy_setopt(handle, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(handle, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(handle, CURLOPT_SSL_VERIFYHOST, 2L);
	if (freshpay_ca_file != NULL && freshpay_ca_file[0] != '\0')
		curl_easy_setopt(handle, CURLOPT_CAINFO, freshpay_ca_file);
	if (host_is_loopback(parts.host))
		curl_easy_setopt(handle, CURLOPT_NOPROXY, "*");
	curl_easy_setopt(handle, CURLOPT_CONNECTTIMEOUT_MS, (long) freshpay_connect_timeout);
	curl_easy_setopt(handle, CURLOPT_TIMEOUT_MS, (long) freshpay_request_timeout);
	curl_easy_setopt(handle, CURLOPT_TCP_KEEPALIVE, 1L);
	if (!request->idempotent && strcmp(request->method, "GET") != 0)
		curl_easy_setopt(handle, CURLOPT_FRESH_CONNECT, 1L);
	curl_easy_setopt(handle, CURLOPT_USERAGENT, "freshpay/" FRESHPAY_VERSION);
	curl_easy_setopt(handle, CURLOPT_ACCEPT_ENCODING, "");
	curl_easy_setopt(handle, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(handle, CURLOPT_WRITEFUNCTION, body_write);
	curl_easy_setopt(handle, CURLOPT_WRITEDATA, buf);
	curl_easy_setopt(handle, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) buf->limit);
	curl_easy_setopt(handle, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(handle, CURLOPT_XFERINFOFUNCTION, transfer_progress);

	*headers = header_append(*headers, "Accept: application/json");
	/* No "Expect: 100-continue" round trip before a POST body. */
	*headers = header_append(*headers, "Expect:");
	if (request->content_type != NULL)
	{
		char	   *line = psprintf("Content-Type: %s", request->content_type);

		*headers = header_append(*headers, line);
		pfree(line);
	}
	if (request->bearer_token != NULL)
	{
		/* PayTrace insists on the capital B. */
		char	   *line = psprintf("Authorization: Bearer %s", request->bearer_token);

		*headers = header_append(*headers, line);
		explicit_bzero(line, strlen(line));
		pfree(line);
	}
	if (request->extra_header != NULL)
		*headers = header_append(*headers, request->extra_header);
	curl_easy_setopt(handle, CURLOPT_HTTPHEADER, *headers);

	if (strcmp(request->method, "POST") == 0)
	{
		const char *body = request->body ? request->body : "";

		curl_easy_setopt(handle, CURLOPT_POST, 1L);
		curl_easy_setopt(handle, CURLOPT_POSTFIELDSIZE, (long) strlen(body));
		curl_easy_setopt(handle, CURLOPT_COPYPOSTFIELDS, body);
	}
	else
		curl_easy_setopt(handle, CURLOPT_HTTPGET, 1L);
}

/* What a finished transfer brought: status, body (palloc'd), transport verdict. */
void
http_transfer_collect(CURL *handle, CURLcode code, const BodyBuffer *buf, const char *errbuf,
				 HttpResponse *response)
{
	struct curl_header *retry_after;
	long		request_size = 0;

	memset(response, 0, sizeof(HttpResponse));
	response->retry_after = -1;
	curl_easy_getinfo(handle, CURLINFO_RESPONSE_CODE, &response->status);
	curl_easy_getinfo(handle, CURLINFO_REQUEST_SIZE, &request_size);
	if (code == CURLE_OK &&
		curl_easy_header(handle, "Retry-After", 0, CURLH_HEADER, -1, &retry_after) == CURLHE_OK)
		response->retry_after = http_parse_retry_after(retry_after->value, time(NULL));
	strlcpy(response->error, errbuf, sizeof(response->error));

	response->body = palloc(buf->len + 1);
	if (buf->len > 0)
		memcpy(response->body, buf->data, buf->len);
	response->body[buf->len] = '\0';
	response->body_len = buf->len;

	response->curl_code = code;
	if (code == CURLE_OK)
		response->transport = HTTP_TRANSPORT_OK;
	else if (buf->too_large || code == CURLE_FILESIZE_EXCEEDED)
		response->transport = HTTP_TRANSPORT_TOO_LARGE;
	else
		response->transport = classify_failure(code, request_size);
	if (response->error[0] == '\0' && code != CURLE_OK)
		strlcpy(response->error, curl_easy_strerror(code), sizeof(response->error));
}

static void
report_interrupted(const HttpRequest *request)
{
	CHECK_FOR_INTERRUPTS();
	ereport(ERROR,
			(errcode(ERRCODE_QUERY_CANCELED),
			 errmsg("request %s to %s was interrupted", request->call, request->service)));
}

/*
 * Perform one request and wait for it.  Transport failures are reported in
 * response (the caller decides whether a lost answer is an error or an
 * unknown outcome); HTTP error statuses are left to the caller too.  A
 * pending cancel or termination is raised as an ERROR.  Policy violations
 * (plain http to a remote host) are raised before anything is sent.
 */
void
http_perform(const HttpRequest *request, HttpResponse *response)
{
	CURL	   *handle;

	/*
	 * The header list lives outside the stack frame that an error unwinds,
	 * so that a list left half-built by a failing header_append is freed too.
	 */
	struct curl_slist **headers = palloc0(sizeof(struct curl_slist *));
	BodyBuffer	buf = {0};
	char		errbuf[CURL_ERROR_SIZE] = "";
	volatile CURLcode code = CURLE_OK;

	http_check_request_url(request);
	handle = http_handle();

	PG_TRY();
	{
		curl_easy_reset(handle);
		http_transfer_setup(handle, request, &buf, errbuf, headers);
		code = curl_easy_perform(handle);
		http_transfer_collect(handle, code, &buf, errbuf, response);
		response->request = request;
	}
	PG_FINALLY();
	{
		/* The cached handle must not keep pointers to our stack or list. */
		curl_easy_setopt(handle, CURLOPT_HTTPHEADER, NULL);
		curl_easy_setopt(handle, CURLOPT_ERRORBUFFER, NULL);
		curl_easy_setopt(handle, CURLOPT_WRITEDATA, NULL);
		curl_slist_free_all(*headers);
		pfree(headers);
		free(buf.data);
	}
	PG_END_TRY();

	if (code == CURLE_ABORTED_BY_CALLBACK)
		report_interrupted(request);
}

/*
 * Raise the ERROR a failed transport deserves.  The detail is libcurl's own
 * explanation, which names hosts and certificates but never headers.
 */
void
http_report_transport_error(const HttpRequest *request, const HttpResponse *response)
{
	if (response->transport == HTTP_TRANSPORT_TOO_LARGE)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("answer of %s to %s for administration \"%s\" exceeds freshpay.max_response_size",
						request->service, request->call, request->administration),
				 errdetail("The limit is %d kB.", freshpay_max_response_size),
				 errhint("Raise freshpay.max_response_size, or lower freshpay.sync_page_size.")));

	switch (response->curl_code)
	{
		case CURLE_PEER_FAILED_VERIFICATION:
		case CURLE_SSL_CONNECT_ERROR:
		case CURLE_SSL_CERTPROBLEM:
		case CURLE_SSL_CACERT_BADFILE:
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("could not establish a verified TLS connection to %s for administration \"%s\"",
							request->service, request->administration),
					 errdetail("%s", response->error),
					 errhint("If the server's certificate is signed by a private CA, set freshpay.ca_file to that CA's certificate; the host name in the URL must match the certificate.")));
			break;
		case CURLE_OPERATION_TIMEDOUT:
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("%s did not answer %s for administration \"%s\" in time",
							request->service, request->call, request->administration),
					 errdetail("%s", response->error),
					 errhint("freshpay.connect_timeout and freshpay.request_timeout bound each request.")));
			break;
		case CURLE_COULDNT_RESOLVE_HOST:
		case CURLE_COULDNT_RESOLVE_PROXY:
		case CURLE_COULDNT_CONNECT:
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("could not connect to %s for administration \"%s\"",
							request->service, request->administration),
					 errdetail("%s", response->error),
					 errhint("Check the administration's URL and that the database server can reach it.")));
			break;
		default:
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("connection to %s failed during %s for administration \"%s\"",
							request->service, request->call, request->administration),
					 errdetail("%s", response->error),
					 errhint("The request is retried on the next run; check the service's status if it persists.")));
	}
	pg_unreachable();
}

/* Percent-encode text for a query string (RFC 3986 unreserved kept). */
char *
http_url_escape(const char *text)
{
	static const char hex[] = "0123456789ABCDEF";
	StringInfoData out;

	initStringInfo(&out);
	for (const unsigned char *p = (const unsigned char *) text; *p; p++)
	{
		if (isalnum(*p) || *p == '-' || *p == '.' || *p == '_' || *p == '~')
			appendStringInfoChar(&out, (char) *p);
		else
		{
			appendStringInfoChar(&out, '%');
			appendStringInfoChar(&out, hex[*p >> 4]);
			appendStringInfoChar(&out, hex[*p & 0x0F]);
		}
	}
	return out.data;
}
