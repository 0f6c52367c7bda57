#!/usr/bin/env python3
"""Write the seed corpora of the freshpay fuzz targets (test/fuzz/corpus/).

Usage: python3 test/fuzz/make_seeds.py [FIXTURE_DIR]

Seeds come from two places:
  * the recorded PayTrace sandbox exchanges: the response bodies of
    test/fixtures/paytrace-recorded/*.json (FIXTURE_DIR), which
    test/standin/convert_cassettes.py generates byte for byte from the VCR
    cassettes in /work/shared/research/paytrace-recorded/*.yml;
  * small hand-made bodies in the shapes the stand-ins answer
    (test/standin/paytrace.py: exports and batches; test/standin/freshportal.py:
    list pages, invoices and payments) and the documented PayTrace declines
    and errors (test/sql/paytrace_parse.sql).

Every seed is written as corpus/<target>/<name>; the script rewrites the
whole corpus directory of each target, so its output is deterministic.
Card numbers never appear: the recordings only hold masked numbers, and the
script refuses to write a seed with a Luhn-valid run of 13-19 digits.
Standard library only.
"""

import json
import pathlib
import re
import shutil
import sys

HERE = pathlib.Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures" / "paytrace-recorded"
CORPUS = HERE / "corpus"


def dumps(value):
    return json.dumps(value, separators=(",", ":"))


# -- PayTrace -----------------------------------------------------------------

DECLINE = ('{"success":false,"response_code":102,"status_message":"Your transaction was not '
           'approved.","transaction_id":392501201,"approval_code":"","approval_message":"  '
           'EXPIRED CARD - Expired card","avs_response":"No Match","csc_response":"",'
           '"external_transaction_id":""}')
AUTO_VOID = ('{"success":true,"response_code":103,"status_message":"Your transaction was '
             'successfully approved. However, it was voided because your address and/or CSC '
             'did not match.","transaction_id":392501202,"approval_code":"TAS111"}')
ERRORS = ('{"success":false,"response_code":1,"status_message":"One or more errors has '
          'occurred.","errors":{"35":["Please provide a valid Credit Card Number."],"43":'
          '["Please provide a valid Expiration Month."]},"external_transaction_id":""}')
REFUND_817 = ('{"success":false,"response_code":1,"status_message":"One or more errors has '
              'occurred.","errors":{"817":["The Transaction ID that you provided could not be '
              'refunded."]}}')
CAPTURE = ('{"success":true,"response_code":112,"status_message":"Your transaction was '
           'successfully captured.","transaction_id":392442990,"external_transaction_id":""}')
ACH = ('{"success":true,"response_code":120,"status_message":"Your check was successfully '
       'processed.","check_transaction_id":981619}')
ACH_FAIL = ('{"success":false,"response_code":125,"status_message":"Your check was NOT '
            'successfully processed.","check_transaction_id":981610,"ach_code":0,"ach_message":""}')
INVALID_TOKEN = ('{"error":"invalid_token","error_description":"The access token provided is '
                 'expired, revoked, malformed or invalid for other reasons."}')

EXPORT_ROWS = [
    {"transaction_id": 79388123, "credit_card": {"masked_number": "************1111",
                                                 "expiration_month": 12, "expiration_year": 30},
     "transaction_type": "SALE", "description": "", "amount": 110, "invoice_id": "inv1234",
     "approval_code": "TAS349", "approval_message": "  NO  MATCH - Approved and completed",
     "status_code": "GB571", "status_message": "GB571",
     "created": {"through": "API", "at": "4/10/2015 4:06:30 PM", "by": "sandbox123",
                 "from_ip": "127.0.0.1"},
     "settled": "4/10/2015 8:13:45 PM", "customer_id": ""},
    {"transaction_id": "79388124", "transaction_type": "SALE", "amount": "51.88",
     "invoice_id": "INV-2", "status_code": "Y", "status_message": "Pending Settlement",
     "created": {"at": "12/5/2024 11:08:46 AM"}, "settled": ""},
    {"transaction_id": 79388125, "transaction_type": "AUTHORIZATION", "amount": 25.0,
     "invoice_id": "INV-3", "status_code": "N", "status_message": "Authorization Only",
     "created": {"at": "1/1/2026 12:00:01 AM"}, "settled": ""},
    {"transaction_id": 79388126, "transaction_type": "SALE", "amount": 0.29,
     "invoice_id": "INV-4", "status_code": "N", "status_message": "Declined",
     "created": {"at": "1/1/2026 12:30:00 PM"}, "settled": ""},
    {"check_transaction_id": 981619, "check": {"masked_account_number": "xxxxx6789"},
     "transaction_type": "CHECK", "amount": "19.95", "invoice_id": "INV-5",
     "status_code": "Settled", "status_message": "Voided",
     "created": {"at": "7/4/2026 9:15:00 PM"}, "settled": "7/5/2026 1:00:00 AM",
     "customer_id": "99"},
]


