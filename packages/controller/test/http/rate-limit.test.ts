/**
 * Abuse limits: failed authentications per client address and new
 * registrations per enrollment token, 429 RATE_LIMITED with Retry-After,
 * counted in one-minute windows on the controller's clock (a fake one here).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeClock, paths } from '@buildfleet/protocol';
import { WindowCounter } from '../../src/http/rate-limit.js';
import { waitFor } from '../support/wait.js';
import { API_TOKEN, ENROLLMENT_TOKEN, startHarness, type Harness } from './harness.js';

describe('WindowCounter', () => {
  it('allows max events per window, then says how long to wait; 0 never limits', async () => {
    const clock = new FakeClock();
    const c = new WindowCounter(clock, 2, 1000);
    expect([c.blockedFor('a'), c.hit('a'), c.hit('a')]).toEqual([0, 0, 1000]);
    await clock.advance(400);
    expect(c.blockedFor('a')).toBe(600);
    expect(c.blockedFor('b')).toBe(0);
    await clock.advance(600);
    expect(c.blockedFor('a')).toBe(0);
    const off = new WindowCounter(clock, 0, 1000);
    for (let i = 0; i < 100; i++) off.hit('x');
    expect(off.blockedFor('x')).toBe(0);
  });
});

describe('over HTTP', () => {
  let h: Harness;
  const clock = new FakeClock();
  beforeAll(async () => {
    h = await startHarness({ maxAuthFailuresPerMinute: 5, maxRegistrationsPerMinute: 3, accessTokenTtlMs: 1000 }, { clock });
  });
  afterAll(async () => {
    await h?.close();
  });
  const code = async (res: Response) => ({ status: res.status, code: ((await res.json()) as { error: { code: string } }).error.code });

  it('after 5 failed authentications an address gets 429 with Retry-After for further failures only; valid credentials still pass', async () => {
    // A genuine token that expired is no guess: it does not count.
    const reg = await h.registerOk();
    await clock.advance(2000);
    for (let i = 0; i < 10; i++) {
      expect((await h.req('POST', paths.heartbeat(reg.workerId), { token: reg.accessToken, json: { activeBuildIds: [] } })).status).toBe(401);
    }
    for (let i = 0; i < 5; i++) expect(await code(await h.req('GET', paths.builds(), { token: `bfa_guess-${i}-000000000000000000` }))).toEqual({ status: 401, code: 'TOKEN_INVALID' });
    const limited = await h.req('GET', paths.builds(), { token: 'bfa_guess-6-000000000000000000' });
    expect(limited.status).toBe(429);
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThan(50);
    expect(((await limited.json()) as { error: { code: string } }).error.code).toBe('RATE_LIMITED');
    expect(await code(await h.req('GET', paths.builds(), { token: 'garbage' }))).toEqual({ status: 429, code: 'RATE_LIMITED' });
    // The same address's genuine credentials are not locked out (a worker behind the same proxy
    // keeps heart-beating and its lease): an API token, an enrollment token, an access token.
    expect((await h.req('GET', paths.builds(), { token: API_TOKEN })).status).toBe(200);
    const fresh = await h.registerOk();
    const beat = (token: string) => h.req('POST', paths.heartbeat(fresh.workerId), { token, json: { activeBuildIds: [] } });
    expect((await beat(fresh.accessToken)).status).toBe(200);
    // A well-formed access token that is not this worker's is a guess, refused before its body is read.
    expect(await code(await beat(`bfw_${'A'.repeat(43)}`))).toEqual({ status: 429, code: 'RATE_LIMITED' });
    expect(await code(await h.register({}, `bfe_${'A'.repeat(43)}`))).toEqual({ status: 429, code: 'RATE_LIMITED' });
    // Public routes stay open.
    expect((await h.req('GET', '/healthz')).status).toBe(200);
    await clock.advance(60_000);
    expect(await code(await h.req('GET', paths.builds(), { token: 'bfa_guess-7-000000000000000000' }))).toEqual({ status: 401, code: 'TOKEN_INVALID' });
  });

  it('3 new registrations per enrollment token per minute; other tokens and re-registrations are not held back', async () => {
    const other = (await (await h.req('POST', paths.enrollmentTokens(), { token: API_TOKEN, json: {} })).json()) as { token: string };
    const first = await h.registerOk();
    expect((await h.register()).status).toBe(201);
    expect((await h.register()).status).toBe(201);
    const limited = await h.register();
    expect(await code(limited.clone())).toEqual({ status: 429, code: 'RATE_LIMITED' });
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThan(50);
    expect((await h.register({}, other.token)).status).toBe(201);
    const again = await h.req('POST', paths.register(), {
      json: { name: 'w', labels: [], maxConcurrentBuilds: 1, version: 't', workerId: first.workerId, workerSecret: first.workerSecret, activeBuildCount: 0 },
    });
    expect(again.status).toBe(200);
    await clock.advance(60_000);
    expect((await h.register({}, ENROLLMENT_TOKEN)).status).toBe(201);
  });
});

describe('a token rotated while its poll was parked', () => {
  it('answers that poll 401 without counting it as a failed authentication of the address', async () => {
    const own = await startHarness({ maxAuthFailuresPerMinute: 2, pollWaitMs: 30_000, pollRecheckMs: 60_000 });
    try {
      const reg = await own.registerOk();
      let token = reg.accessToken;
      // Three rotations (proactive refreshes), more than the limit of 2 failures.
      for (let i = 0; i < 3; i++) {
        const parked = own.req('POST', paths.poll(reg.workerId, 30_000), { token, json: { freeSlots: 1, activeBuildIds: [] } });
        await waitFor(() => own.ctl.app.buildfleet.pollWake.size === 1, { what: 'the poll to park' });
        const refreshed = await own.register({ workerId: reg.workerId, workerSecret: reg.workerSecret });
        expect(refreshed.status).toBe(200);
        token = ((await refreshed.json()) as { accessToken: string }).accessToken;
        expect((await parked).status).toBe(401);
      }
      // The fleet behind this address is not locked out: its genuine credentials still work.
      expect((await own.req('GET', paths.builds(), { token: API_TOKEN })).status).toBe(200);
      // Guesses still count.
      for (let i = 0; i < 2; i++) expect((await own.req('GET', paths.builds(), { token: `bfa_guess-${i}-000000000000000000` })).status).toBe(401);
      expect((await own.req('GET', paths.builds(), { token: 'bfa_guess-2-000000000000000000' })).status).toBe(429);
    } finally {
      await own.close();
    }
  });
});
