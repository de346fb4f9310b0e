/**
 * Every error path of docs/protocol.md that the HTTP layer answers, against a
 * real server with the SQLite store, including the check order
 * 401 → 403 → 404 → 409 → 400.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeClock, paths, type AssignedBuild, type Build, type PollResponse, type RegisterResponse } from '@buildfleet/protocol';
import { createTestDatabase, describePg, type TestDatabase } from '../support/pg.js';
import { API_TOKEN, ENROLLMENT_TOKEN, errorCode, rawRequest, sha256, startHarness, type Harness } from './harness.js';

let h: Harness;

describe('error paths (SQLite)', () => {
  beforeAll(async () => {
    h = await startHarness({ maxArtifactBytes: 1000 });
  });
  afterAll(async () => {
    await h?.close();
  });
  errorTests();
});

describePg('error paths (PostgreSQL)', () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
    h = await startHarness({ maxArtifactBytes: 1000, databaseUrl: db.url });
  });
  afterAll(async () => {
    await h?.close();
    await db?.drop();
  });
  errorTests();
});

/** Submits a build and has a fresh worker claim it (and start it unless told). */
async function claimed(opts: { start?: boolean; labels?: string[] } = {}): Promise<{ reg: RegisterResponse; a: AssignedBuild }> {
  const labels = opts.labels ?? [`solo-${Math.random().toString(36).slice(2)}`];
  await h.submitOk({ script: 'true', labels });
  const reg = await h.registerOk({ labels });
  const res = await h.req('POST', paths.poll(reg.workerId, 0), { token: reg.accessToken, json: { freeSlots: 1, activeBuildIds: [] } });
  expect(res.status).toBe(200);
  const a = ((await res.json()) as PollResponse).builds[0]!;
  if (opts.start ?? true) {
    const s = await h.req('POST', paths.start(a.id), { token: a.buildToken, json: { attempt: a.attempt } });
    expect(s.status).toBe(200);
  }
  return { reg, a };
}

async function expectError(res: Response | Promise<Response>, status: number, code: string) {
  const r = await res;
  const got = await errorCode(r);
  expect({ status: r.status, code: got }).toEqual({ status, code });
}

