"""Shared machinery of freshpay's test stand-ins (FreshPortal and PayTrace).

This module owns everything the two fake servers have in common: the HTTP/1.1
server (keep-alive, optional TLS, loopback only, clean SIGTERM/SIGINT
shutdown), request parsing and response framing (Content-Length or chunked),
the request log, the fault-injection engine, the token store, JSON and money
helpers, and the admin endpoints under /_standin/ that both servers share.

It must not know any wire format of FreshPortal or PayTrace: those live in
freshportal.py and paytrace.py, which subclass StandinApp.
Standard library only.
"""

import argparse
import copy
import ipaddress
import json
import os
import random
import re
import signal
import socket
import ssl
import sys
import threading
import time
import traceback
import urllib.parse
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ADMIN_PREFIX = "/_standin/"
JSON_TYPE = "application/json; charset=utf-8"
IDLE_TIMEOUT = 300          # seconds an idle keep-alive connection is kept open
HANDSHAKE_TIMEOUT = 10      # seconds a TLS client gets to finish its handshake
REQUEST_LOG_LIMIT = 100000  # oldest entries are dropped beyond this (long benchmarks)


# --------------------------------------------------------------------------
# JSON and money
# --------------------------------------------------------------------------

CENT = Decimal("0.01")
ZERO = Decimal("0.00")
_DECIMAL_TEXT = re.compile(r"^-?\d+(\.\d+)?$")


def parse_decimal(value):
    """Return value (int, Decimal or numeric string) as a Decimal, else None.

    Floats are refused on purpose: JSON bodies are parsed with
    parse_float=Decimal, so a float here would be a programming error.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, Decimal)):
        return Decimal(value)
    if isinstance(value, str) and _DECIMAL_TEXT.match(value.strip()):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            return None
    return None


def has_cents_only(amount):
    """True when amount has at most two decimals (12.5 and 12.50 pass, 12.505 not)."""
    return amount == amount.quantize(CENT)


def money_str(amount):
    """Decimal -> "1090.00" (two decimals, half-up), the FreshPortal money format."""
    return str(Decimal(amount).quantize(CENT, rounding=ROUND_HALF_UP))


def json_number(amount):
    """Decimal -> JSON number text without float drift: 110, 51.88, 25.5."""
    if amount == amount.to_integral_value():
        return str(int(amount))
    return format(amount.normalize(), "f")


def to_json(value, ascii_only=False):
    """Compact JSON (separators "," and ":") in which a Decimal is a plain number.

    The standard json module cannot write a Decimal as a number, so containers
    are walked here and every leaf is handed to json.dumps.
    """
    if isinstance(value, Decimal):
        return json_number(value)
    if isinstance(value, dict):
        return "{" + ",".join(
            json.dumps(str(key), ensure_ascii=ascii_only) + ":" + to_json(item, ascii_only)
            for key, item in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(to_json(item, ascii_only) for item in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def parse_json(raw):
    """Parse a request body; numbers with a fraction become Decimal. Raises ValueError."""
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    return json.loads(text, parse_float=Decimal)


def _plain(value):
    """Make state JSON-safe for the admin API (Decimal -> str, sets -> lists)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------
# Requests, responses, routing
# --------------------------------------------------------------------------

class Request:
    """One parsed HTTP request, independent of the socket it came from."""

    def __init__(self, method, target, headers, body, received=None):
        split = urllib.parse.urlsplit(target)
        self.received = time.time() if received is None else received
        self.log_entry = None       # set by StandinApp.handle for logged requests
        self.method = method
        self.path = split.path
        self.query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        self.headers = headers
        self.body = body

    @property
    def text(self):
        return self.body.decode("utf-8", errors="replace")

    def arg(self, name, default=None):
        """First value of a query parameter."""
        values = self.query.get(name)
        return values[0] if values else default

    def header(self, name, default=None):
        return self.headers.get(name, default)

    def header_dict(self):
        merged = {}
        for name, value in self.headers.items():
            merged[name] = merged[name] + ", " + value if name in merged else value
        return merged


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: list = field(default_factory=list)
    drop: bool = False          # close the connection without sending anything
    delay_after: float = 0.0    # latency added after processing, outside the state lock
    chunked: object = None      # None: the app's default framing

    def header(self, name):
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def json_response(status, payload, headers=(), ascii_only=False, chunked=None):
    body = to_json(payload, ascii_only).encode("utf-8")
    return Response(status, body, [("Content-Type", JSON_TYPE), *headers], chunked=chunked)


