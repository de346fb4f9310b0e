import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { FakeClock, flushMicrotasks, paths, type Clock, type PollRequest } from '@buildfleet/protocol';
import { startWorker, type RunningWorker } from '../src/agent.js';
import type { BuildResult } from '../src/build-run.js';
import { silentLogger } from '../src/logger.js';
import { SessionFatalError } from '../src/session.js';
import { startUnitController, type UnitController } from './support/controller.js';
import { Faults } from './support/faults.js';
import { tempDir, testConfig } from './support/harness.js';
import { alivePids, expectAllGone, pidsFromLog } from './support/procs.js';
import { once, waitFor } from './support/wait.js';

// The agent against the real controller in this process (one for the file),
// on the controller's own fake clock: its leases, tokens and parked polls move
// only when a test says so. Faults in front of it make what it cannot on
// purpose: a lost poll answer, 503 heartbeats, a registration or a poll
// answer held at a barrier. Each test leaves nothing behind: its workers are
// stopped and deleted, its builds ended.
let ctl: UnitController;
let fake: Faults;
let dir: string;
const workers: RunningWorker[] = [];
const submitted: string[] = [];

beforeAll(async () => {
  // Access tokens live 100 s of the controller's clock: the worker refreshes at 75 s of its own.
  ctl = await startUnitController({ accessTokenTtlMs: 100_000 });
});
afterAll(async () => {
  await ctl?.close();
});
beforeEach(async () => {
  fake = new Faults();
  dir = await tempDir();
});
afterEach(async () => {
  fake.releaseAll();
  for (const w of workers.splice(0)) {
    await w.stop().catch(() => undefined);
    if (w.workerId) await ctl.api.req('DELETE', paths.worker(w.workerId));
  }
  for (const id of submitted.splice(0)) await ctl.api.req('POST', paths.cancel(id));
  await fs.rm(dir, { recursive: true, force: true });
});

async function start(clock?: Clock, over: Parameters<typeof testConfig>[2] = {}, dataDir = dir): Promise<RunningWorker> {
  const w = await startWorker(testConfig(ctl, dataDir, { cancelGraceMs: 1_000, ...over }), {
    logger: silentLogger,
    retryBaseMs: 1,
    retryMaxMs: 5,
    transport: fake.transport,
    ...(clock ? { clock } : {}),
  });
  workers.push(w);
  return w;
}

function nextEvent<T = unknown>(w: RunningWorker, event: string, timeoutMs = 10_000): Promise<T> {
  return once(w.events, event, timeoutMs).then((args) => args[0] as T);
}

async function submit(spec: Record<string, unknown>) {
  const b = await ctl.submit(spec);
  submitted.push(b.id);
  return b;
}
const logOf = (id: string) => ctl.logText(id);
const stateOf = async (id: string) => (await ctl.build(id)).state;
const cancel = (id: string) => ctl.api.ok('POST', paths.cancel(id));
const pollBodies = () => fake.of('poll').map((p) => p.body as PollRequest);

