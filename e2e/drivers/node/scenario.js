// The drivers scenario (see ../README.md) in node-postgres.
// Connects with the PG* environment variables and prints one JSON document.
'use strict';

const { Client } = require('pg');

const TEXT = 'Zürich – 🐘 日本語 ‘quotes’ \\ $1';
const BYTES = Buffer.from([0, 1, 0x27, 0x5c, 0x7f, 0x80, 0xff]);
const NUMERIC = '-12345678901234567890.000123';
const INSTANT = new Date(Date.UTC(2024, 1, 29, 12, 34, 56, 789));

function error(e) {
  return { code: e.code ?? null, message: e.message };
}

async function attempt(client, sql) {
  try {
    await client.query(sql);
    return null;
  } catch (e) {
    return error(e);
  }
}

async function main() {
  const client = new Client();
  await client.connect();
  const out = {};
  out.user = (await client.query('SELECT current_user AS u')).rows[0].u;
  out.param_select = (
    await client.query({
      text: 'SELECT id::int, item, amount_cents FROM orders WHERE customer_id = $1 AND status = $2 ORDER BY id',
      values: [5, 'open'],
      rowMode: 'array',
    })
  ).rows;
  out.prepared = [];
  for (const id of [1, 7, 500, 1000]) {
    const r = await client.query({ name: 'item-by-id', text: 'SELECT item FROM orders WHERE id = $1', values: [id] });
    out.prepared.push(r.rows[0].item);
  }

  const tx = {};
  await client.query('BEGIN');
  await client.query('SELECT 1');
  tx.refused = await attempt(client, 'DROP TABLE orders');
  tx.after = await attempt(client, 'SELECT 1');
  await client.query('ROLLBACK');
  tx.after_rollback = (await client.query('SELECT 1 AS one')).rows[0].one;
  out.tx = tx;

  const ddl = {};
  ddl.refused = await attempt(client, 'DROP TABLE orders');
  ddl.count_after = Number((await client.query('SELECT count(*) AS n FROM orders')).rows[0].n);
  out.ddl = ddl;

  const r = await client.query({
    text: 'SELECT $1::text, $2::text, $3::bytea, $4::numeric, $5::timestamptz, $6::int IS NULL',
    values: [null, TEXT, BYTES, NUMERIC, INSTANT, null],
    rowMode: 'array',
  });
  const [n, t, b, num, ts, isnull] = r.rows[0];
  out.types = {
    null: n,
    text: t,
    bytea: b.toString('hex'),
    numeric: num,
    timestamptz_ms: ts.getTime(),
    is_null: isnull,
    same: [t === TEXT, b.equals(BYTES), num === NUMERIC, ts.getTime() === INSTANT.getTime()],
  };

  out.rows = (
    await client.query({
      text: 'SELECT id::int, item, status FROM orders WHERE id <= 25 ORDER BY id',
      rowMode: 'array',
    })
  ).rows;
  await client.end();
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => {
  process.stderr.write(`scenario failed: ${e.stack}\n`);
  process.exit(1);
});
