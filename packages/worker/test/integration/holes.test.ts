/**
 * Holes issue 10 found by breaking the worker on purpose, each closed with a
 * test against the real controller (in process, SQLite):
 * - what a registration answer says about builds (`builds`, `abandon`);
 * - a write that keeps failing gives up within its budget and says so;
 * - retry jitter comes from the injected random, never Math.random;
 * - a second worker on a data directory a live worker uses is refused.
 * Faults the real controller cannot make (a lost poll answer, a finish that
 * always answers 500) are injected in the client or the transport, and each
 * test says which.
 */
import fs from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { FakeClock, isTerminal, paths, type AssignedBuild } from '@buildfleet/protocol';
import { ENROLLMENT_TOKEN, startTestController, type TestController } from '../../../../test/support/controller.js';
import { startWorker, type RunningWorker, type StartWorkerOptions } from '../../src/agent.js';
import type { BuildResult } from '../../src/build-run.js';
import type { Transport } from '../../src/client/connection.js';
import type { ControllerClient } from '../../src/client/controller-client.js';
import { IdentityLockedError } from '../../src/identity.js';
import type { Logger } from '../../src/logger.js';
import { silentLogger } from '../../src/logger.js';
import { bindClient, tempDir, testConfig } from '../support/harness.js';
import { tarGz } from '../support/tarball.js';
import { once, waitFor } from '../support/wait.js';

const SOURCE = tarGz([]);

const WORKER_MAIN = fileURLToPath(new URL('./support/worker-main.ts', import.meta.url));

let ctl: TestController | undefined;
const workers: RunningWorker[] = [];
const dirs: string[] = [];

afterEach(async () => {
  vi.restoreAllMocks();
  for (const w of workers.splice(0)) await w.stop().catch(() => undefined);
  await ctl?.close();
  ctl = undefined;
  for (const d of dirs.splice(0)) await fs.rm(d, { recursive: true, force: true });
});

async function dataDir(): Promise<string> {
  const d = await tempDir();
  dirs.push(d);
  return d;
}

async function worker(opts: StartWorkerOptions = {}, dir?: string): Promise<RunningWorker> {
  const w = await startWorker(testConfig({ url: ctl!.url, enrollmentToken: ENROLLMENT_TOKEN }, dir ?? (await dataDir()), { cancelGraceMs: 1_000 }), {
    logger: silentLogger,
    retryBaseMs: 1,
    retryMaxMs: 5,
    ...opts,
  });
  workers.push(w);
  return w;
}

