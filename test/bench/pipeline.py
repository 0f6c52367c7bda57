#!/usr/bin/env python3
"""Analysis and the plain client of test/bench/pipeline-run (standard library only).

Every time here is a Unix epoch time in seconds (float) of this machine's
clock: the stand-ins' request logs ("received", "answered"), PostgreSQL's
clock_timestamp() and time.time() all read the same clock.

    pipeline.py span DIR SINCE IDS END
        From the request logs in DIR (save_logs in bench_lib.sh): the
        requests for the invoices IDS ("FIRST:COUNT", FreshPortal ids)
        received after SINCE.  Prints "first=… end=… complete=… requests=…":
        the first one's receive time, and END's answer time, END being
        "registration" (the last POST /v1/invoices/{id}/payments answered
        201), "sale" (the last sale answered 200) or "last" (the last request
        for one of the invoices answered); complete counts the invoices that got
        a registration (a sale for END = sale).
    pipeline.py sequences DIR SINCE IDS OUT [CALLS]
        Derives, per invoice, the HTTP requests made for it (in the order
        received; with CALLS, a file of "fpid t0 t1" lines, only those
        received between t0 and t1) and writes them to OUT (JSON) for
        replay.  Prints the sequence most invoices share, and how many
        other requests (tokens, the sync's pages) the logs hold.
    pipeline.py replay SEQ THREADS OUT
        The plain client: makes the requests of SEQ, invoice by invoice, from
        THREADS threads, each with one kept-alive http.client connection per
        stand-in (URLs from FRESHPAY_TEST_FP_URL / FRESHPAY_TEST_PT_URL;
        tokens fetched first, not timed).  Bearer tokens are its own, and a
        PayTrace transaction id freshpay got is replaced by the one the
        client's own sale got.  Writes OUT (JSON: per-invoice durations,
        status mismatches against the log, first and last times).
    pipeline.py calls CALLS
        CALLS: "fpid t0 t1 client_ms status" lines of freshpay_capture calls.
        Prints "p50_ms=… p95_ms=… n=… server_p50_ms=… statuses=…": client_ms,
        and the median of t1 − t0 (the call inside the server).
    pipeline.py durations OUT
        Prints "p50_ms=… p95_ms=… n=… per_invoice=…" of a replay's
        per-invoice durations (per_invoice: requests per invoice).
    pipeline.py start DIR CALLS
        For each call of CALLS, the time from t0 to the first request for
        its invoice either stand-in received.  Prints the calls and
        "p50_ms=… p95_ms=… max_ms=… n=… missing=…".
    pipeline.py gaps DIR CALLS
        Where the calls of CALLS spent their time: the median of each step
        (call → first request, each request's answer → the next request,
        the last answer → the call's return) and of each request's own time.
    pipeline.py memory SAMPLES FROM
        SAMPLES: "epoch captured registered private_kB anon_kB pid shm_kB"
        lines (anon_kB and shm_kB: the parts of private_kB in anonymous
        private mappings and in shared mappings).  Prints
        "base_kb=… end_kb=… growth_kb=… …": private memory at the first
        sample with at least FROM captured, and at the last sample.
    pipeline.py machine DIR
        One line: CPU model, cores, memory, the disk DIR is on.
    pipeline.py table ROWS
        ROWS: tab-separated "case freshpay comparison ratio target met";
        prints them as an aligned table.

Percentiles: p50 is the median; p95 is the nearest rank (the value at
position ceil(0.95·n) of the sorted values).
"""

import collections
import http.client
import json
import math
import os
import queue
import re
import statistics
import sys
import threading
import time
import urllib.parse

INVOICE_PATH = re.compile(r"^/v1/invoices/(\d+)(?:/|$)")
PAYMENT_PATH = re.compile(r"^/v1/payments/(\d+)(?:/|$)")
INVOICE_NUMBER = re.compile(r"INV-\d+")
LONG_NUMBER = re.compile(r"\b\d{6,}\b")
HOP_HEADERS = {"host", "content-length", "connection", "transfer-encoding", "expect",
               "keep-alive", "te", "upgrade"}


