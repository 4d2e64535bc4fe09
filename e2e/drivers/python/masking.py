"""Reads the masking fixture through Gatehouse with psycopg 3, in the text
and the binary format, and prints what it decoded as JSON.

Connection settings come from the libpq environment (PGHOST, PGPORT, ...).
"""

import json

import psycopg

QUERY = "SELECT kind, note, label, doc, docb, blob FROM vault ORDER BY id"


def decoded(row):
    kind, note, label, doc, docb, blob = row
    return {
        "kind": kind,
        "note": note,
        "label": label,
        "doc": json.dumps(doc),
        "docb": json.dumps(docb),
        "blob": bytes(blob).decode("utf-8", "replace"),
    }


def main():
    out = {}
    with psycopg.connect() as conn:
        for binary in (False, True):
            with conn.cursor(binary=binary) as cur:
                cur.execute(QUERY)
                out["binary" if binary else "text"] = [decoded(r) for r in cur.fetchall()]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