/** A logger that keeps its lines. */
function recorder(): Logger & { lines: Array<{ level: string; msg: string; obj: Record<string, unknown> }> } {
  const lines: Array<{ level: string; msg: string; obj: Record<string, unknown> }> = [];
  const at = (level: string) => (obj: object, msg = '') => void lines.push({ level, msg, obj: obj as Record<string, unknown> });
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

/** Polls that never answer (until the worker stops): only a registration answer can hand out builds. */
function hangingPolls(client: ControllerClient, delivered: AssignedBuild[][]): ControllerClient {
  return {
    ...bindClient(client),
    poll: async (who, body, waitMs, opts) => {
      await new Promise<void>((resolve) => opts?.signal?.addEventListener('abort', () => resolve(), { once: true }));
      delivered.push([]);
      throw opts?.signal?.reason ?? new Error('stopped');
    },
  };
}


describe('a registration answer', () => {
  it('starts the assigned builds it lists that do not run here (their poll answer was lost)', async () => {
    ctl = await startTestController();
    // Fault the real controller cannot make: the poll answer that assigned the build never arrives.
    // The first poll's answer is lost; later polls hang, so only `builds` can deliver the build.
    const delivered: AssignedBuild[][] = [];
    let polls = 0;
    const w = await worker({
      wrapClient: (c) => {
        const hanging = hangingPolls(c, delivered);
        return {
          ...hanging,
          poll: async (...args) => {
            if (++polls > 1) return hanging.poll(...args);
            const answer = await c.poll(...args);
            throw new Error(`answer lost (${answer.builds.length} builds in it)`);
          },
        };
      },
    });
    const build = await ctl.api.submit({ script: 'echo delivered by the registration answer' }, SOURCE);
    await waitFor(async () => (await ctl!.api.build(build.id)).state === 'assigned', { what: 'the build to be assigned' });
    expect(w.builds.size).toBe(0);

    const registered = once(w.events, 'reregistered');
    await w.session.reregister('test: refresh');
    const [ev] = (await registered) as [{ answer: { builds: AssignedBuild[] } }];
    expect(ev.answer.builds.map((b) => b.id)).toEqual([build.id]);
    const done = await ctl.api.finished(build.id);
    expect(done).toMatchObject({ state: 'succeeded', attempt: 1, workerId: w.workerId });
    expect(await ctl.api.scriptLog(build.id)).toBe('delivered by the registration answer\n');
    expect(delivered.every((d) => d.length === 0)).toBe(true);
  });

  it('kills at once the builds it abandons (this worker no longer owns them)', async () => {
    // The controller's clock runs ahead of the worker's: the lease lapses there while the worker
    // (on real time, leaseMs a minute) has no reason to fence. Heartbeats are cut (injected), so
    // only the registration answer can tell the worker.
    const clock = new FakeClock(Date.now());
    ctl = await startTestController({ clock, config: { leaseMs: 60_000, ackTimeoutMs: 60_000, heartbeatIntervalMs: 200 } });
    const w = await worker({
      wrapClient: (c) => ({
        ...bindClient(c),
        heartbeat: async () => {
          throw new Error('heartbeat cut (injected)');
        },
      }),
    });
    const running = once(w.events, 'build:running', 15_000);
    const build = await ctl.api.submit({ script: 'trap "" TERM; echo started; sleep 300', maxAttempts: 2 }, SOURCE);
    await running;
    // The controller's lease (and its restart grace, also leaseMs) runs out; a reaper round requeues the build.
    await waitFor(
      async () => {
        await clock.advance(15_000);
        return (await ctl!.api.build(build.id)).attempt === 2;
      },
      { what: 'the build to be requeued' },
    );

    const dropped = once(w.events, 'build:dropped');
    const registered = once(w.events, 'reregistered');
    await w.session.reregister('test: refresh');
    const [ev] = (await registered) as [{ answer: { abandon: string[] } }];
    expect(ev.answer.abandon).toEqual([build.id]);
    const [result] = (await dropped) as [BuildResult];
    expect(result).toMatchObject({ buildId: build.id, attempt: 1, reported: false });
    expect(result.dropReason).toMatch(/abandoned/);
  });
});

describe('retry budgets', () => {
  it('a finish that keeps failing with 500 INTERNAL gives up within its budget, says so, and drops the build', async () => {
    ctl = await startTestController();
    // Fault the real controller cannot make on purpose: every finish answers 500 INTERNAL.
    let finishes = 0;
    const transport: Transport = async (url, init) => {
      if (/\/finish$/.test(new URL(url).pathname)) {
        finishes++;
        return Response.json({ error: { code: 'INTERNAL', message: 'injected bug', id: `err-${finishes}` } }, { status: 500 });
      }
      return fetch(url, init);
    };
    const logger = recorder();
    const w = await worker({ transport, logger });
    const dropped = once(w.events, 'build:dropped', 30_000);
    const build = await ctl.api.submit({ script: 'echo hi' }, SOURCE);
    const [result] = (await dropped) as [BuildResult];
    expect(result).toMatchObject({ buildId: build.id, reported: false });
    expect(result.dropReason).toMatch(/POST \/builds\/\{id\}\/finish: gave up after 12 attempts/);
    expect(finishes).toBe(12); // BUDGETS.finish
    const giveUp = logger.lines.find((l) => l.level === 'error' && l.msg === 'POST /builds/{id}/finish: giving up');
    expect(giveUp?.obj).toMatchObject({ buildId: build.id, attempts: 12 });
    expect(logger.lines.filter((l) => l.msg === 'POST /builds/{id}/finish failed; retrying')).toHaveLength(11);
    // Nothing more is sent for it: the lease lapses and the controller hands the build out again.
    await waitFor(() => w.builds.size === 0, { what: 'the run to end' });
    expect(isTerminal((await ctl.api.build(build.id)).state)).toBe(false);
  });

  it('retry jitter comes from the injected random, never from Math.random', async () => {
    ctl = await startTestController();
    const mathRandom = vi.spyOn(Math, 'random');
    // Faults the real controller cannot make on purpose: the first registration, poll, start and
    // log chunk each get a 503, so every retry path waits once.
    const failed = new Set<string>();
    const transport: Transport = async (url, init) => {
      const p = new URL(url).pathname.replace(/\/[0-9a-f-]{36}/g, '/{id}');
      if (!failed.has(p)) {
        failed.add(p);
        return Response.json({ error: { code: 'UNAVAILABLE', message: 'injected' } }, { status: 503 });
      }
      return fetch(url, init);
    };
    let draws = 0;
    const w = await worker({ transport, random: () => (draws++, 0.5) });
    const build = await ctl.api.submit({ script: 'echo jitter' }, SOURCE);
    expect(await ctl.api.finished(build.id)).toMatchObject({ state: 'succeeded' });
    expect([...failed]).toEqual(expect.arrayContaining([paths.register(), `/api/v1/builds/{id}/start`, `/api/v1/builds/{id}/finish`]));
    expect(draws).toBeGreaterThanOrEqual(4);
    expect(mathRandom).not.toHaveBeenCalled();
    await w.stop();
  });
});

describe('the identity lock', () => {
  it('refuses a second worker on the data directory of a running one, naming its pid; the first keeps running', async () => {
    ctl = await startTestController();
    const dir = await dataDir();
    const first = await worker({}, dir);
    const err = await worker({}, dir).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(IdentityLockedError);
    expect((err as Error).message).toMatch(new RegExp(`another buildfleet worker \\(pid ${process.pid}\\) is running on the data directory ${dir}`));
    const build = await ctl.api.submit({ script: 'echo still here' }, SOURCE);
    expect(await ctl.api.finished(build.id)).toMatchObject({ state: 'succeeded', workerId: first.workerId });
    await first.stop();
    // Released on stop: the next worker on this directory starts and is the same worker.
    const next = await worker({}, dir);
    expect(next.workerId).toBe(first.workerId);
  });

  it('refuses a second worker process at once; a lock left by a killed process does not block a restart', async () => {
    ctl = await startTestController();
    const dir = await dataDir();
    const env = { ...process.env, BUILDFLEET_CONTROLLER_URL: ctl.url, BUILDFLEET_ENROLLMENT_TOKEN: ENROLLMENT_TOKEN, BUILDFLEET_DATA_DIR: dir };
    const run = () => {
      const p = spawn(process.execPath, ['--conditions=source', '--import', 'tsx', WORKER_MAIN], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      p.stdout.on('data', (c: Buffer) => (out += c.toString()));
      p.stderr.on('data', (c: Buffer) => (out += c.toString()));
      const exited = new Promise<number | null>((r) => p.on('exit', (code) => r(code)));
      return { p, out: () => out, exited };
    };
    const a = run();
    try {
      await waitFor(() => /REGISTERED/.test(a.out()), { what: 'the first worker process to register', timeoutMs: 30_000 });
      const b = run();
      expect(await b.exited).not.toBe(0);
      expect(b.out()).toContain(`another buildfleet worker (pid ${a.p.pid}) is running on the data directory ${dir}`);
      expect(a.p.exitCode).toBeNull();
      a.p.kill('SIGKILL');
      await a.exited;
      const c = run();
      try {
        await waitFor(() => /REGISTERED/.test(c.out()), { what: 'a restart on the same data directory', timeoutMs: 30_000 });
      } finally {
        c.p.kill('SIGKILL');
        await c.exited;
      }
    } finally {
      a.p.kill('SIGKILL');
    }
  });
});