# --------------------------------------------------------------------------
# Logs
# --------------------------------------------------------------------------

def load(directory, name):
    with open(os.path.join(directory, name), encoding="utf-8") as handle:
        return json.load(handle)


def parse_ids(spec):
    first, count = spec.split(":")
    return set(range(int(first), int(first) + int(count)))


class Logs:
    """Both stand-ins' request logs, each request mapped to its invoice."""

    def __init__(self, directory, wanted):
        self.entries = []   # (server, entry, fp invoice id or None)
        fp_state = load(directory, "fp_state.json")
        pt_state = load(directory, "pt_state.json")
        self.number_of = {inv["id"]: inv.get("number") for inv in fp_state.get("invoices", [])}
        self.by_number = {number: fpid for fpid, number in self.number_of.items() if number}
        self.payment_invoice = {str(p["id"]): p.get("invoice_id")
                                for p in fp_state.get("payments", [])}
        self.txn_invoice = {}
        self.txns_of = collections.defaultdict(list)
        for txn in pt_state.get("transactions", []):
            fpid = self.by_number.get(txn.get("invoice_id"))
            if fpid is not None:
                self.txn_invoice[str(txn["id"])] = fpid
                self.txns_of[fpid].append(txn["id"])
        for fpid in self.txns_of:
            self.txns_of[fpid].sort()
        for server in ("fp", "pt"):
            for entry in load(directory, f"{server}_requests.json").get("requests", []):
                fpid = self.invoice_of(server, entry)
                self.entries.append((server, entry, fpid if fpid in wanted else None))
        self.entries.sort(key=lambda item: item[1]["received"])

    def invoice_of(self, server, entry):
        path = entry["path"]
        if server == "fp":
            found = INVOICE_PATH.match(path)
            if found:
                return int(found.group(1))
            found = PAYMENT_PATH.match(path)
            if found and found.group(1) in self.payment_invoice:
                return self.payment_invoice[found.group(1)]
            wanted = entry.get("query", {}).get("invoice_id")
            if wanted and wanted[0].isdigit():
                return int(wanted[0])
        text = json.dumps(entry.get("query", {})) + " " + (entry.get("body") or "")
        for number in INVOICE_NUMBER.findall(text):
            if number in self.by_number:
                return self.by_number[number]
        for number in LONG_NUMBER.findall(text):
            if number in self.txn_invoice:
                return self.txn_invoice[number]
        return None


def name_of(server, entry):
    """GET /v1/invoices/{id}, POST pt /v1/transactions/sale/by_customer, …"""
    path = re.sub(r"/\d+", "/{id}", entry["path"])
    query = entry.get("query") or {}
    keys = "?" + "&".join(sorted(query)) if query else ""
    return f"{'FreshPortal' if server == 'fp' else 'PayTrace'} {entry['method']} {path}{keys}"


def is_registration(server, entry):
    return (server == "fp" and entry["method"] == "POST"
            and re.fullmatch(r"/v1/invoices/\d+/payments", entry["path"]) is not None)


def is_money_call(server, entry):
    """A PayTrace request that makes a transaction (not a token, not an export)."""
    path = entry["path"]
    return (server == "pt" and entry["method"] == "POST" and path.startswith("/v1/")
            and "/export/" not in path and not path.startswith("/v1/customer")
            and "/batches/" not in path)


def is_sale(server, entry):
    return server == "pt" and entry["method"] == "POST" and "/sale" in entry["path"]


# --------------------------------------------------------------------------
# span, sequences
# --------------------------------------------------------------------------

