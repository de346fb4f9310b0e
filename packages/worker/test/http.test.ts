import net from 'node:net';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ApiError, FakeClock, parseRetryAfter, paths, systemClock } from '@buildfleet/protocol';
import { Connection, TransportError } from '../src/client/connection.js';
import { FakeController } from './support/fake-controller.js';

let fake: FakeController;
beforeEach(async () => {
  fake = await FakeController.start();
});
afterEach(async () => {
  await fake.close();
});

/** A URL nobody listens on (a port we bound and closed). */
async function deadUrl(): Promise<string> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return `http://127.0.0.1:${port}`;
}

describe('Connection', () => {
  it('maps a protocol error body to ApiError with Retry-After in ms', async () => {
    fake.failNext('register', { status: 429, code: 'RATE_LIMITED', retryAfterSeconds: 3 });
    const c = new Connection({ urls: [fake.url], clock: systemClock, requestTimeoutMs: 5000 });
    const err = await c.json({ method: 'POST', path: paths.register(), json: {} }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err).toMatchObject({ code: 'RATE_LIMITED', status: 429, retryAfterMs: 3000 });
  });

  it('maps a non-protocol error answer to TransportError(http) with the status', async () => {
    fake.failNext('register', { status: 502 });
    const c = new Connection({ urls: [fake.url], clock: systemClock, requestTimeoutMs: 5000 });
    const err = await c.json({ method: 'POST', path: paths.register(), json: {} }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TransportError);
    expect(err).toMatchObject({ kind: 'http', status: 502 });
  });

  it('a dropped answer is a network TransportError', async () => {
    fake.dropNextAnswer('register');
    const c = new Connection({ urls: [fake.url], clock: systemClock, requestTimeoutMs: 5000 });
    const err = await c.json({ method: 'POST', path: paths.register(), json: {}, token: fake.enrollmentToken }).catch((e: unknown) => e);
    expect(err).toMatchObject({ kind: 'network' });
  });

  it('times out on the injected clock', async () => {
    const clock = new FakeClock();
    const gate = fake.hold('register');
    const c = new Connection({ urls: [fake.url], clock, requestTimeoutMs: 1000 });
    const p = c.json({ method: 'POST', path: paths.register(), json: {} }).catch((e: unknown) => e);
    await gate.arrived(1);
    await clock.advance(1000);
    expect(await p).toMatchObject({ kind: 'timeout' });
    gate.release();
  });

  it('fails over to the next URL after a network error, and after a 503', async () => {
    const dead = await deadUrl();
    const moves: string[] = [];
    const c = new Connection({
      urls: [dead, fake.url],
      clock: systemClock,
      requestTimeoutMs: 5000,
      onFailover: (from, to, why) => moves.push(`${from} -> ${to}: ${why}`),
    });
    expect(c.baseUrl).toBe(dead);
    await expect(c.json({ method: 'POST', path: paths.register(), json: {} })).rejects.toMatchObject({ kind: 'network' });
    expect(c.baseUrl).toBe(fake.url);
    fake.failNext('register', 'UNAVAILABLE');
    await expect(c.json({ method: 'POST', path: paths.register(), json: {} })).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    expect(c.baseUrl).toBe(dead);
    // Each move is reported (the worker logs it).
    expect(moves).toHaveLength(2);
    expect(moves[0]).toMatch(new RegExp(`^${dead} -> ${fake.url}: `));
    expect(moves[1]).toBe(`${fake.url} -> ${dead}: it answered 503`);
  });

  it('parses Retry-After dates', () => {
    expect(parseRetryAfter('2', 0)).toBe(2000);
    expect(parseRetryAfter(new Date(10_000).toUTCString(), 4000)).toBe(6000);
    expect(parseRetryAfter(null, 0)).toBeUndefined();
  });
});
