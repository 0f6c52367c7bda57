#!/usr/bin/env python3
"""The demo's month: a US flower wholesaler, and everything that happens to it.

Usage:
  python3 test/demo_seed.py month --fp-url URL --pt-url URL [--short] [options]
  python3 test/demo_seed.py show [--short]

"month" plays the demo against running servers: a FreshPortal and a PayTrace
stand-in (test/standin/, reset first) and a PostgreSQL server with freshpay
preloaded, reached as libpq's environment says (PGHOST, PGPORT, PGDATABASE =
freshpay.database_name, PGUSER a superuser), with a scheduled sync
(freshpay.sync_interval above 0): the worker does the month by itself, this
script only plays the people around it.  test/demo-run calls it, then prints
the report (test/demo.sql); test/t/320_demo.pl calls it against a test node.

  1. Meadowbrook Wholesale Flowers in FreshPortal: 40 customers (florists,
     event planners, garden centres, a grocery chain's floral departments,
     a hotel group on a purchasing card, customers who pay by check), and
     PayTrace vault profiles for most of them (cards, bank accounts).
  2. freshpay: the extension, and one administration whose secrets are
     env: references.
  3. The customers arrive; finance sets each one's collection rule
     (on_issue, on_due_date, manual; without a vault profile: payment
     requests).
  4. The month's invoices (the past 30 days: roses, chrysanthemums, potted
     orchids, with their lines) reach FreshPortal: the worker collects what
     is due, on issue and on the due date, by card (with Level 3 lines) and
     by ACH debit, and e-mails payment requests.
  5. The grocery chain's statement day: one card charge for its due invoices.
  6. A cancelled order: finance voids the charge before settlement.
  7. PayTrace settles a batch; the bank settles the ACH debits.
  8. A quality claim: part of a settled charge is refunded.
  9. Payers pay their requests on PayTrace's page, one stores the card; the
     next invoice of that customer is charged by itself.
 10. Today's orders, collected as they are issued.
 11. A florist whose card expired: the charge is declined.
 12. The bank returns an ACH debit (insufficient funds).
 13. PayTrace settles the day's batch.
 14. The month is done: nothing queued or in flight.

The people around freshpay are played through the stand-ins' admin API
(/_standin/...): the wholesaler's staff in FreshPortal (seed, invoices/{id}),
payers on PayTrace's hosted page (payment_requests/{id}/pay), the bank (ach/
{id}/settle, ach/{id}/return) and PayTrace's settlement (settle).  The
PayTrace stand-in declines a card past its expiry month as PayTrace's
sandbox declines its trigger amount (102, EXPIRED CARD).

"show" prints the month's customers and invoices without any server.

FRESHPAY_DEMO_SHORT=1 (or --short) makes the month short (about 50 invoices
instead of about 250, every flow kept), for the test suite.  Dates are relative to
today; the month is the same on every run (a fixed random seed).  Standard
library only.  No secret is printed: the administration gets references.
"""

import argparse
import datetime
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")
ADMINISTRATION = "meadowbrook"
WHOLESALER = "Meadowbrook Wholesale Flowers"

# PayTrace approves in 7-19 s; the stand-in, for the demo, in this many.
APPROVAL_DELAY = 0.5

# ---------------------------------------------------------------------------
# The wholesaler's catalogue
# ---------------------------------------------------------------------------

# product id -> (description, unit price)
PRODUCTS = {
    5101: ("Rose Freedom red 50cm, bunch of 25", "27.50"),
    5102: ("Rose Playa Blanca 60cm, bunch of 25", "29.00"),
    5103: ("Garden rose Juliet, bunch of 12", "54.00"),
    5104: ("Spray rose Lydia, bunch of 10", "17.50"),
    5201: ("Chrysanthemum disbud white, 10 stems", "14.80"),
    5202: ("Chrysanthemum spray Baltica, 10 stems", "9.60"),
    5203: ("Pompon mum Stallion yellow, 10 stems", "8.90"),
    5204: ("Potted mum 8in, assorted colors", "7.25"),
    5301: ("Phalaenopsis orchid 2-stem, 5in pot", "16.50"),
    5302: ("Phalaenopsis orchid 3-stem, 6in pot", "24.00"),
    5303: ("Cymbidium orchid stems, box of 10", "62.00"),
    5401: ("Hydrangea white premium, box of 30", "96.00"),
    5402: ("Lily Oriental Stargazer, 10 stems", "21.00"),
    5403: ("Tulip Strong Gold, bunch of 50", "38.00"),
    5404: ("Alstroemeria assorted, 10 stems", "7.40"),
    5405: ("Gypsophila Million Star, bunch", "11.50"),
    5501: ("Eucalyptus silver dollar, 10 stems", "8.50"),
    5502: ("Italian ruscus, bunch of 10", "5.20"),
    5601: ("Succulent assortment 4in, tray of 18", "32.40"),
    5990: ("Cold-chain delivery", "35.00"),
}

# segment -> (products with (min, max) quantities, lines per invoice (min, max))
MIXES = {
    "florist": ([(5101, 2, 8), (5102, 2, 6), (5104, 2, 6), (5201, 3, 10), (5202, 3, 12),
                 (5203, 2, 8), (5402, 1, 5), (5403, 1, 4), (5404, 4, 12), (5405, 2, 6),
                 (5501, 2, 8), (5502, 3, 10), (5301, 2, 8)], (3, 6)),
    "event": ([(5103, 2, 10), (5104, 4, 16), (5401, 1, 4), (5405, 4, 12), (5501, 4, 12),
               (5402, 2, 6), (5302, 2, 8)], (3, 5)),
    "hotel": ([(5301, 12, 40), (5302, 8, 24), (5303, 2, 6), (5401, 1, 3), (5402, 4, 10),
               (5102, 2, 6)], (3, 5)),
    "grocery": ([(5101, 6, 20), (5202, 6, 20), (5203, 6, 20), (5404, 6, 18), (5403, 2, 8),
                 (5301, 6, 18)], (3, 5)),
    "garden": ([(5204, 48, 144), (5301, 12, 48), (5302, 6, 24), (5601, 4, 16)], (2, 4)),
    "church": ([(5401, 1, 2), (5402, 2, 5), (5201, 2, 6), (5502, 2, 4)], (2, 4)),
}

# ---------------------------------------------------------------------------
# The customers
# ---------------------------------------------------------------------------


@dataclass
class Customer:
    fid: int                 # FreshPortal id
    code: str
    name: str
    email: str
    terms: int               # net days
    segment: str
    rule: str                # collection rule finance gives it
    method: str | None       # vault profile: "card", "ach" or None (no profile)
    per_month: int           # invoices in a month (the short month has fewer)
    short: int               # invoices in the short month
    tax: str = "0.00"        # sales tax rate (florists buy for resale: exempt)
    bin: str = "401200"      # card: the BIN (401200 Visa, 552233 Mastercard, 371449 Amex)
    last4: str = ""
    role: str = ""           # the part it plays in the month's story

    @property
    def profile(self):
        return f"C-{self.code}" if self.method else None


