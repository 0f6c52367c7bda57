/*-------------------------------------------------------------------------
 *
 * settings.c
 *	  Definition of freshpay's GUCs under the reserved prefix "freshpay".
 *
 * Settings that widen what freshpay may connect to (the CA bundle, plain
 * http) are superuser-only.  Timeouts are PGC_SUSET so that a superuser can
 * tighten them in a session; the worker-shaping settings take effect on
 * reload (SIGHUP).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/guc.h"

#include "settings.h"

char	   *freshpay_database_name = NULL;
bool		freshpay_worker_enabled = true;
int			freshpay_sync_interval = 300;
int			freshpay_max_parallel_requests = 8;
int			freshpay_connect_timeout = 10000;
int			freshpay_request_timeout = 90000;
int			freshpay_max_attempts = 8;
int			freshpay_max_declines_per_day = 2;
int			freshpay_max_retry_delay = 300000;
char	   *freshpay_ca_file = NULL;
bool		freshpay_allow_plain_http = false;
int			freshpay_max_response_size = 32 * 1024;
int			freshpay_sync_page_size = 100;
int			freshpay_sync_overlap = 120;
int			freshpay_history_retention = 400;
char	   *freshpay_debug_pause_at = NULL;

void
FreshpaySettingsInit(void)
{
	DefineCustomStringVariable("freshpay.database_name",
							   "Database the freshpay background worker connects to.",
							   "freshpay can be created only in this database.",
							   &freshpay_database_name,
							   "postgres",
							   PGC_POSTMASTER,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomBoolVariable("freshpay.worker_enabled",
							 "Run the freshpay background worker.",
							 NULL,
							 &freshpay_worker_enabled,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("freshpay.sync_interval",
							"Interval of the scheduled pull of FreshPortal and PayTrace changes.",
							"0 disables the schedule: sync only on demand with freshpay_sync().",
							&freshpay_sync_interval,
							300, 0, 7 * 24 * 3600,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("freshpay.max_parallel_requests",
							"HTTP requests in flight at once, per remote API.",
							NULL,
							&freshpay_max_parallel_requests,
							8, 1, 256,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("freshpay.connect_timeout",
							"Timeout for establishing a TCP and TLS connection to a remote API.",
							NULL,
							&freshpay_connect_timeout,
							10000, 100, 600000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("freshpay.request_timeout",
							"Timeout for a whole request to a remote API.",
							"PayTrace approvals take seconds; keep this well above 20s.",
							&freshpay_request_timeout,
							90000, 100, 3600000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("freshpay.max_attempts",
							"Attempts before a queued job is given up (state dead).",
							NULL,
							&freshpay_max_attempts,
							8, 1, 1000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("freshpay.max_declines_per_day",
							"Declined charges of one customer within 24 hours after which automatic collection pauses.",
							"PayTrace disables a card on its 4th failed attempt within 24 hours. 0 turns the guard off.",
							&freshpay_max_declines_per_day,
							2, 0, 100,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("freshpay.max_retry_delay",
							"Longest wait between two tries of a failing job.",
							"Write-back and lookups retry until they succeed, with a backoff that grows up to this.",
							&freshpay_max_retry_delay,
							300000, 1000, 3600000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomStringVariable("freshpay.ca_file",
							   "Extra CA bundle trusted for TLS verification of the remote APIs.",
							   "Certificate and host name verification are always on.",
							   &freshpay_ca_file,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomBoolVariable("freshpay.allow_plain_http",
							 "Allow http:// base URLs, to loopback addresses only.",
							 "Meant for tests and local stand-ins; https is required otherwise.",
							 &freshpay_allow_plain_http,
							 false,
							 PGC_SUSET,
							 GUC_SUPERUSER_ONLY,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("freshpay.max_response_size",
							"Largest response body accepted from a remote API.",
							NULL,
							&freshpay_max_response_size,
							32 * 1024, 16, 1024 * 1024,
							PGC_SUSET,
							GUC_UNIT_KB,
							NULL, NULL, NULL);

	DefineCustomIntVariable("freshpay.sync_page_size",
							"Rows requested per page when pulling FreshPortal lists.",
							NULL,
							&freshpay_sync_page_size,
							100, 1, 1000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("freshpay.sync_overlap",
							"How far before the stored cursor an incremental pull starts.",
							"Rows seen twice are recognised by id and mutation time and skipped.",
							&freshpay_sync_overlap,
							120, 0, 24 * 3600,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("freshpay.history_retention",
							"Days payment history and finished jobs are kept.",
							"Payments themselves are never deleted.",
							&freshpay_history_retention,
							400, 1, 100 * 365,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	/*
	 * A test hook, hidden from SHOW ALL: the worker pauses at the named point
	 * of an attempt ("before_send", "after_answer") so that the crash tests
	 * can kill it exactly there.  Empty in production.
	 */
	DefineCustomStringVariable("freshpay.debug_pause_at",
							   "Test hook: point of an attempt where the worker pauses.",
							   NULL,
							   &freshpay_debug_pause_at,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   NULL, NULL, NULL);

	MarkGUCPrefixReserved("freshpay");
}
