/**
 * Issue 5 scenario (f) with real processes: the controller is killed while
 * builds run, stays away for longer than the lease, and comes back on the
 * same address and database. Restart grace (reaper.ts: no lease is reaped
 * for one lease period after a start) must keep it from blaming workers for
 * its own downtime: no running build is failed for it.
 *
 * Two builds run on one worker when the controller dies:
 * - X (maxAttempts 1) ends during the outage; its worker keeps retrying the
 *   finish and, once the controller is back, its heartbeats renew the lease
 *   before the grace ends, so X succeeds as its only attempt;
 * - Y runs on past the lease: the worker cannot renew it and fences itself
 *   (stops Y, docs/protocol.md "What a worker must do"), so the controller requeues Y as
 *   attempt 2 once the grace is over, and it succeeds; it is never failed.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Api,
  TIMINGS,
  freePort,
  startController,
  startWorker,
  stopWorker,
  tempDir,
  waitFor,
  waitForFileSh,
  type ControllerProc,
  type Service,
} from './support.js';

describe('controller restart (real processes, SQLite)', () => {
  let tmp: { dir: string; remove(): Promise<void> };
  let port: number;
  let controller: ControllerProc;
  let worker: Service;
  let api: Api;

  const start = () => startController({ dataDir: join(tmp.dir, 'controller'), port });

  beforeAll(async () => {
    tmp = await tempDir('bf-cluster-restart-');
    port = await freePort();
    controller = await start();
    api = new Api(controller.url);
    worker = startWorker({ urls: [controller.url], dataDir: join(tmp.dir, 'w'), name: 'wf', labels: ['f'], concurrency: 2 });
    await waitFor(async () => (await api.workers()).length === 1, 'the worker to register', 45_000);
  });

  afterAll(async () => {
    if (worker) await stopWorker(worker);
    await controller?.service.stop(5_000);
    await tmp?.remove();
  });

  it('(f) stopped for longer than the lease during running builds, then restarted: no running build is failed for it', { timeout: 120_000 }, async () => {
    const runs = join(tmp.dir, 'runs.txt');
    const relX = join(tmp.dir, 'release-x');
    const relY = join(tmp.dir, 'release-y');
    const rec = `echo "$BUILDFLEET_BUILD_ID $BUILDFLEET_BUILD_ATTEMPT" >> '${runs}'`;
    const x = await api.submit({ labels: ['f'], maxAttempts: 1, script: `${rec}; ${waitForFileSh(relX)}; echo x done` });
    const y = await api.submit({ labels: ['f'], script: `${rec}; ${waitForFileSh(relY)}; echo y done` });
    // Both scripts run (not merely started by the controller's books).
    await waitFor(async () => {
      const text = await readFile(runs, 'utf8').catch(() => '');
      return text.includes(`${x.id} 1`) && text.includes(`${y.id} 1`);
    }, 'both scripts to run');

    controller.service.proc.kill('SIGKILL');
    await controller.service.exited;
    const downAt = performance.now();
    await writeFile(relX, '');
    // Down for longer than the lease: the worker says when it fenced Y.
    await waitFor(() => /fencing/.test(worker.output()), 'the worker to fence the build it could not renew', 30_000, 100);
    expect(performance.now() - downAt).toBeGreaterThanOrEqual(TIMINGS.leaseMs - 500);
    await writeFile(relY, '');

    controller = await start();
    const doneX = await waitFor(
      async () => {
        const b = await api.build(x.id);
        return ['succeeded', 'failed', 'canceled', 'timed_out'].includes(b.state) ? b : undefined;
      },
      'X to end',
      30_000,
      100,
    );
    expect(doneX).toMatchObject({ state: 'succeeded', attempt: 1, exitCode: 0 });
    expect(doneX.attempts).toHaveLength(1);

    const doneY = await waitFor(
      async () => {
        const b = await api.build(y.id);
        return ['succeeded', 'failed', 'canceled', 'timed_out'].includes(b.state) ? b : undefined;
      },
      'Y to end',
      45_000,
      100,
    );
    expect(doneY).toMatchObject({ state: 'succeeded', attempt: 2 });
    const failed = (await api.get<{ builds: unknown[] }>('/api/v1/builds?state=failed')).builds;
    expect(failed).toEqual([]);
    // X ran once; Y twice (attempt 1 was fenced by its worker, then re-run).
    const lines = (await readFile(runs, 'utf8')).trim().split('\n').sort();
    expect(lines).toEqual([`${x.id} 1`, `${y.id} 1`, `${y.id} 2`].sort());
    expect(worker.proc.exitCode).toBeNull();
  });
});