FLORIST, EVENT, HOTEL, GROCERY, GARDEN = "florist", "event", "hotel", "grocery", "garden"

CUSTOMERS = [
    # Florists, charged when the invoice is issued (on_issue).
    Customer(101, "BLOOMCO", "Bloom & Co Florists", "ap@bloomandco.example", 15, FLORIST, "on_issue", "card", 9, 2, last4="4417"),
    Customer(102, "FLWRCART", "The Flower Cart", "owner@theflowercart.example", 15, FLORIST, "on_issue", "card", 8, 1, bin="552233", last4="2281"),
    Customer(103, "STEMVINE", "Stem & Vine", "books@stemandvine.example", 15, FLORIST, "on_issue", "card", 9, 1, last4="9034"),
    Customer(104, "WILDFLWR", "Wildflower Studio", "hello@wildflowerstudio.example", 15, FLORIST, "on_issue", "card", 8, 2, last4="3318", role="void"),
    Customer(105, "MAINST", "Main Street Blooms", "ap@mainstreetblooms.example", 30, FLORIST, "on_issue", "card", 8, 1, bin="371449", last4="8431"),
    Customer(106, "POSY", "Posy Parlor", "posy@posyparlor.example", 15, FLORIST, "on_issue", "card", 7, 1, last4="6120"),
    Customer(107, "ORCHIDRM", "The Orchid Room", "accounts@orchidroom.example", 15, FLORIST, "on_issue", "card", 8, 1, bin="552233", last4="7745"),
    Customer(108, "FLEURDL", "Fleur de Lis Florals", "ap@fleurdelis.example", 30, FLORIST, "on_issue", "card", 9, 1, last4="1506"),
    Customer(109, "BOUQUET", "Bouquet Boutique", "orders@bouquetboutique.example", 15, FLORIST, "on_issue", "card", 7, 1, last4="8862"),
    Customer(110, "SUNFLWR", "Sunflower Florist", "sunny@sunflowerflorist.example", 15, FLORIST, "on_issue", "card", 8, 1, last4="0093"),
    Customer(111, "THISTLE", "Thistle & Thorn", "ap@thistleandthorn.example", 15, FLORIST, "on_issue", "card", 7, 1, bin="371449", last4="1004"),
    Customer(112, "MAGNOLIA", "Magnolia Flower Shop", "billing@magnoliaflowers.example", 30, FLORIST, "on_issue", "card", 8, 1, last4="5527"),
    Customer(113, "ROSEWOOD", "Rosewood Florist", "rosewood@rosewoodflorist.example", 15, FLORIST, "on_issue", "card", 6, 1, last4="0119", role="decline"),
    Customer(114, "FIDDLE", "Fiddlehead Flowers", "ap@fiddleheadflowers.example", 15, FLORIST, "on_issue", "card", 8, 1, last4="3390"),
    Customer(115, "PEONYPN", "Peony & Pine", "hello@peonyandpine.example", 15, FLORIST, "on_issue", "card", 7, 1, bin="552233", last4="6648"),
    Customer(116, "BLUEIRIS", "Blue Iris Florist", "blueiris@blueirisflorist.example", 15, FLORIST, "on_issue", "card", 7, 1, last4="2275"),
    Customer(117, "LARKSPUR", "Larkspur Lane Florist", "ap@larkspurlane.example", 15, FLORIST, "on_issue", "card", 9, 1, last4="6031"),
    # Florists on net terms, charged on the due date.
    Customer(121, "DAISY", "Daisy Chain Florist", "ap@daisychain.example", 30, FLORIST, "on_due_date", "card", 6, 1, last4="7712", role="expiring"),
    Customer(122, "PETALS", "Petals on Pearl", "office@petalsonpearl.example", 14, FLORIST, "on_due_date", "card", 8, 2, last4="4090"),
    Customer(123, "LILYLANE", "Lily Lane Flowers", "lily@lilylane.example", 21, FLORIST, "on_due_date", "card", 7, 2, bin="552233", last4="5561"),
    Customer(124, "VIOLET", "Violet Hour Florist", "ap@violethour.example", 30, FLORIST, "on_due_date", "card", 7, 1, last4="8823"),
    Customer(125, "CAMELLIA", "Camellia & Co", "billing@camelliaco.example", 14, FLORIST, "on_due_date", "card", 7, 2, last4="3047"),
    # Event planners (they pay sales tax), two of them on net terms.
    Customer(131, "PETALPSH", "Petal Pushers Event Design", "billing@petalpushers.example", 7, EVENT, "on_issue", "card", 4, 1, tax="6.25", last4="1187"),
    Customer(132, "EVERGRN", "Evergreen Events", "finance@evergreenevents.example", 14, EVENT, "on_issue", "card", 4, 1, tax="6.25", bin="552233", last4="9920"),
    Customer(133, "GILDED", "Gilded Gatherings", "ap@gildedgatherings.example", 14, EVENT, "on_due_date", "card", 3, 1, tax="6.25", last4="4406"),
    # Event planners without a vault profile: collected through payment requests.
    Customer(134, "JUNIPER", "Juniper & Jade Weddings", "pay@juniperjade.example", 7, EVENT, "on_issue", None, 1, 1, tax="6.25", role="request_store"),
    Customer(135, "SILVERBL", "Silver Bell Events", "accounts@silverbellevents.example", 7, EVENT, "on_issue", None, 1, 1, tax="6.25", role="request_pay"),
    Customer(136, "WILLOW", "Willow Creek Weddings", "hello@willowcreekweddings.example", 7, EVENT, "on_issue", None, 1, 1, tax="6.25", role="request_open"),
    # A hotel group on a Visa purchasing card: Level 3 line items on every charge.
    Customer(141, "HARBORVW", "Harborview Hotel Group", "ap@harborviewhotels.example", 30, HOTEL, "on_issue", "card", 8, 2, tax="6.25", bin="448590", last4="0417", role="refund"),
    # A grocery chain's floral departments: one card charge a week for its invoices.
    Customer(151, "BLOSSOM", "Blossom Market Floral Dept", "floral-ap@blossommarket.example", 7, GROCERY, "statement_weekly", "card", 12, 3, bin="552233", last4="3355", role="statement"),
    # Garden centres paying by ACH debit on the due date.
    Customer(161, "FERNFIG", "Fern & Fig Garden Center", "accounts@fernandfig.example", 30, GARDEN, "on_due_date", "ach", 4, 1),
    Customer(162, "GREENLF", "Greenleaf Nursery", "office@greenleafnursery.example", 15, GARDEN, "on_due_date", "ach", 4, 1, role="ach_return"),
    Customer(163, "HILLSIDE", "Hillside Garden Center", "ap@hillsidegarden.example", 30, GARDEN, "on_due_date", "ach", 4, 1),
    Customer(164, "OAKHOLLW", "Oak Hollow Garden Supply", "billing@oakhollow.example", 15, GARDEN, "on_due_date", "ach", 4, 2),
    Customer(165, "RIVERBND", "Riverbend Nursery", "ap@riverbendnursery.example", 15, GARDEN, "on_due_date", "ach", 4, 1),
    Customer(166, "CEDARGRV", "Cedar Grove Garden Center", "accounts@cedargrove.example", 30, GARDEN, "on_due_date", "ach", 4, 1),
    # Customers who pay by check or bank transfer: no vault profile, manual.
    Customer(171, "CORNER", "Corner Flower Stand", "cornerstand@mail.example", 7, FLORIST, "manual", None, 4, 1),
    Customer(172, "STMARYS", "St. Mary's Altar Guild", "altarguild@stmarys.example", 30, "church", "manual", None, 3, 1),
    Customer(173, "GRANDVW", "Grandview Funeral Home", "office@grandviewfh.example", 30, FLORIST, "manual", None, 6, 1),
    Customer(174, "CITYPRK", "Harbor City Parks Department", "ap@harborcity.example", 45, GARDEN, "manual", None, 2, 1),
]