class Router:
    """Maps (method, "/v1/things/{id}") patterns to handler functions."""

    def __init__(self):
        self._routes = []

    def add(self, method, pattern, handler):
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(pattern))
        self._routes.append((method, re.compile(regex), handler))

    def resolve(self, method, path):
        """Return (handler, params), (None, allowed methods) or (None, None)."""
        allowed = []
        for route_method, regex, handler in self._routes:
            found = regex.fullmatch(path)
            if found:
                if route_method == method:
                    return handler, found.groupdict()
                allowed.append(route_method)
        return None, (allowed or None)


# --------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------

class TokenStore:
    """Bearer tokens with a lifetime; remembers every token it ever issued."""

    def __init__(self, mint):
        self._mint = mint
        self.clear()

    def clear(self):
        self._expiry = {}
        self.issued = []

    def issue(self, ttl):
        token = self._mint()
        self._expiry[token] = time.monotonic() + ttl
        self.issued.append(token)
        return token

    def is_valid(self, token):
        expiry = self._expiry.get(token)
        return expiry is not None and time.monotonic() < expiry

    def expire_all(self):
        count = len(self._expiry)
        self._expiry.clear()
        return count


# --------------------------------------------------------------------------
# Request log
# --------------------------------------------------------------------------

class RequestLog:
    """Every non-admin request, in arrival order, with the status it got."""

    def __init__(self):
        self.clear()

    def clear(self):
        self._entries = []
        self._seq = 0

    def record(self, request):
        self._seq += 1
        entry = {
            "seq": self._seq,
            "time": time.time(),
            "received": request.received,
            "answered": None,
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": request.header_dict(),
            "body": request.text,
            "status": None,
            "fault": None,
            "fault_name": None,
        }
        self._entries.append(entry)
        if len(self._entries) > REQUEST_LOG_LIMIT:
            del self._entries[:REQUEST_LOG_LIMIT // 10]    # trim in bulk, not per request
        return entry

    def entries(self, since=0, path_prefix=None):
        return [entry for entry in self._entries
                if entry["seq"] > since
                and (path_prefix is None or entry["path"].startswith(path_prefix))]


# --------------------------------------------------------------------------
# Fault injection
# --------------------------------------------------------------------------

FAULT_ACTIONS = ("delay", "status", "malformed", "close_before", "close_after", "oversize",
                 "malformed_after", "delay_after")
_RULE_KEYS = {"name", "action", "method", "path", "path_prefix", "skip", "times", "delay",
              "seconds", "status", "body", "headers", "bytes", "probability", "body_match"}


class FaultRule:
    """One admin-configured fault; see README.md for the rule format."""

    def __init__(self, spec):
        if not isinstance(spec, dict):
            raise ValueError("a fault rule must be a JSON object")
        unknown = set(spec) - _RULE_KEYS
        if unknown:
            raise ValueError(f"unknown fault rule field(s): {', '.join(sorted(unknown))}")
        self.spec = dict(spec)
        self.action = spec.get("action")
        if self.action not in FAULT_ACTIONS:
            raise ValueError(f"fault action must be one of {', '.join(FAULT_ACTIONS)}")
        if "path" in spec and "path_prefix" in spec:
            raise ValueError("give either path or path_prefix, not both")
        self.method = spec.get("method")
        self.path = spec.get("path")
        self.path_prefix = spec.get("path_prefix")
        self.skip = _int_field(spec, "skip", 0, minimum=0)
        self.times = _int_field(spec, "times", 1, minimum=-1)
        self.delay = _number_field(spec, "delay", 0.0)
        self.seconds = _number_field(spec, "seconds", 0.0)
        self.status = _int_field(spec, "status", 500, minimum=100)
        self.body = spec.get("body", "")
        self.headers = spec.get("headers", {})
        self.bytes = _int_field(spec, "bytes", 1024 * 1024, minimum=0)
        self.probability = _number_field(spec, "probability", 1.0)
        if self.probability > 1:
            raise ValueError("probability must be a number between 0 and 1")
        if not isinstance(self.body, str) or not isinstance(self.headers, dict):
            raise ValueError("body must be a string and headers an object")
        self.body_match = _body_match_field(spec)
        self.matched = 0
        self.applied = 0
        self.passed = 0         # matched after skip, but the random draw let it through

    def matches(self, method, path, body=b""):
        if self.method is not None and self.method.upper() != method:
            return False
        if self.path is not None and path != self.path:
            return False
        if self.path_prefix is not None and not path.startswith(self.path_prefix):
            return False
        return self.body_match is None or _body_matches(self.body_match, body)

    @property
    def spent(self):
        return self.times != -1 and self.applied >= self.times

    def describe(self):
        described = {**self.spec, "matched": self.matched, "applied": self.applied,
                     "spent": self.spent}
        if "probability" in self.spec:
            described["passed"] = self.passed
        return described


def _body_match_field(spec):
    """body_match: {field: regular expression}, or None."""
    value = spec.get("body_match")
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise ValueError("body_match must be a non-empty object of field: regular expression")
    compiled = {}
    for key, pattern in value.items():
        if not isinstance(pattern, str):
            raise ValueError("body_match values must be regular expressions (strings)")
        try:
            compiled[key] = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"body_match {key}: {exc}") from None
    return compiled


