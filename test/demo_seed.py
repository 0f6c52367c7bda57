#!/usr/bin/env python3
"""Seed the stand-ins with the demo's data: a small US flower wholesaler.

Usage: python3 test/demo_seed.py FRESHPORTAL_URL PAYTRACE_URL

FreshPortal gets five USD customers (florists, an event designer, a garden
centre, a market stall) and twelve invoices of cut flowers and greens: open
ones, one partially paid, one already paid by bank transfer, one still a
concept (draft) and one credit note (negative totals).  PayTrace gets vault
profiles for three of the customers (C-BLOOM, C-PETAL by card, C-FERN by
ACH); the other two have none, so collecting from them is refused.

Both stand-ins are reset first, so the script can run again.  Dates are
relative to today, so the demo always shows current and overdue invoices.
Talks to the stand-ins' admin API only (/_standin/...).  Standard library only.
"""

import datetime
import json
import sys
import urllib.error
import urllib.request
from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")

# code, name, email, payment term (days), PayTrace vault profile method or None
CUSTOMERS = [
    (101, "BLOOM", "Bloom & Co Florists", "ap@bloomandco.example", 30, "card"),
    (102, "PETAL", "Petal Pushers Event Design", "billing@petalpushers.example", 14, "card"),
    (103, "FERN", "Fern & Fig Garden Center", "accounts@fernandfig.example", 30, "ach"),
    (104, "LILY", "Lily Lane Wedding Flowers", "hello@lilylane.example", 7, None),
    (105, "STEM", "Stem Street Market", "orders@stemstreet.example", 30, None),
]

# Products: id -> (description, unit price)
PRODUCTS = {
    5101: ("Rose Red Naomi 60cm, bunch of 20", "18.50"),
    5102: ("Rose Avalanche+ 50cm, bunch of 20", "16.90"),
    5210: ("Tulip Strong Gold, bunch of 50", "21.00"),
    5305: ("Hydrangea Magical Revolution Blue, stem", "3.85"),
    5402: ("Chrysanthemum Spray Baltica, bunch of 10", "6.40"),
    5520: ("Eucalyptus Cinerea, bunch of 10", "7.00"),
    5530: ("Ruscus Italian, bunch of 10", "4.20"),
    5610: ("Phalaenopsis 2-stem, 12cm pot", "9.75"),
    5701: ("Peony Sarah Bernhardt 50cm, bunch of 10", "24.50"),
    5990: ("Transport and cold-chain handling", "45.00"),
}

# number, type, customer id, invoice date (days ago), lines [(product, quantity)],
# sales-tax rate, amount already paid, status override (None: derived)
INVOICES = [
    ("INV-10418", "invoice", 103, 40, [(5610, 60), (5530, 40)], "0.00", "full", None),
    ("INV-10421", "invoice", 101, 35, [(5101, 40), (5520, 50)], "0.00", "0.00", None),
    ("INV-10422", "invoice", 102, 20, [(5701, 60), (5305, 120), (5990, 1)], "8.25", "1000.00", None),
    ("INV-10425", "invoice", 104, 18, [(5102, 30), (5530, 25)], "0.00", "0.00", None),
    ("INV-10430", "invoice", 105, 12, [(5402, 80), (5210, 10)], "0.00", "0.00", None),
    ("INV-10433", "invoice", 105, 9, [(5305, 48)], "0.00", "0.00", None),
    ("INV-10436", "invoice", 101, 6, [(5101, 25), (5210, 12), (5990, 1)], "0.00", "0.00", None),
    ("INV-10437", "invoice", 102, 5, [(5102, 45), (5520, 30)], "8.25", "0.00", None),
    ("INV-10439", "invoice", 103, 3, [(5610, 36), (5402, 40)], "0.00", "0.00", None),
    ("CN-10440", "credit_note", 101, 2, [(5101, -10)], "0.00", "0.00", None),
    ("INV-10441", "invoice", 104, 1, [(5701, 20), (5102, 20)], "0.00", "0.00", "concept"),
    ("INV-10442", "invoice", 101, 0, [(5101, 30), (5305, 60), (5520, 20)], "0.00", "0.00", None),
]