describe('agent', () => {
  it('registers, polls, runs a build end to end and reports it', async () => {
    const w = await start();
    expect((await ctl.api.workers()).map((x) => x.id)).toContain(w.workerId);
    const finished = nextEvent<BuildResult>(w, 'build:finish');
    const b = await submit({ script: "echo hello world; printf 'no newline at end'" });
    const r = await finished;
    expect(r).toMatchObject({ buildId: b.id, outcome: 'succeeded', reported: true });
    // The worker's own note starts a line of its own after output without a final newline.
    expect(await logOf(b.id)).toContain('hello world\nno newline at end\n[buildfleet] succeeded\n');
    expect(await stateOf(b.id)).toBe('succeeded');
    const poll = fake.of('poll')[0]!;
    expect(poll.url).toContain('waitMs=30000'); // the controller's pollWaitMs setting
    expect(poll.body).toMatchObject({ freeSlots: 1, activeBuildIds: [] });
    // Build writes use the build token (one for the attempt), never the access token.
    const writes = fake.requests.filter((q) => ['start', 'logs', 'finish', 'source'].includes(q.route));
    expect(new Set(writes.map((x) => x.route))).toEqual(new Set(['start', 'logs', 'finish', 'source']));
    expect(new Set(writes.map((x) => x.token)).size).toBe(1);
    expect(writes[0]!.token).toMatch(/^bfb_/);
    expect(writes[0]!.token).not.toBe(w.session.accessToken);
  });

  it('runs up to maxConcurrentBuilds at once and reports free slots', async () => {
    const w = await start(undefined, { maxConcurrentBuilds: 2 });
    const a = await submit({ script: 'sleep 0.3' });
    const b = await submit({ script: 'sleep 0.3' });
    const c = await submit({ script: 'true' });
    for (const x of [a, b, c]) expect((await ctl.api.finished(x.id, 10_000)).state).toBe('succeeded');
    await waitFor(() => w.builds.size === 0, { what: 'the runs to be removed' });
    const maxSlots = Math.max(...pollBodies().map((p) => p.freeSlots));
    expect(maxSlots).toBe(2);
    // With every slot busy a poll only watches the running builds for cancels.
    expect(pollBodies().every((p) => p.freeSlots > 0 || (p.watchCancel?.length ?? 0) > 0)).toBe(true);
    expect(Math.max(...(await ctl.api.workers()).map((x) => x.activeBuildCount))).toBeLessThanOrEqual(2);
  });

  it('(e) pauses polling while a proactive re-registration is in flight and resumes with the new token after it', async () => {
    const clock = new FakeClock();
    const w = await start(clock);
    await fake.waitForRequest('poll');
    const oldToken = w.session.accessToken;
    const gate = fake.hold('register');
    const paused = nextEvent(w, 'poll:paused');
    await clock.advance(75_000); // 75% of the lifetime: refresh starts and is held at the controller
    await gate.arrived(1);
    await ctl.endParkedPolls(); // the parked poll answers 204
    await paused; // the poll loop reached the gate
    const pollsWhilePaused = fake.count('poll');
    const registerAt = fake.of('register')[1]!.n;
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
    await ctl.expireTokens(); // the parked poll ends too; the next call gets 401
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
    const b = await submit({ script: 'sleep 300 & echo "PID $!"; echo "PID $$"; wait' });
    await running;
    // The log flush timer runs on the fake clock: nudge it until the pids are uploaded.
    await waitFor(
      async () => {
        await clock.advance(50);
        return pidsFromLog(await logOf(b.id)).length === 2;
      },
      { what: 'the build to print its pids', timeoutMs: 10_000 },
    );
    const pids = pidsFromLog(await logOf(b.id));
    expect(alivePids(pids)).toEqual(pids);
    // The parked poll would bring the cancel at once (watchCancel): its answer is held, so the heartbeat brings it.
    fake.holdAnswers('poll');
    await cancel(b.id);
    const finished = nextEvent<BuildResult>(w, 'build:finish');
    const hb = nextEvent(w, 'heartbeat');
    await clock.advance(1_000); // heartbeat interval
    expect(await hb).toMatchObject({ cancel: [b.id] });
    const r = await finished;
    expect(r).toMatchObject({ outcome: 'canceled', reported: true });
    expect(await stateOf(b.id)).toBe('canceled');
    expect(await logOf(b.id)).toContain('\n[buildfleet] canceled: cancellation requested\n');
    await expectAllGone(pids);
  });

  it('abandon from a heartbeat kills the build at once and drops it without finish', async () => {
    const clock = new FakeClock();
    const w = await start(clock, { cancelGraceMs: 600_000 });
    const running = nextEvent<{ pgid: number }>(w, 'build:running');
    const b = await submit({ script: 'trap "" TERM; sleep 300', maxAttempts: 1 });
    const { pgid } = await running;
    await ctl.loseLeases(); // the controller's reaper: the build is lost (its only attempt: failed)
    expect(await stateOf(b.id)).toBe('failed');
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
    const b = await submit({ script: 'trap "" TERM; sleep 300' });
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
    const b = await submit({ script: 'while [ ! -f go ]; do sleep 0.02; done; echo finished-normally' });
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
    const other = await submit({ script: 'echo must-not-run' });
    // Let the build end: it waits for a file in its workspace.
    const ws = w.builds.runs.get(b.id)!.workspace!;
    await fs.writeFile(`${ws}/go`, '');
    await stopping;
    await w.done;
    expect(await stateOf(b.id)).toBe('succeeded');
    expect(await logOf(b.id)).toContain('finished-normally');
    expect(fake.count('poll')).toBe(pollsAtDrain);
    expect(await stateOf(other.id)).toBe('queued');
  });

  it('stop without drain cancels running builds and reports them canceled', async () => {
    const w = await start();
    const running = nextEvent(w, 'build:running');
    const b = await submit({ script: 'sleep 300' });
    await running;
    await w.stop();
    await w.done;
    expect(await stateOf(b.id)).toBe('canceled');
  });

  it('a copy of the identity file used by a worker elsewhere makes the older one stop with IDENTITY_CONFLICT', async () => {
    const clock = new FakeClock();
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
    const b = await submit({ script: 'echo once' });
    expect((await finished).buildId).toBe(b.id);
    expect(fake.of('poll').some((p) => p.status === 0)).toBe(true);
    expect(fake.of('start')).toHaveLength(1);
    expect(await ctl.build(b.id)).toMatchObject({ state: 'succeeded', attempt: 1 });
    expect((await logOf(b.id)).match(/^once$/gm)).toHaveLength(1);
  });

  it('fails over to the next controller URL when the first does not answer', async () => {
    const net = await import('node:net');
    const srv = net.createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const dead = `http://127.0.0.1:${(srv.address() as { port: number }).port}`;
    await new Promise<void>((r) => srv.close(() => r()));
    const w = await start(undefined, { controllerUrls: [dead, ctl.url] });
    const finished = nextEvent<BuildResult>(w, 'build:finish');
    const b = await submit({ script: 'echo via failover' });
    expect(await finished).toMatchObject({ buildId: b.id, outcome: 'succeeded' });
  });

  it('a stop without drain during a drain cancels the running build', async () => {
    const w = await start();
    const running = nextEvent(w, 'build:running');
    const b = await submit({ script: 'sleep 300' });
    await running;
    const draining = w.stop({ drain: true });
    await flushMicrotasks();
    expect(await stateOf(b.id)).toBe('running');
    await w.stop();
    await draining;
    await w.done;
    expect(await stateOf(b.id)).toBe('canceled');
  });
});
