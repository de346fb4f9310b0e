/**
 * Long polls park and wake on events, not on timers: a parked poll answers
 * as soon as a build is submitted (the periodic re-check is set to a minute
 * here, so only the wake-up can explain a fast answer).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { paths, type Build, type PollResponse } from '@buildfleet/protocol';
import { createTestDatabase, describePg, type TestDatabase } from '../support/pg.js';
import { waitFor } from '../support/wait.js';
import { API_TOKEN, errorCode, startHarness, type Harness } from './harness.js';

let h: Harness;
beforeAll(async () => {
  h = await startHarness({ pollWaitMs: 30_000, pollRecheckMs: 60_000 });
});
afterAll(async () => {
  await h?.close();
});

const parked = () => h.ctl.app.buildfleet.pollWake.size;
const poll = (workerId: string, token: string, waitMs: number, freeSlots = 1, signal?: AbortSignal) =>
  h.req('POST', paths.poll(workerId, waitMs), { token, json: { freeSlots, activeBuildIds: [] }, signal });

describe('long poll', () => {
  it('a parked poll answers as soon as a matching build is submitted', async () => {
    const label = 'wake-test';
    const reg = await h.registerOk({ labels: [label] });
    const started = performance.now();
    const answer = poll(reg.workerId, reg.accessToken, 20_000);
    await waitFor(() => parked() === 1, { what: 'the poll to park' });
    const build = await h.submitOk({ script: 'x', labels: [label] });
    const res = await answer;
    expect(res.status).toBe(200);
    const body = (await res.json()) as PollResponse;
    expect(body.builds.map((b) => b.id)).toEqual([build.id]);
    // Far below the 20 s wait and the 60 s re-check: the wake-up did it.
    expect(performance.now() - started).toBeLessThan(10_000);
    expect(parked()).toBe(0);
  });

  it('a build the worker cannot run does not end the park; the wait does (204)', async () => {
    const reg = await h.registerOk({ labels: ['only-this'] });
    const answer = poll(reg.workerId, reg.accessToken, 400);
    await waitFor(() => parked() === 1, { what: 'the poll to park' });
    await h.submitOk({ script: 'x', labels: ['something-else'] });
    const res = await answer;
    expect(res.status).toBe(204);
  });

  it('freeSlots 0 answers 204 at once even with a matching build queued', async () => {
    const reg = await h.registerOk({ labels: ['zero-slots'] });
    await h.submitOk({ script: 'x', labels: ['zero-slots'] });
    const res = await poll(reg.workerId, reg.accessToken, 20_000, 0);
    expect(res.status).toBe(204);
    // The build is still there for the next poll with a slot.
    const res2 = await poll(reg.workerId, reg.accessToken, 0, 1);
    expect(res2.status).toBe(200);
  });

  it('waitMs is capped by the controller', async () => {
    const capped = await startHarness({ pollWaitMs: 300, pollRecheckMs: 60_000 });
    try {
      const reg = await capped.registerOk();
      const t0 = performance.now();
      const res = await capped.req('POST', paths.poll(reg.workerId, 600_000), { token: reg.accessToken, json: { freeSlots: 1, activeBuildIds: [] } });
      expect(res.status).toBe(204);
      expect(performance.now() - t0).toBeLessThan(10_000);
    } finally {
      await capped.close();
    }
  });

  it('a parked poll of a worker deleted meanwhile answers 404 WORKER_NOT_FOUND', async () => {
    const reg = await h.registerOk({ labels: ['deleted-while-parked'] });
    const answer = poll(reg.workerId, reg.accessToken, 20_000);
    await waitFor(() => parked() === 1, { what: 'the poll to park' });
    expect((await h.req('DELETE', paths.worker(reg.workerId), { token: API_TOKEN })).status).toBe(200);
    const res = await answer;
    expect(res.status).toBe(404);
    expect(await errorCode(res)).toBe('WORKER_NOT_FOUND');
  });

  it('a parked poll whose token was rotated by a re-registration answers 401', async () => {
    const reg = await h.registerOk({ labels: ['rotated-while-parked'] });
    const answer = poll(reg.workerId, reg.accessToken, 20_000);
    await waitFor(() => parked() === 1, { what: 'the poll to park' });
    const again = await h.register({ labels: ['rotated-while-parked'], workerId: reg.workerId, workerSecret: reg.workerSecret });
    expect(again.status).toBe(200);
    const res = await answer;
    expect(res.status).toBe(401);
    expect(await errorCode(res)).toBe('TOKEN_INVALID');
  });

  it('a client that goes away ends its park', async () => {
    const reg = await h.registerOk({ labels: ['goes-away'] });
    const abort = new AbortController();
    const answer = poll(reg.workerId, reg.accessToken, 20_000, 1, abort.signal).catch((e: unknown) => e);
    await waitFor(() => parked() === 1, { what: 'the poll to park' });
    abort.abort();
    await answer;
    await waitFor(() => parked() === 0, { what: 'the park to end' });
    // The build submitted now is not lost to the gone poll.
    const b = await h.submitOk({ script: 'x', labels: ['goes-away'] });
    const res = await poll(reg.workerId, reg.accessToken, 0);
    expect(((await res.json()) as PollResponse).builds.map((x) => x.id)).toEqual([b.id]);
  });

  it('closing the controller answers parked polls with 204', async () => {
    const own = await startHarness({ pollWaitMs: 30_000, pollRecheckMs: 60_000 });
    const reg = await own.registerOk();
    const answer = own.req('POST', paths.poll(reg.workerId, 30_000), { token: reg.accessToken, json: { freeSlots: 1, activeBuildIds: [] } });
    await waitFor(() => own.ctl.app.buildfleet.pollWake.size === 1, { what: 'the poll to park' });
    const closing = own.close();
    const res = await answer;
    expect(res.status).toBe(204);
    await closing;
  });
});

describe('wake-up gate', () => {
  it('a hint with nothing queued costs one check, not a claim per parked poll; a submit wakes them all', async () => {
    const own = await startHarness({ pollWaitMs: 30_000, pollRecheckMs: 60_000 });
    try {
      const store = own.ctl.store;
      let polls = 0;
      let checks = 0;
      let checked = 0;
      const poll0 = store.poll.bind(store);
      const has0 = store.hasQueuedBuilds.bind(store);
      store.poll = (input) => {
        polls++;
        return poll0(input);
      };
      store.hasQueuedBuilds = async () => {
        checks++;
        const queued = await has0();
        checked++;
        return queued;
      };
      const regs = await Promise.all([1, 2, 3].map(() => own.registerOk({ labels: ['gate'] })));
      const answers = regs.map((r) =>
        own.req('POST', paths.poll(r.workerId, 30_000), { token: r.accessToken, json: { freeSlots: 1, activeBuildIds: [] } }),
      );
      await waitFor(() => own.ctl.app.buildfleet.pollWake.size === 3, { what: 'three parked polls' });
      expect(polls).toBe(3);
      // A 'builds' hint while nothing is queued: one check, no claims.
      const checksBefore = checks;
      own.ctl.app.buildfleet.hint('builds');
      // (A woken poll would call store.poll within microtasks of the check's end.)
      await waitFor(() => checked > checksBefore, { what: 'the gate to check' });
      expect(checks - checksBefore).toBe(1);
      expect(own.ctl.app.buildfleet.pollWake.size).toBe(3);
      expect(polls).toBe(3);
      // A re-registration (token refresh) of one worker re-checks only that worker's poll.
      const refreshed = await own.register({ labels: ['gate'], workerId: regs[0]!.workerId, workerSecret: regs[0]!.workerSecret });
      expect(refreshed.status).toBe(200);
      const r0 = await answers[0]!;
      expect(r0.status).toBe(401);
      expect(polls).toBe(4);
      expect(own.ctl.app.buildfleet.pollWake.size).toBe(2);
      // A submit wakes the rest; exactly one gets the build, the other parks again.
      const b = await own.submitOk({ script: 'x', labels: ['gate'] });
      const first = await Promise.race(answers.slice(1).map((p, i) => p.then((r) => ({ r, i }))));
      expect(first.r.status).toBe(200);
      expect(((await first.r.json()) as PollResponse).builds[0]!.id).toBe(b.id);
      await waitFor(() => own.ctl.app.buildfleet.pollWake.size === 1, { what: 'the other one to park again' });
    } finally {
      await own.close();
    }
  });
});

describe('the end of a wait', () => {
  it('costs no statement when every wake-up was delivered; one more look while wake-ups may be lost', async () => {
    const own = await startHarness({ pollWaitMs: 30_000, pollRecheckMs: 60_000 });
    try {
      const store = own.ctl.store;
      const notifier = own.ctl.app.buildfleet.notifier;
      let polls = 0;
      const poll0 = store.poll.bind(store);
      store.poll = (input) => {
        polls++;
        return poll0(input);
      };
      const reg = await own.registerOk({ labels: ['quiet'] });
      const wait = (ms: number) =>
        own.req('POST', paths.poll(reg.workerId, ms), { token: reg.accessToken, json: { freeSlots: 1, activeBuildIds: [] } });
      expect((await wait(300)).status).toBe(204);
      expect(polls).toBe(1); // the arrival's claim round only
      // The in-process notifier cannot lose a hint; a LISTEN connection that is down can.
      Object.defineProperty(notifier, 'delivering', { get: () => false, configurable: true });
      try {
        expect((await wait(300)).status).toBe(204);
        expect(polls).toBe(3); // the arrival, and the last look at the end of the wait
      } finally {
        delete (notifier as { delivering?: boolean }).delivering;
      }
      expect(notifier.delivering).toBe(true);
    } finally {
      await own.close();
    }
  });
});

describe('poll dispatch', () => {
  it('wakes parked polls one at a time until one can run the build; a build nobody can run is not retried by every re-check', async () => {
    const own = await startHarness({ pollWaitMs: 30_000, pollRecheckMs: 50 });
    try {
      const store = own.ctl.store;
      const byWorker = new Map<string, number>();
      const poll0 = store.poll.bind(store);
      store.poll = (input) => {
        byWorker.set(input.workerId, (byWorker.get(input.workerId) ?? 0) + 1);
        return poll0(input);
      };
      let checks = 0;
      const has0 = store.hasQueuedBuilds.bind(store);
      store.hasQueuedBuilds = () => {
        checks++;
        return has0();
      };
      const a = await own.registerOk({ labels: ['a'] });
      const b = await own.registerOk({ labels: ['b'] });
      const pa = own.req('POST', paths.poll(a.workerId, 30_000), { token: a.accessToken, json: { freeSlots: 1, activeBuildIds: [] } });
      await waitFor(() => own.ctl.app.buildfleet.pollWake.size === 1, { what: 'a to park' });
      const pb = own.req('POST', paths.poll(b.workerId, 30_000), { token: b.accessToken, json: { freeSlots: 1, activeBuildIds: [] } });
      await waitFor(() => own.ctl.app.buildfleet.pollWake.size === 2, { what: 'b to park' });
      const build = await own.submitOk({ script: 'x', labels: ['b'] });
      const res = await pb;
      expect(res.status).toBe(200);
      expect(((await res.json()) as PollResponse).builds[0]!.id).toBe(build.id);
      // a (oldest) was tried first and found nothing; b claimed.
      expect(byWorker.get(a.workerId)).toBe(2);
      expect(byWorker.get(b.workerId)).toBe(2);

      // A build only 'c' could run: a is tried once for it, then left alone by the re-checks.
      await own.submitOk({ script: 'y', labels: ['c'] });
      await waitFor(() => byWorker.get(a.workerId) === 3, { what: 'a to be tried for the new build' });
      const before = checks;
      await waitFor(() => checks >= before + 5, { what: 'several periodic re-checks' });
      expect(byWorker.get(a.workerId)).toBe(3);
      expect(own.ctl.app.buildfleet.pollWake.size).toBe(1);
      void pa.catch(() => {});
    } finally {
      await own.close();
    }
  });
});

describe('drain', () => {
  it('a draining worker gets no new builds, keeps its running ones and hears draining in heartbeats', async () => {
    const label = 'drain-test';
    const reg = await h.registerOk({ labels: [label], maxConcurrentBuilds: 2 });
    const first = await h.submitOk({ script: 'x', labels: [label] });
    const got = (await (await poll(reg.workerId, reg.accessToken, 0)).json()) as PollResponse;
    const a = got.builds[0]!;
    expect(a.id).toBe(first.id);
    expect((await h.req('POST', paths.start(a.id), { token: a.buildToken, json: { attempt: 1 } })).status).toBe(200);

    const drain = await h.req('POST', paths.drain(reg.workerId), { token: API_TOKEN });
    expect(drain.status).toBe(200);
    expect(((await drain.json()) as { worker: { status: string } }).worker.status).toBe('draining');

    await h.submitOk({ script: 'y', labels: [label] });
    const none = await poll(reg.workerId, reg.accessToken, 300);
    expect(none.status).toBe(204);

    const hb = await h.req('POST', paths.heartbeat(reg.workerId), { token: reg.accessToken, json: { activeBuildIds: [a.id] } });
    const hbBody = (await hb.json()) as { cancel: string[]; abandon: string[]; draining?: boolean };
    expect(hbBody).toMatchObject({ cancel: [], abandon: [], draining: true });

    const fin = await h.req('POST', paths.finish(a.id), { token: a.buildToken, json: { attempt: 1, outcome: 'succeeded', exitCode: 0 } });
    expect(((await fin.json()) as { build: Build }).build.state).toBe('succeeded');

    const workers = (await (await h.req('GET', paths.workers(), { token: API_TOKEN })).json()) as { workers: Array<{ id: string; status: string }> };
    expect(workers.workers.find((w) => w.id === reg.workerId)?.status).toBe('draining');
    await expectNotFound(h.req('POST', paths.drain('no-such-worker'), { token: API_TOKEN }));
  });
});

async function expectNotFound(p: Promise<Response>) {
  const res = await p;
  expect(res.status).toBe(404);
  expect(await errorCode(res)).toBe('WORKER_NOT_FOUND');
}

describePg('long poll across two controllers on one PostgreSQL', () => {
  let db: TestDatabase;
  let a: Harness;
  let b: Harness;
  beforeAll(async () => {
    db = await createTestDatabase();
    a = await startHarness({ databaseUrl: db.url, pollWaitMs: 30_000, pollRecheckMs: 60_000 });
    b = await startHarness({ databaseUrl: db.url, pollWaitMs: 30_000, pollRecheckMs: 60_000 });
  });
  afterAll(async () => {
    await a?.close();
    await b?.close();
    await db?.drop();
  });

  it('a poll parked on controller A answers when the build is submitted on controller B (NOTIFY)', async () => {
    const reg = await a.registerOk({ labels: ['cross'] });
    const started = performance.now();
    const answer = a.req('POST', paths.poll(reg.workerId, 20_000), { token: reg.accessToken, json: { freeSlots: 1, activeBuildIds: [] } });
    await waitFor(() => a.ctl.app.buildfleet.pollWake.size === 1, { what: 'the poll to park on A' });
    const build = await b.submitOk({ script: 'x', labels: ['cross'] });
    const res = await answer;
    expect(res.status).toBe(200);
    const got = (await res.json()) as PollResponse;
    expect(got.builds.map((x) => x.id)).toEqual([build.id]);
    // The build token from A works on B: both derive it from the key in the database.
    const start = await b.req('POST', paths.start(build.id), { token: got.builds[0]!.buildToken, json: { attempt: 1 } });
    expect(start.status).toBe(200);
    expect(performance.now() - started).toBeLessThan(10_000);
  });
});
