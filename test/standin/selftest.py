#!/usr/bin/env python3
"""Self-test of the FreshPortal and PayTrace stand-ins; prints TAP, exits 1 on failure.

Starts each stand-in in a subprocess on an ephemeral port (and once more over
TLS with a throwaway certificate if `openssl` is on PATH), then checks the
main behaviours through http.client: auth, paging, 204, every fault action,
the PayTrace state machine and error codes, exports, batches, card brands by
BIN (include_bin, Level 3 per brand and its line items), customer/export,
replay of the recorded fixtures byte for byte, chunked framing, and clean
shutdown.
Standard library only. Usage: python3 test/standin/selftest.py
"""

import datetime
import http.client
import json
import pathlib
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal

HERE = pathlib.Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures" / "paytrace-recorded"
CASSETTES = pathlib.Path("/work/shared/research/paytrace-recorded")
US_DATETIME = re.compile(r"^[1-9]\d?/[1-9]\d?/\d{4} [1-9]\d?:\d{2}:\d{2} (AM|PM)$")


# --------------------------------------------------------------------------
# TAP
# --------------------------------------------------------------------------

class Tap:
    def __init__(self):
        self.count = 0
        self.failed = 0

    def ok(self, condition, name, detail=None):
        self.count += 1
        print(f"{'ok' if condition else 'not ok'} {self.count} - {name}", flush=True)
        if not condition:
            self.failed += 1
            if detail is not None:
                for line in str(detail).splitlines() or [""]:
                    print(f"#   {line}")
        return condition

    def eq(self, got, expected, name):
        return self.ok(got == expected, name, f"got:      {got!r}\nexpected: {expected!r}")

    def skip(self, name, reason):
        self.count += 1
        print(f"ok {self.count} - {name} # SKIP {reason}")

    def finish(self):
        print(f"1..{self.count}")
        if self.failed:
            print(f"# {self.failed} of {self.count} failed")
        return 1 if self.failed else 0


T = Tap()


# --------------------------------------------------------------------------
# Servers and clients
# --------------------------------------------------------------------------

