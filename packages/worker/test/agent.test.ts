import fs from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FakeClock, flushMicrotasks, type Clock } from '@buildfleet/protocol';
import { startWorker, type RunningWorker } from '../src/agent.js';
import type { BuildResult } from '../src/build-run.js';
import { silentLogger } from '../src/logger.js';
import { SessionFatalError } from '../src/session.js';
import { FakeController } from './support/fake-controller.js';
import { tempDir, testConfig } from './support/harness.js';
import { alivePids, expectAllGone, pidsFromLog } from './support/procs.js';
import { once, waitFor } from './support/wait.js';

let fake: FakeController;
let dir: string;
const workers: RunningWorker[] = [];

beforeEach(async () => {
  fake = await FakeController.start({ pollHoldMs: 50, settings: { heartbeatIntervalMs: 1_000, leaseMs: 6_000, pollWaitMs: 30_000 } });
  dir = await tempDir();
});
afterEach(async () => {
  for (const w of workers.splice(0)) await w.stop().catch(() => undefined);
  await fake.close();
  await fs.rm(dir, { recursive: true, force: true });
});

async function start(clock?: Clock, over: Parameters<typeof testConfig>[2] = {}, dataDir = dir): Promise<RunningWorker> {
  const w = await startWorker(testConfig(fake, dataDir, { cancelGraceMs: 1_000, ...over }), {
    logger: silentLogger,
    retryBaseMs: 1,
    retryMaxMs: 5,
    ...(clock ? { clock } : {}),
  });
  workers.push(w);
  return w;
}

function nextEvent<T = unknown>(w: RunningWorker, event: string, timeoutMs = 10_000): Promise<T> {
  return once(w.events, event, timeoutMs).then((args) => args[0] as T);
}

const logOf = (id: string) => fake.logText(id).toString('utf8');

