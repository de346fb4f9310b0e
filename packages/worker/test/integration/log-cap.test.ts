/**
 * Log limits (issue 14): a build that prints past BUILDFLEET_LOG_MAX_MB is
 * cut at the cap with the truncation line, keeps running and succeeds, and
 * the worker stops sending its log once the controller says so.
 */
import fs from 'node:fs/promises';
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

describe('per-attempt log cap', () => {
  it('truncates a log past the cap with the marker, the build still succeeds, and the worker stops sending', async () => {
    const cap = 64 * 1024;
    ctl = await startCtl({ ops: { logMaxBytes: cap } });
    dir = await tempDir();
    worker = await startWorker(testConfig(ctl, dir, {}), { logger: silentLogger, retryBaseMs: 10, retryMaxMs: 100, logChunkBytes: 16 * 1024, logFlushMs: 20 });
    // About 2 MiB of output, then a line after it, then a file proving the script ran to its end.
    const build = await ctl.submit(
      { script: 'i=0; while [ $i -lt 20000 ]; do echo "line $i of a build that prints far too much output"; i=$((i+1)); done; echo done > finished.txt; echo THE-END', artifacts: ['finished.txt'] },
      tarGz([{ path: 'README', data: 'x\n' }]),
    );
    let b: Build | undefined;
    await waitFor(async () => ['succeeded', 'failed', 'canceled', 'timed_out'].includes((b = await ctl!.build(build.id)).state), {
      what: 'the build to end',
      timeoutMs: 60_000,
      intervalMs: 100,
    });
    expect(b!.state).toBe('succeeded');
    expect(b!.exitCode).toBe(0);
    const log = await (await ctl.api('GET', `${paths.logs(build.id)}?offset=0`)).text();
    expect(log).toMatch(/\n\[buildfleet\] log truncated: this attempt's log reached 65536 bytes \(BUILDFLEET_LOG_MAX_MB\); later output is not stored, the build goes on\n$/);
    expect(log).not.toContain('THE-END');
    const marker = log.indexOf('\n[buildfleet] log truncated');
    expect(Buffer.byteLength(log.slice(0, marker))).toBeLessThanOrEqual(cap);
    expect(Buffer.byteLength(log.slice(0, marker))).toBeGreaterThan(cap - 200);
    expect(b!.attempts[0]).toMatchObject({ logTruncated: true, logBytes: Buffer.byteLength(log) });
    // The artifact written after the output shows the script ran to its end.
    const arts = (await (await ctl.api('GET', paths.artifacts(build.id))).json()) as { artifacts: Array<{ name: string }> };
    expect(arts.artifacts.map((a) => a.name)).toEqual(['finished.txt']);
    // The script printed about 1 MiB; the worker stopped sending soon after the cap.
    const received = (await ctl.ctl.app.buildfleet.metrics.logBytes.get()).values[0]!.value;
    expect(received).toBeGreaterThan(cap);
    expect(received).toBeLessThan(cap + 256 * 1024);
  });
});
