/*-------------------------------------------------------------------------
 *
 * paytrace.c
 *	  PayTrace JSON API v1 client, wire format in one place.
 *
 * Facts it follows (research/paytrace-api.md, [C] = confirmed):
 *	- POST /oauth/token, password grant, form-encoded; tokens live 7200 s and
 *	  there is no refresh token.  We cache one per administration in shared
 *	  memory, renew it five minutes before expiry, and once more when a call
 *	  answers "invalid_token" (which means the call was not processed).
 *	- Every call is a JSON POST with integrator_id in the body and
 *	  "Authorization: Bearer" with a capital B.
 *	- Outcomes are decided from the body whatever the HTTP status: declines
 *	  are HTTP 200 with success:false, errors are 400 with response_code 1
 *	  and errors{code:[messages]}, and 103 is an approval that was voided at
 *	  once (not paid).
 *	- Exports: dates "M/D/YYYY h:mm:ss AM" without a zone (taken as Pacific
 *	  time, PayTrace's home; a guess), status_code "Y", "N" or "GB<batch>",
 *	  numbers that come as JSON numbers or strings.
 *
 * Amounts are sent as JSON numbers written from their numeric text, and read
 * back from the JSON text as written: never through a double.
 *
 * Must not: touch tables, decide retries (the attempt protocol does), print
 * secrets or tokens.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "jsonconv.h"
#include "utils/datetime.h"
#include "utils/formatting.h"
#include "utils/json.h"
#include "utils/timestamp.h"

#include "http.h"
#include "paytrace.h"
#include "paytrace_int.h"
#include "token_cache.h"


/* Renew a token this long before PayTrace would expire it. */
#define PT_TOKEN_MARGIN_S 300

/* The path of each money call. */
typedef struct PtMoneyPath
{
	PtOperation operation;
	const char *path;
} PtMoneyPath;

static const PtMoneyPath calls[] = {
	{PT_SALE, "/v1/transactions/sale/by_customer"},
	{PT_AUTHORIZE, "/v1/transactions/authorization/by_customer"},
	{PT_CAPTURE, "/v1/transactions/authorization/capture"},
	{PT_VOID, "/v1/transactions/void"},
	{PT_REFUND, "/v1/transactions/refund/for_transaction"},
	{PT_ACH_SALE, "/v1/checks/sale/by_customer"},
	{PT_ACH_VOID, "/v1/checks/manage/void"},	/* [C] */
	{PT_ACH_REFUND, "/v1/checks/refund/by_transaction"},	/* [C] */
};

/* Codes PayTrace answers when a money call did what was asked. */
static const int approved_codes[] = {101, 106, 109, 112, 120, 122, 124};

static const PtMoneyPath *
call_of(PtOperation operation)
{
	for (size_t i = 0; i < lengthof(calls); i++)
		if (calls[i].operation == operation)
			return &calls[i];
	elog(ERROR, "unknown PayTrace operation %d", (int) operation);
	return NULL;				/* keep compiler quiet */
}

static uint32
credential_hash(const Administration *admin)
{
	char	   *credentials = psprintf("%s\n%s", admin->paytrace_username, admin->paytrace_password);
	uint32		hash = administration_credential_hash(admin->paytrace_url, credentials);

	explicit_bzero(credentials, strlen(credentials));
	return hash;
}

/* The string value of key in a parsed body, or NULL. */
static char *
member_string(json_object *root, const char *key)
{
	json_object *value = jsonconv_member(root, key);

	if (value == NULL || !json_object_is_type(value, json_type_string))
		return NULL;
	return pstrdup(json_object_get_string(value));
}

