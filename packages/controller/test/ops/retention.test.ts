/**
 * Retention (issue 14) on both stores: with short ages, old sources, logs,
 * artifacts and builds are removed and the disk use measured before and
 * after drops; a kept build and a running build survive; removed data
 * answers 410 GONE saying when and why; the blob cap evicts the oldest
 * artifacts first; orphan blobs go; and a claim made while the collector
 * runs is not held up by it.
 *
 * The controller runs on the real clock; the test's collector runs on a
 * FakeClock set ahead of it (`collectorAt`), so no test waits for an age to
 * pass.
 */
import { randomBytes } from 'node:crypto';
import { readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeClock, paths, webhookPaths, type Build } from '@buildfleet/protocol';
import { loadControllerConfig } from '../../src/config.js';
import { Collector, type RoundSummary } from '../../src/gc/collector.js';
import type { OperationsConfig } from '../../src/ops/config.js';
import { API_TOKEN, sha256, startHarness, type Harness } from '../http/harness.js';
import { createTestDatabase, describePg, type TestDatabase } from '../support/pg.js';
import { ProtocolWorker } from './protocol-worker.js';

const S = 1000;
/** Short ages, through the same environment variables an operator sets. */
const OPS = loadControllerConfig({
  BUILDFLEET_RETAIN_SOURCES: '10s',
  BUILDFLEET_RETAIN_LOGS: '20s',
  BUILDFLEET_RETAIN_ARTIFACTS: '20s',
  BUILDFLEET_RETAIN_BUILDS: '40s',
}).ops;

describe('retention on SQLite (blobs on disk)', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ ops: OPS });
  });
  afterAll(async () => {
    await h?.close();
  });
  const blobDir = () => join(h.dataDir, 'blobs');
  retentionTests(() => h, async () => diskBytes(h.dataDir), {
    // What a controller killed mid-upload leaves: its temp file beside the blobs.
    leave: () => writeFile(join(blobDir(), '.tmp-killed-mid-upload'), randomBytes(1000)),
    left: async () => (await readdir(blobDir())).filter((n) => n.startsWith('.tmp-')).length,
  });
});

describePg('retention on PostgreSQL (blobs in PostgreSQL)', () => {
  let h: Harness;
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
    h = await startHarness({ databaseUrl: db.url, ops: OPS });
  });
  afterAll(async () => {
    await h?.close();
    await db?.drop();
  });
  const sql = async <T extends pg.QueryResultRow>(text: string, values: unknown[] = []) => {
    const c = new pg.Client({ connectionString: db.url });
    await c.connect();
    try {
      return (await c.query<T>(text, values)).rows;
    } finally {
      await c.end();
    }
  };
  retentionTests(() => h, async () => pgBytes(db.url), {
    // What a controller killed mid-upload leaves: chunks under a temporary key.
    leave: async () => void (await sql('INSERT INTO blob_chunks (key, idx, data) VALUES ($1, 0, $2)', [`.tmp/${Date.now()}/killed`, randomBytes(1000)])),
    left: async () => Number((await sql<{ n: string }>("SELECT count(*) AS n FROM blob_chunks WHERE key LIKE '.tmp/%'"))[0]!.n),
  });
});

/** Bytes of every file under `dir` (the SQLite file, its WAL, the blobs). */
async function diskBytes(dir: string): Promise<number> {
  let total = 0;
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) total += (await stat(join(e.parentPath, e.name)).catch(() => ({ size: 0 }))).size;
  }
  return total;
}

/** Bytes PostgreSQL holds for blobs and logs (space freed is reused by autovacuum, not returned at once). */
async function pgBytes(url: string): Promise<number> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const r = await c.query<{ b: string }>(
      `select (select coalesce(sum(octet_length(data)), 0) from blob_chunks) + (select coalesce(sum(octet_length(data)), 0) from log_chunks) as b`,
    );
    return Number(r.rows[0]!.b);
  } finally {
    await c.end();
  }
}

/** Makes and counts what an upload cut short by a killed controller leaves in the blob store. */
interface TempUploads {
  leave(): Promise<void>;
  left(): Promise<number>;
}

