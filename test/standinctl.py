#!/usr/bin/env python3
"""Drive a stand-in's admin API from shell or psql (\\!) in pg_regress tests.

    standinctl.py fp|pt METHOD PATH [JSON]

The stand-in's base URL comes from FRESHPAY_TEST_FP_URL / FRESHPAY_TEST_PT_URL.
Prints nothing on success, so that regression output stays deterministic;
on an HTTP error it prints the status and body and exits 1.
"""
import os
import sys
import urllib.error
import urllib.request

ENV = {"fp": "FRESHPAY_TEST_FP_URL", "pt": "FRESHPAY_TEST_PT_URL"}


def main(argv):
    if len(argv) not in (4, 5) or argv[1] not in ENV:
        sys.exit(__doc__)
    base = os.environ[ENV[argv[1]]]
    method, path = argv[2], argv[3]
    body = argv[4].encode() if len(argv) == 5 else None
    request = urllib.request.Request(base + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
    except urllib.error.HTTPError as error:
        print(f"standinctl: {method} {path} -> HTTP {error.code}: {error.read().decode()}")
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv)
