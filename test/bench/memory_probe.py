#!/usr/bin/env python3
"""Write the psql script of one memory-probe kind to stdout.

Usage: memory_probe.py KIND CALLS FRESHPORTAL_URL

Every call is its own statement (statement memory is freed in between), in
one backend; errors are expected and silenced.  The FreshPortal stand-in's
faults shape the failing kinds.
"""
import json
import sys

STATEMENTS = {
    "baseline": "SELECT 1;",
    "sync_ok": "SELECT * FROM freshpay_sync('main');",
    "sync_refused": "SELECT * FROM freshpay_sync('refused');",
    "sync_wrong_key": "SELECT * FROM freshpay_sync('wrongkey');",
    "sync_malformed": "SELECT * FROM freshpay_sync('main');",
    "sync_oversized": "SELECT * FROM freshpay_sync('main');",
    "sync_server_error": "SELECT * FROM freshpay_sync('main');",
    "parse_bad_amount": "SELECT * FROM freshpay._paytrace_parse_export("
                        "'{\"success\":true,\"transactions\":[{\"transaction_id\":1,\"amount\":\"1,00\"}]}');",
    "parse_truncated": "SELECT * FROM freshpay._paytrace_parse_export('{\"success\":true,\"transactions\":[');",
}
FAULTS = {
    "sync_malformed": [{"action": "malformed", "path": "/v1/customers", "times": -1}],
    "sync_oversized": [{"action": "oversize", "bytes": 200000, "path": "/v1/customers", "times": -1}],
    "sync_server_error": [{"action": "status", "status": 500, "body": "{\"message\":\"x\"}",
                           "path": "/v1/invoices", "times": -1}],
}


def faults(rules):
    return "\\! python3 test/standinctl.py fp POST /_standin/faults '%s'" % json.dumps({"rules": rules})


def main(kind, calls):
    print("CREATE FUNCTION pg_temp.anon() RETURNS bigint LANGUAGE sql AS $$ SELECT (regexp_match("
          "pg_read_file('/proc/' || pg_backend_pid() || '/status'), 'RssAnon:\\s+(\\d+)'))[1]::bigint $$;")
    print("\\set ON_ERROR_STOP off")
    print("SET client_min_messages = fatal;")
    print("SET freshpay.max_response_size = '64kB';")
    print(faults(FAULTS.get(kind, [])))
    statement = STATEMENTS[kind]
    print("\n".join([statement] * 300))
    print("SELECT pg_temp.anon() AS warm \\gset")
    print("\n".join([statement] * calls))
    print("SELECT pg_temp.anon() AS after \\gset")
    print(faults([]))
    print(f"SELECT '{kind}', :warm, :after, :after - :warm;")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
