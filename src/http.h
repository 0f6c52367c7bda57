/*-------------------------------------------------------------------------
 *
 * http.h
 *	  freshpay's one HTTP layer over libcurl.
 *
 * Every request to a remote API goes through http_perform(): timeouts from
 * the settings, TLS verification always on, plain http only to loopback when
 * allowed, a response size cap, cancel and termination honoured within about
 * a second, keep-alive reuse, and no libcurl memory left behind on any path.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_HTTP_H
#define FRESHPAY_HTTP_H

#include <curl/curl.h>

typedef struct HttpRequest
{
	const char *service;		/* "FreshPortal" or "PayTrace", for messages */
	const char *administration; /* for messages */
	const char *call;			/* e.g. "GET /v1/invoices", for messages */
	const char *method;			/* "GET" or "POST" */
	const char *url;			/* base URL + path + query */
	const char *content_type;	/* of body; NULL when there is no body */
	const char *body;			/* NULL for none */
	const char *bearer_token;	/* sent as "Authorization: Bearer ..." */
	const char *extra_header;	/* one more "Name: value" line, or NULL */
	bool		idempotent;		/* safe to repeat (GETs are, always) */
} HttpRequest;

typedef enum HttpTransport
{
	HTTP_TRANSPORT_OK,			/* an HTTP answer arrived */
	HTTP_TRANSPORT_NOT_SENT,	/* failed before the request left: safe to retry */
	HTTP_TRANSPORT_LOST,		/* request (maybe) sent, answer lost */
	HTTP_TRANSPORT_TOO_LARGE	/* answer exceeded freshpay.max_response_size */
} HttpTransport;

typedef struct HttpResponse
{
	HttpTransport transport;
	CURLcode	curl_code;
	long		status;			/* HTTP status when transport is OK */
	char	   *body;			/* palloc'd, NUL-terminated */
	size_t		body_len;
	int			retry_after;	/* seconds from Retry-After, or -1 */
	const HttpRequest *request; /* what http_start was given: tells answers apart */
	char		error[CURL_ERROR_SIZE]; /* libcurl's explanation */
} HttpResponse;

/* A request in flight, owned by http.c. */
typedef struct HttpTransfer HttpTransfer;

extern void http_perform(const HttpRequest *request, HttpResponse *response);
extern HttpTransfer *http_start(const HttpRequest *request, void *owner, int priority);
extern bool http_has_room(const char *service);
extern void http_cancel(void *owner);
extern bool http_drive(long timeout_ms);
extern bool http_finished(HttpResponse *response, void **owner);
extern void http_report_transport_error(const HttpRequest *request,
										const HttpResponse *response) pg_attribute_noreturn();
extern void http_check_url(const char *url, const char *what);
extern char *http_url_escape(const char *text);

extern int http_parse_retry_after(const char *value, time_t now);

#endif							/* FRESHPAY_HTTP_H */
