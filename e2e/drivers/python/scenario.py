"""The drivers scenario (see ../README.md) in psycopg 3.

Connects with the PG* environment variables and prints one JSON document.
"""

import datetime
import decimal
import json
import sys

import psycopg

ITEM_BY_ID = "SELECT item FROM orders WHERE id = %s"
TEXT = "Zürich – 🐘 日本語 ‘quotes’ \\ $1"
BYTES = bytes([0, 1, 0x27, 0x5C, 0x7F, 0x80, 0xFF])
NUMERIC = decimal.Decimal("-12345678901234567890.000123")
INSTANT = datetime.datetime(2024, 2, 29, 12, 34, 56, 789000, tzinfo=datetime.timezone.utc)
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def error(e):
    return {"code": e.sqlstate, "message": e.diag.message_primary}


def main():
    out = {}
    with psycopg.connect("") as conn:
        conn.autocommit = True
        cur = conn.cursor()
        out["user"] = cur.execute("SELECT current_user").fetchone()[0]
        out["param_select"] = [
            list(r)
            for r in cur.execute(
                "SELECT id, item, amount_cents FROM orders WHERE customer_id = %s AND status = %s ORDER BY id",
                (5, "open"),
            )
        ]
        out["prepared"] = [
            cur.execute(ITEM_BY_ID, (i,), prepare=True).fetchone()[0] for i in (1, 7, 500, 1000)
        ]

        tx = {}
        conn.autocommit = False
        cur.execute("SELECT 1")
        try:
            cur.execute("DROP TABLE orders")
            tx["refused"] = None
        except psycopg.Error as e:
            tx["refused"] = error(e)
        try:
            cur.execute("SELECT 1")
            tx["after"] = None
        except psycopg.Error as e:
            tx["after"] = error(e)
        conn.rollback()
        conn.autocommit = True
        tx["after_rollback"] = cur.execute("SELECT 1").fetchone()[0]
        out["tx"] = tx

        ddl = {}
        try:
            cur.execute("DROP TABLE orders")
            ddl["refused"] = None
        except psycopg.Error as e:
            ddl["refused"] = error(e)
        ddl["count_after"] = cur.execute("SELECT count(*) FROM orders").fetchone()[0]
        out["ddl"] = ddl

        n, t, b, num, ts, isnull = cur.execute(
            "SELECT %s::text, %s::text, %s::bytea, %s::numeric, %s::timestamptz, %s::int IS NULL",
            (None, TEXT, BYTES, NUMERIC, INSTANT, None),
        ).fetchone()
        out["types"] = {
            "null": n,
            "text": t,
            "bytea": bytes(b).hex(),
            "numeric": str(num),
            "timestamptz_ms": (ts - EPOCH) // datetime.timedelta(milliseconds=1),
            "is_null": isnull,
            "same": [t == TEXT, bytes(b) == BYTES, num == NUMERIC, ts == INSTANT],
        }

        out["rows"] = [
            list(r) for r in cur.execute("SELECT id, item, status FROM orders WHERE id <= 25 ORDER BY id")
        ]

        data = bytearray()
        with cur.copy("COPY (SELECT id, item FROM orders WHERE id <= 5 ORDER BY id) TO STDOUT") as copy:
            for block in copy:
                data += block
        out["copy"] = data.decode()
    json.dump(out, sys.stdout, ensure_ascii=False)
    print()


if __name__ == "__main__":
    main()