describe('agent', () => {
  it('registers, polls, runs a build end to end and reports it', async () => {
    const w = await start();
    expect(w.workerId).toBe([...fake.workers.keys()][0]);
    const finished = nextEvent<BuildResult>(w, 'build:finish');
    const b = fake.addBuild({ script: 'echo hello world' });
    const r = await finished;
    expect(r).toMatchObject({ buildId: b.id, outcome: 'succeeded', reported: true });
    expect(logOf(b.id)).toContain('hello world');
    const poll = fake.of('poll')[0]!;
    expect(poll.url).toContain('waitMs=30000');
    expect(poll.body).toEqual({ freeSlots: 1, activeBuildIds: [] });
    // Build writes use the build token, never the access token.
    for (const x of fake.requests.filter((q) => ['start', 'logs', 'finish', 'source'].includes(q.route))) {
      expect(x.token).toBe(fake.buildToken(b));
    }
  });

  it('runs up to maxConcurrentBuilds at once and reports free slots', async () => {
    const w = await start(undefined, { maxConcurrentBuilds: 2 });
    const a = fake.addBuild({ script: 'sleep 0.3' });
    const b = fake.addBuild({ script: 'sleep 0.3' });
    const c = fake.addBuild({ script: 'true' });
    await waitFor(() => [a, b, c].every((x) => fake.builds.get(x.id)!.finish), { what: 'three builds to finish', timeoutMs: 10_000 });
    await waitFor(() => w.builds.size === 0, { what: 'the runs to be removed' });
    const maxSlots = Math.max(...fake.of('poll').map((p) => (p.body as { freeSlots: number }).freeSlots));
    expect(maxSlots).toBe(2);
    expect(fake.of('poll').every((p) => (p.body as { freeSlots: number }).freeSlots > 0)).toBe(true);
  });

  it('(e) pauses polling while a proactive re-registration is in flight and resumes with the new token after it', async () => {
    fake.accessTokenTtlMs = 100_000;
    const clock = new FakeClock();
    const w = await start(clock);
    await fake.waitForRequest('poll');
    const oldToken = w.session.accessToken;
    const gate = fake.hold('register');
    const paused = nextEvent(w, 'poll:paused');
    await clock.advance(75_000); // 75% of the lifetime: refresh starts and is held at the controller
    await gate.arrived(1);
    await paused; // the poll loop reached the gate (the parked poll answered 204 meanwhile)
    const pollsWhilePaused = fake.count('poll');
    const registerAt = fake.of('register')[1]!.n;
    fake.releasePolls();
    await flushMicrotasks();
    expect(w.session.registering).toBe(true);
    const resumed = nextEvent(w, 'poll:resumed');
    fake.unhold('register');
    await resumed;
    const next = await fake.waitForRequest('poll', (p) => p.n > registerAt && p.token !== oldToken);
    expect(next.token).toBe(w.session.accessToken);
    // No poll reached the controller between the registration's arrival and its answer with the old token.
    const between = fake.of('poll').filter((p) => p.n > registerAt && p.token === oldToken);
    expect(between).toEqual([]);
    expect(fake.count('poll')).toBeGreaterThan(pollsWhilePaused);
  });

  it('401 on poll re-registers once, keeps the worker id, and polls on', async () => {
    const w = await start();
    await fake.waitForRequest('poll');
    const id = w.workerId;
    const re = nextEvent(w, 'reregistered');
    fake.expireTokens();
    await re;
    const n = fake.of('register')[1]!.n;
    await fake.waitForRequest('poll', (p) => p.n > n && p.status === undefined);
    expect(w.workerId).toBe(id);
    expect(fake.count('register')).toBe(2);
  });

  it('cancel from a heartbeat stops the build gracefully and reports canceled', async () => {
    const clock = new FakeClock();
    const w = await start(clock);
    const running = nextEvent(w, 'build:running');
    const b = fake.addBuild({ script: 'sleep 300 & echo "PID $!"; echo "PID $$"; wait' });
    await running;
    // The log flush timer runs on the fake clock: nudge it until the pids are uploaded.
    await waitFor(
      async () => {
        await clock.advance(50);
        return pidsFromLog(logOf(b.id)).length === 2;
      },
      { what: 'the build to print its pids', timeoutMs: 10_000 },
    );
    const pids = pidsFromLog(logOf(b.id));
    expect(alivePids(pids)).toEqual(pids);
    fake.cancel(b.id);
    const finished = nextEvent<BuildResult>(w, 'build:finish');
    const hb = nextEvent(w, 'heartbeat');
    await clock.advance(1_000); // heartbeat interval
    expect(await hb).toMatchObject({ cancel: [b.id] });
    const r = await finished;
    expect(r).toMatchObject({ outcome: 'canceled', reported: true });
    expect(fake.builds.get(b.id)!.finish).toMatchObject({ outcome: 'canceled' });
    await expectAllGone(pids);
  });

  it('abandon from a heartbeat kills the build at once and drops it without finish', async () => {
    const clock = new FakeClock();
    const w = await start(clock, { cancelGraceMs: 600_000 });
    const running = nextEvent<{ pgid: number }>(w, 'build:running');
    const b = fake.addBuild({ script: 'trap "" TERM; sleep 300' });
    const { pgid } = await running;
    fake.loseLease(b.id);
    const dropped = nextEvent<BuildResult>(w, 'build:dropped');
    await clock.advance(1_000);
    const r = await dropped;
    expect(r.dropReason).toMatch(/abandoned/);
    await expectAllGone([pgid]);
    expect(fake.count('finish')).toBe(0);
  });

  it('fences itself: a build whose lease was not renewed for leaseMs is stopped', async () => {
    const clock = new FakeClock();
    const w = await start(clock, { cancelGraceMs: 600_000 });
    const running = nextEvent<{ pgid: number }>(w, 'build:running');
    const b = fake.addBuild({ script: 'trap "" TERM; sleep 300' });
    const { pgid } = await running;
    fake.failNext('heartbeat', { status: 503, code: 'UNAVAILABLE' }, 1000);
    const fenced = nextEvent(w, 'build:fenced');
    const dropped = nextEvent<BuildResult>(w, 'build:dropped');
    for (let t = 0; t < 5_000; t += 1_000) await clock.advance(1_000);
    expect(w.builds.runs.has(b.id)).toBe(true); // 5 s < leaseMs (6 s)
    await clock.advance(1_500);
    expect(await fenced).toBe(b.id);
    expect((await dropped).dropReason).toMatch(/fenced/);
    await expectAllGone([pgid]);
    expect(fake.count('finish')).toBe(0);
  });

  it('drain: stops polling, keeps heartbeating, lets the running build finish, then stops', async () => {
    const clock = new FakeClock();
    const w = await start(clock);
    const running = nextEvent(w, 'build:running');
    const b = fake.addBuild({ script: 'while [ ! -f go ]; do sleep 0.02; done; echo finished-normally' });
    await running;
    let stopped = false;
    const stopping = w.stop({ drain: true }).then(() => (stopped = true));
    await flushMicrotasks();
    const pollsAtDrain = fake.count('poll');
    const hb = nextEvent(w, 'heartbeat');
    await clock.advance(1_000);
    expect(await hb).toMatchObject({ cancel: [], abandon: [] });
    expect(fake.of('heartbeat').at(-1)!.body).toEqual({ activeBuildIds: [b.id] });
    expect(stopped).toBe(false);
    fake.addBuild({ script: 'echo must-not-run' });
    // Let the build end: it waits for a file in its workspace.
    const ws = w.builds.runs.get(b.id)!.workspace!;
    await fs.writeFile(`${ws}/go`, '');
    await stopping;
    await w.done;
    expect(fake.builds.get(b.id)!.finish).toMatchObject({ outcome: 'succeeded' });
    expect(logOf(b.id)).toContain('finished-normally');
    expect(fake.count('poll')).toBe(pollsAtDrain);
    expect([...fake.builds.values()].filter((x) => x.state === 'queued')).toHaveLength(1);
  });

  it('stop without drain cancels running builds and reports them canceled', async () => {
    const w = await start();
    const running = nextEvent(w, 'build:running');
    const b = fake.addBuild({ script: 'sleep 300' });
    await running;
    await w.stop();
    await w.done;
    expect(fake.builds.get(b.id)!.finish).toMatchObject({ outcome: 'canceled' });
  });

  it('a copy of the identity file used by a worker elsewhere makes the older one stop with IDENTITY_CONFLICT', async () => {
    const clock = new FakeClock();
    fake.accessTokenTtlMs = 100_000;
    const a = await start(clock);
    // The data directory copied to another machine: same identity, newer bootId.
    const elsewhere = await tempDir();
    await fs.mkdir(path.join(elsewhere, 'worker'), { recursive: true });
    await fs.copyFile(path.join(dir, 'worker', 'identity.json'), path.join(elsewhere, 'worker', 'identity.json'));
    const b = await start(undefined, {}, elsewhere);
    expect(b.workerId).toBe(a.workerId);
    const fatal = nextEvent<SessionFatalError>(a, 'fatal');
    await clock.advance(75_000); // a's refresh is refused
    const err = await fatal;
    expect(err.code).toBe('IDENTITY_CONFLICT');
    await expect(a.done).rejects.toThrow(/two processes share one identity file/);
    await b.stop();
    await fs.rm(elsewhere, { recursive: true, force: true });
  });

  it('a lost poll answer: the controller re-delivers the claimed build and it runs once', async () => {
    const w = await start();
    await fake.waitForRequest('poll');
    fake.dropNextAnswer('poll');
    const finished = nextEvent<BuildResult>(w, 'build:finish');
    const b = fake.addBuild({ script: 'echo once' });
    expect((await finished).buildId).toBe(b.id);
    expect(fake.of('poll').some((p) => p.status === 0)).toBe(true);
    expect(fake.builds.get(b.id)!.starts).toBe(1);
    expect(logOf(b.id).match(/^once$/gm)).toHaveLength(1);
  });

  it('fails over to the next controller URL when the first does not answer', async () => {
    const net = await import('node:net');
    const srv = net.createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const dead = `http://127.0.0.1:${(srv.address() as { port: number }).port}`;
    await new Promise<void>((r) => srv.close(() => r()));
    const w = await start(undefined, { controllerUrls: [dead, fake.url] });
    const finished = nextEvent<BuildResult>(w, 'build:finish');
    const b = fake.addBuild({ script: 'echo via failover' });
    expect(await finished).toMatchObject({ buildId: b.id, outcome: 'succeeded' });
  });

  it('a stop without drain during a drain cancels the running build', async () => {
    const w = await start();
    const running = nextEvent(w, 'build:running');
    const b = fake.addBuild({ script: 'sleep 300' });
    await running;
    const draining = w.stop({ drain: true });
    await flushMicrotasks();
    expect(fake.builds.get(b.id)!.finish).toBeUndefined();
    await w.stop();
    await draining;
    await w.done;
    expect(fake.builds.get(b.id)!.finish).toMatchObject({ outcome: 'canceled' });
  });
});
