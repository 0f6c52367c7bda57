/*-------------------------------------------------------------------------
 *
 * freshportal.c
 *	  FreshPortal API client (contract section 8), wire format in one place.
 *
 * Owns: the /v1/auth token flow (cached in shared memory per
 * administration, refreshed once on 401), the "changed since" list calls
 * with their data/meta envelope and 204-as-empty quirk, and the mapping of
 * FreshPortal's JSON onto FpCustomer/FpInvoice.  Money arrives as JSON
 * strings and is converted to numeric without ever being a double.
 *
 * Must not: touch tables (sync.c does), print secrets or tokens, or keep a
 * json-c object past the function that parsed it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "jsonconv.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "freshportal.h"
#include "freshportal_int.h"
#include "http.h"
#include "token_cache.h"

#define SERVICE "FreshPortal"

/* FreshPortal does not say how long a token lives; a 401 refreshes it. */
#define FP_TOKEN_LIFETIME_MS (12 * 3600 * 1000L)

const char *
freshportal_stream_name(FpStream stream)
{
	return stream == FP_STREAM_CUSTOMERS ? "customers" : "invoices";
}

TimestampTz
freshportal_item_mutation_time(FpStream stream, void *item)
{
	return stream == FP_STREAM_CUSTOMERS ?
		((FpCustomer *) item)->mutation_time : ((FpInvoice *) item)->mutation_time;
}

int64
freshportal_item_id(FpStream stream, void *item)
{
	return stream == FP_STREAM_CUSTOMERS ?
		((FpCustomer *) item)->id : ((FpInvoice *) item)->id;
}

/*
 * The "message" of a JSON error body (FreshPortal's 422/404 shape), or NULL.
 * Only that field is ever quoted back: a raw body is not shown to users.
 */
static char *
error_message_of(const HttpResponse *response)
{
	char		error[128];
	json_object *root = jsonconv_parse(response->body, response->body_len, error, sizeof(error));
	char	   *message = NULL;

	if (root == NULL)
		return NULL;
	PG_TRY();
	{
		json_object *value = jsonconv_member(root, "message");

		if (value != NULL && json_object_is_type(value, json_type_string))
			message = pstrdup(json_object_get_string(value));
	}
	PG_FINALLY();
	{
		json_object_put(root);
	}
	PG_END_TRY();
	return message;
}

static void
report_unexpected_status(const Administration *admin, const char *call,
						 const HttpResponse *response)
{
	char	   *message = error_message_of(response);

	ereport(ERROR,
			(errcode(response->status >= 500 ? ERRCODE_CONNECTION_FAILURE :
					 response->status == 404 ? ERRCODE_NO_DATA_FOUND :
					 ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("FreshPortal answered %s with HTTP %ld for administration \"%s\"",
					call, response->status, admin->name),
			 message ? errdetail("FreshPortal said: %s", message) : 0,
			 response->status >= 500 ?
			 errhint("Nothing was written and the sync cursor did not move; run the sync again later.") :
			 errhint("Check the administration's freshportal_url and the request.")));
}

static void
report_malformed(const Administration *admin, const char *call, const char *error)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_JSON_TEXT),
			 errmsg("FreshPortal sent malformed JSON in answer to %s for administration \"%s\"",
					call, admin->name),
			 errdetail("%s.", error),
			 errhint("Nothing was written and the sync cursor did not move; run the sync again. If it persists, report it to FreshPortal.")));
}