def money(value):
    return str(Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP))


def build(today):
    """The seed bodies for both stand-ins, and rows for the printed overview."""
    terms = {}
    customers, profiles = [], []
    for cid, code, name, email, term, method in CUSTOMERS:
        terms[cid] = term
        customers.append({"id": cid, "code": code, "name": name, "email": email,
                          "currency": "USD", "payment_term_days": term, "blocked": False})
        if method:
            profiles.append({"customer_id": f"C-{code}", "method": method, "email": email})

    invoices, overview = [], []
    for index, (number, kind, cid, days_ago, items, rate, paid, status) in enumerate(INVOICES):
        invoice_date = today - datetime.timedelta(days=days_ago)
        due_date = invoice_date + datetime.timedelta(days=terms[cid])
        lines, excl = [], Decimal("0")
        for product, quantity in items:
            description, price = PRODUCTS[product]
            line_excl = Decimal(price) * quantity
            excl += line_excl
            lines.append({"description": description, "quantity": quantity,
                          "unit_price": money(price), "vat_rate": money(rate),
                          "amount_excl_vat": money(line_excl), "product_id": product})
        vat = (excl * Decimal(rate) / 100).quantize(CENT, rounding=ROUND_HALF_UP)
        incl = excl + vat
        paid_amount = incl if paid == "full" else Decimal(paid)
        open_amount = incl - paid_amount
        if status is None:
            if open_amount == 0:
                status = "paid"
            elif paid_amount == 0 or kind == "credit_note":
                status = "open"
            else:
                status = "partially_paid"
        invoices.append({
            "id": 9001 + index, "number": number, "type": kind, "customer_id": cid,
            "invoice_date": invoice_date.isoformat(), "due_date": due_date.isoformat(),
            "currency": "USD", "amount_excl_vat": money(excl), "vat_amount": money(vat),
            "amount_incl_vat": money(incl), "amount_paid": money(paid_amount),
            "open_amount": money(open_amount), "status": status, "lines": lines})
        overview.append((number, kind, cid, due_date.isoformat(), money(incl),
                         money(open_amount), status))
    return customers, profiles, invoices, overview


def post(base, path, body):
    request = urllib.request.Request(
        base.rstrip("/") + path, data=json.dumps(body).encode("utf-8"), method="POST",
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        detail = error.read().decode("utf-8", "replace")
        raise SystemExit(f"demo_seed: POST {base}{path} answered {error.code}: {detail}")
    except urllib.error.URLError as error:
        raise SystemExit(f"demo_seed: cannot reach {base}{path}: {error.reason}")


def main(argv):
    if len(argv) != 3:
        raise SystemExit(__doc__.split("\n\n")[1])
    fp_url, pt_url = argv[1], argv[2]
    customers, profiles, invoices, overview = build(datetime.date.today())

    post(fp_url, "/_standin/reset", {})
    post(pt_url, "/_standin/reset", {})
    seeded = post(fp_url, "/_standin/seed", {"customers": customers, "invoices": invoices})
    vault = post(pt_url, "/_standin/customers", {"customers": profiles})

    names = {c["id"]: c for c in customers}
    methods = {p["customer_id"]: p["method"] for p in profiles}
    print(f"FreshPortal ({fp_url}): {len(seeded['customers'])} customers, "
          f"{len(seeded['invoices'])} invoices")
    for c in customers:
        profile = f"C-{c['code']}"
        link = f"vault {profile} ({methods[profile]})" if profile in methods else "no vault profile"
        print(f"  {c['id']}  {c['code']:<6} {c['name']:<28} net {c['payment_term_days']:>2} days  {link}")
    print()
    print(f"  {'number':<10} {'type':<11} {'customer':<8} {'due':<10} {'total':>9} {'open':>9}  status")
    for number, kind, cid, due, total, open_amount, status in overview:
        print(f"  {number:<10} {kind:<11} {names[cid]['code']:<8} {due:<10} {total:>9} "
              f"{open_amount:>9}  {status}")
    print()
    print(f"PayTrace ({pt_url}): {len(vault['customers'])} vault profiles: "
          + ", ".join(f"{p['customer_id']} ({p['method']})" for p in vault["customers"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
