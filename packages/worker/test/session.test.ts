import fs from 'node:fs/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FakeClock, flushMicrotasks, paths, type Clock } from '@buildfleet/protocol';
import { ENROLLMENT_TOKEN, startTestController, type TestController } from '../../../test/support/controller.js';
import { Faults } from './support/faults.js';
import { heartbeat, makeSession, tempDir } from './support/harness.js';
import { SessionFatalError } from '../src/session.js';

// The session against the real controller (in process). Faults the real one cannot make on
// purpose (a lost answer, a 503, a request held at a barrier) come from the transport (Faults).
let ctl: TestController | undefined;
let fake: Faults;
let dir: string;
/** The controller's clock, for tests that make its access tokens expire. */
let ctlClock: FakeClock | undefined;
const cleanups: (() => void)[] = [];

beforeEach(async () => {
  fake = new Faults();
  dir = await tempDir();
});
afterEach(async () => {
  for (const c of cleanups.splice(0)) c();
  fake.releaseAll();
  await ctl?.close();
  ctl = undefined;
  ctlClock = undefined;
  await fs.rm(dir, { recursive: true, force: true });
});

/** The controller for this test; `expiring` puts it on a fake clock with 60 s access tokens. */
async function controller(opts: { expiring?: boolean; accessTokenTtlMs?: number } = {}): Promise<TestController> {
  if (opts.expiring) ctlClock = new FakeClock(Date.now());
  ctl = await startTestController({
    ...(ctlClock ? { clock: ctlClock } : {}),
    config: { accessTokenTtlMs: opts.accessTokenTtlMs ?? (opts.expiring ? 60_000 : 3_600_000) },
  });
  return ctl;
}

/** Every access token the controller issued so far expires (its clock moves past their lifetime). */
async function expireTokens(): Promise<void> {
  await ctlClock!.advance(61_000);
}

function rig(opts: Parameters<typeof makeSession>[2] & { clock?: Clock } = {}) {
  // A generous request timeout: fifty calls at once on a busy machine must not time out.
  const r = makeSession({ url: ctl!.url, enrollmentToken: ENROLLMENT_TOKEN }, dir, { transport: fake.transport, config: { requestTimeoutMs: 30_000 }, ...opts });
  cleanups.push(() => r.session.close());
  return r;
}

