import net from 'node:net';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ApiError, FakeClock, parseRetryAfter, paths, systemClock } from '@buildfleet/protocol';
import { Connection, TransportError, type ConnectionOptions } from '../src/client/connection.js';
import { startUnitController, type UnitController } from './support/controller.js';
import { Faults } from './support/faults.js';

// The connection against the real controller; the errors and lost answers it
// must map come from the transport in front of it (Faults): the controller
// gives them only for an outage or a bug.
let ctl: UnitController;
let fake: Faults;
beforeAll(async () => {
  ctl = await startUnitController();
});
afterAll(async () => {
  await ctl?.close();
});
beforeEach(() => {
  fake = new Faults();
});
afterEach(() => {
  fake.releaseAll();
});

/** A connection through the faults to the controller (or to `urls`). */
function connection(over: Partial<ConnectionOptions> = {}): Connection {
  return new Connection({ urls: [ctl.url], clock: systemClock, requestTimeoutMs: 5000, transport: fake.transport, ...over });
}

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
    const c = connection();
    const err = await c.json({ method: 'POST', path: paths.register(), json: {} }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err).toMatchObject({ code: 'RATE_LIMITED', status: 429, retryAfterMs: 3000 });
  });

  it('maps a non-protocol error answer to TransportError(http) with the status', async () => {
    fake.failNext('register', { status: 502 });
    const c = connection();
    const err = await c.json({ method: 'POST', path: paths.register(), json: {} }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TransportError);
    expect(err).toMatchObject({ kind: 'http', status: 502 });
  });

  it('a dropped answer is a network TransportError', async () => {
    fake.dropNextAnswer('register');
    const c = connection();
    const err = await c.json({ method: 'POST', path: paths.register(), json: {}, token: ctl.enrollmentToken }).catch((e: unknown) => e);
    expect(err).toMatchObject({ kind: 'network' });
  });

  it('times out on the injected clock', async () => {
    const clock = new FakeClock();
    const gate = fake.hold('register');
    const c = connection({ clock, requestTimeoutMs: 1000 });
    const p = c.json({ method: 'POST', path: paths.register(), json: {} }).catch((e: unknown) => e);
    await gate.arrived(1);
    await clock.advance(1000);
    expect(await p).toMatchObject({ kind: 'timeout' });
    gate.release();
  });

  it('fails over to the next URL after a network error, and after a 503', async () => {
    const dead = await deadUrl();
    const moves: string[] = [];
    const c = connection({ urls: [dead, ctl.url], onFailover: (from, to, why) => moves.push(`${from} -> ${to}: ${why}`) });
    expect(c.baseUrl).toBe(dead);
    await expect(c.json({ method: 'POST', path: paths.register(), json: {} })).rejects.toMatchObject({ kind: 'network' });
    expect(c.baseUrl).toBe(ctl.url);
    fake.failNext('register', 'UNAVAILABLE');
    await expect(c.json({ method: 'POST', path: paths.register(), json: {} })).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    expect(c.baseUrl).toBe(dead);
    // Each move is reported (the worker logs it).
    expect(moves).toHaveLength(2);
    expect(moves[0]).toMatch(new RegExp(`^${dead} -> ${ctl.url}: `));
    expect(moves[1]).toBe(`${ctl.url} -> ${dead}: it answered 503`);
  });

  it('parses Retry-After dates', () => {
    expect(parseRetryAfter('2', 0)).toBe(2000);
    expect(parseRetryAfter(new Date(10_000).toUTCString(), 4000)).toBe(6000);
    expect(parseRetryAfter(null, 0)).toBeUndefined();
  });
});
