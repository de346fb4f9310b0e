import fs from 'node:fs/promises';
import path from 'node:path';
import { EventEmitter } from 'node:events';
import { createHash } from 'node:crypto';
import { spawn } from 'node:child_process';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { FakeClock, paths, systemClock, type Clock, type LogChunkRequest } from '@buildfleet/protocol';
import { ActiveBuilds } from '../src/active-builds.js';
import { LocalCache } from '../src/cache/local.js';
import type { BuildResult } from '../src/build-run.js';
import { createHttpClient } from '../src/client/http-controller-client.js';
import { ShellExecutor } from '../src/executor/shell.js';
import { PidDir, isAlive } from '../src/process.js';
import { silentLogger } from '../src/logger.js';
import { BareWorker, startUnitController, type UnitController } from './support/controller.js';
import { Faults } from './support/faults.js';
import { tempDir, testConfig } from './support/harness.js';
import { tarGz } from './support/tarball.js';
import { alivePids, expectAllGone, pidsFromLog } from './support/procs.js';
import { waitFor } from './support/wait.js';

// The executor (ActiveBuilds and the shell executor) against the real
// controller: a registered worker with no agent takes each build with one
// poll and hands it over. Faults in front of the controller make what it
// cannot on purpose: lost answers, a chosen refusal, a body that stalls.
let ctl: UnitController;
let fake: Faults;
let worker: BareWorker;
let dir: string;
let executors: ActiveBuilds[] = [];

beforeAll(async () => {
  ctl = await startUnitController();
});
afterAll(async () => {
  await ctl?.close();
});
beforeEach(async () => {
  fake = new Faults();
  worker = await BareWorker.register(ctl);
  dir = await tempDir();
});
afterEach(async () => {
  for (const e of executors) e.stopAll('lost', 'test over');
  await Promise.all(executors.map((e) => e.idle()));
  executors = [];
  fake.releaseAll();
  await fs.rm(dir, { recursive: true, force: true });
});

function makeExecutor(opts: { clock?: Clock; cancelGraceMs?: number; logChunkBytes?: number } = {}) {
  const clock = opts.clock ?? systemClock;
  const config = testConfig(ctl, dir, { cancelGraceMs: opts.cancelGraceMs ?? 2_000 });
  const client = createHttpClient({ urls: config.controllerUrls, clock, requestTimeoutMs: config.requestTimeoutMs, transport: fake.transport, backoff: { baseMs: 1, maxMs: 5 } });
  const events = new EventEmitter();
  const shell = new ShellExecutor({ stateDir: config.stateDir, clock, logger: silentLogger });
  const ex = new ActiveBuilds({
    client,
    executor: shell,
    clock,
    config,
    logger: silentLogger,
    events,
    workerId: () => worker.id,
    localCache: new LocalCache(path.join(config.stateDir, 'caches'), config.cacheMaxBytes),
    logChunkBytes: opts.logChunkBytes,
  });
  executors.push(ex);
  return { ex, shell, events, config };
}

/** Submits a build, takes it with the bare worker and launches it. */
async function launch(ex: ActiveBuilds, spec: Record<string, unknown>, source?: Buffer) {
  const { build: b, assigned } = await worker.take(spec, source ?? tarGz([{ path: 'hello.txt', data: 'hello from the source\n' }]));
  const run = ex.launch(assigned)!;
  return { b, run, assigned };
}

const logOf = (id: string) => ctl.logText(id);
/** The build writes (start, logs, artifacts, finish, source) the executor sent for `id`, in order. */
const routesOf = (id: string) => fake.requests.filter((r) => r.path.includes(id)).map((r) => r.route);

