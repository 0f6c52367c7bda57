/*-------------------------------------------------------------------------
 *
 * freshportal_json.c
 *	  FreshPortal's JSON objects onto FpCustomer, FpInvoice, FpPayment and
 *	  FpInvoiceState.
 *
 * Money arrives as JSON strings and is converted to numeric without ever
 * being a double.  An object that lacks a required field or has a value
 * outside FreshPortal's vocabulary is an ERROR naming the field.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "jsonconv.h"
#include "money.h"

#include "freshportal.h"
#include "freshportal_int.h"

const char *const fpjson_invoice_types[] = {"invoice", "credit_note", NULL};
const char *const fpjson_invoice_statuses[] = {
	"concept", "open", "partially_paid", "paid", "credited", NULL
};

bool
fpjson_in_vocabulary(const char *value, const char *const *words)
{
	for (; *words; words++)
		if (strcmp(value, *words) == 0)
			return true;
	return false;
}

FpCustomer *
fpjson_customer(json_object *item)
{
	FpCustomer *c = palloc0(sizeof(FpCustomer));
	int64		term;

	c->id = jsonconv_int64(item, "id");
	c->code = jsonconv_string(item, "code");
	c->name = jsonconv_string(item, "name");
	c->email = jsonconv_string_opt(item, "email");
	c->currency = jsonconv_string_opt(item, "currency");
	if (jsonconv_int64_opt(item, "payment_term_days", &term))
	{
		c->has_payment_term_days = true;
		c->payment_term_days = (int32) term;
	}
	c->blocked = jsonconv_bool_opt(item, "blocked", false);
	c->mutation_time = jsonconv_timestamp(item, "mutation_date_time");
	c->raw = jsonconv_jsonb(item);
	return c;
}

FpInvoice *
fpjson_invoice(json_object *item)
{
	FpInvoice  *inv = palloc0(sizeof(FpInvoice));

	inv->id = jsonconv_int64(item, "id");
	inv->number = jsonconv_string(item, "number");
	inv->type = jsonconv_string(item, "type");
	if (!fpjson_in_vocabulary(inv->type, fpjson_invoice_types))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("field \"type\" is \"%s\", not invoice or credit_note", inv->type)));
	inv->customer_id = jsonconv_int64(item, "customer_id");
	inv->invoice_date = jsonconv_date(item, "invoice_date");
	inv->has_due_date = jsonconv_date_opt(item, "due_date", &inv->due_date);
	inv->currency = jsonconv_string(item, "currency");
	inv->amount_excl_vat = jsonconv_money(item, "amount_excl_vat");
	inv->vat_amount = jsonconv_money(item, "vat_amount");
	inv->amount_incl_vat = jsonconv_money(item, "amount_incl_vat");
	inv->amount_paid = jsonconv_money(item, "amount_paid");
	inv->open_amount = jsonconv_money(item, "open_amount");
	inv->status = jsonconv_string(item, "status");
	if (!fpjson_in_vocabulary(inv->status, fpjson_invoice_statuses))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("field \"status\" is \"%s\", not one of concept, open, partially_paid, paid, credited",
						inv->status)));
	inv->mutation_time = jsonconv_timestamp(item, "mutation_date_time");
	inv->raw = jsonconv_jsonb(item);
	return inv;
}

FpPayment *
fpjson_payment(json_object *item)
{
	FpPayment  *payment = palloc0(sizeof(FpPayment));

	payment->id = jsonconv_int64(item, "id");
	jsonconv_int64_opt(item, "invoice_id", &payment->invoice_id);
	payment->status = jsonconv_string_opt(item, "status");
	payment->provider_transaction_id = jsonconv_string_opt(item, "provider_transaction_id");
	if (jsonconv_member(item, "amount") != NULL && !jsonconv_is_null(jsonconv_member(item, "amount")))
		payment->amount = money_text(jsonconv_money(item, "amount"));
	if (payment->status == NULL)
		payment->status = "";
	return payment;
}

/*
 * FreshPortal's invoice after a registration or reversal, from the answer's
 * "invoice" summary; present is false when the summary is missing or
 * incomplete (the caller re-reads the invoice then).
 */
FpInvoiceState *
fpjson_invoice_state(json_object *root)
{
	FpInvoiceState *state = palloc0(sizeof(FpInvoiceState));
	json_object *inv = jsonconv_member(root, "invoice");
	char	   *status;

	if (inv == NULL || !json_object_is_type(inv, json_type_object) ||
		jsonconv_member(inv, "id") == NULL || jsonconv_member(inv, "amount_paid") == NULL ||
		jsonconv_member(inv, "open_amount") == NULL || jsonconv_member(inv, "status") == NULL ||
		jsonconv_member(inv, "mutation_date_time") == NULL)
		return state;
	status = jsonconv_string(inv, "status");
	if (!fpjson_in_vocabulary(status, fpjson_invoice_statuses))
		return state;
	state->id = jsonconv_int64(inv, "id");
	state->amount_paid = jsonconv_money(inv, "amount_paid");
	state->open_amount = jsonconv_money(inv, "open_amount");
	state->status = status;
	state->mutation_time = jsonconv_timestamp(inv, "mutation_date_time");
	state->raw = jsonconv_jsonb(inv);
	state->present = true;
	return state;
}
