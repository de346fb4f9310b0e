/**
 * The store contract on PostgreSQL (a fresh database per test file), plus
 * what only PostgreSQL has: concurrent migrations from two controllers, row
 * locks held across connections, and an unreachable server.
 */
import { createHash, randomUUID } from 'node:crypto';
import pg from 'pg';
import { v7 as uuidv7 } from 'uuid';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiError, normalizeSpec } from '@buildfleet/protocol';
import { openStore } from '../../src/store/index.js';
import { createTestDatabase, describePg, type TestDatabase } from '../support/pg.js';
import { waitFor } from '../support/wait.js';
import { resetPostgres } from '../support/reset-db.js';
import { describeStoreContract } from './store.contract.js';
import { openInstrumentedStore } from './contract/fixture.js';

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

  describeStoreContract('postgres', (instrumentation) => openInstrumentedStore({ databaseUrl: db.url }, instrumentation), {
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
    it('claiming at once never hold more of a concurrency group than its limit, and take its builds in order (issue 13)', async () => {
      const fresh = await createTestDatabase();
      const sha = (s: string) => createHash('sha256').update(s).digest('hex');
      const a = await openStore({ databaseUrl: fresh.url, poolSize: 6 });
      const b = await openStore({ databaseUrl: fresh.url, poolSize: 6 });
      const stores = [a, b];
      try {
        await a.migrate();
        let now = Date.UTC(2026, 1, 1);
        await a.ensureEnrollmentToken(sha('bfe_race'), 'race', now);
        const workers: { id: string; tokenHash: string }[] = [];
        for (let i = 0; i < 8; i++) {
          const token = `bfw_${randomUUID()}`;
          const r = await a.registerNew({
            enrollmentTokenHash: sha('bfe_race'),
            newWorkerId: uuidv7(),
            secretHash: sha(randomUUID()),
            accessToken: { hash: sha(token), expiresAt: now + 3_600_000 },
            name: `w${i}`,
            labels: [],
            maxConcurrentBuilds: 4,
            version: '1',
            now,
          });
          workers.push({ id: r.workerId, tokenHash: sha(token) });
        }
        const group: string[] = [];
        for (let i = 0; i < 6; i++) {
          const id = uuidv7({ msecs: ++now });
          // Later builds have higher priority: the group's order must still win.
          await a.createBuild({
            id,
            spec: normalizeSpec({ script: 'true', concurrency: { group: 'deploy' }, priority: i }),
            sourceKey: 'k',
            sourceSize: 0,
            sourceSha256: sha(''),
            now,
          });
          group.push(id);
        }
        const order: string[] = [];
        for (let round = 0; round < group.length; round++) {
          now += 1000;
          const claimed = (
            await Promise.all(
              workers.map((w, i) =>
                stores[i % 2]!.poll({ workerId: w.id, tokenHash: w.tokenHash, freeSlots: 4, activeBuildIds: [], ackTimeoutMs: 30_000, now }),
              ),
            )
          ).flat();
          expect(claimed.map((h) => h.id)).toHaveLength(1);
          order.push(claimed[0]!.id);
          await b.startBuild({ buildId: claimed[0]!.id, attempt: 1 }, now + 1, 60_000);
          await a.finishBuild({ buildId: claimed[0]!.id, attempt: 1, outcome: 'succeeded', exitCode: 0, message: null, now: now + 2 });
        }
        expect(order).toEqual(group);
      } finally {
        await a.close();
        await b.close();
        await fresh.drop();
      }
    });

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
