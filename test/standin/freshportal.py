#!/usr/bin/env python3
"""FreshPortal stand-in: one tenant of the cloud ERP, as freshpay speaks to it.

Owns the FreshPortal wire format of the tests: /v1/auth, customers, invoices,
payments and their reversal, the paginated "changed since" lists and the
admin endpoints that seed data (/_standin/seed, /_standin/customers/{id},
/_standin/invoices/{id}, /_standin/generate). The model follows
contract.md section 8 and research/freshportal.md section 5; only the auth
call, the 204-on-empty quirk, the timestamp format and the 422 error shape are
confirmed [C], the rest is the project's assumed model [I].

Shared HTTP machinery (faults, request log, tokens, TLS) lives in common.py.
Run: python3 freshportal.py --port 0 --port-file /tmp/fp.port
"""

import datetime
import re
import secrets
from decimal import ROUND_HALF_UP

from common import (ZERO, AdminError, Response, StandinApp, has_cents_only, money_str,
                    parse_decimal, parse_json, run)

UNAUTHENTICATED = {"message": "Unauthenticated."}
DEFAULT_AMOUNT = parse_decimal("100.00")
INVALID = "The given data was invalid."
INVOICE_MONEY = ("amount_excl_vat", "vat_amount", "amount_incl_vat", "amount_paid",
                 "open_amount")
CUSTOMER_FIELDS = ("id", "code", "name", "email", "currency", "payment_term_days", "blocked")
INVOICE_FIELDS = ("id", "number", "type", "customer_id", "invoice_date", "due_date",
                  "currency") + INVOICE_MONEY + ("status", "lines")
PAYMENT_FIELDS = ("id", "invoice_id", "customer_id", "amount", "currency", "payment_date",
                  "method", "provider", "provider_transaction_id", "provider_status",
                  "status", "created_at")
PAYMENT_METHODS = ("card", "ach", "pin", "bank", "psp")
REVERSAL_REASONS = ("voided", "refunded", "chargeback")
DERIVED_STATUSES = ("open", "partially_paid", "paid")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_CURSOR = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2}:\d{2})(\.\d{1,6})?"
                     r"(Z|[+-]\d{2}:\d{2})?)?$")


# --------------------------------------------------------------------------
# Time
# --------------------------------------------------------------------------

def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


def format_timestamp(moment):
    """2026-09-27T14:02:11.000000Z [C]."""
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_cursor(text):
    """mutation_datetime: "YYYY-MM-DD" [C] or an ISO timestamp [I]; None if invalid."""
    found = _CURSOR.match(text or "")
    if not found:
        return None
    day, clock, fraction, zone = found.groups()
    iso = f"{day}T{clock or '00:00:00'}{(fraction or '').ljust(7, '0') if fraction else ''}"
    offset = "+00:00" if zone in (None, "Z") else zone
    try:
        return datetime.datetime.fromisoformat(iso + offset)
    except ValueError:
        return None


def parse_date(text):
    if not isinstance(text, str) or not _DATE.match(text):
        return None
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        return None


class MutationClock:
    """Real UTC time, but strictly increasing from one write to the next."""

    def __init__(self):
        self._last = None

    def next(self):
        moment = utc_now()
        if self._last is not None and moment <= self._last:
            moment = self._last + datetime.timedelta(microseconds=1)
        self._last = moment
        return format_timestamp(moment)


# --------------------------------------------------------------------------
# Building stored objects
# --------------------------------------------------------------------------

def ordered(fields, given, defaults):
    """Canonical field order first, then any extra seeded field, verbatim."""
    merged = {**defaults, **given}
    result = {name: merged[name] for name in fields if name in merged}
    result.update((name, value) for name, value in merged.items() if name not in result)
    return result


def customer_defaults(customer_id):
    return {"code": f"C{customer_id:05d}", "name": f"Customer {customer_id}",
            "email": f"ap{customer_id}@example.com", "currency": "USD",
            "payment_term_days": 30, "blocked": False}


