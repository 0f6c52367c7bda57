/*-------------------------------------------------------------------------
 *
 * administration.c
 *	  Loading administrations and resolving their secrets.
 *
 * Secrets are read from freshpay.administration_secrets, which only the
 * extension owner and freshpay_admin can read; callers run as the extension
 * owner (SECURITY DEFINER SQL functions or the worker).  A reference to the
 * server's environment or files may only be stored by a role that could read
 * them anyway (superuser for env:, pg_read_server_files for file:): otherwise
 * freshpay_admin could send any server file to a URL of its choosing.  For
 * the same reason a reference, once stored, may only be sent somewhere else
 * (a URL of its administration changed, its secrets row moved to another
 * administration or deleted) by a role that could have stored it.  The
 * checks run in triggers, so direct DML cannot bypass them; the functions
 * they call are STRICT and never read a NULL argument.
 *
 * Messages name the administration and the field, never the secret.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/stat.h>

#include "catalog/pg_authid.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/acl.h"
#include "utils/builtins.h"

#include "administration.h"
#include "spi_txn.h"
#include "http.h"

#define SECRET_FILE_MAX 8192

static char *
strip_trailing_slash(char *url)
{
	size_t		len = strlen(url);

	while (len > 0 && url[len - 1] == '/')
		url[--len] = '\0';
	return url;
}

static char *
secret_from_file(const char *path, const char *field, const char *administration)
{
	FILE	   *file;
	char	   *data = palloc(SECRET_FILE_MAX + 1);
	size_t		len;

	file = AllocateFile(path, "r");
	if (file == NULL)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open secret file \"%s\" named by %s of administration \"%s\": %m",
						path, field, administration),
				 errhint("The file must be readable by the PostgreSQL server's operating-system user.")));
	len = fread(data, 1, SECRET_FILE_MAX + 1, file);
	if (ferror(file))
	{
		int			save_errno = errno;

		FreeFile(file);
		errno = save_errno;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not read secret file \"%s\" named by %s of administration \"%s\": %m",
						path, field, administration)));
	}
	FreeFile(file);
	if (len > SECRET_FILE_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("secret file \"%s\" named by %s of administration \"%s\" is too large",
						path, field, administration),
				 errdetail("A secret file holds the secret alone, at most %d bytes.", SECRET_FILE_MAX)));
	data[len] = '\0';
	/* One trailing newline (or CRLF) is part of the file, not of the secret. */
	while (len > 0 && (data[len - 1] == '\n' || data[len - 1] == '\r'))
		data[--len] = '\0';
	return data;
}

/*
 * Resolve a stored secret: a literal, "env:NAME" or "file:PATH".  Raises an
 * ERROR naming the field and the reference (never the value) when it cannot
 * be resolved or is empty.
 */
static char *
secret_resolve(const char *stored, const char *field, const char *administration)
{
	char	   *value;

	if (strncmp(stored, "env:", 4) == 0)
	{
		const char *name = stored + 4;
		const char *env = getenv(name);

		if (env == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("environment variable \"%s\" named by %s of administration \"%s\" is not set",
							name, field, administration),
					 errhint("Set it in the environment of the PostgreSQL server (for example in its service unit) and restart, or use a file: reference.")));
		value = pstrdup(env);
	}
	else if (strncmp(stored, "file:", 5) == 0)
		value = secret_from_file(stored + 5, field, administration);
	else
		value = pstrdup(stored);

	if (value[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s of administration \"%s\" is empty", field, administration),
				 errhint("Give the secret itself, env:NAME or file:PATH.")));
	return value;
}

/*
 * The administration called name, its secrets resolved, allocated in
 * context (inside a transaction; SPI may be connected already).
 */