/* Does this answer say our token was not accepted? */
static bool
is_invalid_token(const HttpResponse *response)
{
	char		error[64];
	json_object *root;
	volatile bool invalid = false;

	if (response->status != 401 && response->status != 400)
		return false;
	/*
	 * Only PayTrace's own word says the request was not processed; a 401
	 * with an unreadable body (a proxy's page, say) proves nothing, and a
	 * money request is never sent again on it.
	 */
	root = jsonconv_parse(response->body, response->body_len, error, sizeof(error));
	if (root == NULL)
		return false;
	PG_TRY();
	{
		char	   *code = member_string(root, "error");

		invalid = code != NULL && strcmp(code, "invalid_token") == 0;
	}
	PG_FINALLY();
	{
		json_object_put(root);
	}
	PG_END_TRY();
	return invalid;
}

/* POST /oauth/token: the password grant, form-encoded. */
static char *
pt_authenticate(const Administration *admin, uint32 hash)
{
	HttpRequest request = {0};
	HttpResponse response;
	char	   *body;
	char	   *volatile token = NULL;
	int64		expires_in = 7200;
	char		error[128];
	json_object *root;

	body = psprintf("grant_type=password&username=%s&password=%s",
					http_url_escape(admin->paytrace_username),
					http_url_escape(admin->paytrace_password));
	request.service = SERVICE;
	request.administration = admin->name;
	request.call = "POST /oauth/token";
	request.method = "POST";
	request.url = psprintf("%s/oauth/token", admin->paytrace_url);
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
		if (root != NULL && response.status == 200)
		{
			token = member_string(root, "access_token");
			jsonconv_int64_opt(root, "expires_in", &expires_in);
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
				 errmsg("PayTrace rejected the API credentials of administration \"%s\"", admin->name),
				 errdetail("POST /oauth/token answered HTTP %ld.", response.status),
				 errhint("Check paytrace_username and paytrace_password: the user must be a PayTrace API User.")));
	if (token == NULL || token[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("PayTrace sent no token in answer to POST /oauth/token for administration \"%s\"",
						admin->name),
				 errdetail("HTTP status %ld.", response.status),
				 errhint("Try again later; check PayTrace's status if it persists.")));

	/* Renew early; a token that lives less than twice the margin, at half-life. */
	expires_in = expires_in > 2 * PT_TOKEN_MARGIN_S ? expires_in - PT_TOKEN_MARGIN_S : expires_in / 2;
	token_cache_store(admin->name, REMOTE_PAYTRACE, hash, token,
					  TimestampTzPlusMilliseconds(GetCurrentTimestamp(), expires_in * 1000));
	return token;
}

/*
 * An authenticated JSON POST.  body_fields are the members after
 * integrator_id (",\"amount\":1.00..."), or "".  "invalid_token" means the
 * call was not processed: renew the token and send it once more.
 */
/* An authenticated JSON POST to path; body_fields follow integrator_id. */
static void
pt_request(const Administration *admin, const char *path, const char *body_fields,
		   bool idempotent, const char *token, HttpRequest *request)
{
	StringInfoData body;

	initStringInfo(&body);
	appendStringInfoString(&body, "{\"integrator_id\":");
	escape_json(&body, admin->paytrace_integrator_id);
	appendStringInfoString(&body, body_fields);
	appendStringInfoChar(&body, '}');

	memset(request, 0, sizeof(HttpRequest));
	request->service = SERVICE;
	request->administration = admin->name;
	request->call = psprintf("POST %s", path);
	request->method = "POST";
	request->url = psprintf("%s%s", admin->paytrace_url, path);
	request->content_type = "application/json";
	request->body = body.data;
	request->bearer_token = pstrdup(token);
	request->idempotent = idempotent;
}

/* A PayTrace call other than a money request: made here and now, or in flight in the worker. */
struct PtQuery
{
	const Administration *admin;
	const char *path;
	char	   *fields;			/* the body members after integrator_id */
	uint32		hash;
	int			tries;			/* sends so far: "invalid_token" renews the token once */
	char		token[FRESHPAY_TOKEN_MAX + 1];
	HttpRequest request;
};

PtQuery *
paytrace_query_new(const Administration *admin, const char *path, char *fields)
{
	PtQuery	   *c = palloc0(sizeof(PtQuery));

	c->admin = admin;
	c->path = path;
	c->fields = fields;
	c->hash = credential_hash(admin);
	return c;
}