describe('executor', () => {
  it('runs the script in a fresh workspace with the source unpacked and reports the exit code', async () => {
    const { ex, config } = makeExecutor();
    const ok = await launch(ex, { script: 'cat hello.txt; echo "id=$BUILDFLEET_BUILD_ID attempt=$BUILDFLEET_BUILD_ATTEMPT x=$X"; pwd', env: { X: 'y' } });
    const bad = await launch(ex, { script: 'echo failing >&2; exit 3' });
    const [r1, r2] = await Promise.all([ok.run.done, bad.run.done]);
    expect(r1).toMatchObject({ reported: true, outcome: 'succeeded', exitCode: 0 });
    expect(r2).toMatchObject({ reported: true, outcome: 'failed', exitCode: 3 });
    expect(await ctl.build(ok.b.id)).toMatchObject({ attempt: 1, state: 'succeeded', exitCode: 0 });
    expect(await ctl.build(bad.b.id)).toMatchObject({ state: 'failed', exitCode: 3 });
    const log = await logOf(ok.b.id);
    expect(log).toContain('hello from the source');
    expect(log).toContain(`id=${ok.b.id} attempt=1 x=y`);
    expect(log).toContain(path.join(config.stateDir, 'workspaces', `${ok.b.id}-1`));
    expect(await logOf(bad.b.id)).toContain('failing');
    // Workspaces are deleted afterwards; no pid file stays.
    expect(await fs.readdir(path.join(config.stateDir, 'workspaces'))).toEqual([]);
    expect(await fs.readdir(path.join(config.stateDir, 'pids'))).toEqual([]);
    // Start came before any log, finish after the last one.
    const order = routesOf(ok.b.id);
    expect(order[0]).toBe('start');
    expect(order.at(-1)).toBe('finish');
  });

  it('does not leak the worker credentials into the build environment', async () => {
    process.env.BUILDFLEET_ENROLLMENT_TOKEN = 'bfe_secret_should_not_leak';
    try {
      const { ex } = makeExecutor();
      const { b, run } = await launch(ex, { script: 'env' });
      await run.done;
      expect(await logOf(b.id)).not.toContain('bfe_secret_should_not_leak');
    } finally {
      delete process.env.BUILDFLEET_ENROLLMENT_TOKEN;
    }
  });

  it('streams >1 MiB of stdout and stderr as contiguous chunks, in write order, stored once despite lost answers', async () => {
    const { ex } = makeExecutor();
    fake.dropNextAnswer('logs', 3); // stored by the controller, answer lost: the worker must re-send the same chunk
    const n = 15_000;
    const { b, run } = await launch(ex, {
      script: `i=0; while [ $i -lt ${n} ]; do echo "out $i abcdefghijklmnopqrstuvwxyz0123456789"; echo "err $i abcdefghijklmnopqrstuvwxyz0123456789" >&2; i=$((i+1)); done`,
    });
    const r = await run.done;
    expect(r.outcome).toBe('succeeded');
    // The chunks the controller accepted: contiguous, numbered in order, each stored once.
    const stored = fake.of('logs').filter((x) => x.status === 200).map((x) => x.body as LogChunkRequest);
    let offset = 0;
    stored.forEach((c, i) => {
      expect(c.seq).toBe(i);
      expect(c.offset).toBe(offset);
      offset += Buffer.from(c.data, 'base64').length;
    });
    expect(offset).toBeGreaterThan(1024 * 1024);
    const text = await logOf(b.id);
    expect((await ctl.build(b.id)).attempts[0]!.logBytes).toBe(offset);
    expect(Buffer.byteLength(text)).toBe(offset);
    const lines = text.split('\n');
    const expected: string[] = [];
    for (let i = 0; i < n; i++) expected.push(`out ${i} abcdefghijklmnopqrstuvwxyz0123456789`, `err ${i} abcdefghijklmnopqrstuvwxyz0123456789`);
    expect(lines.slice(0, 2 * n)).toEqual(expected);
    // Every dropped answer was followed by a re-send of the same (seq, offset, data).
    const logReqs = fake.of('logs');
    const dropped = logReqs.filter((x) => x.status === 0);
    expect(dropped).toHaveLength(3);
    for (const d of dropped) {
      const again = logReqs.find((x) => x.n > d.n);
      expect(again!.body).toEqual(d.body);
    }
  });

  it('a script past timeoutSeconds is stopped (SIGTERM, grace, SIGKILL) and reported timed_out', async () => {
    const clock = new FakeClock();
    const { ex, events } = makeExecutor({ clock, cancelGraceMs: 5_000 });
    const running = new Promise<{ pgid: number }>((resolve) => events.once('build:running', resolve));
    // Ignores SIGTERM (inherited by the sleep), so only the SIGKILL after the grace period ends it.
    const { b, run } = await launch(ex, { script: 'trap "" TERM; echo started; sleep 300; echo never', timeoutSeconds: 10 });
    const { pgid } = await running;
    const t0 = clock.monotonic();
    // The trap must be in place before the timeout: wait for "started" (log flushes run on the fake clock).
    await waitFor(
      async () => {
        await clock.advance(10);
        return (await logOf(b.id)).includes('started');
      },
      { what: 'the script to start', timeoutMs: 10_000 },
    );
    expect(run.phase).toBe('running');
    await clock.advance(10_000 - (clock.monotonic() - t0)); // timeout → SIGTERM, which the script ignores
    expect(isAlive(pgid)).toBe(true);
    expect(run.phase).toBe('running');
    await clock.advance(5_000); // grace → SIGKILL
    const r = await run.done;
    expect(r).toMatchObject({ outcome: 'timed_out', reported: true });
    expect(await ctl.build(b.id)).toMatchObject({ state: 'timed_out', exitCode: 137 });
    await expectAllGone([pgid]);
    expect(await logOf(b.id)).not.toContain('never');
  });

  it('cancel kills the whole process tree, grandchildren included, and reports canceled', async () => {
    const { ex } = makeExecutor({ cancelGraceMs: 2_000 });
    const { b, run } = await launch(ex, {
      script: [
        'sleep 300 & echo "PID $!"',
        'sh -c "sleep 300 & echo PID \\$!; wait" &',
        '(sleep 300 & echo "PID $!"; wait) & echo "PID $!"',
        'echo "PID $$"',
        'sleep 0.2; echo ready',
        'wait',
      ].join('\n'),
    });
    await waitFor(async () => (await logOf(b.id)).includes('ready'), { what: 'the build to be ready', timeoutMs: 10_000 });
    const pids = pidsFromLog(await logOf(b.id));
    expect(pids.length).toBe(5);
    expect(alivePids(pids)).toEqual(pids);
    ex.stop(b.id, 'canceled', 'canceled by test');
    const r = await run.done;
    expect(r).toMatchObject({ outcome: 'canceled', reported: true });
    expect((await ctl.build(b.id)).state).toBe('canceled');
    await expectAllGone(pids);
  });

  it('(g) LEASE_LOST on a log write kills the process tree at once and drops the build (no finish)', async () => {
    const { ex, events } = makeExecutor({ cancelGraceMs: 60_000 });
    const dropped = new Promise<BuildResult>((resolve) => events.once('build:dropped', resolve));
    const { b, run } = await launch(ex, {
      script: 'trap "" TERM; sleep 300 & echo "PID $!"; echo "PID $$"; echo ready; while :; do echo tick; sleep 0.02; done',
    });
    await waitFor(async () => (await logOf(b.id)).includes('ready'), { what: 'the build to be ready', timeoutMs: 10_000 });
    const pids = pidsFromLog(await logOf(b.id));
    expect(alivePids(pids)).toHaveLength(2);
    await ctl.loseLeases(); // the controller's reaper requeues it as attempt 2
    expect((await ctl.build(b.id)).attempt).toBe(2);
    const r = await run.done;
    expect(await dropped).toBe(r);
    expect(r.reported).toBe(false);
    expect(r.dropReason).toMatch(/lease lost/);
    // TERM is ignored and the grace is a minute: only an immediate SIGKILL ends it this fast.
    await expectAllGone(pids);
    expect(fake.count('finish')).toBe(0);
    expect(fake.of('logs').some((x) => x.status === 409)).toBe(true);
  });

  it.each([
    ['a ../ path', [{ path: '../evil.txt', data: 'x' }], /outside|'\.\.'/],
    ['an absolute path', [{ path: '/tmp/bf-evil-abs.txt', data: 'x' }], /absolute/],
    ['a symlink to an absolute path', [{ path: 'link', type: 'SymbolicLink' as const, linkpath: '/etc' }], /absolute/],
    ['a symlink leaving the workspace', [{ path: 'a/link', type: 'SymbolicLink' as const, linkpath: '../../..' }], /outside/],
    [
      'a file written through a symlink',
      [
        { path: 'link', type: 'SymbolicLink' as const, linkpath: 'sub' },
        { path: 'link/evil.txt', data: 'x' },
      ],
      /through the symlink/,
    ],
    ['a hard link to a file outside', [{ path: 'hard', type: 'Link' as const, linkpath: '../../outside' }], /outside|'\.\.'/],
    [
      'a chain of symlinks that resolves outside',
      [
        { path: 'a', type: 'SymbolicLink' as const, linkpath: '.' },
        { path: 'b', type: 'SymbolicLink' as const, linkpath: 'a/..' },
      ],
      /resolves outside/,
    ],
  ])('a source with %s fails the build with a clear message and writes nothing outside', async (_name, entries, pattern) => {
    const { ex, config } = makeExecutor();
    const { b, run } = await launch(ex, { script: 'echo should-not-run' }, tarGz([{ path: 'ok.txt', data: 'fine' }, ...entries]));
    const r = await run.done;
    expect(r).toMatchObject({ outcome: 'failed', reported: true, exitCode: null });
    expect(r.message).toMatch(pattern);
    expect(r.message).toMatch(/could not prepare the source/);
    expect(await logOf(b.id)).toContain(r.message!);
    expect(await logOf(b.id)).not.toContain('should-not-run');
    const everything = await fs.readdir(dir, { recursive: true });
    expect(everything.filter((f) => /evil|outside/.test(f))).toEqual([]);
    expect(await fs.readdir(path.join(config.stateDir, 'workspaces'))).toEqual([]);
    await expect(fs.stat('/tmp/bf-evil-abs.txt')).rejects.toThrow();
  });

  it('uploads artifacts matching the globs with their SHA-256, skipping symlinks that leave the workspace', async () => {
    const { ex } = makeExecutor();
    const { b, run } = await launch(ex, {
      script: [
        'mkdir -p out/nested',
        'printf "artifact a\\n" > out/a.txt',
        'head -c 300000 /dev/urandom > out/nested/b.bin',
        'ln -s /etc/hostname out/escape.txt',
        'echo not-an-artifact > other.txt',
      ].join('\n'),
      artifacts: ['out/**', 'missing/*.zip'],
    });
    const r = await run.done;
    expect(r.outcome).toBe('succeeded');
    const log = await logOf(b.id);
    expect(log).toContain('warning: artifact pattern "missing/*.zip" matched no files');
    expect(log).not.toContain('pattern "out/**" matched no files');
    const { artifacts } = await ctl.api.ok<{ artifacts: { name: string; size: number; sha256: string }[] }>('GET', paths.artifacts(b.id));
    expect(artifacts.map((x) => x.name).sort()).toEqual(['out/a.txt', 'out/nested/b.bin']);
    const content = async (name: string) => Buffer.from(await (await ctl.api.req('GET', paths.artifact(b.id, name))).arrayBuffer());
    const a = artifacts.find((x) => x.name === 'out/a.txt')!;
    expect((await content(a.name)).toString()).toBe('artifact a\n');
    expect(a.sha256).toBe(createHash('sha256').update('artifact a\n').digest('hex'));
    const bin = artifacts.find((x) => x.name === 'out/nested/b.bin')!;
    expect(bin.size).toBe(300_000);
    expect(bin.sha256).toBe(createHash('sha256').update(await content(bin.name)).digest('hex'));
    expect(log).not.toMatch(/escape\.txt uploaded/);
    // Artifacts and logs come before finish.
    const routes = routesOf(b.id);
    expect(routes.lastIndexOf('artifact')).toBeLessThan(routes.indexOf('finish'));
    expect(routes.lastIndexOf('logs')).toBeLessThan(routes.indexOf('finish'));
  });

  it('a build the controller canceled before start is dropped without running', async () => {
    const { ex } = makeExecutor();
    const { assigned } = await worker.take({ script: 'echo ran' });
    await ctl.api.ok('POST', paths.cancel(assigned.id));
    const run = ex.launch(assigned)!;
    const r = await run.done;
    expect(r).toMatchObject({ reported: false });
    expect(r.dropReason).toMatch(/INVALID_TRANSITION/);
    expect(fake.count('logs')).toBe(0);
  });

  it('ignores a re-delivered build that already runs', async () => {
    const { ex } = makeExecutor();
    const { b, run, assigned } = await launch(ex, { script: 'sleep 0.1' });
    // The poll answer came again (a lost answer): the same assignment, launched twice.
    expect(ex.launch(assigned)).toBeUndefined();
    await run.done;
    expect(fake.of('start').filter((x) => x.path.includes(b.id))).toHaveLength(1);
    expect((await ctl.build(b.id)).state).toBe('succeeded');
  });

  it('on start, kills process groups a previous run left behind (and only verified group leaders)', async () => {
    const { shell, config } = makeExecutor();
    const child = spawn('/bin/sh', ['-c', 'sleep 300 & wait'], { detached: true, stdio: 'ignore' });
    const exited = new Promise((resolve) => child.once('exit', resolve));
    const pids = new PidDir(config.stateDir);
    await pids.record('left-behind', child.pid!);
    // A pid file naming a process that is not a group leader (this test process's parent group member) is left alone.
    const notLeader = process.pid;
    await fs.writeFile(path.join(pids.dir, 'not-a-leader'), JSON.stringify({ pgid: notLeader }));
    const killed = await shell.cleanupLeftovers();
    expect(killed).toEqual([child.pid]);
    await exited;
    expect(isAlive(child.pid!)).toBe(false);
    expect(isAlive(process.pid)).toBe(true);
    expect(await fs.readdir(pids.dir)).toEqual([]);
  });

  it('LEASE_LOST on finish or on an artifact upload drops the build without reporting', async () => {
    const { ex } = makeExecutor();
    fake.failNext('finish', 'LEASE_LOST');
    const a = await launch(ex, { script: 'echo a' });
    expect(await a.run.done).toMatchObject({ reported: false, dropReason: expect.stringMatching(/lease lost/) });
    fake.failNext('artifact', 'LEASE_LOST');
    const b = await launch(ex, { script: 'echo x > art.txt', artifacts: ['*.txt'] });
    expect(await b.run.done).toMatchObject({ reported: false });
    expect(fake.count('finish')).toBe(1); // only the refused one of the first build
    expect((await ctl.build(b.b.id)).state).toBe('running');
  });

  it('retries an artifact upload whose answer was lost, with the same name and checksum (stored once)', async () => {
    const { ex } = makeExecutor();
    fake.dropNextAnswer('artifact');
    const { b, run } = await launch(ex, { script: 'printf data > art.txt', artifacts: ['art.txt'] });
    expect(await run.done).toMatchObject({ outcome: 'succeeded', reported: true });
    const puts = fake.of('artifact');
    expect(puts.map((p) => p.status)).toEqual([0, 200]);
    expect(await (await ctl.api.req('GET', paths.artifact(b.id, 'art.txt'))).text()).toBe('data');
    expect((await ctl.api.ok<{ artifacts: unknown[] }>('GET', paths.artifacts(b.id))).artifacts).toHaveLength(1);
  });

  it('a log chunk the controller refuses (OFFSET_MISMATCH) does not hide the outcome', async () => {
    const { ex } = makeExecutor();
    fake.failNext('logs', 'OFFSET_MISMATCH');
    const { b, run } = await launch(ex, { script: 'echo hi; exit 4' });
    expect(await run.done).toMatchObject({ outcome: 'failed', exitCode: 4, reported: true });
    expect(await ctl.build(b.id)).toMatchObject({ state: 'failed', exitCode: 4 });
  });

  it('a source download that stalls mid-body is abandoned after requestTimeoutMs and retried', async () => {
    const clock = new FakeClock();
    const { ex } = makeExecutor({ clock });
    fake.stallNextAnswer('source');
    const big = tarGz([{ path: 'big.txt', data: Buffer.alloc(200_000, 'x') }, { path: 'hello.txt', data: 'hello\n' }]);
    const { b, run } = await launch(ex, { script: 'cat hello.txt; wc -c < big.txt' }, big);
    await fake.waitForRequest('source');
    await waitFor(
      async () => {
        await clock.advance(1_000); // requestTimeoutMs is 5000 in tests
        return fake.count('source') >= 2;
      },
      { what: 'the source download to be retried', timeoutMs: 10_000 },
    );
    expect(await run.done).toMatchObject({ outcome: 'succeeded', reported: true });
    expect(await logOf(b.id)).toMatch(/hello\n\s*200000\n/);
    expect(fake.count('source')).toBe(2);
  });
});