def cmd_span(directory, since, ids, end):
    logs = Logs(directory, parse_ids(ids))
    mine = [(s, e, f) for s, e, f in logs.entries if f is not None and e["received"] >= since]
    first = min((e["received"] for _, e, _ in mine), default=None)
    if end == "registration":
        final = [(e, f) for s, e, f in mine if is_registration(s, e) and e["status"] == 201]
    elif end == "sale":
        final = [(e, f) for s, e, f in mine if is_sale(s, e) and e["status"] == 200]
    else:
        final = [(e, f) for s, e, f in mine
                 if is_registration(s, e) and e["status"] == 201]
    done = len({f for _, f in final})
    if end == "last":
        last = max((e["answered"] for _, e, _ in mine if e["answered"]), default=None)
    else:
        last = max((e["answered"] for e, _ in final if e["answered"]), default=None)
    print(f"first={first if first is not None else ''} end={last if last is not None else ''} "
          f"complete={done} requests={len(mine)}")


def read_calls(path):
    calls = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) >= 3:
                calls.append(fields)
    return calls


def cmd_sequences(directory, since, ids, out, calls_path=None):
    wanted = parse_ids(ids)
    logs = Logs(directory, wanted)
    windows = None
    if calls_path:
        windows = {int(f[0]): (float(f[1]), float(f[2])) for f in read_calls(calls_path)}
    per_invoice = collections.defaultdict(list)
    others = collections.Counter()
    for server, entry, fpid in logs.entries:
        if entry["received"] < since:
            continue
        if fpid is None or (windows is not None and not (
                fpid in windows and windows[fpid][0] <= entry["received"] <= windows[fpid][1])):
            others[name_of(server, entry)] += 1
            continue
        per_invoice[fpid].append((server, entry))
    invoices = []
    patterns = collections.Counter()
    for fpid in sorted(per_invoice):
        requests = [{"server": s, "method": e["method"], "path": e["path"],
                     "query": e.get("query") or {}, "headers": e.get("headers") or {},
                     "body": e.get("body") or "", "status": e.get("status")}
                    for s, e in per_invoice[fpid]]
        patterns[tuple(name_of(s, e) for s, e in per_invoice[fpid])] += 1
        invoices.append({"id": fpid, "number": logs.number_of.get(fpid),
                         "old_txns": logs.txns_of.get(fpid, []), "requests": requests})
    with open(out, "w", encoding="utf-8") as handle:
        json.dump({"invoices": invoices}, handle)
    total = sum(len(inv["requests"]) for inv in invoices)
    print(f"  {len(invoices)} invoices, {total} requests for them "
          f"({total / len(invoices) if invoices else 0:.2f} per invoice)")
    for rank, (pattern, count) in enumerate(patterns.most_common(3)):
        print(f"  {'sequence' if rank == 0 else 'also'} of {count} invoice(s):")
        for number, name in enumerate(pattern, 1):
            print(f"    {number}. {name}")
    if len(patterns) > 3:
        print(f"  … and {len(patterns) - 3} other sequence(s)")
    if others:
        print("  other requests in the logs (not for one of these invoices"
              f"{' within its call' if windows is not None else ''}):")
        for name, count in others.most_common(8):
            print(f"    {count:6d} × {name}")


# --------------------------------------------------------------------------
# The plain client
# --------------------------------------------------------------------------

class Endpoint:
    def __init__(self, url):
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port = parsed.hostname, parsed.port or 80

    def connect(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=120)


