#!/usr/bin/env python3
"""PayTrace stand-in: the JSON API v1 subset freshpay speaks, plus replay of real traffic.

Owns the PayTrace wire format of the tests: the OAuth password grant, card
sales and authorizations (keyed, by_customer, by_transaction), capture, void,
refund, ACH checks, vault profiles, transaction and batch exports, the sandbox
settle helper, Level 3 data, and a replay mode that answers the recorded
sandbox exchanges of test/fixtures/paytrace-recorded/ byte for byte.

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

from common import (ZERO, AdminError, Response, StandinApp, has_cents_only, money_str,
                    parse_decimal, parse_json, run)

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
    expiration_year: int = 2030
    billing_address: dict = field(default_factory=dict)
    email: str = ""


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
    level_three: list = field(default_factory=list)

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
# The application
# --------------------------------------------------------------------------

class PayTraceApp(StandinApp):
    """PayTrace stand-in: OAuth, card and ACH money calls, exports, batches, replay."""

    NAME = "paytrace"
    CONFIG_DEFAULTS = {"username": "pt-user", "password": "pt-pass",
                       "integrator_id": "pt-integrator", "token_ttl": 7200,
                       "auto_void": False, "invalid_grant_status": 400,
                       "approval_delay": 0.0, "start_transaction_id": 125391300,
                       "replay": False}
    CHUNKED = True                                  # [C] recorded answers are chunked
    MALFORMED_BODY = b'{"success":true,"response_code":101,"status_message":"Your transa'

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

    def state_snapshot(self):
        return {"customers": [vars(p) for p in self.profiles.values()],
                "transactions": [self._state_row(t) for t in self.transactions.values()],
                "batches": [self.batch_summary(b) for b in self.batches],
                "replay_fixtures": [f.name for f in self.fixtures]}

    @staticmethod
    def _state_row(txn):
        row = dict(vars(txn))
        row["status_code"], row["status_message"] = txn.status
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
                ("transactions/export/by_id", self.export_by_id, False),
                ("transactions/export/by_date_range", self.export_by_date_range, False),
                ("transactions/settle", self.settle, False),
                ("batches/export", self.batches_export, False),
                ("batches/transaction_list", self.batch_transaction_list, False),
                ("level_three/visa", self.level_three, False),
                ("level_three/mastercard", self.level_three, False)):
            router.add("POST", "/v1/" + path, api(handler, money))

    def add_admin_routes(self, router):
        router.add("POST", "/_standin/customers", self.admin_customers)
        router.add("POST", "/_standin/settle", self.admin_settle)
        router.add("POST", "/_standin/replay", self.admin_replay)

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
                "expiration_year": int(year),
                "billing_address": body.get("billing_address", {})}

    @staticmethod
    def card_of_profile(profile):
        return {"masked_number": profile.masked_number,
                "expiration_month": profile.expiration_month,
                "expiration_year": profile.expiration_year,
                "billing_address": profile.billing_address,
                "customer_id": profile.customer_id}

    @staticmethod
    def card_of_transaction(txn):
        return {"masked_number": txn.masked_number, "expiration_month": txn.expiration_month,
                "expiration_year": txn.expiration_year,
                "billing_address": txn.billing_address, "customer_id": txn.customer_id}

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
            parent_id=source.get("parent_id"))
        self.transactions[txn_id] = txn
        return txn

    def charge(self, kind, body, source, amount, show_card):
        """Sale or authorization: approve, decline (0.29) or auto-void (config)."""
        approved_state = "pending" if kind == SALE else "authorized"
        txn = self.new_transaction(kind, "card", amount, approved_state, body, source)
        txn.authorized_amount = amount
        if amount == DECLINE_AMOUNT:
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
        profile = Profile(customer_id=customer_id, method="ach" if check else "card",
                          masked_number=card["masked_number"],
                          expiration_month=card.get("expiration_month", 0),
                          expiration_year=card.get("expiration_year", 0),
                          billing_address=billing, email=str(body.get("email", "")))
        self.profiles[customer_id] = profile
        payload = {"success": True, "response_code": 160,
                   "status_message": f"The customer profile for {customer_id}/"
                                     f"{billing.get('name', '')} was successfully created.",
                   "customer_id": customer_id}
        if profile.method == "card":
            payload["masked_card_number"] = profile.masked_number
        return payload

    # -- exports [C] ---------------------------------------------------------------
    def export_row(self, txn):
        """One transaction in the export shape of research section 5.1, in order."""
        status_code, status_message = txn.status
        row = {"transaction_id": txn.id}
        if txn.method == "card":
            row["credit_card"] = {"masked_number": txn.masked_number.replace("x", "*"),
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
        return self.export_envelope("transactions", [self.export_row(txn)])

    def export_by_date_range(self, body):
        first, last = self.date_range(body)
        rows = [t for t in self.transactions.values() if first <= t.created.date() <= last]
        rows = [t for t in rows if self.export_filter(t, body)]
        return self.export_envelope("transactions", [self.export_row(t) for t in rows])

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
    def level_three(self, body):
        errors = {}
        txn_id = self.transaction_id(body, errors)
        raise_if(errors)
        txn = self.find(txn_id)
        if txn.kind not in (SALE, AUTHORIZATION) or txn.state != "pending":
            raise error("9007")
        items = body.get("line_items") if isinstance(body.get("line_items"), list) else []
        txn.level_three.append(body)
        return {"success": True, "response_code": 170,
                "status_message": f"Visa/MasterCard enhanced data was successfully added to "
                                  f"Transaction ID {txn.id}. {len(items)} line item records "
                                  f"were created."}

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
        """Seed vault profiles: {"customers":[{"customer_id","method","masked_number"}]}."""
        stored = []
        for given in body.get("customers", []) if isinstance(body, dict) else []:
            if not isinstance(given, dict) or not str(given.get("customer_id", "")).strip():
                raise AdminError("each customer needs a customer_id")
            method = given.get("method", "card")
            if method not in ("card", "ach"):
                raise AdminError("method must be card or ach")
            profile = Profile(
                customer_id=str(given["customer_id"]), method=method,
                masked_number=given.get("masked_number",
                                        "xxxxxxxxxxxx5439" if method == "card" else "xxxxx6789"),
                expiration_month=int(given.get("expiration_month", 12)),
                expiration_year=int(given.get("expiration_year", 2030)),
                billing_address=given.get("billing_address", {}),
                email=given.get("email", ""))
            self.profiles[profile.customer_id] = profile
            stored.append(vars(profile))
        return {"customers": stored}

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
