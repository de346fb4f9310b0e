/**
 * The store contract on PostgreSQL (a fresh database per test file), plus
 * what only PostgreSQL has: concurrent migrations from two controllers, row
 * locks held across connections, and an unreachable server.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiError } from '@buildfleet/protocol';
import { openStore } from '../../src/store/index.js';
import { createTestDatabase, describePg, type TestDatabase } from '../support/pg.js';
import { waitFor } from '../support/wait.js';
import { describeStoreContract } from './store.contract.js';

describePg('postgres store', () => {
  let db: TestDatabase;
  let admin: pg.Client;
  beforeAll(async () => {
    db = await createTestDatabase();
    admin = new pg.Client({ connectionString: db.url });
    await admin.connect();
  });
  afterAll(async () => {
    await admin?.end();
    await db?.drop();
  });

  describeStoreContract('postgres', (hooks) => openStore({ databaseUrl: db.url, hooks }), {
    waitForLockWaiter: () =>
      waitFor(
        async () => {
          const { rows } = await admin.query(
            `select 1 from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`,
          );
          return rows.length > 0;
        },
        { what: 'a poll waiting on the worker row lock' },
      ),
  });

  describe('migrations', () => {
    it('two controllers migrating one fresh database at once both succeed', async () => {
      const fresh = await createTestDatabase();
      const a = await openStore({ databaseUrl: fresh.url });
      const b = await openStore({ databaseUrl: fresh.url });
      try {
        await Promise.all([a.migrate(), b.migrate()]);
        await a.ensureApiToken('h', 'd', 1);
        expect(await b.isApiToken('h')).toBe(true);
      } finally {
        await a.close();
        await b.close();
        await fresh.drop();
      }
    });
  });

  describe('availability', () => {
    it('an unreachable server answers UNAVAILABLE', async () => {
      const s = await openStore({ databaseUrl: 'postgres://postgres@127.0.0.1:1/none' });
      try {
        const err = await s.ping().catch((e: unknown) => e);
        expect(err).toBeInstanceOf(ApiError);
        expect((err as ApiError).code).toBe('UNAVAILABLE');
        const err2 = await s.getBuild('x').catch((e: unknown) => e);
        expect((err2 as ApiError).code).toBe('UNAVAILABLE');
      } finally {
        await s.close();
      }
    });
  });
});