/* POST /v1/auth: trade the API key for a bearer token. */
static char *
fp_authenticate(const Administration *admin, uint32 credential_hash)
{
	StringInfoData body;
	HttpRequest request = {0};
	HttpResponse response;
	char	   *url = psprintf("%s/v1/auth", admin->freshportal_url);
	char		error[128];
	json_object *root;
	char	   *token = NULL;

	initStringInfo(&body);
	appendStringInfoString(&body, "{\"username\":");
	escape_json(&body, admin->freshportal_api_key);
	appendStringInfoString(&body, ",\"type\":\"api\"}");

	request.service = SERVICE;
	request.administration = admin->name;
	request.call = "POST /v1/auth";
	request.method = "POST";
	request.url = url;
	request.content_type = "application/json";
	request.body = body.data;
	request.idempotent = true;	/* a second token does no harm */
	http_perform(&request, &response);
	explicit_bzero(body.data, body.len);

	if (response.transport != HTTP_TRANSPORT_OK)
		http_report_transport_error(&request, &response);
	if (response.status == 401 || response.status == 403)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("FreshPortal rejected the API key of administration \"%s\"", admin->name),
				 errdetail("POST /v1/auth answered HTTP %ld.", response.status),
				 errhint("Check freshportal_api_key: keys belong to one FreshPortal tenant.")));
	if (response.status != 200)
		report_unexpected_status(admin, request.call, &response);

	root = jsonconv_parse(response.body, response.body_len, error, sizeof(error));
	if (root == NULL)
		report_malformed(admin, request.call, error);
	PG_TRY();
	{
		json_object *value = jsonconv_member(root, "token");

		if (value != NULL && json_object_is_type(value, json_type_string) &&
			json_object_get_string_len(value) > 0)
			token = pstrdup(json_object_get_string(value));
	}
	PG_FINALLY();
	{
		json_object_put(root);
	}
	PG_END_TRY();
	explicit_bzero(response.body, response.body_len);

	if (token == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("FreshPortal sent no token in answer to POST /v1/auth for administration \"%s\"",
						admin->name)));

	token_cache_store(admin->name, REMOTE_FRESHPORTAL, credential_hash, token,
					  TimestampTzPlusMilliseconds(GetCurrentTimestamp(), FP_TOKEN_LIFETIME_MS));
	return token;
}

/* A FreshPortal call: made synchronously, or in flight in the worker's loop. */
struct FpCall
{
	const Administration *admin;
	const char *method;
	char	   *path;
	char	   *url;
	char	   *body;			/* NULL for none */
	char	   *call;			/* "GET /v1/invoices/5", for messages */
	uint32		credential_hash;
	int			tries;			/* sends so far: a 401 renews the token once */
	char		token[FRESHPAY_TOKEN_MAX + 1];
	HttpRequest request;
	int64		invoice_id;		/* of a GET invoice, for its 404 message */
};

static FpCall *
fp_call_new(const Administration *admin, const char *method, char *path, char *body, char *call)
{
	FpCall	   *c = palloc0(sizeof(FpCall));

	c->admin = admin;
	c->method = method;
	c->path = path;
	c->url = psprintf("%s%s", admin->freshportal_url, path);
	c->body = body;
	c->call = call;
	c->credential_hash = administration_credential_hash(admin->freshportal_url,
														admin->freshportal_api_key);
	return c;
}

/* The request of the next send: the cached token, or a fresh one after a 401. */
static HttpRequest *
fp_request(FpCall *c)
{
	HttpRequest *request = &c->request;

	token_cache_get(c->admin->name, REMOTE_FRESHPORTAL, c->credential_hash, c->tries > 0,
					fp_authenticate, c->admin, c->token, sizeof(c->token));
	c->tries++;
	memset(request, 0, sizeof(HttpRequest));
	request->service = SERVICE;
	request->administration = c->admin->name;
	request->call = c->call;
	request->method = c->method;
	request->url = c->url;
	request->bearer_token = c->token;
	if (c->body != NULL)
	{
		request->content_type = "application/json";
		request->body = c->body;
	}
	return request;
}

/*
 * Did the call get its answer?  Transport failures are raised (every call
 * here is safe to repeat, writes because a lookup precedes them).  A 401
 * means the cached token expired or was revoked: it is forgotten, and the
 * caller sends once more (false); a second 401 is an error.
 */
