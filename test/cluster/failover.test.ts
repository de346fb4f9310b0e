/**
 * Issue 3: a worker given several controller URLs fails over when one stops
 * answering. Unlike a killed controller (connection refused at once), a
 * frozen one (SIGSTOP) accepts connections and never answers: only the
 * worker's per-request timeouts get it out (BUILDFLEET_REQUEST_TIMEOUT_MS;
 * heartbeats give way after a third of the lease). Real processes, two
 * controllers on one fresh PostgreSQL database.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, describePg, type TestDatabase } from '../../packages/controller/test/support/pg.js';
import { Api, DroppingProxy, kill, startController, startWorker, stopWorker, tempDir, waitFor, waitForFileSh, type ControllerProc, type Service } from './support.js';

describePg('failover from a controller that stops answering (real processes, PostgreSQL)', () => {
  let db: TestDatabase;
  let tmp: { dir: string; remove(): Promise<void> };
  let c1: ControllerProc;
  let c2: ControllerProc;
  const workers: Service[] = [];
  let proxy: DroppingProxy | undefined;

  beforeAll(async () => {
    db = await createTestDatabase();
    tmp = await tempDir('bf-cluster-failover-');
    // Short long polls, so a poll parked on the frozen controller gives up
    // soon too; a long ack deadline, so a re-delivery is not mistaken for a requeue.
    const env = { BUILDFLEET_POLL_WAIT_MS: '3000', BUILDFLEET_ACK_TIMEOUT_MS: '10000' };
    [c1, c2] = await Promise.all([
      startController({ dataDir: join(tmp.dir, 'c1'), databaseUrl: db.url, env }),
      startController({ dataDir: join(tmp.dir, 'c2'), databaseUrl: db.url, env }),
    ]);
  });

  afterAll(async () => {
    await Promise.allSettled(workers.map((w) => stopWorker(w)));
    await proxy?.close();
    if (c1) await kill(c1.service);
    await c2?.service.stop(5_000);
    await tmp?.remove();
    await db?.drop();
  });

  it('a controller frozen with SIGSTOP: running builds keep their lease and finish, new ones run, all through the other', { timeout: 120_000 }, async () => {
    const api1 = new Api(c1.url);
    const api2 = new Api(c2.url);
    for (let i = 0; i < 3; i++) {
      workers.push(
        startWorker({ urls: [c1.url, c2.url], dataDir: join(tmp.dir, `w${i}`), name: `w${i}`, labels: ['fo'], env: { BUILDFLEET_REQUEST_TIMEOUT_MS: '10000' } }),
      );
    }
    await waitFor(async () => (await api1.workers()).length === 3, 'three workers to register', 45_000);

    const runs = join(tmp.dir, 'runs.txt');
    const release = join(tmp.dir, 'release');
    const rec = `echo "$BUILDFLEET_BUILD_ID $BUILDFLEET_BUILD_ATTEMPT" >> '${runs}'`;
    const first = await Promise.all([0, 1, 2].map(() => api1.submit({ labels: ['fo'], script: `${rec}; ${waitForFileSh(release)}; echo first done` })));
    await waitFor(async () => (await readFile(runs, 'utf8').catch(() => '')).trim().split('\n').filter(Boolean).length === 3, 'three builds to run');

    c1.service.proc.kill('SIGSTOP');
    // Longer than the lease and then some, while c1 is frozen: the leases hold through c2.
    const frozenAt = Date.now();
    await waitFor(async () => Date.now() - frozenAt > 4_000 && (await api2.build(first[0]!.id)).state === 'running', 'a lease period with c1 frozen', 20_000, 200);
    await writeFile(release, '');
    const second = await Promise.all([0, 1, 2, 3, 4, 5].map(() => api2.submit({ labels: ['fo'], script: `${rec}; echo second done` })));
    const all = [...first, ...second].map((b) => b.id);
    const done = await api2.waitFinished(all, 60_000, 'every build to finish while c1 is frozen');
    expect(done.map((b) => `${b.state} ${b.attempts.length}`)).toEqual(all.map(() => 'succeeded 1'));
    const lines = (await readFile(runs, 'utf8')).trim().split('\n').sort();
    expect(lines).toEqual(all.map((id) => `${id} 1`).sort());
    for (const w of workers) expect(w.proc.exitCode).toBeNull();
  });
  it('a build whose assignment died with its controller reaches the worker again through the other one, as the same attempt', { timeout: 90_000 }, async () => {
    const api2 = new Api(c2.url);
    c1.service.proc.kill('SIGCONT'); // frozen by the test before
    await waitFor(async () => (await fetch(`${c1.url}/readyz`)).ok, 'c1 to answer again');
    // The worker reaches c1 only through a proxy that, right after c1 assigns
    // the build, drops the answer and refuses every later connection: to the
    // worker, c1 died holding the assignment.
    proxy = DroppingProxy.forUrl(c1.url);
    await proxy.listen();
    proxy.cutOffAfterDrop = true;
    const w = startWorker({ urls: [proxy.url, c2.url], dataDir: join(tmp.dir, 'wr'), name: 'wr', labels: ['redeliver'], env: { BUILDFLEET_REQUEST_TIMEOUT_MS: '10000' } });
    workers.push(w);
    const workerId = await waitFor(async () => (await api2.workers()).find((x) => x.name === 'wr')?.id, 'the worker to register', 45_000);
    const p = proxy;
    await waitFor(() => p.seen.some((r) => r.path.includes('/poll')), 'a poll parked on c1');
    p.dropNextPollAnswer();
    const runs = join(tmp.dir, 'redeliver-runs.txt');
    const build = await api2.submit({ labels: ['redeliver'], script: `echo "$BUILDFLEET_BUILD_ATTEMPT" >> '${runs}'` });
    const [done] = await api2.waitFinished([build.id], 30_000);
    expect(p.droppedPollAnswers).toBe(1);
    expect(done).toMatchObject({ state: 'succeeded', attempt: 1, workerId });
    expect(done!.attempts).toHaveLength(1);
    expect((await readFile(runs, 'utf8')).trim()).toBe('1');
    // The worker's calls after the drop all went to c2 (the proxy refused them).
    expect(p.seen.some((r) => r.path === `/api/v1/builds/${build.id}/start`)).toBe(false);
  });
});