BY_ROLE = {c.role: c for c in CUSTOMERS if c.role}
BY_CODE = {c.code: c for c in CUSTOMERS}


def money(value):
    return Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP)


def usd(value):
    return f"${Decimal(value):,.2f}"


def month_ago(day, months=1):
    """(year, month) of the month `months` before day's."""
    index = day.year * 12 + day.month - 1 - months
    return index // 12, index % 12 + 1


# ---------------------------------------------------------------------------
# The month's invoices
# ---------------------------------------------------------------------------


@dataclass
class Invoice:
    fid: int
    number: str
    kind: str                # invoice, credit_note
    customer: Customer
    date: datetime.date
    lines: list
    status: str = ""         # "" derived; concept, paid (by check), partial
    paid: Decimal = Decimal("0")
    note: str = ""
    excl: Decimal = field(default=Decimal("0"))
    vat: Decimal = field(default=Decimal("0"))

    def __post_init__(self):
        self.excl = sum((money(Decimal(PRODUCTS[p][1]) * q) for p, q in self.lines), Decimal("0"))
        self.vat = money(self.excl * Decimal(self.customer.tax) / 100)

    @property
    def total(self):
        return self.excl + self.vat

    @property
    def due(self):
        return self.date + datetime.timedelta(days=self.customer.terms)

    def seed(self):
        """The FreshPortal object."""
        lines = [{"description": PRODUCTS[p][0], "quantity": q, "unit_price": PRODUCTS[p][1],
                  "vat_rate": self.customer.tax, "amount_excl_vat": str(money(Decimal(PRODUCTS[p][1]) * q)),
                  "product_id": p} for p, q in self.lines]
        body = {"id": self.fid, "number": self.number, "type": self.kind,
                "customer_id": self.customer.fid, "invoice_date": self.date.isoformat(),
                "due_date": self.due.isoformat(), "currency": "USD",
                "amount_excl_vat": str(self.excl), "vat_amount": str(self.vat),
                "amount_incl_vat": str(self.total), "lines": lines}
        if self.status == "concept":
            body["status"] = "concept"
        if self.paid:
            body["amount_paid"] = str(self.paid)
        return body