static bool
fp_answered(FpCall *c, const HttpResponse *response)
{
	if (response->transport != HTTP_TRANSPORT_OK)
		http_report_transport_error(&c->request, response);
	if (response->status != 401)
		return true;
	token_cache_forget(c->admin->name, REMOTE_FRESHPORTAL, c->token);
	if (c->tries < 2)
		return false;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
			 errmsg("FreshPortal rejected a fresh token of administration \"%s\" for %s",
					c->admin->name, c->call),
			 errhint("The API key authenticates but may lack access to this call; check its permissions in FreshPortal.")));
	return false;				/* keep compiler quiet */
}

/* Make the call here and now (the SQL functions and the sync). */
static void
fp_perform(FpCall *c, HttpResponse *response)
{
	do
		http_perform(fp_request(c), response);
	while (!fp_answered(c, response));
}

/* Worker: send the call; owner comes back from http_finished with its answer. */
void
freshportal_send(FpCall *c, void *owner, int priority)
{
	(void) http_start(fp_request(c), owner, priority);
}

/* Worker: is this the answer to call (a flow may have another call in flight)? */
bool
freshportal_answers(const FpCall *c, const HttpResponse *response)
{
	return response->request == &c->request;
}

/*
 * Worker: did the transfer bring the call's answer?  False when it was sent
 * again (a renewed token): wait for the next answer.
 */
bool
freshportal_answered(FpCall *c, const HttpResponse *response, void *owner, int priority)
{
	if (fp_answered(c, response))
		return true;
	freshportal_send(c, owner, priority);
	return false;
}




/*
 * Convert one list element.  A malformed field is re-raised as an error
 * that names FreshPortal, the administration and the object; any other
 * error (a cancel, out of memory) passes through untouched.
 */
static void *
item_from_json(const Administration *admin, FpStream stream, json_object *item, int index)
{
	MemoryContext context = CurrentMemoryContext;
	void	   *result = NULL;
	const char *kind = stream == FP_STREAM_CUSTOMERS ? "customer" : "invoice";

	PG_TRY();
	{
		if (!json_object_is_type(item, json_type_object))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("list element %d is not an object", index)));
		result = stream == FP_STREAM_CUSTOMERS ?
			(void *) fpjson_customer(item) : (void *) fpjson_invoice(item);
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		int64		id = 0;
		volatile bool has_id;

		MemoryContextSwitchTo(context);
		edata = CopyErrorData();
		if (ERRCODE_TO_CATEGORY(edata->sqlerrcode) != ERRCODE_DATA_EXCEPTION &&
			edata->sqlerrcode != ERRCODE_NULL_VALUE_NOT_ALLOWED)
			PG_RE_THROW();
		FlushErrorState();

		/* The id may itself be the broken field. */
		PG_TRY();
		{
			has_id = jsonconv_int64_opt(item, "id", &id);
		}
		PG_CATCH();
		{
			FlushErrorState();
			has_id = false;
		}
		PG_END_TRY();

		ereport(ERROR,
				(errcode(edata->sqlerrcode),
				 errmsg("FreshPortal sent an invalid %s for administration \"%s\"", kind, admin->name),
				 has_id ? errdetail("In %s %lld: %s.", kind, (long long) id, edata->message) :
				 errdetail("In %s number %d of the page: %s.", kind, index + 1, edata->message),
				 errhint("Nothing was written and the sync cursor did not move. Correct the %s in FreshPortal, or report it to FreshPortal, then sync again.",
						 kind)));
	}
	PG_END_TRY();
	return result;
}

