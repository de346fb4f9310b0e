/**
 * A cancel reaches a running build on the worker's poll, not at its next
 * heartbeat (docs/protocol.md "poll", `watchCancel`): end to end with a real
 * worker (agent, child processes) and real controllers in this process.
 *
 * The heartbeat interval is 30 s, far longer than these tests, so no
 * heartbeat runs between the cancel and the build's end; the test asserts
 * that order of events (the worker's own `heartbeat` / `poll:cancel` /
 * `build:finish`), not a duration. The build's shell traps SIGTERM and says
 * so in its log: the process was stopped gracefully, as a cancel asks.
 *
 * Scenarios as data: every slot busy (the worker parks a poll with
 * `freeSlots: 0` only to hear cancels), a slot free (the claim poll hears
 * it), and two controllers on one PostgreSQL with the cancel sent through
 * the controller the worker does not talk to (the hint travels by NOTIFY).
 */
import fs from 'node:fs/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { FakeClock, type PollRequest } from '@buildfleet/protocol';
import { ENROLLMENT_TOKEN, startTestController, type TestController } from '../../../../test/support/controller.js';
import { describePg } from '../../../controller/test/support/pg.js';
import { startWorker, type RunningWorker } from '../../src/agent.js';
import type { BuildResult } from '../../src/build-run.js';
import { silentLogger } from '../../src/logger.js';
import { Faults } from '../support/faults.js';
import { bindClient, tempDir, testConfig } from '../support/harness.js';
import { tarGz } from '../support/tarball.js';
import { once, waitFor } from '../support/wait.js';

const TIMINGS = { heartbeatIntervalMs: 30_000, leaseMs: 120_000, ackTimeoutMs: 30_000, pollWaitMs: 30_000 };

const controllers: TestController[] = [];
const workers: RunningWorker[] = [];
const dirs: string[] = [];

afterEach(async () => {
  for (const w of workers.splice(0)) await w.stop().catch(() => undefined);
  // The first controller of a PostgreSQL pair owns (and drops) the database: close it last.
  for (const c of controllers.splice(0).reverse()) await c.close();
  for (const d of dirs.splice(0)) await fs.rm(d, { recursive: true, force: true });
});

interface Scenario {
  name: string;
  store: 'sqlite' | 'postgres';
  /** The worker's maxConcurrentBuilds; it runs one build, so 1 leaves no free slot. */
  concurrency: number;
  /** Send the cancel through a second controller on the same database. */
  throughOther: boolean;
  /** The worker drains (first stop signal) before the cancel: it takes no builds but still hears cancels. */
  drain?: boolean;
}

async function cancelScenario(s: Scenario): Promise<void> {
  const a = await startTestController({ store: s.store, config: TIMINGS });
  controllers.push(a);
  const b = s.throughOther ? await startTestController({ databaseUrl: a.databaseUrl!, config: TIMINGS }) : a;
  if (b !== a) controllers.push(b);

  // Faults only records here: which poll was parked when the cancel came.
  const faults = new Faults();
  const dir = await tempDir();
  dirs.push(dir);
  const w = await startWorker(testConfig({ url: a.url, enrollmentToken: ENROLLMENT_TOKEN }, dir, { maxConcurrentBuilds: s.concurrency, cancelGraceMs: 10_000 }), {
    logger: silentLogger,
    transport: faults.transport,
  });
  workers.push(w);
  const order: string[] = [];
  w.events.on('heartbeat', () => order.push('heartbeat'));
  w.events.on('heartbeat:error', () => order.push('heartbeat'));
  w.events.on('poll:cancel', (ids: string[]) => order.push(`poll:cancel ${ids.join(',')}`));
  w.events.on('build:finish', (r: BuildResult) => order.push(`finish ${r.buildId} ${r.outcome}`));

  const build = await a.api.submit({ script: 'trap "echo got TERM; exit 143" TERM; echo ready; sleep 1000 & wait' }, tarGz([]));
  // The trap is in place once the script printed "ready".
  await waitFor(async () => (await a.api.scriptLog(build.id)).includes('ready'), { what: 'the build to be ready', timeoutMs: 20_000 });
  // The poll that will hear the cancel: watching this build, with the free slots of the scenario.
  const watching = await faults.waitForRequest('poll', (p) => {
    const body = p.body as PollRequest;
    return body.freeSlots === s.concurrency - 1 && body.watchCancel?.includes(build.id) === true;
  });
  expect(watching.status, 'the watching poll is still open').toBeUndefined();

  let stopped: Promise<void> | undefined;
  if (s.drain) {
    stopped = w.stop({ drain: true });
    // The poll in flight gives way; the next one only watches.
    await faults.waitForRequest('poll', (p) => p.n > watching.n && (p.body as PollRequest).freeSlots === 0);
  }
  const finished = once(w.events, 'build:finish', 40_000);
  order.push('cancel');
  expect((await b.api.req('POST', `/api/v1/builds/${build.id}/cancel`)).status).toBe(200);
  await finished;

  // The poll carried the cancel and the build ended before any heartbeat ran.
  expect(order.slice(order.indexOf('cancel'))).toEqual(['cancel', `poll:cancel ${build.id}`, `finish ${build.id} canceled`]);
  if (stopped) await stopped;
  else expect(watching.status).toBe(200);
  const ended = await a.api.finished(build.id);
  expect(ended).toMatchObject({ state: 'canceled' });
  expect(await a.api.scriptLog(build.id)).toBe('ready\ngot TERM\n');
}

