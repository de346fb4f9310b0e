/**
 * Issue 5 "Done when" scenarios (b)-(e) with real processes: one
 * `buildfleet controller` (SQLite) and `buildfleet worker` processes, lease
 * 3 s, heartbeat 300 ms, ack deadline 2 s (support.ts TIMINGS). Each scenario
 * uses its own label, so its builds reach only its own workers.
 *
 * Scripts that wait use `waitForFileSh`: they end once their file appears or
 * the test's temp dir is gone. Where a scenario is defined by time ("longer
 * than the lease") the wait is a condition on what the controller reports.
 */
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Api,
  DroppingProxy,
  HttpError,
  TIMINGS,
  alive,

  startController,
  startWorker,
  stopWorker,
  tempDir,
  waitFor,
  waitForFileSh,
  type Build,
  type ControllerProc,
  type Service,
} from './support.js';

describe('leases and faults (real processes, SQLite)', () => {
  let tmp: { dir: string; remove(): Promise<void> };
  let controller: ControllerProc;
  let api: Api;
  const services: Service[] = [];
  const proxies: DroppingProxy[] = [];

  function worker(name: string, labels: string[], url = controller.url): Service {
    const w = startWorker({ urls: [url], dataDir: join(tmp.dir, name), name, labels });
    services.push(w);
    return w;
  }

  async function proxy(): Promise<DroppingProxy> {
    const p = DroppingProxy.forUrl(controller.url);
    await p.listen();
    proxies.push(p);
    return p;
  }

  async function waitState(id: string, pred: (b: Build) => boolean, what: string, timeoutMs = 30_000): Promise<Build> {
    let last: Build | undefined;
    return waitFor(
      async () => {
        last = await api.build(id);
        return pred(last) ? last : undefined;
      },
      what,
      timeoutMs,
      100,
    ).catch((e: Error) => {
      throw new Error(`${e.message}; build: ${JSON.stringify(last)}`);
    });
  }

  async function workerRegistered(name: string): Promise<string> {
    return waitFor(async () => (await api.workers()).find((w) => w.name === name)?.id, `worker ${name} to register`, 45_000, 100);
  }

  beforeAll(async () => {
    tmp = await tempDir('bf-cluster-leases-');
    controller = await startController({ dataDir: join(tmp.dir, 'controller') });
    api = new Api(controller.url);
  });

  afterAll(async () => {
    await Promise.all(services.map((s) => stopWorker(s)));
    await Promise.all(proxies.map((p) => p.close()));
    await controller?.service.stop(5_000);
    await tmp?.remove();
  });

  it('(b) a dropped poll answer: the build reaches the same worker on its next poll', { timeout: 90_000 }, async () => {
    const p = await proxy();
    worker('wb', ['b'], p.url);
    await workerRegistered('wb');
    // The worker is parked on a long poll through the proxy; the build's assignment answer is dropped.
    await waitFor(() => p.seen.some((r) => r.path.includes('/poll')), 'a poll through the proxy');
    p.dropNextPollAnswer();
    const ran = join(tmp.dir, 'b-runs.txt');
    const build = await api.submit({ labels: ['b'], script: `echo "$BUILDFLEET_BUILD_ATTEMPT" >> '${ran}'` });
    const done = await waitState(build.id, (b) => b.state === 'succeeded', 'the build to succeed');
    expect(p.droppedPollAnswers).toBe(1);
    // Exactly one execution; the only started attempt is this worker's.
    expect((await readFile(ran, 'utf8')).trim().split('\n')).toEqual([String(done.attempt)]);
    const started = done.attempts.filter((a) => a.startedAt !== null);
    expect(started).toHaveLength(1);
    // Re-delivered as the same attempt on the next poll (or, if that poll came
    // after the ack deadline, requeued and claimed again by the only 'b' worker).
    const wb = (await api.workers()).find((w) => w.name === 'wb')!;
    expect(done.attempts.every((a) => a.workerId === wb.id)).toBe(true);
    if (done.attempts.length === 1) {
      // Re-delivered: the next answer carries the same attempt and the original ack deadline.
      const deadlines = p.pollAnswers.map((a) => /"ackDeadline":"([^"]+)"/.exec(a)?.[1]).filter(Boolean);
      expect(deadlines.length).toBeGreaterThanOrEqual(2);
      expect(deadlines[1]).toBe(deadlines[0]);
      console.info(`[cluster] (b) re-delivered as attempt 1 with the original ackDeadline ${deadlines[0]}`);
    }
  });

  it('(b) a dropped poll answer and a worker that never comes back: another worker gets it after the ack deadline', { timeout: 90_000 }, async () => {
    const p = await proxy();
    p.cutOffAfterDrop = true;
    worker('wb2', ['b2'], p.url);
    const lostId = await workerRegistered('wb2');
    await waitFor(() => p.seen.some((r) => r.path.includes('/poll')), 'a poll through the proxy');
    p.dropNextPollAnswer();
    const build = await api.submit({ labels: ['b2'], script: 'echo built' });
    await waitFor(() => p.droppedPollAnswers === 1, 'the assignment answer to be dropped');
    const assigned = await api.build(build.id);
    expect(assigned).toMatchObject({ state: 'assigned', attempt: 1, workerId: lostId });
    worker('wb3', ['b2']);
    const otherId = await workerRegistered('wb3');
    const done = await waitState(build.id, (b) => b.state === 'succeeded', 'the build to succeed on the other worker', 45_000);
    expect(done.attempt).toBe(2);
    expect(done.workerId).toBe(otherId);
    expect(done.attempts[0]).toMatchObject({ attempt: 1, workerId: lostId, startedAt: null });
    expect(done.attempts[1]).toMatchObject({ attempt: 2, workerId: otherId, state: 'succeeded' });
  });

  it('(c) a worker frozen (SIGSTOP) longer than the lease: attempt 2 runs elsewhere; attempt 1 is fenced and its late writes change nothing', { timeout: 120_000 }, async () => {
    const p = await proxy();
    const marks = join(tmp.dir, 'c-marks.txt');
    const w1 = worker('wc1', ['c'], p.url);
    await workerRegistered('wc1');
    const script = [
      `echo "run $BUILDFLEET_BUILD_ATTEMPT $$" >> '${marks}'`,
      'if [ "$BUILDFLEET_BUILD_ATTEMPT" = 1 ]; then',
      // A child in the build's process group, to see the whole tree go.
      `  (while [ -d '${tmp.dir}' ]; do sleep 0.1; done) &`,
      `  echo "child $!" >> '${marks}'`,
      `  while [ -d '${tmp.dir}' ]; do echo "tick from attempt 1"; mkdir -p out; echo late > out/late.txt; sleep 0.1; done`,
      'fi',
      'echo "attempt $BUILDFLEET_BUILD_ATTEMPT done"',
    ].join('\n');
    const build = await api.submit({ labels: ['c'], script, artifacts: ['out/*'] });
    await waitState(build.id, (b) => b.state === 'running' && b.attempt === 1, 'attempt 1 to run');
    const pids = await waitFor(async () => {
      const text = await readFile(marks, 'utf8');
      const leader = /^run 1 (\d+)$/m.exec(text)?.[1];
      const child = /^child (\d+)$/m.exec(text)?.[1];
      return leader && child ? [Number(leader), Number(child)] : undefined;
    }, "attempt 1's process ids");
    const token1 = p.seen.find((r) => r.path === `/api/v1/builds/${build.id}/start`)?.token;
    expect(token1).toMatch(/^bfb_/);

    w1.proc.kill('SIGSTOP');
    worker('wc2', ['c']);
    const done = await waitState(build.id, (b) => b.state === 'succeeded', 'attempt 2 to succeed on the other worker', 60_000);
    expect(done.attempt).toBe(2);
    expect(done.attempts[0]).toMatchObject({ attempt: 1 });
    expect(done.attempts[0]!.state).not.toBe('succeeded');
    expect(done.attempts[1]).toMatchObject({ attempt: 2, state: 'succeeded' });
    // The frozen worker could not stop its build: attempt 1's processes still run.
    expect(pids.every(alive)).toBe(true);

    const log1 = await api.log(build.id, 1);
    const log2 = await api.log(build.id, 2);
    expect(log2).toContain('attempt 2 done');
    expect(log2).not.toContain('tick from attempt 1');
    const artifacts = await api.get<{ artifacts: unknown[] }>(`/api/v1/builds/${build.id}/artifacts`);

    // Attempt 1's late writes, with its own build token: all 409 LEASE_LOST.
    const late = async (method: string, path: string, init: { json?: unknown; body?: RequestInit["body"]; headers?: Record<string, string> }) => {
      const err = await api.request(method, path, { ...init, token: token1! }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(HttpError);
      expect((err as HttpError).status).toBe(409);
      expect(JSON.parse((err as HttpError).body).error.code).toBe('LEASE_LOST');
    };
    await late('POST', `/api/v1/builds/${build.id}/logs`, {
      json: { attempt: 1, seq: 10_000, offset: Buffer.byteLength(log1), data: 'late line\n' },
    });
    await late('PUT', `/api/v1/builds/${build.id}/artifacts/late.txt`, {
      body: 'late\n',
      headers: { 'x-checksum-sha256': 'f152945b358aa26a9e72e25381deff94e254c547089bd690dccd218e9414d148', 'content-type': 'application/octet-stream' },
    });
    await late('POST', `/api/v1/builds/${build.id}/finish`, { json: { attempt: 1, outcome: 'failed', exitCode: 1, message: 'late' } });

    // Resumed, the worker learns it lost the lease and kills attempt 1's tree at once.
    w1.proc.kill('SIGCONT');
    await waitFor(() => pids.every((pid) => !alive(pid)), "attempt 1's process tree to be killed after the resume", 15_000);
    // Let the resumed worker's own late calls land: it heartbeats again (proxy sees it).
    const seenBefore = p.seen.length;
    await waitFor(() => p.seen.slice(seenBefore).some((r) => r.path.includes('/heartbeat')), 'a heartbeat from the resumed worker');

    const after = await api.build(build.id);
    expect(after).toMatchObject({ state: 'succeeded', attempt: 2, exitCode: 0, workerId: done.workerId });
    expect(after.attempts).toEqual(done.attempts);
    expect(await api.log(build.id, 1)).toBe(log1);
    expect(await api.log(build.id, 2)).toBe(log2);
    expect(await api.get(`/api/v1/builds/${build.id}/artifacts`)).toEqual(artifacts);
    expect(w1.proc.exitCode).toBeNull();
  });

  it('(d) SIGTERM during a long build: heartbeats go on past the lease, the build succeeds, then the worker exits', { timeout: 90_000 }, async () => {
    const w = worker('wd', ['d']);
    const workerId = await workerRegistered('wd');
    const release = join(tmp.dir, 'd-release');
    const build = await api.submit({ labels: ['d'], script: `echo started; ${waitForFileSh(release)}; echo finished` });
    await waitState(build.id, (b) => b.state === 'running', 'the build to run');
    const termAt = Date.now();
    w.proc.kill('SIGTERM');
    // Draining: no new builds.
    const other = await api.submit({ labels: ['d'], script: 'echo should not run' });
    // Heartbeats continue: the worker is seen well after one lease past the SIGTERM.
    await waitFor(
      async () => {
        const info = (await api.workers()).find((x) => x.id === workerId)!;
        return info.lastSeenAt !== null && Date.parse(info.lastSeenAt) > termAt + TIMINGS.leaseMs * 1.5;
      },
      'a heartbeat 1.5 leases after SIGTERM',
      30_000,
      200,
    );
    expect(await api.build(build.id)).toMatchObject({ state: 'running', attempt: 1, workerId });
    expect(w.proc.exitCode).toBeNull();
    await writeFile(release, '');
    const done = await waitState(build.id, (b) => b.state === 'succeeded', 'the build to succeed');
    expect(done.attempts).toHaveLength(1);
    expect(await w.exited).toBe(0);
    expect(await api.build(other.id)).toMatchObject({ state: 'queued', attempt: 1, workerId: null });
    await api.request('POST', `/api/v1/builds/${other.id}/cancel`);
  });

  it('(d) POST /workers/{id}/drain during a build: no new builds, the build succeeds, the worker stays until resumed', { timeout: 90_000 }, async () => {
    const w = worker('wd2', ['d2']);
    const workerId = await workerRegistered('wd2');
    const release = join(tmp.dir, 'd2-release');
    const build = await api.submit({ labels: ['d2'], script: `echo started; ${waitForFileSh(release)}; echo finished` });
    await waitState(build.id, (b) => b.state === 'running', 'the build to run');
    await api.request('POST', `/api/v1/workers/${workerId}/drain`);
    const other = await api.submit({ labels: ['d2'], script: 'echo after resume' });
    // The worker hears of the drain with its next heartbeat; it keeps running its build.
    const heartbeatsAfter = (since: number) =>
      waitFor(
        async () => {
          const info = (await api.workers()).find((x) => x.id === workerId)!;
          return info.lastSeenAt !== null && Date.parse(info.lastSeenAt) > since + 2 * TIMINGS.heartbeatIntervalMs;
        },
        'heartbeats after the drain',
      );
    await heartbeatsAfter(Date.now());
    expect(w.proc.exitCode).toBeNull();
    await writeFile(release, '');
    const done = await waitState(build.id, (b) => b.state === 'succeeded', 'the build to succeed');
    expect(done.attempts).toHaveLength(1);
    // Drained, not gone (issue 11): connected, idle, given nothing.
    await heartbeatsAfter(Date.now());
    expect(w.proc.exitCode).toBeNull();
    expect(await api.build(other.id)).toMatchObject({ state: 'queued', workerId: null });
    // Resumed: it takes the waiting build.
    await api.request('POST', `/api/v1/workers/${workerId}/resume`);
    expect(await waitState(other.id, (b) => b.state === 'succeeded', 'the queued build to run after the resume')).toMatchObject({ workerId });
  });

  it('(e) a build saturating every core keeps its lease', { timeout: 90_000 }, async () => {
    worker('we', ['e']);
    const workerId = await workerRegistered('we');
    const release = join(tmp.dir, 'e-release');
    const busy = `(while [ ! -e '${release}' ] && [ -d '${tmp.dir}' ]; do :; done) &`;
    const build = await api.submit({ labels: ['e'], script: `${busy} ${busy} ${busy} ${waitForFileSh(release)}; wait; echo finished` });
    const running = await waitState(build.id, (b) => b.state === 'running', 'the build to run');
    const startedAt = Date.parse(running.attempts[0]!.startedAt!);
    // Busy for more than two leases, still attempt 1 on the same worker.
    await waitFor(
      async () => {
        const b = await api.build(build.id);
        if (b.state !== 'running' || b.attempt !== 1) throw new Error(`the build lost its lease: ${JSON.stringify(b)}`);
        return Date.now() - startedAt > TIMINGS.leaseMs * 2.5;
      },
      'two and a half leases of saturated CPU',
      30_000,
      250,
    );
    await writeFile(release, '');
    const done = await waitState(build.id, (b) => b.state === 'succeeded', 'the build to succeed');
    expect(done.attempts).toEqual([expect.objectContaining({ attempt: 1, workerId, state: 'succeeded' })]);
  });
  /** A script that records `<tag> <attempt> <pgid> <child pid>` and, in attempt 1, runs until the test ends (silently). */
  function pidScript(marks: string, tag: string): string {
    return [
      `(while [ -d '${tmp.dir}' ]; do sleep 0.1; done) &`,
      `echo "${tag} $BUILDFLEET_BUILD_ATTEMPT $$ $!" >> '${marks}'`,
      `if [ "$BUILDFLEET_BUILD_ATTEMPT" = 1 ]; then while [ -d '${tmp.dir}' ]; do sleep 0.1; done; fi`,
      'kill $! 2>/dev/null; echo "attempt $BUILDFLEET_BUILD_ATTEMPT done"',
    ].join('\n');
  }

  async function pidsOf(marks: string, tag: string, attempt = 1): Promise<number[]> {
    return waitFor(async () => {
      const m = new RegExp(`^${tag} ${attempt} (\\d+) (\\d+)$`, 'm').exec(await readFile(marks, 'utf8').catch(() => ''));
      return m ? [Number(m[1]), Number(m[2])] : undefined;
    }, `the process ids of ${tag} attempt ${attempt}`);
  }

  it('a worker killed mid-build and restarted: it stops the process group left behind, and the build is re-run at once as attempt 2', { timeout: 90_000 }, async () => {
    const marks = join(tmp.dir, 'r-marks.txt');
    const first = worker('wr', ['r']);
    const workerId = await workerRegistered('wr');
    const build = await api.submit({ labels: ['r'], script: pidScript(marks, 'r') });
    const pids = await pidsOf(marks, 'r');
    // The worker records the group in <data dir>/worker/pids/<build id> right after spawning it.
    await waitFor(async () => (await readdir(join(tmp.dir, 'wr', 'worker', 'pids')).catch(() => [])).length > 0, 'the pid file');
    first.proc.kill('SIGKILL');
    await first.exited;
    expect(pids.every(alive)).toBe(true);
    const restartedAt = Date.now();
    const second = worker('wr', ['r']); // same data dir: same identity, new bootId
    await waitFor(() => pids.every((pid) => !alive(pid)), 'the leftover process group to be stopped', 30_000).catch((e: Error) => {
      throw new Error(`${e.message}\n${second.output()}`);
    });
    const done = await waitState(build.id, (b) => b.state === 'succeeded', 'attempt 2 to succeed', 45_000);
    expect(done).toMatchObject({ attempt: 2, workerId });
    expect(done.attempts[0]).toMatchObject({ attempt: 1, workerId });
    expect(done.attempts[0]!.state).not.toBe('succeeded');
    // Handed back when the restarted worker registered, not a lease later.
    const requeuedAt = Date.parse(done.attempts[0]!.finishedAt ?? done.attempts[1]!.startedAt!);
    expect(requeuedAt - restartedAt).toBeLessThan(30_000);
  });

  it('a canceled build whose worker vanished ends canceled when its lease expires, never requeued', { timeout: 90_000 }, async () => {
    const marks = join(tmp.dir, 'x-marks.txt');
    const w = worker('wx', ['x']);
    await workerRegistered('wx');
    const build = await api.submit({ labels: ['x'], script: pidScript(marks, 'x') });
    const pids = await pidsOf(marks, 'x');
    w.proc.kill('SIGSTOP');
    const canceling = (await api.request<{ build: Build }>('POST', `/api/v1/builds/${build.id}/cancel`)).build;
    expect(canceling).toMatchObject({ state: 'running', cancelRequested: true });
    const done = await waitState(build.id, (b) => b.state !== 'running', 'the lease to expire', 30_000);
    expect(done).toMatchObject({ state: 'canceled', attempt: 1 });
    expect(done.attempts).toHaveLength(1);
    w.proc.kill('SIGCONT');
    await waitFor(() => pids.every((pid) => !alive(pid)), 'the resumed worker to stop the build', 15_000);
    expect(await api.build(build.id)).toMatchObject({ state: 'canceled', attempt: 1 });
  });

  it('a deleted worker: its running build is lost at once, and the worker, registered anew, stops it', { timeout: 90_000 }, async () => {
    const marks = join(tmp.dir, 'del-marks.txt');
    worker('wdel', ['del']);
    const oldId = await workerRegistered('wdel');
    const build = await api.submit({ labels: ['del'], script: pidScript(marks, 'del') });
    const pids = await pidsOf(marks, 'del');
    await api.request('DELETE', `/api/v1/workers/${oldId}`);
    // At once, not a lease later: attempt 2 exists right after the DELETE.
    const lost = await api.build(build.id);
    expect(lost.attempt).toBe(2);
    expect(lost.attempts[0]).toMatchObject({ attempt: 1, workerId: oldId });
    // The worker hears 404, registers as a new worker, and stops what the old identity ran.
    await waitFor(() => pids.every((pid) => !alive(pid)), "the old identity's build to be stopped", 30_000);
    const done = await waitState(build.id, (b) => b.state === 'succeeded', 'attempt 2 to succeed', 45_000);
    expect(done.attempt).toBe(2);
    expect(done.workerId).not.toBe(oldId);
    expect((await api.workers()).some((w) => w.id === oldId)).toBe(false);
  });

  it('a build past its timeoutSeconds ends timed_out', { timeout: 60_000 }, async () => {
    worker('wt', ['t']);
    await workerRegistered('wt');
    const build = await api.submit({ labels: ['t'], timeoutSeconds: 1, script: `echo started; while [ -d '${tmp.dir}' ]; do sleep 0.1; done` });
    const done = await waitState(build.id, (b) => b.state !== 'queued' && b.state !== 'assigned' && b.state !== 'running', 'the build to end', 30_000);
    expect(done).toMatchObject({ state: 'timed_out', attempt: 1 });
    expect(done.attempts).toHaveLength(1);
  });
});