def _body_matches(body_match, body):
    """Whether a request body is a JSON object whose named top-level fields, each a
    string or a number, match their expressions (re.search)."""
    try:
        parsed = parse_json(body) if body else None
    except (ValueError, UnicodeDecodeError):
        return False
    if not isinstance(parsed, dict):
        return False
    for key, regex in body_match.items():
        value = parsed.get(key)
        if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
            return False
        if not regex.search(str(value)):
            return False
    return True


def _int_field(spec, key, default, minimum):
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}")
    return value


def _number_field(spec, key, default):
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)) or value < 0:
        raise ValueError(f"{key} must be a number >= 0")
    return float(value)


class FaultEngine:
    """Ordered rules; the first live rule matching a request claims it.

    A rule with a probability below 1 claims a matching request only when a
    draw from the engine's random generator falls below it.  The generator is
    seeded through the admin API (POST /_standin/faults {"seed": n}), so a
    run of random faults can be replayed; without a seed it is seeded from
    the OS.  Rules with probability 1 (the default) never draw.
    """

    def __init__(self):
        self.rules = []
        self.reseed(None)

    def reseed(self, seed):
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError("seed must be an integer")
        self.seed = seed
        self.rng = random.Random(seed)
        self.draws = 0

    def replace(self, specs):
        if not isinstance(specs, list):
            raise ValueError("rules must be a list")
        self.rules = [FaultRule(spec) for spec in specs]

    def claim(self, method, path, body=b""):
        for rule in self.rules:
            if rule.spent or not rule.matches(method, path, body):
                continue
            rule.matched += 1
            if rule.matched <= rule.skip:
                continue
            if rule.probability < 1:
                self.draws += 1
                if self.rng.random() >= rule.probability:
                    rule.passed += 1
                    continue
            rule.applied += 1
            return rule
        return None

    def describe(self):
        return [rule.describe() for rule in self.rules]


def oversize_body(size):
    """A syntactically valid JSON body of at least size bytes."""
    pad = "x" * 1000
    pieces, total, index = [], len('{"data":[]}'), 0
    while total < size:
        index += 1
        piece = '{"id":%d,"padding":"%s"}' % (index, pad)
        pieces.append(piece)
        total += len(piece) + 1
    return ('{"data":[' + ",".join(pieces) + "]}").encode("ascii")


# --------------------------------------------------------------------------
# The application base class
# --------------------------------------------------------------------------

class AdminError(Exception):
    """Bad admin request -> 400 {"error": message}."""


