/**
 * Build caches over real HTTP (issue 13, docs/protocol.md "Caches"): a
 * build's running attempt looks up, saves and downloads entries of its own
 * scope; entries never change; the total stays under the budget (least
 * recently used go first, with their archives).
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeClock, paths, type CacheHit, type CacheList } from '@buildfleet/protocol';
import { Collector } from '../../src/gc/collector.js';
import { API_TOKEN, errorCode, startHarness, type Harness } from '../http/harness.js';
import { ProtocolWorker } from '../ops/protocol-worker.js';

const sha = (b: Uint8Array | string) => createHash('sha256').update(b).digest('hex');

describe('caches over HTTP', () => {
  let h: Harness;
  let w: ProtocolWorker;
  beforeAll(async () => {
    h = await startHarness({ cacheMaxBytes: 250 });
    w = await ProtocolWorker.register(h);
  });
  afterAll(async () => {
    await h?.close();
  });

  /** A running build of `repo` and its build token. */
  async function running(repo: string): Promise<{ id: string; token: string }> {
    const build = await h.submitOk({ script: 'true', metadata: { repo } });
    const [b] = await w.claim(1);
    expect(b!.id).toBe(build.id);
    await w.start(build.id);
    return { id: build.id, token: b!.buildToken };
  }
  const lookup = async (b: { id: string; token: string }, key: string, restoreKeys: string[] = []) => {
    const q = new URLSearchParams({ key });
    for (const r of restoreKeys) q.append('restoreKeys', r);
    const res = await h.req('GET', `${paths.buildCache(b.id)}?${q}`, { token: b.token });
    expect(res.status).toBe(200);
    return ((await res.json()) as { entry: CacheHit | null }).entry;
  };
  const save = (b: { id: string; token: string }, key: string, bytes: Uint8Array, checksum = sha(bytes)) =>
    h.req('PUT', `${paths.buildCache(b.id)}?${new URLSearchParams({ key })}`, {
      token: b.token,
      body: bytes,
      headers: { 'content-type': 'application/octet-stream', 'x-checksum-sha256': checksum },
    });

  it('misses, saves, finds the exact key or the newest restore-key match, and serves the archive', async () => {
    const a = await running('acme/app');
    expect(await lookup(a, 'npm-linux-111')).toBeNull();
    const bytes = new Uint8Array(100).fill(7);
    const saved = await save(a, 'npm-linux-111', bytes);
    expect(saved.status).toBe(201);
    expect(await saved.json()).toMatchObject({ created: true, entry: { key: 'npm-linux-111', sha256: sha(bytes), size: 100, scope: 'repo=acme/app', buildId: a.id } });
    // Entries never change: the same key again keeps the first.
    const again = await save(a, 'npm-linux-111', new Uint8Array(5));
    expect(again.status).toBe(200);
    expect(await again.json()).toMatchObject({ created: false, entry: { sha256: sha(bytes) } });
    await w.finish(a.id);

    const b = await running('acme/app');
    expect(await lookup(b, 'npm-linux-111')).toMatchObject({ key: 'npm-linux-111', exact: true, size: 100 });
    expect(await lookup(b, 'npm-linux-222', ['npm-mac-', 'npm-linux-'])).toMatchObject({ key: 'npm-linux-111', exact: false });
    const archive = await h.req('GET', paths.buildCacheArchive(b.id, sha(bytes)), { token: b.token });
    expect(archive.status).toBe(200);
    expect(archive.headers.get('x-checksum-sha256')).toBe(sha(bytes));
    expect(sha(new Uint8Array(await archive.arrayBuffer()))).toBe(sha(bytes));
    await w.finish(b.id);
    const metrics = await (await h.req('GET', '/metrics')).text();
    expect(metrics).toMatch(/buildfleet_cache_lookups_total\{result="exact"\} 1/);
    expect(metrics).toMatch(/buildfleet_cache_lookups_total\{result="restore_key"\} 1/);
    expect(metrics).toMatch(/buildfleet_cache_lookups_total\{result="miss"\} 1/);
  });

  it("keeps projects apart: another repo's build neither finds nor downloads an entry", async () => {
    const a = await running('acme/one');
    const bytes = new Uint8Array(10).fill(1);
    expect((await save(a, 'shared-key', bytes)).status).toBe(201);
    await w.finish(a.id);
    const other = await running('evil/two');
    expect(await lookup(other, 'shared-key', ['shared'])).toBeNull();
    expect(await errorCode(await h.req('GET', paths.buildCacheArchive(other.id, sha(bytes)), { token: other.token }))).toBe('NOT_FOUND');
    // Its own entry under the same key does not touch acme/one's.
    expect((await save(other, 'shared-key', new Uint8Array(10).fill(2))).status).toBe(201);
    await w.finish(other.id);
    const c = await running('acme/one');
    expect(await lookup(c, 'shared-key')).toMatchObject({ sha256: sha(bytes) });
    await w.finish(c.id);
  });

  it('refuses a wrong checksum (422), a finished build (409) and another build token (403)', async () => {
    const a = await running('acme/app');
    expect(await errorCode(await save(a, 'k-bad', new Uint8Array(3), sha('something else')))).toBe('CHECKSUM_MISMATCH');
    const b = await running('acme/app');
    expect(await errorCode(await h.req('GET', `${paths.buildCache(a.id)}?key=x`, { token: b.token }))).toBe('FORBIDDEN');
    await w.finish(a.id);
    expect(await errorCode(await save(a, 'k-late', new Uint8Array(3)))).toBe('INVALID_TRANSITION');
    expect(await errorCode(await h.req('GET', `${paths.buildCache(a.id)}?key=x`, { token: a.token }))).toBe('INVALID_TRANSITION');
    await w.finish(b.id);
  });

  it('evicts the least recently used entries past BUILDFLEET_CACHE_MAX_MB, and admins list and delete them', async () => {
    const before = (await (await h.req('GET', paths.caches(), { token: API_TOKEN })).json()) as CacheList;
    for (const c of before.caches) expect((await h.req('DELETE', paths.cache(c.id), { token: API_TOKEN })).status).toBe(204);
    const a = await running('acme/lru');
    const bytesOf = (key: string) => new Uint8Array(100).fill(key.charCodeAt(1));
    for (const k of ['one', 'two']) expect((await save(a, k, bytesOf(k))).status).toBe(201);
    expect(await lookup(a, 'one')).not.toBeNull(); // 'one' is now more recent than 'two'
    expect((await save(a, 'three', bytesOf('three'))).status).toBe(201);
    const list = (await (await h.req('GET', paths.caches(), { token: API_TOKEN })).json()) as CacheList;
    expect(list.caches.map((c) => c.key)).toEqual(['three', 'one']);
    expect(list).toMatchObject({ totalBytes: 200, maxBytes: 250 });
    expect(await lookup(a, 'two')).toBeNull();
    expect(await errorCode(await h.req('GET', paths.buildCacheArchive(a.id, sha(bytesOf('two'))), { token: a.token }))).toBe('NOT_FOUND');
    // Its archive is gone from the blob store too.
    expect(await h.ctl.app.buildfleet.blobs.size(`caches/${sha(bytesOf('two'))}`)).toBeUndefined();
    expect(await h.ctl.app.buildfleet.blobs.size(`caches/${sha(bytesOf('three'))}`)).toBe(100);
    // The retention collector's orphan sweep (issue 14) leaves archives an entry names alone.
    const collector = new Collector({
      store: h.ctl.store.retention,
      blobs: h.ctl.app.buildfleet.blobs,
      clock: new FakeClock(Date.now() + 10_000),
      config: { ...h.ctl.app.buildfleet.config.ops, orphanGraceMs: 0 },
    });
    await collector.collectOnce({ orphans: true });
    expect(await h.ctl.app.buildfleet.blobs.size(`caches/${sha(bytesOf('three'))}`)).toBe(100);
    const one = list.caches.find((c) => c.key === 'one')!;
    expect((await h.req('DELETE', paths.cache(one.id), { token: API_TOKEN })).status).toBe(204);
    expect(await errorCode(await h.req('DELETE', paths.cache(one.id), { token: API_TOKEN }))).toBe('NOT_FOUND');
    expect(await lookup(a, 'one')).toBeNull();
    await w.finish(a.id);
  });
});
