/** The store contract on SQLite: one temporary database file per test file. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { ApiError } from '@buildfleet/protocol';
import { openStore } from '../../src/store/index.js';
import { resetSqlite } from '../support/reset-db.js';
import { describeStoreContract } from './store.contract.js';

const dir = mkdtempSync(join(tmpdir(), 'bf-store-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const contractDb = join(dir, 'controller.db');
describeStoreContract('sqlite', (decorateWorkerLock) => openStore({ sqlitePath: contractDb, decorateWorkerLock }), {
  reset: async () => resetSqlite(contractDb),
});

describe('sqlite specifics', () => {
  it('a write lock held by another process past busy_timeout answers UNAVAILABLE', async () => {
    const path = join(dir, 'busy.db');
    const store = await openStore({ sqlitePath: path, lockTimeoutMs: 50 });
    await store.migrate();
    const other = new Database(path);
    try {
      other.exec('begin immediate');
      const err = await store.cancelBuild('x', 1).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ApiError);
      expect((err as ApiError).code).toBe('UNAVAILABLE');
      other.exec('rollback');
      // Once the lock is gone the same call reaches the data.
      await expect(store.cancelBuild('x', 1)).rejects.toMatchObject({ code: 'BUILD_NOT_FOUND' });
    } finally {
      other.close();
      await store.close();
    }
  });

  it('works in memory', async () => {
    const store = await openStore({ sqlitePath: ':memory:' });
    await store.migrate();
    await store.ping();
    expect(await store.hasQueuedBuilds()).toBe(false);
    await store.close();
  });
});