static HttpRequest *
pt_query_request(PtQuery *c)
{
	token_cache_get(c->admin->name, REMOTE_PAYTRACE, c->hash, c->tries > 0,
					pt_authenticate, c->admin, c->token, sizeof(c->token));
	c->tries++;
	pt_request(c->admin, c->path, c->fields, true, c->token, &c->request);
	return &c->request;
}

/*
 * Did the call get its answer?  Transport failures are raised (these calls
 * only read).  "invalid_token" means the call was not processed: the token
 * is forgotten and the caller sends once more (false); a second refusal is
 * an error.
 */
static bool
pt_query_answered(PtQuery *c, const HttpResponse *response)
{
	if (response->transport != HTTP_TRANSPORT_OK)
		http_report_transport_error(&c->request, response);
	if (!is_invalid_token(response))
		return true;
	token_cache_forget(c->admin->name, REMOTE_PAYTRACE, c->token);
	if (c->tries < 2)
		return false;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
			 errmsg("PayTrace rejected a fresh token of administration \"%s\" for POST %s",
					c->admin->name, c->path),
			 errhint("The API user may lack permission for this call; check it in PayTrace's Virtual Terminal.")));
	return false;				/* keep compiler quiet */
}

void
paytrace_query_perform(PtQuery *c, HttpResponse *response)
{
	do
		http_perform(pt_query_request(c), response);
	while (!pt_query_answered(c, response));
}

/* Worker: send the call; owner comes back from http_finished with its answer. */
void
paytrace_send(PtQuery *c, void *owner, int priority)
{
	(void) http_start(pt_query_request(c), owner, priority);
}

/* Worker: is this the answer to query (it may have another call in flight)? */
bool
paytrace_answers(const PtQuery *query, const HttpResponse *response)
{
	return response->request == &query->request;
}

/* Worker: did the transfer bring the answer?  False when it was sent again. */
bool
paytrace_answered(PtQuery *c, const HttpResponse *response, void *owner, int priority)
{
	if (pt_query_answered(c, response))
		return true;
	paytrace_send(c, owner, priority);
	return false;
}

static bool
is_approved_code(int code)
{
	for (size_t i = 0; i < lengthof(approved_codes); i++)
		if (approved_codes[i] == code)
			return true;
	return false;
}

/* "35: Please provide ...; 43: ..." and "35,43" from errors{code:[msg]}. */
void
paytrace_describe_errors(json_object *errors, StringInfo message, StringInfo codes)
{
	json_object_object_foreach(errors, code, messages)
	{
		if (codes->len > 0)
			appendStringInfoChar(codes, ',');
		appendStringInfoString(codes, code);
		if (json_object_is_type(messages, json_type_array))
		{
			for (size_t i = 0; i < json_object_array_length(messages); i++)
			{
				json_object *text = json_object_array_get_idx(messages, i);

				appendStringInfo(message, "%s%s: %s", message->len ? "; " : "", code,
								 json_object_get_string(text));
			}
		}
		else
			appendStringInfo(message, "%s%s: %s", message->len ? "; " : "", code,
							 json_object_get_string(messages));
	}
}