def invoice_status(kind, amount_paid, open_amount):
    """Status derived from the amounts [I]."""
    if open_amount == 0:
        return "paid"
    if amount_paid == 0 or kind == "credit_note":
        return "open"
    return "partially_paid"


def _money_or_error(value, label, raw=False):
    """Parse a seeded money value; raw objects keep bad values (None here)."""
    amount = parse_decimal(value)
    if amount is None and not raw:
        raise AdminError(f"{label} is not a decimal amount: {value!r}")
    return amount


def _normalize_lines(lines, label):
    if not isinstance(lines, list):
        raise AdminError(f"{label}: lines must be a list")
    normalized = []
    for number, line in enumerate(lines, 1):
        where = f"{label} line {number}"
        if not isinstance(line, dict):
            raise AdminError(f"{where} must be an object")
        quantity = _money_or_error(line.get("quantity", 1), f"{where} quantity")
        unit_price = _money_or_error(line.get("unit_price", "0.00"), f"{where} unit_price")
        excl = line.get("amount_excl_vat")
        excl = quantity * unit_price if excl is None else _money_or_error(excl, where)
        rate = _money_or_error(line.get("vat_rate", "0.00"), f"{where} vat_rate")
        normalized.append({**line, "description": line.get("description", f"Line {number}"),
                           "quantity": line.get("quantity", 1),
                           "unit_price": money_str(unit_price), "vat_rate": money_str(rate),
                           "amount_excl_vat": money_str(excl),
                           "product_id": line.get("product_id", number)})
    return normalized


def _line_totals(lines):
    """(excl, vat) of normalized lines, or (None, None) when unknown."""
    if not isinstance(lines, list):
        return None, None
    excl = vat = ZERO
    for line in lines:
        line_excl = parse_decimal(line.get("amount_excl_vat")) if isinstance(line, dict) else None
        rate = parse_decimal(line.get("vat_rate", "0")) if isinstance(line, dict) else None
        if line_excl is None or rate is None:
            return None, None
        excl += line_excl
        vat += (line_excl * rate / 100).quantize(ZERO, rounding=ROUND_HALF_UP)
    return excl, vat


def derive_totals(amounts, lines, kind):
    """Fill in excl/vat/incl from whatever was given (money as Decimal)."""
    excl, vat, incl = (amounts.get(k) for k in ("amount_excl_vat", "vat_amount",
                                                "amount_incl_vat"))
    line_excl, line_vat = _line_totals(lines)
    if excl is None:
        if line_excl is not None:
            excl = line_excl
        elif incl is not None:
            excl = incl - (vat or ZERO)
        else:
            excl = -DEFAULT_AMOUNT if kind == "credit_note" else DEFAULT_AMOUNT
    if vat is None:
        if incl is not None:
            vat = incl - excl
        elif line_vat is not None:
            vat = line_vat
        else:
            vat = ZERO
    if incl is None:
        incl = excl + vat
    return excl, vat, incl


def default_lines(number, excl, vat):
    rate = (vat * 100 / excl).quantize(ZERO, ROUND_HALF_UP) if excl and vat else ZERO  # no -0.00
    return [{"description": f"Goods for {number}", "quantity": 1,
             "unit_price": money_str(excl), "vat_rate": money_str(rate),
             "amount_excl_vat": money_str(excl), "product_id": 1}]


# --------------------------------------------------------------------------
# The application
# --------------------------------------------------------------------------

