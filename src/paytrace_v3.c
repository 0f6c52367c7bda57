/*-------------------------------------------------------------------------
 *
 * paytrace_v3.c
 *	  PayTrace JSON API v3 client, wire format in one place (contract
 *	  section 11; evidence in research/paytrace-api.md §9).
 *
 * Facts it follows, each tagged [C] confirmed, [P] probable, [G] guessed:
 *	- POST /v3/token, form-encoded client_credentials with the API user and
 *	  password → 201 {"data":{"access_token":…,"expires_in":…}} [C shape;
 *	  P lifetime].  Cached in shared memory per administration, apart from
 *	  the v1 token; a 401 renews it once.
 *	- Every call: "Authorization: Bearer", header X-Integrator-Id [C], and
 *	  merchant_id (an integer) in the JSON body [C].
 *	- Validation errors are 422 {"message":…,"data":[{"field","detail"}]}
 *	  [C]; 401 token errors; 5xx happen.
 *	- POST /v3/invoice, the payment request [C request fields]; its answer
 *	  {"data":{"invoice_id":…}} [G].
 *	- POST /v3/checks/payment, an ACH debit with an idempotency key [C path
 *	  and key; P fields]; answer {"transaction_id":…,"data":[]} [C shape].
 *	- GET /v3/checks/transactions/{id} and …/idempotency-keys/{key} [C
 *	  paths], one transaction wrapped in {"data":{…}} [P], 404 when none [P];
 *	  GET /v3/checks/transactions?start_date&end_date&date_type=PROCESSED
 *	  &limit&offset [C], {"data":[…],"total":N} [P].
 *	- A transaction: ach_transaction_id, transaction_status, amount,
 *	  invoice_number, idempotency_key, settled_at, return_reason [P]; the
 *	  ids are digits [G] (freshpay keeps them as integers, like v1's).
 *	- Statuses [C] and what each means [contract section 11].
 *	- POST /v3/checks/void {ach_transaction_id} and POST /v3/checks/refund
 *	  {ach_transaction_id, amount, idempotency_key} [P].
 *
 * Must not: touch tables, print secrets or tokens, decide retries.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "jsonconv.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/timestamp.h"

#include "http.h"
#include "paytrace_v3.h"
#include "token_cache.h"

#define SERVICE "PayTrace"

#define V3_TOKEN_PATH "/v3/token"	/* [C] */
#define V3_INVOICE_PATH "/v3/invoice"	/* [C] */
#define V3_ACH_PAYMENT_PATH "/v3/checks/payment"	/* [C] */
#define V3_ACH_VOID_PATH "/v3/checks/void"	/* [P] */
#define V3_ACH_REFUND_PATH "/v3/checks/refund"	/* [P] */
#define V3_ACH_TRANSACTIONS_PATH "/v3/checks/transactions"	/* [C] */
#define V3_ACH_BY_KEY_PATH "/v3/checks/transactions/idempotency-keys/"	/* [C] */
#define V3_ACH_PAGE 30			/* limit of a list page [C example] */
#define V3_INTEGRATOR_HEADER "X-Integrator-Id"	/* [C] */
#define V3_TOKEN_LIFETIME_S 900	/* when the answer does not say [P] */
#define V3_TOKEN_MARGIN_S 60

struct PtV3Call
{
	const Administration *admin;
	const char *method;
	const char *path;
	char	   *url;
	char	   *body;			/* JSON, merchant_id first */
	char	   *call;			/* "POST /v3/invoice", for messages */
	bool		idempotent;
	uint32		hash;
	int			tries;			/* sends so far: a 401 renews the token once */
	char		token[FRESHPAY_TOKEN_MAX + 1];
	char	   *integrator_header;
	HttpRequest request;
};