static void
result_from_json(PtResult *result, json_object *root)
{
	json_object *success = jsonconv_member(root, "success");
	json_object *errors = jsonconv_member(root, "errors");
	int64		value;
	char	   *status_message = member_string(root, "status_message");
	char	   *approval_message = member_string(root, "approval_message");
	StringInfoData message;

	if (jsonconv_int64_opt(root, "response_code", &value))
		result->response_code = (int) value;
	if (jsonconv_int64_opt(root, "transaction_id", &value) ||
		jsonconv_int64_opt(root, "check_transaction_id", &value))
	{
		result->has_transaction_id = true;
		result->transaction_id = value;
	}
	result->approval_code = member_string(root, "approval_code");
	if (result->approval_code != NULL && result->approval_code[0] == '\0')
		result->approval_code = NULL;

	initStringInfo(&message);
	if (status_message != NULL)
		appendStringInfoString(&message, status_message);
	if (approval_message != NULL && approval_message[0] != '\0')
		appendStringInfo(&message, "%s%s", message.len ? " " : "", approval_message);

	if (success == NULL || !json_object_is_type(success, json_type_boolean))
	{
		result->outcome = PT_UNKNOWN;
		if (message.len == 0)
			appendStringInfoString(&message, "The answer has no \"success\" field.");
	}
	else if (result->response_code == 103)
		result->outcome = PT_AUTO_VOIDED;
	else if (json_object_get_boolean(success) && is_approved_code(result->response_code))
		result->outcome = PT_APPROVED;
	else if (!json_object_get_boolean(success) && errors != NULL &&
			 json_object_is_type(errors, json_type_object))
	{
		StringInfoData codes;

		initStringInfo(&codes);
		resetStringInfo(&message);
		paytrace_describe_errors(errors, &message, &codes);
		result->outcome = PT_REJECTED;
		result->error_codes = codes.data;
	}
	else if (!json_object_get_boolean(success))
		result->outcome = PT_DECLINED;
	else
		result->outcome = PT_UNKNOWN;	/* success with a code we do not know */
	result->message = message.data;
}

/*
 * Classify an HTTP answer of a money call.  Also the entry point of the
 * parser tests (freshpay._paytrace_parse_result).
 */
PtResult *
paytrace_parse_result(long http_status, const char *body, size_t len)
{
	PtResult   *result = palloc0(sizeof(PtResult));
	char		error[128];
	json_object *root;

	result->http_status = http_status;
	result->retry_after = -1;
	if (http_status == 429)
	{
		result->outcome = PT_RETRY_LATER;
		result->message = psprintf("PayTrace is rate limiting (HTTP 429).");
		return result;
	}

	root = jsonconv_parse(body, len, error, sizeof(error));
	if (root == NULL)
	{
		/* Without a readable body we cannot know whether it happened. */
		result->outcome = PT_UNKNOWN;
		result->message = psprintf("HTTP %ld with an unreadable body: %s.", http_status, error);
		return result;
	}
	PG_TRY();
	{
		result_from_json(result, root);
	}
	PG_FINALLY();
	{
		json_object_put(root);
	}
	PG_END_TRY();
	return result;
}

/* Append ,"key":<amount> with the amount as a JSON number, as written. */
static void
append_amount(StringInfo fields, const char *amount)
{
	if (amount != NULL)
		appendStringInfo(fields, ",\"amount\":%s", amount);
}

/* The members of a money call's body after integrator_id. */
static char *
money_fields(const PtRequest *request)
{
	StringInfoData fields;

	initStringInfo(&fields);
	switch (request->operation)
	{
		case PT_SALE:
		case PT_AUTHORIZE:
		case PT_ACH_SALE:
			appendStringInfoString(&fields, ",\"customer_id\":");
			escape_json(&fields, request->customer_id);
			append_amount(&fields, request->amount);
			break;
		case PT_CAPTURE:
		case PT_REFUND:
			appendStringInfo(&fields, ",\"transaction_id\":" INT64_FORMAT, request->transaction_id);
			append_amount(&fields, request->amount);
			break;
		case PT_VOID:
			appendStringInfo(&fields, ",\"transaction_id\":" INT64_FORMAT, request->transaction_id);
			break;
		case PT_ACH_REFUND:
			appendStringInfo(&fields, ",\"check_transaction_id\":" INT64_FORMAT, request->transaction_id);
			append_amount(&fields, request->amount);
			break;
		case PT_ACH_VOID:
			appendStringInfo(&fields, ",\"check_transaction_id\":" INT64_FORMAT, request->transaction_id);
			break;
	}
	if (request->invoice_number != NULL)
	{
		appendStringInfoString(&fields, ",\"invoice_id\":");
		escape_json(&fields, request->invoice_number);
	}
	return fields.data;
}

