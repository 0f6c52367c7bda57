/*-------------------------------------------------------------------------
 *
 * money.h
 *	  Amounts as numeric text, and the refusal of a money call.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_MONEY_H
#define FRESHPAY_MONEY_H

extern void fp_refuse(int sqlerrcode, const char *hint, const char *fmt,...) pg_attribute_printf(3, 4);
extern Datum money_numeric(const char *text);
extern int	money_compare(const char *a, const char *b);
extern char *money_text(Datum value);

#endif							/* FRESHPAY_MONEY_H */
