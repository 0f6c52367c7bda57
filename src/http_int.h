/*-------------------------------------------------------------------------
 *
 * http_int.h
 *	  What http.c and http_loop.c share, and nobody else sees.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_HTTP_INT_H
#define FRESHPAY_HTTP_INT_H

#include <curl/curl.h>

#include "http.h"

typedef struct BodyBuffer
{
	char	   *data;			/* malloc'd */
	size_t		len;
	size_t		cap;
	size_t		limit;
	bool		too_large;
} BodyBuffer;

extern CURL *http_handle(void);
extern void http_check_request_url(const HttpRequest *request);
extern void http_transfer_setup(CURL *handle, const HttpRequest *request, BodyBuffer *buf,
								char *errbuf, struct curl_slist **headers);
extern void http_transfer_collect(CURL *handle, CURLcode code, const BodyBuffer *buf,
								  const char *errbuf, HttpResponse *response);

#endif							/* FRESHPAY_HTTP_INT_H */