def export(rows):
    return dumps({"success": True, "response_code": 1,
                  "status_message": "Your request has been successfully completed.",
                  "transactions": rows, "external_transaction_id": ""})


def batches(rows):
    return dumps({"success": True, "response_code": 1,
                  "status_message": "Your request has been successfully completed.",
                  "batches": rows})


BATCH = {"number": 571, "created": "4/10/2015 8:13:45 PM", "transaction_count": 3,
         "sales_count": 2, "sales_amount": "161.88", "refund_count": 1,
         "refund_amount": 10, "net_amount": "151.88"}


# -- FreshPortal ----------------------------------------------------------------

CUSTOMER = {"id": 1001, "code": "C1001", "name": "Bloemenhandel de Vries",
            "email": "ap@example.com", "currency": "USD", "payment_term_days": 30,
            "blocked": False, "mutation_date_time": "2026-09-27T14:02:11.000000Z"}
INVOICE = {"id": 5001, "number": "F2026-0001", "type": "invoice", "customer_id": 1001,
           "invoice_date": "2026-09-01", "due_date": "2026-10-01", "currency": "USD",
           "amount_excl_vat": "1000.00", "vat_amount": "90.00", "amount_incl_vat": "1090.00",
           "amount_paid": "0.00", "open_amount": "1090.00", "status": "open",
           "lines": [{"description": "Roses, red, 60 cm", "quantity": "100",
                      "unit_price": "10.00", "vat_rate": "9.00"}],
           "mutation_date_time": "2026-09-27T14:02:11.123456Z"}
CREDIT = dict(INVOICE, id=5002, number="C2026-0001", type="credit_note",
              amount_excl_vat="-100.00", vat_amount="-9.00", amount_incl_vat="-109.00",
              open_amount="-109.00", due_date=None, status="credited",
              mutation_date_time="2026-09-28T08:00:00+02:00")
PAYMENT = {"id": 7, "invoice_id": 5001, "customer_id": 1001, "amount": "25.00",
           "currency": "USD", "payment_date": "2026-09-27", "method": "card",
           "provider": "paytrace", "provider_transaction_id": "125391269",
           "provider_status": "captured", "status": "registered",
           "created_at": "2026-09-27T14:02:11.000000Z"}


def page(items, current=1, last=1):
    return dumps({"data": items, "meta": {"current_page": current, "per_page": 100,
                                          "total": len(items), "last_page": last,
                                          "server_time": "2026-09-27T14:05:00.000000Z"}})


def seeds_from_fixtures(directory):
    """name -> response body of each recorded exchange."""
    found = {}
    for path in sorted(pathlib.Path(directory).glob("*.json")):
        exchange = json.loads(path.read_text(encoding="utf-8"))
        found["recorded_" + path.stem] = exchange["response"]["body"]
    return found


