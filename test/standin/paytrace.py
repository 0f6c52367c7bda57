#!/usr/bin/env python3
"""PayTrace stand-in: the JSON API v1 subset freshpay speaks, the v3 calls of contract
sections 10-12 beside it, plus replay of real traffic.

Owns the PayTrace wire format of the tests: the OAuth password grant, card
sales and authorizations (keyed, by_customer, by_transaction), capture, void,
refund, ACH checks, vault profiles (create, export), transaction and batch
exports (with include_bin), the sandbox settle helper, Level 3 data (Visa or
Mastercard by the card's BIN, line items checked), and a replay mode that
answers the recorded sandbox exchanges of test/fixtures/paytrace-recorded/
byte for byte.
API v3 (its own token, payment requests, ACH debits with idempotency keys,
their status, void and refund) is one section, "API v3", with its own tags;
a payer's payment through a v3 payment request becomes a v1 transaction.

Shapes tagged [C] in research/paytrace-api.md are reproduced field by field
and in order; everything the research marks [P]/[G] is kept in the tables at
the top of this file (ERRORS, BATCH_FIELDS, ...) so that it is easy to change.
Shared HTTP machinery (faults, request log, tokens, TLS) lives in common.py.
Run: python3 paytrace.py --port 0 --port-file /tmp/pt.port [--replay DIR]
"""

import datetime
import hashlib
import json
import pathlib
import re
import secrets
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field

from decimal import Decimal, InvalidOperation

from common import (ZERO, AdminError, Response, StandinApp, TokenStore, has_cents_only,
                    json_response, money_str, parse_decimal, parse_json, run)

# --------------------------------------------------------------------------
# Wire constants
# --------------------------------------------------------------------------

STATUS_MESSAGES = {                                                     # [C]
    1: "One or more errors has occurred.",
    101: "Your transaction was successfully approved.",
    102: "Your transaction was not approved.",
    103: "Your transaction was successfully approved. However, it was voided because "
         "your address and/or CSC did not match.",
    106: "Your transaction was successfully refunded.",
    109: "Your transaction was successfully voided.",
    112: "Your transaction was successfully captured.",
    120: "Your check was successfully processed.",
    122: "Your check was successfully refunded.",
    124: "Your check was successfully managed.",
    125: "Your check was NOT successfully processed.",
}
EXPORT_MESSAGE = "Your request has been successfully completed."        # [C]
SETTLE_CODE, SETTLE_MESSAGE = 175, "The batch was successfully settled."  # [G]
APPROVAL_MESSAGE = "  NO  MATCH - Approved and completed"               # [C] recorded
AVS_RESPONSE = "No Match"                                               # [C] sandbox
DECLINE_AMOUNT = parse_decimal("0.29")                                  # [C] sandbox trigger
DECLINE_MESSAGE = "  EXPIRED CARD - Expired card"                       # [C]

# errors{code: [message]}; codes under 9000 and their texts are PayTrace's own [C]
# (44 is [P]); codes 9001+ are the stand-in's own strictness [G].
ERRORS = {
    "30": "Customer ID, {customer_id}, was not found or is incomplete.",
    "35": "Please provide a valid Credit Card Number.",
    "43": "Please provide a valid Expiration Month.",
    "44": "Please provide a valid Expiration Year.",
    "45": "Please provide a valid Checking Account Number.",
    "46": "Please provide a valid Transit Routing Number.",
    "58": "Please provide a valid Transaction ID.",
    "80": "The Check ID that you provided was not found in the PayTrace records. "
          "It may already be voided or settled.",
    "171": "Please provide a unique customer ID.",
    "811": "The Transaction ID that you provided was not found.",
    "816": "The Transaction ID that you provided could not be captured. Only uncaptured, "
           "approved authorizations can be captured.",
    "817": "The Transaction ID that you provided could not be refunded. Only settled "
           "transactions can be refunded.  Please try to void the transaction instead.",
    "818": "The Transaction ID that you provided could not be voided. Only transactions "
           "that are pending settlement can be voided.",
    "9001": "Please provide a valid Integrator ID.",
    "9002": "Please provide a valid Transaction Amount.",
    "9003": "Please provide a valid Start Date (MM/DD/YYYY).",
    "9004": "Please provide a valid End Date (MM/DD/YYYY).",
    "9005": "The amount exceeds the amount that remains to be captured or refunded.",
    "9006": "Please provide a valid Batch Number.",
    "9007": "Enhanced data can only be added to an approved, unsettled sale.",
    "9008": "The request body must be a JSON object.",
    "9009": "Please provide a valid Customer ID.",
    # Level 3 strictness [G]: codes and texts are the stand-in's; the rules behind 9010
    # (Visa or Mastercard only) are [C], the line-item rules (L3_* below) are [G]/[P].
    "9010": "The card type of the transaction does not support Level 3 data.",
    "9011": "Please provide at least one Level 3 line item.",
    "9012": "Please provide a valid Description for line item {item}.",
    "9013": "Please provide a valid Quantity for line item {item}.",
    "9014": "Please provide a valid Unit Cost for line item {item}.",
    "9015": "Please provide a valid Amount for line item {item}.",
}

INVALID_GRANT = {                                                       # [C]
    "error": "invalid_grant",
    "error_description": "The provided authorization grant is invalid, expired, revoked, does "
                         "not match the redirection URI used in the authorization request, "
                         "or was issued to another client."}
UNSUPPORTED_GRANT = {                                                   # [P] Doorkeeper
    "error": "unsupported_grant_type",
    "error_description": "The authorization grant type is not supported by the "
                         "authorization server."}
INVALID_TOKEN = {                                                       # [C] body, [P] 401
    "error": "invalid_token",
    "error_description": "The access token provided is expired, revoked, malformed or "
                         "invalid for other reasons."}

# Batch JSON names are unknown in v1 [G]: internal name -> wire name.
BATCH_FIELDS = {
    "number": "number",
    "created": "created",
    "transaction_count": "transaction_count",
    "sales_count": "sales_count",
    "sales_amount": "sales_amount",
    "refund_count": "refund_count",
    "refund_amount": "refund_amount",
    "net_amount": "net_amount",
}
BATCH_LIST_KEY = "batches"                                              # [G]

SALE, AUTHORIZATION, REFUND, CHECK = "SALE", "AUTHORIZATION", "REFUND", "CHECK"
STATUS_CODES = {                                    # state -> (status_code, status_message)
    "authorized": ("N", "Authorization Only"),      # [C]
    "pending": ("Y", "Pending Settlement"),         # [C]
    "voided": ("N", "Voided"),                      # [P]
    "declined": ("N", "Declined"),                  # [P]
}
# export by_date_range "transaction_type" filter values [C] that name a state, not a type
TYPE_FILTER_STATES = {"VOID": "voided", "SETTLED": "settled", "PENDING": "pending",
                      "DECLINED": "declined"}
BILLING_FIELDS = ("name", "street_address", "street_address2", "city", "state", "zip",
                  "country")
SHIPPING_FIELDS = ("name", "street_address", "street_address2", "city", "county", "state",
                   "zip", "country")
_US_DATE = re.compile(r"^(\d{2})/(\d{2})/(\d{4})$")

# Card brands. A card's BIN (its first 6 digits) decides its brand; vault profiles keep
# the BIN beside the masked number, transactions inherit it, ACH has none ("").
DEFAULT_BIN = "401200"              # [C] BIN of the recorded sandbox card 4012000098765439
_BIN = re.compile(r"^\d{6}$")
# (brand, BIN prefix ranges as (low, high) on the first len(low) digits): the networks'
# public IIN ranges [P] (not in the research; good enough for a stand-in). Names as the
# legacy batch export's per-brand fields (research section 5.3) [C]; OTHER is [G].
BRAND_RANGES = (
    ("VISA", (("4", "4"),)),
    ("MASTERCARD", (("51", "55"), ("2221", "2720"))),
    ("AMEX", (("34", "34"), ("37", "37"))),
    ("DISCOVER", (("6011", "6011"), ("644", "649"), ("65", "65"))),
    ("DINERS", (("300", "305"), ("36", "36"), ("38", "39"))),
    ("JCB", (("3528", "3589"),)),
)
# Level 3 [C]: each endpoint takes one brand only.
L3_ENDPOINT_BRANDS = {"level_three/visa": "VISA", "level_three/mastercard": "MASTERCARD"}
L3_DESCRIPTION_MAX = 35             # [P] moqui trims line item descriptions to 35 characters
L3_QUANTITY_PLACES = 4              # [G] quantity: > 0, at most 4 decimals
DEFAULT_FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / \
    "paytrace-recorded"


class PayTraceError(Exception):
    """A validation/processing error: HTTP 400, response_code 1, errors{...}."""

    def __init__(self, errors):
        super().__init__(errors)
        self.errors = errors


def error(code, **values):
    return PayTraceError({code: [ERRORS[code].format(**values)]})


def raise_if(errors):
    if errors:
        raise PayTraceError(errors)


def us_datetime(moment):
    """"M/D/YYYY h:mm:ss AM" [C]: no padding, 12-hour clock, no zone."""
    hour = moment.hour % 12 or 12
    return (f"{moment.month}/{moment.day}/{moment.year} {hour}:{moment.minute:02d}:"
            f"{moment.second:02d} {'AM' if moment.hour < 12 else 'PM'}")


def now():
    """The stand-in's clock: naive local time, like PayTrace's zone-less dates."""
    return datetime.datetime.now().replace(microsecond=0)


