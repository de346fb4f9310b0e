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
import { resetPostgres } from '../support/reset-db.js';
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

  describeStoreContract('postgres', (decorateWorkerLock) => openStore({ databaseUrl: db.url, decorateWorkerLock }), {
    reset: () => resetPostgres(admin),
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

  describe('two controllers on one database', () => {
    it('claims from two stores at once never assign a build twice, and concurrent reapers reap each build once', async () => {
      const fresh = await createTestDatabase();
      const a = await openStore({ databaseUrl: fresh.url });
      const b = await openStore({ databaseUrl: fresh.url });
      try {
        await a.migrate();
        await a.ensureEnrollmentToken('e', 'd', 0);
        const workers = [];
        for (let i = 0; i < 10; i++) {
          const r = await a.registerNew({
            enrollmentTokenHash: 'e', newWorkerId: `w${i}`, secretHash: `s${i}`, accessToken: { hash: `t${i}`, expiresAt: 10_000_000 },
            name: 'w', labels: [], maxConcurrentBuilds: 5, version: '1', now: 0,
          });
          workers.push(r.workerId);
        }
        for (let i = 0; i < 30; i++) {
          await a.createBuild({
            id: `b${String(i).padStart(3, '0')}`,
            spec: { script: 'x', labels: [], env: {}, timeoutSeconds: 3600, artifacts: [], priority: 0, maxAttempts: 2, metadata: {} },
            sourceKey: 'k', sourceSize: 1, sourceSha256: 'h', now: i,
          });
        }
        const polls = workers.map((id, i) =>
          (i % 2 ? a : b).poll({ workerId: id, tokenHash: `t${i}`, now: 1000, freeSlots: 5, activeBuildIds: [], ackTimeoutMs: 1000 }),
        );
        const claimed = (await Promise.all(polls)).flat().map((h) => h.id);
        expect(claimed.length).toBe(30);
        expect(new Set(claimed).size).toBe(30);
        const reaps = await Promise.all([a.reap({ now: 5000, reapLeases: true }), b.reap({ now: 5000, reapLeases: true })]);
        const requeued = reaps.flatMap((r) => r.requeued);
        expect(requeued.length).toBe(30);
        expect(new Set(requeued).size).toBe(30);
        expect((await a.getBuild('b000')).attempt).toBe(2);
      } finally {
        await a.close();
        await b.close();
        await fresh.drop();
      }
    });

    it('a lock wait past the lock timeout answers UNAVAILABLE', async () => {
      const s = await openStore({ databaseUrl: db.url, lockTimeoutMs: 200 });
      const holder = new pg.Client({ connectionString: db.url });
      await holder.connect();
      try {
        await s.ensureEnrollmentToken('lock-e', 'd', 0);
        await s.registerNew({
          enrollmentTokenHash: 'lock-e', newWorkerId: 'lock-w', secretHash: 's', accessToken: { hash: 'lock-t', expiresAt: 10_000_000 },
          name: 'w', labels: [], maxConcurrentBuilds: 1, version: '1', now: 0,
        });
        await holder.query('begin');
        await holder.query(`select * from workers where id = 'lock-w' for update`);
        const err = await s
          .poll({ workerId: 'lock-w', tokenHash: 'lock-t', now: 1, freeSlots: 1, activeBuildIds: [], ackTimeoutMs: 1000 })
          .catch((e: unknown) => e);
        expect(err).toBeInstanceOf(ApiError);
        expect((err as ApiError).code).toBe('UNAVAILABLE');
      } finally {
        await holder.query('rollback').catch(() => {});
        await holder.end();
        await s.close();
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