static FpPage *
page_from_json(const Administration *admin, FpStream stream, const char *call,
			   const HttpResponse *response)
{
	char		error[128];
	json_object *root;
	FpPage	   *page = palloc0(sizeof(FpPage));

	root = jsonconv_parse(response->body, response->body_len, error, sizeof(error));
	if (root == NULL)
		report_malformed(admin, call, error);

	PG_TRY();
	{
		json_object *data = jsonconv_member(root, "data");
		json_object *meta = jsonconv_member(root, "meta");
		int64		value;
		size_t		n;

		if (data == NULL || !json_object_is_type(data, json_type_array))
			report_malformed(admin, call, "the answer has no \"data\" array");

		page->current_page = 1;
		page->last_page = 1;
		if (meta != NULL && json_object_is_type(meta, json_type_object))
		{
			if (jsonconv_int64_opt(meta, "current_page", &value))
				page->current_page = (int) value;
			if (jsonconv_int64_opt(meta, "last_page", &value))
				page->last_page = (int) value;
			if (jsonconv_int64_opt(meta, "total", &value))
				page->total = value;
			if (!jsonconv_is_null(jsonconv_member(meta, "server_time")))
			{
				page->server_time = jsonconv_timestamp(meta, "server_time");
				page->has_server_time = true;
			}
		}

		n = json_object_array_length(data);
		for (size_t i = 0; i < n; i++)
			page->items = lappend(page->items,
								  item_from_json(admin, stream,
												 json_object_array_get_idx(data, i), (int) i));
	}
	PG_FINALLY();
	{
		json_object_put(root);
	}
	PG_END_TRY();
	return page;
}

/*
 * GET /v1/customers or /v1/invoices changed since "since" (inclusive), one
 * page, ordered by mutation time and id.  An empty result may come as 204.
 */
FpPage *
freshportal_list(const Administration *admin, FpStream stream,
				 TimestampTz since, int page, int per_page)
{
	const char *resource = freshportal_stream_name(stream);
	char	   *call = psprintf("GET /v1/%s", resource);
	char	   *path = psprintf("/v1/%s?mutation_datetime=%s&page=%d&per_page=%d",
								resource,
								http_url_escape(jsonconv_format_timestamp(since)),
								page, per_page);
	HttpResponse response;

	fp_perform(fp_call_new(admin, "GET", path, NULL, call), &response);

	if (response.status == 204)
	{
		FpPage	   *empty = palloc0(sizeof(FpPage));

		empty->current_page = page;
		empty->last_page = 0;
		return empty;
	}
	if (response.status != 200)
		report_unexpected_status(admin, call, &response);
	return page_from_json(admin, stream, call, &response);
}

/* Parse a JSON answer and hand its root to convert(); json-c freed on every path. */
static void *
with_json(const Administration *admin, const char *call, const HttpResponse *response,
		  void *(*convert) (json_object *root, void *arg), void *arg)
{
	char		error[128];
	json_object *root = jsonconv_parse(response->body, response->body_len, error, sizeof(error));
	void	   *result = NULL;

	if (root == NULL)
		report_malformed(admin, call, error);
	PG_TRY();
	{
		result = convert(root, arg);
	}
	PG_FINALLY();
	{
		json_object_put(root);
	}
	PG_END_TRY();
	return result;
}

static void *
convert_invoice(json_object *root, void *arg)
{
	const Administration *admin = arg;
	json_object *item = jsonconv_member(root, "data");

	/* One object, bare or in a "data" envelope. */
	return item_from_json(admin, FP_STREAM_INVOICES,
						  item && json_object_is_type(item, json_type_object) ? item : root, 0);
}

/* GET /v1/invoices/{id}: the invoice as FreshPortal has it now. */
FpCall *
freshportal_get_invoice_call(const Administration *admin, int64 invoice_id)
{
	char	   *path = psprintf("/v1/invoices/" INT64_FORMAT, invoice_id);
	FpCall	   *c = fp_call_new(admin, "GET", path, NULL, psprintf("GET %s", path));

	c->invoice_id = invoice_id;
	return c;
}

FpInvoice *
freshportal_invoice_of(FpCall *c, const HttpResponse *response)
{
	if (response->status == 404)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("invoice " INT64_FORMAT " does not exist in FreshPortal (administration \"%s\")",
						c->invoice_id, c->admin->name),
				 errhint("It may have been removed in FreshPortal; run freshpay_sync() and check the invoice.")));
	if (response->status != 200)
		report_unexpected_status(c->admin, c->call, response);
	return with_json(c->admin, c->call, response, convert_invoice, (void *) c->admin);
}

FpInvoice *
freshportal_get_invoice(const Administration *admin, int64 invoice_id)
{
	FpCall	   *c = freshportal_get_invoice_call(admin, invoice_id);
	HttpResponse response;

	fp_perform(c, &response);
	return freshportal_invoice_of(c, &response);
}


