/*-------------------------------------------------------------------------
 *
 * freshportal.h
 *	  FreshPortal API client: the only code that knows FreshPortal's paths,
 *	  JSON field names and conventions.
 *
 * The rest of freshpay sees these structs, never JSON.  When a tenant's
 * real API differs from the model in the contract (section 8), this file
 * and freshportal.c change, nothing else.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_FRESHPORTAL_H
#define FRESHPAY_FRESHPORTAL_H

#include "datatype/timestamp.h"
#include "nodes/pg_list.h"
#include "utils/date.h"

#include "administration.h"
#include "http.h"

typedef enum FpStream
{
	FP_STREAM_CUSTOMERS,
	FP_STREAM_INVOICES
} FpStream;

typedef struct FpCustomer
{
	int64		id;
	char	   *code;
	char	   *name;
	char	   *email;			/* NULL when absent */
	char	   *currency;		/* NULL when absent */
	bool		has_payment_term_days;
	int32		payment_term_days;
	bool		blocked;
	TimestampTz mutation_time;
	Datum		raw;			/* jsonb of the whole object */
} FpCustomer;

typedef struct FpInvoice
{
	int64		id;
	char	   *number;
	char	   *type;			/* "invoice" or "credit_note" */
	int64		customer_id;	/* FreshPortal's customer id */
	DateADT		invoice_date;
	bool		has_due_date;
	DateADT		due_date;
	char	   *currency;
	Datum		amount_excl_vat;	/* numeric(12,2) */
	Datum		vat_amount;
	Datum		amount_incl_vat;
	Datum		amount_paid;
	Datum		open_amount;
	char	   *status;			/* concept, open, partially_paid, paid, credited */
	TimestampTz mutation_time;
	Datum		raw;			/* jsonb of the whole object, lines included */
} FpInvoice;

/* One page of a "changed since" list. */
typedef struct FpPage
{
	int			current_page;
	int			last_page;
	int64		total;
	bool		has_server_time;
	TimestampTz server_time;
	List	   *items;			/* FpCustomer * or FpInvoice * */
} FpPage;

/* A payment registration in FreshPortal. */
typedef struct FpPayment
{
	int64		id;
	int64		invoice_id;
	char	   *status;			/* "registered" or "reversed" */
	char	   *provider_transaction_id;
	char	   *amount;			/* numeric text; NULL when FreshPortal leaves it out */
} FpPayment;

/* What freshpay registers against an invoice. */
typedef struct FpRegistration
{
	int64		invoice_id;		/* FreshPortal's invoice id */
	const char *amount;			/* numeric text */
	const char *currency;
	const char *method;			/* card or ach */
	const char *provider_transaction_id;
	DateADT		payment_date;
} FpRegistration;

/* FreshPortal's invoice as a registration or reversal left it. */
typedef struct FpInvoiceState
{
	bool		present;		/* false: the answer did not say; re-read it */
	int64		id;
	Datum		amount_paid;	/* numeric(12,2) */
	Datum		open_amount;
	char	   *status;
	TimestampTz mutation_time;
	Datum		raw;			/* jsonb of the summary */
} FpInvoiceState;

/* One call to FreshPortal, synchronous or in flight in the worker's loop. */
typedef struct FpCall FpCall;

extern const char *freshportal_stream_name(FpStream stream);
extern TimestampTz freshportal_item_mutation_time(FpStream stream, void *item);
extern int64 freshportal_item_id(FpStream stream, void *item);

/* Synchronous: the sync and the SQL functions. */
extern FpPage *freshportal_list(const Administration *admin, FpStream stream,
								TimestampTz since, int page, int per_page);
extern FpInvoice *freshportal_get_invoice(const Administration *admin, int64 invoice_id);
extern List *freshportal_find_payments(const Administration *admin,
									   const char *provider_transaction_id);
extern FpPayment *freshportal_get_payment(const Administration *admin, int64 payment_id);
extern int64 freshportal_register_payment(const Administration *admin,
										  const FpRegistration *registration);

/* Calls in flight (the worker): build, send, then read the answer. */
extern FpCall *freshportal_get_invoice_call(const Administration *admin, int64 invoice_id);
extern FpCall *freshportal_find_payments_call(const Administration *admin,
											  const char *provider_transaction_id);
extern FpCall *freshportal_get_payment_call(const Administration *admin, int64 payment_id);
extern FpCall *freshportal_register_call(const Administration *admin,
										 const FpRegistration *registration);
extern FpCall *freshportal_reverse_call(const Administration *admin, int64 payment_id,
										const char *reason, const char *provider_transaction_id,
										DateADT date);
extern void freshportal_send(FpCall *call, void *owner, int priority);
extern bool freshportal_answers(const FpCall *call, const HttpResponse *response);
extern bool freshportal_answered(FpCall *call, const HttpResponse *response, void *owner,
								 int priority);
extern FpInvoice *freshportal_invoice_of(FpCall *call, const HttpResponse *response);
extern List *freshportal_payments_of(FpCall *call, const HttpResponse *response);
extern List *freshportal_payments_found(FpCall *call, const HttpResponse *response,
										bool *complete);
extern FpPayment *freshportal_payment_of(FpCall *call, const HttpResponse *response);
extern int64 freshportal_registered_of(FpCall *call, const HttpResponse *response,
									   FpInvoiceState **invoice);
extern FpInvoiceState *freshportal_reversed_of(FpCall *call, const HttpResponse *response);

#endif							/* FRESHPAY_FRESHPORTAL_H */
