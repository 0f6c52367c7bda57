/*-------------------------------------------------------------------------
 *
 * paytrace.h
 *	  PayTrace JSON API v1 client: the only code that knows PayTrace's paths,
 *	  fields, response codes, status codes and date formats.
 *
 * The rest of freshpay sees outcomes and transactions with meaning, never
 * JSON.  PayTrace has announced an API v3; a v3 client would implement the
 * same functions in a file of its own.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_PAYTRACE_H
#define FRESHPAY_PAYTRACE_H

#include "datatype/timestamp.h"
#include "nodes/pg_list.h"
#include "utils/date.h"

#include "administration.h"
#include "http.h"

typedef enum PtOperation
{
	PT_SALE,					/* card sale against a vault profile */
	PT_AUTHORIZE,				/* card authorization against a vault profile */
	PT_CAPTURE,					/* capture of an authorization */
	PT_VOID,					/* void of an unsettled transaction */
	PT_REFUND,					/* refund of a settled transaction */
	PT_ACH_SALE,				/* ACH debit against a vault profile */
	PT_ACH_VOID,				/* void of an unsettled ACH debit */
	PT_ACH_REFUND				/* refund of a settled ACH debit */
} PtOperation;

/* What a money call did, as far as freshpay can tell. */
typedef enum PtOutcome
{
	PT_APPROVED,				/* it happened */
	PT_AUTO_VOIDED,				/* 103: approved, then voided by AVS/CSC rules: not paid */
	PT_DECLINED,				/* a decline: nothing happened, the answer is final */
	PT_REJECTED,				/* validation or processing error: nothing happened */
	PT_NOT_SENT,				/* failed before the request left: nothing happened */
	PT_RETRY_LATER,				/* rate limited: nothing happened, try again later */
	PT_UNKNOWN					/* the answer was lost or unreadable: it may have happened */
} PtOutcome;

typedef struct PtRequest
{
	PtOperation operation;
	const char *customer_id;	/* vault profile: sale, authorize, ACH */
	int64		transaction_id; /* capture, void, refund */
	const char *amount;			/* numeric text "590.00"; NULL = full (capture, refund) */
	const char *invoice_number; /* sent as invoice_id, the key of later lookups */
	const char *idempotency_key;	/* API v3 ACH debit or refund: recorded before sending */
} PtRequest;

typedef struct PtResult
{
	PtOutcome	outcome;
	long		http_status;
	int			response_code;	/* 0 when unknown */
	bool		has_transaction_id;
	int64		transaction_id;
	char	   *approval_code;	/* NULL when none */
	char	   *message;		/* for people: PayTrace's texts, or what went wrong */
	char	   *error_codes;	/* "817" or "35,43" for PT_REJECTED, else NULL */
	int			retry_after;	/* seconds, for PT_RETRY_LATER; -1 if not given */
} PtResult;

/* A transaction as PayTrace's exports describe it. */
typedef enum PtState
{
	PT_STATE_PENDING_SETTLEMENT,	/* status_code Y */
	PT_STATE_SETTLED,			/* status_code GB<batch> or Settled */
	PT_STATE_AUTHORIZED,		/* N, "Authorization Only" */
	PT_STATE_VOIDED,			/* N, voided */
	PT_STATE_DECLINED,			/* N, declined */
	PT_STATE_OTHER
} PtState;

typedef struct PtTransaction
{
	int64		transaction_id;
	char	   *type;			/* SALE, AUTHORIZATION, REFUND, CHECK, ... */
	Datum		amount;			/* numeric(12,2) */
	char	   *invoice_id;		/* as sent, "" when none */
	char	   *customer_id;	/* vault profile, "" when none */
	char		bin[7];			/* the card's first six digits, "" unless asked for and shown */
	char	   *approval_code;
	PtState		state;
	char	   *status_message;
	int			batch_number;	/* 0 unless settled */
	bool		has_settled_at;
	TimestampTz settled_at;
	bool		has_created_at;
	TimestampTz created_at;
} PtTransaction;

/* A card vault profile as customer/export describes it: nothing more than this is read. */
typedef struct PtProfile
{
	char	   *customer_id;
	char		last4[5];		/* "" when not shown */
	int			expiry_month;	/* 0 when not shown */
	int			expiry_year;	/* four digits */
} PtProfile;

/* A settlement batch as PayTrace's batch export describes it. */
typedef struct PtBatch
{
	int			number;
	bool		has_settled_at;
	TimestampTz settled_at;
	int			transaction_count;
	Datum		sales_amount;	/* numeric(12,2) */
	Datum		refund_amount;
	Datum		net_amount;
	Datum		raw;			/* jsonb */
} PtBatch;

/* A PayTrace call other than a money request (an export). */
typedef struct PtQuery PtQuery;

/* Level 3 data of a Visa or Mastercard sale or capture: the invoice's lines. */
typedef struct PtLevel3Line
{
	const char *description;
	const char *product_id;		/* NULL when none */
	const char *quantity;		/* numeric text */
	const char *unit_cost;		/* numeric text, dollars */
	const char *amount;			/* numeric text, dollars, excluding tax */
	const char *tax_amount;		/* numeric text, or NULL */
} PtLevel3Line;

typedef struct PtLevel3
{
	int64		transaction_id;
	bool		mastercard;		/* level_three/mastercard, else level_three/visa */
	const char *invoice_number;
	const char *tax_amount;		/* numeric text: the invoice's tax */
	List	   *lines;			/* PtLevel3Line */
} PtLevel3;

/* The card brands Level 3 knows, from a BIN. */
typedef enum PtBrand
{
	PT_BRAND_UNKNOWN,
	PT_BRAND_VISA,
	PT_BRAND_MASTERCARD,
	PT_BRAND_OTHER
} PtBrand;

extern HttpTransfer *paytrace_start(const Administration *admin, const PtRequest *request,
									void *owner, int priority);
extern void paytrace_prepare(const Administration *admin);
extern PtResult *paytrace_finish(const Administration *admin, const PtRequest *request,
								 const HttpResponse *response);
extern PtResult *paytrace_parse_result(long http_status, const char *body, size_t len);
extern List *paytrace_export_by_id(const Administration *admin, int64 transaction_id);
extern List *paytrace_export_by_date_range(const Administration *admin, DateADT start,
										   DateADT end, const char *including_text);
extern List *paytrace_parse_export(const char *body, size_t len);
extern List *paytrace_export_batches(const Administration *admin, DateADT start, DateADT end);

/* Exports in flight (the worker): build, send, then read the answer. */
extern PtQuery *paytrace_export_by_id_query(const Administration *admin, int64 transaction_id);
extern PtQuery *paytrace_export_by_date_range_query(const Administration *admin, DateADT start,
													DateADT end, const char *including_text);
extern void paytrace_send(PtQuery *query, void *owner, int priority);
extern bool paytrace_answers(const PtQuery *query, const HttpResponse *response);
extern bool paytrace_answered(PtQuery *query, const HttpResponse *response, void *owner,
							  int priority);
extern List *paytrace_export_of(PtQuery *query, const HttpResponse *response);
extern PtQuery *paytrace_export_card_query(const Administration *admin, int64 transaction_id,
										   DateADT start, DateADT end);
extern PtBrand paytrace_brand_of(const char *bin);
extern List *paytrace_export_profiles(const Administration *admin);
extern PtQuery *paytrace_level3_query(const Administration *admin, const PtLevel3 *level3);
extern PtResult *paytrace_level3_of(PtQuery *query, const HttpResponse *response);

#endif							/* FRESHPAY_PAYTRACE_H */