function errorTests(): void {
describe('conventions', () => {
  it('unknown routes are 404 NOT_FOUND with an error body', async () => {
    await expectError(h.req('GET', '/api/v1/nothing-here'), 404, 'NOT_FOUND');
    await expectError(h.req('DELETE', '/healthz'), 404, 'NOT_FOUND');
  });

  it('API routes need an API token: missing, malformed, unknown and other kinds are 401 TOKEN_INVALID', async () => {
    await expectError(h.req('GET', paths.builds()), 401, 'TOKEN_INVALID');
    await expectError(h.req('GET', paths.builds(), { headers: { authorization: 'Basic abc' } }), 401, 'TOKEN_INVALID');
    await expectError(h.req('GET', paths.builds(), { token: 'bfa_unknown-token-0000000000000000' }), 401, 'TOKEN_INVALID');
    await expectError(h.req('GET', paths.builds(), { token: ENROLLMENT_TOKEN }), 401, 'TOKEN_INVALID');
    const reg = await h.registerOk();
    await expectError(h.req('GET', paths.workers(), { token: reg.accessToken }), 401, 'TOKEN_INVALID');
  });

  it('authentication comes before body validation: malformed JSON without a token is 401', async () => {
    await expectError(
      h.req('POST', paths.cancel('x'), { body: '{not json', headers: { 'content-type': 'application/json' } }),
      401,
      'TOKEN_INVALID',
    );
  });

  it('malformed JSON, empty JSON and a wrong content type are 400 VALIDATION_FAILED', async () => {
    const reg = await h.registerOk();
    const p = paths.heartbeat(reg.workerId);
    await expectError(
      h.req('POST', p, { token: reg.accessToken, body: '{"activeBuildIds": [', headers: { 'content-type': 'application/json' } }),
      400,
      'VALIDATION_FAILED',
    );
    await expectError(h.req('POST', p, { token: reg.accessToken, body: '', headers: { 'content-type': 'application/json' } }), 400, 'VALIDATION_FAILED');
    await expectError(h.req('POST', p, { token: reg.accessToken, body: 'activeBuildIds', headers: { 'content-type': 'text/plain' } }), 400, 'VALIDATION_FAILED');
    await expectError(h.req('POST', p, { token: reg.accessToken }), 400, 'VALIDATION_FAILED');
  });

  it('a validation error names the field', async () => {
    const reg = await h.registerOk();
    const res = await h.req('POST', paths.poll(reg.workerId), { token: reg.accessToken, json: { freeSlots: 'many', activeBuildIds: [] } });
    expect(res.status).toBe(400);
    const body = (await res.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe('VALIDATION_FAILED');
    expect(body.error.message).toMatch(/freeSlots/);
  });

  it('a JSON body over the limit is 413 PAYLOAD_TOO_LARGE', async () => {
    const small = await startHarness({ maxJsonBytes: 2048 });
    try {
      const reg = await small.registerOk();
      await expectError(
        small.req('POST', paths.heartbeat(reg.workerId), { token: reg.accessToken, json: { activeBuildIds: ['x'.repeat(5000)] } }),
        413,
        'PAYLOAD_TOO_LARGE',
      );
    } finally {
      await small.close();
    }
  });
});

describe('registration (docs/protocol.md cases 1-5)', () => {
  it('1: a new worker needs an enrollment token; 201 with id, secret, access token, settings', async () => {
    const res = await h.register({ name: 'new' });
    expect(res.status).toBe(201);
    const body = (await res.json()) as RegisterResponse;
    expect(body.workerId).toBeTruthy();
    expect(body.workerSecret).toMatch(/^bfs_/);
    expect(body.accessToken).toMatch(/^bfw_/);
    expect(body.accessTokenExpiresInMs).toBe(3_600_000);
    expect(Date.parse(body.accessTokenExpiresAt)).toBeGreaterThan(Date.now());
    expect(body.settings).toEqual({ pollWaitMs: 5_000, heartbeatIntervalMs: 10_000, leaseMs: 60_000, ackTimeoutMs: 30_000, watchCancel: true });
    expect(body.builds).toEqual([]);
    await expectError(h.register({}, 'bfe_not-a-real-enrollment-token-000'), 401, 'TOKEN_INVALID');
    await expectError(h.req('POST', paths.register(), { json: { name: 'x', labels: [], maxConcurrentBuilds: 1, version: '1' } }), 401, 'TOKEN_INVALID');
    await expectError(h.register({}, API_TOKEN), 401, 'TOKEN_INVALID');
  });

  it('1: a registrationId retry returns 201 with the same workerId until the first authenticated call, then 409', async () => {
    const registrationId = crypto.randomUUID();
    const first = (await (await h.register({ registrationId })).json()) as RegisterResponse;
    const retry = await h.register({ registrationId });
    expect(retry.status).toBe(201);
    const second = (await retry.json()) as RegisterResponse;
    expect(second.workerId).toBe(first.workerId);
    expect(second.accessToken).not.toBe(first.accessToken);
    // The lost credentials are void.
    await expectError(h.req('POST', paths.heartbeat(first.workerId), { token: first.accessToken, json: { activeBuildIds: [] } }), 401, 'TOKEN_INVALID');
    const hb = await h.req('POST', paths.heartbeat(second.workerId), { token: second.accessToken, json: { activeBuildIds: [] } });
    expect(hb.status).toBe(200);
    await expectError(h.register({ registrationId }), 409, 'INVALID_TRANSITION');
  });

  it('2: re-registration with the secret needs no bearer, keeps the id and rotates the access token', async () => {
    const reg = await h.registerOk({ labels: ['a'] });
    const res = await h.req('POST', paths.register(), {
      json: { name: 'w', labels: ['a'], maxConcurrentBuilds: 1, version: 't', bootId: 'b', workerId: reg.workerId, workerSecret: reg.workerSecret, activeBuildCount: 0, activeBuildIds: [] },
    });
    expect(res.status).toBe(200);
    const again = (await res.json()) as RegisterResponse;
    expect(again.workerId).toBe(reg.workerId);
    expect(again.workerSecret).toBeUndefined();
    expect(again.accessToken).not.toBe(reg.accessToken);
    expect(again.abandon).toEqual([]);
    await expectError(h.req('POST', paths.heartbeat(reg.workerId), { token: reg.accessToken, json: { activeBuildIds: [] } }), 401, 'TOKEN_INVALID');
    // An enrollment token that is invalid is ignored on this path.
    const withBadBearer = await h.req('POST', paths.register(), {
      token: 'bfe_revoked-or-whatever-0000000000',
      json: { name: 'w', labels: ['a'], maxConcurrentBuilds: 1, version: 't', bootId: 'b', workerId: reg.workerId, workerSecret: reg.workerSecret },
    });
    expect(withBadBearer.status).toBe(200);
  });

  it('2: re-registration lists held builds with build tokens and abandons builds it no longer owns', async () => {
    const { reg, a } = await claimed();
    const res = await h.req('POST', paths.register(), {
      json: { name: 'w', labels: a.spec.labels, maxConcurrentBuilds: 2, version: 't', workerId: reg.workerId, workerSecret: reg.workerSecret, activeBuildCount: 2, activeBuildIds: [a.id, 'gone-build'] },
    });
    expect(res.status).toBe(200);
    const body = (await res.json()) as RegisterResponse;
    expect(body.builds.map((b) => [b.id, b.attempt, b.buildToken, b.sourceUrl])).toEqual([[a.id, 1, a.buildToken, `/api/v1/builds/${a.id}/source`]]);
    expect(body.abandon).toEqual(['gone-build']);
  });

  it('workerId without workerSecret is 400; an unknown workerId is 404; a wrong secret is 401', async () => {
    const reg = await h.registerOk();
    await expectError(h.register({ workerId: reg.workerId }), 400, 'VALIDATION_FAILED');
    await expectError(h.register({ workerId: 'no-such-worker', workerSecret: 'bfs_x' }), 404, 'WORKER_NOT_FOUND');
    await expectError(h.register({ workerId: reg.workerId, workerSecret: 'bfs_wrong-secret' }), 401, 'TOKEN_INVALID');
  });

  it('3: a deleted worker gets 404 WORKER_NOT_FOUND on register, poll and heartbeat', async () => {
    const reg = await h.registerOk();
    const del = await h.req('DELETE', paths.worker(reg.workerId), { token: API_TOKEN });
    expect(del.status).toBe(200);
    await expectError(h.register({ workerId: reg.workerId, workerSecret: reg.workerSecret }), 404, 'WORKER_NOT_FOUND');
    await expectError(h.req('POST', paths.poll(reg.workerId, 0), { token: reg.accessToken, json: { freeSlots: 1, activeBuildIds: [] } }), 404, 'WORKER_NOT_FOUND');
    await expectError(h.req('POST', paths.heartbeat(reg.workerId), { token: reg.accessToken, json: { activeBuildIds: [] } }), 404, 'WORKER_NOT_FOUND');
    await expectError(h.req('GET', paths.worker(reg.workerId), { token: API_TOKEN }), 404, 'WORKER_NOT_FOUND');
  });

  it('5: a body without activeBuildCount is accepted (counts as 0)', async () => {
    const res = await h.req('POST', paths.register(), { token: ENROLLMENT_TOKEN, json: { name: 'old', labels: [], maxConcurrentBuilds: 1, version: '0.0.1' } });
    expect(res.status).toBe(201);
  });

  it('a superseded bootId is 409 IDENTITY_CONFLICT', async () => {
    const reg = await h.registerOk({ bootId: 'boot-1' });
    const base = { name: 'w', labels: [], maxConcurrentBuilds: 1, version: 't', workerId: reg.workerId, workerSecret: reg.workerSecret };
    expect((await h.req('POST', paths.register(), { json: { ...base, bootId: 'boot-2' } })).status).toBe(200);
    await expectError(h.req('POST', paths.register(), { json: { ...base, bootId: 'boot-1' } }), 409, 'IDENTITY_CONFLICT');
  });
});

describe('worker access tokens', () => {
  it("another worker's access token is 403; a build token on a worker route is 401", async () => {
    const w1 = await h.registerOk();
    const w2 = await h.registerOk();
    await expectError(h.req('POST', paths.heartbeat(w1.workerId), { token: w2.accessToken, json: { activeBuildIds: [] } }), 403, 'FORBIDDEN');
    await expectError(h.req('POST', paths.poll(w1.workerId, 0), { token: w2.accessToken, json: { freeSlots: 1, activeBuildIds: [] } }), 403, 'FORBIDDEN');
    await expectError(h.req('POST', paths.heartbeat(w1.workerId), { token: API_TOKEN, json: { activeBuildIds: [] } }), 401, 'TOKEN_INVALID');
    // 403 before 400: the body is wrong too.
    await expectError(h.req('POST', paths.heartbeat(w1.workerId), { token: w2.accessToken, json: { nope: 1 } }), 403, 'FORBIDDEN');
  });

  it('an expired access token is 401 TOKEN_EXPIRED, not a moment before', async () => {
    const clock = new FakeClock();
    const short = await startHarness({ accessTokenTtlMs: 1000 }, { clock });
    try {
      const reg = await short.registerOk();
      expect(Date.parse(reg.accessTokenExpiresAt)).toBe(clock.now() + 1000);
      const beat = () => short.req('POST', paths.heartbeat(reg.workerId), { token: reg.accessToken, json: { activeBuildIds: [] } });
      await clock.advance(999);
      expect((await beat()).status).toBe(200);
      await clock.advance(2);
      await expectError(beat(), 401, 'TOKEN_EXPIRED');
    } finally {
      await short.close();
    }
  });
});

describe('build tokens', () => {
  it("another build's token is 403, an unknown build is 404, a forged token 401", async () => {
    const one = await claimed();
    const two = await claimed();
    await expectError(h.req('POST', paths.start(one.a.id), { token: two.a.buildToken, json: { attempt: 1 } }), 403, 'FORBIDDEN');
    await expectError(h.req('GET', paths.source(one.a.id), { token: two.a.buildToken }), 403, 'FORBIDDEN');
    await expectError(h.req('POST', paths.logs(one.a.id), { token: 'bfb_' + one.a.id + '.1.forged', json: { attempt: 1, seq: 0, offset: 0, data: '' } }), 401, 'TOKEN_INVALID');
    await expectError(h.req('POST', paths.logs(one.a.id), { token: API_TOKEN, json: { attempt: 1, seq: 0, offset: 0, data: '' } }), 401, 'TOKEN_INVALID');
    await expectError(h.req('POST', paths.logs(one.a.id), { token: one.reg.accessToken, json: { attempt: 1, seq: 0, offset: 0, data: '' } }), 401, 'TOKEN_INVALID');
    // A token derived for an id that does not exist (issued by this controller's key).
    const ghost = h.ctl.app.buildfleet.tokens.issue('0000-no-such-build', 1);
    await expectError(h.req('POST', paths.start('0000-no-such-build'), { token: ghost, json: { attempt: 1 } }), 404, 'BUILD_NOT_FOUND');
    // API side: unknown build.
    await expectError(h.req('GET', paths.build('0000-no-such-build'), { token: API_TOKEN }), 404, 'BUILD_NOT_FOUND');
  });

  it('body.attempt other than the token attempt is 403 FORBIDDEN', async () => {
    const { a } = await claimed();
    await expectError(h.req('POST', paths.logs(a.id), { token: a.buildToken, json: { attempt: 2, seq: 0, offset: 0, data: 'x' } }), 403, 'FORBIDDEN');
    await expectError(h.req('POST', paths.finish(a.id), { token: a.buildToken, json: { attempt: 2, outcome: 'failed', exitCode: 1 } }), 403, 'FORBIDDEN');
  });

  it('logs: offsets, idempotent seq, OFFSET_MISMATCH naming the stored bytes, bad base64', async () => {
    const { a } = await claimed();
    const log = (json: unknown) => h.req('POST', paths.logs(a.id), { token: a.buildToken, json });
    expect(await (await log({ attempt: 1, seq: 0, offset: 0, data: 'abc' })).json()).toEqual({ offset: 3 });
    // The same (attempt, seq) again is stored once.
    const dup = await log({ attempt: 1, seq: 0, offset: 0, data: 'abc' });
    expect(dup.status).toBe(200);
    const mismatch = await log({ attempt: 1, seq: 1, offset: 1, data: 'zzz' });
    expect(mismatch.status).toBe(409);
    const body = (await mismatch.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe('OFFSET_MISMATCH');
    expect(body.error.message).toMatch(/3/);
    await expectError(log({ attempt: 1, seq: 1, offset: 3, data: '!!!', encoding: 'base64' }), 400, 'VALIDATION_FAILED');
    await expectError(log({ attempt: 1, seq: 1, offset: 3 }), 400, 'VALIDATION_FAILED');
    const text = await (await h.req('GET', paths.logs(a.id), { token: API_TOKEN })).text();
    expect(text).toBe('abc');
  });

  it('artifacts: absolute and .. names are 400, a missing checksum 400, a wrong checksum 422, too large 413', async () => {
    const { a } = await claimed();
    const put = (name: string, body: Uint8Array, headers: Record<string, string>) =>
      h.req('PUT', `/api/v1/builds/${a.id}/artifacts/${name}`, { token: a.buildToken, body, headers: { 'content-type': 'application/octet-stream', ...headers } });
    const data = new TextEncoder().encode('artifact');
    const sum = { 'x-checksum-sha256': sha256(data) };
    await expectError(put(encodeURIComponent('/etc/passwd'), data, sum), 400, 'VALIDATION_FAILED');
    await expectError(put(encodeURIComponent('a/../../b'), data, sum), 400, 'VALIDATION_FAILED');
    // fetch would resolve '..' (even percent-encoded) itself, so send it raw.
    for (const raw of ['..', '%2E%2E', 'a/../b', '%2Fabs']) {
      const res = await rawRequest(h.url, 'PUT', `/api/v1/builds/${a.id}/artifacts/${raw}`, {
        authorization: `Bearer ${a.buildToken}`,
        'content-type': 'application/octet-stream',
        ...sum,
      }, data);
      expect({ raw, status: res.status, code: JSON.parse(res.body.toString()).error.code }).toEqual({ raw, status: 400, code: 'VALIDATION_FAILED' });
    }
    await expectError(put('ok.txt', data, {}), 400, 'VALIDATION_FAILED');
    await expectError(put('ok.txt', data, { 'x-checksum-sha256': 'abc' }), 400, 'VALIDATION_FAILED');
    await expectError(put('ok.txt', data, { 'x-checksum-sha256': sha256('other') }), 422, 'CHECKSUM_MISMATCH');
    const big = new Uint8Array(5000);
    await expectError(put('big.bin', big, { 'x-checksum-sha256': sha256(big) }), 413, 'PAYLOAD_TOO_LARGE');
    // Nothing was recorded by the failed uploads.
    const ok = await put('dir/ok.txt', data, sum);
    expect(ok.status).toBe(201);
    // Slash unencoded in the path works too and is the same artifact.
    const again = await put('dir%2Fok.txt', data, sum);
    expect(again.status).toBe(200);
    const empty = new Uint8Array(0);
    expect((await put('empty', empty, { 'x-checksum-sha256': sha256(empty) })).status).toBe(201);
  });

  it('an older attempt gets 409 LEASE_LOST on every write; finish is idempotent and final', async () => {
    const { reg, a } = await claimed();
    // Deleting the worker requeues its running build as attempt 2.
    expect((await h.req('DELETE', paths.worker(reg.workerId), { token: API_TOKEN })).status).toBe(200);
    const b = ((await (await h.req('GET', paths.build(a.id), { token: API_TOKEN })).json()) as { build: Build }).build;
    expect(b.attempt).toBe(2);
    expect(b.state).toBe('queued');
    expect(b.attempts[0]).toMatchObject({ attempt: 1, workerId: reg.workerId });
    await expectError(h.req('POST', paths.start(a.id), { token: a.buildToken, json: { attempt: 1 } }), 409, 'LEASE_LOST');
    await expectError(h.req('POST', paths.logs(a.id), { token: a.buildToken, json: { attempt: 1, seq: 9, offset: 0, data: 'x' } }), 409, 'LEASE_LOST');
    await expectError(
      h.req('PUT', paths.artifact(a.id, 'x'), { token: a.buildToken, body: 'x', headers: { 'content-type': 'application/octet-stream', 'x-checksum-sha256': sha256('x') } }),
      409,
      'LEASE_LOST',
    );
    await expectError(h.req('POST', paths.finish(a.id), { token: a.buildToken, json: { attempt: 1, outcome: 'succeeded', exitCode: 0 } }), 409, 'LEASE_LOST');
    // 409 before 400: an invalid body from the old attempt still says LEASE_LOST.
    await expectError(h.req('POST', paths.finish(a.id), { token: a.buildToken, json: { attempt: 1, outcome: 'bogus' } }), 409, 'LEASE_LOST');
    await expectError(h.req('GET', paths.source(a.id), { token: a.buildToken }), 409, 'LEASE_LOST');

    // The second attempt runs and finishes; a repeated finish is 200, another outcome 409.
    const w = await h.registerOk({ labels: a.spec.labels });
    const poll = (await (await h.req('POST', paths.poll(w.workerId, 0), { token: w.accessToken, json: { freeSlots: 1, activeBuildIds: [] } })).json()) as PollResponse;
    const a2 = poll.builds[0]!;
    expect(a2.attempt).toBe(2);
    expect(a2.buildToken).not.toBe(a.buildToken);
    expect((await h.req('POST', paths.start(a.id), { token: a2.buildToken, json: { attempt: 2 } })).status).toBe(200);
    expect((await h.req('POST', paths.start(a.id), { token: a2.buildToken, json: { attempt: 2 } })).status).toBe(200);
    const fin = { attempt: 2, outcome: 'failed', exitCode: 3, message: 'exit 3' };
    expect((await h.req('POST', paths.finish(a.id), { token: a2.buildToken, json: fin })).status).toBe(200);
    expect((await h.req('POST', paths.finish(a.id), { token: a2.buildToken, json: fin })).status).toBe(200);
    await expectError(h.req('POST', paths.finish(a.id), { token: a2.buildToken, json: { ...fin, outcome: 'succeeded' } }), 409, 'INVALID_TRANSITION');
    await expectError(h.req('POST', paths.logs(a.id), { token: a2.buildToken, json: { attempt: 2, seq: 0, offset: 0, data: 'late' } }), 409, 'INVALID_TRANSITION');
  });
});

describe('cancel and retry', () => {
  it('a queued build is canceled at once; a terminal one is 409', async () => {
    const b = await h.submitOk({ script: 'x', labels: ['never-matches'] });
    const res = await h.req('POST', paths.cancel(b.id), { token: API_TOKEN });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { build: Build }).build.state).toBe('canceled');
    await expectError(h.req('POST', paths.cancel(b.id), { token: API_TOKEN }), 409, 'INVALID_TRANSITION');
    await expectError(h.req('POST', paths.cancel('no-such'), { token: API_TOKEN }), 404, 'BUILD_NOT_FOUND');
  });

  it('an assigned build is canceled at once and its start is 409', async () => {
    const { a } = await claimed({ start: false });
    const res = await h.req('POST', paths.cancel(a.id), { token: API_TOKEN });
    expect(((await res.json()) as { build: Build }).build.state).toBe('canceled');
    await expectError(h.req('POST', paths.start(a.id), { token: a.buildToken, json: { attempt: 1 } }), 409, 'INVALID_TRANSITION');
  });

  it('a running build gets cancelRequested, the heartbeat says cancel, the worker reports canceled', async () => {
    const { reg, a } = await claimed();
    const res = await h.req('POST', paths.cancel(a.id), { token: API_TOKEN });
    const b = ((await res.json()) as { build: Build }).build;
    expect(b.state).toBe('running');
    expect(b.cancelRequested).toBe(true);
    const hb = await h.req('POST', paths.heartbeat(reg.workerId), { token: reg.accessToken, json: { activeBuildIds: [a.id, 'unknown-id'] } });
    const hbBody = (await hb.json()) as { cancel: string[]; abandon: string[] };
    expect(hbBody.cancel).toEqual([a.id]);
    expect(hbBody.abandon).toEqual(['unknown-id']);
    const fin = await h.req('POST', paths.finish(a.id), { token: a.buildToken, json: { attempt: 1, outcome: 'canceled', exitCode: null } });
    expect(((await fin.json()) as { build: Build }).build.state).toBe('canceled');
  });

  it('retry makes a new queued build with the same spec and source', async () => {
    const src = new TextEncoder().encode('the source bytes');
    const b = await h.submitOk({ script: 'retry-me', labels: ['never-matches'], env: { A: '1' } }, src);
    const res = await h.req('POST', paths.retry(b.id), { token: API_TOKEN });
    expect(res.status).toBe(201);
    const r = ((await res.json()) as { build: Build }).build;
    expect(r.id).not.toBe(b.id);
    expect(r.state).toBe('queued');
    expect(r.spec).toEqual(b.spec);
    expect(r.sourceSha256).toBe(sha256(src));
  });
});

describe('submission', () => {
  it('validates the spec, needs both parts in order, and stores nothing on failure', async () => {
    const before = ((await (await h.req('GET', `${paths.builds()}?limit=500`, { token: API_TOKEN })).json()) as { builds: Build[] }).builds.length;
    await expectError(h.submit({}), 400, 'VALIDATION_FAILED');
    await expectError(h.submit('{broken'), 400, 'VALIDATION_FAILED');
    await expectError(h.submit({ script: 'x', labels: ['has space'] }), 400, 'VALIDATION_FAILED');
    await expectError(h.submit({ script: 'x', unknownField: 1 }), 400, 'VALIDATION_FAILED');
    for (const pattern of ['../x', '/etc/*', 'out/../../y']) {
      const res = await h.submit({ script: 'x', artifacts: ['ok/*', pattern] });
      expect(res.status).toBe(400);
      expect(((await res.json()) as { error: { message: string } }).error.message).toContain('spec.artifacts.1');
    }
    const onlySpec = new FormData();
    onlySpec.append('spec', JSON.stringify({ script: 'x' }));
    await expectError(h.req('POST', paths.builds(), { token: API_TOKEN, body: onlySpec }), 400, 'VALIDATION_FAILED');
    const wrongOrder = new FormData();
    wrongOrder.append('source', new Blob([new Uint8Array([1, 2])]), 's.tar.gz');
    wrongOrder.append('spec', JSON.stringify({ script: 'x' }));
    await expectError(h.req('POST', paths.builds(), { token: API_TOKEN, body: wrongOrder }), 400, 'VALIDATION_FAILED');
    await expectError(h.req('POST', paths.builds(), { token: API_TOKEN, json: { script: 'x' } }), 400, 'VALIDATION_FAILED');
    await expectError(
      h.req('POST', paths.builds(), { token: API_TOKEN, body: '--xx\r\nbroken', headers: { 'content-type': 'multipart/form-data; boundary=xx' } }),
      400,
      'VALIDATION_FAILED',
    );
    const after = ((await (await h.req('GET', `${paths.builds()}?limit=500`, { token: API_TOKEN })).json()) as { builds: Build[] }).builds.length;
    expect(after).toBe(before);
  });

  it('a source over maxSourceBytes is 413 and leaves no build', async () => {
    const small = await startHarness({ maxSourceBytes: 1000 });
    try {
      await expectError(small.submit({ script: 'x' }, new Uint8Array(5000)), 413, 'PAYLOAD_TOO_LARGE');
      const list = (await (await small.req('GET', paths.builds(), { token: API_TOKEN })).json()) as { builds: Build[] };
      expect(list.builds).toEqual([]);
      expect((await small.submit({ script: 'x' }, new Uint8Array(1000))).status).toBe(201);
    } finally {
      await small.close();
    }
  });
});

describe('enrollment tokens', () => {
  it('creates (token shown once), lists, revokes; a revoked token cannot register', async () => {
    const res = await h.req('POST', paths.enrollmentTokens(), { token: API_TOKEN, json: { description: 'ci', maxUses: 1 } });
    expect(res.status).toBe(201);
    const t = (await res.json()) as { id: string; token: string; maxUses: number };
    expect(t.token).toMatch(/^bfe_/);
    const list = (await (await h.req('GET', paths.enrollmentTokens(), { token: API_TOKEN })).json()) as { enrollmentTokens: Array<{ id: string; token?: string }> };
    const listed = list.enrollmentTokens.find((e) => e.id === t.id);
    expect(listed).toBeDefined();
    expect(listed!.token).toBeUndefined();
    expect((await h.register({}, t.token)).status).toBe(201);
    await expectError(h.register({}, t.token), 401, 'TOKEN_INVALID');
    const t2 = (await (await h.req('POST', paths.enrollmentTokens(), { token: API_TOKEN, json: {} })).json()) as { id: string; token: string };
    expect((await h.req('DELETE', paths.enrollmentToken(t2.id), { token: API_TOKEN })).status).toBe(204);
    await expectError(h.register({}, t2.token), 401, 'TOKEN_INVALID');
    await expectError(h.req('DELETE', paths.enrollmentToken('nope'), { token: API_TOKEN }), 404, 'NOT_FOUND');
    await expectError(h.req('POST', paths.enrollmentTokens(), { token: API_TOKEN, json: { expiresAt: 'tomorrow' } }), 400, 'VALIDATION_FAILED');
  });
});
}