/* The administration must have a merchant id for v3: an ERROR names what needed it. */
void
paytrace_v3_require(const Administration *admin, const char *what)
{
	if (admin->paytrace_merchant_id <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s needs PayTrace API v3, and administration \"%s\" has no PayTrace merchant id",
						what, admin->name),
				 errhint("Set freshpay.administrations.paytrace_merchant_id to the merchant id PayTrace gave for API v3.")));
}

static uint32
v3_credential_hash(const Administration *admin)
{
	char	   *credentials = psprintf("%s\n%s", admin->paytrace_username, admin->paytrace_password);
	uint32		hash = administration_credential_hash(admin->paytrace_url, credentials);

	explicit_bzero(credentials, strlen(credentials));
	pfree(credentials);
	return hash;
}

/* POST /v3/token: a v3 bearer token, cached. */
static char *
v3_authenticate(const Administration *admin, uint32 hash)
{
	HttpRequest request = {0};
	HttpResponse response;
	char	   *body;
	char	   *volatile token = NULL;
	int64		expires_in = V3_TOKEN_LIFETIME_S;
	char		error[128];
	json_object *root;

	body = psprintf("grant_type=client_credentials&client_id=%s&client_secret=%s",
					http_url_escape(admin->paytrace_username),
					http_url_escape(admin->paytrace_password));
	request.service = SERVICE;
	request.administration = admin->name;
	request.call = "POST " V3_TOKEN_PATH;
	request.method = "POST";
	request.url = psprintf("%s%s", admin->paytrace_url, V3_TOKEN_PATH);
	request.content_type = "application/x-www-form-urlencoded; charset=UTF-8";
	request.body = body;
	request.idempotent = true;	/* a second token does no harm */
	http_perform(&request, &response);
	explicit_bzero(body, strlen(body));

	if (response.transport != HTTP_TRANSPORT_OK)
		http_report_transport_error(&request, &response);

	root = jsonconv_parse(response.body, response.body_len, error, sizeof(error));
	PG_TRY();
	{
		json_object *data = root ? jsonconv_member(root, "data") : NULL;

		if (data != NULL && json_object_is_type(data, json_type_object) &&
			(response.status == 201 || response.status == 200))
		{
			token = jsonconv_string_opt(data, "access_token");
			jsonconv_int64_opt(data, "expires_in", &expires_in);
		}
	}
	PG_FINALLY();
	{
		json_object_put(root);
	}
	PG_END_TRY();
	explicit_bzero(response.body, response.body_len);

	if (response.status >= 400 && response.status < 500)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("PayTrace rejected the API v3 credentials of administration \"%s\"", admin->name),
				 errdetail("POST " V3_TOKEN_PATH " answered HTTP %ld.", response.status),
				 errhint("Check paytrace_username and paytrace_password; the API user must be allowed to use API v3.")));
	if (token == NULL || token[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("PayTrace sent no token in answer to POST " V3_TOKEN_PATH " for administration \"%s\"",
						admin->name),
				 errdetail("HTTP status %ld.", response.status),
				 errhint("Try again later; check PayTrace's status if it persists.")));

	expires_in = expires_in > 2 * V3_TOKEN_MARGIN_S ? expires_in - V3_TOKEN_MARGIN_S : expires_in / 2;
	token_cache_store(admin->name, REMOTE_PAYTRACE_V3, hash, token,
					  TimestampTzPlusMilliseconds(GetCurrentTimestamp(), expires_in * 1000));
	return token;
}

/*
 * A call with merchant_id first in its JSON body, members following it
 * (",\"x\":…"); or, for a GET, merchant_id first in its query, the rest
 * of the query following it ("&x=…").
 */