describe('a cancel reaches the worker on its poll, before any heartbeat', () => {
  const scenarios: Scenario[] = [
    { name: 'every slot busy: a poll parked only to hear cancels', store: 'sqlite', concurrency: 1, throughOther: false },
    { name: 'a slot free: the claim poll hears it', store: 'sqlite', concurrency: 2, throughOther: false },
    { name: 'draining: no builds taken, cancels still heard', store: 'sqlite', concurrency: 2, throughOther: false, drain: true },
  ];
  for (const s of scenarios) it(s.name, () => cancelScenario(s));

  it('a build ending cuts a watch-only poll short: the next build starts without waiting for that poll to end', async () => {
    // The controller's clock never moves, so no parked poll ever times out: only the worker
    // ending its own poll can let it take the second build.
    const ctl = await startTestController({ clock: new FakeClock(Date.now()), config: TIMINGS });
    controllers.push(ctl);
    const faults = new Faults();
    const dir = await tempDir();
    dirs.push(dir);
    const w = await startWorker(testConfig({ url: ctl.url, enrollmentToken: ENROLLMENT_TOKEN }, dir, { maxConcurrentBuilds: 1 }), { logger: silentLogger, transport: faults.transport });
    workers.push(w);
    const running = once(w.events, 'build:running', 20_000);
    const first = await ctl.api.submit({ script: 'while [ ! -f go ]; do sleep 0.02; done; echo one' }, tarGz([]));
    const second = await ctl.api.submit({ script: 'echo two' }, tarGz([]));
    const watching = await faults.waitForRequest('poll', (p) => (p.body as PollRequest).freeSlots === 0);
    expect((watching.body as PollRequest).watchCancel).toEqual([first.id]);
    await running;
    await fs.writeFile(`${w.builds.runs.get(first.id)!.workspace}/go`, '');
    expect(await ctl.api.finished(second.id)).toMatchObject({ state: 'succeeded' });
    expect(watching.status, 'the watch-only poll was abandoned, not answered').toBeUndefined();
  });
});

describe('a controller that does not park watch-only polls', () => {
  it('is not asked again at once: the worker waits a heartbeat interval (or a build ending) between such polls', async () => {
    const ctl = await startTestController({ config: { heartbeatIntervalMs: 200, leaseMs: 5_000 } });
    controllers.push(ctl);
    const dir = await tempDir();
    dirs.push(dir);
    let watchOnly = 0;
    const w = await startWorker(testConfig({ url: ctl.url, enrollmentToken: ENROLLMENT_TOKEN }, dir, { maxConcurrentBuilds: 1 }), {
      logger: silentLogger,
      // Fault the real controller cannot make: a watch-only poll answered at once with nothing,
      // as an older controller (behind the same address during an upgrade) would.
      wrapClient: (c) => ({
        ...bindClient(c),
        poll: async (who, body, waitMs, opts) => {
          if (body.freeSlots > 0) return c.poll(who, body, waitMs, opts);
          watchOnly++;
          return { builds: [], cancel: [] };
        },
      }),
    });
    workers.push(w);
    let heartbeats = 0;
    w.events.on('heartbeat', () => heartbeats++);
    const running = once(w.events, 'build:running', 20_000);
    const build = await ctl.api.submit({ script: 'while [ ! -f go ]; do sleep 0.02; done' }, tarGz([]));
    await running;
    await waitFor(() => heartbeats >= 5, { what: 'five heartbeats' });
    // About one watch-only poll per heartbeat interval, not a loop of them.
    expect(watchOnly).toBeGreaterThan(0);
    expect(watchOnly).toBeLessThanOrEqual(heartbeats + 2);
    // The heartbeat still brings the cancel.
    await ctl.api.req('POST', `/api/v1/builds/${build.id}/cancel`);
    expect(await ctl.api.finished(build.id)).toMatchObject({ state: 'canceled' });
  });
});

describePg('a cancel reaches the worker on its poll across controllers', () => {
  it('two controllers on one PostgreSQL: the cancel goes through the one the worker does not talk to', () =>
    cancelScenario({ name: 'cross', store: 'postgres', concurrency: 1, throughOther: true }));
});