class FreshPortalApp(StandinApp):
    """FreshPortal stand-in (one tenant): auth, customers, invoices, payments."""

    NAME = "freshportal"
    CONFIG_DEFAULTS = {"api_keys": ["fp-test-key"], "token_ttl": 3600, "empty_as_204": True,
                       "max_per_page": 1000, "default_per_page": 100,
                       "allow_overpayment": False, "dedupe_payments": False,
                       "ignore_payment_filters": False, "request_delay": 0.0}
    ASCII_JSON = True           # PHP's json_encode escapes non-ASCII by default [I]
    MALFORMED_BODY = b'{"data": [ {"id": 1, '

    def __init__(self, options):
        self.clock = MutationClock()     # survives resets: stamps never go backwards
        super().__init__(options)

    def mint_token(self):
        return "fptok_" + secrets.token_hex(16)

    def reset_state(self):
        self.customers = {}
        self.invoices = {}
        self.payments = {}
        self.raw_ids = set()             # ("invoice"|"customer", id) stored verbatim
        self.next_payment_id = 7001

    def _process(self, request):
        # request_delay: a slow tenant.  Every API call but /v1/auth waits
        # this long before it is processed, outside the state lock, so
        # concurrent calls wait side by side (test/bench/pipeline).
        delay = self.config["request_delay"]
        if delay > 0 and request.path != "/v1/auth":
            self.sleep(delay)
        return super()._process(request)

    def state_snapshot(self):
        return {"customers": list(self.customers.values()),
                "invoices": list(self.invoices.values()),
                "payments": list(self.payments.values())}

    # -- routes ----------------------------------------------------------------
    def add_routes(self, router):
        router.add("POST", "/v1/auth", self.authenticate)
        authed = self.requires_token
        router.add("GET", "/v1/customers", authed(self.list_customers))
        router.add("GET", "/v1/customers/{id}", authed(self.get_customer))
        router.add("GET", "/v1/invoices", authed(self.list_invoices))
        router.add("GET", "/v1/invoices/{id}", authed(self.get_invoice))
        router.add("GET", "/v1/invoices/{id}/payments", authed(self.list_invoice_payments))
        router.add("POST", "/v1/invoices/{id}/payments", authed(self.register_payment))
        router.add("GET", "/v1/payments", authed(self.list_payments))
        router.add("GET", "/v1/payments/{id}", authed(self.get_payment))
        router.add("POST", "/v1/payments/{id}/reverse", authed(self.reverse_payment))

    def add_admin_routes(self, router):
        router.add("POST", "/_standin/seed", self.admin_seed)
        router.add("POST", "/_standin/customers/{id}", self.admin_modify_customer)
        router.add("POST", "/_standin/invoices/{id}", self.admin_modify_invoice)
        router.add("POST", "/_standin/payments/{id}/delete", self.admin_delete_payment)
        router.add("POST", "/_standin/generate", self.admin_generate)

    # -- auth [C] --------------------------------------------------------------
    def authenticate(self, request):
        body = self._json_body(request)
        if (not isinstance(body, dict) or body.get("type") != "api"
                or body.get("username") not in self.config["api_keys"]):
            return self.json(401, UNAUTHENTICATED)
        return self.json(200, {"token": self.tokens.issue(self.config["token_ttl"])})

    def requires_token(self, handler):
        def guarded(request, **params):
            header = request.header("Authorization", "")
            token = header[len("Bearer "):] if header.startswith("Bearer ") else None
            if token is None or not self.tokens.is_valid(token):
                return self.json(401, UNAUTHENTICATED)
            return handler(request, **params)
        return guarded

    @staticmethod
    def _json_body(request):
        try:
            return parse_json(request.body) if request.body.strip() else None
        except ValueError:
            return None

    # -- errors ------------------------------------------------------------------
    def invalid(self, errors, message=INVALID):
        return self.json(422, {"message": message, "errors": errors})

    def not_found(self, request=None):
        return self.json(404, {"message": "Not found"})

    def _lookup(self, table, raw_id):
        try:
            return table.get(int(raw_id))
        except ValueError:
            return None

    # -- lists -------------------------------------------------------------------
    def paginate(self, request, rows):
        """The list envelope: filter by cursor, sort, slice one page [I]."""
        errors, cursor = {}, None
        if request.arg("mutation_datetime") is not None:
            cursor = parse_cursor(request.arg("mutation_datetime"))
            if cursor is None:
                errors["mutation_datetime"] = [
                    "The mutation datetime is not a valid date (YYYY-MM-DD or "
                    "YYYY-MM-DDTHH:MM:SS[.ffffff]Z)."]
        page = self._positive_int(request, "page", 1, errors)
        per_page = self._positive_int(request, "per_page", self.config["default_per_page"],
                                      errors)
        if per_page and per_page > self.config["max_per_page"]:
            errors["per_page"] = [f"The per page may not be greater than "
                                  f"{self.config['max_per_page']}."]
        if errors:
            return self.invalid(errors)
        if cursor is not None:
            # stored stamps all have one fixed format, so text order is time order
            since = format_timestamp(cursor)
            rows = [row for row in rows if row["mutation_date_time"] >= since]
        rows = sorted(rows, key=lambda row: (row["mutation_date_time"], row["id"]))
        total = len(rows)
        data = rows[(page - 1) * per_page:page * per_page]
        if not data and self.config["empty_as_204"]:
            return Response(204)
        last_page = max(1, -(-total // per_page))
        return self.json(200, {"data": data, "meta": {
            "current_page": page, "per_page": per_page, "total": total,
            "last_page": last_page, "server_time": format_timestamp(utc_now())}})

    @staticmethod
    def _positive_int(request, name, default, errors):
        text = request.arg(name)
        if text is None:
            return default
        if not text.isdigit() or int(text) < 1:
            errors[name] = [f"The {name.replace('_', ' ')} must be an integer of at least 1."]
            return None
        return int(text)

    def list_customers(self, request):
        return self.paginate(request, list(self.customers.values()))

    def get_customer(self, request, id):
        customer = self._lookup(self.customers, id)
        return self.json(200, customer) if customer else self.not_found()

    def list_invoices(self, request):
        rows = list(self.invoices.values())
        for name in ("number", "status"):
            if request.arg(name) is not None:
                rows = [row for row in rows if str(row.get(name)) == request.arg(name)]
        if request.arg("customer_id") is not None:
            wanted = request.arg("customer_id")
            if not wanted.isdigit():
                return self.invalid({"customer_id": ["The customer id must be an integer."]})
            rows = [row for row in rows if row.get("customer_id") == int(wanted)]
        return self.paginate(request, rows)

    def get_invoice(self, request, id):
        invoice = self._lookup(self.invoices, id)
        return self.json(200, invoice) if invoice else self.not_found()

    # -- payments [I] ------------------------------------------------------------
    def list_payments(self, request):
        rows = list(self.payments.values())
        # ignore_payment_filters: a tenant API that ignores the query (review L4)
        for name in ("provider_transaction_id", "invoice_id"):
            if request.arg(name) is not None and not self.config["ignore_payment_filters"]:
                rows = [row for row in rows if str(row.get(name)) == request.arg(name)]
        return self.paginate(request, rows)

    def get_payment(self, request, id):
        payment = self._lookup(self.payments, id)
        return self.json(200, payment) if payment else self.not_found()

    def list_invoice_payments(self, request, id):
        invoice = self._lookup(self.invoices, id)
        if invoice is None:
            return self.not_found()
        rows = [p for p in self.payments.values() if p["invoice_id"] == invoice["id"]]
        return self.paginate(request, rows)

    def register_payment(self, request, id):
        invoice = self._lookup(self.invoices, id)
        if invoice is None:
            return self.not_found()
        body = self._json_body(request)
        if not isinstance(body, dict):
            return self.invalid({"body": ["The request body must be a JSON object."]})
        amount, errors = self._validate_payment(invoice, body)
        if errors:
            return self.invalid(errors)
        duplicate = self._duplicate_of(body)
        if duplicate is not None:
            return self.json(409, {"message": "This payment has already been registered.",
                                   "payment": duplicate})
        payment = self._store_payment(invoice, body, amount)
        self._book_on_invoice(invoice, amount)
        return self.json(201, {"payment": payment, "invoice": self._invoice_summary(invoice)})

    def _validate_payment(self, invoice, body):
        errors = {}
        amount = parse_decimal(body.get("amount"))
        open_amount = parse_decimal(invoice.get("open_amount"))
        if amount is None or amount <= 0:
            errors["amount"] = ["The amount must be a decimal greater than 0."]
        elif not has_cents_only(amount):
            errors["amount"] = ["The amount may have at most 2 decimals."]
        elif (open_amount is not None and amount > open_amount
              and not self.config["allow_overpayment"]):
            errors["amount"] = [f"The amount may not be greater than the open amount "
                                f"({invoice['open_amount']})."]
        if body.get("currency") != invoice.get("currency"):
            errors["currency"] = [f"The currency must match the invoice currency "
                                  f"({invoice.get('currency')})."]
        if parse_date(body.get("payment_date")) is None:
            errors["payment_date"] = ["The payment date must be a date (YYYY-MM-DD)."]
        if body.get("method") not in PAYMENT_METHODS:
            errors["method"] = [f"The method must be one of {', '.join(PAYMENT_METHODS)}."]
        if body.get("provider_status") != "captured":
            errors["provider_status"] = ["Only captured payments can be registered."]
        if invoice.get("type") == "credit_note":
            errors["invoice"] = ["A credit note cannot be paid."]
        elif invoice.get("status") == "concept":
            errors["invoice"] = ["A concept invoice cannot be paid."]
        if open_amount is None or parse_decimal(invoice.get("amount_paid")) is None:
            errors["invoice"] = ["The invoice amounts cannot be read."]
        return amount, errors

    def _duplicate_of(self, body):
        if not self.config["dedupe_payments"] or not body.get("provider_transaction_id"):
            return None
        for payment in self.payments.values():
            if (payment["status"] == "registered"
                    and payment.get("provider") == body.get("provider")
                    and payment.get("provider_transaction_id")
                    == body.get("provider_transaction_id")):
                return payment
        return None

    def _store_payment(self, invoice, body, amount):
        payment_id = self.next_payment_id
        self.next_payment_id += 1
        stamp = self.clock.next()
        given = {**body, "amount": money_str(amount)}
        defaults = {"id": payment_id, "invoice_id": invoice["id"],
                    "customer_id": invoice.get("customer_id"), "provider": None,
                    "provider_transaction_id": None, "status": "registered",
                    "created_at": stamp}
        payment = ordered(PAYMENT_FIELDS, {k: v for k, v in given.items()
                                           if k not in ("id", "status", "created_at")},
                          defaults)
        payment["mutation_date_time"] = stamp
        self.payments[payment_id] = payment
        return payment

    def _book_on_invoice(self, invoice, delta):
        """Add delta to amount_paid and recompute open amount and status."""
        paid = parse_decimal(invoice["amount_paid"]) + delta
        incl = parse_decimal(invoice["amount_incl_vat"])
        invoice["amount_paid"] = money_str(paid)
        invoice["open_amount"] = money_str(incl - paid)
        if invoice.get("status") in DERIVED_STATUSES:
            invoice["status"] = invoice_status(invoice.get("type"), paid, incl - paid)
        invoice["mutation_date_time"] = self.clock.next()

    @staticmethod
    def _invoice_summary(invoice):
        return {name: invoice.get(name) for name in
                ("id", "amount_paid", "open_amount", "status", "mutation_date_time")}

    def reverse_payment(self, request, id):
        payment = self._lookup(self.payments, id)
        if payment is None:
            return self.not_found()
        body = self._json_body(request)
        if not isinstance(body, dict):
            return self.invalid({"body": ["The request body must be a JSON object."]})
        errors = {}
        if payment["status"] == "reversed":
            errors["payment"] = ["This payment has already been reversed."]
        if body.get("reason") not in REVERSAL_REASONS:
            errors["reason"] = [f"The reason must be one of {', '.join(REVERSAL_REASONS)}."]
        if parse_date(body.get("date")) is None:
            errors["date"] = ["The date must be a date (YYYY-MM-DD)."]
        if errors:
            return self.invalid(errors)
        stamp = self.clock.next()
        payment.update({"status": "reversed", "reversal": {
            "reason": body["reason"], "provider_transaction_id":
            body.get("provider_transaction_id"), "date": body["date"]},
            "reversed_at": stamp, "mutation_date_time": stamp})
        invoice = self.invoices[payment["invoice_id"]]
        self._book_on_invoice(invoice, -parse_decimal(payment["amount"]))
        return self.json(200, {"payment": payment, "invoice": self._invoice_summary(invoice)})

    # -- building and storing objects ---------------------------------------------
    def build_customer(self, given):
        raw = bool(given.get("raw"))
        customer_id = self._id_of(given, self.customers, "customer")
        fields = {k: v for k, v in given.items() if k != "raw"}
        if not raw and not isinstance(fields.get("payment_term_days", 0), int):
            raise AdminError(f"customer {customer_id}: payment_term_days must be an integer")
        customer = ordered(CUSTOMER_FIELDS, {**fields, "id": customer_id},
                           customer_defaults(customer_id))
        customer["mutation_date_time"] = self.clock.next()
        return customer, raw

    def build_invoice(self, given):
        raw = bool(given.get("raw"))
        invoice_id = self._id_of(given, self.invoices, "invoice")
        label = f"invoice {invoice_id}"
        fields = {k: v for k, v in given.items() if k not in ("raw", "mutation_date_time")}
        kind = fields.get("type", "invoice")
        amounts = {}
        for name in INVOICE_MONEY:
            if name in fields:
                amount = _money_or_error(fields[name], f"{label} {name}", raw)
                if amount is not None:
                    amounts[name] = amount
                    if not raw:
                        fields[name] = money_str(amount)
        if "lines" in fields and not raw:
            fields["lines"] = _normalize_lines(fields["lines"], label)
        excl, vat, incl = derive_totals(amounts, fields.get("lines"), kind)
        paid = amounts.get("amount_paid", ZERO)
        open_amount = amounts.get("open_amount", incl - paid)
        number = fields.get("number", f"INV-{invoice_id:06d}")
        invoice_date = fields.get("invoice_date") or utc_now().date().isoformat()
        defaults = {
            "number": number, "type": kind, "customer_id": 1,
            "invoice_date": invoice_date,
            "due_date": self._due_date(invoice_date, fields.get("customer_id", 1)),
            "currency": "USD", "amount_excl_vat": money_str(excl),
            "vat_amount": money_str(vat), "amount_incl_vat": money_str(incl),
            "amount_paid": money_str(paid), "open_amount": money_str(open_amount),
            "status": invoice_status(kind, paid, open_amount),
            "lines": default_lines(number, excl, vat)}
        invoice = ordered(INVOICE_FIELDS, {**fields, "id": invoice_id}, defaults)
        invoice["mutation_date_time"] = self.clock.next()
        return invoice, raw

    def _due_date(self, invoice_date, customer_id):
        day = parse_date(invoice_date)
        if day is None:
            return invoice_date
        customer = self.customers.get(customer_id) if isinstance(customer_id, int) else None
        term = customer.get("payment_term_days", 30) if customer else 30
        term = term if isinstance(term, int) else 30
        return (day + datetime.timedelta(days=term)).isoformat()

    @staticmethod
    def _id_of(given, table, kind):
        if not isinstance(given, dict):
            raise AdminError(f"each {kind} must be a JSON object")
        if "id" not in given:
            return max(table, default=0) + 1
        if isinstance(given["id"], bool) or not isinstance(given["id"], int):
            raise AdminError(f"{kind} id must be an integer: {given['id']!r}")
        return given["id"]

    def _store(self, kind, obj, raw):
        table = self.customers if kind == "customer" else self.invoices
        table[obj["id"]] = obj
        if raw:
            self.raw_ids.add((kind, obj["id"]))
        else:
            self.raw_ids.discard((kind, obj["id"]))
        return obj

    # -- admin ----------------------------------------------------------------------
    def admin_seed(self, request, body):
        """Create or replace objects; all are validated before any is stored."""
        if not isinstance(body, dict):
            raise AdminError("seed body must be a JSON object")
        customers, invoices = [], []
        for given in body.get("customers", []):
            customer, raw = self.build_customer(given)
            customers.append(self._store("customer", customer, raw))
        for given in body.get("invoices", []):
            invoices.append(self.build_invoice(given))
        return {"customers": customers,
                "invoices": [self._store("invoice", inv, raw) for inv, raw in invoices]}

    def admin_modify_customer(self, request, body, id):
        current = self._lookup(self.customers, id)
        if current is None:
            return self.not_found()
        patch = self._patch(body)
        raw = patch.pop("raw", False) or ("customer", current["id"]) in self.raw_ids
        merged = {**current, **patch, "id": current["id"], "raw": raw}
        customer, raw = self.build_customer(merged)
        return self._store("customer", customer, raw)

    def admin_modify_invoice(self, request, body, id):
        current = self._lookup(self.invoices, id)
        if current is None:
            return self.not_found()
        patch = self._patch(body)
        raw = patch.pop("raw", False) or ("invoice", current["id"]) in self.raw_ids
        merged = dict(current)
        if any(name in patch for name in INVOICE_MONEY):
            # amounts changed: let open_amount and a derived status follow
            if "open_amount" not in patch:
                merged.pop("open_amount")
            if "status" not in patch and current.get("status") in DERIVED_STATUSES:
                merged.pop("status")
        merged.update(patch, id=current["id"], raw=raw)
        invoice, raw = self.build_invoice(merged)
        return self._store("invoice", invoice, raw)

    def admin_delete_payment(self, request, body, id):
        """A registration deleted in FreshPortal by a person: gone from every
        list; a live one no longer counts on its invoice."""
        payment = self._lookup(self.payments, id)
        if payment is None:
            return self.not_found()
        del self.payments[payment["id"]]
        if payment["status"] == "registered":
            self._book_on_invoice(self.invoices[payment["invoice_id"]],
                                  -parse_decimal(payment["amount"]))
        return {"deleted": payment}

    @staticmethod
    def _patch(body):
        if not isinstance(body, dict):
            raise AdminError("body must be a JSON object")
        return {k: v for k, v in body.items() if k != "mutation_date_time"}

    def admin_generate(self, request, body):
        """Many deterministic USD objects, fast (for paging and load tests)."""
        try:
            n_customers = int(body.get("customers", 0))
            n_invoices = int(body.get("invoices", 0))
            first_customer = int(body.get("start_customer_id",
                                          max(self.customers, default=0) + 1))
            first_invoice = int(body.get("start_invoice_id",
                                         max(self.invoices, default=0) + 1))
        except (TypeError, ValueError):
            raise AdminError("customers, invoices and start ids must be integers") from None
        customer_ids = list(range(first_customer, first_customer + n_customers))
        for index, customer_id in enumerate(customer_ids):
            self._store("customer", *self.build_customer({
                "id": customer_id, "code": f"CUST{customer_id:05d}",
                "name": f"Generated Customer {customer_id}",
                "payment_term_days": (14, 30, 60)[index % 3]}))
        owners = customer_ids or sorted(self.customers) or [1]
        today = utc_now().date()
        for index in range(n_invoices):
            invoice_id = first_invoice + index
            excl = parse_decimal(f"{100 + (invoice_id * 37) % 900}.{(invoice_id * 13) % 100:02d}")
            self._store("invoice", *self.build_invoice({
                "id": invoice_id, "number": f"INV-{invoice_id:06d}",
                "customer_id": owners[index % len(owners)],
                "invoice_date": (today - datetime.timedelta(days=index % 60)).isoformat(),
                "lines": [{"description": f"Generated goods {invoice_id}", "quantity": 1,
                           "unit_price": money_str(excl), "vat_rate": "9.00",
                           "product_id": 500 + invoice_id % 50}]}))
        return {"customers": n_customers, "invoices": n_invoices,
                "customer_ids": [first_customer, first_customer + n_customers - 1]
                if n_customers else [],
                "invoice_ids": [first_invoice, first_invoice + n_invoices - 1]
                if n_invoices else []}


if __name__ == "__main__":
    raise SystemExit(run(FreshPortalApp))