static PtV3Call *
v3_call(const Administration *admin, const char *method, const char *path, const char *members,
		bool idempotent)
{
	PtV3Call   *c = palloc0(sizeof(PtV3Call));
	bool		get = strcmp(method, "GET") == 0;

	paytrace_v3_require(admin, psprintf("%s %s", method, path));
	c->admin = admin;
	c->method = method;
	c->path = path;
	c->url = get ? psprintf("%s%s?merchant_id=%d%s", admin->paytrace_url, path,
							admin->paytrace_merchant_id, members)
		: psprintf("%s%s", admin->paytrace_url, path);
	c->body = get ? NULL : psprintf("{\"merchant_id\":%d%s}", admin->paytrace_merchant_id, members);
	c->call = psprintf("%s %s", method, path);
	c->idempotent = idempotent;
	c->hash = v3_credential_hash(admin);
	c->integrator_header = psprintf(V3_INTEGRATOR_HEADER ": %s", admin->paytrace_integrator_id);
	return c;
}

/* The request of the next send: the cached token, or a fresh one after a 401. */
static HttpRequest *
v3_request(PtV3Call *c)
{
	HttpRequest *request = &c->request;

	token_cache_get(c->admin->name, REMOTE_PAYTRACE_V3, c->hash, c->tries > 0,
					v3_authenticate, c->admin, c->token, sizeof(c->token));
	c->tries++;
	memset(request, 0, sizeof(HttpRequest));
	request->service = SERVICE;
	request->administration = c->admin->name;
	request->call = c->call;
	request->method = c->method;
	request->url = c->url;
	request->bearer_token = c->token;
	request->extra_header = c->integrator_header;
	request->content_type = c->body ? "application/json" : NULL;
	request->body = c->body;
	request->idempotent = c->idempotent;
	return request;
}

/*
 * Make sure a v3 token is cached, so that a money call recorded next leaves
 * at once (the worker fetches it before it records the attempt).
 */
void
paytrace_v3_prepare(const Administration *admin)
{
	char		token[FRESHPAY_TOKEN_MAX + 1];

	paytrace_v3_require(admin, "an ACH call through PayTrace API v3");
	token_cache_get(admin->name, REMOTE_PAYTRACE_V3, v3_credential_hash(admin), false,
					v3_authenticate, admin, token, sizeof(token));
	explicit_bzero(token, sizeof(token));
}

void
paytrace_v3_send(PtV3Call *c, void *owner, int priority)
{
	(void) http_start(v3_request(c), owner, priority);
}

/*
 * Did the transfer bring the call's answer?  A 401 means the token was not
 * accepted and nothing was done: the token is forgotten and the call sent
 * once more (false).  Anything else, transport failures included, is the
 * answer, for the call's own reader to judge.
 */
bool
paytrace_v3_answered(PtV3Call *c, const HttpResponse *response, void *owner, int priority)
{
	if (response->transport != HTTP_TRANSPORT_OK || response->status != 401)
		return true;
	token_cache_forget(c->admin->name, REMOTE_PAYTRACE_V3, c->token);
	if (c->tries >= 2)
		return true;
	paytrace_v3_send(c, owner, priority);
	return false;
}

/* "field: detail; …" of a 422 answer [C], or its message, or NULL. */
static char *
v3_refusal(const HttpResponse *response)
{
	char		error[128];
	json_object *root = jsonconv_parse(response->body, response->body_len, error, sizeof(error));
	StringInfoData text;

	if (root == NULL)
		return NULL;
	initStringInfo(&text);
	PG_TRY();
	{
		json_object *data = jsonconv_member(root, "data");
		char	   *message = jsonconv_string_opt(root, "message");

		if (data != NULL && json_object_is_type(data, json_type_array))
		{
			for (size_t i = 0; i < json_object_array_length(data); i++)
			{
				json_object *item = json_object_array_get_idx(data, i);
				char	   *field;
				char	   *detail;

				if (item == NULL || !json_object_is_type(item, json_type_object))
					continue;
				field = jsonconv_string_opt(item, "field");
				detail = jsonconv_string_opt(item, "detail");
				appendStringInfo(&text, "%s%s: %s", text.len ? "; " : "",
								 field ? field : "?", detail ? detail : "invalid");
			}
		}
		if (text.len == 0 && message != NULL)
			appendStringInfoString(&text, message);
	}
	PG_FINALLY();
	{
		json_object_put(root);
	}
	PG_END_TRY();
	return text.len ? text.data : NULL;
}

