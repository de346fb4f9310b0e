/**
 * Cancels on the poll (docs/protocol.md "poll", `watchCancel`): a worker that
 * lists the running builds it watches gets a cancel on its parked poll at
 * once, also with no free slot (it parks instead of answering 204), also
 * when the cancel goes through another controller on the same PostgreSQL.
 * Older workers (no `watchCancel`) see the answers they always saw.
 *
 * The controllers run on a fake clock that never moves, so a parked poll
 * never times out (its last look at the deadline would find the cancel too)
 * and the periodic re-check never runs: only the keyed wake-up can end a
 * park here. A poll with no free slot parks apart from the claim polls
 * (`cancelWake`), so the dispatcher never wakes it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeClock, paths, type AssignedBuild, type PollResponse, type RegisterResponse } from '@buildfleet/protocol';
import { createTestDatabase, describePg, type TestDatabase } from '../support/pg.js';
import { waitFor } from '../support/wait.js';
import { API_TOKEN, errorCode, startHarness, type Harness } from './harness.js';

const SLOW = { pollWaitMs: 30_000, pollRecheckMs: 60_000 };
/** A clock that stays where it is (see above). */
const frozen = () => ({ clock: new FakeClock(Date.now()) });

interface Body {
  freeSlots: number;
  activeBuildIds: string[];
  watchCancel?: string[];
}

function poller(h: Harness) {
  return (reg: RegisterResponse, body: Body, waitMs = 20_000) => h.req('POST', paths.poll(reg.workerId, waitMs), { token: reg.accessToken, json: body });
}

/** A worker (labels `[label]`) running `n` builds: registered, polled, started. */
/** A worker (`max` slots) with `n` builds running on it. */
async function running(h: Harness, label: string, n = 1, max = n): Promise<{ reg: RegisterResponse; builds: AssignedBuild[] }> {
  const reg = await h.registerOk({ labels: [label], maxConcurrentBuilds: max });
  for (let i = 0; i < n; i++) await h.submitOk({ script: 'x', labels: [label] });
  const res = await poller(h)(reg, { freeSlots: n, activeBuildIds: [] }, 0);
  const builds = ((await res.json()) as PollResponse).builds;
  expect(builds).toHaveLength(n);
  for (const b of builds) expect((await h.req('POST', paths.start(b.id), { token: b.buildToken, json: { attempt: b.attempt } })).status).toBe(200);
  return { reg, builds };
}

const cancel = (h: Harness, id: string) => h.req('POST', paths.cancel(id), { token: API_TOKEN });

