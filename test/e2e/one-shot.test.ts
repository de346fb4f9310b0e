/**
 * One-shot and idle-exit workers for autoscalers (issue 13): `buildfleet
 * worker --once` and `--idle-timeout SECONDS` as real child processes
 * against a controller in this process (SQLite). A worker that leaves this
 * way deregisters itself: the controller does not list it at all (not even
 * offline), and it prints one summary line per build on stdout.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ENROLLMENT_TOKEN, startTestController, type TestController } from '../support/controller.js';
import { childEnv, startService, type Service } from '../support/process.js';
import { tarGz } from '../../packages/worker/test/support/tarball.js';

let ctl: TestController | undefined;
let dir: string | undefined;
const services: Service[] = [];

afterEach(async () => {
  for (const s of services.splice(0)) await s.stop(2_000);
  await ctl?.close();
  ctl = undefined;
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

async function setup(): Promise<{ ctl: TestController; dir: string }> {
  dir = await mkdtemp(join(tmpdir(), 'bf-oneshot-'));
  ctl = await startTestController({ config: { heartbeatIntervalMs: 300, leaseMs: 10_000 } });
  return { ctl, dir };
}

function worker(flags: string[], dataDir: string): Service {
  const s = startService(
    ['worker', ...flags],
    childEnv({ BUILDFLEET_CONTROLLER_URL: ctl!.url, BUILDFLEET_ENROLLMENT_TOKEN: ENROLLMENT_TOKEN, BUILDFLEET_DATA_DIR: dataDir, BUILDFLEET_CONCURRENCY: '2' }),
  );
  services.push(s);
  return s;
}

/** Resolves with the exit code, or fails after `ms` showing what the worker printed. */
async function exitWithin(s: Service, ms: number): Promise<number | null> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`worker still running after ${ms} ms:\n${s.output()}`)), ms);
  });
  try {
    return await Promise.race([s.exited, late]);
  } finally {
    clearTimeout(timer);
  }
}

describe('buildfleet worker --once / --idle-timeout (child processes)', () => {
  it('--once runs exactly one build of two queued, reports it, deregisters and exits 0', { timeout: 90_000 }, async () => {
    const { ctl, dir } = await setup();
    const a = await ctl.api.submit({ script: 'echo first', name: 'first build' }, tarGz([]));
    const b = await ctl.api.submit({ script: 'echo second' }, tarGz([]));
    const w = worker(['--once'], join(dir, 'w1'));
    expect(await exitWithin(w, 60_000)).toBe(0);

    expect((await ctl.api.build(a.id)).state).toBe('succeeded');
    expect((await ctl.api.build(b.id)).state).toBe('queued');
    const lines = w.output().split('\n').filter((l) => l.startsWith('build '));
    expect(lines).toEqual([expect.stringMatching(new RegExp(`^build ${a.id} attempt 1: succeeded \\(exit 0\\) in \\d+\\.\\ds "first build"$`))]);
    expect(w.output()).toContain('worker deregistered');
    // Not lost, not offline: gone.
    expect(await ctl.api.workers()).toEqual([]);
    // The identity file keeps no worker id: the next start registers as new.
    expect(JSON.parse(await readFile(join(dir, 'w1', 'worker', 'identity.json'), 'utf8'))).not.toHaveProperty('workerId');
  });

  it('--idle-timeout 2 exits 0 after two seconds without a build, deregistered', { timeout: 90_000 }, async () => {
    const { ctl, dir } = await setup();
    const w = worker(['--idle-timeout', '2'], join(dir, 'w2'));
    let startedAt = 0;
    const started = new Promise<void>((resolve) =>
      w.proc.stderr!.on('data', () => {
        if (!startedAt && / started/.test(w.output())) {
          startedAt = performance.now();
          resolve();
        }
      }),
    );
    await started;
    expect(await exitWithin(w, 30_000)).toBe(0);
    // The timer starts after registration, before "started" is printed: never earlier than 2 s after it.
    expect(performance.now() - startedAt).toBeGreaterThanOrEqual(1_900);
    expect(w.output()).toContain('idle timeout reached');
    expect(w.output()).toContain('worker deregistered');
    expect(await ctl.api.workers()).toEqual([]);
  });
});