/* "2026-10-01T12:00:00Z" */
static char *
v3_utc(TimestampTz ts)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (timestamp2tm(ts, NULL, &tm, &fsec, NULL, NULL) != 0)
		elog(ERROR, "timestamp out of range");
	return psprintf("%04d-%02d-%02dT%02d:%02d:%02dZ",
					tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* POST /v3/invoice: a payment request [C request fields]. */
PtV3Call *
paytrace_v3_invoice_call(const Administration *admin, const PtV3Invoice *inv)
{
	StringInfoData members;

	initStringInfo(&members);
	appendStringInfoString(&members, ",\"transaction_type\":");
	escape_json(&members, inv->transaction_type);
	appendStringInfoString(&members, ",\"invoice_number\":");
	escape_json(&members, inv->invoice_number);
	appendStringInfoString(&members, ",\"invoice_amount\":");
	escape_json(&members, inv->amount);
	appendStringInfoString(&members, ",\"is_amount_editable\":false,\"is_invoice_number_editable\":false");
	appendStringInfo(&members, ",\"expire_at\":\"%s\"", v3_utc(inv->expire_at));
	appendStringInfoString(&members, ",\"email\":");
	escape_json(&members, inv->email);
	appendStringInfoString(&members, ",\"email_required\":true,\"customer_label\":");
	escape_json(&members, inv->customer_label ? inv->customer_label : "");
	/* Never re-sent by itself: PayTrace may already have e-mailed the link. */
	return v3_call(admin, "POST", V3_INVOICE_PATH, members.data, false);
}

/* data.invoice_id of a payment request's answer [G], or NULL. */
static char *
v3_invoice_id(const HttpResponse *response)
{
	char		error[128];
	json_object *root = jsonconv_parse(response->body, response->body_len, error, sizeof(error));
	char	   *volatile id = NULL;

	if (root == NULL)
		return NULL;
	PG_TRY();
	{
		json_object *data = jsonconv_member(root, "data");
		json_object *value = data ? jsonconv_member(data, "invoice_id") : NULL;

		if (value != NULL && (json_object_is_type(value, json_type_string) ||
							  json_object_is_type(value, json_type_int)))
			id = pstrdup(json_object_get_string(value));
	}
	PG_FINALLY();
	{
		json_object_put(root);
	}
	PG_END_TRY();
	return id;
}

/*
 * What became of a payment request: PayTrace's id of it (sent), or NULL
 * with the outcome in *lost (true: it may have been made; false: it was
 * not) and *why.  A refusal (422) is raised as the caller's error.
 */
char *
paytrace_v3_invoice_of(PtV3Call *c, const HttpResponse *response, bool *lost, char **why)
{
	char	   *id;

	*lost = false;
	*why = NULL;
	if (response->transport == HTTP_TRANSPORT_NOT_SENT)
	{
		*why = psprintf("Not sent: %s", response->error);
		return NULL;
	}
	if (response->transport != HTTP_TRANSPORT_OK)
	{
		*lost = true;
		*why = psprintf("The answer was lost: %s", response->error);
		return NULL;
	}
	if (response->status == 401)
	{
		*why = pstrdup("PayTrace did not accept a fresh API v3 token.");
		return NULL;
	}
	if (response->status == 429 || (response->status == 503 && response->retry_after >= 0))
	{
		*why = psprintf("PayTrace asked to try again later (HTTP %ld).", response->status);
		return NULL;
	}
	if (response->status == 422)
	{
		char	   *refusal = v3_refusal(response);

		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("PayTrace refused the payment request: %s", refusal ? refusal : "no reason given"),
				 errhint("Nothing was sent to the customer; correct the invoice or the e-mail address and ask again.")));
	}
	if (response->status != 200 && response->status != 201)
	{
		*lost = true;
		*why = psprintf("PayTrace answered HTTP %ld; the request may have been made.", response->status);
		return NULL;
	}
	id = v3_invoice_id(response);
	if (id == NULL || id[0] == '\0')
	{
		*lost = true;
		*why = pstrdup("PayTrace's answer had no request id; the request may have been made.");
		return NULL;
	}
	return id;
}