describe('refused uploads', () => {
  it('an upload refused before its body is read closes the connection instead of reading it all', async () => {
    const own = await startHarness();
    try {
      const { request } = await import('node:http');
      const u = new URL(own.url);
      const result = await new Promise<{ status: number; connection: string | undefined; sent: number }>((resolve, reject) => {
        let sent = 0;
        const req = request(
          {
            host: u.hostname,
            port: Number(u.port),
            method: 'POST',
            path: '/api/v1/builds',
            headers: { authorization: 'Bearer bfa_wrong-token-0000000000000000', 'content-type': 'multipart/form-data; boundary=x', 'content-length': String(512 * 1024 * 1024) },
          },
          (res) => {
            res.resume();
            resolve({ status: res.statusCode ?? 0, connection: res.headers.connection, sent });
          },
        );
        req.on('error', (err) => reject(err));
        const chunk = Buffer.alloc(64 * 1024);
        const pump = () => {
          while (sent < 512 * 1024 * 1024) {
            sent += chunk.length;
            if (!req.write(chunk)) return void req.once('drain', pump);
          }
        };
        pump();
      });
      expect(result.status).toBe(401);
      expect(result.connection).toBe('close');
      // Far less than the declared 512 MiB went out before the answer.
      expect(result.sent).toBeLessThan(256 * 1024 * 1024);
    } finally {
      await own.close();
    }
  });
});