def fetch_tokens(endpoints):
    fp = endpoints["fp"].connect()
    fp.request("POST", "/v1/auth", body=json.dumps(
        {"type": "api", "username": os.environ.get("FRESHPAY_TEST_SECRET", "fp-test-key")}),
        headers={"Content-Type": "application/json"})
    reply = fp.getresponse()
    fp_token = json.loads(reply.read())["token"]
    fp.close()
    pt = endpoints["pt"].connect()
    pt.request("POST", "/oauth/token", body=urllib.parse.urlencode(
        {"grant_type": "password", "username": "pt-user",
         "password": os.environ.get("FRESHPAY_TEST_PT_PASSWORD", "pt-pass")}),
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    reply = pt.getresponse()
    pt_token = json.loads(reply.read())["access_token"]
    pt.close()
    return {"fp": fp_token, "pt": pt_token}


class Worker(threading.Thread):
    def __init__(self, jobs, endpoints, tokens, results):
        super().__init__(daemon=True)
        self.jobs, self.endpoints, self.tokens, self.results = jobs, endpoints, tokens, results
        self.conns = {}

    def send(self, server, method, target, body, headers):
        for attempt in (1, 2):
            conn = self.conns.get(server)
            if conn is None:
                conn = self.conns[server] = self.endpoints[server].connect()
            try:
                conn.request(method, target, body=body, headers=headers)
                reply = conn.getresponse()
                return reply.status, reply.read()
            except (http.client.HTTPException, ConnectionError, OSError):
                conn.close()
                self.conns.pop(server, None)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def run(self):
        while True:
            invoice = self.jobs.get()
            if invoice is None:
                return
            self.results.append(self.one(invoice))

    def one(self, invoice):
        swap = {}
        money = 0
        mismatches = errors = 0
        first = time.time()
        started = time.perf_counter()
        for request in invoice["requests"]:
            server = request["server"]
            path, body = request["path"], request["body"]
            query = {name: list(values) for name, values in request["query"].items()}
            for old, new in swap.items():
                path = path.replace(old, new)
                body = body.replace(old, new)
                query = {name: [v.replace(old, new) for v in values]
                         for name, values in query.items()}
            target = path + ("?" + urllib.parse.urlencode(query, doseq=True) if query else "")
            headers = {name: value for name, value in request["headers"].items()
                       if name.lower() not in HOP_HEADERS}
            if any(name.lower() == "authorization" for name in headers):
                headers = {name: value for name, value in headers.items()
                           if name.lower() != "authorization"}
                headers["Authorization"] = f"Bearer {self.tokens[server]}"
            try:
                status, answer = self.send(server, request["method"], target,
                                           body.encode("utf-8") if body else None, headers)
            except (http.client.HTTPException, ConnectionError, OSError):
                errors += 1
                continue
            if status != request["status"]:
                mismatches += 1
            if is_money_call(server, request) and status == 200:
                try:
                    new_id = json.loads(answer).get("transaction_id")
                except ValueError:
                    new_id = None
                old_ids = invoice.get("old_txns", [])
                if new_id is not None and money < len(old_ids):
                    swap[str(old_ids[money])] = str(new_id)
                money += 1
        return {"id": invoice["id"], "seconds": time.perf_counter() - started,
                "first": first, "last": time.time(), "mismatches": mismatches,
                "errors": errors, "requests": len(invoice["requests"])}


def cmd_replay(seq_path, threads, out):
    with open(seq_path, encoding="utf-8") as handle:
        invoices = json.load(handle)["invoices"]
    endpoints = {"fp": Endpoint(os.environ["FRESHPAY_TEST_FP_URL"]),
                 "pt": Endpoint(os.environ["FRESHPAY_TEST_PT_URL"])}
    tokens = fetch_tokens(endpoints)
    jobs = queue.Queue()
    for invoice in invoices:
        jobs.put(invoice)
    threads = max(1, min(threads, len(invoices) or 1))
    results = []
    workers = [Worker(jobs, endpoints, tokens, results) for _ in range(threads)]
    for _ in workers:
        jobs.put(None)
    started = time.time()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    ended = time.time()
    summary = {"threads": threads, "invoices": len(results),
               "requests": sum(r["requests"] for r in results),
               "mismatches": sum(r["mismatches"] for r in results),
               "errors": sum(r["errors"] for r in results),
               "start": started, "end": ended,
               "durations": [r["seconds"] for r in results]}
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(summary, handle)
    print(f"  plain client: {summary['invoices']} invoices, {summary['requests']} requests "
          f"from {threads} thread(s) in {ended - started:.3f} s; "
          f"{summary['mismatches']} answers with another status than freshpay got, "
          f"{summary['errors']} failed")


# --------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------

def p95(values):
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def cmd_calls(path):
    calls = read_calls(path)
    ms = [float(f[3]) for f in calls if len(f) >= 4]
    statuses = collections.Counter(f[4] if len(f) >= 5 else "?" for f in calls)
    if not ms:
        print("p50_ms= p95_ms= n=0 statuses=")
        return
    server = [(float(f[2]) - float(f[1])) * 1000 for f in calls if len(f) >= 4]
    print(f"p50_ms={statistics.median(ms):.3f} p95_ms={p95(ms):.3f} n={len(ms)} "
          f"server_p50_ms={statistics.median(server):.3f} "
          f"statuses={','.join(f'{k}:{v}' for k, v in sorted(statuses.items()))}")


def cmd_durations(path):
    with open(path, encoding="utf-8") as handle:
        replay = json.load(handle)
    durations = [s * 1000 for s in replay["durations"]]
    if not durations:
        print("p50_ms= p95_ms= n=0")
        return
    print(f"p50_ms={statistics.median(durations):.3f} p95_ms={p95(durations):.3f} "
          f"n={len(durations)} per_invoice={replay['requests'] / len(durations):.2f}")


def cmd_start(directory, calls_path):
    calls = read_calls(calls_path)
    ids = {int(f[0]) for f in calls}
    logs = Logs(directory, ids)
    first_seen = {}
    for server, entry, fpid in logs.entries:
        if fpid is not None:
            first_seen.setdefault(fpid, []).append((entry["received"], server, entry))
    delays, missing = [], 0
    for fields in calls:
        fpid, t0 = int(fields[0]), float(fields[1])
        later = [item for item in first_seen.get(fpid, []) if item[0] >= t0 - 0.5]
        if not later:
            missing += 1
            print(f"    invoice {fpid}: no request for it in the logs")
            continue
        received, server, entry = min(later, key=lambda item: item[0])
        delays.append((received - t0) * 1000)
        print(f"    invoice {fpid}: {delays[-1]:8.3f} ms to {name_of(server, entry)}")
    if delays:
        print(f"p50_ms={statistics.median(delays):.3f} p95_ms={p95(delays):.3f} "
              f"max_ms={max(delays):.3f} n={len(delays)} missing={missing}")
    else:
        print(f"p50_ms= p95_ms= max_ms= n=0 missing={missing}")


def cmd_gaps(directory, calls_path):
    """Where a call's time goes: the median of each step between the call's
    start, the requests for its invoice made during it, and its return."""
    calls = read_calls(calls_path)
    windows = {int(f[0]): (float(f[1]), float(f[2])) for f in calls}
    logs = Logs(directory, set(windows))
    mine = collections.defaultdict(list)
    for server, entry, fpid in logs.entries:
        if fpid is not None and windows[fpid][0] <= entry["received"] <= windows[fpid][1]:
            mine[fpid].append((server, entry))
    steps = collections.defaultdict(list)
    order = []
    for fpid, (t0, t1) in windows.items():
        previous, before = t0, "the call"
        for server, entry in mine[fpid]:
            name = name_of(server, entry)
            for key, value in ((f"{before} → {name}", entry["received"] - previous),
                               (f"  {name}, received → answered",
                                (entry["answered"] or entry["received"]) - entry["received"])):
                if key not in steps:
                    order.append(key)
                steps[key].append(value * 1000)
            previous, before = entry["answered"] or entry["received"], name
        key = f"{before} → the call returns"
        if key not in steps:
            order.append(key)
        steps[key].append((t1 - previous) * 1000)
    for key in order:
        values = steps[key]
        if len(values) * 10 >= len(windows):
            print(f"    {statistics.median(values):8.3f} ms  {key}  (n = {len(values)})")


def cmd_memory(path, start_at):
    samples = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) >= 5:
                samples.append([float(fields[0])] + [int(x) for x in fields[1:5]]
                               + [fields[5] if len(fields) > 5 else "?"]
                               + [int(fields[6]) if len(fields) > 6 else 0])
    if not samples:
        print("base_kb= end_kb= growth_kb= samples=0")
        return
    base = next((s for s in samples if s[1] >= start_at), None)
    end = samples[-1]
    if base is None:
        print(f"base_kb= end_kb={end[3]} growth_kb= samples={len(samples)} "
              f"end_captured={end[1]}")
        return
    print(f"base_kb={base[3]} end_kb={end[3]} growth_kb={end[3] - base[3]} "
          f"base_anon_kb={base[4]} end_anon_kb={end[4]} anon_growth_kb={end[4] - base[4]} "
          f"base_captured={base[1]} end_captured={end[1]} end_registered={end[2]} "
          f"peak_kb={max(s[3] for s in samples)} samples={len(samples)} "
          f"seconds={end[0] - base[0]:.1f} pids={len({s[5] for s in samples})} "
          f"base_shm_kb={base[6]} end_shm_kb={end[6]} shm_growth_kb={end[6] - base[6]}")