/* ---- ACH ---------------------------------------------------------------- */

/* Each status PayTrace names [C], and what it means [contract section 11]. */
static const struct
{
	const char *status;
	PtAchState	state;
}			ach_states[] = {
	{"INITIATED", PT_ACH_IN_PROGRESS},
	{"ACCEPTED", PT_ACH_IN_PROGRESS},
	{"ORIGINATED", PT_ACH_IN_PROGRESS},
	{"VERIFYING", PT_ACH_IN_PROGRESS},
	{"SETTLED", PT_ACH_SETTLED},
	{"PARTIALLY_SETTLED", PT_ACH_SETTLED},
	{"VOIDED", PT_ACH_VOIDED},
	{"DECLINED", PT_ACH_REFUSED},
	{"NSF_DECLINED", PT_ACH_REFUSED},
	{"REJECTED", PT_ACH_REFUSED},
	{"FAILED", PT_ACH_REFUSED},
	{"ERROR", PT_ACH_REFUSED},
	{"TECHNICAL_ERROR", PT_ACH_REFUSED},
	{"RETURNED", PT_ACH_RETURNED},
};

static PtAchState
ach_state(const char *status)
{
	for (size_t i = 0; i < lengthof(ach_states); i++)
		if (strcmp(status, ach_states[i].status) == 0)
			return ach_states[i].state;
	return PT_ACH_OTHER;
}

/* An ACH debit, void or refund [C paths; P fields]; the key was recorded before. */
PtV3Call *
paytrace_v3_ach_call(const Administration *admin, const PtRequest *request)
{
	StringInfoData members;
	const char *path;

	initStringInfo(&members);
	switch (request->operation)
	{
		case PT_ACH_SALE:
			path = V3_ACH_PAYMENT_PATH;
			appendStringInfoString(&members, ",\"customer_id\":");
			escape_json(&members, request->customer_id);
			appendStringInfo(&members, ",\"amount\":\"%s\",\"invoice_number\":", request->amount);
			escape_json(&members, request->invoice_number);
			break;
		case PT_ACH_VOID:
			path = V3_ACH_VOID_PATH;
			appendStringInfo(&members, ",\"ach_transaction_id\":\"" INT64_FORMAT "\"",
							 request->transaction_id);
			break;
		case PT_ACH_REFUND:
			path = V3_ACH_REFUND_PATH;
			appendStringInfo(&members, ",\"ach_transaction_id\":\"" INT64_FORMAT "\",\"amount\":\"%s\"",
							 request->transaction_id, request->amount);
			break;
		default:
			elog(ERROR, "PayTrace API v3 makes no such ACH call (%d)", (int) request->operation);
	}
	if (request->idempotency_key != NULL)
	{
		appendStringInfoString(&members, ",\"idempotency_key\":");
		escape_json(&members, request->idempotency_key);
	}
	/* Never re-sent by the HTTP layer: a lost answer is looked up by its key. */
	return v3_call(admin, "POST", path, members.data, false);
}

/* The top-level transaction_id of an ACH call's answer [C shape]. */
static bool
v3_transaction_id(const HttpResponse *response, int64 *id)
{
	char		error[128];
	json_object *root = jsonconv_parse(response->body, response->body_len, error, sizeof(error));
	volatile bool found = false;

	if (root == NULL)
		return false;
	PG_TRY();
	{
		found = json_object_is_type(root, json_type_object) &&
			jsonconv_int64_opt(root, "transaction_id", id);
	}
	PG_FINALLY();
	{
		json_object_put(root);
	}
	PG_END_TRY();
	return found;
}

