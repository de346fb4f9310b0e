/**
 * `buildfleet backup` / `restore` of the embedded store (issue 14): a
 * backup taken while 20 builds run and keep writing restores to a
 * controller that lists every build finished at backup time, with its log
 * and artifacts intact.
 */
import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { paths, type Build, type BuildList } from '@buildfleet/protocol';
import { unlinkSync } from 'node:fs';
import { BackupError, allReferencedBlobs, backupEmbedded, restoreEmbedded } from '../../src/backup.js';
import { markCollectedInSnapshot } from '../../src/store/sql/retention.js';
import { API_TOKEN, sha256, startHarness, type Harness } from '../http/harness.js';
import { ProtocolWorker } from './protocol-worker.js';

const cleanups: Array<() => Promise<void>> = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'bf-backup-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function allBuilds(h: Harness): Promise<Build[]> {
  const res = await h.req('GET', `${paths.builds()}?limit=200`, { token: API_TOKEN });
  return ((await res.json()) as BuildList).builds;
}

describe('backup and restore of the embedded store', () => {
  it('a backup taken during 20 running builds restores every build finished at backup time, with logs and artifacts', async () => {
    const h = await startHarness();
    cleanups.push(() => h.close());
    const w = await ProtocolWorker.register(h);
    const ids: string[] = [];
    for (let i = 0; i < 30; i++) ids.push((await h.submitOk({ script: `echo ${i}`, artifacts: ['out/*'] })).id);
    expect((await w.claim(30)).length).toBe(30);
    const artifacts = new Map<string, Uint8Array>();
    for (const id of ids) await w.start(id);
    for (const id of ids.slice(0, 10)) {
      await w.log(id, `log of ${id}\n`);
      const bytes = new Uint8Array(50_000).map((_, i) => (i * id.charCodeAt(id.length - 1)) % 256);
      artifacts.set(id, bytes);
      await w.artifact(id, 'out/result.bin', bytes);
      await w.finish(id);
    }
    const finishedBefore = ids.slice(0, 10);
    const running = ids.slice(10);
    expect((await allBuilds(h)).filter((b) => b.state === 'running')).toHaveLength(20);

    // The 20 running builds keep writing logs (and some finish) while the backup runs.
    let writing = true;
    const writer = (async () => {
      let round = 0;
      while (writing) {
        for (const id of running) if (w.held.has(id)) await w.log(id, `line ${round} of ${id}\n`.repeat(20));
        if (round < 5) await w.finish(running[round]!);
        round++;
      }
      return round;
    })();
    const backupFile = join(await tempDir(), 'backup.tar.gz');
    const manifest = await backupEmbedded({ dataDir: h.dataDir, file: backupFile, now: () => Date.now() });
    writing = false;
    const rounds = await writer;
    expect(rounds).toBeGreaterThan(0);
    expect(manifest).toMatchObject({ format: 'buildfleet-backup', builds: 30, missingBlobs: [], credentials: false });
    // 30 sources + 10 artifacts.
    expect(manifest.blobs).toBe(40);
    expect(manifest.migrations.length).toBeGreaterThan(0);
    expect((await stat(backupFile)).mode & 0o777).toBe(0o600);

    const restoredDir = await tempDir();
    const restored = await restoreEmbedded({ file: backupFile, dataDir: restoredDir, now: () => Date.now() });
    expect(restored.manifest.builds).toBe(30);
    const h2 = await startHarness({ dataDir: restoredDir });
    cleanups.push(() => h2.close());
    const listed = await allBuilds(h2);
    expect(listed.map((b) => b.id).sort()).toEqual([...ids].sort());
    const byId = new Map(listed.map((b) => [b.id, b]));
    for (const id of finishedBefore) {
      expect(byId.get(id)!.state).toBe('succeeded');
      const log = await h2.req('GET', paths.logs(id), { token: API_TOKEN, headers: { accept: 'text/plain' } });
      expect(await log.text()).toBe(`log of ${id}\n`);
      const art = await h2.req('GET', paths.artifact(id, 'out/result.bin'), { token: API_TOKEN });
      expect(art.status).toBe(200);
      expect(sha256(new Uint8Array(await art.arrayBuffer()))).toBe(sha256(artifacts.get(id)!));
    }
    // Builds running at backup time come back running (the reaper handles them like any after a restart).
    for (const id of running) expect(['running', 'succeeded']).toContain(byId.get(id)!.state);
    writing = false;
  });

  it('refuses to restore over an existing store unless forced, and then moves it aside', async () => {
    const h = await startHarness();
    cleanups.push(() => h.close());
    const build = await h.submitOk({ script: 'true' });
    const file = join(await tempDir(), 'b.tar');
    await backupEmbedded({ dataDir: h.dataDir, file, now: () => Date.now() });

    const target = await tempDir();
    await restoreEmbedded({ file, dataDir: target, now: () => Date.now() });
    await expect(restoreEmbedded({ file, dataDir: target, now: () => Date.now() })).rejects.toThrow(BackupError);
    const again = await restoreEmbedded({ file, dataDir: target, force: true, now: () => Date.now() });
    expect(again.movedAside).toMatch(/replaced-/);
    expect((await readdir(again.movedAside!)).sort()).toEqual(['blobs', 'buildfleet.db', 'secrets.key']);
    const h2 = await startHarness({ dataDir: target });
    cleanups.push(() => h2.close());
    expect((await allBuilds(h2)).map((b) => b.id)).toEqual([build.id]);
  });

  it('takes the generated secrets key along, so the restored controller still opens the stored secrets (issue 13)', async () => {
    const h = await startHarness();
    cleanups.push(() => h.close());
    const put = await h.req('PUT', paths.secret('NPM_TOKEN'), { token: API_TOKEN, json: { value: 'npm_backup_secret_value' } });
    expect(put.status).toBe(201);
    const file = join(await tempDir(), 'b.tar.gz');
    const manifest = await backupEmbedded({ dataDir: h.dataDir, file, now: () => Date.now() });
    expect(manifest.secretsKey).toBe(true);
    const target = await tempDir();
    await restoreEmbedded({ file, dataDir: target, now: () => Date.now() });
    // A controller whose key does not open the stored secrets refuses to start; this one starts.
    const h2 = await startHarness({ dataDir: target });
    cleanups.push(() => h2.close());
    const again = await h2.req('PUT', paths.secret('OTHER'), { token: API_TOKEN, json: { value: 'another_value' } });
    expect(again.status).toBe(201);
  });

  it('records blobs collected between the snapshot and the copy, and refuses files that are not backups', async () => {
    const h = await startHarness();
    cleanups.push(() => h.close());
    await h.submitOk({ script: 'true' });
    const file = join(await tempDir(), 'b.tar');
    let told: string[] = [];
    const m = await backupEmbedded({
      dataDir: h.dataDir,
      file,
      now: () => Date.now(),
      referencedBlobs: (db) => [...allReferencedBlobs(db), 'artifacts/gone/1/abc'],
      onMissingBlobs: (_db, keys) => {
        told = keys;
      },
    });
    expect(m.missingBlobs).toEqual(['artifacts/gone/1/abc']);
    expect(told).toEqual(['artifacts/gone/1/abc']);

    // Retention deletes an artifact's blob between the snapshot and the linking:
    // the backup marks it collected, so the restored controller answers 410, not a broken 200.
    const w = await ProtocolWorker.register(h);
    const b = await h.submitOk({ script: 'true' });
    await w.claim(2);
    await w.start(b.id);
    await w.artifact(b.id, 'out/x.bin', new Uint8Array(1000).fill(7));
    await w.finish(b.id);
    const file2 = join(await tempDir(), 'b2.tar');
    const m2 = await backupEmbedded({
      dataDir: h.dataDir,
      file: file2,
      now: () => Date.now(),
      referencedBlobs: (db) => {
        const keys = allReferencedBlobs(db);
        for (const k of keys.filter((x) => x.startsWith(`artifacts/${b.id}/`))) unlinkSync(join(h.dataDir, 'blobs', k));
        return keys;
      },
      onMissingBlobs: (db, keys) => markCollectedInSnapshot(db, keys, Date.now()),
    });
    expect(m2.missingBlobs).toHaveLength(1);
    const dir2 = await tempDir();
    await restoreEmbedded({ file: file2, dataDir: dir2, now: () => Date.now() });
    const h3 = await startHarness({ dataDir: dir2 });
    cleanups.push(() => h3.close());
    expect((await h3.req('GET', paths.artifact(b.id, 'out/x.bin'), { token: API_TOKEN })).status).toBe(410);

    const junk = join(await tempDir(), 'junk.tar');
    await writeFile(junk, 'not a tar file at all');
    await expect(restoreEmbedded({ file: junk, dataDir: await tempDir(), now: () => Date.now() })).rejects.toThrow(BackupError);
    await expect(backupEmbedded({ dataDir: await tempDir(), file: join(await tempDir(), 'x.tar'), now: () => Date.now() })).rejects.toThrow(/no embedded store/);
  });
});