class StandinApp:
    """State, routes and admin API of one stand-in; subclasses add the remote API.

    Subclass hooks: reset_state(), state_snapshot(), add_routes(router),
    add_admin_routes(router), and the class attributes below.
    """

    NAME = "standin"
    CONFIG_DEFAULTS = {}
    CHUNKED = False                # frame JSON API answers with Transfer-Encoding: chunked
    ASCII_JSON = False             # escape non-ASCII characters in JSON answers
    MALFORMED_BODY = b'{"data": [ {"id": 1, '

    def __init__(self, options):
        self.options = options
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.log = RequestLog()
        self.faults = FaultEngine()
        self.tokens = TokenStore(self.mint_token)
        self.router = Router()
        self.admin = Router()
        self._add_common_admin_routes()
        self.add_routes(self.router)
        self.add_admin_routes(self.admin)
        self.reset()

    # -- hooks ---------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser):
        """Extra command-line options of this stand-in."""

    def startup_config(self):
        """Config restored by /_standin/reset (defaults plus CLI overrides)."""
        return copy.deepcopy(self.CONFIG_DEFAULTS)

    def mint_token(self):
        raise NotImplementedError

    def reset_state(self):
        """Clear the remote API's data."""

    def state_snapshot(self):
        return {}

    def add_routes(self, router):
        """Register the remote API's routes."""

    def add_admin_routes(self, router):
        """Register stand-in specific admin routes."""

    # -- helpers for subclasses ---------------------------------------------
    def json(self, status, payload, headers=()):
        return json_response(status, payload, headers, ascii_only=self.ASCII_JSON)

    def sleep(self, seconds):
        """Wait without blocking shutdown."""
        if seconds > 0:
            self.stopping.wait(seconds)

    def reset(self):
        with self.lock:
            self.config = self.startup_config()
            self.tokens.clear()
            self.faults.replace([])
            self.faults.reseed(None)
            self.log.clear()
            self.reset_state()

    # -- request handling ----------------------------------------------------
    def handle(self, request):
        """Answer one request; admin requests bypass the log and the faults."""
        if request.path.startswith(ADMIN_PREFIX):
            return self._handle_admin(request)
        with self.lock:
            entry = self.log.record(request)
            request.log_entry = entry
            rule = self.faults.claim(request.method, request.path, request.body)
            entry["fault"] = rule.action if rule else None
            entry["fault_name"] = rule.spec.get("name") if rule else None
        try:
            response = self._apply_fault(rule, request)
        except Exception:  # a bug in a stand-in must not take the server down
            traceback.print_exc()
            response = self.json(500, {"message": "Server Error"})
        with self.lock:
            entry["status"] = None if response.drop else response.status
        return response

    def _apply_fault(self, rule, request):
        if rule is None:
            return self._process(request)
        self.sleep(rule.delay)
        action = rule.action
        if action == "delay":
            self.sleep(rule.seconds)
            return self._process(request)
        if action == "status":
            return self._canned_response(rule)
        if action == "malformed":
            body = rule.body.encode("utf-8") if rule.body else self.MALFORMED_BODY
            return Response(200, body, [("Content-Type", JSON_TYPE)])
        if action == "oversize":
            return Response(200, oversize_body(rule.bytes), [("Content-Type", JSON_TYPE)])
        if action == "close_before":
            return Response(0, drop=True)
        # the request is fully processed (its state changes are committed) ...
        processed = self._process(request)
        if action == "delay_after":
            # ... and answered, but only after seconds more
            processed.delay_after += rule.seconds
            return processed
        if action == "malformed_after":
            # ... and answered with its status, but a truncated body
            body = rule.body.encode("utf-8") if rule.body else self.MALFORMED_BODY
            headers = [(k, v) for k, v in processed.headers
                       if k.lower() not in ("content-type", "etag")]
            return Response(processed.status, body, [("Content-Type", JSON_TYPE), *headers],
                            delay_after=processed.delay_after, chunked=processed.chunked)
        # close_after: its answer is lost
        return Response(processed.status, drop=True, delay_after=processed.delay_after)

    @staticmethod
    def _canned_response(rule):
        headers = list(rule.headers.items())
        if rule.body and not any(k.lower() == "content-type" for k, _ in headers):
            headers.append(("Content-Type", JSON_TYPE))
        return Response(rule.status, rule.body.encode("utf-8"), headers)

    def _process(self, request):
        with self.lock:
            return self.route(request)

    def answered(self, request):
        """The last byte of the answer to a logged request has been written."""
        if request.log_entry is not None:
            with self.lock:
                request.log_entry["answered"] = time.time()

    def route(self, request):
        handler, params = self.router.resolve(request.method, request.path)
        if handler is not None:
            return handler(request, **params)
        if params:
            return self.method_not_allowed(request)
        return self.not_found(request)

    def not_found(self, request):
        return self.json(404, {"message": "Not found"})

    def method_not_allowed(self, request):
        return self.json(405, {"message": f"The {request.method} method is not supported "
                                          "for this route."})

    # -- admin API -------------------------------------------------------------
    def _handle_admin(self, request):
        handler, params = self.admin.resolve(request.method, request.path)
        if handler is None:
            status = 405 if params else 404
            return json_response(status, {"error": "unknown admin endpoint or method"},
                                 chunked=False)
        try:
            body = parse_json(request.body) if request.body.strip() else {}
        except ValueError as exc:
            return json_response(400, {"error": f"body is not JSON: {exc}"}, chunked=False)
        try:
            with self.lock:     # serialise while no request can change the state
                payload = handler(request, body, **params)
                if isinstance(payload, Response):
                    return payload
                return json_response(200, _plain(payload), chunked=False)
        except AdminError as exc:
            return json_response(400, {"error": str(exc)}, chunked=False)

    def _add_common_admin_routes(self):
        add = self.admin.add
        add("POST", "/_standin/reset", self._admin_reset)
        add("GET", "/_standin/state", self._admin_state)
        add("GET", "/_standin/requests", self._admin_requests)
        add("POST", "/_standin/requests/clear", self._admin_requests_clear)
        add("GET", "/_standin/faults", self._admin_faults)
        add("POST", "/_standin/faults", self._admin_set_faults)
        add("GET", "/_standin/config", self._admin_config)
        add("POST", "/_standin/config", self._admin_set_config)
        add("POST", "/_standin/expire_tokens", self._admin_expire_tokens)
        add("GET", "/_standin/tokens", self._admin_tokens)

    def _admin_reset(self, request, body):
        self.reset()
        return {"ok": True}

    def _admin_state(self, request, body):
        return {"config": self.config, "faults": self.faults.describe(),
                "tokens_issued": len(self.tokens.issued), **self.state_snapshot()}

    def _admin_requests(self, request, body):
        try:
            since = int(request.arg("since", "0"))
        except ValueError:
            raise AdminError("since must be an integer") from None
        return {"requests": self.log.entries(since, request.arg("path_prefix"))}

    def _admin_requests_clear(self, request, body):
        self.log.clear()
        return {"ok": True}

    def _admin_faults(self, request, body):
        return {"rules": self.faults.describe(), "seed": self.faults.seed,
                "draws": self.faults.draws}

    def _admin_set_faults(self, request, body):
        try:
            seed = body.get("seed") if isinstance(body, dict) else None
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                raise ValueError("seed must be an integer")
            self.faults.replace(body.get("rules", []) if isinstance(body, dict) else None)
            if isinstance(body, dict) and "seed" in body:
                self.faults.reseed(seed)
        except ValueError as exc:
            raise AdminError(str(exc)) from None
        return self._admin_faults(request, body)

    def _admin_config(self, request, body):
        return self.config

    def _admin_set_config(self, request, body):
        if not isinstance(body, dict):
            raise AdminError("config must be a JSON object")
        for key, value in body.items():
            if key not in self.config:
                raise AdminError(f"unknown config key: {key}")
            self.config[key] = _coerce_like(self.config[key], value, key)
        return self.config

    def _admin_expire_tokens(self, request, body):
        return {"expired": self.tokens.expire_all()}

    def _admin_tokens(self, request, body):
        return {"issued": list(self.tokens.issued)}


