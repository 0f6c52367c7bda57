/*-------------------------------------------------------------------------
 *
 * resolve.h
 *	  Looking up attempts whose outcome was lost, at PayTrace.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_RESOLVE_H
#define FRESHPAY_RESOLVE_H

#include "flow.h"

extern FlowStep resolve_step(Flow *f, const HttpResponse *response);
extern void resolve_recover(void);

#endif							/* FRESHPAY_RESOLVE_H */