class Server:
    """One stand-in subprocess on an ephemeral port."""

    def __init__(self, script, *extra, tls=None):
        self.workdir = tempfile.mkdtemp(prefix="standin-selftest-")
        self.port_file = pathlib.Path(self.workdir, "port")
        self.log = open(pathlib.Path(self.workdir, "log"), "w+")
        args = [sys.executable, "-B", str(HERE / script), "--port", "0",
                "--port-file", str(self.port_file), *extra]
        if tls:
            args += ["--tls-cert", tls[0], "--tls-key", tls[1]]
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while not self.port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{script} did not start:\n{self.log_text()}")
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())

    def log_text(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        """SIGTERM; returns the exit code (None if it had to be killed)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return None
        self.log.close()
        return self.process.returncode

    def cleanup(self):
        shutil.rmtree(self.workdir, ignore_errors=True)


class Reply:
    def __init__(self, response, raw):
        self.status = response.status
        self.headers = response.headers
        self.raw = raw
        self.chunked = response.chunked

    @property
    def json(self):
        return json.loads(self.raw, parse_float=Decimal) if self.raw else None


class Client:
    """A keep-alive http.client connection that reconnects after a drop."""

    def __init__(self, port, context=None, token=None):
        self.port, self.context, self.token = port, context, token
        self.headers = {}           # sent with every call; a call's None drops one
        self.conn = None

    def connection(self):
        if self.conn is None:
            if self.context:
                self.conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=30,
                                                        context=self.context)
            else:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        return self.conn

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def call(self, method, path, body=None, headers=None, token=None):
        headers = {name: value for name, value in {**self.headers, **(headers or {})}.items()
                   if value is not None}
        token = self.token if token is None else token
        if token and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {token}"
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            headers.setdefault("Content-Type", "application/json")
        data = body.encode("utf-8") if isinstance(body, str) else body
        conn = self.connection()
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            return Reply(response, response.read())
        except (http.client.HTTPException, ConnectionError, ssl.SSLError):
            self.close()
            raise

    def get(self, path, **kw):
        return self.call("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.call("POST", path, body if body is not None else {}, **kw)


def dropped(client, method, path, body=None):
    """True if the server closed the connection without any answer."""
    try:
        client.call(method, path, body)
    except (http.client.RemoteDisconnected, ConnectionError, http.client.BadStatusLine):
        return True
    return False


def admin(client, path, body=None):
    reply = client.call("POST" if body is not None else "GET", "/_standin/" + path, body,
                        token="")
    assert reply.status == 200, (path, reply.status, reply.raw)
    return reply.json


# --------------------------------------------------------------------------
# FreshPortal
# --------------------------------------------------------------------------

PAYMENT = {"amount": "590.00", "currency": "USD", "payment_date": "2026-09-25",
           "method": "card", "provider": "paytrace", "provider_transaction_id": "125391271",
           "provider_status": "captured"}


def freshportal_auth(c):
    ok = c.post("/v1/auth", {"username": "fp-test-key", "type": "api"})
    T.eq(ok.status, 200, "fp: auth with the API key answers 200")
    token = ok.json["token"]
    T.ok(re.fullmatch(r"fptok_[0-9a-f]{32}", token), "fp: token looks like fptok_<32 hex>")
    bad = c.post("/v1/auth", {"username": "wrong", "type": "api"})
    T.eq((bad.status, bad.json), (401, {"message": "Unauthenticated."}), "fp: wrong key -> 401")
    T.eq(c.post("/v1/auth", {"username": "fp-test-key", "type": "user"}).status, 401,
         "fp: wrong type -> 401")
    T.eq(c.get("/v1/customers").status, 401, "fp: no bearer token -> 401")
    T.eq(c.get("/v1/customers", headers={"Authorization": f"bearer {token}"}).status, 401,
         "fp: lowercase 'bearer' -> 401")
    return token


def freshportal_paging(c):
    admin(c, "seed", {"customers": [{"id": i} for i in (1, 2, 3)],
                      "invoices": [{"id": 100 + i, "customer_id": 1,
                                    "amount_excl_vat": "1000.00", "vat_amount": "90.00"}
                                   for i in range(5)]})
    page1 = c.get("/v1/invoices?per_page=2&page=1")
    meta = page1.json["meta"]
    T.eq((page1.status, meta["total"], meta["last_page"], len(page1.json["data"])),
         (200, 5, 3, 2), "fp: page 1 of 3 with per_page=2")
    T.ok(page1.headers["Content-Length"] and not page1.chunked,
         "fp: answers carry Content-Length, not chunked")
    T.ok(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", meta["server_time"]),
         "fp: server_time has the [C] timestamp format")
    ids = [row["id"] for p in (1, 2, 3)
           for row in c.get(f"/v1/invoices?per_page=2&page={p}").json["data"]]
    T.eq(ids, [100, 101, 102, 103, 104], "fp: pages ordered by (mutation_date_time, id)")
    beyond = c.get("/v1/invoices?per_page=2&page=4")
    T.eq((beyond.status, beyond.raw), (204, b""), "fp: page beyond last_page -> 204 no body")
    admin(c, "config", {"empty_as_204": False})
    beyond = c.get("/v1/invoices?per_page=2&page=4")
    T.eq((beyond.status, beyond.json["data"]), (200, []), "fp: empty_as_204 off -> 200 data []")
    admin(c, "config", {"empty_as_204": True})
    third = c.get("/v1/invoices?per_page=2&page=2").json["data"][0]
    cursor = third["mutation_date_time"]
    since = c.get("/v1/invoices?mutation_datetime=" + cursor)
    T.eq([r["id"] for r in since.json["data"]], [102, 103, 104],
         "fp: mutation_datetime cursor is inclusive")
    T.eq(c.get("/v1/invoices?mutation_datetime=2999-01-01").status, 204,
         "fp: nothing changed since the cursor -> 204")
    T.eq(len(c.get("/v1/invoices?mutation_datetime=2000-01-01").json["data"]), 5,
         "fp: date-only cursor accepted")
    offset = c.get("/v1/invoices?mutation_datetime=2000-01-01T00:00:00.5%2B00:00")
    T.eq(offset.status, 200, "fp: ISO cursor with fraction and +00:00 accepted")
    bad = c.get("/v1/invoices?mutation_datetime=2026-13-45")
    T.ok(bad.status == 422 and "mutation_datetime" in bad.json["errors"],
         "fp: invalid cursor -> 422 errors.mutation_datetime", bad.raw)
    T.eq(c.get("/v1/invoices?mutation_datetime=2026-01-01T00:00:00+00:00").status, 422,
         "fp: unescaped '+' in the cursor -> 422")
    T.eq(c.get("/v1/invoices?per_page=1001").status, 422, "fp: per_page above max -> 422")
    T.eq([r["id"] for r in c.get("/v1/invoices?number=INV-000103").json["data"]], [103],
         "fp: ?number= filter")
    T.eq(c.get("/v1/invoices/999").json, {"message": "Not found"}, "fp: unknown invoice 404")
    invoice = c.get("/v1/invoices/100").json
    T.eq((invoice["amount_incl_vat"], invoice["open_amount"], invoice["status"],
          invoice["currency"]), ("1090.00", "1090.00", "open", "USD"),
         "fp: seeded invoice amounts derived as 2-decimal strings")
    sock = c.conn.sock
    c.get("/v1/customers/1")
    T.ok(sock is not None and c.conn.sock is sock, "fp: keep-alive connection reused")


def freshportal_seeding(c):
    stored = admin(c, "seed", {"invoices": [{"id": 200, "raw": True,
                                             "amount_incl_vat": "12,50"}]})
    T.eq(stored["invoices"][0]["amount_incl_vat"], "12,50", "fp: raw seed stored verbatim")
    T.eq(c.get("/v1/invoices/200").json["amount_incl_vat"], "12,50",
         "fp: raw value served verbatim")
    before = c.get("/v1/invoices/101").json
    after = admin(c, "invoices/101", {"amount_paid": "1090.00"})
    T.eq((after["open_amount"], after["status"]), ("0.00", "paid"),
         "fp: admin modify recomputes open_amount and status")
    T.ok(after["mutation_date_time"] > before["mutation_date_time"],
         "fp: admin modify bumps mutation_date_time")
    generated = admin(c, "generate", {"customers": 3, "invoices": 250,
                                      "start_customer_id": 1000, "start_invoice_id": 5000})
    T.eq(generated["invoice_ids"], [5000, 5249], "fp: generate reports the id range")
    ids = set()
    for page in (1, 2, 3):
        rows = c.get(f"/v1/invoices?customer_id=1001&per_page=40&page={page}").json["data"]
        ids.update(r["id"] for r in rows)
    T.eq(len(ids), 83, "fp: generated invoices filter by customer_id across pages")


def freshportal_payments(c):
    admin(c, "seed", {"invoices": [
        {"id": 300, "customer_id": 1, "amount_excl_vat": "1000.00", "vat_amount": "90.00",
         "amount_paid": "500.00"},
        {"id": 301, "type": "credit_note", "amount_incl_vat": "-50.00"},
        {"id": 302, "status": "concept"},
        {"id": 303, "currency": "EUR"}]})
    paid = c.post("/v1/invoices/300/payments", PAYMENT)
    T.eq(paid.status, 201, "fp: register payment -> 201")
    T.eq((paid.json["payment"]["id"], paid.json["payment"]["status"],
          paid.json["invoice"]["open_amount"], paid.json["invoice"]["status"]),
         (7001, "registered", "0.00", "paid"), "fp: payment 7001 pays the invoice off")
    for invoice_id, body, field, name in (
            (300, PAYMENT, "amount", "overpayment"),
            (303, PAYMENT, "currency", "currency mismatch"),
            (301, PAYMENT, "invoice", "credit note"),
            (302, PAYMENT, "invoice", "concept invoice"),
            (303, {**PAYMENT, "currency": "EUR", "provider_status": "authorized"},
             "provider_status", "provider_status not captured"),
            (303, {**PAYMENT, "currency": "EUR", "amount": "0"}, "amount", "zero amount")):
        reply = c.post(f"/v1/invoices/{invoice_id}/payments", body)
        T.ok(reply.status == 422 and field in reply.json["errors"],
             f"fp: {name} -> 422 errors.{field}", reply.raw)
    T.eq(c.post("/v1/invoices/9999/payments", PAYMENT).status, 404, "fp: unknown invoice 404")
    found = c.get("/v1/payments?provider_transaction_id=125391271").json["data"]
    T.eq([p["id"] for p in found], [7001], "fp: payments findable by provider_transaction_id")
    T.eq(c.get("/v1/invoices/300/payments").json["data"][0]["id"], 7001,
         "fp: invoice payments list")
    reverse = {"reason": "voided", "provider_transaction_id": "125391271", "date": "2026-09-26"}
    reversed_ = c.post("/v1/payments/7001/reverse", reverse)
    T.eq((reversed_.status, reversed_.json["payment"]["status"],
          reversed_.json["invoice"]["open_amount"], reversed_.json["invoice"]["status"]),
         (200, "reversed", "590.00", "partially_paid"), "fp: reverse restores the open amount")
    T.eq(c.post("/v1/payments/7001/reverse", reverse).status, 422, "fp: reversing twice -> 422")
    first = c.post("/v1/invoices/303/payments", {**PAYMENT, "currency": "EUR", "amount": "10"})
    second = c.post("/v1/invoices/303/payments", {**PAYMENT, "currency": "EUR", "amount": "10"})
    T.eq((first.status, second.status), (201, 201), "fp: duplicates accepted by default")
    deleted = admin(c, "payments/%d/delete" % second.json["payment"]["id"], {})
    T.eq((deleted["deleted"]["id"], c.get("/v1/invoices/303").json["amount_paid"],
          [p["id"] for p in c.get("/v1/payments?provider_transaction_id=125391271").json["data"]]),
         (second.json["payment"]["id"], "10.00", [7001, first.json["payment"]["id"]]),
         "fp: /_standin/payments/{id}/delete removes a registration and its amount")
    T.eq(c.call("POST", "/_standin/payments/9999/delete", {}, token="").status, 404,
         "fp: deleting an unknown payment -> 404")
    admin(c, "config", {"dedupe_payments": True})
    third = c.post("/v1/invoices/303/payments", {**PAYMENT, "currency": "EUR", "amount": "10"})
    T.ok(third.status == 409 and third.json["payment"]["id"] == first.json["payment"]["id"],
         "fp: dedupe_payments -> 409 with the existing payment", third.raw)


def fault_checks(c, prefix, path, body, state_probe, method="POST"):
    """Each fault action on one endpoint; state_probe() tells whether it processed."""
    def rules(*specs):
        admin(c, "faults", {"rules": list(specs)})

    rules({"path": path, "action": "status", "status": 503, "body": '{"message":"down"}',
           "headers": {"Retry-After": "2"}})
    reply = c.call(method, path, body)
    T.eq((reply.status, reply.headers["Retry-After"], reply.raw),
         (503, "2", b'{"message":"down"}'), f"{prefix}: status fault 503 with Retry-After")
    T.ok(c.call(method, path, body).status < 300, f"{prefix}: fault spent after times=1")
    rules({"path": path, "action": "malformed"})
    reply = c.call(method, path, body)
    try:
        json.loads(reply.raw)
        parsed = True
    except ValueError:
        parsed = False
    T.ok(reply.status == 200 and not parsed, f"{prefix}: malformed JSON body")
    rules({"path_prefix": path[:4], "action": "oversize", "bytes": 300000})
    reply = c.call(method, path, body)
    T.ok(len(reply.raw) >= 300000 and json.loads(reply.raw)["data"],
         f"{prefix}: oversize body is valid JSON of >= 300000 bytes")
    rules({"path": path, "action": "delay", "seconds": 0.6})
    started = time.monotonic()
    reply = c.call(method, path, body)
    T.ok(time.monotonic() - started >= 0.55 and reply.status < 300,
         f"{prefix}: delay fault then normal answer")
    rules({"path": path, "action": "close_before"})
    before = state_probe()
    T.ok(dropped(c, method, path, body), f"{prefix}: close_before drops the connection")
    T.eq(state_probe(), before, f"{prefix}: close_before did not process the request")
    rules({"path": path, "action": "close_after", "delay": 0.1})
    T.ok(dropped(c, method, path, body), f"{prefix}: close_after drops the connection")
    T.ok(state_probe() != before, f"{prefix}: close_after processed the request")
    rules({"method": method, "path": path, "action": "status", "status": 500, "skip": 1,
           "times": 2})
    statuses = [c.call(method, path, body).status for _ in range(4)]
    T.eq([s >= 500 for s in statuses], [False, True, True, False],
         f"{prefix}: skip=1 times=2 hits the 2nd and 3rd request")
    described = admin(c, "faults")["rules"][0]
    T.eq((described["matched"], described["applied"], described["spent"]), (3, 2, True),
         f"{prefix}: GET faults shows the counters")
    rules()
    log = admin(c, "requests")["requests"]
    faults = [entry["fault"] for entry in log if entry["path"] == path]
    T.ok({"status", "malformed", "delay", "close_before", "close_after"} <= set(faults),
         f"{prefix}: request log names the injected faults")
    drops = [entry["status"] for entry in log if entry["fault"] in ("close_before",
                                                                     "close_after")]
    T.eq(drops, [None, None], f"{prefix}: dropped requests are logged with status null")
    T.ok(all(not e["path"].startswith("/_standin/") for e in log),
         f"{prefix}: admin requests are not logged")


def random_fault_checks(c, prefix, path, body, state_probe, processed_status, method="POST"):
    """Seeded random faults (probability, seed) and the two *_after actions."""
    def rules(specs, **extra):
        return admin(c, "faults", {"rules": specs, **extra})

    def statuses(count):
        return [c.call(method, path, body).status for _ in range(count)]

    chance = {"path": path, "action": "status", "status": 503, "probability": 0.5,
              "times": -1, "name": "coin"}
    answer = rules([chance], seed=4242)
    T.eq((answer["seed"], answer["rules"][0]["passed"]), (4242, 0),
         f"{prefix}: POST faults with a seed shows the seed and a passed counter")
    first = statuses(24)
    described = admin(c, "faults")
    T.ok(0 < first.count(503) < 24 and described["draws"] == 24
         and described["rules"][0]["applied"] + described["rules"][0]["passed"] == 24,
         f"{prefix}: probability 0.5 faults some requests, not all", first)
    rules([chance], seed=4242)
    T.eq(statuses(24), first, f"{prefix}: the same seed replays the same faults")
    rules([chance], seed=7)
    T.ok(statuses(24) != first, f"{prefix}: another seed gives other faults")
    rules([{**chance, "probability": 0}])
    T.ok(503 not in statuses(5), f"{prefix}: probability 0 never applies")
    rules([{**chance, "probability": 0.3}, {"path": path, "action": "status", "status": 429}])
    got = statuses(3)
    T.ok(429 in got, f"{prefix}: a request a random rule lets through meets the next rule", got)
    log = admin(c, "requests")["requests"][-3:]
    T.ok(all(e["fault_name"] == ("coin" if e["status"] == 503 else None) for e in log),
         f"{prefix}: the request log names the rule that claimed a request")
    # body_match: only requests whose JSON body fields match (re.search).
    field, value = next((k, v) for k, v in body.items() if isinstance(v, str) and v)
    rules([{"path": path, "action": "status", "status": 503, "times": -1,
            "body_match": {field: "^" + re.escape(value) + "$"}}])
    other = {**body, field: value + "-other"}
    T.eq((c.call(method, path, body).status, c.call(method, path, other).status == 503),
         (503, False), f"{prefix}: body_match claims a request whose {field} matches, not another")
    rules([{"path": path, "action": "status", "status": 503, "body_match": {"no_such_field": "."}}])
    T.ok(c.call(method, path, body).status != 503, f"{prefix}: body_match on a field the body lacks never matches")
    for bad, why in (({"rules": [{**chance, "probability": 1.5}]}, "probability 1.5"),
                     ({"rules": [], "seed": "x"}, "a seed that is not an integer"),
                     ({"rules": [{**chance, "body_match": {field: "("}}]}, "a body_match that is no regular expression"),
                     ({"rules": [{**chance, "body_match": []}]}, "a body_match that is not an object")):
        reply = c.call("POST", "/_standin/faults", bad, token="")
        T.eq(reply.status, 400, f"{prefix}: {why} is refused with 400")
    rules([{"path": path, "action": "malformed_after"}])
    before = state_probe()
    reply = c.call(method, path, body)
    try:
        json.loads(reply.raw)
        parsed = True
    except ValueError:
        parsed = False
    T.ok(reply.status == processed_status and not parsed,
         f"{prefix}: malformed_after answers {processed_status} with a truncated body",
         (reply.status, reply.raw))
    T.ok(state_probe() != before, f"{prefix}: malformed_after processed the request")
    rules([{"path": path, "action": "delay_after", "seconds": 1.0}])
    before = state_probe()
    slow = Client(c.port, c.context, c.token)
    slow.headers = c.headers
    outcome = {}

    def call_slowly():
        started = time.monotonic()
        outcome["status"] = slow.call(method, path, body).status
        outcome["took"] = time.monotonic() - started
    worker = threading.Thread(target=call_slowly)
    worker.start()
    time.sleep(0.5)
    during = state_probe()
    worker.join()
    slow.close()
    T.ok(during != before, f"{prefix}: delay_after has processed the request before it answers")
    T.ok(outcome.get("status") == processed_status and outcome.get("took", 0) >= 0.95,
         f"{prefix}: delay_after answers normally, seconds later", outcome)
    rules([])


def concurrency_check(c):
    """A delayed request holds no lock: another connection is answered meanwhile."""
    admin(c, "faults", {"rules": [{"path": "/v1/customers/1", "action": "delay",
                                   "seconds": 1.0}]})
    slow = Client(c.port, c.context, c.token)
    worker = threading.Thread(target=slow.get, args=("/v1/customers/1",))
    worker.start()
    time.sleep(0.2)
    started = time.monotonic()
    fast = c.get("/v1/customers/2")
    elapsed = time.monotonic() - started
    worker.join()
    slow.close()
    admin(c, "faults", {"rules": []})
    T.ok(fast.status == 200 and elapsed < 0.5, "fp: a delayed request does not block others",
         f"took {elapsed:.2f}s")


def freshportal_request_delay(c):
    """request_delay slows every API call but /v1/auth, side by side; the log
    has each request's receive and answer times."""
    admin(c, "config", {"request_delay": 0.4})
    admin(c, "requests/clear", {})
    started = time.monotonic()
    T.eq(c.post("/v1/auth", {"username": "fp-test-key", "type": "api"}).status, 200,
         "fp: request_delay: auth still answers")
    T.ok(time.monotonic() - started < 0.3, "fp: request_delay leaves /v1/auth undelayed")
    other = Client(c.port, c.context, c.token)
    worker = threading.Thread(target=other.get, args=("/v1/customers/2",))
    started = time.monotonic()
    worker.start()
    reply = c.get("/v1/customers/1")
    worker.join()
    elapsed = time.monotonic() - started
    other.close()
    T.ok(reply.status == 200 and 0.38 <= elapsed < 0.75,
         "fp: request_delay delays API calls, two of them side by side", f"took {elapsed:.2f}s")
    admin(c, "config", {"request_delay": 0.0})
    # "answered" is stamped after the last byte is written, so a client can
    # read its answer a moment before the stand-in stamps it: wait for it
    deadline = time.monotonic() + 2.0
    log = admin(c, "requests")["requests"]
    while any(e["answered"] is None for e in log) and time.monotonic() < deadline:
        time.sleep(0.02)
        log = admin(c, "requests")["requests"]
    T.ok(len(log) == 3 and all(e["received"] <= e["time"] <= e["answered"] for e in log),
         "fp: the request log has received <= time <= answered", log)
    slow = [e["answered"] - e["received"] for e in log if e["path"] != "/v1/auth"]
    T.ok(len(slow) == 2 and all(0.38 <= s < 0.75 for s in slow),
         "fp: answered - received spans the delay", slow)


def freshportal_faults_and_tokens(c, token):
    admin(c, "config", {"dedupe_payments": False})
    admin(c, "seed", {"invoices": [{"id": 400, "amount_excl_vat": "100000.00"}]})
    payment = {**PAYMENT, "amount": "1.00"}
    fault_checks(c, "fp", "/v1/invoices/400/payments", payment,
                 lambda: c.get("/v1/invoices/400").json["amount_paid"])
    random_fault_checks(c, "fp", "/v1/invoices/400/payments", payment,
                        lambda: c.get("/v1/invoices/400").json["amount_paid"], 201)
    log = admin(c, "requests")["requests"]
    T.ok(any(e["headers"].get("Authorization") == f"Bearer {token}" for e in log),
         "fp: request log keeps the Authorization header as sent")
    T.ok(token in admin(c, "tokens")["issued"], "fp: /_standin/tokens lists issued tokens")
    admin(c, "expire_tokens", {})
    T.eq(c.get("/v1/customers/1").status, 401, "fp: expired token -> 401")


def test_freshportal(tls=None, context=None):
    server = Server("freshportal.py", "--quiet", tls=tls)
    c = Client(server.port, context)
    try:
        if tls:
            tls_checks("fp", server, c)
            return
        c.token = freshportal_auth(c)
        freshportal_paging(c)
        freshportal_seeding(c)
        freshportal_payments(c)
        concurrency_check(c)
        freshportal_request_delay(c)
        freshportal_faults_and_tokens(c, c.token)
        admin(c, "faults", {"rules": [], "seed": 99})
        admin(c, "reset", {})
        T.eq(admin(c, "state")["invoices"], [], "fp: reset clears the data")
        T.eq(admin(c, "faults")["seed"], None, "fp: reset forgets the fault seed")
    finally:
        c.close()
        T.eq(server.stop(), 0, f"fp{' tls' if tls else ''}: SIGTERM -> clean exit 0")
        T.ok(not server.port_file.exists(), "fp: port file removed on shutdown")
        server.cleanup()


# --------------------------------------------------------------------------
# PayTrace
# --------------------------------------------------------------------------

INTEGRATOR = {"integrator_id": "pt-integrator"}
FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"}


def pt(c, path, body):
    return c.post("/v1/" + path, {**INTEGRATOR, **body})


def paytrace_auth(c):
    reply = c.post("/oauth/token", "grant_type=password&username=pt-user&password=pt-pass",
                   headers=FORM)
    body = reply.json
    T.eq(list(body), ["access_token", "token_type", "expires_in", "created_at"],
         "pt: token answer fields in [C] order")
    T.eq((reply.status, body["token_type"], body["expires_in"]), (200, "Bearer", 7200),
         "pt: form-encoded token call -> Bearer, 7200 s")
    T.ok(re.fullmatch(r"pttok[0-9a-f]+:[0-9a-f]+:[0-9a-f]+", body["access_token"]),
         "pt: token is pttok<hex>:<hex>:<hex>")
    as_json = c.post("/oauth/token", {"grant_type": "password", "username": "pt-user",
                                      "password": "pt-pass"})
    T.eq(as_json.status, 200, "pt: JSON token call accepted too")
    wrong = c.post("/oauth/token", "grant_type=password&username=pt-user&password=nope",
                   headers=FORM)
    T.eq(wrong.raw, b'{"error":"invalid_grant","error_description":"The provided authorization'
                    b' grant is invalid, expired, revoked, does not match the redirection URI '
                    b'used in the authorization request, or was issued to another client."}',
         "pt: invalid_grant body byte for byte")
    T.eq(wrong.status, 400, "pt: invalid credentials -> 400")
    token = body["access_token"]
    lower = c.post("/v1/transactions/export/by_id", {**INTEGRATOR, "transaction_id": 1},
                   headers={"Authorization": f"bearer {token}"})
    T.eq((lower.status, lower.json["error"]), (401, "invalid_token"),
         "pt: lowercase 'bearer' -> 401 invalid_token")
    unknown = c.post("/v1/transactions/export/by_id", {**INTEGRATOR, "transaction_id": 1},
                     token="pttok0:0:0")
    T.eq(unknown.json, {"error": "invalid_token", "error_description":
                        "The access token provided is expired, revoked, malformed or invalid "
                        "for other reasons."}, "pt: unknown token -> invalid_token body")
    return token


def check_export_row(row, name):
    expected_keys = ["transaction_id", "credit_card", "transaction_type", "description",
                     "amount", "invoice_id", "shipping_address", "billing_address",
                     "receipt_emailed_to", "tax_amount", "customer_reference_id",
                     "approval_code", "approval_message", "avs_response", "csc_response",
                     "status_code", "status_message", "created", "settled", "customer_id"]
    T.eq(list(row), expected_keys, f"{name}: export row fields in [C] order")
    T.ok(US_DATETIME.match(row["created"]["at"]), f"{name}: created.at is M/D/YYYY h:mm:ss AM",
         row["created"])


def export_one(c, txn_id):
    return pt(c, "transactions/export/by_id", {"transaction_id": txn_id}).json["transactions"][0]


# Level 3 line items that pass the stand-in's checks: JSON numbers and decimal strings
LINES = [{"description": "Roses", "quantity": 2, "unit_cost": "3.50", "amount": "7.00",
          "unit_of_measure": "EACH"},
         {"description": "Vase", "quantity": "1", "unit_cost": 12, "amount": 12.5}]


def paytrace_money(c):
    admin(c, "customers", {"customers": [
        {"customer_id": "C100", "method": "card", "masked_number": "xxxxxxxxxxxx5439"},
        {"customer_id": "A200", "method": "ach", "masked_number": "xxxxx1234"}]})
    missing = c.post("/v1/transactions/sale/by_customer", {"customer_id": "C100",
                                                           "amount": "1.00"})
    T.ok(missing.status == 400 and missing.json["response_code"] == 1
         and missing.json["errors"], "pt: missing integrator_id -> 400, code 1, errors",
         missing.raw)
    sale = pt(c, "transactions/sale/by_customer",
              {"customer_id": "C100", "amount": 25.5, "invoice_id": "INV-000300"})
    T.eq(list(sale.json), ["success", "response_code", "status_message", "transaction_id",
                           "approval_code", "approval_message", "avs_response",
                           "csc_response", "external_transaction_id"],
         "pt: by_customer sale fields in recorded order, no masked_card_number")
    T.eq((sale.status, sale.json["response_code"], sale.json["status_message"],
          sale.json["approval_message"]),
         (200, 101, "Your transaction was successfully approved.",
          "  NO  MATCH - Approved and completed"), "pt: sale approved 101")
    T.ok(re.fullmatch(r"TAS\d{3}", sale.json["approval_code"]), "pt: approval code TAS###")
    T.ok(sale.chunked and sale.headers["Transfer-Encoding"] == "chunked"
         and sale.headers["Connection"] == "keep-alive",
         "pt: answers are chunked on a keep-alive connection")
    T.ok(b'"success":true,"response_code":101' in sale.raw, "pt: compact JSON separators")
    sale_id = sale.json["transaction_id"]
    T.eq(sale_id, 125391300, "pt: transaction ids start at start_transaction_id")
    row = export_one(c, sale_id)
    check_export_row(row, "pt")
    T.eq((row["status_code"], row["status_message"], row["invoice_id"], row["settled"]),
         ("Y", "Pending Settlement", "INV-000300", ""), "pt: sale is Y Pending Settlement")
    T.ok(b'"amount":25.5,' in pt(c, "transactions/export/by_id",
                                 {"transaction_id": sale_id}).raw,
         "pt: export amount is a JSON number")
    T.eq(row["credit_card"]["masked_number"], "************5439", "pt: export masks with *")

    decline = pt(c, "transactions/sale/by_customer", {"customer_id": "C100", "amount": "0.29"})
    T.eq((decline.status, decline.json["success"], decline.json["response_code"],
          decline.json["approval_message"], decline.json["approval_code"]),
         (200, False, 102, "  EXPIRED CARD - Expired card", ""), "pt: 0.29 declines with 102")
    T.eq(export_one(c, decline.json["transaction_id"])["status_message"], "Declined",
         "pt: declined transaction exported as N Declined")
    unknown = pt(c, "transactions/sale/by_customer", {"customer_id": "NOPE", "amount": "1.00"})
    T.eq((unknown.status, unknown.json["errors"]),
         (400, {"30": ["Customer ID, NOPE, was not found or is incomplete."]}),
         "pt: unknown vault customer -> 400 error 30")
    T.eq(pt(c, "transactions/void", {"transaction_id": 1}).json["errors"],
         {"811": ["The Transaction ID that you provided was not found."]},
         "pt: unknown transaction -> 811")
    T.eq(list(pt(c, "transactions/void", {"transaction_id": ""}).json["errors"]), ["58"],
         "pt: empty transaction id -> 58")

    auth = pt(c, "transactions/authorization/by_customer",
              {"customer_id": "C100", "amount": "5.00", "invoice_id": "INV-AUTH"})
    auth_id = auth.json["transaction_id"]
    T.eq(export_one(c, auth_id)["status_message"], "Authorization Only",
         "pt: authorization is N Authorization Only")
    T.eq(pt(c, "transactions/authorization/capture",
            {"transaction_id": auth_id, "amount": "6.00"}).status, 400,
         "pt: capture above the authorized amount -> 400")
    capture = pt(c, "transactions/authorization/capture",
                 {"transaction_id": auth_id, "amount": "2.00"})
    T.eq(capture.json, {"success": True, "response_code": 112, "status_message":
                        "Your transaction was successfully captured.",
                        "transaction_id": auth_id, "external_transaction_id": ""},
         "pt: partial capture -> 112 keeping the transaction id")
    T.eq(list(pt(c, "transactions/authorization/capture",
                 {"transaction_id": auth_id}).json["errors"]), ["816"],
         "pt: second capture -> 816")
    row = export_one(c, auth_id)
    T.eq((row["status_code"], row["amount"]), ("Y", Decimal(2)),
         "pt: captured authorization is Y with the captured amount")

    refund = pt(c, "transactions/refund/for_transaction", {"transaction_id": sale_id})
    T.eq(refund.json["errors"], {"817": [
        "The Transaction ID that you provided could not be refunded. Only settled transactions "
        "can be refunded.  Please try to void the transaction instead."]},
        "pt: refund of an unsettled sale -> 817 (two spaces)")
    voided = pt(c, "transactions/sale/by_customer", {"customer_id": "C100", "amount": "3.00"})
    void = pt(c, "transactions/void", {"transaction_id": voided.json["transaction_id"]})
    T.eq((void.json["response_code"], void.json["status_message"]),
         (109, "Your transaction was successfully voided."), "pt: void of a pending sale 109")
    T.eq(export_one(c, voided.json["transaction_id"])["status_message"], "Voided",
         "pt: voided sale exported as N Voided")

    settled = admin(c, "settle", {})
    T.eq(settled["batch"]["number"], 571, "pt: first batch is 571")
    T.ok(sale_id in settled["transaction_ids"] and auth_id in settled["transaction_ids"],
         "pt: settle batches every pending transaction")
    row = export_one(c, sale_id)
    T.eq((row["status_code"], row["status_message"]), ("GB571", "GB571"),
         "pt: settled transaction is GB571")
    T.ok(US_DATETIME.match(row["settled"]), "pt: settled date in M/D/YYYY h:mm:ss AM form")
    T.eq(list(pt(c, "transactions/void", {"transaction_id": sale_id}).json["errors"]),
         ["818"], "pt: void of a settled sale -> 818")
    partial = pt(c, "transactions/refund/for_transaction",
                 {"transaction_id": sale_id, "amount": "10.00"})
    T.ok(partial.json["response_code"] == 106 and partial.json["transaction_id"] != sale_id,
         "pt: partial refund of a settled sale -> 106 with a new id", partial.raw)
    T.eq(pt(c, "transactions/refund/for_transaction",
            {"transaction_id": sale_id, "amount": "20.00"}).status, 400,
         "pt: refunding more than remains -> 400")
    refund_row = export_one(c, partial.json["transaction_id"])
    T.eq((refund_row["transaction_type"], refund_row["invoice_id"], refund_row["status_code"]),
         ("REFUND", "INV-000300", "Y"), "pt: refund exported as REFUND for the same invoice")
    T.eq(list(pt(c, "level_three/visa", {"transaction_id": sale_id, "line_items": LINES})
              .json["errors"]), ["9007"], "pt: level 3 on a settled sale -> 400")
    return sale_id


def paytrace_exports_and_batches(c):
    today = datetime.date.today().strftime("%m/%d/%Y")
    everything = pt(c, "transactions/export/by_date_range",
                    {"start_date": today, "end_date": today})
    T.eq((everything.json["success"], everything.json["status_message"]),
         (True, "Your request has been successfully completed."), "pt: export envelope")
    T.eq(len(everything.json["transactions"]), 5, "pt: date range export lists today's rows")
    by_text = pt(c, "transactions/export/by_date_range",
                 {"start_date": today, "end_date": today, "including_text": "inv-auth"})
    T.eq([r["invoice_id"] for r in by_text.json["transactions"]], ["INV-AUTH"],
         "pt: including_text matches the invoice_id")
    settled = pt(c, "transactions/export/by_date_range",
                 {"start_date": today, "end_date": today, "transaction_type": "SETTLED"})
    T.ok(all(r["status_code"].startswith("GB") for r in settled.json["transactions"]),
         "pt: transaction_type SETTLED filter")
    bad = pt(c, "transactions/export/by_date_range",
             {"start_date": datetime.date.today().isoformat(), "end_date": today})
    T.ok(bad.status == 400 and bad.json["response_code"] == 1, "pt: ISO start_date -> 400")
    batches = pt(c, "batches/export", {"start_date": today, "end_date": today})
    batch = batches.json["batches"][0]
    T.eq((batch["number"], batch["sales_count"], batch["sales_amount"], batch["refund_count"]),
         (571, 2, Decimal("27.5"), 0), "pt: batches/export summarises batch 571")
    T.ok(US_DATETIME.match(batch["created"]), "pt: batch created date format")
    listed = pt(c, "batches/transaction_list", {"batch_number": 571})
    T.eq(sorted(r["transaction_type"] for r in listed.json["transactions"]),
         ["AUTHORIZATION", "SALE"], "pt: batches/transaction_list rows")
    sale = pt(c, "transactions/sale/by_customer", {"customer_id": "C100", "amount": "7.00"})
    level3 = pt(c, "level_three/visa", {"transaction_id": sale.json["transaction_id"],
                                        "line_items": LINES[:1]})
    T.eq(level3.json["response_code"], 170, "pt: level 3 on a pending sale -> 170")
    helper = pt(c, "transactions/settle", {})
    T.eq(helper.json["batch_number"], 572, "pt: /v1/transactions/settle makes batch 572")


def paytrace_ach_keyed_autovoid(c):
    check = pt(c, "checks/sale/by_customer", {"customer_id": "A200", "amount": "40.00"})
    T.eq((check.json["response_code"], list(check.json)),
         (120, ["success", "response_code", "status_message", "check_transaction_id"]),
         "pt: ACH check sale -> 120 with check_transaction_id")
    declined = pt(c, "checks/sale/by_customer", {"customer_id": "A200", "amount": "0.29"})
    T.eq((declined.status, declined.json["success"], declined.json["response_code"]),
         (200, False, 125), "pt: ACH decline -> HTTP 200, 125")
    T.eq(list(pt(c, "checks/sale/by_customer",
                 {"customer_id": "C100", "amount": "1.00"}).json["errors"]), ["30"],
         "pt: ACH against a card profile -> 30")
    card = {"number": "4012000098765439", "expiration_month": "12", "expiration_year": "2030"}
    keyed = pt(c, "transactions/sale/keyed", {"amount": "9.99", "credit_card": card})
    T.eq(keyed.json.get("masked_card_number"), "xxxxxxxxxxxx5439",
         "pt: keyed sale returns masked_card_number")
    bad = pt(c, "transactions/sale/keyed", {"amount": "9.99", "credit_card": {
        "number": "4012000098765430", "expiration_month": "14", "expiration_year": "2030"}})
    T.eq(sorted(bad.json["errors"]), ["35", "43"], "pt: bad card -> errors 35 and 43")
    created = pt(c, "customer/create", {"customer_id": "NEW1", "credit_card": card,
                                        "billing_address": {"name": "Ann Lee"}})
    T.eq(created.json["status_message"],
         "The customer profile for NEW1/Ann Lee was successfully created.",
         "pt: customer/create -> 160")
    T.eq(list(pt(c, "customer/create", {"customer_id": "NEW1", "credit_card": card})
              .json["errors"]), ["171"], "pt: duplicate customer id -> 171")
    admin(c, "config", {"auto_void": True})
    auto = pt(c, "transactions/sale/by_customer", {"customer_id": "NEW1", "amount": "8.00"})
    T.eq(auto.json["response_code"], 103, "pt: auto_void -> 103")
    T.eq(export_one(c, auto.json["transaction_id"])["status_message"], "Voided",
         "pt: auto-voided sale exported as N Voided")
    admin(c, "config", {"auto_void": False, "approval_delay": 0.4})
    started = time.monotonic()
    pt(c, "transactions/sale/by_customer", {"customer_id": "NEW1", "amount": "8.00"})
    T.ok(time.monotonic() - started >= 0.35, "pt: approval_delay slows money calls")
    admin(c, "config", {"approval_delay": 0.0})

    # A card past its expiry month is declined like the trigger amount; one
    # expiring this month is still good.
    today = datetime.date.today()
    last = (today.replace(day=1) - datetime.timedelta(days=1))
    admin(c, "customers", {"customers": [
        {"customer_id": "CEXP", "expiration_month": last.month, "expiration_year": last.year},
        {"customer_id": "CNOW", "expiration_month": today.month, "expiration_year": today.year}]})
    expired = pt(c, "transactions/sale/by_customer", {"customer_id": "CEXP", "amount": "40.00"})
    T.eq((expired.json["success"], expired.json["response_code"], expired.json["approval_message"]),
         (False, 102, "  EXPIRED CARD - Expired card"), "pt: a card past its expiry month declines with 102")
    T.eq(pt(c, "transactions/sale/by_customer",
            {"customer_id": "CNOW", "amount": "40.00"}).json["response_code"], 101,
         "pt: a card expiring this month is approved")


def state_of(c, kind, key, value):
    """The row of GET /_standin/state[kind] whose key is value."""
    return next(r for r in admin(c, "state")[kind] if r[key] == value)


def paytrace_card_brands(c):
    """BINs on vault profiles, keyed cards and transactions; include_bin on exports."""
    seeded = admin(c, "customers", {"customers": [
        {"customer_id": "BV", "billing_address": {"name": "Vera Visa", "zip": "99201"}},
        {"customer_id": "BM", "bin": "545454"},
        {"customer_id": "BM2", "bin": "222100"},
        {"customer_id": "BX", "bin": "371449", "masked_number": "xxxxxxxxxxx8431"},
        {"customer_id": "BD", "bin": 601100},
        {"customer_id": "BA", "method": "ach"}]})["customers"]
    T.eq([(p["customer_id"], p["bin"], p["card_brand"]) for p in seeded],
         [("BV", "401200", "VISA"), ("BM", "545454", "MASTERCARD"),
          ("BM2", "222100", "MASTERCARD"), ("BX", "371449", "AMEX"),
          ("BD", "601100", "DISCOVER"), ("BA", "", "")],
         "pt brands: seeded profiles get their BIN (default 401200) and brand; ACH none")
    T.eq(seeded[0]["masked_number"], "xxxxxxxxxxxx5439",
         "pt brands: the default profile stays xxxxxxxxxxxx5439")
    for bad, why in (({"customer_id": "B?", "bin": "4012"}, "a 4-digit bin"),
                     ({"customer_id": "B?", "bin": "40120a"}, "a bin with a letter"),
                     ({"customer_id": "B?", "method": "ach", "bin": "401200"},
                      "a bin on an ACH profile")):
        reply = c.call("POST", "/_standin/customers", {"customers": [bad]}, token="")
        T.eq(reply.status, 400, f"pt brands: admin customers refuses {why}")

    sales = {cid: pt(c, "transactions/sale/by_customer",
                     {"customer_id": cid, "amount": "11.00"}).json["transaction_id"]
             for cid in ("BV", "BM", "BM2", "BX", "BD")}
    brands = {cid: (state_of(c, "transactions", "id", txn)["bin"],
                    state_of(c, "transactions", "id", txn)["card_brand"])
              for cid, txn in sales.items()}
    T.eq(brands, {"BV": ("401200", "VISA"), "BM": ("545454", "MASTERCARD"),
                  "BM2": ("222100", "MASTERCARD"), "BX": ("371449", "AMEX"),
                  "BD": ("601100", "DISCOVER")},
         "pt brands: a by_customer sale keeps its profile's BIN (state: bin, card_brand)")
    card = {"number": "5454545454545454", "expiration_month": "12", "expiration_year": "2031"}
    keyed = pt(c, "transactions/sale/keyed", {"amount": "9.00", "credit_card": card}).json
    T.eq(keyed["masked_card_number"], "xxxxxxxxxxxx5454",
         "pt brands: keyed Mastercard sale masked as before")
    T.eq(state_of(c, "transactions", "id", keyed["transaction_id"])["card_brand"],
         "MASTERCARD", "pt brands: a keyed sale's BIN is the number's first 6 digits")
    again = pt(c, "transactions/sale/by_transaction",
               {"transaction_id": keyed["transaction_id"], "amount": "2.00"}).json
    T.eq(state_of(c, "transactions", "id", again["transaction_id"])["bin"], "545454",
         "pt brands: a by_transaction sale keeps the earlier card's BIN")
    amex = {"number": "371449635398431", "expiration_month": "1", "expiration_year": "2032"}
    pt(c, "customer/create", {"customer_id": "BX2", "credit_card": amex,
                              "billing_address": {"name": "Amy Amex"}})
    created = state_of(c, "customers", "customer_id", "BX2")
    T.eq((created["bin"], created["card_brand"], created["masked_number"]),
         ("371449", "AMEX", "xxxxxxxxxxx8431"),
         "pt brands: customer/create keeps the card's BIN on the profile")
    check = pt(c, "checks/sale/by_customer", {"customer_id": "BA", "amount": "5.00"}).json
    T.eq(state_of(c, "transactions", "id", check["check_transaction_id"])["bin"], "",
         "pt brands: an ACH transaction has no BIN")

    # include_bin on the exports
    today = datetime.date.today().strftime("%m/%d/%Y")

    def export(**extra):
        rows = pt(c, "transactions/export/by_date_range",
                  {"start_date": today, "end_date": today, **extra}).json["transactions"]
        return {r.get("transaction_id"): r for r in rows}

    plain, with_bin = export(), export(include_bin=True)
    T.eq(plain[sales["BV"]]["credit_card"]["masked_number"], "************5439",
         "pt include_bin: without it the masked number is unchanged")
    T.eq(export(include_bin=False)[sales["BV"]]["credit_card"]["masked_number"],
         "************5439", "pt include_bin: false is the same as leaving it out")
    T.eq([with_bin[sales[cid]]["credit_card"]["masked_number"]
          for cid in ("BV", "BM", "BX", "BD")],
         ["401200******5439", "545454******5439", "371449*****8431", "601100******5439"],
         "pt include_bin: BIN, stars, last 4, the masked number's length kept")
    T.eq(with_bin[keyed["transaction_id"]]["credit_card"]["masked_number"],
         "545454******5454", "pt include_bin: a keyed card's BIN")
    T.eq(export(include_bin="true")[sales["BM"]]["credit_card"]["masked_number"],
         "545454******5439", "pt include_bin: the string \"true\" counts as true [G]")
    ach_row = with_bin[check["check_transaction_id"]]
    T.ok("credit_card" not in ach_row and ach_row["check"] == {"masked_account_number":
                                                               "xxxxx6789"},
         "pt include_bin: an ACH row is unchanged", ach_row)
    check_export_row(with_bin[sales["BV"]], "pt include_bin")
    by_id = pt(c, "transactions/export/by_id",
               {"transaction_id": sales["BM"], "include_bin": True})
    T.eq((by_id.status, by_id.json["transactions"][0]["credit_card"]["masked_number"]),
         (200, "545454******5439"), "pt include_bin: export/by_id accepts it too")
    T.eq(export_one(c, sales["BM"])["credit_card"]["masked_number"], "************5439",
         "pt include_bin: export/by_id without it unchanged")
    return sales


CUSTOMER_ROW_KEYS = ["customer_id", "credit_card", "billing_address", "shipping_address",
                     "email", "phone"]


def paytrace_customer_export(c):
    admin(c, "customers", {"customers": [
        {"customer_id": "CE1", "expiration_month": 7, "expiration_year": 2029,
         "billing_address": {"name": "Cleo East", "street_address": "1 Main St",
                             "city": "Spokane", "state": "WA", "zip": "99201"},
         "shipping_address": {"name": "Dock 4", "zip": "99202"},
         "email": "cleo@example.com", "phone": "509-555-0100"},
        {"customer_id": "CE-ACH", "method": "ach", "masked_number": "xxxxx4321"}]})
    everything = pt(c, "customer/export", {})
    T.eq((everything.status, list(everything.json)),
         (200, ["success", "response_code", "status_message", "customers",
                "external_transaction_id"]),
         "pt customer/export: 200 with the export envelope [G]")
    listed = {r["customer_id"]: r for r in everything.json["customers"]}
    profiles = [p["customer_id"] for p in admin(c, "state")["customers"]]
    T.eq(list(listed), profiles, "pt customer/export: without customer_id every profile")
    one = pt(c, "customer/export", {"customer_id": "CE1"})
    T.eq(len(one.json["customers"]), 1, "pt customer/export: customer_id filters to one")
    row = one.json["customers"][0]
    T.eq(list(row), CUSTOMER_ROW_KEYS, "pt customer/export: card row fields in ninja's order")
    T.eq(row["credit_card"], {"masked_number": "************5439", "expiration_month": 7,
                              "expiration_year": 2029},
         "pt customer/export: credit_card masked with *, month, 4-digit year")
    T.eq(list(row["billing_address"]), ["name", "street_address", "street_address2", "city",
                                        "state", "zip", "country"],
         "pt customer/export: billing_address fields")
    T.eq((row["billing_address"]["name"], row["billing_address"]["city"],
          row["shipping_address"]["name"], "county" in row["shipping_address"],
          row["email"], row["phone"]),
         ("Cleo East", "Spokane", "Dock 4", True, "cleo@example.com", "509-555-0100"),
         "pt customer/export: addresses, email and phone as stored")
    ach = pt(c, "customer/export", {"customer_id": "CE-ACH"}).json["customers"][0]
    T.eq((list(ach), ach["check"]),
         (["customer_id", "check", "billing_address", "shipping_address", "email", "phone"],
          {"masked_account_number": "xxxxx4321"}),
         "pt customer/export: ACH profile has check{masked_account_number}, no credit_card")
    created = pt(c, "customer/export", {"customer_id": "BX2"})
    T.eq(created.json["customers"][0]["credit_card"]["masked_number"], "***********8431",
         "pt customer/export: a created profile shows only the last 4")
    T.ok(b"371449635398431" not in created.raw and b"371449" not in created.raw,
         "pt customer/export: never the card number nor its BIN")
    unknown = pt(c, "customer/export", {"customer_id": "NOPE"})
    T.eq((unknown.status, unknown.json["success"], unknown.json["response_code"],
          unknown.json["errors"]),
         (400, False, 1, {"30": ["Customer ID, NOPE, was not found or is incomplete."]}),
         "pt customer/export: unknown customer_id -> 400 error 30 [G]")
    T.eq(c.post("/v1/customer/export", {}).json["errors"],
         {"9001": ["Please provide a valid Integrator ID."]},
         "pt customer/export: integrator_id required like other v1 calls")
    T.eq(c.post("/v1/customer/export", INTEGRATOR, token="pttok0:0:0").status, 401,
         "pt customer/export: bearer token required")

    # the admin changes an expiry
    updated = admin(c, "customers/CE1", {"expiration_month": "03", "expiration_year": 2031})
    T.eq((updated["customer"]["expiration_month"], updated["customer"]["expiration_year"]),
         (3, 2031), "pt admin customers/{id}: new expiry stored")
    exported = pt(c, "customer/export", {"customer_id": "CE1"}).json["customers"][0]
    T.eq((exported["credit_card"]["expiration_month"],
          exported["credit_card"]["expiration_year"], exported["email"]),
         (3, 2031, "cleo@example.com"),
         "pt admin customers/{id}: customer/export shows it, other fields kept")
    sale = pt(c, "transactions/sale/by_customer", {"customer_id": "CE1", "amount": "4.00"})
    card = export_one(c, sale.json["transaction_id"])["credit_card"]
    T.eq((card["expiration_month"], card["expiration_year"]), (3, 31),
         "pt admin customers/{id}: later sales carry it (export: 2-digit year)")
    for path, body, status, why in (
            ("customers/NOPE", {"expiration_month": 1}, 404, "an unknown profile -> 404"),
            ("customers/CE1", {"expiration_month": 13}, 400, "month 13 -> 400"),
            ("customers/CE1", {"expiration_year": 31}, 400, "a 2-digit year -> 400"),
            ("customers/CE1", {"number": "4111"}, 400, "an unknown field -> 400"),
            ("customers/CE-ACH", {"expiration_month": 1}, 400, "an ACH expiry -> 400")):
        T.eq(c.call("POST", "/_standin/" + path, body, token="").status, status,
             f"pt admin customers/{{id}}: {why}")


def paytrace_level_three(c, sales):
    """Level 3: brand per endpoint, state, line items; what was accepted is in the state."""
    def l3(path, txn_id, **extra):
        return pt(c, path, {"transaction_id": txn_id, "line_items": LINES, **extra})

    visa = l3("level_three/visa", sales["BV"], tax_amount="0.50")
    T.eq((visa.status, visa.json), (200, {
        "success": True, "response_code": 170, "status_message":
        f"Visa/MasterCard enhanced data was successfully added to Transaction ID "
        f"{sales['BV']}. 2 line item records were created."}),
        "pt level 3: visa on a Visa sale -> 170")
    sent = {**INTEGRATOR, "transaction_id": sales["BV"], "line_items": LINES,
            "tax_amount": "0.50"}
    plain = json.loads(json.dumps(sent), parse_float=str)    # the state writes 12.5 as "12.5"
    T.eq(state_of(c, "transactions", "id", sales["BV"])["level_three"], [plain],
         "pt level 3: the accepted body is in the state (transactions[].level_three)")
    for cid in ("BM", "BM2"):
        T.eq(l3("level_three/mastercard", sales[cid]).json["response_code"], 170,
             f"pt level 3: mastercard on a Mastercard sale ({cid}) -> 170")
    brand_error = {"9010": ["The card type of the transaction does not support Level 3 data."]}
    for path, cid, why in (("level_three/mastercard", "BV", "mastercard on Visa"),
                           ("level_three/visa", "BM", "visa on Mastercard"),
                           ("level_three/visa", "BX", "visa on Amex"),
                           ("level_three/mastercard", "BX", "mastercard on Amex"),
                           ("level_three/visa", "BD", "visa on Discover")):
        reply = l3(path, sales[cid])
        T.eq((reply.status, reply.json["response_code"], reply.json["errors"]),
             (400, 1, brand_error), f"pt level 3: {why} refused (9010 [G])")
    T.eq(state_of(c, "transactions", "id", sales["BX"])["level_three"], [],
         "pt level 3: a refused call records nothing")

    auth = pt(c, "transactions/authorization/by_customer",
              {"customer_id": "BV", "amount": "6.00"}).json["transaction_id"]
    T.eq(list(l3("level_three/visa", auth).json["errors"]), ["9007"],
         "pt level 3: an uncaptured authorization refused")
    pt(c, "transactions/authorization/capture", {"transaction_id": auth})
    T.eq(l3("level_three/visa", auth).json["response_code"], 170,
         "pt level 3: a captured authorization -> 170")
    voided = pt(c, "transactions/sale/by_customer",
                {"customer_id": "BM", "amount": "3.00"}).json["transaction_id"]
    pt(c, "transactions/void", {"transaction_id": voided})
    T.eq(list(l3("level_three/mastercard", voided).json["errors"]), ["9007"],
         "pt level 3: a voided sale refused")
    declined = pt(c, "transactions/sale/by_customer",
                  {"customer_id": "BV", "amount": "0.29"}).json["transaction_id"]
    T.eq(list(l3("level_three/visa", declined).json["errors"]), ["9007"],
         "pt level 3: a declined sale refused")

    # bad line items: PayTrace's error shape, one message per bad field and item
    def items_errors(items, txn_id=sales["BV"], path="level_three/visa"):
        reply = pt(c, path, {"transaction_id": txn_id, "line_items": items})
        return reply.status, reply.json["errors"]

    T.eq(pt(c, "level_three/visa", {"transaction_id": sales["BV"]}).json["errors"],
         {"9011": ["Please provide at least one Level 3 line item."]},
         "pt level 3: no line_items -> 9011")
    T.eq(items_errors([]), (400, {"9011": ["Please provide at least one Level 3 line item."]}),
         "pt level 3: an empty line_items list -> 9011")
    T.eq(items_errors([{"description": "Roses"}, "x"]), (400, {
        "9012": ["Please provide a valid Description for line item 2."],
        "9013": ["Please provide a valid Quantity for line item 1.",
                 "Please provide a valid Quantity for line item 2."],
        "9014": ["Please provide a valid Unit Cost for line item 1.",
                 "Please provide a valid Unit Cost for line item 2."],
        "9015": ["Please provide a valid Amount for line item 1.",
                 "Please provide a valid Amount for line item 2."]}),
        "pt level 3: missing fields -> 9012-9015, each naming its item")
    good = LINES[0]
    for change, code, why in (({"unit_cost": "3.505"}, "9014", "unit_cost with 3 decimals"),
                              ({"amount": "7,00"}, "9015", "amount \"7,00\""),
                              ({"amount": -7}, "9015", "a negative amount"),
                              ({"amount": True}, "9015", "amount true"),
                              ({"quantity": 0}, "9013", "quantity 0"),
                              ({"quantity": "two"}, "9013", "quantity \"two\""),
                              ({"description": ""}, "9012", "an empty description"),
                              ({"description": "x" * 36}, "9012", "a 36-character description")):
        status, errors = items_errors([good, {**good, **change}])
        T.eq((status, list(errors), errors[code][0][-7:]), (400, [code], "item 2."),
             f"pt level 3: {why} -> {code}")
    edge = pt(c, "level_three/visa", {"transaction_id": sales["BV"], "line_items": [
        {**good, "description": "x" * 35, "quantity": "1.2345", "unit_cost": 0, "amount": "0"}]})
    T.eq(edge.json["response_code"], 170,
         "pt level 3: 35 characters, quantity 1.2345, zero cost and amount accepted")
    T.eq(list(items_errors([{**good, "amount": "x"}], sales["BX"])[1]), ["9015"],
         "pt level 3: field errors come before the brand check")
    T.eq(list(items_errors(LINES, sales["BV"] + 10 ** 6)[1]), ["811"],
         "pt level 3: an unknown transaction -> 811")

    admin(c, "settle", {})
    T.eq(list(l3("level_three/mastercard", sales["BM"]).json["errors"]), ["9007"],
         "pt level 3: after settlement refused")


def paytrace_faults(c):
    today = datetime.date.today().strftime("%m/%d/%Y")

    def count():
        return len(pt(c, "transactions/export/by_date_range",
                      {"start_date": today, "end_date": today}).json["transactions"])
    fault_checks(c, "pt", "/v1/transactions/sale/by_customer",
                 {**INTEGRATOR, "customer_id": "C100", "amount": "1.00"}, count)
    random_fault_checks(c, "pt", "/v1/transactions/sale/by_customer",
                        {**INTEGRATOR, "customer_id": "C100", "amount": "1.00"}, count, 200)
    admin(c, "expire_tokens", {})
    T.eq(pt(c, "transactions/export/by_id", {"transaction_id": 1}).status, 401,
         "pt: expired token -> 401")


def replay_checks(c):
    fixtures = {p.stem: json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*.json"))}
    T.eq(len(fixtures), 5, "replay: five fixtures present")
    enabled = admin(c, "replay", {"enabled": True})
    T.eq(len(enabled["fixtures"]), 5, "replay: enabled with the five fixtures")
    token_fixture = fixtures.pop("create_access_token")
    reply = c.post("/oauth/token", token_fixture["request"]["body"].replace(
        "<PASSWORD>", "anything"), headers=FORM)
    token = reply.json["access_token"]
    expected = token_fixture["response"]["body"].replace("<ACCESS_TOKEN>", token)
    T.eq(reply.raw, expected.encode(), "replay: token body is the recording with a real token")
    for name, fixture in fixtures.items():
        body = fixture["request"]["body"].replace("<INTEGRATOR_ID>", "whatever-id")
        reply = c.post(fixture["request"]["path"], body, token=token,
                       headers={"Content-Type": "application/json"})
        recorded = fixture["response"]
        T.eq((reply.status, reply.raw), (recorded["status"], recorded["body"].encode()),
             f"replay: {name} body byte for byte")
        wanted = ("content-type", "cache-control", "x-request-id", "etag", "x-runtime")
        T.eq({h: reply.headers[h] for h in wanted}, {h: recorded["headers"][h] for h in wanted},
             f"replay: {name} recorded headers")
        T.ok(reply.chunked, f"replay: {name} chunked")
    fixture = fixtures["create_sale_by_customer"]
    denied = c.post(fixture["request"]["path"], fixture["request"]["body"], token="pttok1:2:3",
                    headers={"Content-Type": "application/json"})
    T.eq(denied.status, 401, "replay: still needs a valid bearer token")
    admin(c, "replay", {"enabled": False})


def raw_chunked_check(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        body = b"grant_type=password&username=pt-user&password=pt-pass"
        sock.sendall(b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/"
                     b"x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    T.ok(b"Transfer-Encoding: chunked" in head and b"Content-Length" not in head
         and rest.endswith(b"}\r\n0\r\n\r\n"), "pt: raw wire shows chunked framing", data[:300])


# --------------------------------------------------------------------------
# PayTrace API v3
# --------------------------------------------------------------------------

MERCHANT = {"merchant_id": 1234567}
V3_HEADERS = {"X-Integrator-Id": "pt-integrator"}
V3_FIELDS = ["ach_transaction_id", "transaction_status", "amount", "invoice_number",
             "customer_id", "idempotency_key", "processed_at", "settled_at", "return_reason",
             "transaction_type", "original_transaction_id"]
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def v3_token(c, secret="pt-pass"):
    return c.post("/v3/token", f"grant_type=client_credentials&client_id=pt-user&"
                               f"client_secret={secret}", headers=FORM, token="")


def v3(c, method, path, body=None, headers=None, **kw):
    """A v3 call with the integrator header; merchant_id joins a POST body."""
    headers = {**V3_HEADERS, **(headers or {})}
    if method == "POST" and isinstance(body, dict):
        body = {**MERCHANT, **body}
    return c.call(method, path, body if body is not None else {}, headers=headers, **kw)


def v3_fields(reply):
    return sorted(item["field"] for item in (reply.json or {}).get("data", []))


def future(days=14):
    moment = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=days)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def invoice_body(**changes):
    return {"transaction_type": "SALE_AND_CUSTOMER", "invoice_number": "INV-000612",
            "invoice_amount": "612.00", "is_amount_editable": False,
            "is_invoice_number_editable": False, "expire_at": future(), "email": "ap@acme.test",
            "email_required": True, "customer_label": "Acme Inc", **changes}


def paytrace_v3_auth(c, v1_token):
    reply = v3_token(c)
    body = reply.json
    T.eq((reply.status, list(body), list(body["data"])),
         (201, ["data"], ["access_token", "token_type", "expires_in"]),
         "pt v3: POST /v3/token -> 201 {data:{access_token,token_type,expires_in}}")
    token = body["data"]["access_token"]
    T.ok(body["data"]["token_type"] == "Bearer" and body["data"]["expires_in"] == 900
         and re.fullmatch(r"pttokv3[0-9a-f]{48}", token), "pt v3: Bearer, 900 s, pttokv3<hex>",
         body)
    T.eq(v3_token(c, "nope").status, 401, "pt v3: wrong client_secret -> 401")
    wrong_grant = c.post("/v3/token", "grant_type=password&client_id=pt-user&"
                                      "client_secret=pt-pass", headers=FORM, token="")
    T.eq((wrong_grant.status, v3_fields(wrong_grant)), (422, ["grant_type"]),
         "pt v3: grant_type password -> 422 on grant_type")
    as_json = c.post("/v3/token", {"grant_type": "client_credentials", "client_id": "pt-user",
                                   "client_secret": "pt-pass"}, token="")
    T.eq(as_json.status, 422, "pt v3: a JSON token body is refused (form-encoded only)")
    probe = "/v3/checks/transactions/1?merchant_id=1234567"
    T.eq(v3(c, "GET", probe, token=token).status, 404, "pt v3: a v3 token opens v3 calls")
    T.eq(v3(c, "GET", probe, token=v1_token).status, 401, "pt v3: a v1 token -> 401 on v3")
    T.eq(v3(c, "GET", probe, token="").status, 401, "pt v3: no Authorization -> 401")
    T.eq(v3(c, "GET", probe, token="", headers={"Authorization": f"bearer {token}"}).status,
         401, "pt v3: lowercase bearer -> 401")
    T.eq(pt(Client(c.port, c.context, token), "transactions/export/by_id",
            {"transaction_id": 1}).status, 401, "pt v3: a v3 token -> 401 on v1")
    issued = admin(c, "tokens")["issued"]
    T.ok(token in issued and v1_token in issued,
         "pt v3: GET /_standin/tokens lists v3 tokens beside v1's (990's token files)")
    admin(c, "config", {"v3_token_ttl": 1})
    short = v3_token(c).json["data"]
    time.sleep(1.1)
    T.ok(short["expires_in"] == 1 and
         v3(c, "GET", probe, token=short["access_token"]).status == 401,
         "pt v3: a token past its expires_in -> 401")
    admin(c, "config", {"v3_token_ttl": 900})
    return token


def paytrace_v3_envelope(c):
    probe = "/v3/checks/transactions/1"
    missing = c.call("GET", probe + "?merchant_id=1234567", headers={"X-Integrator-Id": None})
    T.eq((missing.status, v3_fields(missing)), (422, ["X-Integrator-Id"]),
         "pt v3: no X-Integrator-Id -> 422 on X-Integrator-Id")
    wrong = c.call("GET", probe + "?merchant_id=1234567", headers={"X-Integrator-Id": "other"})
    T.eq((wrong.status, v3_fields(wrong)), (422, ["X-Integrator-Id"]),
         "pt v3: another X-Integrator-Id -> 422")
    T.eq(list(wrong.json), ["message", "data"], "pt v3: 422 body is {message, data[]}")
    T.eq(list(wrong.json["data"][0]), ["field", "detail"], "pt v3: 422 items {field, detail}")
    for query, why in (("", "no merchant_id"), ("?merchant_id=7", "another merchant_id"),
                       ("?merchant_id=x", "a merchant_id that is not a number")):
        reply = v3(c, "GET", probe + query)
        T.eq((reply.status, v3_fields(reply)), (422, ["merchant_id"]),
             f"pt v3: GET with {why} -> 422 on merchant_id")
    for merchant, why in ((None, "no merchant_id"), ("1234567", "merchant_id as a string"),
                          (7654321, "another merchant_id"), (True, "merchant_id true")):
        body = invoice_body()
        if merchant is not None:
            body["merchant_id"] = merchant
        reply = c.call("POST", "/v3/invoice", body, headers=V3_HEADERS)
        T.eq((reply.status, v3_fields(reply)), (422, ["merchant_id"]),
             f"pt v3: POST with {why} -> 422 on merchant_id")
    reply = v3(c, "POST", "/v3/invoice", "not json",
               headers={"Content-Type": "application/json"})
    T.eq((reply.status, v3_fields(reply)), (422, ["body"]), "pt v3: a body that is not JSON "
                                                            "-> 422")


def paytrace_v3_requests(c, c1):
    reply = v3(c, "POST", "/v3/invoice", invoice_body())
    T.ok(reply.status == 201 and list(reply.json) == ["data"]
         and list(reply.json["data"]) == ["invoice_id"]
         and isinstance(reply.json["data"]["invoice_id"], str),
         "pt v3: POST /v3/invoice -> 201 {data:{invoice_id}}", reply.raw)
    onboard_id = reply.json["data"]["invoice_id"]
    bad = v3(c, "POST", "/v3/invoice", invoice_body(
        transaction_type="REFUND", invoice_amount="612.0", email="acme.test",
        expire_at="2030-01-01 00:00:00", is_amount_editable="false", email_required=1,
        invoice_number=""))
    T.eq((bad.status, v3_fields(bad)),
         (422, ["email", "email_required", "expire_at", "invoice_amount", "invoice_number",
                "is_amount_editable", "transaction_type"]),
         "pt v3: invoice validation names every bad field")
    cases = (({"invoice_amount": 612}, "invoice_amount", "an amount as a number"),
             ({"invoice_amount": "0.00"}, "invoice_amount", "a zero amount"),
             ({"invoice_amount": "612.001"}, "invoice_amount", "three decimals"),
             ({"expire_at": "2020-01-01T00:00:00Z"}, "expire_at", "expire_at in the past"),
             ({"expire_at": "2030-02-30T00:00:00Z"}, "expire_at", "an impossible date"),
             ({"expire_at": "2030-01-01T00:00:00+00:00"}, "expire_at", "an offset, not Z"),
             ({"is_invoice_number_editable": None}, "is_invoice_number_editable",
              "a null boolean"),
             ({"transaction_type": "sale"}, "transaction_type", "a lowercase type"))
    for change, field_name, why in cases:
        reply = v3(c, "POST", "/v3/invoice", invoice_body(**change))
        T.eq((reply.status, v3_fields(reply)), (422, [field_name]), f"pt v3: invoice with {why}"
                                                                    " -> 422")
    body = invoice_body(transaction_type="CREATE_CUSTOMER")
    del body["invoice_amount"]
    T.eq(v3(c, "POST", "/v3/invoice", body).status, 201,
         "pt v3: CREATE_CUSTOMER needs no invoice_amount")
    create_id = v3(c, "POST", "/v3/invoice", body).json["data"]["invoice_id"]
    sale_id = v3(c, "POST", "/v3/invoice", invoice_body(
        transaction_type="SALE", invoice_number="INV-000613", invoice_amount="13.50",
        is_amount_editable=True)).json["data"]["invoice_id"]
    auth_id = v3(c, "POST", "/v3/invoice", invoice_body(
        transaction_type="AUTHORIZATION", invoice_number="INV-000614",
        invoice_amount="14.00")).json["data"]["invoice_id"]
    expiring_id = v3(c, "POST", "/v3/invoice", invoice_body(
        invoice_number="INV-000615")).json["data"]["invoice_id"]
    requests = {r["invoice_id"]: r for r in admin(c, "state")["payment_requests"]}
    T.ok(requests[onboard_id]["status"] == "open" and
         requests[onboard_id]["invoice_amount"] == "612.00" and
         requests[onboard_id]["customer_label"] == "Acme Inc",
         "pt v3: GET state lists the open payment request", requests.get(onboard_id))

    # the payer on the hosted page
    paid = admin(c, f"payment_requests/{onboard_id}/pay", {})
    T.ok(paid["request"]["status"] == "paid" and paid["customer_id"]
         and paid["transaction"]["success"],
         "pt v3: admin pay on SALE_AND_CUSTOMER stores a card and pays", paid)
    row = export_one(c1, paid["transaction"]["transaction_id"])
    today = datetime.date.today().strftime("%m/%d/%Y")
    rows = pt(c1, "transactions/export/by_date_range",
              {"start_date": today, "end_date": today}).json["transactions"]
    T.ok(any(r["transaction_id"] == row["transaction_id"] for r in rows),
         "pt v3: the payer's payment is in the v1 export by_date_range")
    T.eq((row["transaction_type"], row["amount"], row["invoice_id"], row["customer_id"],
          row["status_code"]),
         ("SALE", Decimal(612), "INV-000612", paid["customer_id"], "Y"),
         "pt v3: exported as a SALE with invoice_id = the invoice number, the new profile")
    check_export_row(row, "pt v3 payer's sale")
    profiles = {p["customer_id"]: p for p in admin(c, "state")["customers"]}
    T.ok(profiles.get(paid["customer_id"], {}).get("method") == "card",
         "pt v3: the stored card is a vault card profile")
    again = pt(c1, "transactions/sale/by_customer",
               {"customer_id": paid["customer_id"], "amount": "20.00"})
    T.eq(again.json["response_code"], 101, "pt v3: the new profile can be charged on v1")
    reply = c.call("POST", f"/_standin/payment_requests/{onboard_id}/pay", {}, token="")
    T.eq(reply.status, 400, "pt v3: a paid request cannot be paid again")

    refused = c.call("POST", f"/_standin/payment_requests/{auth_id}/pay", {"amount": "1.00"},
                     token="")
    T.eq(refused.status, 400, "pt v3: admin pay refuses another amount when not editable")
    reply = c.call("POST", f"/_standin/payment_requests/{sale_id}/pay",
                   {"amount": "10.00", "bin": "5454"}, token="")
    T.eq(reply.status, 400, "pt v3: admin pay refuses a bin that is not 6 digits")
    paid = admin(c, f"payment_requests/{sale_id}/pay", {"amount": "10.00", "bin": "545454"})
    row = export_one(c1, paid["transaction"]["transaction_id"])
    T.eq((row["amount"], row["customer_id"], row["invoice_id"], paid["customer_id"]),
         (Decimal(10), "", "INV-000613", None),
         "pt v3: SALE with an editable amount: the payer's amount, no profile")
    brands = {t["id"]: (t["bin"], t["card_brand"]) for t in admin(c, "state")["transactions"]}
    T.eq((brands[paid["transaction"]["transaction_id"]], brands[again.json["transaction_id"]]),
         (("545454", "MASTERCARD"), ("401200", "VISA")),
         "pt v3: the payer's card has the given bin (default 401200, kept on its profile)")
    paid = admin(c, f"payment_requests/{auth_id}/pay", {"store_card": True})
    row = export_one(c1, paid["transaction"]["transaction_id"])
    T.eq((row["transaction_type"], row["status_message"], row["customer_id"]),
         ("AUTHORIZATION", "Authorization Only", paid["customer_id"]),
         "pt v3: AUTHORIZATION becomes an open v1 authorization (store_card on request)")
    created = admin(c, f"payment_requests/{create_id}/pay", {"customer_id": "ONBOARD1"})
    T.ok(created["transaction"] is None and created["customer_id"] == "ONBOARD1"
         and created["request"]["status"] == "paid",
         "pt v3: CREATE_CUSTOMER stores a profile and makes no payment", created)
    declined_id = v3(c, "POST", "/v3/invoice", invoice_body(
        transaction_type="SALE", invoice_number="INV-000616",
        invoice_amount="0.29")).json["data"]["invoice_id"]
    declined = admin(c, f"payment_requests/{declined_id}/pay", {})
    T.ok(declined["transaction"]["response_code"] == 102
         and declined["request"]["status"] == "open",
         "pt v3: a declined payment (0.29) leaves the request open", declined)

    expired = admin(c, f"payment_requests/{expiring_id}/expire", {})
    T.eq(expired["request"]["status"], "expired", "pt v3: admin expire")
    reply = c.call("POST", f"/_standin/payment_requests/{expiring_id}/pay", {}, token="")
    T.eq(reply.status, 400, "pt v3: an expired request cannot be paid")
    reply = c.call("POST", "/_standin/payment_requests/999/pay", {}, token="")
    T.eq(reply.status, 400, "pt v3: admin pay of an unknown request -> 400")
    statuses = {r["invoice_id"]: r["status"] for r in admin(c, "state")["payment_requests"]}
    T.eq((statuses[onboard_id], statuses[expiring_id], statuses[declined_id]),
         ("paid", "expired", "open"), "pt v3: GET state shows paid, expired and open requests")


KEY1 = "6f1c2a9e-1b2c-4d3e-8f90-123456789abc"
KEY2 = "0b7d5a3c-9e1f-4a2b-8c3d-4e5f6a7b8c9d"


def ach_get(c, ach_id):
    return v3(c, "GET", f"/v3/checks/transactions/{ach_id}?merchant_id=1234567")


def ach_pay(c, key, amount="607.00", customer="ACH1", number="INV-000607"):
    return v3(c, "POST", "/v3/checks/payment", {"customer_id": customer, "amount": amount,
                                                "invoice_number": number,
                                                "idempotency_key": key})


def paytrace_v3_ach(c):
    admin(c, "customers", {"customers": [{"customer_id": "ACH1", "method": "ach"}]})
    first = ach_pay(c, KEY1)
    T.ok(first.status == 200 and list(first.json) == ["transaction_id", "data"]
         and first.json["data"] == [] and isinstance(first.json["transaction_id"], str),
         "pt v3: POST /v3/checks/payment -> 200 {transaction_id, data:[]}", first.raw)
    ach_id = first.json["transaction_id"]
    second = ach_pay(c, KEY1)
    T.eq((second.status, second.json), (200, first.json),
         "pt v3: the same idempotency key answers the same transaction")
    T.eq(len(admin(c, "state")["ach_transactions"]), 1, "pt v3: ... and debits once")
    T.eq(ach_pay(c, KEY1.upper()).json, first.json, "pt v3: the key is case-insensitive")
    changed = ach_pay(c, KEY1, amount="608.00")
    T.eq((changed.status, v3_fields(changed)), (422, ["idempotency_key"]),
         "pt v3: the same key with another amount -> 422")
    by_key = v3(c, "GET", f"/v3/checks/transactions/idempotency-keys/{KEY1}?merchant_id=1234567")
    txn = by_key.json["data"]
    T.eq((by_key.status, list(by_key.json), list(txn)), (200, ["data"], V3_FIELDS),
         "pt v3: lookup by key -> 200 {data:{…the contract's fields…}}")
    T.eq((txn["ach_transaction_id"], txn["transaction_status"], txn["amount"],
          txn["invoice_number"], txn["customer_id"], txn["idempotency_key"],
          txn["settled_at"], txn["return_reason"]),
         (ach_id, "ACCEPTED", "607.00", "INV-000607", "ACH1", KEY1, None, None),
         "pt v3: the transaction's values")
    T.ok(ISO_Z.match(txn["processed_at"]), "pt v3: processed_at is YYYY-MM-DDTHH:MM:SSZ")
    missing = v3(c, "GET", f"/v3/checks/transactions/idempotency-keys/{KEY2}"
                           "?merchant_id=1234567")
    T.eq(missing.status, 404, "pt v3: lookup of an unknown key -> 404")
    T.eq((ach_get(c, ach_id).status, ach_get(c, ach_id).json["data"]), (200, txn),
         "pt v3: GET /v3/checks/transactions/{id} -> {data:{…}}")
    T.eq(ach_get(c, "1").status, 404, "pt v3: an unknown ACH id -> 404")
    admin(c, "customers", {"customers": [{"customer_id": "CARD9", "method": "card"}]})
    for change, field_name, why in (
            ({"customer_id": "NOPE"}, "customer_id", "an unknown profile"),
            ({"customer_id": "CARD9"}, "customer_id", "a card profile"),
            ({"amount": "607"}, "amount", "an amount without cents"),
            ({"amount": 607}, "amount", "an amount as a number"),
            ({"idempotency_key": "abc"}, "idempotency_key", "a key that is not a UUID"),
            ({"invoice_number": None}, "invoice_number", "no invoice_number")):
        body = {"customer_id": "ACH1", "amount": "1.00", "invoice_number": "X",
                "idempotency_key": KEY2, **change}
        body = {k: v for k, v in body.items() if v is not None}
        reply = v3(c, "POST", "/v3/checks/payment", body)
        T.eq((reply.status, v3_fields(reply)), (422, [field_name]),
             f"pt v3: ACH debit with {why} -> 422")
    keys = [f"00000000-0000-4000-8000-00000000000{n}" for n in range(5)]
    ids = [ach_pay(c, key, amount=f"{n + 1}.00", number=f"INV-{n}").json["transaction_id"]
           for n, key in enumerate(keys)]
    declined = ach_pay(c, "00000000-0000-4000-8000-0000000000ff", amount="0.29")
    T.eq(ach_get(c, declined.json["transaction_id"]).json["data"]["transaction_status"],
         "DECLINED", "pt v3: an ACH debit of 0.29 is DECLINED")

    # list and paging
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    listing = f"/v3/checks/transactions?merchant_id=1234567&start_date={today}&end_date={today}"
    page = v3(c, "GET", listing + "&date_type=PROCESSED&limit=2&offset=1")
    T.eq((page.status, list(page.json), page.json["total"],
          [t["ach_transaction_id"] for t in page.json["data"]]),
         (200, ["data", "total"], 7, ids[0:2]),
         "pt v3: list pages with limit and offset, total counts all")
    T.eq(len(v3(c, "GET", listing + "&date_type=PROCESSED&limit=30&offset=").json["data"]), 7,
         "pt v3: an empty offset is 0")
    T.eq(v3(c, "GET", listing + "&date_type=SETTLED").json["total"], 0,
         "pt v3: date_type SETTLED: nothing settled yet")
    for query, field_name in (("&date_type=CREATED", "date_type"), ("&limit=0", "limit"),
                              ("&limit=x", "limit"), ("&offset=-1", "offset")):
        reply = v3(c, "GET", listing + query)
        T.eq((reply.status, v3_fields(reply)), (422, [field_name]),
             f"pt v3: list with {query[1:]} -> 422")
    reply = v3(c, "GET", "/v3/checks/transactions?merchant_id=1234567&start_date=11/30/2026"
                         f"&end_date={today}")
    T.eq((reply.status, v3_fields(reply)), (422, ["start_date"]),
         "pt v3: list with a start_date not YYYY-MM-DD -> 422")

    # void, settle, refund, return
    void = v3(c, "POST", "/v3/checks/void", {"ach_transaction_id": ids[0]})
    T.eq((void.status, void.json, ach_get(c, ids[0]).json["data"]["transaction_status"]),
         (200, {"transaction_id": ids[0], "data": []}, "VOIDED"), "pt v3: void -> VOIDED")
    T.eq(v3(c, "POST", "/v3/checks/void", {"ach_transaction_id": ids[0]}).status, 422,
         "pt v3: a second void -> 422")
    T.eq(v3(c, "POST", "/v3/checks/void", {"ach_transaction_id": "1"}).status, 422,
         "pt v3: void of an unknown id -> 422")
    early = v3(c, "POST", "/v3/checks/refund", {"ach_transaction_id": ach_id,
                                                "amount": "7.00", "idempotency_key": KEY2})
    T.eq((early.status, v3_fields(early)), (422, ["ach_transaction_id"]),
         "pt v3: refund before settlement -> 422")
    settled = admin(c, f"ach/{ach_id}/settle", {})["transaction"]
    T.ok(settled["transaction_status"] == "SETTLED" and ISO_Z.match(settled["settled_at"]),
         "pt v3: admin settle -> SETTLED with settled_at", settled)
    T.eq(v3(c, "GET", listing + "&date_type=SETTLED").json["total"], 1,
         "pt v3: date_type SETTLED lists the settled debit")
    late = v3(c, "POST", "/v3/checks/void", {"ach_transaction_id": ach_id})
    T.eq(late.status, 422, "pt v3: void after settlement -> 422")
    too_much = v3(c, "POST", "/v3/checks/refund", {"ach_transaction_id": ach_id,
                                                   "amount": "607.01", "idempotency_key": KEY2})
    T.eq((too_much.status, v3_fields(too_much)), (422, ["amount"]),
         "pt v3: refund of more than the amount -> 422")
    refund = v3(c, "POST", "/v3/checks/refund", {"ach_transaction_id": ach_id,
                                                 "amount": "600.00", "idempotency_key": KEY2})
    T.ok(refund.status == 200 and refund.json["transaction_id"] not in (ach_id, None)
         and refund.json["data"] == [], "pt v3: refund -> 200 with a new ACH id", refund.raw)
    same = v3(c, "POST", "/v3/checks/refund", {"ach_transaction_id": ach_id,
                                               "amount": "600.00", "idempotency_key": KEY2})
    T.eq(same.json, refund.json, "pt v3: the same refund key answers the same refund")
    credit = ach_get(c, refund.json["transaction_id"]).json["data"]
    T.eq((credit["transaction_type"], credit["original_transaction_id"], credit["amount"]),
         ("REFUND", ach_id, "600.00"), "pt v3: the refund names its debit")
    rest = v3(c, "POST", "/v3/checks/refund",
              {"ach_transaction_id": ach_id, "amount": "7.01",
               "idempotency_key": "11111111-2222-4333-8444-555555555555"})
    T.eq(rest.status, 422, "pt v3: a refund beyond what remains -> 422")
    missing_key = v3(c, "POST", "/v3/checks/refund", {"ach_transaction_id": ach_id,
                                                      "amount": "1.00"})
    T.eq(v3_fields(missing_key), ["idempotency_key"], "pt v3: refund without a key -> 422")

    returned = admin(c, f"ach/{ids[1]}/return", {"status": "NSF_DECLINED", "reason": "R01"})
    T.eq((returned["transaction"]["transaction_status"], returned["transaction"]
          ["return_reason"]), ("NSF_DECLINED", "R01"), "pt v3: admin return NSF_DECLINED R01")
    admin(c, f"ach/{ids[2]}/settle", {})
    admin(c, f"ach/{ids[2]}/return", {})
    data = ach_get(c, ids[2]).json["data"]
    T.eq((data["transaction_status"], data["return_reason"]), ("RETURNED", "R01"),
         "pt v3: a settled debit returned later shows RETURNED with its reason")
    for path, body, why in ((f"ach/{ids[0]}/return", {}, "return of a voided debit"),
                            (f"ach/{ids[3]}/return", {"status": "SETTLED"},
                             "return with a status that is no return"),
                            (f"ach/{ids[3]}/status", {"status": "LOST"}, "an unknown status"),
                            ("ach/1/settle", {}, "settle of an unknown id")):
        T.eq(c.call("POST", "/_standin/" + path, body, token="").status, 400,
             f"pt v3: admin {why} -> 400")
    moved = admin(c, f"ach/{ids[3]}/status", {"status": "ORIGINATED"})["transaction"]
    T.eq(moved["transaction_status"], "ORIGINATED", "pt v3: admin status sets any [C] status")
    state = admin(c, "state")
    T.ok(len(state["ach_transactions"]) == 8 and "payment_requests" in state,
         "pt v3: GET state lists ACH transactions and payment requests")


def paytrace_v3_faults(c):
    admin(c, "requests/clear", {})

    def count():
        return len(admin(c, "state")["payment_requests"])
    fault_checks(c, "pt v3", "/v3/invoice",
                 {**MERCHANT, **invoice_body(invoice_number="INV-FAULT")}, count)
    random_fault_checks(c, "pt v3", "/v3/invoice",
                        {**MERCHANT, **invoice_body(invoice_number="INV-FAULT")}, count, 201)
    # a lost answer to an ACH debit: found by its key, and a retry debits nothing more
    key = "22222222-3333-4444-8555-666666666666"
    admin(c, "faults", {"rules": [{"path": "/v3/checks/payment", "action": "close_after"}]})
    before = len(admin(c, "state")["ach_transactions"])
    body = {**MERCHANT, "customer_id": "ACH1", "amount": "5.00", "invoice_number": "INV-LOST",
            "idempotency_key": key}
    T.ok(dropped(c, "POST", "/v3/checks/payment", body),
         "pt v3: close_after drops an ACH debit's answer")
    found = v3(c, "GET", f"/v3/checks/transactions/idempotency-keys/{key}?merchant_id=1234567")
    retry = v3(c, "POST", "/v3/checks/payment", body)
    T.ok(found.status == 200 and retry.json["transaction_id"] ==
         found.json["data"]["ach_transaction_id"] and
         len(admin(c, "state")["ach_transactions"]) == before + 1,
         "pt v3: the lost debit is found by key; the retry answers it, no second debit")
    admin(c, "faults", {"rules": []})
    admin(c, "requests/clear", {})     # the v1 fault checks count their own drops
    admin(c, "expire_tokens", {})
    T.eq(v3(c, "GET", "/v3/checks/transactions/1?merchant_id=1234567").status, 401,
         "pt v3: expire_tokens expires v3 tokens too")


def paytrace_v3(c1):
    c = Client(c1.port, c1.context)
    c.headers = dict(V3_HEADERS)
    try:
        c.token = paytrace_v3_auth(c, c1.token)
        paytrace_v3_envelope(c)
        paytrace_v3_requests(c, c1)
        paytrace_v3_ach(c)
        paytrace_v3_faults(c)
    finally:
        c.close()


def test_paytrace(tls=None, context=None):
    server = Server("paytrace.py", "--quiet", tls=tls)
    c = Client(server.port, context)
    try:
        if tls:
            tls_checks("pt", server, c)
            return
        c.token = paytrace_auth(c)
        paytrace_money(c)
        paytrace_exports_and_batches(c)
        paytrace_ach_keyed_autovoid(c)
        sales = paytrace_card_brands(c)
        paytrace_customer_export(c)
        paytrace_level_three(c, sales)
        raw_chunked_check(server.port)
        replay_checks(c)
        paytrace_v3(c)      # ends with expire_tokens: the v1 token needs renewing
        c.token = c.post("/oauth/token", "grant_type=password&username=pt-user&"
                                         "password=pt-pass", headers=FORM).json["access_token"]
        paytrace_faults(c)
    finally:
        c.close()
        T.eq(server.stop(), 0, f"pt{' tls' if tls else ''}: SIGTERM -> clean exit 0")
        server.cleanup()


def test_replay_cli():
    server = Server("paytrace.py", "--quiet", "--replay", str(FIXTURES))
    c = Client(server.port)
    try:
        fixture = json.loads((FIXTURES / "create_access_token.json").read_text())
        reply = c.post("/oauth/token", fixture["request"]["body"], headers=FORM)
        T.ok(reply.status == 200 and b'"created_at":1733511471' in reply.raw,
             "replay: --replay DIR enables replay at startup")
        admin(c, "reset", {})
        T.eq(admin(c, "config")["replay"], True, "replay: reset keeps the --replay setting")
    finally:
        c.close()
        server.stop()
        server.cleanup()


# --------------------------------------------------------------------------
# TLS, CLI, fixtures
# --------------------------------------------------------------------------

def tls_checks(prefix, server, c):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")      # plain HTTP to the TLS port
        try:
            sock.recv(100)
        except OSError:
            pass
    if prefix == "fp":
        reply = c.post("/v1/auth", {"username": "fp-test-key", "type": "api"})
    else:
        reply = c.post("/oauth/token", "grant_type=password&username=pt-user&password=pt-pass",
                       headers=FORM)
    T.eq(reply.status, 200, f"{prefix} tls: https works after a failed handshake")


def test_tls():
    if not shutil.which("openssl"):
        T.skip("tls", "openssl not on PATH")
        return
    workdir = tempfile.mkdtemp(prefix="standin-tls-")
    cert, key = f"{workdir}/cert.pem", f"{workdir}/key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    context = ssl.create_default_context(cafile=cert)
    try:
        test_freshportal((cert, key), context)
        test_paytrace((cert, key), context)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_cli():
    for script in ("freshportal.py", "paytrace.py"):
        result = subprocess.run([sys.executable, "-B", str(HERE / script), "--host", "0.0.0.0",
                                 "--port", "0"], capture_output=True, text=True, timeout=20)
        T.ok(result.returncode == 2 and "loopback" in result.stderr,
             f"{script}: --host 0.0.0.0 refused", result.stderr)


def test_fixtures_reproducible():
    if not CASSETTES.is_dir():
        T.skip("fixtures reproducible", f"{CASSETTES} not present")
        return
    sys.path.insert(0, str(HERE))
    sys.dont_write_bytecode = True
    import convert_cassettes
    with tempfile.TemporaryDirectory() as target:
        convert_cassettes.convert(CASSETTES, pathlib.Path(target))
        same = all((FIXTURES / p.name).read_bytes() == p.read_bytes()
                   for p in pathlib.Path(target).glob("*.json"))
    T.ok(same, "fixtures: convert_cassettes.py reproduces the committed fixtures")


def main():
    for test in (test_fixtures_reproducible, test_cli, test_freshportal, test_paytrace,
                 test_replay_cli, test_tls):
        try:
            test()
        except Exception as exc:  # report and go on with the next group
            T.ok(False, f"{test.__name__} crashed: {exc!r}", _traceback())
    return T.finish()


def _traceback():
    import traceback
    return traceback.format_exc()


if __name__ == "__main__":
    sys.exit(main())