Administration *
administration_load(const char *name, MemoryContext context)
{
	Administration *admin;
	Datum		arg = CStringGetTextDatum(name);
	Oid			argtype = TEXTOID;
	MemoryContext caller = MemoryContextSwitchTo(context);
	char	   *stored_key;
	char	   *stored_password;
	int64		rc;

	SPI_connect();
	rc = fp_spi_run("SELECT a.freshportal_url, a.paytrace_url, a.paytrace_username,"
					"       a.paytrace_integrator_id, s.freshportal_api_key, s.paytrace_password,"
					"       COALESCE(a.paytrace_merchant_id, 0)"
					"  FROM freshpay.administrations a"
					"  JOIN freshpay.administration_secrets s"
					"    ON s.administration OPERATOR(pg_catalog.=) a.name"
					" WHERE a.name OPERATOR(pg_catalog.=) $1",
					1, &argtype, &arg, NULL, SPI_OK_SELECT);
	if (rc == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("administration \"%s\" does not exist", name),
				 errhint("Add it with freshpay_add_administration().")));

	{
		MemoryContext spi = MemoryContextSwitchTo(context);
		HeapTuple	tuple = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		admin = palloc0(sizeof(Administration));
		admin->name = pstrdup(name);
		admin->freshportal_url = strip_trailing_slash(SPI_getvalue(tuple, desc, 1));
		admin->paytrace_url = strip_trailing_slash(SPI_getvalue(tuple, desc, 2));
		admin->paytrace_username = SPI_getvalue(tuple, desc, 3);
		admin->paytrace_integrator_id = SPI_getvalue(tuple, desc, 4);
		stored_key = SPI_getvalue(tuple, desc, 5);
		stored_password = SPI_getvalue(tuple, desc, 6);
		{
			bool		isnull;

			admin->paytrace_merchant_id = DatumGetInt32(SPI_getbinval(tuple, desc, 7, &isnull));
		}
		MemoryContextSwitchTo(spi);
	}
	SPI_finish();

	admin->freshportal_api_key = secret_resolve(stored_key, "freshportal_api_key", name);
	admin->paytrace_password = secret_resolve(stored_password, "paytrace_password", name);
	MemoryContextSwitchTo(caller);
	return admin;
}