/* The outcome of a money call from its HTTP answer (or the lack of one). */
static PtResult *
result_of(const HttpResponse *response)
{
	PtResult   *result;

	switch (response->transport)
	{
		case HTTP_TRANSPORT_OK:
			result = paytrace_parse_result(response->status, response->body, response->body_len);
			result->retry_after = response->retry_after;

			/*
			 * [G] A 503 that says when to come back (Retry-After) is an
			 * overloaded front end turning the request away unprocessed, as a
			 * 429 is.  A 503 or 500 without it proves nothing: unknown.
			 */
			if (response->status == 503 && response->retry_after >= 0 && result->outcome == PT_UNKNOWN)
			{
				result->outcome = PT_RETRY_LATER;
				result->message = psprintf("PayTrace is unavailable (HTTP 503, Retry-After %d s).",
										   response->retry_after);
			}
			break;
		case HTTP_TRANSPORT_NOT_SENT:
			result = palloc0(sizeof(PtResult));
			result->outcome = PT_NOT_SENT;
			result->retry_after = -1;
			result->message = psprintf("Could not reach PayTrace: %s", response->error);
			break;
		default:
			result = palloc0(sizeof(PtResult));
			result->outcome = PT_UNKNOWN;
			result->retry_after = -1;
			result->message = psprintf("The answer of PayTrace was lost: %s", response->error);
			break;
	}
	return result;
}

/*
 * Start a money call without waiting (the worker keeps many in flight);
 * paytrace_finish turns the answer into the outcome.
 */
HttpTransfer *
paytrace_start(const Administration *admin, const PtRequest *request, void *owner, int priority)
{
	char		token[FRESHPAY_TOKEN_MAX + 1];
	HttpRequest *http = palloc0(sizeof(HttpRequest));

	token_cache_get(admin->name, REMOTE_PAYTRACE, credential_hash(admin), false,
					pt_authenticate, admin, token, sizeof(token));
	/* (the request keeps a copy of the token for as long as it is out) */
	pt_request(admin, call_of(request->operation)->path, money_fields(request), false, token, http);
	explicit_bzero(token, sizeof(token));
	return http_start(http, owner, priority);
}

/*
 * Make sure a token is cached, so that a money call recorded next leaves at
 * once (the worker fetches it before it records the attempt).
 */
void
paytrace_prepare(const Administration *admin)
{
	char		token[FRESHPAY_TOKEN_MAX + 1];

	token_cache_get(admin->name, REMOTE_PAYTRACE, credential_hash(admin), false,
					pt_authenticate, admin, token, sizeof(token));
	explicit_bzero(token, sizeof(token));
}

PtResult *
paytrace_finish(const Administration *admin, const PtRequest *request,
				const HttpResponse *response)
{
	/*
	 * PayTrace says the token was not accepted: nothing was processed.  The
	 * request goes once more with a new token; a second refusal ends it as
	 * not sent.
	 */
	if (response->transport == HTTP_TRANSPORT_OK && is_invalid_token(response))
	{
		HttpRequest http;
		HttpResponse again;
		char		token[FRESHPAY_TOKEN_MAX + 1];

		token_cache_forget_any(admin->name, REMOTE_PAYTRACE);
		token_cache_get(admin->name, REMOTE_PAYTRACE, credential_hash(admin), true,
						pt_authenticate, admin, token, sizeof(token));
		pt_request(admin, call_of(request->operation)->path, money_fields(request), false, token, &http);
		explicit_bzero(token, sizeof(token));
		http_perform(&http, &again);
		if (again.transport == HTTP_TRANSPORT_OK && is_invalid_token(&again))
		{
			PtResult   *result = palloc0(sizeof(PtResult));

			result->outcome = PT_NOT_SENT;
			result->retry_after = -1;
			result->message = psprintf("PayTrace did not accept a fresh token of administration \"%s\".",
									   admin->name);
			return result;
		}
		return result_of(&again);
	}
	return result_of(response);
}