/*
 * A list of payments; *complete (arg) is false when its meta says there is
 * more than this page (another page, or a total beyond what came), true
 * otherwise: a list without meta is taken as whole, as a page is (page_from_json).
 */
static void *
convert_payment_list(json_object *root, void *arg)
{
	bool	   *complete = arg;
	json_object *data = jsonconv_member(root, "data");
	json_object *meta = jsonconv_member(root, "meta");
	List	   *payments = NIL;
	int64		value;

	if (data == NULL || !json_object_is_type(data, json_type_array))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_JSON_TEXT),
				 errmsg("FreshPortal's payment list has no \"data\" array")));
	for (size_t i = 0; i < json_object_array_length(data); i++)
		payments = lappend(payments, fpjson_payment(json_object_array_get_idx(data, i)));
	*complete = true;
	if (meta != NULL && json_object_is_type(meta, json_type_object))
	{
		if (jsonconv_int64_opt(meta, "last_page", &value) && value > 1)
			*complete = false;
		if (jsonconv_int64_opt(meta, "total", &value) && value > list_length(payments))
			*complete = false;
	}
	return payments;
}

static void *
convert_payment(json_object *root, void *arg)
{
	json_object *payment = jsonconv_member(root, "payment");
	json_object *data = jsonconv_member(root, "data");

	if (payment != NULL && json_object_is_type(payment, json_type_object))
		return fpjson_payment(payment);
	if (data != NULL && json_object_is_type(data, json_type_object))
		return fpjson_payment(data);
	return fpjson_payment(root);
}


typedef struct Written
{
	int64		payment_id;
	FpInvoiceState *invoice;
} Written;

static void *
convert_written(json_object *root, void *arg)
{
	Written    *w = palloc0(sizeof(Written));
	FpPayment  *payment = convert_payment(root, arg);

	w->payment_id = payment->id;
	w->invoice = fpjson_invoice_state(root);
	return w;
}

/*
 * GET /v1/payments?provider_transaction_id=: FreshPortal does not reject
 * duplicates, so a write that may have been made before is preceded by this
 * lookup.
 */
FpCall *
freshportal_find_payments_call(const Administration *admin, const char *provider_transaction_id)
{
	return fp_call_new(admin, "GET",
					   psprintf("/v1/payments?provider_transaction_id=%s",
								http_url_escape(provider_transaction_id)),
					   NULL, pstrdup("GET /v1/payments"));
}

List *
freshportal_payments_of(FpCall *c, const HttpResponse *response)
{
	bool		complete;

	return freshportal_payments_found(c, response, &complete);
}

/*
 * The payments of a lookup's answer, and whether that is all FreshPortal
 * holds under the provider id (one page, or 204): only then does a
 * registration missing from it say that FreshPortal no longer has it.
 */
List *
freshportal_payments_found(FpCall *c, const HttpResponse *response, bool *complete)
{
	*complete = true;
	if (response->status == 204)
		return NIL;
	if (response->status != 200)
		report_unexpected_status(c->admin, c->call, response);
	return with_json(c->admin, c->call, response, convert_payment_list, complete);
}

/* GET /v1/payments/{id} */
FpCall *
freshportal_get_payment_call(const Administration *admin, int64 payment_id)
{
	char	   *path = psprintf("/v1/payments/" INT64_FORMAT, payment_id);

	return fp_call_new(admin, "GET", path, NULL, psprintf("GET %s", path));
}

FpPayment *
freshportal_payment_of(FpCall *c, const HttpResponse *response)
{
	if (response->status != 200)
		report_unexpected_status(c->admin, c->call, response);
	return with_json(c->admin, c->call, response, convert_payment, NULL);
}

/* YYYY-MM-DD whatever DateStyle says. */
static char *
iso_date(DateADT date)
{
	int			year,
				month,
				day;

	j2date(date + POSTGRES_EPOCH_JDATE, &year, &month, &day);
	return psprintf("%04d-%02d-%02d", year, month, day);
}