List *
administration_names(void)
{
	MemoryContext caller = CurrentMemoryContext;
	List	   *names = NIL;
	int			rc;

	SPI_connect();
	rc = SPI_execute("SELECT name FROM freshpay.administrations ORDER BY name", true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not list administrations: %s", SPI_result_code_string(rc));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		MemoryContext spi = MemoryContextSwitchTo(caller);

		names = lappend(names, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
		MemoryContextSwitchTo(spi);
	}
	SPI_finish();
	return names;
}

/* Identifies the credentials a cached token was issued for. */
uint32
administration_credential_hash(const char *url, const char *secret)
{
	uint32		h = hash_bytes((const unsigned char *) url, strlen(url));

	return hash_combine(h, hash_bytes((const unsigned char *) secret, strlen(secret)));
}

typedef enum SecretKind
{
	SECRET_LITERAL,
	SECRET_ENV,					/* env:NAME, the server's environment */
	SECRET_FILE					/* file:PATH, a server file */
} SecretKind;

static SecretKind
secret_kind(const char *stored)
{
	if (strncmp(stored, "env:", 4) == 0)
		return SECRET_ENV;
	if (strncmp(stored, "file:", 5) == 0)
		return SECRET_FILE;
	return SECRET_LITERAL;
}

/*
 * May the current role make freshpay read what a secret of this kind names?
 * env: needs superuser, file: pg_read_server_files (superusers have it).
 */
static bool
may_use_secret(SecretKind kind)
{
	switch (kind)
	{
		case SECRET_ENV:
			return superuser();
		case SECRET_FILE:
			return has_privs_of_role(GetUserId(), ROLE_PG_READ_SERVER_FILES);
		case SECRET_LITERAL:
			break;
	}
	return true;
}

PG_FUNCTION_INFO_V1(freshpay_check_url);

/*
 * freshpay._check_url(url text, field text): called by the trigger on
 * freshpay.administrations, which reports a NULL url itself.  Declared
 * STRICT; the NULL test here keeps an installation whose SQL objects are
 * older than this library from crashing.
 */
Datum
freshpay_check_url(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_NULL();
	http_check_url(text_to_cstring(PG_GETARG_TEXT_PP(0)),
				   text_to_cstring(PG_GETARG_TEXT_PP(1)));
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(freshpay_check_secret);

/*
 * freshpay._check_secret(stored text, field text, administration text):
 * called by the trigger on freshpay.administration_secrets, as the role
 * writing the row.  Checks that this role may store the reference, and that
 * it resolves now, so that a typo is reported when it is made.  STRICT, as
 * freshpay_check_url.
 */
Datum
freshpay_check_secret(PG_FUNCTION_ARGS)
{
	char	   *stored;
	char	   *field;
	char	   *administration;
	char	   *value;
	SecretKind	kind;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		PG_RETURN_NULL();
	stored = text_to_cstring(PG_GETARG_TEXT_PP(0));
	field = text_to_cstring(PG_GETARG_TEXT_PP(1));
	administration = text_to_cstring(PG_GETARG_TEXT_PP(2));

	kind = secret_kind(stored);
	if (kind == SECRET_ENV && !may_use_secret(kind))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to use an env: reference for %s", field),
				 errdetail("Only superusers may make freshpay read the server's environment."),
				 errhint("Ask a superuser to add the administration, or pass the secret itself.")));
	if (kind == SECRET_FILE && !may_use_secret(kind))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to use a file: reference for %s", field),
				 errdetail("Only superusers and members of pg_read_server_files may make freshpay read server files."),
				 errhint("Ask a superuser to add the administration, or pass the secret itself.")));
	if (kind == SECRET_FILE && !is_absolute_path(stored + 5))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("file: reference of %s must be an absolute path", field),
				 errhint("Write file:/path/to/secret, a path the PostgreSQL server can read.")));

	value = secret_resolve(stored, field, administration);
	explicit_bzero(value, strlen(value));
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(freshpay_check_secret_redirect);

/*
 * freshpay._check_secret_redirect(stored text, field text, administration
 * text, change text): called by the triggers before a change that sends an
 * already stored secret somewhere else: a URL of its administration
 * changes, or its secrets row moves to another administration.  Deleting the
 * row is checked too: a reference that a superuser configured is not
 * dropped, to be replaced, by a role that could not have configured it.  A
 * reference may only be redirected by a role that could have stored it; a
 * literal by anyone allowed to make the change.  change names the change
 * for the message ("change paytrace_url").  STRICT.
 */
Datum
freshpay_check_secret_redirect(PG_FUNCTION_ARGS)
{
	char	   *stored;
	char	   *field;
	char	   *administration;
	char	   *change;
	SecretKind	kind;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2) || PG_ARGISNULL(3))
		PG_RETURN_NULL();
	stored = text_to_cstring(PG_GETARG_TEXT_PP(0));
	field = text_to_cstring(PG_GETARG_TEXT_PP(1));
	administration = text_to_cstring(PG_GETARG_TEXT_PP(2));
	change = text_to_cstring(PG_GETARG_TEXT_PP(3));

	kind = secret_kind(stored);
	if (kind == SECRET_ENV && !may_use_secret(kind))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to %s of administration \"%s\"", change, administration),
				 errdetail("Its %s is an env: reference: only superusers may decide where the server's environment is sent.",
						   field),
				 errhint("Ask a superuser to make this change, or first replace the reference with the secret itself.")));
	if (kind == SECRET_FILE && !may_use_secret(kind))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to %s of administration \"%s\"", change, administration),
				 errdetail("Its %s is a file: reference: only superusers and members of pg_read_server_files may decide where server files are sent.",
						   field),
				 errhint("Ask a superuser to make this change, or first replace the reference with the secret itself.")));
	PG_RETURN_VOID();
}
