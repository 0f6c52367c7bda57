/*-------------------------------------------------------------------------
 *
 * http_loop.c
 *	  Requests in flight without waiting: the worker's transfers in one
 *	  libcurl multi handle, driven by its wait on the latch and the
 *	  transfers' sockets.
 *
 * Each remote API has its own bound of requests in flight
 * (freshpay.max_parallel_requests); the rest wait in a queue, calls that
 * sessions wait for first, and leave as soon as a place frees, fairly
 * between administrations.  Every transfer is freed on every path, and all
 * of them at exit.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/wait_event.h"

#include "http.h"
#include "http_int.h"
#include "settings.h"

/*
 * Transfers in flight at once (the worker's), on one multi handle.  Each is
 * malloc'd and owned here from http_start until http_finished hands back
 * its response; on exit whatever is left is freed.
 */
struct HttpTransfer
{
	CURL	   *handle;
	struct curl_slist *headers;
	BodyBuffer	buf;
	char		error[CURL_ERROR_SIZE];
	void	   *owner;
	const HttpRequest *request; /* the caller's, living as long as the transfer */
	HttpTransfer *next;
	int			service;		/* HTTP_SERVICE_* */
	char		administration[NAMEDATALEN];
	int			priority;		/* higher first */
	uint64		seq;			/* FIFO among equals */
	bool		active;			/* in the multi handle; else queued */
};

/* Each remote API has its own bound of requests in flight. */
#define HTTP_SERVICE_FRESHPORTAL 0
#define HTTP_SERVICE_PAYTRACE 1
#define HTTP_SERVICES 2

static CURLM *multi = NULL;
static HttpTransfer *transfers = NULL;
static int	transfer_count = 0;
static int	active_count[HTTP_SERVICES];
static int	queued_count[HTTP_SERVICES];
static uint64 next_seq = 0;

static int
service_of(const char *service)
{
	return strcmp(service, "PayTrace") == 0 ? HTTP_SERVICE_PAYTRACE : HTTP_SERVICE_FRESHPORTAL;
}

static void
transfer_free(HttpTransfer *t)
{
	HttpTransfer **link;

	for (link = &transfers; *link != NULL; link = &(*link)->next)
	{
		if (*link == t)
		{
			*link = t->next;
			transfer_count--;
			if (t->active)
				active_count[t->service]--;
			else
				queued_count[t->service]--;
			break;
		}
	}
	if (t->handle != NULL)
	{
		if (t->active)
			curl_multi_remove_handle(multi, t->handle);
		curl_easy_cleanup(t->handle);
	}
	curl_slist_free_all(t->headers);
	free(t->buf.data);
	free(t);
}

static void
release_transfers(int code, Datum arg)
{
	while (transfers != NULL)
		transfer_free(transfers);
	if (multi != NULL)
	{
		curl_multi_cleanup(multi);
		multi = NULL;
	}
}

/*
 * Put a transfer into the multi handle: it is in flight from now on, and
 * libcurl starts it at once (connection, request) rather than at the
 * worker's next wait.
 */
static void
transfer_activate(HttpTransfer *t)
{
	int			running;

	if (curl_multi_add_handle(multi, t->handle) != CURLM_OK)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not start a request")));
	t->active = true;
	queued_count[t->service]--;
	active_count[t->service]++;
	curl_multi_perform(multi, &running);
}

/* In flight for this administration and service. */
static int
active_for(const char *administration, int service)
{
	int			n = 0;

	for (HttpTransfer *t = transfers; t != NULL; t = t->next)
		if (t->active && t->service == service && strcmp(t->administration, administration) == 0)
			n++;
	return n;
}

/*
 * Start queued transfers while their API has room: the highest priority
 * first; among equals the administration with the fewest requests in
 * flight, so that one tenant's month-end cannot starve another's calls;
 * then the oldest.
 */
static void
promote_queued(void)
{
	for (int service = 0; service < HTTP_SERVICES; service++)
	{
		while (queued_count[service] > 0 && active_count[service] < freshpay_max_parallel_requests)
		{
			HttpTransfer *best = NULL;
			int			best_load = 0;

			for (HttpTransfer *t = transfers; t != NULL; t = t->next)
			{
				int			load;

				if (t->active || t->service != service)
					continue;
				if (best != NULL && t->priority < best->priority)
					continue;
				load = active_for(t->administration, service);
				if (best == NULL || t->priority > best->priority || load < best_load ||
					(load == best_load && t->seq < best->seq))
				{
					best = t;
					best_load = load;
				}
			}
			transfer_activate(best);
		}
	}
}

/*
 * Start request without waiting; owner comes back with the response from
 * http_finished (and request, which must live as long as the transfer, in
 * response->request).  When its API already has freshpay.max_parallel_requests
 * in flight the request waits in a queue (priority: higher first) and
 * leaves as soon as one of them ends.  Policy violations raise before
 * anything is sent.
 */
