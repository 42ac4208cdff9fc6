'use strict';
// node-postgres and its Pool, named statements with `name:` (see ../README.md). pg reads PGHOST, PGPORT,
// PGUSER, PGPASSWORD and PGDATABASE from the environment.
const readline = require('readline');
const { once } = require('events');
const { Pool } = require('pg');

const [CLIENTS, ROUNDS, POOL_SIZE] = ['CLIENTS', 'ROUNDS', 'POOL_SIZE'].map((name) => Number(process.env[name]));
const TABLE = process.env.TABLE;

const report = (step, values = {}) => console.log(JSON.stringify({ step, ...values }));

async function concurrent(pool) {
  let sum = 0;
  const pids = new Set();
  await Promise.all([...Array(CLIENTS).keys()].map(async (w) => {
    for (let r = 0; r < ROUNDS; r++) {
      const { rows } = await pool.query({
        name: 'product', text: 'SELECT $1::int * $2::int AS product, pg_backend_pid() AS pid', values: [w, r],
      });
      sum += rows[0].product;
      pids.add(rows[0].pid);
    }
  }));
  return { sum, pids: [...pids].sort((a, b) => a - b) };
}

async function sqlstate(client, query) {
  try {
    await client.query(query);
    return null;
  } catch (err) {
    return err.code;
  }
}

const ids = async (client) => (await client.query(`SELECT id FROM ${TABLE} ORDER BY id`)).rows.map((r) => r.id);

async function main() {
  // Idle connections stay in the pool for the whole run, so that the RECONNECT step finds them there.
  const pool = new Pool({ max: POOL_SIZE, idleTimeoutMillis: 0 });
  report('concurrent', await concurrent(pool));

  const client = await pool.connect();
  try {
    const values = [];
    for (let i = 0; i < 8; i++) {
      const { rows } = await client.query({ name: 'twice', text: 'SELECT $1::int * 2 AS v', values: [i] });
      values.push(rows[0].v);
    }
    report('prepared', { values, server_prepared: 'twice' in client.connection.parsedStatements });

    const insert = `INSERT INTO ${TABLE} VALUES ($1, $2)`;
    await client.query('BEGIN');
    await client.query(insert, [1, 'kept']);
    await client.query('COMMIT');
    await client.query('BEGIN');
    await client.query(insert, [2, 'dropped']);
    await client.query('ROLLBACK');
    report('rollback', { ids: await ids(client) });

    // The failing statement is a named one prepared before the transaction.
    const divide = (by) => ({ name: 'divide', text: 'SELECT 1 / $1::int', values: [by] });
    await client.query(divide(1));
    await client.query('BEGIN');
    await client.query(insert, [3, 'lost']);
    const sqlstates = [
      await sqlstate(client, divide(0)),
      await sqlstate(client, 'SELECT 1'),
    ];
    await client.query('ROLLBACK');
    const after = (await client.query('SELECT 1 AS one')).rows[0].one;
    report('error', { sqlstates, after, ids: await ids(client) });
  } finally {
    client.release();
  }

  report('awaiting-reconnect');
  const input = readline.createInterface({ input: process.stdin });
  await once(input, 'line');
  input.close();
  report('reconnected', await concurrent(pool));
  await pool.end();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