# --------------------------------------------------------------------------
# The machine, the table
# --------------------------------------------------------------------------

def cmd_machine(directory):
    model, cores = "?", os.cpu_count()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = "?"
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    disk = "?"
    best = ""
    try:
        real = os.path.realpath(directory)
        with open("/proc/self/mounts", encoding="utf-8") as handle:
            for line in handle:
                device, mount, fstype = line.split()[:3]
                if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                    best, disk = mount, f"{device} ({fstype}, mounted on {mount})"
                    name = os.path.basename(device)
                    rotational = f"/sys/block/{name}/queue/rotational"
                    if os.path.exists(rotational):
                        with open(rotational, encoding="utf-8") as rot:
                            disk += ", rotational" if rot.read().strip() == "1" else ", not rotational"
    except OSError:
        pass
    load = " ".join(open("/proc/loadavg", encoding="utf-8").read().split()[:3])
    print(f"CPU {model}, {cores} cores; memory {memory}; disk {disk}; load average {load}")


def cmd_table(path):
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                rows.append(line.rstrip("\n").split("\t"))
    header = ["case", "freshpay", "bound / comparison", "ratio", "target", "met"]
    rows = [header] + rows
    widths = [max(len(row[i]) if i < len(row) else 0 for row in rows) for i in range(len(header))]
    for number, row in enumerate(rows):
        print("  " + "  ".join((row[i] if i < len(row) else "").ljust(widths[i])
                               for i in range(len(header))).rstrip())
        if number == 0:
            print("  " + "  ".join("-" * w for w in widths))


def main(argv):
    commands = {
        "span": (4, lambda a: cmd_span(a[0], float(a[1]), a[2], a[3])),
        "sequences": (4, lambda a: cmd_sequences(a[0], float(a[1]), a[2], a[3],
                                                 a[4] if len(a) > 4 else None)),
        "replay": (3, lambda a: cmd_replay(a[0], int(a[1]), a[2])),
        "calls": (1, lambda a: cmd_calls(a[0])),
        "durations": (1, lambda a: cmd_durations(a[0])),
        "start": (2, lambda a: cmd_start(a[0], a[1])),
        "gaps": (2, lambda a: cmd_gaps(a[0], a[1])),
        "memory": (2, lambda a: cmd_memory(a[0], int(a[1]))),
        "machine": (1, lambda a: cmd_machine(a[0])),
        "table": (1, lambda a: cmd_table(a[0])),
    }
    if len(argv) < 2 or argv[1] not in commands:
        sys.exit(__doc__)
    need, run = commands[argv[1]]
    args = argv[2:]
    if len(args) < need or len(args) > need + (1 if argv[1] == "sequences" else 0):
        sys.exit(__doc__)
    run(args)


if __name__ == "__main__":
    main(sys.argv)
