/*-------------------------------------------------------------------------
 *
 * freshportal_int.h
 *	  What freshportal.c and freshportal_json.c share, and nobody else sees.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_FRESHPORTAL_INT_H
#define FRESHPAY_FRESHPORTAL_INT_H

#include "jsonconv.h"

#include "freshportal.h"

extern const char *const fpjson_invoice_types[];
extern const char *const fpjson_invoice_statuses[];

extern bool fpjson_in_vocabulary(const char *value, const char *const *words);
extern FpCustomer *fpjson_customer(json_object *item);
extern FpInvoice *fpjson_invoice(json_object *item);
extern FpPayment *fpjson_payment(json_object *item);
extern FpInvoiceState *fpjson_invoice_state(json_object *root);

#endif							/* FRESHPAY_FRESHPORTAL_INT_H */
