/*-------------------------------------------------------------------------
 *
 * administration.h
 *	  Administrations (FreshPortal tenant + PayTrace account) and their
 *	  secrets.
 *
 * A secret is stored as given: the literal, or a reference "env:NAME" or
 * "file:PATH" that is resolved only when a request needs it.  Resolved
 * secrets live in palloc'd memory of the caller and are never printed.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FRESHPAY_ADMINISTRATION_H
#define FRESHPAY_ADMINISTRATION_H

#include "nodes/pg_list.h"
#include "utils/palloc.h"

typedef struct Administration
{
	char	   *name;
	char	   *freshportal_url;	/* without trailing slash */
	char	   *freshportal_api_key;	/* resolved secret */
	char	   *paytrace_url;	/* without trailing slash */
	char	   *paytrace_username;
	char	   *paytrace_password;	/* resolved secret */
	char	   *paytrace_integrator_id;
	int32		paytrace_merchant_id;	/* API v3; 0 when not set (v1 only) */
} Administration;

extern Administration *administration_load(const char *name, MemoryContext context);
extern List *administration_names(void);
extern uint32 administration_credential_hash(const char *url, const char *secret);

#endif							/* FRESHPAY_ADMINISTRATION_H */