def luhn_ok(digits):
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char) * (2 if index % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def mask(number):
    return "x" * (len(number) - 4) + number[-4:]


def card_brand(bin_digits):
    """VISA, MASTERCARD, AMEX, DISCOVER, DINERS, JCB or OTHER; "" without a BIN (ACH)."""
    if not bin_digits:
        return ""
    for brand, ranges in BRAND_RANGES:
        for low, high in ranges:
            if low <= bin_digits[:len(low)] <= high:
                return brand
    return "OTHER"


def export_masked(masked, bin_digits, include_bin):
    """Export form of a masked card number [C]: `*` then the last 4. With include_bin [C]
    the BIN replaces the first 6 stars: "401200******5439" [G format: the length stays]."""
    starred = "*" * (len(masked) - 4) + masked[-4:] if len(masked) > 4 else masked
    if include_bin and bin_digits and len(starred) >= 10:
        return bin_digits + starred[6:]
    return starred


def admin_bin(value):
    """A BIN given to an admin endpoint: 6 digits (a string, or an integer) -> the string."""
    value = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not _BIN.match(value):
        raise AdminError('bin must be 6 digits, like "401200"')
    return value


def places_ok(value, places):
    """True when the Decimal value has at most `places` decimals (False if it is absurd)."""
    try:
        return value == value.quantize(Decimal(1).scaleb(-places))
    except InvalidOperation:
        return False


def flag(value):
    """A boolean request field [G]: JSON true, 1 or "true" (any case); anything else false."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value == 1
    return isinstance(value, str) and value.strip().lower() == "true"


def address(given, fields):
    given = given if isinstance(given, dict) else {}
    return {name: str(given.get(name, "")) for name in fields}


# --------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------

@dataclass
class Profile:
    """A vault customer profile (card or ACH)."""
    customer_id: str
    method: str = "card"
    masked_number: str = "xxxxxxxxxxxx5439"
    expiration_month: int = 12
    expiration_year: int = 2030         # 4 digits
    billing_address: dict = field(default_factory=dict)
    email: str = ""
    bin: str = DEFAULT_BIN              # a card's first 6 digits; "" for ACH
    shipping_address: dict = field(default_factory=dict)
    phone: str = ""

    def row(self):
        """The state dump's and the admin answers' form: the fields, then the brand."""
        return {**vars(self), "card_brand": card_brand(self.bin)}


@dataclass
class Transaction:
    id: int
    kind: str                       # SALE, AUTHORIZATION, REFUND, CHECK
    method: str                     # card or ach
    amount: object                  # Decimal; a capture replaces it with the captured amount
    state: str                      # authorized, pending, voided, declined, settled
    created: datetime.datetime
    invoice_id: str = ""
    customer_id: str = ""
    description: str = ""
    customer_reference_id: str = ""
    tax_amount: object = None
    approval_code: str = ""
    approval_message: str = ""
    masked_number: str = ""
    expiration_month: int = 0
    expiration_year: int = 0
    billing_address: dict = field(default_factory=dict)
    shipping_address: dict = field(default_factory=dict)
    parent_id: object = None        # refunds: the refunded transaction
    authorized_amount: object = None
    captured: bool = False
    batch: object = None
    settled: object = None          # datetime once settled
    level_three: list = field(default_factory=list)     # accepted Level 3 bodies, in order
    bin: str = ""                   # the card's first 6 digits; "" for ACH

    @property
    def status(self):
        if self.state == "settled":
            return f"GB{self.batch}", f"GB{self.batch}"
        return STATUS_CODES[self.state]


@dataclass
class Batch:
    number: int
    created: datetime.datetime
    transaction_ids: list


@dataclass
class Fixture:
    """One recorded exchange, matched on method + path + body with wildcards."""
    name: str
    method: str
    path: str
    body_pattern: re.Pattern
    needs_token: bool
    status: int
    headers: list
    body: str


_PLACEHOLDER = re.compile(r"<(?:INTEGRATOR_ID|ACCESS_TOKEN|PASSWORD)>")
_REPLAY_SKIPPED_HEADERS = {"date", "transfer-encoding", "connection", "content-length"}


def load_fixtures(directory):
    fixtures = []
    for path in sorted(pathlib.Path(directory).glob("*.json")):
        recorded = json.loads(path.read_text(encoding="utf-8"))
        request, response = recorded["request"], recorded["response"]
        pattern = "[^\"&]*".join(re.escape(part) for part in _PLACEHOLDER.split(request["body"]))
        fixtures.append(Fixture(
            name=path.stem, method=request["method"].upper(), path=request["path"],
            body_pattern=re.compile(pattern, re.DOTALL),
            needs_token=any(k.lower() == "authorization" for k in request["headers"]),
            status=response["status"],
            headers=[(k, v) for k, v in response["headers"].items()
                     if k.lower() not in _REPLAY_SKIPPED_HEADERS],
            body=response["body"]))
    return fixtures


# --------------------------------------------------------------------------
# API v3 (beside v1): contract sections 10-12, research section 9
# --------------------------------------------------------------------------
# Every v3 path, header, field and answer of the stand-in is in this section,
# each with its tag: [C] confirmed, [P] probable, [G] the stand-in's guess.

V3_TOKEN_PATH = "/v3/token"                                             # [C]
V3_TOKEN_TYPE = "Bearer"                                                # [C]
V3_INTEGRATOR_HEADER = "X-Integrator-Id"                                # [C]
V3_INVOICE_TYPES = ("SALE", "AUTHORIZATION", "CREATE_CUSTOMER", "SALE_AND_CUSTOMER")  # [C]
V3_ACH_STATUSES = ("INITIATED", "ACCEPTED", "VOIDED", "ORIGINATED", "SETTLED",      # [C]
                   "PARTIALLY_SETTLED", "ERROR", "DECLINED", "NSF_DECLINED", "REJECTED",
                   "FAILED", "VERIFYING", "RETURNED", "TECHNICAL_ERROR")
V3_IN_PROGRESS = ("INITIATED", "ACCEPTED", "ORIGINATED", "VERIFYING")     # [G] voidable
V3_RETURN_STATUSES = ("RETURNED", "NSF_DECLINED", "REJECTED")             # [C] contract §12
V3_DATE_TYPES = {"PROCESSED": "processed_at", "SETTLED": "settled_at"}  # PROCESSED [C]
V3_INVALID = "The given data was invalid."                              # [G] 422 message
V3_UNAUTHENTICATED = {"message": "Unauthenticated.", "data": []}        # [G] 401 body
V3_BAD_CLIENT = {"message": "Invalid client credentials.", "data": []}  # [G] 401 body
V3_NOT_FOUND = {"message": "Transaction not found.", "data": []}        # [G] 404 body
_V3_MONEY = re.compile(r"^\d{1,9}\.\d{2}$")                  # "612.00" [C] format
_V3_EXPIRE_AT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")   # [C] contract §11
_V3_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")                # list start/end_date [G]
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                   r"[0-9a-fA-F]{12}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class V3Invalid(Exception):
    """422 {"message", "data":[{"field","detail"}]} [C]."""

    def __init__(self, problems):
        super().__init__(problems)
        self.problems = problems


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def iso_z(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None


@dataclass
class PaymentRequest:
    """A v3 invoice (payment request) and what the payer did with it."""
    invoice_id: str
    transaction_type: str
    invoice_number: str
    invoice_amount: object          # Decimal or None (CREATE_CUSTOMER without an amount)
    email: str
    expire_at: datetime.datetime
    customer_label: str = ""
    is_amount_editable: bool = False
    is_invoice_number_editable: bool = False
    email_required: bool = True
    status: str = "open"            # open, paid, expired
    created_at: datetime.datetime = None
    paid_at: datetime.datetime = None
    transaction_id: object = None   # the v1 transaction the payer's payment became
    customer_id: str = None         # the vault profile the payer stored


@dataclass
class AchTransaction:
    """A v3 ACH debit (PAYMENT) or its refund (REFUND)."""
    ach_transaction_id: str
    transaction_status: str
    amount: object                  # Decimal
    invoice_number: str
    customer_id: str
    idempotency_key: str
    processed_at: datetime.datetime
    settled_at: datetime.datetime = None
    return_reason: str = None
    transaction_type: str = "PAYMENT"       # [G] extra field: PAYMENT or REFUND
    original_transaction_id: str = None     # [G] extra field: a refund's debit

    def wire(self):
        """The contract's transaction object [P], then the stand-in's two extras [G]."""
        return {"ach_transaction_id": self.ach_transaction_id,
                "transaction_status": self.transaction_status,
                "amount": money_str(self.amount), "invoice_number": self.invoice_number,
                "customer_id": self.customer_id, "idempotency_key": self.idempotency_key,
                "processed_at": iso_z(self.processed_at),
                "settled_at": iso_z(self.settled_at), "return_reason": self.return_reason,
                "transaction_type": self.transaction_type,
                "original_transaction_id": self.original_transaction_id}


class PayTraceV3:
    """The v3 routes and admin endpoints; mixed into PayTraceApp."""

    V3_CONFIG = {"merchant_id": 1234567, "v3_token_ttl": 900,
                 "start_request_id": 81000001, "start_ach_id": 93000001,
                 "ach_initial_status": "ACCEPTED"}

    def mint_v3_token(self):
        """One segment, distinct from v1's three; still starts with "pttok" (990 test)."""
        return f"pttokv3{secrets.token_hex(24)}"

    def v3_reset(self):
        self.v3_tokens.clear()
        self.payment_requests = {}
        self.ach = {}                       # ach_transaction_id -> AchTransaction
        self.ach_keys = {}                  # idempotency_key -> (fingerprint, ach id)
        self.last_request_id = 0
        self.last_ach_id = 0

    def v3_snapshot(self):
        return {"payment_requests": [self.request_row(r)
                                     for r in self.payment_requests.values()],
                "ach_transactions": [t.wire() for t in self.ach.values()]}

    def request_row(self, req):
        self.request_status(req)
        row = dict(vars(req))
        for key in ("expire_at", "created_at", "paid_at"):
            row[key] = iso_z(row[key])
        row["invoice_amount"] = money_str(req.invoice_amount) \
            if req.invoice_amount is not None else None
        return row

    @staticmethod
    def request_status(req):
        """An open request past its expire_at is expired."""
        if req.status == "open" and utc_now() >= req.expire_at:
            req.status = "expired"
        return req.status

    # -- routes ------------------------------------------------------------------
    def v3_routes(self, router):
        router.add("POST", V3_TOKEN_PATH, self.v3_token)
        call = self.v3_call
        router.add("POST", "/v3/invoice", call(self.v3_invoice))                    # [C]
        router.add("POST", "/v3/checks/payment", call(self.v3_ach_payment, True))   # [C]
        router.add("GET", "/v3/checks/transactions/idempotency-keys/{key}",         # [C]
                   call(self.v3_ach_by_key))
        router.add("GET", "/v3/checks/transactions/{ach_id}", call(self.v3_ach_get))  # [C]
        router.add("GET", "/v3/checks/transactions", call(self.v3_ach_list))        # [C]
        router.add("POST", "/v3/checks/void", call(self.v3_ach_void, True))         # [P]
        router.add("POST", "/v3/checks/refund", call(self.v3_ach_refund, True))     # [P]

    def v3_admin_routes(self, router):
        router.add("POST", "/_standin/payment_requests/{invoice_id}/pay", self.admin_v3_pay)
        router.add("POST", "/_standin/payment_requests/{invoice_id}/expire",
                   self.admin_v3_expire)
        router.add("POST", "/_standin/ach/{ach_id}/settle", self.admin_ach_settle)
        router.add("POST", "/_standin/ach/{ach_id}/return", self.admin_ach_return)
        router.add("POST", "/_standin/ach/{ach_id}/status", self.admin_ach_status)

    def v3_call(self, handler, money=False):
        """Bearer v3 token (401), X-Integrator-Id and merchant_id (422), then handler."""
        def call(request, **params):
            scheme, _, token = request.header("Authorization", "").partition(" ")
            if scheme != "Bearer" or not self.v3_tokens.is_valid(token):
                return self.json(401, V3_UNAUTHENTICATED)
            try:
                if request.method == "GET":
                    body = {k: v[0] for k, v in request.query.items()}
                else:
                    body = self.v3_body(request)
                problems = []
                integrator = request.header(V3_INTEGRATOR_HEADER)
                if integrator is None or integrator == "":
                    problems.append((V3_INTEGRATOR_HEADER,
                                     "The X-Integrator-Id header is required."))
                elif integrator != self.config["integrator_id"]:
                    problems.append((V3_INTEGRATOR_HEADER,
                                     "The X-Integrator-Id header is invalid."))
                problems += self.v3_merchant(body, request.method == "GET")
                if problems:
                    raise V3Invalid(problems)
                status, payload = handler(body, **params)
                response = self.json(status, payload)
            except V3Invalid as exc:
                response = self.json(422, {"message": V3_INVALID, "data": [
                    {"field": f, "detail": d} for f, d in exc.problems]})
            if money:
                response.delay_after = self.config["approval_delay"]
            return response
        return call

    @staticmethod
    def v3_body(request):
        try:
            body = parse_json(request.body)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise V3Invalid([("body", "The request body must be a JSON object.")])
        return body

    def v3_merchant(self, body, from_query):
        """merchant_id: an integer in the body, digits in a GET's query [C]."""
        value = body.get("merchant_id")
        if value is None or value == "":
            return [("merchant_id", "The merchant id field is required.")]
        if from_query:
            ok = isinstance(value, str) and value.isdigit() and \
                int(value) == self.config["merchant_id"]
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and \
                value == self.config["merchant_id"]
        if not ok:
            return [("merchant_id", "The selected merchant id is invalid.")]
        return []

    # -- token [C shape, P lifetime] -----------------------------------------------
    def v3_token(self, request):
        """Form-encoded client_credentials only; 201 {"data":{...}}."""
        form = {k: v[0] for k, v in
                urllib.parse.parse_qs(request.text, keep_blank_values=True).items()}
        problems = [(name, f"The {name.replace('_', ' ')} field is required.")
                    for name in ("grant_type", "client_id", "client_secret")
                    if not form.get(name)]
        if form.get("grant_type") and form["grant_type"] != "client_credentials":
            problems.append(("grant_type", "The selected grant type is invalid."))   # [G]
        if problems:
            return self.json(422, {"message": V3_INVALID, "data": [
                {"field": f, "detail": d} for f, d in problems]})
        if (form["client_id"] != self.config["username"]
                or form["client_secret"] != self.config["password"]):
            return self.json(401, V3_BAD_CLIENT)
        ttl = self.config["v3_token_ttl"]
        token = self.v3_tokens.issue(ttl)
        return self.json(201, {"data": {"access_token": token, "token_type": V3_TOKEN_TYPE,
                                        "expires_in": ttl}})

    # -- field checks ---------------------------------------------------------------
    @staticmethod
    def v3_money(body, name, problems, required=True, allow_zero=False):
        """A string with two decimals, "612.00" [C format; G strictness]."""
        value = body.get(name)
        if value is None:
            if required:
                problems.append((name, f"The {name.replace('_', ' ')} field is required."))
            return None
        if not (isinstance(value, str) and _V3_MONEY.match(value)) or \
                (Decimal(value) <= 0 and not allow_zero):
            problems.append((name, f"The {name.replace('_', ' ')} must be a positive "
                                   "amount with two decimals, like \"612.00\"."))
            return None
        return Decimal(value)

    @staticmethod
    def v3_text(body, name, problems, required=True, limit=50):
        value = body.get(name)
        if value is None or value == "":
            if required:
                problems.append((name, f"The {name.replace('_', ' ')} field is required."))
            return ""
        if not isinstance(value, str) or len(value) > limit:
            problems.append((name, f"The {name.replace('_', ' ')} must be a string of at "
                                   f"most {limit} characters."))
            return ""
        return value

    @staticmethod
    def v3_bool(body, name, problems, default):
        value = body.get(name, default)
        if not isinstance(value, bool):
            problems.append((name, f"The {name.replace('_', ' ')} field must be true or "
                                   "false."))
            return default
        return value

    @staticmethod
    def v3_uuid(body, problems):
        value = body.get("idempotency_key")
        if value is None or value == "":
            problems.append(("idempotency_key", "The idempotency key field is required."))
        elif not (isinstance(value, str) and _UUID.match(value)):
            problems.append(("idempotency_key", "The idempotency key must be a valid UUID."))
        else:
            return value.lower()
        return None

    # -- payment requests -------------------------------------------------------------
    def v3_invoice(self, body):
        """POST /v3/invoice [C request fields; G answer and strictness]."""
        problems = []
        kind = body.get("transaction_type")
        if kind is None:
            problems.append(("transaction_type", "The transaction type field is required."))
        elif kind not in V3_INVOICE_TYPES:
            problems.append(("transaction_type", "The selected transaction type is invalid."))
        number = self.v3_text(body, "invoice_number", problems)
        amount = self.v3_money(body, "invoice_amount", problems,
                               required=kind != "CREATE_CUSTOMER",
                               allow_zero=kind == "CREATE_CUSTOMER")
        email = body.get("email")
        if email is None or email == "":
            problems.append(("email", "The email field is required."))
        elif not (isinstance(email, str) and _EMAIL.match(email) and len(email) <= 254):
            problems.append(("email", "The email must be a valid email address."))
        expire_at = None
        raw_expiry = body.get("expire_at")
        if raw_expiry is None or raw_expiry == "":
            problems.append(("expire_at", "The expire at field is required."))
        else:
            try:
                if not (isinstance(raw_expiry, str) and _V3_EXPIRE_AT.match(raw_expiry)):
                    raise ValueError
                expire_at = datetime.datetime.strptime(raw_expiry, "%Y-%m-%dT%H:%M:%SZ") \
                    .replace(tzinfo=datetime.timezone.utc)
            except ValueError:
                problems.append(("expire_at", "The expire at must be a date like "
                                              "2026-12-31T23:59:59Z."))
            else:
                if expire_at <= utc_now():
                    problems.append(("expire_at", "The expire at must be a date after now."))
        label = self.v3_text(body, "customer_label", problems, required=False, limit=100)
        flags = {name: self.v3_bool(body, name, problems, default)
                 for name, default in (("is_amount_editable", False),
                                       ("is_invoice_number_editable", False),
                                       ("email_required", True))}
        if problems:
            raise V3Invalid(problems)
        request_id = self.last_request_id = max(self.config["start_request_id"],
                                                self.last_request_id + 1)
        req = PaymentRequest(invoice_id=str(request_id), transaction_type=kind,
                             invoice_number=number, invoice_amount=amount, email=email,
                             expire_at=expire_at, customer_label=label,
                             created_at=utc_now(), **flags)
        self.payment_requests[req.invoice_id] = req
        return 201, {"data": {"invoice_id": req.invoice_id}}

    # -- ACH -------------------------------------------------------------------------
    def new_ach(self, **fields):
        ach_id = self.last_ach_id = max(self.config["start_ach_id"], self.last_ach_id + 1)
        txn = AchTransaction(ach_transaction_id=str(ach_id), processed_at=utc_now(), **fields)
        self.ach[txn.ach_transaction_id] = txn
        self.ach_keys[txn.idempotency_key] = txn.ach_transaction_id
        return txn

    def v3_ach_payment(self, body):
        """POST /v3/checks/payment [C path and key; P fields]; one debit per key."""
        problems = []
        customer_id = body.get("customer_id")
        customer_id = str(customer_id) if isinstance(customer_id, (str, int)) and \
            not isinstance(customer_id, bool) else ""
        profile = self.profiles.get(customer_id)
        if not customer_id:
            problems.append(("customer_id", "The customer id field is required."))
        elif profile is None or profile.method != "ach":
            problems.append(("customer_id", "The selected customer id is invalid."))
        amount = self.v3_money(body, "amount", problems)
        number = self.v3_text(body, "invoice_number", problems)
        key = self.v3_uuid(body, problems)
        if problems:
            raise V3Invalid(problems)
        earlier = self.ach.get(self.ach_keys.get(key, ""))
        if earlier is not None:
            if (earlier.transaction_type, earlier.customer_id, earlier.amount,
                    earlier.invoice_number) != ("PAYMENT", customer_id, amount, number):
                raise V3Invalid([("idempotency_key", "The idempotency key has already been "
                                                     "used for another request.")])   # [G]
            return 200, {"transaction_id": earlier.ach_transaction_id, "data": []}
        status = "DECLINED" if amount == DECLINE_AMOUNT else self.config["ach_initial_status"]
        txn = self.new_ach(transaction_status=status, amount=amount, invoice_number=number,
                           customer_id=customer_id, idempotency_key=key)
        return 200, {"transaction_id": txn.ach_transaction_id, "data": []}

    def v3_ach_by_key(self, body, key):
        txn = self.ach.get(self.ach_keys.get(key.lower(), ""))
        if txn is None:
            return 404, V3_NOT_FOUND
        return 200, {"data": txn.wire()}

    def v3_ach_get(self, body, ach_id):
        txn = self.ach.get(ach_id)
        if txn is None:
            return 404, V3_NOT_FOUND
        return 200, {"data": txn.wire()}

    def v3_ach_list(self, body):
        """GET /v3/checks/transactions [C]: a date range, paged; {"data","total"} [P]."""
        problems, dates = [], []
        for name in ("start_date", "end_date"):
            try:
                if not _V3_DATE.match(body.get(name, "")):
                    raise ValueError
                dates.append(datetime.date.fromisoformat(body[name]))
            except ValueError:
                problems.append((name, f"The {name.replace('_', ' ')} must be a date like "
                                       "2026-12-31."))
        date_type = body.get("date_type", "PROCESSED")
        if date_type not in V3_DATE_TYPES:
            problems.append(("date_type", "The selected date type is invalid."))
        numbers = {}
        for name, default, low, high in (("limit", 30, 1, 100), ("offset", 0, 0, 10 ** 9)):
            raw = body.get(name, "")
            value = int(raw) if raw.isdigit() else (default if raw == "" else None)
            if value is None or not low <= value <= high:
                problems.append((name, f"The {name} must be an integer from {low} to "
                                       f"{high}."))
            numbers[name] = value
        if problems:
            raise V3Invalid(problems)
        attribute = V3_DATE_TYPES[date_type]
        found = [t for t in self.ach.values() if getattr(t, attribute) is not None
                 and dates[0] <= getattr(t, attribute).date() <= dates[1]]
        found.sort(key=lambda t: (getattr(t, attribute), int(t.ach_transaction_id)))
        page = found[numbers["offset"]:numbers["offset"] + numbers["limit"]]
        return 200, {"data": [t.wire() for t in page], "total": len(found)}

    def v3_ach_target(self, body, problems):
        ach_id = body.get("ach_transaction_id")
        ach_id = str(ach_id) if isinstance(ach_id, (str, int)) and \
            not isinstance(ach_id, bool) else ""
        if not ach_id:
            problems.append(("ach_transaction_id", "The ach transaction id field is required."))
            return None
        txn = self.ach.get(ach_id)
        if txn is None:
            problems.append(("ach_transaction_id",
                             "The selected ach transaction id is invalid."))
        return txn

    def v3_ach_void(self, body):
        """POST /v3/checks/void [P]: only before settlement (in progress) [G]."""
        problems = []
        txn = self.v3_ach_target(body, problems)
        if problems:
            raise V3Invalid(problems)
        if txn.transaction_status not in V3_IN_PROGRESS:
            raise V3Invalid([("ach_transaction_id", "The transaction cannot be voided in "
                                                    f"status {txn.transaction_status}.")])
        txn.transaction_status = "VOIDED"
        return 200, {"transaction_id": txn.ach_transaction_id, "data": []}     # [G]

    def v3_ach_refund(self, body):
        """POST /v3/checks/refund [P]: a settled debit, at most what remains; a new
        REFUND transaction, exactly once per idempotency key."""
        problems = []
        txn = self.v3_ach_target(body, problems)
        amount = self.v3_money(body, "amount", problems)
        key = self.v3_uuid(body, problems)
        if problems:
            raise V3Invalid(problems)
        earlier = self.ach.get(self.ach_keys.get(key, ""))
        if earlier is not None:
            if (earlier.transaction_type, earlier.original_transaction_id, earlier.amount) != \
                    ("REFUND", txn.ach_transaction_id, amount):
                raise V3Invalid([("idempotency_key", "The idempotency key has already been "
                                                     "used for another request.")])
            return 200, {"transaction_id": earlier.ach_transaction_id, "data": []}
        if txn.transaction_type != "PAYMENT" or txn.transaction_status != "SETTLED":
            raise V3Invalid([("ach_transaction_id", "Only a settled payment can be refunded; "
                                                    f"this one is {txn.transaction_status}.")])
        refunded = sum((r.amount for r in self.ach.values()
                        if r.original_transaction_id == txn.ach_transaction_id
                        and r.transaction_status not in ("VOIDED", "DECLINED", "FAILED",
                                                         "ERROR", "TECHNICAL_ERROR")), ZERO)
        if amount > txn.amount - refunded:
            raise V3Invalid([("amount", "The amount exceeds what remains to be refunded ("
                                        f"{money_str(txn.amount - refunded)}).")])
        refund = self.new_ach(transaction_status=self.config["ach_initial_status"],
                              amount=amount, invoice_number=txn.invoice_number,
                              customer_id=txn.customer_id, idempotency_key=key,
                              transaction_type="REFUND",
                              original_transaction_id=txn.ach_transaction_id)
        return 200, {"transaction_id": refund.ach_transaction_id, "data": []}

    # -- admin: play the payer and the bank ---------------------------------------------
    def admin_payment_request(self, invoice_id):
        req = self.payment_requests.get(invoice_id)
        if req is None:
            raise AdminError(f"unknown payment request {invoice_id}")
        return req

    def admin_v3_pay(self, request, body, invoice_id):
        """The payer pays (and/or stores a card) on the hosted page."""
        req = self.admin_payment_request(invoice_id)
        if self.request_status(req) != "open":
            raise AdminError(f"payment request {invoice_id} is {req.status}")
        body = body if isinstance(body, dict) else {}
        store = body.get("store_card", req.transaction_type in ("SALE_AND_CUSTOMER",
                                                                "CREATE_CUSTOMER"))
        if not isinstance(store, bool):
            raise AdminError("store_card must be true or false")
        amount = req.invoice_amount
        if "amount" in body:
            amount = parse_decimal(body["amount"])
            if amount is None or amount <= 0 or not has_cents_only(amount):
                raise AdminError("amount must be a positive amount with two decimals")
            if not req.is_amount_editable and amount != req.invoice_amount:
                raise AdminError("the amount of this payment request is not editable")
        masked = str(body.get("masked_number", "xxxxxxxxxxxx1111"))
        bin_digits = admin_bin(body.get("bin", DEFAULT_BIN))     # the payer's card
        source = {"masked_number": masked, "expiration_month": 12, "expiration_year": 2030,
                  "billing_address": {"name": req.customer_label}, "customer_id": "",
                  "bin": bin_digits}
        if store:
            customer_id = str(body.get("customer_id") or f"HP{req.invoice_id}")
            if customer_id in self.profiles:
                raise AdminError(f"vault profile {customer_id} exists already")
            profile = Profile(customer_id=customer_id, method="card", masked_number=masked,
                              billing_address={"name": req.customer_label}, email=req.email,
                              bin=bin_digits)
            self.profiles[customer_id] = profile
            source = self.card_of_profile(profile)
            req.customer_id = customer_id
        payload = None
        if req.transaction_type != "CREATE_CUSTOMER":
            kind = AUTHORIZATION if req.transaction_type == "AUTHORIZATION" else SALE
            payload = self.charge(kind, {"invoice_id": req.invoice_number}, source, amount,
                                  show_card=False)
            req.transaction_id = payload["transaction_id"]
            if not payload["success"]:          # declined (0.29): the request stays open
                return {"request": self.request_row(req), "transaction": payload,
                        "customer_id": req.customer_id}
        req.status, req.paid_at = "paid", utc_now()
        return {"request": self.request_row(req), "transaction": payload,
                "customer_id": req.customer_id}

    def admin_v3_expire(self, request, body, invoice_id):
        req = self.admin_payment_request(invoice_id)
        if self.request_status(req) == "paid":
            raise AdminError(f"payment request {invoice_id} is paid")
        req.status = "expired"
        req.expire_at = min(req.expire_at, utc_now())
        return {"request": self.request_row(req)}

    def admin_ach(self, ach_id):
        txn = self.ach.get(ach_id)
        if txn is None:
            raise AdminError(f"unknown ACH transaction {ach_id}")
        return txn

    def admin_ach_settle(self, request, body, ach_id):
        txn = self.admin_ach(ach_id)
        if txn.transaction_status not in V3_IN_PROGRESS:
            raise AdminError(f"ACH transaction {ach_id} is {txn.transaction_status}")
        txn.transaction_status, txn.settled_at = "SETTLED", utc_now()
        return {"transaction": txn.wire()}

    def admin_ach_return(self, request, body, ach_id):
        txn = self.admin_ach(ach_id)
        body = body if isinstance(body, dict) else {}
        status = body.get("status", "RETURNED")
        if status not in V3_RETURN_STATUSES:
            raise AdminError(f"status must be one of {', '.join(V3_RETURN_STATUSES)}")
        if txn.transaction_status not in V3_IN_PROGRESS + ("SETTLED", "PARTIALLY_SETTLED"):
            raise AdminError(f"ACH transaction {ach_id} is {txn.transaction_status}")
        txn.transaction_status = status
        txn.return_reason = str(body.get("reason", "R01"))
        return {"transaction": txn.wire()}

    def admin_ach_status(self, request, body, ach_id):
        """Any status of the [C] list, no questions asked (settled_at follows SETTLED)."""
        txn = self.admin_ach(ach_id)
        body = body if isinstance(body, dict) else {}
        status = body.get("status")
        if status not in V3_ACH_STATUSES:
            raise AdminError(f"status must be one of {', '.join(V3_ACH_STATUSES)}")
        txn.transaction_status = status
        if status in ("SETTLED", "PARTIALLY_SETTLED") and txn.settled_at is None:
            txn.settled_at = utc_now()
        if "reason" in body:
            txn.return_reason = body["reason"]
        return {"transaction": txn.wire()}


# --------------------------------------------------------------------------
# The application
# --------------------------------------------------------------------------

class PayTraceApp(PayTraceV3, StandinApp):
    """PayTrace stand-in: OAuth, card and ACH money calls, exports, batches, replay, v3."""

    NAME = "paytrace"
    CONFIG_DEFAULTS = {"username": "pt-user", "password": "pt-pass",
                       "integrator_id": "pt-integrator", "token_ttl": 7200,
                       "auto_void": False, "invalid_grant_status": 400,
                       "approval_delay": 0.0, "start_transaction_id": 125391300,
                       "replay": False, **PayTraceV3.V3_CONFIG}
    CHUNKED = True                                  # [C] recorded answers are chunked
    MALFORMED_BODY = b'{"success":true,"response_code":101,"status_message":"Your transa'

    def __init__(self, options):
        self.v3_tokens = TokenStore(self.mint_v3_token)    # v3 tokens, apart from v1's
        super().__init__(options)

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument("--replay", metavar="DIR", nargs="?", const=str(DEFAULT_FIXTURES),
                            help="answer recorded exchanges from DIR (default: "
                                 "test/fixtures/paytrace-recorded)")

    def startup_config(self):
        config = super().startup_config()
        config["replay"] = bool(getattr(self.options, "replay", None))
        return config

    def mint_token(self):
        """Three colon-separated segments like PayTrace's, prefixed for log greps."""
        return (f"pttok{secrets.token_hex(7)}:{secrets.token_hex(7)}:"
                f"{secrets.token_hex(32)}")

    def reset_state(self):
        self.profiles = {}
        self.transactions = {}
        self.batches = []
        self.last_id = 0
        self.next_batch = 571
        startup_dir = getattr(self.options, "replay", None)
        self.fixtures = load_fixtures(startup_dir) if startup_dir else []
        self.v3_reset()

    def state_snapshot(self):
        return {"customers": [p.row() for p in self.profiles.values()],
                "transactions": [self._state_row(t) for t in self.transactions.values()],
                "batches": [self.batch_summary(b) for b in self.batches],
                "replay_fixtures": [f.name for f in self.fixtures],
                "v3_tokens_issued": len(self.v3_tokens.issued), **self.v3_snapshot()}

    @staticmethod
    def _state_row(txn):
        row = dict(vars(txn))
        row["status_code"], row["status_message"] = txn.status
        row["card_brand"] = card_brand(txn.bin)
        for key in ("created", "settled"):
            row[key] = row[key].isoformat() if row[key] else None
        return row

    # -- routes ----------------------------------------------------------------
    def add_routes(self, router):
        router.add("POST", "/oauth/token", self.token)
        api = self.api_call
        for path, handler, money in (
                ("transactions/sale/keyed", self.sale_keyed, True),
                ("transactions/sale/by_customer", self.sale_by_customer, True),
                ("transactions/sale/by_transaction", self.sale_by_transaction, True),
                ("transactions/authorization/keyed", self.authorization_keyed, True),
                ("transactions/authorization/by_customer", self.authorization_by_customer, True),
                ("transactions/authorization/by_transaction", self.authorization_by_transaction,
                 True),
                ("transactions/authorization/capture", self.capture, True),
                ("transactions/void", self.void, True),
                ("transactions/refund/for_transaction", self.refund, True),
                ("checks/sale/by_customer", self.check_sale_by_customer, True),
                ("checks/manage/void", self.check_void, True),
                ("checks/refund/by_transaction", self.check_refund, True),
                ("customer/create", self.customer_create, False),
                ("customer/export", self.customer_export, False),                  # [C]
                ("transactions/export/by_id", self.export_by_id, False),
                ("transactions/export/by_date_range", self.export_by_date_range, False),
                ("transactions/settle", self.settle, False),
                ("batches/export", self.batches_export, False),
                ("batches/transaction_list", self.batch_transaction_list, False),
                ("level_three/visa", self.level_three_visa, False),
                ("level_three/mastercard", self.level_three_mastercard, False)):
            router.add("POST", "/v1/" + path, api(handler, money))
        self.v3_routes(router)

    def add_admin_routes(self, router):
        router.add("POST", "/_standin/customers", self.admin_customers)
        router.add("POST", "/_standin/customers/{customer_id}", self.admin_update_customer)
        router.add("POST", "/_standin/settle", self.admin_settle)
        router.add("POST", "/_standin/replay", self.admin_replay)
        self.v3_admin_routes(router)

    # v1 and v3 tokens alike: expired together, listed together (990's token files)
    def _admin_expire_tokens(self, request, body):
        return {"expired": self.tokens.expire_all() + self.v3_tokens.expire_all()}

    def _admin_tokens(self, request, body):
        return {"issued": list(self.tokens.issued) + list(self.v3_tokens.issued)}

    def route(self, request):
        if self.config["replay"]:
            if not self.fixtures:       # replay switched on through /_standin/config
                self.fixtures = load_fixtures(DEFAULT_FIXTURES)
            replayed = self.replay(request)
            if replayed is not None:
                return replayed
        return self.rails_headers(request, super().route(request))

    def not_found(self, request):
        return self.json(404, {"status": 404, "error": "Not Found"})

    # -- HTTP envelope ------------------------------------------------------------
    def rails_headers(self, request, response):
        """Headers PayTrace's Rails stack adds [C]: cache-control, etag, request id, runtime."""
        if request.path == "/oauth/token":
            cache = "no-store"
        else:
            cache = "max-age=0, private, must-revalidate" if response.status == 200 \
                else "no-cache"
        response.headers.append(("cache-control", cache))
        if response.status == 200:
            response.headers.append(("etag", f'W/"{hashlib.md5(response.body).hexdigest()}"'))
        response.headers.append(("x-request-id", str(uuid.uuid4())))
        response.headers.append(("x-runtime", f"{response.delay_after + 0.012345:.6f}"))
        return response

    def api_call(self, handler, money):
        """Wrap a /v1 handler: bearer token, JSON body, integrator_id, error mapping."""
        def call(request):
            denied = self.check_token(request)
            if denied is not None:
                return denied
            try:
                body = self.v1_body(request)
                response = self.json(200, handler(body))
            except PayTraceError as exc:
                response = self.json(400, {"success": False, "response_code": 1,
                                           "status_message": STATUS_MESSAGES[1],
                                           "errors": exc.errors,
                                           "external_transaction_id": ""})
            if money:
                response.delay_after = self.config["approval_delay"]
            return response
        return call

    def check_token(self, request):
        """Only "Bearer" with a capital B is accepted [C] (PayTrace ESC-141)."""
        scheme, _, token = request.header("Authorization", "").partition(" ")
        if scheme == "Bearer" and self.tokens.is_valid(token):
            return None
        challenge = (f'Bearer realm="Doorkeeper", error="invalid_token", '
                     f'error_description="{INVALID_TOKEN["error_description"]}"')
        return self.json(401, INVALID_TOKEN, [("www-authenticate", challenge)])

    def v1_body(self, request):
        try:
            body = parse_json(request.body)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise error("9008")
        if body.get("integrator_id") != self.config["integrator_id"]:
            raise error("9001")
        return body

    # -- OAuth [C] -------------------------------------------------------------------
    def token(self, request):
        fields = self.token_fields(request)
        if fields.get("grant_type") != "password":
            return self.json(400, UNSUPPORTED_GRANT)
        if (fields.get("username") != self.config["username"]
                or fields.get("password") != self.config["password"]):
            return self.json(self.config["invalid_grant_status"], INVALID_GRANT)
        return self.json(200, self.token_payload(self.tokens.issue(self.config["token_ttl"])))

    def token_payload(self, token):
        return {"access_token": token, "token_type": "Bearer",
                "expires_in": self.config["token_ttl"], "created_at": int(time.time())}

    @staticmethod
    def token_fields(request):
        """Form-encoded or JSON, both accepted [C]."""
        content_type = request.header("Content-Type", "")
        if "json" in content_type or (not content_type and request.body.lstrip()[:1] == b"{"):
            try:
                body = parse_json(request.body)
            except ValueError:
                return {}
            return {k: str(v) for k, v in body.items()} if isinstance(body, dict) else {}
        form = urllib.parse.parse_qs(request.text, keep_blank_values=True)
        return {k: v[0] for k, v in form.items()}

    # -- field parsing -------------------------------------------------------------
    @staticmethod
    def amount(body, errors, required=True):
        if "amount" not in body and not required:
            return None
        value = parse_decimal(body.get("amount"))
        if value is None or value <= 0 or not has_cents_only(value):
            errors.update(error("9002").errors)
        return value

    @staticmethod
    def transaction_id(body, errors, key="transaction_id"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        errors.update(error("58" if key == "transaction_id" else "80").errors)
        return None

    def find(self, txn_id, method="card"):
        txn = self.transactions.get(txn_id)
        if txn is None or txn.method != method:
            raise error("811" if method == "card" else "80")
        return txn

    def profile(self, body, method, errors):
        customer_id = str(body.get("customer_id", ""))
        found = self.profiles.get(customer_id)
        if found is None or found.method != method:
            errors.update(error("30", customer_id=customer_id).errors)
        return found

    @staticmethod
    def keyed_card(body, errors):
        """A card from the request body: number (Luhn), month, 4-digit year [C] codes."""
        card = body.get("credit_card") if isinstance(body.get("credit_card"), dict) else {}
        number = str(card.get("number", "")).replace(" ", "")
        if not (number.isdigit() and 13 <= len(number) <= 19 and luhn_ok(number)):
            errors.update(error("35").errors)
        month = parse_decimal(card.get("expiration_month"))
        if month is None or not 1 <= month <= 12 or month != int(month):
            errors.update(error("43").errors)
        year = parse_decimal(card.get("expiration_year"))
        if year is None or not 2000 <= year <= 2099 or year != int(year):
            errors.update(error("44").errors)
        if errors:
            return None
        return {"masked_number": mask(number), "expiration_month": int(month),
                "expiration_year": int(year), "bin": number[:6],
                "billing_address": body.get("billing_address", {})}

    @staticmethod
    def card_of_profile(profile):
        return {"masked_number": profile.masked_number,
                "expiration_month": profile.expiration_month,
                "expiration_year": profile.expiration_year,
                "billing_address": profile.billing_address,
                "customer_id": profile.customer_id, "bin": profile.bin}

    @staticmethod
    def card_of_transaction(txn):
        return {"masked_number": txn.masked_number, "expiration_month": txn.expiration_month,
                "expiration_year": txn.expiration_year,
                "billing_address": txn.billing_address, "customer_id": txn.customer_id,
                "bin": txn.bin}

    # -- transactions --------------------------------------------------------------
    def new_transaction(self, kind, method, amount, state, body, source):
        # honours a start_transaction_id set through /_standin/config at any time
        txn_id = self.last_id = max(self.config["start_transaction_id"], self.last_id + 1)
        tax = parse_decimal(body.get("tax_amount"))
        txn = Transaction(
            id=txn_id, kind=kind, method=method, amount=amount, state=state, created=now(),
            invoice_id=str(body.get("invoice_id", "")),
            customer_id=str(source.get("customer_id", "")),
            description=str(body.get("description", "")),
            customer_reference_id=str(body.get("customer_reference_id", "")),
            tax_amount=tax, masked_number=source.get("masked_number", ""),
            expiration_month=source.get("expiration_month", 0),
            expiration_year=source.get("expiration_year", 0),
            billing_address=address(body.get("billing_address")
                                    or source.get("billing_address"), BILLING_FIELDS),
            shipping_address=address(body.get("shipping_address"), SHIPPING_FIELDS),
            parent_id=source.get("parent_id"), bin=source.get("bin", ""))
        self.transactions[txn_id] = txn
        return txn

    @staticmethod
    def card_expired(source):
        """A card whose expiry month has passed.  [P]: the issuer declines it with
        the sandbox trigger's answer (102, EXPIRED CARD), see research §2."""
        year, month = source.get("expiration_year") or 0, source.get("expiration_month") or 0
        if not year or not month:
            return False
        if year < 100:
            year += 2000
        today = utc_now()
        return (year, month) < (today.year, today.month)

    def charge(self, kind, body, source, amount, show_card):
        """Sale or authorization: approve, decline (0.29, or an expired card) or
        auto-void (config)."""
        approved_state = "pending" if kind == SALE else "authorized"
        txn = self.new_transaction(kind, "card", amount, approved_state, body, source)
        txn.authorized_amount = amount
        if amount == DECLINE_AMOUNT or self.card_expired(source):
            txn.state, code = "declined", 102
            txn.approval_message = DECLINE_MESSAGE
        else:
            code = 103 if self.config["auto_void"] else 101
            txn.state = "voided" if code == 103 else approved_state
            txn.approval_code = f"TAS{(txn.id * 7919) % 1000:03d}"
            txn.approval_message = APPROVAL_MESSAGE
        payload = {"success": code != 102, "response_code": code,
                   "status_message": STATUS_MESSAGES[code], "transaction_id": txn.id,
                   "approval_code": txn.approval_code,
                   "approval_message": txn.approval_message, "avs_response": AVS_RESPONSE,
                   "csc_response": "", "external_transaction_id": ""}
        if show_card:       # keyed only: absent on by_customer/by_transaction [C] recorded
            payload["masked_card_number"] = txn.masked_number
        return payload

    def charge_keyed(self, kind, body):
        errors = {}
        amount = self.amount(body, errors)
        card = self.keyed_card(body, errors)
        raise_if(errors)
        return self.charge(kind, body, card, amount, show_card=True)

    def charge_by_customer(self, kind, body):
        errors = {}
        amount = self.amount(body, errors)
        profile = self.profile(body, "card", errors)
        raise_if(errors)
        return self.charge(kind, body, self.card_of_profile(profile), amount, show_card=False)

    def charge_by_transaction(self, kind, body):
        errors = {}
        amount = self.amount(body, errors)
        txn_id = self.transaction_id(body, errors)
        raise_if(errors)
        earlier = self.find(txn_id)
        return self.charge(kind, body, self.card_of_transaction(earlier), amount,
                           show_card=False)

    def sale_keyed(self, body):
        return self.charge_keyed(SALE, body)

    def sale_by_customer(self, body):
        return self.charge_by_customer(SALE, body)

    def sale_by_transaction(self, body):
        return self.charge_by_transaction(SALE, body)

    def authorization_keyed(self, body):
        return self.charge_keyed(AUTHORIZATION, body)

    def authorization_by_customer(self, body):
        return self.charge_by_customer(AUTHORIZATION, body)

    def authorization_by_transaction(self, body):
        return self.charge_by_transaction(AUTHORIZATION, body)

    def capture(self, body):
        """Full or partial, once; keeps the authorization's transaction_id [C]."""
        errors = {}
        txn_id = self.transaction_id(body, errors)
        amount = self.amount(body, errors, required=False)
        raise_if(errors)
        txn = self.find(txn_id)
        if txn.kind != AUTHORIZATION or txn.state != "authorized" or txn.captured:
            raise error("816")
        if amount is not None and amount > txn.authorized_amount:
            raise error("9005")
        txn.amount = amount if amount is not None else txn.authorized_amount
        txn.captured, txn.state = True, "pending"
        return {"success": True, "response_code": 112, "status_message": STATUS_MESSAGES[112],
                "transaction_id": txn.id, "external_transaction_id": ""}

    def void(self, body):
        """Pending (Y) or an open authorization -> Voided; anything else 818 [C]."""
        errors = {}
        txn_id = self.transaction_id(body, errors)
        raise_if(errors)
        txn = self.find(txn_id)
        if txn.state not in ("pending", "authorized"):
            raise error("818")
        txn.state = "voided"
        return {"success": True, "response_code": 109, "status_message": STATUS_MESSAGES[109],
                "transaction_id": txn.id}

    def refunded_so_far(self, txn):
        return sum((r.amount for r in self.transactions.values()
                    if r.parent_id == txn.id and r.kind == REFUND and r.state != "voided"),
                   ZERO)

    def refund(self, body):
        """Settled sales/captures only (817 otherwise) [C]; a new REFUND transaction."""
        errors = {}
        txn_id = self.transaction_id(body, errors)
        amount = self.amount(body, errors, required=False)
        raise_if(errors)
        txn = self.find(txn_id)
        if txn.kind not in (SALE, AUTHORIZATION) or txn.state != "settled":
            raise error("817")
        remaining = txn.amount - self.refunded_so_far(txn)
        amount = remaining if amount is None else amount
        if amount > remaining or amount <= 0:
            raise error("9005")
        source = {**self.card_of_transaction(txn), "parent_id": txn.id}
        refund = self.new_transaction(REFUND, "card", amount, "pending",
                                      {"invoice_id": txn.invoice_id, **body}, source)
        return {"success": True, "response_code": 106, "status_message": STATUS_MESSAGES[106],
                "transaction_id": refund.id, "external_transaction_id": "",
                "masked_card_number": refund.masked_number}

    # -- ACH checks ----------------------------------------------------------------
    def check_sale_by_customer(self, body):
        errors = {}
        amount = self.amount(body, errors)
        profile = self.profile(body, "ach", errors)
        raise_if(errors)
        source = {"masked_number": profile.masked_number, "customer_id": profile.customer_id,
                  "billing_address": profile.billing_address}
        txn = self.new_transaction(CHECK, "ach", amount, "pending", body, source)
        if amount == DECLINE_AMOUNT:
            txn.state = "declined"
            return {"success": False, "response_code": 125,
                    "status_message": STATUS_MESSAGES[125], "check_transaction_id": txn.id,
                    "ach_code": 0, "ach_message": ""}
        return {"success": True, "response_code": 120, "status_message": STATUS_MESSAGES[120],
                "check_transaction_id": txn.id}

    def check_void(self, body):
        errors = {}
        txn_id = self.transaction_id(body, errors, key="check_transaction_id")
        raise_if(errors)
        txn = self.find(txn_id, method="ach")
        if txn.state != "pending":
            raise error("80")
        txn.state = "voided"
        return {"success": True, "response_code": 124, "status_message": STATUS_MESSAGES[124],
                "check_transaction_id": txn.id}

    def check_refund(self, body):
        errors = {}
        txn_id = self.transaction_id(body, errors, key="check_transaction_id")
        amount = self.amount(body, errors, required=False)
        raise_if(errors)
        txn = self.find(txn_id, method="ach")
        if txn.kind != CHECK or txn.state != "settled":
            raise error("80")
        remaining = txn.amount - self.refunded_so_far(txn)
        amount = remaining if amount is None else amount
        if amount > remaining or amount <= 0:
            raise error("9005")
        source = {"masked_number": txn.masked_number, "customer_id": txn.customer_id,
                  "billing_address": txn.billing_address, "parent_id": txn.id}
        refund = self.new_transaction(REFUND, "ach", amount, "pending",
                                      {"invoice_id": txn.invoice_id, **body}, source)
        return {"success": True, "response_code": 122, "status_message": STATUS_MESSAGES[122],
                "check_transaction_id": refund.id}

    # -- vault -----------------------------------------------------------------------
    def customer_create(self, body):
        """customer/create with a card or a check [C] (160, 171)."""
        errors = {}
        customer_id = str(body.get("customer_id", "")).strip()
        if not customer_id:
            errors.update(error("9009").errors)
        elif customer_id in self.profiles:
            errors.update(error("171").errors)
        check = body.get("check")
        if isinstance(check, dict):
            account = str(check.get("account_number", ""))
            if not account.isdigit():
                errors.update(error("45").errors)
            if not (str(check.get("routing_number", "")).isdigit()
                    and len(str(check.get("routing_number"))) == 9):
                errors.update(error("46").errors)
            card = {"masked_number": mask(account) if len(account) > 4 else account}
        else:
            card = self.keyed_card(body, errors) or {}
        raise_if(errors)
        billing = body.get("billing_address") if isinstance(body.get("billing_address"),
                                                            dict) else {}
        shipping = body.get("shipping_address") if isinstance(body.get("shipping_address"),
                                                              dict) else {}
        profile = Profile(customer_id=customer_id, method="ach" if check else "card",
                          masked_number=card["masked_number"],
                          expiration_month=card.get("expiration_month", 0),
                          expiration_year=card.get("expiration_year", 0),
                          billing_address=billing, email=str(body.get("email", "")),
                          bin=card.get("bin", ""), shipping_address=shipping,
                          phone=str(body.get("phone", "")))
        self.profiles[customer_id] = profile
        payload = {"success": True, "response_code": 160,
                   "status_message": f"The customer profile for {customer_id}/"
                                     f"{billing.get('name', '')} was successfully created.",
                   "customer_id": customer_id}
        if profile.method == "card":
            payload["masked_card_number"] = profile.masked_number
        return payload

    def customer_export(self, body):
        """customer/export [C path, C row shape (ninja); G envelope, filter and error].

        Without customer_id: every profile, in creation order [G]. With one: that profile,
        or error 30 when it is unknown [G: the text is PayTrace's [C] "not found" of
        by_customer calls; the real export might answer an empty list instead]."""
        wanted = body.get("customer_id")
        if wanted is None or wanted == "":
            found = list(self.profiles.values())
        else:
            profile = self.profiles.get(str(wanted))
            if profile is None:
                raise error("30", customer_id=wanted)
            found = [profile]
        # envelope as the transaction export's [G]: success, response_code 1, message
        return self.export_envelope("customers", [self.customer_row(p) for p in found])

    @staticmethod
    def customer_row(profile):
        """One profile as ninja reads it [C]: customer_id, credit_card{masked_number,
        expiration_month, expiration_year}, billing_address, shipping_address, email,
        phone. ACH profiles: check{masked_account_number} in place of credit_card [G]."""
        row = {"customer_id": profile.customer_id}
        if profile.method == "card":
            row["credit_card"] = {
                # `*` and the last 4, like exports [G for this call]: never the number
                "masked_number": export_masked(profile.masked_number, "", False),
                "expiration_month": profile.expiration_month,      # an integer [G]
                "expiration_year": profile.expiration_year}        # 4 digits [G]
        else:
            row["check"] = {"masked_account_number": profile.masked_number}   # [G]
        row.update({"billing_address": address(profile.billing_address, BILLING_FIELDS),
                    "shipping_address": address(profile.shipping_address, SHIPPING_FIELDS),
                    "email": profile.email, "phone": profile.phone})
        return row

    # -- exports [C] ---------------------------------------------------------------
    def export_row(self, txn, include_bin=False):
        """One transaction in the export shape of research section 5.1, in order."""
        status_code, status_message = txn.status
        row = {"transaction_id": txn.id}
        if txn.method == "card":
            row["credit_card"] = {"masked_number": export_masked(txn.masked_number, txn.bin,
                                                                 include_bin),
                                  "expiration_month": txn.expiration_month,
                                  "expiration_year": txn.expiration_year % 100}
        else:
            row["check"] = {"masked_account_number": txn.masked_number}    # [G]
        row.update({
            "transaction_type": txn.kind, "description": txn.description,
            "amount": txn.amount, "invoice_id": txn.invoice_id,
            "shipping_address": txn.shipping_address,
            "billing_address": txn.billing_address, "receipt_emailed_to": "",
            "tax_amount": money_str(txn.tax_amount) if txn.tax_amount is not None else "",
            "customer_reference_id": txn.customer_reference_id,
            "approval_code": txn.approval_code, "approval_message": txn.approval_message,
            "avs_response": AVS_RESPONSE if txn.method == "card" else "",
            "csc_response": "", "status_code": status_code, "status_message": status_message,
            "created": {"through": "API", "at": us_datetime(txn.created),
                        "by": self.config["username"], "from_ip": "127.0.0.1"},
            "settled": us_datetime(txn.settled) if txn.settled else "",
            "customer_id": txn.customer_id})
        return row

    @staticmethod
    def export_envelope(key, rows):
        return {"success": True, "response_code": 1, "status_message": EXPORT_MESSAGE,
                key: rows, "external_transaction_id": ""}

    def export_by_id(self, body):
        errors = {}
        txn_id = self.transaction_id(body, errors)
        raise_if(errors)
        txn = self.transactions.get(txn_id)
        if txn is None:
            raise error("811")
        # include_bin is documented for by_date_range only [C]; by_id honours it too [G]
        return self.export_envelope("transactions", [
            self.export_row(txn, flag(body.get("include_bin")))])

    def export_by_date_range(self, body):
        first, last = self.date_range(body)
        rows = [t for t in self.transactions.values() if first <= t.created.date() <= last]
        rows = [t for t in rows if self.export_filter(t, body)]
        include_bin = flag(body.get("include_bin"))       # [C] first 6 and last 4 digits
        return self.export_envelope("transactions", [self.export_row(t, include_bin)
                                                     for t in rows])

    @staticmethod
    def date_range(body):
        """start_date/end_date as MM/DD/YYYY [C]."""
        errors, dates = {}, []
        for key, code in (("start_date", "9003"), ("end_date", "9004")):
            found = _US_DATE.match(str(body.get(key, "")))
            try:
                dates.append(datetime.date(int(found[3]), int(found[1]), int(found[2])))
            except (TypeError, ValueError):
                errors.update(error(code).errors)
        raise_if(errors)
        return dates

    @staticmethod
    def export_filter(txn, body):
        wanted_type = str(body.get("transaction_type", "")).upper()
        if wanted_type in TYPE_FILTER_STATES and txn.state != TYPE_FILTER_STATES[wanted_type]:
            return False
        if wanted_type and wanted_type not in TYPE_FILTER_STATES and txn.kind != wanted_type:
            return False
        if body.get("transaction_id") not in (None, "") and \
                str(body["transaction_id"]) != str(txn.id):
            return False
        if body.get("customer_id") not in (None, "") and \
                str(body["customer_id"]) != txn.customer_id:
            return False
        text = str(body.get("including_text", "")).lower()
        return not text or any(text in value.lower() for value in
                               (txn.invoice_id, txn.description, txn.customer_id))

    # -- settlement and batches -----------------------------------------------------
    def settle_pending(self):
        """Put every pending (Y) transaction into a new batch; None if there is none."""
        pending = [t for t in self.transactions.values() if t.state == "pending"]
        if not pending:
            return None
        batch = Batch(self.next_batch, now(), [t.id for t in pending])
        self.next_batch += 1
        for txn in pending:
            txn.state, txn.batch, txn.settled = "settled", batch.number, batch.created
        self.batches.append(batch)
        return batch

    def settle(self, body):
        batch = self.settle_pending()
        return {"success": True, "response_code": SETTLE_CODE,
                "status_message": SETTLE_MESSAGE,
                "batch_number": batch.number if batch else None}

    def batch_summary(self, batch):
        txns = [self.transactions[i] for i in batch.transaction_ids]
        sales = [t.amount for t in txns if t.kind != REFUND]
        refunds = [t.amount for t in txns if t.kind == REFUND]
        values = {"number": batch.number, "created": us_datetime(batch.created),
                  "transaction_count": len(txns), "sales_count": len(sales),
                  "sales_amount": sum(sales, ZERO), "refund_count": len(refunds),
                  "refund_amount": sum(refunds, ZERO),
                  "net_amount": sum(sales, ZERO) - sum(refunds, ZERO)}
        return {BATCH_FIELDS[name]: value for name, value in values.items()}

    def batches_export(self, body):
        first, last = self.date_range(body)
        found = [self.batch_summary(b) for b in self.batches
                 if first <= b.created.date() <= last]
        return self.export_envelope(BATCH_LIST_KEY, found)

    def batch_transaction_list(self, body):
        number = body.get("batch_number")
        batch = next((b for b in self.batches if str(b.number) == str(number)), None)
        if batch is None:
            raise error("9006")
        return self.export_envelope("transactions", [self.export_row(self.transactions[i])
                                                     for i in batch.transaction_ids])

    # -- Level 3 [C] -----------------------------------------------------------------
    def level_three_visa(self, body):
        return self.level_three(body, L3_ENDPOINT_BRANDS["level_three/visa"])

    def level_three_mastercard(self, body):
        return self.level_three(body, L3_ENDPOINT_BRANDS["level_three/mastercard"])

    def level_three(self, body, brand):
        """Rules [C]: Visa (or Mastercard) card only, approved unsettled sale or capture.
        Order of the checks [G]: the fields (58 and the line items together), then
        the transaction (811), its brand (9010), its state (9007)."""
        errors = {}
        txn_id = self.transaction_id(body, errors)
        items = self.line_items(body, errors)
        raise_if(errors)
        txn = self.find(txn_id)
        if card_brand(txn.bin) != brand:
            raise error("9010")
        if txn.kind not in (SALE, AUTHORIZATION) or txn.state != "pending":
            raise error("9007")
        txn.level_three.append(body)
        return {"success": True, "response_code": 170,
                "status_message": f"Visa/MasterCard enhanced data was successfully added to "
                                  f"Transaction ID {txn.id}. {len(items)} line item records "
                                  f"were created."}

    @staticmethod
    def line_items(body, errors):
        """line_items [C names] checked [G strictness]: a non-empty list of objects, each
        with description (text, at most L3_DESCRIPTION_MAX characters), quantity (> 0,
        at most L3_QUANTITY_PLACES decimals), unit_cost and amount (>= 0, at most two
        decimals): JSON numbers or decimal strings. One message per bad field and item,
        items counted from 1. Other item fields are not checked."""
        items = body.get("line_items")
        if not isinstance(items, list) or not items:
            errors.update(error("9011").errors)
            return []

        def bad(code, number):
            errors.setdefault(code, []).append(ERRORS[code].format(item=number))

        for number, item in enumerate(items, 1):
            item = item if isinstance(item, dict) else {}
            text = item.get("description")
            if not (isinstance(text, str) and text.strip()
                    and len(text) <= L3_DESCRIPTION_MAX):
                bad("9012", number)
            quantity = parse_decimal(item.get("quantity"))
            if quantity is None or quantity <= 0 or \
                    not places_ok(quantity, L3_QUANTITY_PLACES):
                bad("9013", number)
            for name, code in (("unit_cost", "9014"), ("amount", "9015")):
                value = parse_decimal(item.get(name))
                if value is None or value < 0 or not places_ok(value, 2):
                    bad(code, number)
        return items

    # -- replay ------------------------------------------------------------------------
    def replay(self, request):
        """The recorded answer for a matching request, or None [C] byte for byte."""
        body = request.text
        for fixture in self.fixtures:
            if (fixture.method == request.method and fixture.path == request.path
                    and fixture.body_pattern.fullmatch(body)):
                return self.replay_answer(request, fixture)
        return None

    def replay_answer(self, request, fixture):
        recorded = fixture.body
        if fixture.needs_token:
            denied = self.check_token(request)
            if denied is not None:
                return self.rails_headers(request, denied)
        elif "<ACCESS_TOKEN>" in recorded:
            recorded = recorded.replace("<ACCESS_TOKEN>",
                                        self.tokens.issue(self.config["token_ttl"]))
        return Response(fixture.status, recorded.encode("utf-8"), list(fixture.headers))

    # -- admin ---------------------------------------------------------------------------
    def admin_customers(self, request, body):
        """Seed vault profiles: {"customers":[{"customer_id","method","masked_number",
        "bin",...}]}; an existing id is replaced."""
        stored = []
        for given in body.get("customers", []) if isinstance(body, dict) else []:
            if not isinstance(given, dict) or not str(given.get("customer_id", "")).strip():
                raise AdminError("each customer needs a customer_id")
            method = given.get("method", "card")
            if method not in ("card", "ach"):
                raise AdminError("method must be card or ach")
            if method == "ach" and given.get("bin"):
                raise AdminError("an ACH profile has no bin")
            profile = Profile(
                customer_id=str(given["customer_id"]), method=method,
                masked_number=given.get("masked_number",
                                        "xxxxxxxxxxxx5439" if method == "card" else "xxxxx6789"),
                expiration_month=int(given.get("expiration_month", 12)),
                expiration_year=int(given.get("expiration_year", 2030)),
                billing_address=given.get("billing_address", {}),
                email=given.get("email", ""),
                bin=admin_bin(given.get("bin", DEFAULT_BIN)) if method == "card" else "",
                shipping_address=given.get("shipping_address", {}),
                phone=str(given.get("phone", "")))
            self.profiles[profile.customer_id] = profile
            stored.append(profile.row())
        return {"customers": stored}

    # fields POST /_standin/customers/{id} may change; card-only ones are refused on ACH
    PROFILE_PATCH = ("expiration_month", "expiration_year", "bin", "masked_number",
                     "billing_address", "shipping_address", "email", "phone")
    CARD_ONLY = ("expiration_month", "expiration_year", "bin")

    def admin_update_customer(self, request, body, customer_id):
        """Change an existing vault profile (for instance a new expiry) -> {"customer"}."""
        customer_id = urllib.parse.unquote(customer_id)
        profile = self.profiles.get(customer_id)
        if profile is None:
            return json_response(404, {"error": f"unknown vault profile {customer_id}"},
                                 chunked=False)
        if not isinstance(body, dict):
            raise AdminError("body must be a JSON object")
        unknown = sorted(set(body) - set(self.PROFILE_PATCH))
        if unknown:
            raise AdminError(f"unknown field(s): {', '.join(unknown)}; allowed: "
                             f"{', '.join(self.PROFILE_PATCH)}")
        if profile.method == "ach" and set(body) & set(self.CARD_ONLY):
            raise AdminError(f"an ACH profile has no {', '.join(self.CARD_ONLY)}")
        changes = dict(body)
        for name, low, high in (("expiration_month", 1, 12),
                                ("expiration_year", 2000, 2099)):
            if name in changes:
                value = parse_decimal(changes[name])
                if value is None or value != int(value) or not low <= value <= high:
                    raise AdminError(f"{name} must be an integer from {low} to {high}")
                changes[name] = int(value)
        if "bin" in changes:
            changes["bin"] = admin_bin(changes["bin"])
        for name in ("billing_address", "shipping_address"):
            if name in changes and not isinstance(changes[name], dict):
                raise AdminError(f"{name} must be an object")
        for name in ("masked_number", "email", "phone"):
            if name in changes:
                changes[name] = str(changes[name])
        for name, value in changes.items():
            setattr(profile, name, value)
        return {"customer": profile.row()}

    def admin_settle(self, request, body):
        batch = self.settle_pending()
        return {"batch": self.batch_summary(batch) if batch else None,
                "transaction_ids": batch.transaction_ids if batch else []}

    def admin_replay(self, request, body):
        if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
            raise AdminError('body must be {"enabled": true|false, "dir": optional path}')
        if body["enabled"]:
            directory = body.get("dir") or getattr(self.options, "replay", None) \
                or DEFAULT_FIXTURES
            self.fixtures = load_fixtures(directory)
            if not self.fixtures:
                raise AdminError(f"no *.json fixtures in {directory}")
        self.config["replay"] = body["enabled"]
        return {"enabled": self.config["replay"], "fixtures": [f.name for f in self.fixtures]}


if __name__ == "__main__":
    raise SystemExit(run(PayTraceApp))