def _coerce_like(current, value, key):
    """Type-check a config value against the type of its current value."""
    if isinstance(current, bool):
        ok = isinstance(value, bool)
    elif isinstance(current, float):
        ok = isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(current, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(current))
    if not ok:
        raise AdminError(f"config key {key} must be of type {type(current).__name__}")
    return value


# --------------------------------------------------------------------------
# HTTP server
# --------------------------------------------------------------------------

class StandinHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT
    server_version = "freshpay-standin/1"
    # Responses go out in several writes; without TCP_NODELAY every request
    # after the first on a kept-alive connection waits ~40 ms for a delayed ACK.
    disable_nagle_algorithm = True

    def parse_request(self):
        # Called as soon as the request line has been read: the receive time
        # of the request log, before the headers, the body and the lock.
        self.received = time.time()
        return super().parse_request()

    def do_GET(self):
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _serve(self):
        try:
            body = self._read_body()
        except ValueError as exc:
            self.close_connection = True
            self.send_error(400, str(exc))
            return
        request = Request(self.command, self.path, self.headers, body, self.received)
        response = self.server.app.handle(request)
        if response.delay_after:
            self.server.app.sleep(response.delay_after)
        if response.drop:
            self.close_connection = True
            return
        self._send(response)
        self.server.app.answered(request)

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked_body()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        if not length.strip().isdigit():
            raise ValueError("bad Content-Length")
        return self.rfile.read(int(length))

    def _read_chunked_body(self):
        parts = []
        while True:
            size_line = self.rfile.readline(1024)
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                raise ValueError("bad chunk size") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass            # trailers
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _send(self, response):
        chunked = self.server.app.CHUNKED if response.chunked is None else response.chunked
        chunked = chunked and self.request_version == "HTTP/1.1"
        has_body = response.status >= 200 and response.status not in (204, 304)
        try:
            self.send_response(response.status)
            for name, value in response.headers:
                self.send_header(name, value)
            if has_body and chunked:
                self.send_header("Transfer-Encoding", "chunked")
            elif has_body:
                self.send_header("Content-Length", str(len(response.body)))
            self.send_header("Connection", "close" if self.close_connection else "keep-alive")
            self.end_headers()
            if has_body and chunked:
                if response.body:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(response.body), response.body))
                self.wfile.write(b"0\r\n\r\n")
            elif has_body:
                self.wfile.write(response.body)
        except (ConnectionError, ssl.SSLError, TimeoutError):
            self.close_connection = True

    def log_message(self, format, *args):
        if not self.server.quiet:
            sys.stderr.write(f"[{self.server.app.NAME}] {self.address_string()} "
                             f"{format % args}\n")


class StandinHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Many clients connect at once in the concurrency tests and benchmarks.
    request_queue_size = 128

    def __init__(self, address, app, ssl_context=None, quiet=False):
        self.app = app
        self.ssl_context = ssl_context
        self.quiet = quiet
        super().__init__(address, StandinHandler)

    def finish_request(self, request, client_address):
        """Do the TLS handshake in the connection's own thread, so that a slow
        or broken client can neither block the accept loop nor kill the server."""
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        try:
            request.settimeout(HANDSHAKE_TIMEOUT)
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            if not self.quiet:
                sys.stderr.write(f"[{self.app.NAME}] TLS handshake failed: {exc}\n")
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def _loopback(host):
    address = "127.0.0.1" if host == "localhost" else host
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return None
    return parsed if parsed.is_loopback else None


def _write_port_file(path, port):
    temporary = f"{path}.tmp.{os.getpid()}"
    with open(temporary, "w", encoding="ascii") as handle:
        handle.write(f"{port}\n")
    os.replace(temporary, path)


def _tls_context(cert, key):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def run(app_class, argv=None):
    """Command-line entry point shared by both stand-ins."""
    parser = argparse.ArgumentParser(description=app_class.__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", help="write the chosen port here once listening")
    parser.add_argument("--tls-cert", help="PEM certificate: serve https")
    parser.add_argument("--tls-key", help="PEM private key for --tls-cert")
    parser.add_argument("--quiet", action="store_true", help="no per-request logging")
    app_class.add_arguments(parser)
    args = parser.parse_args(argv)

    address = _loopback(args.host)
    if address is None:
        parser.error(f"--host must be a loopback address, not {args.host!r}")
    if args.tls_key and not args.tls_cert:
        parser.error("--tls-key needs --tls-cert")
    context = _tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None

    if address.version == 6:
        StandinHTTPServer.address_family = socket.AF_INET6
    app = app_class(args)
    server = StandinHTTPServer((str(address), args.port), app, context, args.quiet)
    port = server.server_address[1]

    def stop(signum, frame):
        app.stopping.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.port_file:
        _write_port_file(args.port_file, port)
    if not args.quiet:
        scheme = "https" if context else "http"
        sys.stderr.write(f"[{app.NAME}] listening on {scheme}://{address}:{port}\n")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        if args.port_file:
            try:
                os.unlink(args.port_file)
            except OSError:
                pass
    return 0
