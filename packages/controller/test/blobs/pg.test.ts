import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { FakeClock } from '@buildfleet/protocol';
import { afterAll, beforeAll, beforeEach, expect, it } from 'vitest';
import { openBlobStore } from '../../src/blobs/open.js';
import { PgBlobStore } from '../../src/blobs/pg.js';
import { createTestDatabase, describePg, type TestDatabase } from '../support/pg.js';
import { waitFor } from '../support/wait.js';
import { blobStoreContract, measureThroughput, sha256, streamOf, type BlobHarness } from './contract.js';

describePg('PgBlobStore', () => {
  let db: TestDatabase;
  let pool: pg.Pool;
  let h: BlobHarness;
  beforeAll(async () => {
    db = await createTestDatabase();
    pool = new pg.Pool({ connectionString: db.url, max: 6 });
    pool.on('error', () => {}); // an idle client killed by the drop at the end is not a test failure
    const store = new PgBlobStore(pool);
    await store.init();
    h = {
      store,
      leftovers: async () => Number((await pool.query(`SELECT count(*) AS n FROM blob_chunks WHERE key LIKE '.tmp/%'`)).rows[0].n),
      inFlightBytes: async () =>
        Number((await pool.query(`SELECT coalesce(sum(length(data)), 0) AS n FROM blob_chunks WHERE key LIKE '.tmp/%'`)).rows[0].n),
    };
  });
  beforeEach(async () => {
    await pool.query('TRUNCATE blobs, blob_chunks');
  });
  afterAll(async () => {
    await pool?.end();
    await db?.drop();
  });

  blobStoreContract(() => h);

  it('init is safe when several controllers start at once, and repeatable', async () => {
    const pools = [0, 1, 2].map(() => new pg.Pool({ connectionString: db.url, max: 1 }));
    try {
      await Promise.all(pools.map((p) => new PgBlobStore(p).init()));
      await new PgBlobStore(pools[0]!).init();
      const storage = await pool.query(`SELECT attstorage FROM pg_attribute WHERE attrelid = 'blob_chunks'::regclass AND attname = 'data'`);
      expect(storage.rows).toEqual([{ attstorage: 'e' }]);
    } finally {
      await Promise.all(pools.map((p) => p.end()));
    }
  });

  it('stores a blob as 1 MiB chunk rows and a blobs row', async () => {
    const data = Buffer.alloc(2 * 1024 * 1024 + 3, 7);
    await h.store.put('sources/rows', streamOf(data));
    const chunks = await pool.query(`SELECT idx, length(data) AS n FROM blob_chunks WHERE key = 'sources/rows' ORDER BY idx`);
    expect(chunks.rows).toEqual([
      { idx: 0, n: 1048576 },
      { idx: 1, n: 1048576 },
      { idx: 2, n: 3 },
    ]);
    const blob = await pool.query(`SELECT size, sha256 FROM blobs WHERE key = 'sources/rows'`);
    expect(blob.rows[0]).toEqual({ size: String(data.length), sha256: sha256(data) });
  });

  it('init sweeps chunks of uploads that died more than an hour ago, keeps fresh ones', async () => {
    const clock = new FakeClock();
    const store = new PgBlobStore(pool, { clock });
    const stale = `.tmp/${clock.now() - 2 * 3_600_000}/dead`;
    const fresh = `.tmp/${clock.now() - 60_000}/alive`;
    await pool.query(`INSERT INTO blob_chunks (key, idx, data) VALUES ($1, 0, '\\x00'), ($2, 0, '\\x00')`, [stale, fresh]);
    await store.init();
    const left = await pool.query(`SELECT key FROM blob_chunks`);
    expect(left.rows.map((r) => r.key)).toEqual([fresh]);
  });

  it('turns an unreachable database into UNAVAILABLE', async () => {
    const dead = new pg.Pool({ connectionString: 'postgres://postgres@127.0.0.1:1/none', connectionTimeoutMillis: 2_000 });
    try {
      await expect(new PgBlobStore(dead).size('sources/x')).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    } finally {
      await dead.end();
    }
  });

  it('openBlobStore: PostgreSQL mode uses chunks, or BUILDFLEET_BLOB_DIR when given', async () => {
    const s = await openBlobStore({ databaseUrl: db.url, dataDir: '/nonexistent' });
    expect(s.kind).toBe('pg');
    await s.put('sources/o', streamOf(Buffer.from('x')));
    expect(await h.store.size('sources/o')).toBe(1);
    await s.close();
    const dir = await mkdtemp(join(tmpdir(), 'bf-shared-'));
    try {
      const f = await openBlobStore({ databaseUrl: db.url, dataDir: '/nonexistent', blobDir: dir });
      expect(f.kind).toBe('fs');
      await f.put('sources/o2', streamOf(Buffer.from('xy')));
      expect(await f.size('sources/o2')).toBe(2);
      expect(await h.store.size('sources/o2')).toBeUndefined();
      await f.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('never mixes two bodies when a key is replaced mid-read: the reader gets the old body whole (one snapshot)', async () => {
    const a = Buffer.alloc(4 * 1024 * 1024, 1);
    await h.store.put('sources/mix', streamOf(a));
    const reading = (await h.store.get('sources/mix'))[Symbol.asyncIterator]();
    let got = 0;
    while (got < 1024 * 1024) {
      const r = await reading.next();
      expect(r.done).toBe(false);
      expect((r.value as Buffer).every((x) => x === 1)).toBe(true);
      got += (r.value as Buffer).length;
    }
    await h.store.put('sources/mix', streamOf(Buffer.alloc(a.length, 2)));
    for (let r = await reading.next(); !r.done; r = await reading.next()) {
      expect((r.value as Buffer).every((x) => x === 1)).toBe(true);
      got += (r.value as Buffer).length;
    }
    expect(got).toBe(a.length);
  });

  it('a download given up midway hands its connection back to the pool', async () => {
    await h.store.put('sources/gone', streamOf(Buffer.alloc(8 * 1024 * 1024, 3)));
    const body = await h.store.get('sources/gone');
    await new Promise<void>((resolve) => body.once('data', () => resolve()));
    expect(pool.totalCount - pool.idleCount).toBeGreaterThan(0);
    body.destroy();
    await waitFor(() => pool.totalCount === pool.idleCount, { what: 'the COPY connection to leave' });
    // The pool still works, and the whole body reads back.
    const again: Buffer[] = [];
    for await (const c of await h.store.get('sources/gone')) again.push(c as Buffer);
    expect(sha256(Buffer.concat(again))).toBe(sha256(Buffer.alloc(8 * 1024 * 1024, 3)));
  });

  it('measures 64 MiB throughput', async () => {
    const r = await measureThroughput(h.store);
    console.log(`PgBlobStore 64 MiB: put ${r.putMiBs.toFixed(0)} MiB/s, get ${r.getMiBs.toFixed(0)} MiB/s`);
    expect(r.putMiBs).toBeGreaterThan(0);
  });
});
