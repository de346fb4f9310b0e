/**
 * The worker against the real controller at its limits (issue 9):
 * - a source that would unpack past the worker's BUILDFLEET_MAX_SOURCE_UNPACKED_MB
 *   fails the build before its script runs, with the reason in the build's
 *   message and log, and leaves no workspace behind;
 * - a controller whose disk is full answers an artifact upload `507
 *   STORAGE_FULL`: the worker sends that upload once (final, not retried),
 *   the build fails naming it, and the controller keeps no part of it.
 *
 * The full disk is made by the controller's blob store failing its write
 * with ENOSPC part-way through the body (a real full file system needs a
 * mount this test cannot make); everything else is real.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { paths, type Build } from '@buildfleet/protocol';
import { startWorker, type RunningWorker } from '../../src/agent.js';
import { silentLogger } from '../../src/logger.js';
import { tempDir, testConfig } from '../support/harness.js';
import { tarGz } from '../support/tarball.js';
import { waitFor } from '../support/wait.js';
import { startCtl, type Ctl } from './harness.js';

let ctl: Ctl | undefined;
let worker: RunningWorker | undefined;
let dir: string | undefined;
afterEach(async () => {
  await worker?.stop().catch(() => undefined);
  await ctl?.close();
  if (dir) await fs.rm(dir, { recursive: true, force: true });
  ctl = worker = dir = undefined;
});

const MiB = 1024 * 1024;

async function ended(id: string): Promise<Build> {
  let b: Build | undefined;
  await waitFor(async () => ['succeeded', 'failed', 'canceled', 'timed_out'].includes((b = await ctl!.build(id)).state), {
    what: `build ${id} to end`,
    timeoutMs: 30_000,
    intervalMs: 50,
  });
  return b!;
}

/** Every file under `root`, relative. */
async function files(root: string): Promise<string[]> {
  const all = await fs.readdir(root, { recursive: true, withFileTypes: true }).catch(() => []);
  return all.filter((e) => e.isFile()).map((e) => path.relative(root, path.join(e.parentPath, e.name)));
}

describe('worker limits against the real controller', () => {
  it('a source past BUILDFLEET_MAX_SOURCE_UNPACKED_MB fails the build before the script, and leaves no workspace', async () => {
    ctl = await startCtl();
    dir = await tempDir();
    worker = await startWorker(testConfig(ctl, dir, { sourceLimits: { maxBytes: 4 * MiB, maxEntries: 1000 } }), {
      logger: silentLogger,
      retryBaseMs: 10,
      retryMaxMs: 100,
    });
    // 16 MiB of zeros: a few KiB on the wire.
    const build = await ctl.submit({ script: 'touch ran.txt' }, tarGz([{ path: 'zeros.bin', data: Buffer.alloc(16 * MiB) }]));
    const b = await ended(build.id);
    expect(b.state).toBe('failed');
    expect(b.message).toBe('could not prepare the source: the archive unpacks to more than 4 MiB (BUILDFLEET_MAX_SOURCE_UNPACKED_MB)');
    const log = await (await ctl.api('GET', `${paths.logs(build.id)}?offset=0`)).text();
    expect(log).toContain('BUILDFLEET_MAX_SOURCE_UNPACKED_MB');
    expect(await files(path.join(dir, 'worker', 'workspaces'))).toEqual([]);
  });

  it('507 STORAGE_FULL on an artifact upload is final: one attempt, the build fails naming it, nothing half-stored', async () => {
    ctl = await startCtl();
    dir = await tempDir();
    const blobs = ctl.ctl.app.buildfleet.blobs;
    const put = blobs.put.bind(blobs);
    let artifactPuts = 0;
    blobs.put = (key: string, body: Readable, opts?: { maxBytes?: number; expectSha256?: string }) => {
      if (!key.includes('artifact')) return put(key, body, opts);
      artifactPuts++;
      // The disk fills after the first 64 KiB of the body reached the file.
      let seen = 0;
      const full = new Transform({
        transform(chunk: Buffer, _enc, done) {
          seen += chunk.length;
          if (seen > 64 * 1024) done(Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' }));
          else done(null, chunk);
        },
      });
      return put(key, body.pipe(full), opts);
    };
    worker = await startWorker(testConfig(ctl, dir, {}), { logger: silentLogger, retryBaseMs: 10, retryMaxMs: 100 });
    const build = await ctl.submit(
      { script: 'head -c 1048576 /dev/zero > out.bin && echo built', artifacts: ['out.bin'] },
      tarGz([{ path: 'README', data: 'x\n' }]),
    );
    const b = await ended(build.id);
    expect(b.state).toBe('failed');
    expect(b.message).toBe('artifact upload failed: out.bin: STORAGE_FULL');
    expect(artifactPuts).toBe(1);
    const log = await (await ctl.api('GET', `${paths.logs(build.id)}?offset=0`)).text();
    expect(log).toContain('built');
    expect(log).toContain('artifact upload failed: out.bin: STORAGE_FULL');
    const listed = (await (await ctl.api('GET', paths.artifacts(build.id))).json()) as { artifacts: unknown[] };
    expect(listed.artifacts).toEqual([]);
    // No temp file and no artifact blob: only the source is stored.
    const stored = await files(path.join(ctl.fixture.dataDir, 'blobs'));
    expect(stored.filter((f) => !f.includes('source'))).toEqual([]);
  });
});
