/** The store contract on SQLite: one temporary database file per test file. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { ApiError } from '@buildfleet/protocol';
import { openStore } from '../../src/store/index.js';
import { cachingDatabase } from '../../src/store/sqlite-driver.js';
import { resetSqlite } from '../support/reset-db.js';
import { describeStoreContract } from './store.contract.js';
import { openInstrumentedStore } from './contract/fixture.js';

const dir = mkdtempSync(join(tmpdir(), 'bf-store-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const contractDb = join(dir, 'controller.db');
describeStoreContract('sqlite', (instrumentation) => openInstrumentedStore({ sqlitePath: contractDb }, instrumentation), {
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

  describe('the statement cache', () => {
    function counted(): { db: Database.Database; prepared: string[] } {
      const db = new Database(':memory:');
      const prepared: string[] = [];
      const prepare = db.prepare.bind(db);
      db.prepare = ((text: string) => {
        prepared.push(text);
        return prepare(text);
      }) as typeof db.prepare;
      return { db, prepared };
    }

    it('prepares a statement text once and answers it from the cache after', () => {
      const { db, prepared } = counted();
      const cached = cachingDatabase(db);
      const a = cached.prepare('select ? as v');
      expect(a.all([1])).toEqual([{ v: 1 }]);
      expect(cached.prepare('select ? as v')).toBe(a);
      expect(a.all([2])).toEqual([{ v: 2 }]);
      expect(prepared).toEqual(['select ? as v']);
      cached.close();
    });

    it('drops the least recently used text past its size', () => {
      const { db, prepared } = counted();
      const cached = cachingDatabase(db, 2);
      cached.prepare('select 1');
      cached.prepare('select 2');
      cached.prepare('select 1'); // now 2 is the least recently used
      cached.prepare('select 3');
      cached.prepare('select 1');
      expect(prepared).toEqual(['select 1', 'select 2', 'select 3']);
      cached.prepare('select 2');
      expect(prepared).toEqual(['select 1', 'select 2', 'select 3', 'select 2']);
      cached.close();
    });

    it('a cached statement sees a schema change made after it was prepared', () => {
      const db = new Database(':memory:');
      const cached = cachingDatabase(db);
      db.exec('create table t (a integer)');
      db.exec('insert into t values (1)');
      expect(cached.prepare('select * from t').all([])).toEqual([{ a: 1 }]);
      db.exec('alter table t add column b integer default 2');
      expect(cached.prepare('select * from t').all([])).toEqual([{ a: 1, b: 2 }]);
      cached.close();
    });
  });
});