/* POST /v1/invoices/{id}/payments: register captured money. */
FpCall *
freshportal_register_call(const Administration *admin, const FpRegistration *r)
{
	char	   *path = psprintf("/v1/invoices/" INT64_FORMAT "/payments", r->invoice_id);
	StringInfoData body;

	initStringInfo(&body);
	appendStringInfoString(&body, "{\"amount\":");
	escape_json(&body, r->amount);
	appendStringInfoString(&body, ",\"currency\":");
	escape_json(&body, r->currency);
	appendStringInfo(&body, ",\"payment_date\":\"%s\",\"method\":", iso_date(r->payment_date));
	escape_json(&body, r->method);
	appendStringInfoString(&body, ",\"provider\":\"paytrace\",\"provider_transaction_id\":");
	escape_json(&body, r->provider_transaction_id);
	appendStringInfoString(&body, ",\"provider_status\":\"captured\"}");
	return fp_call_new(admin, "POST", path, body.data, psprintf("POST %s", path));
}

/* FreshPortal's payment id of the registration, and the invoice after it. */
int64
freshportal_registered_of(FpCall *c, const HttpResponse *response, FpInvoiceState **invoice)
{
	Written    *w;

	if (response->status != 201 && response->status != 200)
		report_unexpected_status(c->admin, c->call, response);
	w = with_json(c->admin, c->call, response, convert_written, NULL);
	*invoice = w->invoice;
	return w->payment_id;
}

/* POST /v1/payments/{id}/reverse */
FpCall *
freshportal_reverse_call(const Administration *admin, int64 payment_id, const char *reason,
						 const char *provider_transaction_id, DateADT date)
{
	char	   *path = psprintf("/v1/payments/" INT64_FORMAT "/reverse", payment_id);
	StringInfoData body;

	initStringInfo(&body);
	appendStringInfoString(&body, "{\"reason\":");
	escape_json(&body, reason);
	appendStringInfoString(&body, ",\"provider_transaction_id\":");
	escape_json(&body, provider_transaction_id);
	appendStringInfo(&body, ",\"date\":\"%s\"}", iso_date(date));
	return fp_call_new(admin, "POST", path, body.data, psprintf("POST %s", path));
}

/*
 * The invoice after the reversal.  The reversal is done whatever its body
 * says: an answer without a readable invoice summary gives present = false.
 */
FpInvoiceState *
freshportal_reversed_of(FpCall *c, const HttpResponse *response)
{
	char		error[128];
	json_object *root;
	FpInvoiceState *volatile state = NULL;

	if (response->status != 200 && response->status != 201)
		report_unexpected_status(c->admin, c->call, response);
	root = response->body_len > 0 ? jsonconv_parse(response->body, response->body_len, error, sizeof(error)) : NULL;
	if (root == NULL)
		return palloc0(sizeof(FpInvoiceState));
	PG_TRY();
	{
		state = fpjson_invoice_state(root);
	}
	PG_FINALLY();
	{
		json_object_put(root);
	}
	PG_END_TRY();
	return state;
}

/* The same calls made here and now (tools, the fuzz harness). */
List *
freshportal_find_payments(const Administration *admin, const char *provider_transaction_id)
{
	FpCall	   *c = freshportal_find_payments_call(admin, provider_transaction_id);
	HttpResponse response;

	fp_perform(c, &response);
	return freshportal_payments_of(c, &response);
}

FpPayment *
freshportal_get_payment(const Administration *admin, int64 payment_id)
{
	FpCall	   *c = freshportal_get_payment_call(admin, payment_id);
	HttpResponse response;

	fp_perform(c, &response);
	return freshportal_payment_of(c, &response);
}

int64
freshportal_register_payment(const Administration *admin, const FpRegistration *registration)
{
	FpCall	   *c = freshportal_register_call(admin, registration);
	HttpResponse response;
	FpInvoiceState *invoice;

	fp_perform(c, &response);
	return freshportal_registered_of(c, &response, &invoice);
}