HttpTransfer *
http_start(const HttpRequest *request, void *owner, int priority)
{
	HttpTransfer *t;

	http_check_request_url(request);
	(void) http_handle();		/* libcurl initialized, its exit hook registered */
	if (multi == NULL)
	{
		static bool hooked = false;

		if ((multi = curl_multi_init()) == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("could not create a libcurl multi handle")));
		/* Registered after http.c's, so it runs before libcurl's global cleanup. */
		if (!hooked)
		{
			on_proc_exit(release_transfers, (Datum) 0);
			hooked = true;
		}
	}
	t = calloc(1, sizeof(HttpTransfer));
	if (t == NULL || (t->handle = curl_easy_init()) == NULL)
	{
		free(t);
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl handle")));
	}
	t->owner = owner;
	t->request = request;
	t->service = service_of(request->service);
	strlcpy(t->administration, request->administration ? request->administration : "",
			sizeof(t->administration));
	t->priority = priority;
	t->seq = next_seq++;
	t->next = transfers;
	transfers = t;
	transfer_count++;
	queued_count[t->service]++;

	PG_TRY();
	{
		http_transfer_setup(t->handle, request, &t->buf, t->error, &t->headers);
		curl_easy_setopt(t->handle, CURLOPT_PRIVATE, t);
		if (active_count[t->service] < freshpay_max_parallel_requests)
			transfer_activate(t);
	}
	PG_CATCH();
	{
		transfer_free(t);
		PG_RE_THROW();
	}
	PG_END_TRY();
	return t;
}

/*
 * Drop every transfer of owner still in flight or queued (a flow that
 * ended while a read of it was out); its answers are never looked at.
 */
void
http_cancel(void *owner)
{
	HttpTransfer *t = transfers;

	while (t != NULL)
	{
		HttpTransfer *next = t->next;

		if (t->owner == owner)
			transfer_free(t);
		t = next;
	}
	promote_queued();
}

/* May a request to service leave now, without waiting in the queue? */
bool
http_has_room(const char *service)
{
	int			s = service_of(service);

	return active_count[s] + queued_count[s] < freshpay_max_parallel_requests;
}

/*
 * Wait, at most timeout_ms (and no longer than libcurl's own next timer),
 * until a socket of a transfer is ready or the process latch is set: a
 * money call handed over by a backend, SIGTERM and SIGHUP are seen at once,
 * not after the wait.  The latch is reset when it woke us; the caller looks
 * at its mailbox and interrupts after each call.
 */
static bool
wait_for_transfers(long timeout_ms)
{
	fd_set		readable,
				writable,
				failed;
	int			maxfd = -1;
	long		curl_timeout = -1;
	WaitEventSet *set;
	WaitEvent	event;
	int			nsockets = 0;
	bool		woken = false;

	FD_ZERO(&readable);
	FD_ZERO(&writable);
	FD_ZERO(&failed);
	curl_multi_fdset(multi, &readable, &writable, &failed, &maxfd);
	curl_multi_timeout(multi, &curl_timeout);
	if (curl_timeout >= 0 && curl_timeout < timeout_ms)
		timeout_ms = curl_timeout;
	if (timeout_ms <= 0)
		return false;

	for (int fd = 0; fd <= maxfd; fd++)
		if (FD_ISSET(fd, &readable) || FD_ISSET(fd, &writable))
			nsockets++;
	set = CreateWaitEventSet(CurrentMemoryContext, 2 + nsockets);
	AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	for (int fd = 0; fd <= maxfd; fd++)
	{
		uint32		events = (FD_ISSET(fd, &readable) ? WL_SOCKET_READABLE : 0) |
			(FD_ISSET(fd, &writable) ? WL_SOCKET_WRITEABLE : 0);

		if (events != 0)
			AddWaitEventToSet(set, events, fd, NULL, NULL);
	}

	/*
	 * No socket yet (a connection being resolved, say): libcurl's timer, at
	 * most 10 ms, and the latch are what there is to wait for.
	 */
	if (nsockets == 0)
		timeout_ms = Min(timeout_ms, 10);
	if (WaitEventSetWait(set, timeout_ms, &event, 1, PG_WAIT_EXTENSION) == 1 &&
		(event.events & WL_LATCH_SET))
	{
		ResetLatch(MyLatch);
		woken = true;
	}
	FreeWaitEventSet(set);
	return woken;
}

/*
 * Move the transfers in flight along, waiting at most timeout_ms for one of
 * them to have something to do, or for the latch (with no transfer, for the
 * latch alone).  Returns true when the latch woke it.  A pending
 * termination aborts the transfers (progress callback), which then finish
 * as interrupted.
 */
bool
http_drive(long timeout_ms)
{
	int			running;
	bool		woken = false;

	if (multi == NULL || transfer_count == 0)
	{
		if (timeout_ms > 0 &&
			(WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					   timeout_ms, PG_WAIT_EXTENSION) & WL_LATCH_SET))
		{
			ResetLatch(MyLatch);
			woken = true;
		}
		return woken;
	}
	promote_queued();
	curl_multi_perform(multi, &running);
	if (running > 0 && timeout_ms > 0)
		woken = wait_for_transfers(timeout_ms);
	curl_multi_perform(multi, &running);
	return woken;
}

/*
 * A finished transfer, if there is one: its response (palloc'd in the
 * current memory context) and its owner.  The transfer is freed.
 */
bool
http_finished(HttpResponse *response, void **owner)
{
	CURLMsg    *msg;
	int			left;

	while (multi != NULL && (msg = curl_multi_info_read(multi, &left)) != NULL)
	{
		HttpTransfer *t;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &t);
		*owner = t->owner;
		PG_TRY();
		{
			http_transfer_collect(t->handle, msg->data.result, &t->buf, t->error, response);
			response->request = t->request;
		}
		PG_FINALLY();
		{
			transfer_free(t);
		}
		PG_END_TRY();
		/* Its place goes to the next queued request at once. */
		promote_queued();
		return true;
	}
	return false;
}

