/**
 * The delivery loop against a real HTTP receiver on 127.0.0.1: signature
 * headers, outcomes recorded, retry schedule, timeouts and refused
 * connections. The queue here is a small in-memory one; the store's queue
 * has its own tests (test/store).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { FakeClock } from '@buildfleet/protocol';
import { WebhookDeliverer } from '../../src/webhooks/deliverer.js';
import { nextAttemptAt, DEFAULT_RETRY_POLICY } from '../../src/webhooks/backoff.js';
import { WEBHOOK_HEADERS, generateWebhookSecret, signWebhook, verifyWebhook } from '../../src/webhooks/signature.js';
import type { ClaimedDelivery, DeliveryOutcome, WebhookQueue } from '../../src/webhooks/types.js';

interface Received {
  headers: IncomingMessage['headers'];
  body: string;
}

class MemoryQueue implements WebhookQueue {
  readonly outcomes: DeliveryOutcome[] = [];
  due = new Map<string, { d: ClaimedDelivery; at: number; done: boolean }>();
  add(d: Omit<ClaimedDelivery, 'attempt'>, at: number): void {
    this.due.set(d.id, { d: { ...d, attempt: 0 }, at, done: false });
  }
  async claimDeliveries(input: { now: number; limit: number; leaseMs: number }): Promise<ClaimedDelivery[]> {
    const out: ClaimedDelivery[] = [];
    for (const e of this.due.values()) {
      if (out.length >= input.limit) break;
      if (e.done || e.at > input.now) continue;
      e.d = { ...e.d, attempt: e.d.attempt + 1 };
      e.at = input.now + input.leaseMs;
      out.push(e.d);
    }
    return out;
  }
  async recordDelivery(o: DeliveryOutcome): Promise<void> {
    this.outcomes.push(o);
    const e = this.due.get(o.id)!;
    if (e.d.attempt !== o.attempt) return;
    if (o.ok || o.nextAttemptAt === null) e.done = true;
    else e.at = o.nextAttemptAt;
  }
}

let server: Server | undefined;
afterEach(async () => {
  server?.closeAllConnections();
  await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
  server = undefined;
});

async function receiver(answer: (req: Received, res: ServerResponse) => void): Promise<{ url: string; got: Received[] }> {
  const got: Received[] = [];
  server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (c: Buffer) => parts.push(c));
    req.on('end', () => {
      const r = { headers: req.headers, body: Buffer.concat(parts).toString('utf8') };
      got.push(r);
      answer(r, res);
    });
  });
  await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`, got };
}

const secret = generateWebhookSecret();
function delivery(url: string, id = 'd1', eventAt = Date.UTC(2026, 0, 1)): Omit<ClaimedDelivery, 'attempt'> {
  const body = JSON.stringify({ id: `ev-${id}`, type: 'build.finished', createdAt: new Date(eventAt).toISOString(), build: { id: 'b1', state: 'succeeded' } });
  return { id, webhookId: 'w1', url, secret, eventId: `ev-${id}`, eventType: 'build.finished', body, eventAt };
}

describe('webhook signatures', () => {
  it('is HMAC-SHA256 over "<timestamp>.<body>" and verifies only the exact bytes, secret and timestamp', () => {
    const sig = signWebhook(secret, 1767225600, '{"a":1}');
    expect(sig).toMatch(/^sha256=[0-9a-f]{64}$/);
    expect(verifyWebhook({ secret, body: '{"a":1}', timestamp: '1767225600', signature: sig })).toBe(true);
    expect(verifyWebhook({ secret, body: '{"a":2}', timestamp: '1767225600', signature: sig })).toBe(false);
    expect(verifyWebhook({ secret, body: '{"a":1}', timestamp: '1767225601', signature: sig })).toBe(false);
    expect(verifyWebhook({ secret: generateWebhookSecret(), body: '{"a":1}', timestamp: '1767225600', signature: sig })).toBe(false);
    expect(verifyWebhook({ secret, body: '{"a":1}', timestamp: '1767225600', signature: sig, nowSeconds: 1767225600 + 301 })).toBe(false);
    expect(verifyWebhook({ secret, body: '{"a":1}', timestamp: undefined, signature: sig })).toBe(false);
  });
});

describe('retry schedule', () => {
  it('doubles from the first delay up to the cap, with jitter inside [d/2, d], and gives up past the window', () => {
    const p = { firstDelayMs: 1_000, maxDelayMs: 8_000, retryForMs: 60_000 };
    const t0 = 1_000_000;
    expect(nextAttemptAt(p, 1, t0, t0, () => 0)).toBe(t0 + 500);
    expect(nextAttemptAt(p, 1, t0, t0, () => 0.999999)).toBe(t0 + 1_000);
    expect(nextAttemptAt(p, 3, t0, t0, () => 0)).toBe(t0 + 2_000);
    expect(nextAttemptAt(p, 10, t0, t0, () => 0)).toBe(t0 + 4_000);
    expect(nextAttemptAt(p, 10, t0, t0 + 57_000, () => 0)).toBeNull();
    // The default policy keeps trying for 24 hours, not for ever.
    let now = t0;
    let tries = 1;
    for (let at = nextAttemptAt(DEFAULT_RETRY_POLICY, tries, t0, now); at !== null; at = nextAttemptAt(DEFAULT_RETRY_POLICY, ++tries, t0, now)) now = at;
    expect(now - t0).toBeLessThanOrEqual(86_400_000);
    expect(now - t0).toBeGreaterThan(80_000_000);
    expect(tries).toBeGreaterThan(20);
    expect(tries).toBeLessThan(60);
  });
});

describe('WebhookDeliverer', () => {
  it('signs each try, records a 500 with a retry time, and the retry after it succeeds with the same body', async () => {
    let calls = 0;
    const rx = await receiver((_r, res) => {
      res.statusCode = ++calls === 1 ? 500 : 204;
      res.end();
    });
    const clock = new FakeClock();
    const queue = new MemoryQueue();
    queue.add(delivery(rx.url), clock.now());
    const d = new WebhookDeliverer({ queue, clock, random: () => 0, retry: { firstDelayMs: 2_000, maxDelayMs: 60_000, retryForMs: 3_600_000 } });

    expect(await d.deliverOnce()).toBe(1);
    expect(queue.outcomes[0]).toMatchObject({ ok: false, statusCode: 500, error: 'HTTP 500', attempt: 1, nextAttemptAt: clock.now() + 1_000 });
    expect(await d.deliverOnce()).toBe(0); // not due yet
    await clock.advance(1_000);
    expect(await d.deliverOnce()).toBe(1);
    expect(queue.outcomes[1]).toMatchObject({ ok: true, statusCode: 204, error: null, attempt: 2, nextAttemptAt: null });

    expect(rx.got).toHaveLength(2);
    expect(rx.got[0]!.body).toBe(rx.got[1]!.body);
    for (const r of rx.got) {
      expect(r.headers['content-type']).toBe('application/json');
      expect(r.headers[WEBHOOK_HEADERS.eventId]).toBe('ev-d1');
      expect(r.headers[WEBHOOK_HEADERS.eventType]).toBe('build.finished');
      const ts = r.headers[WEBHOOK_HEADERS.timestamp] as string;
      expect(Number(ts)).toBe(Math.floor(clock.now() / 1000) - (r === rx.got[0] ? 1 : 0));
      expect(verifyWebhook({ secret, body: r.body, timestamp: ts, signature: r.headers[WEBHOOK_HEADERS.signature] as string })).toBe(true);
    }
  });

  it('times a receiver out on the injected clock and a refused connection is a failure, not a crash', async () => {
    const rx = await receiver(() => {
      /* never answers */
    });
    const clock = new FakeClock();
    const queue = new MemoryQueue();
    queue.add(delivery(rx.url, 'slow'), clock.now());
    const d = new WebhookDeliverer({ queue, clock, timeoutMs: 5_000, random: () => 0 });
    const round = d.deliverOnce();
    // The request is in flight before the timeout fires.
    while (rx.got.length === 0) await new Promise((r) => setTimeout(r, 5));
    await clock.advance(5_000);
    await round;
    expect(queue.outcomes[0]).toMatchObject({ ok: false, statusCode: null, error: 'timed out after 5000 ms' });

    const refused = new MemoryQueue();
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((r) => closed.close(() => r()));
    refused.add(delivery(`http://127.0.0.1:${port}/nothing-listens`, 'refused'), clock.now());
    await new WebhookDeliverer({ queue: refused, clock, random: () => 0 }).deliverOnce();
    expect(refused.outcomes[0]).toMatchObject({ ok: false, statusCode: null, error: 'ECONNREFUSED' });
  });

  it('gives up (nextAttemptAt null) once the retry window since the event is over', async () => {
    const rx = await receiver((_r, res) => {
      res.statusCode = 503;
      res.end();
    });
    const clock = new FakeClock();
    const queue = new MemoryQueue();
    queue.add(delivery(rx.url, 'old', clock.now() - 86_399_000), clock.now());
    await new WebhookDeliverer({ queue, clock, random: () => 0 }).deliverOnce();
    expect(queue.outcomes[0]).toMatchObject({ ok: false, statusCode: 503, nextAttemptAt: null });
    expect(await new WebhookDeliverer({ queue, clock }).deliverOnce()).toBe(0);
  });

  it('runs as a loop: start() delivers what is due, kick() looks again at once, stop() waits for the round', async () => {
    const rx = await receiver((_r, res) => res.end('ok'));
    const clock = new FakeClock();
    const queue = new MemoryQueue();
    const d = new WebhookDeliverer({ queue, clock, pollMs: 60_000, concurrency: 2 });
    for (let i = 0; i < 5; i++) queue.add(delivery(rx.url, `l${i}`), clock.now());
    d.start();
    // Full batches go again without waiting for pollMs.
    await clock.advance(0);
    while (queue.outcomes.length < 5) await clock.advance(0);
    expect(queue.outcomes.every((o) => o.ok)).toBe(true);
    queue.add(delivery(rx.url, 'late'), clock.now());
    d.kick();
    while (queue.outcomes.length < 6) await clock.advance(0);
    await d.stop();
    expect(new Set(rx.got.map((g) => g.headers[WEBHOOK_HEADERS.eventId])).size).toBe(6);
  });
});