class Month:
    """The month's data: customers, vault profiles, invoices, and the orders
    issued during the demo ("today's"), all relative to today."""

    def __init__(self, today, short):
        self.today = today
        self.short = short
        self.rng = random.Random(20240917)
        self.next_fid = 70001
        self.next_number = 30417
        self.backlog = []        # in FreshPortal when the invoices first arrive
        self.today_orders = {}   # name -> Invoice issued later in the demo
        self._build()

    # -- building ---------------------------------------------------------------------
    def _lines(self, segment, scale=1.0):
        mix, (low, high) = MIXES[segment]
        chosen = self.rng.sample(mix, self.rng.randint(low, min(high, len(mix))))
        lines = [(p, max(1, round(self.rng.randint(lo, hi) * scale))) for p, lo, hi in chosen]
        if segment in (HOTEL, GARDEN, EVENT) or self.rng.random() < 0.3:
            lines.append((5990, 1))
        return sorted(lines)

    def _invoice(self, customer, date, kind="invoice", lines=None, **extra):
        fid, self.next_fid = self.next_fid, self.next_fid + 1
        prefix = "CN" if kind == "credit_note" else "INV"
        number, self.next_number = f"{prefix}-{self.next_number}", self.next_number + 1
        if lines is None:
            lines = self._lines(customer.segment)
        if kind == "credit_note":
            lines = [(p, -q) for p, q in lines]
        return Invoice(fid, number, kind, customer, date, lines, **extra)

    def _order_days(self, customer):
        """Days ago (1-29) the customer's invoices were issued: weekdays and
        Saturdays, most recent last."""
        count = customer.short if self.short else customer.per_month
        fixed = {
            # The grocery chain: at least two invoices due by today (net 7) and
            # one that is not, for the statement.
            "statement": [12, 9, 3] if self.short else None,
            # Greenleaf's debit must be due (net 15): it is the one the bank returns.
            "ach_return": [18] if self.short else None,
            # Payment requests: one recent invoice each.
            "request_store": [4], "request_pay": [5], "request_open": [2],
        }.get(customer.role)
        if fixed:
            return sorted(fixed, reverse=True)
        days = [d for d in range(1, 30)
                if (self.today - datetime.timedelta(days=d)).weekday() != 6]
        due = [d for d in days if d >= customer.terms]
        if customer.rule == "on_due_date" and customer.role != "expiring" and due:
            # At least one due already (collected today); card customers also
            # have one due later in the month.
            first = self.rng.sample(due, 1)
            rest = [d for d in days if d not in first]
            if customer.method == "card" and self.short and count >= 2:
                rest = [d for d in rest if d < customer.terms] or rest
            return sorted(first + self.rng.sample(rest, max(0, count - 1)), reverse=True)
        return sorted(self.rng.sample(days, count), reverse=True)

    def _build(self):
        today = self.today
        plan = []        # (date, customer, extra)
        for customer in CUSTOMERS:
            for days_ago in self._order_days(customer):
                plan.append((today - datetime.timedelta(days=days_ago), customer))
        plan.sort(key=lambda item: (item[0], item[1].fid))
        for date, customer in plan:
            invoice = self._invoice(customer, date)
            if customer.role == "decline":
                # Rosewood paid by check until it put a card on file; that
                # card has expired since.
                invoice.paid, invoice.note = invoice.total, "paid by check"
            elif customer.rule == "manual" and (today - date).days > 10:
                invoice.paid, invoice.note = invoice.total, "paid by check or transfer"
            self.backlog.append(invoice)

        # A partial payment by check, a draft not yet issued, and credit notes
        # of earlier quality claims (never collected: FreshPortal allocates them).
        stmarys = [i for i in self.backlog if i.customer.code == "STMARYS"]
        grandview = [i for i in self.backlog if i.customer.code == "GRANDVW"]
        target = (stmarys or grandview)[-1]
        if not target.paid:
            target.paid = money(target.total * Decimal("0.4"))
            target.note = "partly paid by check"
        bloom = BY_CODE["BLOOMCO"]
        self.draft = self._invoice(bloom, today - datetime.timedelta(days=1), status="concept",
                                   lines=[(5103, 6), (5401, 1), (5990, 1)], note="draft")
        self.backlog.append(self.draft)
        for code, days_ago, lines in (("CORNER", 20, [(5101, 1)]), ("FLEURDL", 13, [(5402, 2)]),
                                      ("PETALS", 8, [(5404, 3)])):
            self.backlog.append(self._invoice(BY_CODE[code], today - datetime.timedelta(days=days_ago),
                                              kind="credit_note", lines=lines, note="quality claim"))

        # Orders issued during the demo, dated today.
        def order(name, code, lines=None):
            self.today_orders[name] = self._invoice(BY_CODE[code], today, lines=lines)

        order("juniper_next", "JUNIPER", [(5103, 8), (5104, 12), (5405, 10), (5990, 1)])
        for code in (("BOUQUET", "HARBORVW", "SUNFLWR") if self.short else
                     ("BOUQUET", "HARBORVW", "SUNFLWR", "STEMVINE", "MAGNOLIA", "PETALPSH", "FIDDLE")):
            order(f"today_{code.lower()}", code)
        order("rosewood", "ROSEWOOD", [(5101, 6), (5102, 4), (5201, 8), (5404, 10), (5502, 6)])

    # -- seeds ---------------------------------------------------------------------------
    def fp_customers(self):
        return [{"id": c.fid, "code": c.code, "name": c.name, "email": c.email, "currency": "USD",
                 "payment_term_days": c.terms, "blocked": False} for c in CUSTOMERS]

    def pt_profiles(self):
        profiles = []
        for c in CUSTOMERS:
            if c.method == "ach":
                profiles.append({"customer_id": c.profile, "method": "ach",
                                 "masked_number": "xxxxx" + str(4000 + c.fid)[-4:], "email": c.email})
            elif c.method == "card":
                masked = ("x" * 11 if c.bin.startswith("37") else "x" * 12) + c.last4
                year, month = self.today.year + 2, (c.fid % 12) + 1
                if c.role == "decline":
                    year, month = month_ago(self.today)         # expired last month
                elif c.role == "expiring":
                    year, month = self.expiring_card()
                profiles.append({"customer_id": c.profile, "method": "card", "bin": c.bin,
                                 "masked_number": masked, "expiration_month": month,
                                 "expiration_year": year, "email": c.email,
                                 "billing_address": {"name": c.name}})
        return profiles

    def expiring_card(self):
        """Daisy's card: it expires the month before her next invoice is due
        (none is due yet: she is not charged before)."""
        return month_ago(min(i.due for i in self.backlog if i.customer.role == "expiring"))

    # -- what the worker is expected to do with the backlog ----------------------------
    def open_backlog(self):
        return [i for i in self.backlog if i.kind == "invoice" and i.status != "concept" and i.paid < i.total]

    def expected(self):
        """Invoices the worker should collect (or ask payment for) when the backlog arrives."""
        charge, ach, requests = [], [], []
        for i in self.open_backlog():
            c = i.customer
            if c.rule == "on_issue" and c.method == "card":
                charge.append(i)
            elif c.rule == "on_issue" and c.method is None:
                requests.append(i)
            elif c.rule == "on_due_date" and i.due <= self.today:
                (ach if c.method == "ach" else charge).append(i)
        return charge, ach, requests

    def summary_lines(self):
        invoices = [i for i in self.backlog if i.kind == "invoice"]
        credits = [i for i in self.backlog if i.kind == "credit_note"]
        first = min(i.date for i in self.backlog)
        billed = sum((i.total for i in invoices), Decimal("0"))
        cards = sum(1 for c in CUSTOMERS if c.method == "card")
        banks = sum(1 for c in CUSTOMERS if c.method == "ach")
        by_segment = {}
        for c in CUSTOMERS:
            by_segment[c.segment] = by_segment.get(c.segment, 0) + 1
        return [
            f"{WHOLESALER}: {len(CUSTOMERS)} customers — {by_segment.get(FLORIST, 0)} florists, "
            f"{by_segment.get(EVENT, 0)} event planners, {by_segment.get(GARDEN, 0)} garden centres and parks, "
            f"a grocery chain's floral departments, a hotel group on a purchasing card, a church guild",
            f"{len(invoices)} invoices and {len(credits)} credit notes from {first} to {self.today - datetime.timedelta(days=1)}, "
            f"billed {usd(billed)}; {len(self.today_orders)} more orders will be issued today",
            f"PayTrace vault: {cards} cards (Visa, Mastercard, Amex; the hotel group's is a Visa purchasing card) "
            f"and {banks} bank accounts; {len(CUSTOMERS) - cards - banks} customers have no vault profile",
        ]


# ---------------------------------------------------------------------------
# Talking to the servers
# ---------------------------------------------------------------------------


class DemoError(Exception):
    pass


class Standin:
    """A stand-in's admin API (/_standin/..., no auth)."""

    def __init__(self, url):
        self.url = url.rstrip("/")

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", "replace")
            raise DemoError(f"{method} {self.url}{path} answered {error.code}: {detail}") from None
        except urllib.error.URLError as error:
            raise DemoError(f"cannot reach {self.url}{path}: {error.reason}") from None

    def post(self, path, body=None):
        return self.call("POST", path, body if body is not None else {})

    def get(self, path):
        return self.call("GET", path)


