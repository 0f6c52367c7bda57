/*-------------------------------------------------------------------------
 *
 * holdings.h
 *	  What PayTrace already holds, read before a money call is recorded.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_HOLDINGS_H
#define FRESHPAY_HOLDINGS_H

#include "nodes/pg_list.h"

#include "administration.h"
#include "plan.h"

extern void holdings_check_charge(const Administration *admin, const CallPlan *plan, List *found);
extern bool holdings_target_settled(const Administration *admin, const CallPlan *plan, List *found);

#endif							/* FRESHPAY_HOLDINGS_H */
