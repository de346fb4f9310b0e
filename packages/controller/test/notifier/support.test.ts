import pg from 'pg';
import { EventEmitter } from 'node:events';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, describePg, type TestDatabase } from '../support/pg.js';
import { once, waitFor } from '../support/wait.js';

describePg('test support: createTestDatabase', () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await db?.drop();
  });

  it('creates a fresh database and drops it even with a connection left open', async () => {
    const client = new pg.Client({ connectionString: db.url });
    await client.connect();
    client.on('error', () => {});
    const { rows } = await client.query<{ d: string }>('SELECT current_database() AS d');
    expect(rows[0]!.d).toBe(db.name);
    await db.drop();
    const admin = new pg.Client({ connectionString: process.env.BUILDFLEET_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres' });
    await admin.connect();
    const left = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [db.name]);
    await admin.end();
    expect(left.rowCount).toBe(0);
    await client.end().catch(() => {});
  });
});

it('waitFor names what it waited for on timeout', async () => {
  await expect(waitFor(() => false, { timeoutMs: 50, what: 'the moon' })).rejects.toThrow(/the moon/);
});

it('waitFor returns once the condition holds and wakes on events', async () => {
  const e = new EventEmitter();
  let ready = false;
  const p = waitFor(() => ready, { timeoutMs: 2_000, intervalMs: 10_000, what: 'ready', wakeOn: { emitter: e, event: 'x' } });
  ready = true;
  e.emit('x');
  await p;
  const q = once(e, 'y');
  e.emit('y', 1, 2);
  expect(await q).toEqual([1, 2]);
});