class Db:
    """SQL through psql (the demo needs nothing but the PostgreSQL client)."""

    def __init__(self, psql):
        self.psql = psql

    def _run(self, args, sql):
        result = subprocess.run([self.psql, "-X", "-v", "ON_ERROR_STOP=1", *args, "-c", sql],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise DemoError(f"psql failed: {result.stderr.strip()}\n  in: {sql.strip()[:400]}")
        return result.stdout

    def rows(self, sql):
        """The rows of a query, as dicts."""
        out = self._run(["-q", "-A", "-t"], f"SELECT coalesce(json_agg(q), '[]') FROM ({sql}) q")
        return json.loads(out)

    def row(self, sql):
        rows = self.rows(sql)
        return rows[0] if rows else {}

    def value(self, sql):
        return self._run(["-q", "-A", "-t"], sql).strip()

    def true(self, sql):
        return self.value(sql) == "t"

    def show(self, sql, indent="  "):
        """Print a query's result as a psql table."""
        out = self._run(["-q", "-P", "footer=off", "-P", "null=-", "-P", "linestyle=unicode"], sql)
        for line in out.rstrip("\n").split("\n"):
            print(indent + line if line else line)


def quote(text):
    return "NULL" if text is None else "'" + str(text).replace("'", "''") + "'"


# ---------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------


class Progress:
    def __init__(self):
        self.start = time.monotonic()
        self.tty = sys.stdout.isatty()
        self.step = 0

    def elapsed(self):
        return time.monotonic() - self.start

    def stage(self, title):
        self.step += 1
        print(f"\n--- {self.step}. {title}  [{self.elapsed():5.1f}s]", flush=True)

    def say(self, text):
        print(textwrap.fill(text, width=self.width, initial_indent="  ", subsequent_indent="    ",
                            break_on_hyphens=False), flush=True)

    @property
    def width(self):
        return max(60, min(120, shutil.get_terminal_size((100, 24)).columns - 1)) if self.tty else 100

    def wait(self, what, check, timeout=120, interval=0.3):
        """Call check() until it returns (True, status) or timeout seconds pass.
        The status is shown as it changes (live on a terminal)."""
        started = time.monotonic()
        shown, last_print = None, 0.0
        while True:
            done, status = check()
            now = time.monotonic()
            if status and status != shown and (self.tty or done or now - last_print >= 5):
                if self.tty:
                    print(f"\r\033[K  … {status}", end="" if not done else "\n", flush=True)
                else:
                    print(f"  … {status}", flush=True)
                shown, last_print = status, now
            if done:
                if self.tty and status is None and shown is not None:
                    print(flush=True)
                return status
            if now - started > timeout:
                if self.tty and shown is not None:
                    print(flush=True)
                raise DemoError(f"timed out after {timeout} s waiting for {what} (last: {status})")
            time.sleep(interval)


# ---------------------------------------------------------------------------
# The month, played
# ---------------------------------------------------------------------------

QUIET_SQL = """
SELECT NOT EXISTS (SELECT FROM freshpay.jobs WHERE state = 'queued')
   AND NOT EXISTS (SELECT FROM freshpay.payments WHERE status IN ('pending', 'unknown'))
   AND NOT EXISTS (SELECT FROM freshpay.payment_requests WHERE status IN ('pending', 'unknown'))
"""


class Demo:
    def __init__(self, args):
        self.args = args
        self.fp = Standin(args.fp_url)
        self.pt = Standin(args.pt_url)
        self.db = Db(args.psql)
        self.progress = Progress()
        # The server's today: its due dates and statement days are the ones
        # that count.
        today = datetime.date.fromisoformat(self.db.value("SELECT to_char(current_date, 'YYYY-MM-DD')"))
        self.month = Month(today, args.short)

    # -- helpers ---------------------------------------------------------------------------
    def say(self, text):
        self.progress.say(text)

    def stage(self, title):
        self.progress.stage(title)

    def wait(self, what, check, timeout=120):
        return self.progress.wait(what, check, timeout)

    def wait_sql(self, what, sql, timeout=60):
        return self.wait(what, lambda: (self.db.true(sql), None), timeout)

    def wait_quiet(self, what="the worker to finish", timeout=90):
        """Until nothing is queued or in flight."""
        return self.wait_sql(what, QUIET_SQL, timeout)

    def invoice_id(self, invoice):
        return self.db.value(f"SELECT id FROM freshpay.invoices WHERE administration = '{ADMINISTRATION}'"
                             f" AND number = {quote(invoice.number)}")

    def issue(self, *invoices):
        """Orders issued in FreshPortal now; returns the time they were issued."""
        self.fp.post("/_standin/seed", {"invoices": [i.seed() for i in invoices]})
        return time.monotonic()

    def wait_synced(self, invoices, what):
        numbers = ", ".join(quote(i.number) for i in invoices)
        self.wait_sql(what, f"SELECT count(*) = {len(invoices)} FROM freshpay.invoices"
                            f" WHERE administration = '{ADMINISTRATION}' AND number IN ({numbers})")

    # -- the stages -------------------------------------------------------------------------
    def run(self):
        self.servers()
        self.install()
        self.rules()
        self.invoices_arrive()
        self.statement()
        self.void()
        self.settle("PayTrace settles the week's card batch; the bank settles the ACH debits", ach=True)
        self.refund()
        self.payers()
        self.todays_orders()
        self.decline()
        self.ach_return()
        self.settle("PayTrace settles today's batch", ach=False)
        self.stage("The month is done")
        self.wait_quiet()
        self.say(f"everything recorded and written back to FreshPortal after {self.progress.elapsed():.0f} s")

    def servers(self):
        m = self.month
        self.stage("FreshPortal and PayTrace (the stand-ins) with the wholesaler's data")
        for standin in (self.fp, self.pt):
            standin.post("/_standin/reset")
        self.pt.post("/_standin/config", {"approval_delay": APPROVAL_DELAY})
        self.fp.post("/_standin/seed", {"customers": m.fp_customers()})
        self.pt.post("/_standin/customers", {"customers": m.pt_profiles()})
        self.merchant_id = self.pt.get("/_standin/config")["merchant_id"]
        for line in m.summary_lines():
            self.say(line)
        self.say(f"FreshPortal at {self.fp.url}, PayTrace at {self.pt.url} "
                 f"(approvals take {APPROVAL_DELAY} s here, 7-19 s at the real PayTrace)")

    def install(self):
        a = self.args
        self.stage("freshpay: the extension and the administration")
        interval = self.db.value("SELECT current_setting('freshpay.sync_interval')")
        if interval in ("0", "0ms", "0s"):
            raise DemoError("freshpay.sync_interval is 0: the demo needs the worker's scheduled sync "
                            "(e.g. freshpay.sync_interval = '1s' in postgresql.conf)")
        self.db.value("CREATE EXTENSION IF NOT EXISTS freshpay")
        if self.db.true(f"SELECT EXISTS (SELECT FROM freshpay.administrations WHERE name = '{ADMINISTRATION}')"):
            raise DemoError(f"this database has played the month already (administration {ADMINISTRATION});"
                            " the demo needs a database of its own")
        self.db.value(f"""SELECT freshpay_add_administration(
            name                   => '{ADMINISTRATION}',
            freshportal_url        => {quote(self.fp.url)},
            freshportal_api_key    => {quote(a.fp_key_ref)},
            paytrace_url           => {quote(self.pt.url)},
            paytrace_username      => {quote(a.pt_username)},
            paytrace_password      => {quote(a.pt_password_ref)},
            paytrace_integrator_id => {quote(a.pt_integrator_id)},
            paytrace_merchant_id   => {int(self.merchant_id)})""")
        row = self.db.row(f"""SELECT a.name, a.freshportal_url, a.paytrace_url, a.paytrace_username,
                                     a.paytrace_merchant_id, s.freshportal_api_key, s.paytrace_password
                                FROM freshpay.administrations a
                                JOIN freshpay.administration_secrets s ON s.administration = a.name
                               WHERE a.name = '{ADMINISTRATION}'""")
        self.say(f"CREATE EXTENSION freshpay; administration {row['name']}: FreshPortal {row['freshportal_url']},"
                 f" PayTrace {row['paytrace_url']} (API user {row['paytrace_username']},"
                 f" merchant {row['paytrace_merchant_id']} for API v3: payment requests, ACH)")
        self.say(f"its secrets are references, {row['freshportal_api_key']} and {row['paytrace_password']}:"
                 " the server reads them from its environment, so they are in no SQL text, log, dump or output")
        self.say(f"worker: sync every {interval}, {self.db.value('SHOW freshpay.max_parallel_requests')}"
                 " PayTrace requests in flight at most")

    def rules(self):
        self.stage("Customers arrive; finance sets each one's collection rule")
        self.wait_sql("the customers", f"SELECT count(*) = {len(CUSTOMERS)} FROM freshpay.customers"
                                       f" WHERE administration = '{ADMINISTRATION}'")
        self.say(f"the worker's scheduled sync pulled {len(CUSTOMERS)} customers from FreshPortal")
        values = ",\n".join(
            f"({quote(c.code)}, {quote(c.profile)}, {quote(c.rule)}, {quote(c.method or 'card')})"
            for c in CUSTOMERS if c.rule != "statement_weekly")
        self.db.value(f"""SELECT count(*) FROM (VALUES {values}) v(code, profile, rule, method)
            JOIN freshpay.customers c ON c.administration = '{ADMINISTRATION}' AND c.code = v.code,
            LATERAL freshpay_link_customer(c.id, v.profile, v.rule, v.method) l""")
        self.db.show(f"""SELECT collection AS rule,
                                CASE WHEN paytrace_customer_id IS NULL THEN 'no vault profile'
                                     ELSE payment_method END AS pays_by,
                                count(*) AS customers,
                                (array_agg(name ORDER BY code))[1] || coalesce(', ' || (array_agg(name ORDER BY code))[2], '')
                                || CASE WHEN count(*) > 2 THEN ', …' ELSE '' END AS for_example
                           FROM freshpay.customers WHERE administration = '{ADMINISTRATION}'
                           AND code <> {quote(BY_ROLE["statement"].code)}
                          GROUP BY 1, 2 ORDER BY 1, 2""")
        self.say("on_issue without a vault profile: the worker e-mails a payment request instead of charging;"
                 f" {BY_ROLE['statement'].name} gets its statement rule once its invoices are in (step 5)")

    def invoices_arrive(self):
        m = self.month
        self.stage("The month's invoices reach FreshPortal; the worker collects what is due")
        charge, ach, requests = m.expected()
        due_later = [i for i in m.open_backlog() if i.customer.rule == "on_due_date" and i.due > m.today]
        self.say(f"{len(m.backlog)} invoices and credit notes of the past 30 days; by the rules: "
                 f"{len(charge)} card charges, {len(ach)} ACH debits, {len(requests)} payment requests now, "
                 f"{len(due_later)} on their due date later")
        started = self.issue(*m.backlog)
        target = len(charge) + len(ach)

        def check():
            row = self.db.row(f"""SELECT
                (SELECT count(*) FROM freshpay.invoices WHERE administration = '{ADMINISTRATION}') AS synced,
                (SELECT count(*) FROM freshpay.payments WHERE status = 'captured' AND invoice_id IS NOT NULL) AS collected,
                (SELECT coalesce(sum(amount), 0) FROM freshpay.payments WHERE status = 'captured' AND invoice_id IS NOT NULL) AS amount,
                (SELECT count(*) FROM freshpay.payments WHERE status IN ('pending', 'unknown')) AS in_flight,
                (SELECT count(*) FROM freshpay.payments WHERE freshportal_payment_id IS NOT NULL) AS registered,
                (SELECT count(*) FROM freshpay.payment_requests WHERE status = 'sent') AS requests,
                ({QUIET_SQL}) AS quiet""")
            done = (row["collected"] >= target and row["requests"] >= len(requests)
                    and row["registered"] >= target and row["quiet"])
            return done, (f"synced {row['synced']}/{len(m.backlog)} · collected {row['collected']}/{target}"
                          f" ({usd(row['amount'])}) · {row['in_flight']} in flight ·"
                          f" {row['registered']} written back · {row['requests']} requests sent")
        self.wait("the backlog's collections", check, timeout=240)
        self.say(f"done in {time.monotonic() - started:.1f} s: every charge recorded, written back to FreshPortal,"
                 " Level 3 line items sent for Visa and Mastercard")
        hotel = BY_ROLE["refund"]
        row = self.db.row(f"""SELECT count(*) AS n, coalesce(sum(p.amount), 0) AS amount FROM freshpay.payments p
                                JOIN freshpay.customers c ON c.id = p.customer_id
                               WHERE c.code = {quote(hotel.code)} AND p.level3_status = 'sent'""")
        self.say(f"{hotel.name} pays with a Visa purchasing card: its {row['n']} charges ({usd(row['amount'])})"
                 " carried their invoice lines, for the lower Level 3 interchange rate")
        self.db.show(f"""SELECT c.collection || CASE WHEN p.kind = 'ach_sale' THEN ', ACH debit' ELSE ', card' END AS collected,
                                count(*) AS invoices, to_char(sum(p.amount), 'FM$999,999,990.00') AS amount,
                                count(*) FILTER (WHERE p.level3_status = 'sent') AS level3_sent
                           FROM freshpay.payments p JOIN freshpay.customers c ON c.id = p.customer_id
                          WHERE p.status = 'captured' AND p.invoice_id IS NOT NULL
                          GROUP BY 1 ORDER BY 1""")

    def statement(self):
        c = BY_ROLE["statement"]
        self.stage(f"Statement day for {c.name}: one card charge for its due invoices")
        dow, day = self.db.value("SELECT extract(dow FROM current_date)::int || ' ' || to_char(current_date, 'FMDay')").split()
        self.db.value(f"""SELECT freshpay_link_customer(id, {quote(c.profile)}, 'statement_weekly', 'card',
                                                         statement_day => {dow})
                            FROM freshpay.customers WHERE administration = '{ADMINISTRATION}' AND code = {quote(c.code)}""")
        self.say(f"finance puts {c.code} on statement_weekly, statement day {dow} ({day}: today); the worker's"
                 " due pass queues the statement")
        sql = f"""SELECT p.status = 'captured' AND bool_and(a.freshportal_payment_id IS NOT NULL)
                    FROM freshpay.payments p JOIN freshpay.customers c ON c.id = p.customer_id
                    JOIN freshpay.payment_allocations a ON a.payment_id = p.id
                   WHERE c.code = {quote(c.code)} AND p.invoice_id IS NULL GROUP BY p.id, p.status"""
        self.wait_sql("the statement", f"SELECT coalesce(({sql} LIMIT 1), false)")
        row = self.db.row(f"""SELECT p.invoice_number, p.amount, count(a.*) AS invoices,
                                     string_agg(i.number, ', ' ORDER BY i.number) AS numbers
                                FROM freshpay.payments p JOIN freshpay.customers c ON c.id = p.customer_id
                                JOIN freshpay.payment_allocations a ON a.payment_id = p.id
                                JOIN freshpay.invoices i ON i.id = a.invoice_id
                               WHERE c.code = {quote(c.code)} AND p.invoice_id IS NULL
                               GROUP BY p.id ORDER BY p.id LIMIT 1""")
        self.say(f"statement {row['invoice_number']}: {usd(row['amount'])} for {row['invoices']} invoices "
                 f"({row['numbers']}), registered in FreshPortal per invoice")

    def void(self):
        c = BY_ROLE["void"]
        self.stage(f"{c.name} cancels an order (the wedding was postponed): finance voids the charge")
        p = self.db.row(f"""SELECT p.id, p.amount, i.number, i.freshportal_id
                              FROM freshpay.payments p JOIN freshpay.invoices i ON i.id = p.invoice_id
                              JOIN freshpay.customers c ON c.id = i.customer_id
                             WHERE c.code = {quote(c.code)} AND p.kind = 'sale' AND p.status = 'captured'
                             ORDER BY i.invoice_date DESC, i.number DESC LIMIT 1""")
        void = self.db.row(f"SELECT kind, status, amount FROM freshpay_void({p['id']})")
        self.say(f"SELECT freshpay_void({p['id']}): {void['status']} — the charge of {p['number']}"
                 f" ({usd(p['amount'])}), before settlement")
        self.wait_sql("the reversal in FreshPortal",
                      f"SELECT i.status = 'open' AND ({QUIET_SQL}) FROM freshpay.invoices i WHERE i.id ="
                      f" (SELECT invoice_id FROM freshpay.payments WHERE id = {p['id']})")
        self.say("the worker reversed the FreshPortal registration: the invoice is open there again")
        # FreshPortal: the order is credited.
        invoice = next(i for i in self.month.backlog if i.number == p["number"])
        credit = self.month._invoice(c, self.month.today, kind="credit_note", lines=invoice.lines,
                                     note="order cancelled")
        self.issue(credit)
        self.fp.post(f"/_standin/invoices/{p['freshportal_id']}", {"status": "credited", "open_amount": "0.00"})
        self.wait_sql("the credited invoice", f"SELECT status = 'credited' FROM freshpay.invoices"
                                              f" WHERE administration = '{ADMINISTRATION}' AND number = {quote(p['number'])}")
        self.wait_synced([credit], "the credit note")
        self.say(f"FreshPortal credits {p['number']} with credit note {credit.number}; the next sync brings both in")

    def settle(self, title, ach):
        self.stage(title)
        self.wait_quiet()
        answer = self.pt.post("/_standin/settle")
        batch = answer.get("batch") or {}
        number = int(batch.get("number") or 0)
        count = len(answer.get("transaction_ids") or [])
        self.say(f"PayTrace settles batch {number}: {count} transactions")
        if ach:
            debits = self.db.rows("""SELECT paytrace_transaction_id AS id FROM freshpay.payments
                                      WHERE kind = 'ach_sale' AND status = 'captured' AND settled_at IS NULL""")
            for debit in debits:
                self.pt.post(f"/_standin/ach/{debit['id']}/settle")
            self.say(f"the bank settles {len(debits)} ACH debits")
            self.wait_sql("the ACH settlements", """SELECT NOT EXISTS (SELECT FROM freshpay.payments
                             WHERE kind = 'ach_sale' AND status = 'captured' AND settled_at IS NULL)""")
        if number:
            self.wait_sql(f"batch {number} in freshpay", f"""SELECT EXISTS (SELECT FROM freshpay.settlements
                              WHERE batch_number = {number})
                            AND (SELECT count(*) FROM freshpay.payments WHERE batch_number = {number}) = {count}""")
            row = self.db.row(f"""SELECT count(*) AS n,
                                         count(*) FILTER (WHERE match IN ('matched', 'statement')) AS ok
                                    FROM freshpay.reconciliation WHERE batch_number = {number}""")
            self.say(f"freshpay pulled batch {number}: {row['ok']} of {row['n']} transactions reconciled with "
                     "their invoices and customers")

    def refund(self):
        c = BY_ROLE["refund"]
        self.stage(f"A quality claim: orchids with crown rot at {c.name}; part of a charge is refunded")
        p = self.db.row(f"""SELECT p.id, p.amount, i.number, i.freshportal_id, i.raw -> 'lines' AS lines
                              FROM freshpay.payments p JOIN freshpay.invoices i ON i.id = p.invoice_id
                              JOIN freshpay.customers c ON c.id = i.customer_id
                             WHERE c.code = {quote(c.code)} AND p.kind = 'sale' AND p.status = 'captured'
                               AND p.settled_at IS NOT NULL
                             ORDER BY p.amount DESC LIMIT 1""")
        # Three pots (or stems) of the invoice's orchid line, with their tax.
        line = next((l for l in p["lines"] if "orchid" in l["description"].lower()), p["lines"][0])
        pots = min(3, int(Decimal(str(line["quantity"]))))
        credit = self.month._invoice(c, self.month.today, kind="credit_note",
                                     lines=[(int(line["product_id"]), pots)], note="quality claim")
        claim = -credit.total
        refund = self.db.row(f"SELECT kind, status, amount FROM freshpay_refund({p['id']}, {claim})")
        self.say(f"SELECT freshpay_refund({p['id']}, {claim}): a {refund['kind']} of {usd(refund['amount'])} "
                 f"({pots} × {line['description']}) on {p['number']} ({usd(p['amount'])}): {refund['status']}")
        self.wait_quiet("the refund's write-back")
        self.say(f"FreshPortal: the registration reversed and the remaining {usd(Decimal(str(p['amount'])) - claim)}"
                 " registered anew")
        self.issue(credit)
        self.fp.post(f"/_standin/invoices/{p['freshportal_id']}", {"status": "paid", "open_amount": "0.00"})
        self.wait_synced([credit], "the credit note")
        self.say(f"FreshPortal books credit note {credit.number} ({usd(-credit.total)}) against {p['number']}")

    def payers(self):
        m = self.month
        store, pay, wait = BY_ROLE["request_store"], BY_ROLE["request_pay"], BY_ROLE["request_open"]
        self.stage("Customers without a vault profile pay their payment requests on PayTrace's page")
        requests = {r["code"]: r for r in self.db.rows(f"""
            SELECT c.code, r.paytrace_request_id, r.amount, r.email, i.number
              FROM freshpay.payment_requests r JOIN freshpay.customers c ON c.id = r.customer_id
              JOIN freshpay.invoices i ON i.id = r.invoice_id WHERE r.status = 'sent'""")}
        for c in (store, pay, wait):
            if c.code not in requests:
                raise DemoError(f"no payment request was sent to {c.name}")
            r = requests[c.code]
            self.say(f"{c.name}: request {r['paytrace_request_id']} for {r['number']}, {usd(r['amount'])},"
                     f" e-mailed to {r['email']}")
        self.pt.post(f"/_standin/payment_requests/{requests[store.code]['paytrace_request_id']}/pay",
                     {"store_card": True, "bin": "552233", "masked_number": "xxxxxxxxxxxx5150"})
        self.say(f"{store.code} pays and stores the card; {pay.code} pays without storing it;"
                 f" {wait.code} has not paid yet")
        self.pt.post(f"/_standin/payment_requests/{requests[pay.code]['paytrace_request_id']}/pay",
                     {"store_card": False})
        self.wait_sql("the payments through the requests", f"""SELECT count(*) = 2 FROM freshpay.payment_requests r
                         JOIN freshpay.customers c ON c.id = r.customer_id
                        WHERE (c.code = {quote(store.code)} AND r.status = 'onboarded')
                           OR (c.code = {quote(pay.code)} AND r.status = 'paid')""")
        linked = self.db.value(f"SELECT paytrace_customer_id FROM freshpay.customers WHERE code = {quote(store.code)}"
                               f" AND administration = '{ADMINISTRATION}'")
        self.say(f"the PayTrace pull found both payments: recorded, registered in FreshPortal;"
                 f" {store.code} is linked to its new vault profile {linked}")
        order = m.today_orders["juniper_next"]
        issued = self.issue(order)
        self.wait_sql(f"{store.code}'s next invoice charged", f"""SELECT EXISTS (SELECT FROM freshpay.payments p
                         JOIN freshpay.invoices i ON i.id = p.invoice_id
                        WHERE i.number = {quote(order.number)} AND p.kind = 'sale' AND p.status = 'captured')""")
        self.say(f"{store.code}'s next order {order.number} ({usd(order.total)}) is charged by itself against the"
                 f" stored card, {time.monotonic() - issued:.1f} s after it was issued")

    def todays_orders(self):
        m = self.month
        orders = [o for name, o in m.today_orders.items() if name.startswith("today_")]
        self.stage(f"Today's orders: {len(orders)} invoices issued, and yesterday's draft finalized")
        self.wait_quiet()
        issued = self.issue(*orders)
        self.fp.post(f"/_standin/invoices/{m.draft.fid}", {"status": "open"})
        numbers = ", ".join(quote(o.number) for o in orders + [m.draft])
        self.wait_sql("today's charges", f"""SELECT count(*) = {len(orders) + 1} FROM freshpay.payments p
                         JOIN freshpay.invoices i ON i.id = p.invoice_id
                        WHERE i.number IN ({numbers}) AND p.status = 'captured'""")
        self.say(f"all {len(orders) + 1} charged on issue within {time.monotonic() - issued:.1f} s of reaching FreshPortal"
                 f" ({m.draft.number}: concept → open queues it, like a new invoice)")

    def decline(self):
        m = self.month
        c = BY_ROLE["decline"]
        order = m.today_orders["rosewood"]
        self.stage(f"{c.name}'s first card charge: the card on file has expired")
        # The card on file expired last month: PayTrace declines it.
        self.issue(order)
        self.wait_sql("the decline", f"""SELECT EXISTS (SELECT FROM freshpay.payments p
                         JOIN freshpay.invoices i ON i.id = p.invoice_id
                        WHERE i.number = {quote(order.number)} AND p.status = 'failed')""")
        row = self.db.row(f"""SELECT p.response_code, p.message FROM freshpay.payments p
                                JOIN freshpay.invoices i ON i.id = p.invoice_id WHERE i.number = {quote(order.number)}""")
        self.say(f"{order.number} ({usd(order.total)}): declined, {row['response_code']} {' '.join(row['message'].split())}")
        self.say("a decline is an outcome: recorded as failed, not charged again by the rules, shown in exceptions")

    def ach_return(self):
        c = BY_ROLE["ach_return"]
        self.stage(f"The bank returns {c.name}'s ACH debit: insufficient funds")
        p = self.db.row(f"""SELECT p.id, p.paytrace_transaction_id, p.amount, i.number
                              FROM freshpay.payments p JOIN freshpay.invoices i ON i.id = p.invoice_id
                              JOIN freshpay.customers c ON c.id = i.customer_id
                             WHERE c.code = {quote(c.code)} AND p.kind = 'ach_sale' AND p.status = 'captured'
                             ORDER BY p.id LIMIT 1""")
        self.pt.post(f"/_standin/ach/{p['paytrace_transaction_id']}/return", {"status": "RETURNED", "reason": "R01"})
        self.wait_sql("the return", f"""SELECT p.status = 'returned' AND i.status = 'open' AND ({QUIET_SQL})
                           FROM freshpay.payments p JOIN freshpay.invoices i ON i.id = p.invoice_id
                          WHERE p.id = {p['id']}""")
        self.say(f"{p['number']} ({usd(p['amount'])}): returned R01; the FreshPortal registration reversed, the"
                 " invoice open again, not collected again by itself")

    # -- show ---------------------------------------------------------------------------
    @staticmethod
    def show(month):
        for line in month.summary_lines():
            print(line)
        print()
        print(f"{'code':<9} {'name':<30} {'net':>3}  {'rule':<16} {'vault':<6} {'role'}")
        for c in CUSTOMERS:
            print(f"{c.code:<9} {c.name:<30} {c.terms:>3}  {c.rule:<16} {c.method or '-':<6} {c.role}")
        print()
        print(f"{'number':<10} {'type':<11} {'customer':<9} {'date':<10} {'due':<10} {'total':>10}  note")
        for i in month.backlog:
            print(f"{i.number:<10} {i.kind:<11} {i.customer.code:<9} {i.date} {i.due} {i.total:>10}  {i.note}")
        print()
        for name, i in month.today_orders.items():
            print(f"{i.number:<10} today       {i.customer.code:<9} {i.date} {i.due} {i.total:>10}  {name}")


def main(argv):
    parser = argparse.ArgumentParser(prog="demo_seed.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    month = sub.add_parser("month", help="play the month against running servers")
    month.add_argument("--fp-url", required=True, help="the FreshPortal stand-in")
    month.add_argument("--pt-url", required=True, help="the PayTrace stand-in")
    month.add_argument("--psql", default="psql", help="the psql program (default: psql in PATH)")
    month.add_argument("--fp-key-ref", default="env:FRESHPAY_TEST_SECRET",
                       help="the FreshPortal API key, as a reference the server resolves")
    month.add_argument("--pt-username", default="pt-user")
    month.add_argument("--pt-password-ref", default="env:FRESHPAY_TEST_PT_PASSWORD")
    month.add_argument("--pt-integrator-id", default="pt-integrator")
    for command in (month, sub.add_parser("show", help="print the month's data")):
        command.add_argument("--short", action="store_true",
                             default=os.environ.get("FRESHPAY_DEMO_SHORT", "") not in ("", "0"),
                             help="the short month (also FRESHPAY_DEMO_SHORT=1)")
    args = parser.parse_args(argv[1:])
    if args.command == "show":
        Demo.show(Month(datetime.date.today(), args.short))
        return 0
    try:
        Demo(args).run()
    except DemoError as error:
        print(f"\ndemo: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
