/**
 * The worker against the real controller (SQLite): the two flows of docs/design.md
 * end to end — a build from submission to artifacts, and a worker through
 * token refresh, 401, deletion and cancellation.
 */
import fs from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FakeClock, paths, systemClock, type Build } from '@buildfleet/protocol';
import { startWorker, type RunningWorker } from '../../src/agent.js';
import type { BuildResult } from '../../src/build-run.js';
import { IdentityStore } from '../../src/identity.js';
import { isAlive } from '../../src/process.js';
import { silentLogger } from '../../src/logger.js';
import { heartbeat, makeSession, tempDir, testConfig } from '../support/harness.js';
import { tarGz } from '../support/tarball.js';
import { once, waitFor } from '../support/wait.js';
import { startCtl, type Ctl } from './harness.js';

let ctl: Ctl | undefined;
let dir: string;
const workers: RunningWorker[] = [];
const cleanups: (() => void)[] = [];

beforeEach(async () => {
  dir = await tempDir();
});
afterEach(async () => {
  for (const c of cleanups.splice(0)) c();
  for (const w of workers.splice(0)) await w.stop().catch(() => undefined);
  await ctl?.close();
  ctl = undefined;
  await fs.rm(dir, { recursive: true, force: true });
});

async function worker(over: Parameters<typeof testConfig>[2] = {}): Promise<RunningWorker> {
  const w = await startWorker(testConfig(ctl!, dir, { cancelGraceMs: 1_000, ...over }), { logger: silentLogger, retryBaseMs: 10, retryMaxMs: 100 });
  workers.push(w);
  return w;
}

async function finished(id: string, timeoutMs = 20_000): Promise<Build> {
  let b: Build | undefined;
  await waitFor(
    async () => {
      b = await ctl!.build(id);
      return ['succeeded', 'failed', 'canceled', 'timed_out'].includes(b.state);
    },
    { what: `build ${id} to finish`, timeoutMs, intervalMs: 50 },
  );
  return b!;
}

async function logText(id: string): Promise<string> {
  return (await ctl!.api('GET', `${paths.logs(id)}?offset=0`)).text();
}