def all_seeds(fixture_dir):
    recorded = seeds_from_fixtures(fixture_dir)
    if not recorded:
        sys.exit(f"make_seeds: no recorded exchanges in {fixture_dir}")
    return {
        "paytrace_result": dict(recorded, **{
            "decline": DECLINE, "auto_void_103": AUTO_VOID, "errors_400": ERRORS,
            "refund_817": REFUND_817, "capture": CAPTURE, "ach": ACH, "ach_failed": ACH_FAIL,
            "invalid_token": INVALID_TOKEN, "no_success": '{"response_code":101}',
            "truncated": '{"success":true,"response_code":101,"status_mess',
            "html": "<html>Bad Gateway</html>", "unknown_code":
            '{"success":true,"response_code":999}'}),
        "paytrace_export": {
            "export_five": export(EXPORT_ROWS),
            "export_one": export(EXPORT_ROWS[:1]),
            "export_empty": export([]),
            "export_refused": '{"success":false,"response_code":1,"errors":{"9003":'
                              '["Please provide a valid Start Date."]}}',
            "export_bad_amount": '{"success":true,"transactions":[{"transaction_id":1,'
                                 '"amount":"1,00"}]}',
            "export_bad_date": '{"success":true,"transactions":[{"transaction_id":1,'
                               '"amount":1,"created":{"at":"2026-01-01 10:00"}}]}',
        },
        "paytrace_batches": {
            "batches_one": batches([BATCH]),
            "batches_two": batches([BATCH, dict(BATCH, number=572, sales_amount=0,
                                                refund_amount=None, net_amount="0.00",
                                                created="12/31/2025 11:59:59 PM")]),
            "batches_empty": batches([]),
            "batches_refused": '{"success":false,"response_code":1}',
        },
        "freshportal_list": {
            "customers_page": page([CUSTOMER, dict(CUSTOMER, id=1002, code="C1002",
                                                   email=None, payment_term_days="14",
                                                   blocked=True)]),
            "invoices_page": page([INVOICE, CREDIT], current=1, last=3),
            "mixed_page": page([CUSTOMER, INVOICE]),
            "empty_page": dumps({"data": [], "meta": {"current_page": 1, "last_page": 1,
                                                      "total": 0}}),
            "no_meta": dumps({"data": [INVOICE]}),
            "error_422": dumps({"message": "The given data was invalid.",
                                "errors": {"per_page": ["The per page may not be greater "
                                                        "than 1000."]}}),
            "malformed": '{"data": [ {"id": 1, ',
        },
        "freshportal_invoice": {
            "invoice_bare": dumps(INVOICE),
            "invoice_data": dumps({"data": INVOICE}),
            "credit_note": dumps({"data": CREDIT}),
            "auth_token": dumps({"token": "fuzz-token-value", "type": "bearer"}),
            "error_500": dumps({"message": "Server Error"}),
        },
        "freshportal_payments": {
            "payments_list": dumps({"data": [PAYMENT, dict(PAYMENT, id=8, status="reversed",
                                                           invoice_id="5001")]}),
            "payments_empty": dumps({"data": []}),
            "payment_bare": dumps(PAYMENT),
            "payment_envelope": dumps({"payment": PAYMENT, "invoice": {
                "id": 5001, "amount_paid": "25.00", "open_amount": "1065.00",
                "status": "partially_paid"}}),
            "payment_data": dumps({"data": PAYMENT}),
            "duplicate_409": dumps({"message": "This payment has already been registered.",
                                    "payment": PAYMENT}),
        },
        "jsonconv": {
            "money": "1090.00", "money_neg": "-0.5", "money_max": "9999999999.99",
            "date": "2026-09-27", "date_leap": "2028-02-29",
            "ts_z": "2026-09-27T14:02:11.000000Z", "ts_offset": "2026-09-28T08:00:00+02:00",
            "ts_frac": "2026-12-31T23:59:59.9999999-12:00",
            "int": "123456789012345678",
            "object": dumps({"amount": "1.00", "date": "2026-01-01", "id": 42,
                             "ts": "2026-01-01T00:00:00Z", "flag": True, "n": None,
                             "big": 123456789012345678, "f": 1.5e300}),
        },
    }


def luhn_ok(digits):
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def looks_like_card_number(text):
    """A run of 13-19 digits that passes the Luhn check."""
    return any(luhn_ok(run) for run in re.findall(r"(?<!\d)\d{13,19}(?!\d)", text))


def main():
    fixture_dir = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURES
    seeds = all_seeds(fixture_dir)
    total = 0
    for target, items in seeds.items():
        directory = CORPUS / target
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        for name, body in items.items():
            if looks_like_card_number(body):
                sys.exit(f"make_seeds: seed {target}/{name} holds what may be a card "
                         "number; refusing to write it")
            (directory / name).write_bytes(body.encode("utf-8"))
            total += 1
    print(f"make_seeds: {total} seeds for {len(seeds)} targets in {CORPUS}")


if __name__ == "__main__":
    main()