describe('session', () => {
  it('registers as new with the enrollment token and saves the identity (mode 0600)', async () => {
    await controller();
    const r = rig();
    await r.session.start();
    const reg = fake.of('register');
    expect(reg).toHaveLength(1);
    expect(reg[0]!.token).toBe(ENROLLMENT_TOKEN);
    expect((reg[0]!.body as { bootId: string }).bootId).toBe(r.session.bootId);
    const saved = await r.identity.load();
    expect(saved.workerId).toBe(r.session.workerId);
    expect(saved.workerSecret).toMatch(/^bfs_/);
    // The saved secret is the one the controller knows: a re-registration with it keeps the id.
    await r.session.reregister('test');
    expect(r.session.workerId).toBe(saved.workerId);
    expect((await fs.stat(r.identity.file)).mode & 0o777).toBe(0o600);
  });

  it('(a) 50 concurrent calls that all get 401 cause exactly one re-registration, and all succeed', async () => {
    await controller({ expiring: true });
    const r = rig();
    await r.session.start();
    const firstToken = r.session.accessToken;
    await expireTokens();
    // Hold the re-registration until all 50 callers have seen their 401, so they really overlap.
    const gate = fake.hold('register');
    let rejected = 0;
    const onAnswer = (rec: { route: string; status?: number }) => {
      if (rec.route === 'heartbeat' && rec.status === 401) rejected++;
    };
    fake.events.on('answered', onAnswer);
    const calls = Array.from({ length: 50 }, () => heartbeat(r));
    await gate.arrived(1);
    await new Promise<void>((resolve) => {
      const check = () => (rejected >= 50 ? resolve() : fake.events.once('answered', check));
      check();
    });
    fake.events.off('answered', onAnswer);
    expect(r.session.registering).toBe(true);
    fake.unhold('register');
    const results = await Promise.all(calls);
    expect(results).toHaveLength(50);
    expect(fake.count('register')).toBe(2); // the first registration + exactly one re-registration
    expect(fake.of('register')[1]!.body).toMatchObject({ workerId: r.session.workerId, bootId: r.session.bootId });
    expect(r.session.accessToken).not.toBe(firstToken);
    const hb = fake.of('heartbeat');
    expect(hb.filter((h) => h.status === 401)).toHaveLength(50);
    expect(hb.filter((h) => h.status === 200 && h.token === r.session.accessToken)).toHaveLength(50);
  });

  it('a caller whose rejected token is already stale retries at once without another re-registration', async () => {
    await controller();
    const r = rig();
    await r.session.start();
    const old = r.session.accessToken!;
    // Rotate the token behind the first call's back: it sends the old token, the session moves on.
    const hold = fake.hold('heartbeat');
    const p = heartbeat(r);
    await hold.arrived(1);
    await r.session.reregister('test rotation');
    expect(r.session.accessToken).not.toBe(old);
    fake.unhold('heartbeat');
    await p;
    expect(fake.count('register')).toBe(2);
    expect(fake.of('heartbeat').map((h) => [h.token === old, h.status])).toEqual([
      [true, 401],
      [false, 200],
    ]);
  });

  it('(b) refreshes proactively at 75% of the lifetime on the monotonic clock, unaffected by wall-clock skew', async () => {
    await controller({ accessTokenTtlMs: 100_000 });
    const clock = new FakeClock();
    const r = rig({ clock });
    await r.session.start();
    expect(fake.count('register')).toBe(1);
    // The wall clock jumps forward by a day and back: the refresh must not move.
    clock.skewWallClock(24 * 3600_000);
    await clock.advance(74_999);
    clock.skewWallClock(-48 * 3600_000);
    await flushMicrotasks();
    expect(fake.count('register')).toBe(1);
    const registered = new Promise((resolve) => r.session.once('registered', resolve));
    await clock.advance(1);
    await registered;
    expect(fake.count('register')).toBe(2);
    expect(fake.of('register')[1]!.body).toMatchObject({ workerId: r.session.workerId });
    // The next refresh is measured from when the second answer arrived.
    await clock.advance(74_999);
    expect(fake.count('register')).toBe(2);
    const again = new Promise((resolve) => r.session.once('registered', resolve));
    await clock.advance(1);
    await again;
    expect(fake.count('register')).toBe(3);
  });

  it('(c) 401 keeps the worker id', async () => {
    await controller({ expiring: true });
    const r = rig();
    await r.session.start();
    const id = r.session.workerId;
    await expireTokens();
    await heartbeat(r);
    expect(r.session.workerId).toBe(id);
    expect((await r.identity.load()).workerId).toBe(id);
    expect((await ctl!.api.workers()).map((w) => w.id)).toEqual([id]);
    expect(fake.of('register').map((x) => (x.body as { workerId?: string }).workerId)).toEqual([undefined, id]);
  });

  it('(c) 404 WORKER_NOT_FOUND drops id and secret, registers as new and rewrites the identity file', async () => {
    await controller();
    const r = rig();
    await r.session.start();
    const oldId = r.session.workerId!;
    const oldSecret = (await r.identity.load()).workerSecret;
    await ctl!.api.ok('DELETE', paths.worker(oldId));
    await heartbeat(r);
    const newId = r.session.workerId!;
    expect(newId).not.toBe(oldId);
    const saved = await r.identity.load();
    // The registrationId is kept until it is used up (a late copy of the request may void these credentials).
    expect(saved).toEqual({ workerId: newId, workerSecret: expect.stringMatching(/^bfs_/), registrationId: expect.any(String) });
    expect(saved.workerSecret).not.toBe(oldSecret);
    const regs = fake.of('register');
    expect(regs.map((x) => x.status)).toEqual([201, 404, 201]);
    expect(regs[2]!.token).toBe(ENROLLMENT_TOKEN);
    // A new registration carries a fresh registrationId, not the used-up one.
    const ids = regs.map((x) => (x.body as { registrationId?: string }).registrationId);
    expect(ids[2]).toBeDefined();
    expect(ids[2]).not.toBe(ids[0]);
  });

  it('(d) a lost registration answer is retried with the same registrationId, saved before sending', async () => {
    await controller();
    const r = rig();
    fake.dropNextAnswer('register');
    const gate = fake.hold('register');
    const started = r.session.start();
    await gate.arrived(1);
    // The request is at the controller: its registrationId is already on disk.
    const onDisk = await r.identity.load();
    const sent = (fake.of('register')[0]!.body as { registrationId: string }).registrationId;
    expect(onDisk).toEqual({ registrationId: sent });
    fake.unhold('register');
    await started;
    const regs = fake.of('register');
    expect(regs.map((x) => x.status)).toEqual([0, 201]);
    expect((regs[1]!.body as { registrationId: string }).registrationId).toBe(sent);
    const workers = await ctl!.api.workers();
    expect(workers).toHaveLength(1);
    expect(r.session.workerId).toBe(workers[0]!.id);
    expect(await r.identity.load()).toEqual({ workerId: workers[0]!.id, workerSecret: expect.stringMatching(/^bfs_/), registrationId: sent });
  });

  it('(d) a registrationId saved by a process that crashed before the answer is reused after restart', async () => {
    await controller();
    const first = rig();
    // The controller acts on the registration; its answer is held, then lost.
    const gate = fake.holdAnswers('register');
    fake.dropNextAnswer('register');
    const p = first.session.start().catch((e: unknown) => e);
    await gate.arrived(1);
    first.session.close(); // the process "crashes" while its registration's answer is on its way
    fake.unholdAnswers('register');
    expect(await p).toMatchObject({ code: 'CLOSED' });
    const regId = (await first.identity.load()).registrationId;
    expect(regId).toBeDefined();
    await fake.waitForAnswer('register', (x) => x.status === 0);
    const [created] = await ctl!.api.workers(); // the controller created the worker; its answer was lost
    expect(created).toBeDefined();

    const second = rig(); // restart: same data dir, new bootId
    await second.session.start();
    const bodies = fake.of('register').map((x) => (x.body as { registrationId: string }).registrationId);
    expect(bodies).toEqual([regId, regId]);
    expect(await ctl!.api.workers()).toHaveLength(1);
    expect(second.session.workerId).toBe(created!.id);
    expect(second.session.bootId).not.toBe(first.session.bootId);
  });

  it('(e) calls wait while a re-registration is in flight and go on with the new token after it', async () => {
    await controller();
    const r = rig();
    await r.session.start();
    const gate = fake.hold('register');
    const refresh = r.session.reregister('test');
    await gate.arrived(1);
    expect(r.session.registering).toBe(true);
    let readyResolved = false;
    const ready = r.session.ready().then(() => (readyResolved = true));
    const hb = heartbeat(r);
    await flushMicrotasks();
    await flushMicrotasks();
    // Nothing authenticated may reach the controller while the registration is held.
    expect(fake.count('heartbeat')).toBe(0);
    expect(readyResolved).toBe(false);
    fake.unhold('register');
    await refresh;
    await ready;
    await hb;
    const hbs = fake.of('heartbeat');
    expect(hbs).toHaveLength(1);
    expect(hbs[0]!.token).toBe(r.session.accessToken);
    expect(hbs[0]!.n).toBeGreaterThan(fake.of('register')[1]!.n);
  });

  it('409 IDENTITY_CONFLICT is fatal with a message about a shared identity file', async () => {
    await controller();
    const a = rig();
    await a.session.start();
    const b = rig(); // same data dir = same identity file, new bootId
    await b.session.start();
    const fatal = new Promise<SessionFatalError>((resolve) => a.session.once('fatal', resolve));
    const err = await a.session.reregister('refresh').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SessionFatalError);
    expect((err as SessionFatalError).code).toBe('IDENTITY_CONFLICT');
    expect((err as Error).message).toMatch(/two processes share one identity file/);
    expect(await fatal).toBe(err);
    await expect(heartbeat(a)).rejects.toBe(err);
    // The newer instance keeps working.
    await heartbeat(b);
  });

  it('retries a registration that hits 503 and 429 with Retry-After', async () => {
    await controller();
    fake.failNext('register', { status: 503, code: 'UNAVAILABLE' }, 2);
    fake.failNext('register', { status: 429, code: 'RATE_LIMITED', retryAfterSeconds: 0 });
    const r = rig();
    await r.session.start();
    expect(fake.of('register').map((x) => x.status)).toEqual([503, 503, 429, 201]);
  });

  it('a rejected enrollment token is fatal', async () => {
    await controller();
    const r = makeSession({ url: ctl!.url, enrollmentToken: ENROLLMENT_TOKEN }, dir, { config: { enrollmentToken: 'bfe_wrong' } });
    cleanups.push(() => r.session.close());
    await expect(r.session.start()).rejects.toMatchObject({ code: 'ENROLLMENT_REJECTED' });
  });
});