describe('worker against the real controller', () => {
  it('runs a build end to end: source, ordered logs, artifacts with SHA-256, outcome', async () => {
    ctl = await startCtl();
    const w = await worker();
    const source = tarGz([
      { path: 'src/', type: 'Directory' },
      { path: 'src/input.txt', data: 'input data\n' },
    ]);
    const build = await ctl.submit(
      {
        script: 'cat src/input.txt; i=0; while [ $i -lt 3000 ]; do echo "line $i"; echo "err $i" >&2; i=$((i+1)); done; mkdir out; printf "result\\n" > out/result.txt',
        artifacts: ['out/*.txt'],
      },
      source,
    );
    const b = await finished(build.id);
    expect(b).toMatchObject({ state: 'succeeded', exitCode: 0, workerId: w.workerId, attempt: 1 });
    const log = await logText(build.id);
    expect(log.startsWith('input data\nline 0\nerr 0\nline 1\nerr 1\n')).toBe(true);
    expect(log).toContain('line 2999\nerr 2999\n');
    const arts = (await (await ctl.api('GET', paths.artifacts(build.id))).json()) as { artifacts: { name: string; size: number; sha256: string }[] };
    expect(arts.artifacts).toEqual([{ name: 'out/result.txt', size: 7, sha256: createHash('sha256').update('result\n').digest('hex') }]);
    const dl = await ctl.api('GET', paths.artifact(build.id, 'out/result.txt'));
    expect(await dl.text()).toBe('result\n');
  });

  it('a source escaping the workspace fails the build with the reason in its message', async () => {
    ctl = await startCtl();
    await worker();
    const build = await ctl.submit({ script: 'echo ran' }, tarGz([{ path: '../../escape.txt', data: 'x' }]));
    const b = await finished(build.id);
    expect(b.state).toBe('failed');
    expect(await logText(build.id)).toMatch(/could not prepare the source.*escape\.txt/);
  });

  it('refreshes short-lived access tokens proactively while a build runs, keeping its id', async () => {
    ctl = await startCtl({ accessTokenTtlMs: 1_000 });
    const w = await worker();
    const id = w.workerId;
    let refreshes = 0;
    w.events.on('reregistered', () => refreshes++);
    const build = await ctl.submit({ script: 'i=0; while [ $i -lt 25 ]; do echo tick $i; sleep 0.1; i=$((i+1)); done' }, tarGz([]));
    const b = await finished(build.id);
    expect(b.state, `${b.message} ${await logText(build.id)}`).toBe('succeeded');
    expect(refreshes).toBeGreaterThanOrEqual(2);
    expect(w.workerId).toBe(id);
    expect((await logText(build.id)).match(/^tick \d+$/gm)).toHaveLength(25);
  });

  it('(a) 50 concurrent calls with an expired token share one re-registration', async () => {
    const clock = new FakeClock(Date.now());
    ctl = await startCtl({ accessTokenTtlMs: 60_000 }, clock);
    const r = makeSession(ctl as never, dir, { clock: systemClock });
    cleanups.push(() => r.session.close());
    await r.session.start();
    const id = r.session.workerId;
    let reregistrations = 0;
    r.session.on('reregistering', () => reregistrations++);
    await clock.advance(61_000); // the controller's clock: every access token it issued has expired
    const results = await Promise.all(Array.from({ length: 50 }, () => heartbeat(r)));
    expect(results).toHaveLength(50);
    expect(reregistrations).toBe(1);
    expect(r.session.workerId).toBe(id);
  });

  it('a deleted worker registers as new and rewrites its identity file', async () => {
    ctl = await startCtl();
    const w = await worker();
    const oldId = w.workerId;
    const re = once(w.events, 'registered', 10_000);
    const del = await ctl.api('DELETE', paths.worker(oldId));
    expect(del.status).toBeLessThan(300);
    const [ev] = (await re) as [{ kind: string; workerId: string }];
    expect(ev.kind).toBe('new');
    expect(ev.workerId).not.toBe(oldId);
    const saved = await new IdentityStore(`${dir}/worker`).load();
    expect(saved.workerId).toBe(ev.workerId);
    // And it still runs builds.
    const build = await ctl.submit({ script: 'echo after' }, tarGz([]));
    expect((await finished(build.id)).workerId).toBe(ev.workerId);
  });

  it('cancel through the API reaches the running build; the build ends canceled', async () => {
    ctl = await startCtl();
    const w = await worker();
    const running = once(w.events, 'build:running', 10_000);
    const build = await ctl.submit({ script: 'echo started; sleep 300' }, tarGz([]));
    await running;
    const res = await ctl.api('POST', paths.cancel(build.id));
    expect(res.status).toBe(200);
    const b = await finished(build.id);
    expect(b.state).toBe('canceled');
    await waitFor(() => w.builds.size === 0, { what: 'the run to end' });
  });

  it('drain: the running build finishes and the worker stops without taking the next one', async () => {
    ctl = await startCtl();
    const w = await worker();
    const running = once(w.events, 'build:running', 10_000);
    const first = await ctl.submit({ script: 'sleep 0.5; echo first-done' }, tarGz([]));
    await running;
    const stopped = w.stop({ drain: true });
    const second = await ctl.submit({ script: 'echo second' }, tarGz([]));
    await stopped;
    expect((await finished(first.id)).state).toBe('succeeded');
    expect((await ctl.build(second.id)).state).toBe('queued');
  });

  it('a drain from the controller keeps the worker connected and idle; resume gives it builds again', async () => {
    ctl = await startCtl();
    const w = await worker();
    const source = tarGz([{ path: 'README', data: 'x' }]);
    expect((await ctl.api('POST', paths.drain(w.workerId))).status).toBe(200);
    await once(w.events, 'draining');
    const queued = await ctl.submit({ script: 'echo resumed' }, source);
    // Still there and heartbeating, but given nothing while drained.
    await once(w.events, 'heartbeat');
    await once(w.events, 'heartbeat');
    expect((await ctl.build(queued.id)).state).toBe('queued');
    expect((await ctl.api('POST', paths.resume(w.workerId))).status).toBe(200);
    await once(w.events, 'resumed');
    expect(await finished(queued.id)).toMatchObject({ state: 'succeeded', workerId: w.workerId });
  });

  it('a worker restarted after a crash (SIGKILL) kills the old process group; the build runs again as attempt 2', async () => {
    ctl = await startCtl({ leaseMs: 1_500, heartbeatIntervalMs: 200 });
    const child = spawn(process.execPath, ['--import', 'tsx', '--conditions=source', fileURLToPath(new URL('./support/worker-main.ts', import.meta.url))], {
      // shell: a sandboxed build dies with its worker (--die-with-parent); this is about what outlives it.
      env: { ...process.env, BUILDFLEET_CONTROLLER_URL: ctl.url, BUILDFLEET_ENROLLMENT_TOKEN: ctl.enrollmentToken, BUILDFLEET_DATA_DIR: dir, BUILDFLEET_EXECUTOR: 'shell' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const exited = new Promise((resolve) => child.once('exit', resolve));
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    try {
      const build = await ctl.submit({ script: 'if [ "$BUILDFLEET_BUILD_ATTEMPT" = 1 ]; then sleep 300; fi; echo attempt $BUILDFLEET_BUILD_ATTEMPT done', maxAttempts: 2 }, tarGz([]));
      await waitFor(() => /RUNNING \S+ \d+/.test(out), { what: 'the child worker to run the build', timeoutMs: 20_000 });
      const pgid = Number(/RUNNING \S+ (\d+)/.exec(out)![1]);
      const firstId = /REGISTERED (\S+)/.exec(out)![1];
      child.kill('SIGKILL');
      await exited;
      expect(isAlive(pgid)).toBe(true); // the build's process group outlived its worker
      const b = await worker(); // same data dir: same identity, new bootId
      expect(isAlive(pgid)).toBe(false);
      expect(b.workerId).toBe(firstId);
      const done = await finished(build.id, 20_000);
      expect(done).toMatchObject({ state: 'succeeded', attempt: 2, workerId: firstId });
      expect(await logText(build.id)).toContain('attempt 2 done');
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('heartbeats cut off: the worker fences its build after leaseMs, the controller requeues it, attempt 2 succeeds', async () => {
    ctl = await startCtl({ leaseMs: 1_500, heartbeatIntervalMs: 200, ackTimeoutMs: 5_000 });
    let partitioned = false;
    const transport = (url: string, init: RequestInit) =>
      partitioned && url.endsWith('/heartbeat') ? Promise.reject(new TypeError('fetch failed (partition)')) : fetch(url, init);
    const w = await startWorker(testConfig(ctl, dir, { cancelGraceMs: 60_000 }), { logger: silentLogger, retryBaseMs: 10, retryMaxMs: 100, transport });
    workers.push(w);
    const running = once(w.events, 'build:running', 10_000);
    const build = await ctl.submit({ script: 'trap "" TERM; if [ "$BUILDFLEET_BUILD_ATTEMPT" = 1 ]; then sleep 300; fi; echo attempt $BUILDFLEET_BUILD_ATTEMPT ok' }, tarGz([]));
    const [{ pgid }] = (await running) as [{ pgid: number }];
    const fenced = once(w.events, 'build:fenced', 10_000);
    partitioned = true;
    expect(await fenced).toEqual([build.id]);
    await waitFor(() => !isAlive(pgid), { what: 'the fenced build to be killed', timeoutMs: 2_000 });
    partitioned = false;
    const done = await finished(build.id, 20_000);
    expect(done).toMatchObject({ state: 'succeeded', attempt: 2 });
    expect(done.attempts[0]).toMatchObject({ attempt: 1 });
    expect(done.attempts[0]!.state).not.toBe('succeeded');
  });
});
