import { mkdir, mkdtemp, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FakeClock } from '@buildfleet/protocol';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FsBlobStore } from '../../src/blobs/fs.js';
import { openBlobStore } from '../../src/blobs/open.js';
import { blobStoreContract, measureThroughput, streamOf, type BlobHarness } from './contract.js';

async function tmpFiles(dir: string): Promise<string[]> {
  return (await readdir(dir, { withFileTypes: true, recursive: true })).filter((e) => e.name.startsWith('.tmp-')).map((e) => join(e.parentPath, e.name));
}

async function tmpBytes(dir: string): Promise<number> {
  let n = 0;
  for (const f of await tmpFiles(dir)) n += await stat(f).then((s) => s.size, () => 0);
  return n;
}

describe('FsBlobStore', () => {
  let base: string;
  let h: BlobHarness;
  beforeEach(async () => {
    base = await mkdtemp(join(tmpdir(), 'bf-blobs-'));
    const store = new FsBlobStore(join(base, 'root'));
    await store.init();
    h = { store, leftovers: async () => (await tmpFiles(base)).length, inFlightBytes: () => tmpBytes(base) };
  });
  afterEach(async () => {
    await rm(base, { recursive: true, force: true });
  });

  blobStoreContract(() => h);

  it('writes nothing outside its root for escaping keys', async () => {
    await h.store.put('../outside', streamOf(Buffer.from('x'))).catch(() => {});
    expect((await readdir(base)).sort()).toEqual(['root']);
  });

  it('refuses a key that would nest under an existing blob (a file cannot be a directory)', async () => {
    await h.store.put('sources/n', streamOf(Buffer.from('n')));
    await expect(h.store.put('sources/n/deeper', streamOf(Buffer.from('x')))).rejects.toMatchObject({ code: 'VALIDATION_FAILED' });
    expect(await h.store.size('sources/n')).toBe(1);
  });

  it('keeps serving an open read after the key is replaced', async () => {
    const a = Buffer.alloc(3 * 1024 * 1024, 1);
    await h.store.put('sources/r', streamOf(a));
    const reading = await h.store.get('sources/r');
    await h.store.put('sources/r', streamOf(Buffer.from('new')));
    const chunks: Buffer[] = [];
    for await (const c of reading) chunks.push(c as Buffer);
    expect(Buffer.concat(chunks).equals(a)).toBe(true);
  });

  it('openBlobStore uses <dataDir>/blobs without a database URL', async () => {
    const s = await openBlobStore({ dataDir: base });
    expect(s.kind).toBe('fs');
    await s.put('sources/f', streamOf(Buffer.from('hello')));
    expect((await stat(join(base, 'blobs', 'sources', 'f'))).size).toBe(5);
    await s.close();
  });

  it('init removes temp files of uploads that died over an hour ago, keeps fresh ones', async () => {
    const clock = new FakeClock();
    const root = join(base, 'sweep');
    await mkdir(join(root, 'sources'), { recursive: true });
    const stale = join(root, 'sources', '.tmp-dead');
    const fresh = join(root, 'sources', '.tmp-alive');
    const blob = join(root, 'sources', 'old-blob');
    for (const f of [stale, fresh, blob]) await writeFile(f, 'x');
    const twoHoursAgo = (clock.now() - 2 * 3_600_000) / 1000;
    await utimes(stale, twoHoursAgo, twoHoursAgo);
    await utimes(blob, twoHoursAgo, twoHoursAgo);
    await utimes(fresh, clock.now() / 1000, clock.now() / 1000);
    await new FsBlobStore(root, { clock }).init();
    expect((await readdir(join(root, 'sources'))).sort()).toEqual(['.tmp-alive', 'old-blob']);
  });

  it('measures 64 MiB throughput', async () => {
    const r = await measureThroughput(h.store);
    console.log(`FsBlobStore 64 MiB: put ${r.putMiBs.toFixed(0)} MiB/s, get ${r.getMiBs.toFixed(0)} MiB/s`);
    expect(r.putMiBs).toBeGreaterThan(0);
  });
});