describe('cancels on the poll (one controller)', () => {
  let h: Harness;
  const parked = () => ({ claims: h.ctl.app.buildfleet.pollWake.size, cancels: h.ctl.app.buildfleet.cancelWake.size });
  beforeAll(async () => {
    h = await startHarness(SLOW, frozen());
  });
  afterAll(async () => {
    await h?.close();
  });

  it('the registration answer announces watchCancel', async () => {
    const reg = await h.registerOk();
    expect(reg.settings.watchCancel).toBe(true);
  });

  it('with no free slot the poll parks (apart from claim polls) and answers the cancel at once, claiming nothing', async () => {
    const label = 'cancel-zero-slots';
    const { reg, builds } = await running(h, label);
    const id = builds[0]!.id;
    const answer = poller(h)(reg, { freeSlots: 0, activeBuildIds: [id], watchCancel: [id] });
    await waitFor(() => parked().cancels === 1, { what: 'the poll to park' });
    expect(parked().claims).toBe(0);
    // A build this worker could run does not end the park: the poll has no slot for it.
    const queued = await h.submitOk({ script: 'y', labels: [label] });
    expect(parked()).toEqual({ claims: 0, cancels: 1 });
    expect((await cancel(h, id)).status).toBe(200);
    const res = await answer;
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ builds: [], cancel: [id] });
    expect(parked().cancels).toBe(0);
    expect((await h.req('GET', paths.build(queued.id), { token: API_TOKEN }).then((r) => r.json())) as unknown).toMatchObject({ build: { state: 'queued' } });
  });

  it('a cancel requested before the poll answers at once; only watched builds are listed', async () => {
    const { reg, builds } = await running(h, 'cancel-before', 2);
    const [a, b] = builds.map((x) => x.id) as [string, string];
    await cancel(h, a);
    await cancel(h, b);
    const res = await poller(h)(reg, { freeSlots: 0, activeBuildIds: [a, b], watchCancel: [a] });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ builds: [], cancel: [a] });
    // Nothing watched (every build is being stopped already): no park, 204 at once, as before.
    expect((await poller(h)(reg, { freeSlots: 0, activeBuildIds: [a, b], watchCancel: [] })).status).toBe(204);
  });

  it('a poll with free slots that watches cancels answers the cancel of its running build', async () => {
    const { reg, builds } = await running(h, 'cancel-free-slot');
    const id = builds[0]!.id;
    // maxConcurrentBuilds is 1, but the worker says it has a slot: the claim side is not at issue here.
    const answer = poller(h)(reg, { freeSlots: 1, activeBuildIds: [id], watchCancel: [id] });
    await waitFor(() => parked().claims === 1, { what: 'the poll to park' });
    await cancel(h, id);
    const res = await answer;
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ builds: [], cancel: [id] });
  });

  it('a poll without watchCancel answers as before: no cancel field, and 204 at once with no free slot', async () => {
    // Two slots, so the second poll can be given a build while the first is running.
    const { reg, builds } = await running(h, 'older-worker', 1, 2);
    const id = builds[0]!.id;
    await cancel(h, id);
    const zero = await poller(h)(reg, { freeSlots: 0, activeBuildIds: [id] });
    expect(zero.status).toBe(204);
    await h.submitOk({ script: 'z', labels: ['older-worker'] });
    const res = await poller(h)(reg, { freeSlots: 1, activeBuildIds: [id] }, 0);
    expect(res.status).toBe(200);
    const body = (await res.json()) as Record<string, unknown>;
    expect(Object.keys(body)).toEqual(['builds']);
  });

  it('a watch-only poll whose token is rotated meanwhile answers 401 like a fresh request', async () => {
    const { reg, builds } = await running(h, 'cancel-rotated');
    const id = builds[0]!.id;
    const answer = poller(h)(reg, { freeSlots: 0, activeBuildIds: [id], watchCancel: [id] });
    await waitFor(() => parked().cancels === 1, { what: 'the poll to park' });
    const again = await h.register({ labels: ['cancel-rotated'], workerId: reg.workerId, workerSecret: reg.workerSecret, activeBuildIds: [id] });
    expect(again.status).toBe(200);
    const res = await answer;
    expect(res.status).toBe(401);
    expect(await errorCode(res)).toBe('TOKEN_INVALID');
  });
});

describePg('cancels on the poll across two controllers on one PostgreSQL', () => {
  let db: TestDatabase;
  let a: Harness;
  let b: Harness;
  beforeAll(async () => {
    db = await createTestDatabase();
    a = await startHarness({ databaseUrl: db.url, ...SLOW }, frozen());
    b = await startHarness({ databaseUrl: db.url, ...SLOW }, frozen());
  });
  afterAll(async () => {
    await a?.close();
    await b?.close();
    await db?.drop();
  });

  it('a watch-only poll parked on controller A answers a cancel requested through controller B (NOTIFY keyed by worker)', async () => {
    const { reg, builds } = await running(a, 'cross-cancel');
    const id = builds[0]!.id;
    const answer = poller(a)(reg, { freeSlots: 0, activeBuildIds: [id], watchCancel: [id] });
    await waitFor(() => a.ctl.app.buildfleet.cancelWake.size === 1, { what: 'the poll to park on A' });
    expect((await cancel(b, id)).status).toBe(200);
    const res = await answer;
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ builds: [], cancel: [id] });
  });
});