/*
 * The outcome of an ACH debit, void or refund from its answer: approved
 * with PayTrace's id of the new transaction (of the voided one, for a void),
 * refused (422, or another 4xx: nothing was done), not sent, later, or
 * unknown (lost, 5xx, unreadable).
 */
PtResult *
paytrace_v3_money_of(PtV3Call *c, const HttpResponse *response)
{
	PtResult   *r = palloc0(sizeof(PtResult));

	r->retry_after = -1;
	r->http_status = response->status;
	if (response->transport == HTTP_TRANSPORT_NOT_SENT)
	{
		r->outcome = PT_NOT_SENT;
		r->message = psprintf("Could not reach PayTrace: %s", response->error);
		return r;
	}
	if (response->transport != HTTP_TRANSPORT_OK)
	{
		r->outcome = PT_UNKNOWN;
		r->message = psprintf("The answer of PayTrace was lost: %s", response->error);
		return r;
	}
	if (response->status == 401)
	{
		r->outcome = PT_NOT_SENT;
		r->message = pstrdup("PayTrace did not accept a fresh API v3 token.");
		return r;
	}
	if (response->status == 429 || (response->status == 503 && response->retry_after >= 0))
	{
		r->outcome = PT_RETRY_LATER;
		r->retry_after = response->retry_after;
		r->message = psprintf("PayTrace asked to try again later (HTTP %ld).", response->status);
		return r;
	}
	if (response->status == 400 || response->status == 403 || response->status == 404 ||
		response->status == 422)
	{
		char	   *refusal = v3_refusal(response);

		r->outcome = PT_REJECTED;
		r->error_codes = psprintf("%ld", response->status);
		r->message = psprintf("PayTrace refused %s (HTTP %ld): %s", c->call, response->status,
							  refusal ? refusal : "no reason given");
		return r;
	}
	r->outcome = PT_UNKNOWN;
	if (response->status != 200 && response->status != 201)
	{
		r->message = psprintf("PayTrace answered HTTP %ld to %s; it may have been processed.",
							  response->status, c->call);
		return r;
	}
	if (v3_transaction_id(response, &r->transaction_id))
	{
		r->has_transaction_id = true;
		r->outcome = PT_APPROVED;
		r->message = psprintf("%s: transaction " INT64_FORMAT ".", c->call, r->transaction_id);
	}
	if (r->outcome == PT_UNKNOWN)
		r->message = psprintf("PayTrace's answer to %s had no transaction id; it may have been processed.",
							  c->call);
	return r;
}

/* GET one ACH transaction by PayTrace's id, or by the key freshpay sent. */
PtV3Call *
paytrace_v3_ach_get_call(const Administration *admin, int64 ach_id)
{
	return v3_call(admin, "GET", psprintf(V3_ACH_TRANSACTIONS_PATH "/" INT64_FORMAT, ach_id), "", true);
}

PtV3Call *
paytrace_v3_ach_by_key_call(const Administration *admin, const char *key)
{
	return v3_call(admin, "GET", psprintf(V3_ACH_BY_KEY_PATH "%s", http_url_escape(key)), "", true);
}

static PtAchTransaction *
ach_from_json(json_object *object)
{
	PtAchTransaction *t = palloc0(sizeof(PtAchTransaction));
	json_object *settled;

	if (object == NULL || !json_object_is_type(object, json_type_object))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("an ACH transaction of PayTrace is not a JSON object")));
	t->ach_id = jsonconv_int64(object, "ach_transaction_id");
	t->status = jsonconv_string(object, "transaction_status");
	t->state = ach_state(t->status);
	t->amount = jsonconv_money(object, "amount");
	t->invoice_number = jsonconv_string_opt(object, "invoice_number");
	t->idempotency_key = jsonconv_string_opt(object, "idempotency_key");
	t->return_reason = jsonconv_string_opt(object, "return_reason");
	settled = jsonconv_member(object, "settled_at");
	if (!jsonconv_is_null(settled))
	{
		t->has_settled_at = true;
		t->settled_at = jsonconv_timestamp(object, "settled_at");
	}
	return t;
}

