#!/usr/bin/env python3
"""Small helpers of test/bench/collect_throughput-run (standard library only).

    bench_helper.py profiles K PREFIX
        JSON body for the PayTrace stand-in's POST /_standin/customers: card
        vault profiles PREFIX1 .. PREFIXK.
    bench_helper.py token
        Reads a PayTrace /oauth/token answer on stdin, prints access_token.
    bench_helper.py curl-config URL TOKEN N K PREFIX
        Prints a curl config (-K) of N POSTs of a sale by_customer to URL,
        round-robin over the vault profiles PREFIX1 .. PREFIXK, each writing
        its HTTP status on a line of its own.
    bench_helper.py invoices FIRST COUNT CUSTOMER,…
        JSON body for the FreshPortal stand-in's POST /_standin/seed: COUNT
        open USD invoices with ids FIRST.., numbers INV-<id>, spread round-robin
        over the given customer ids (the stand-in's default amounts).
    bench_helper.py requests N
        Reads a stand-in's GET /_standin/requests answer on stdin and prints
        one line per method and path (numbers in the path shown as {id}):
        the count, the count per invoice (N invoices) and the statuses.
"""

import collections
import json
import re
import sys


def profiles(count, prefix):
    body = {"customers": [{"customer_id": f"{prefix}{i}", "method": "card",
                           "masked_number": "xxxxxxxxxxxx5439"}
                          for i in range(1, count + 1)]}
    print(json.dumps(body))


def token():
    print(json.load(sys.stdin)["access_token"])


def curl_config(url, bearer, count, customers, prefix):
    out = []
    for i in range(1, count + 1):
        body = json.dumps({"integrator_id": "pt-integrator",
                           "customer_id": f"{prefix}{(i - 1) % customers + 1}",
                           "amount": 1.00, "invoice_id": f"RAW-{i}"})
        out.append(f'url = "{url}"\n'
                   'request = "POST"\n'
                   f'header = "Authorization: Bearer {bearer}"\n'
                   'header = "Content-Type: application/json"\n'
                   f"data = {json.dumps(body)}\n"
                   'max-time = 120\n'
                   'output = "/dev/null"\n'
                   'write-out = "%{http_code}\\n"\n')
    sys.stdout.write("next\n".join(out))


def invoices(first, count, customers):
    owners = [int(c) for c in customers.split(",")]
    body = {"invoices": [{"id": first + i, "number": f"INV-{first + i:06d}",
                          "customer_id": owners[i % len(owners)]}
                         for i in range(count)]}
    print(json.dumps(body))


def requests(invoices):
    log = json.load(sys.stdin).get("requests", [])
    counts = collections.Counter()
    statuses = collections.defaultdict(collections.Counter)
    for entry in log:
        key = (entry["method"], re.sub(r"/\d+", "/{id}", entry["path"]))
        counts[key] += 1
        statuses[key][str(entry.get("status"))] += 1
    for (method, path), count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        per = count / invoices if invoices else 0.0
        codes = " ".join(f"{code}x{n}" for code, n in sorted(statuses[(method, path)].items()))
        print(f"    {method:5} {path:45} {count:7d}  {per:5.2f}/invoice  [{codes}]")


def main(argv):
    if len(argv) >= 2 and argv[1] == "profiles" and len(argv) == 4:
        profiles(int(argv[2]), argv[3])
    elif len(argv) == 2 and argv[1] == "token":
        token()
    elif len(argv) == 7 and argv[1] == "curl-config":
        curl_config(argv[2], argv[3], int(argv[4]), int(argv[5]), argv[6])
    elif len(argv) == 5 and argv[1] == "invoices":
        invoices(int(argv[2]), int(argv[3]), argv[4])
    elif len(argv) == 3 and argv[1] == "requests":
        requests(int(argv[2]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