function retentionTests(get: () => Harness, measure: () => Promise<number>, temp: TempUploads): void {
  /** A collector like the controller's, on a clock `aheadMs` ahead of the real one. */
  const collectorAt = (aheadMs: number, over: Partial<OperationsConfig> = {}, hooks: { betweenBatches?: () => Promise<void> } = {}) =>
    new Collector({
      store: get().ctl.store.retention,
      blobs: get().ctl.app.buildfleet.blobs,
      clock: new FakeClock(Date.now() + aheadMs),
      config: { ...OPS, ...over },
      metrics: get().ctl.app.buildfleet.metrics,
      ...hooks,
    });

  const api = (method: string, p: string, json?: unknown) => get().req(method, p, { token: API_TOKEN, ...(json !== undefined ? { json } : {}) });
  const errorOf = async (res: Response) => ((await res.json()) as { error: { code: string; message: string } }).error;

  /** A build that ran and ended: source, log, one artifact. */
  async function endedBuild(w: ProtocolWorker, bytes = 100_000): Promise<{ build: Build; artifact: Uint8Array; log: string }> {
    const build = await get().submitOk({ script: 'make' }, randomBytes(bytes));
    const [claimed] = await w.claim(1);
    expect(claimed!.id).toBe(build.id);
    await w.start(build.id);
    const log = randomBytes(bytes).toString('base64');
    await w.log(build.id, log);
    const artifact = randomBytes(bytes * 2);
    await w.artifact(build.id, 'out/app.bin', artifact);
    await w.finish(build.id);
    return { build, artifact, log };
  }

  it('removes sources, then logs and artifacts, then whole builds by age; kept and running builds survive; disk use drops', async () => {
    const h = get();
    const w = await ProtocolWorker.register(h);
    const old = [];
    for (let i = 0; i < 4; i++) old.push(await endedBuild(w));
    const kept = await endedBuild(w);
    const keepRes = await api('POST', webhookPaths.keep(kept.build.id), { keep: true });
    expect(keepRes.status).toBe(200);
    expect(((await keepRes.json()) as { build: Build }).build.keep).toBe(true);
    // A retry shares its source blob with the build it retries, and is still queued.
    const retried = ((await (await api('POST', paths.retry(old[0]!.build.id))).json()) as { build: Build }).build;
    // A running build is never touched, however old.
    const running = await h.submitOk({ script: 'sleep', priority: 10 }, randomBytes(1000));
    expect((await w.claim(1)).map((b) => b.id)).toEqual([running.id]);
    await w.start(running.id);
    await w.log(running.id, 'still running\n');

    const before = await measure();
    const sources = await collectorAt(15 * S).collectOnce();
    expect(sources.ran).toBe(true);
    expect(sources.removed).toEqual({ sources: 4 });
    // The retried build's source blob stays: a live row still refers to it.
    expect(sources.blobsDeleted).toBe(3);
    const retry = await api('POST', paths.retry(old[1]!.build.id));
    expect(retry.status).toBe(410);
    const goneSource = await errorOf(retry);
    expect(goneSource.code).toBe('GONE');
    expect(goneSource.message).toMatch(new RegExp(`the source of build ${old[1]!.build.id} expired: removed at \\d{4}-.*Z by retention \\(BUILDFLEET_RETAIN_SOURCES`));
    expect(await h.ctl.app.buildfleet.blobs.size(`sources/${old[0]!.build.id}`)).toBeGreaterThan(0);
    expect((await h.ctl.store.getBuild(retried.id)).state).toBe('queued');
    // Logs and artifacts are still there.
    expect((await api('GET', `${paths.logs(old[1]!.build.id)}?offset=0`)).status).toBe(200);

    const logsAndArtifacts = await collectorAt(25 * S).collectOnce();
    expect(logsAndArtifacts.removed).toEqual({ artifacts: 4, logs: 4 });
    const log = await api('GET', `${paths.logs(old[1]!.build.id)}?offset=0`);
    expect(log.status).toBe(410);
    expect((await errorOf(log)).message).toMatch(/the log of build .* expired: removed at .* by retention \(BUILDFLEET_RETAIN_LOGS/);
    const art = await api('GET', paths.artifact(old[2]!.build.id, 'out/app.bin'));
    expect(art.status).toBe(410);
    const goneArt = await errorOf(art);
    expect(goneArt.code).toBe('GONE');
    expect(goneArt.message).toMatch(/artifact "out\/app.bin" of build .* expired: removed at \d{4}-\d\d-\d\dT.*Z by retention \(BUILDFLEET_RETAIN_ARTIFACTS after the build ended\); "buildfleet keep" exempts a build/);
    const listed = (await (await api('GET', paths.artifacts(old[2]!.build.id))).json()) as { artifacts: Array<{ name: string; expiredAt?: string }> };
    expect(listed.artifacts[0]!.expiredAt).toMatch(/Z$/);
    const mid = await measure();
    expect(mid).toBeLessThan(before);

    const builds = await collectorAt(45 * S).collectOnce();
    expect(builds.removed).toEqual({ builds: 4 });
    for (const o of old) expect((await api('GET', paths.build(o.build.id))).status).toBe(404);
    const after = await measure();
    // Four builds' sources, logs and artifacts (about 1.6 MB of random bytes) are gone.
    expect(before - after).toBeGreaterThan(1_000_000);
    console.log(`retention: disk use ${before} bytes before, ${mid} after sources/logs/artifacts, ${after} after builds`);

    // The kept build keeps everything; the running one is untouched.
    const k = await api('GET', paths.build(kept.build.id));
    expect(((await k.json()) as { build: Build }).build).toMatchObject({ keep: true, sourceExpiredAt: null, logsExpiredAt: null, artifactsExpiredAt: null });
    expect(await (await api('GET', `${paths.logs(kept.build.id)}?offset=0`)).text()).toBe(kept.log);
    const ka = await api('GET', paths.artifact(kept.build.id, 'out/app.bin'));
    expect(sha256(new Uint8Array(await ka.arrayBuffer()))).toBe(sha256(kept.artifact));
    expect((await h.ctl.store.getBuild(running.id)).state).toBe('running');
    await w.finish(running.id);
    await api('POST', paths.cancel(retried.id));
    const metrics = await (await h.req('GET', '/metrics')).text();
    expect(metrics).toMatch(/buildfleet_gc_removed_total\{kind="sources",reason="retention"\} 4/);
    expect(metrics).toMatch(/buildfleet_gc_removed_total\{kind="builds",reason="retention"\} 4/);
  });

  it('keeps blobs under the cap by removing the oldest artifacts first, and collects orphan blobs', async () => {
    const h = get();
    const w = await ProtocolWorker.register(h);
    const a = await endedBuild(w, 50_000);
    const b = await endedBuild(w, 50_000);
    const c = await endedBuild(w, 50_000);
    const live = await h.ctl.store.retention.liveBlobBytes();
    // Room for everything but about one artifact (100 kB each).
    const cap = live.sources + live.artifacts - 50_000;
    const round = await collectorAt(0, { blobMaxBytes: cap }).collectOnce();
    expect(round.removed).toEqual({ blob_cap: 1 });
    const gone = await api('GET', paths.artifact(a.build.id, 'out/app.bin'));
    expect(gone.status).toBe(410);
    expect((await errorOf(gone)).message).toMatch(/was removed at .* to keep stored blobs under BUILDFLEET_BLOB_MAX_MB \(oldest first\)/);
    for (const x of [b, c]) expect((await api('GET', paths.artifact(x.build.id, 'out/app.bin'))).status).toBe(200);

    // An artifact re-uploaded with other bytes leaves the first blob behind; a killed upload leaves its temporary file.
    const blobs = h.ctl.app.buildfleet.blobs;
    await blobs.put('artifacts/nobody/1/' + 'a'.repeat(64), Readable.from([randomBytes(10_000)]));
    await temp.leave();
    // Younger than the grace period: it may be an upload in progress.
    await collectorAt(5 * S).collectOnce({ orphans: true });
    expect(await temp.left()).toBe(1);
    const orphans = await collectorAt(5 * S, { orphanGraceMs: 0 }).collectOnce({ orphans: true });
    expect(orphans.removed.orphans).toBeGreaterThanOrEqual(2);
    expect(await blobs.size('artifacts/nobody/1/' + 'a'.repeat(64))).toBeUndefined();
    expect(await temp.left()).toBe(0);
    // Nothing a live row refers to went with them.
    expect((await api('GET', paths.artifact(c.build.id, 'out/app.bin'))).status).toBe(200);
  });

  it('never holds up a claim: claims made while a long collection runs finish before it does', async () => {
    const h = get();
    const w = await ProtocolWorker.register(h);
    for (let i = 0; i < 20; i++) await endedBuild(w, 2_000);
    // Between two batches, the collector holds nothing: a claim completes while it waits there.
    let release!: () => void;
    let paused!: () => void;
    const atPause = new Promise<void>((r) => (paused = r));
    let first = true;
    const gc = collectorAt(45 * S, { gcBatchSize: 10 }, {
      betweenBatches: async () => {
        if (!first) return;
        first = false;
        paused();
        await new Promise<void>((r) => (release = r));
      },
    });
    const round = gc.collectOnce();
    await atPause;
    const queued = await h.submitOk({ script: 'true' }, randomBytes(100));
    const t0 = performance.now();
    const claimed = await w.claim(1, 0);
    const pausedClaimMs = performance.now() - t0;
    expect(claimed.map((b) => b.id)).toEqual([queued.id]);
    release();
    const summary: RoundSummary = await round;
    expect(summary.batches).toBeGreaterThan(2);

    // Claims racing a running collection (batches of 2 builds, so many short transactions).
    for (let i = 0; i < 30; i++) await endedBuild(w, 2_000);
    for (let i = 0; i < 10; i++) await h.submitOk({ script: 'true' }, randomBytes(100));
    let gcDone = 0;
    const gcStart = performance.now();
    const busy = collectorAt(45 * S, { gcBatchSize: 40 })
      .collectOnce()
      .then((s) => {
        gcDone = performance.now();
        return s;
      });
    const latencies: number[] = [];
    const doneAt: number[] = [];
    for (let i = 0; i < 10; i++) {
      const t = performance.now();
      expect(await w.claim(1, 0)).toHaveLength(1);
      latencies.push(performance.now() - t);
      doneAt.push(performance.now());
    }
    const s = await busy;
    expect(s.removed.builds).toBe(30);
    expect(doneAt[0]!).toBeLessThan(gcDone);
    console.log(
      `retention: claim while the collector paused between batches ${pausedClaimMs.toFixed(1)} ms; claims during a ${s.batches}-batch collection (${(gcDone - gcStart).toFixed(0)} ms): ` +
        `median ${[...latencies].sort((x, y) => x - y)[5]!.toFixed(1)} ms, max ${Math.max(...latencies).toFixed(1)} ms`,
    );
  });
}