/* A GET's answer as JSON (the caller puts it); anything but a 200 with JSON is an ERROR. */
static json_object *
v3_read_answer(PtV3Call *c, const HttpResponse *response)
{
	char		error[128];
	json_object *root;

	if (response->transport != HTTP_TRANSPORT_OK)
		http_report_transport_error(&c->request, response);
	if (response->status != 200)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("PayTrace answered HTTP %ld to %s", response->status, c->call)));
	root = jsonconv_parse(response->body, response->body_len, error, sizeof(error));
	if (root == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("PayTrace's answer to %s is not JSON: %s", c->call, error)));
	return root;
}

/*
 * The transaction a GET by id or by key answered, or NULL when PayTrace has
 * none (404): which proves nothing about a request still in process.  Any
 * other failure is an ERROR.
 */
PtAchTransaction *
paytrace_v3_ach_of(PtV3Call *c, const HttpResponse *response)
{
	json_object *root;
	PtAchTransaction *volatile t = NULL;

	if (response->transport == HTTP_TRANSPORT_OK && response->status == 404)
		return NULL;
	root = v3_read_answer(c, response);
	PG_TRY();
	{
		t = ach_from_json(jsonconv_member(root, "data"));
	}
	PG_FINALLY();
	{
		json_object_put(root);
	}
	PG_END_TRY();
	return t;
}

/* Synchronous: send until the answer is not a refused token (once renewed). */
static void
v3_perform(PtV3Call *c, HttpResponse *response)
{
	for (;;)
	{
		http_perform(v3_request(c), response);
		if (response->transport != HTTP_TRANSPORT_OK || response->status != 401 || c->tries >= 2)
			return;
		token_cache_forget(c->admin->name, REMOTE_PAYTRACE_V3, c->token);
	}
}

static char *
v3_date(DateADT date)
{
	int			year,
				month,
				day;

	j2date(date + POSTGRES_EPOCH_JDATE, &year, &month, &day);
	return psprintf("%04d-%02d-%02d", year, month, day);
}

/* One page of the list: its transactions appended to *found; returns how many. */
static int
v3_ach_page(PtV3Call *c, const HttpResponse *response, List **found, int64 *total)
{
	json_object *root = v3_read_answer(c, response);
	volatile int page = 0;

	PG_TRY();
	{
		json_object *data = jsonconv_member(root, "data");

		if (data == NULL || !json_object_is_type(data, json_type_array))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("PayTrace's answer to %s has no list of transactions", c->call)));
		*total = jsonconv_int64(root, "total");
		page = json_object_array_length(data);
		for (int i = 0; i < page; i++)
			*found = lappend(*found, ach_from_json(json_object_array_get_idx(data, i)));
	}
	PG_FINALLY();
	{
		json_object_put(root);
	}
	PG_END_TRY();
	return page;
}

/*
 * Every ACH transaction processed from start to end, all pages; made here
 * and now (the sync).  Any failure is an ERROR.
 */
List *
paytrace_v3_ach_list(const Administration *admin, DateADT start, DateADT end)
{
	List	   *found = NIL;
	int64		total = 0;

	for (int64 offset = 0; offset == 0 || offset < total; offset += V3_ACH_PAGE)
	{
		PtV3Call   *c = v3_call(admin, "GET", V3_ACH_TRANSACTIONS_PATH,
								psprintf("&start_date=%s&end_date=%s&date_type=PROCESSED&limit=%d&offset=" INT64_FORMAT,
										 v3_date(start), v3_date(end), V3_ACH_PAGE, offset), true);
		HttpResponse response;

		v3_perform(c, &response);
		if (v3_ach_page(c, &response, &found, &total) == 0)
			break;
	}
	return found;
}
