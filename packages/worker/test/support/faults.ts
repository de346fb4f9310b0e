/**
 * A fault-injecting transport in front of the real controller (replacing a
 * second implementation of the protocol): every request of the worker goes
 * through it to the controller over real HTTP, and a test can record them,
 * hold one route's requests at a barrier, lose answers the controller did
 * send, or answer with an error the controller would give only for a bug or
 * an outage (503, 500). Everything else is the real controller's answer.
 */
import { EventEmitter } from 'node:events';
import { ERROR_STATUS, type ErrorCode } from '@buildfleet/protocol';
import type { Transport } from '../../src/client/connection.js';

export type Route = 'register' | 'poll' | 'heartbeat' | 'source' | 'start' | 'logs' | 'artifact' | 'finish' | 'other';

export interface Recorded {
  n: number;
  route: Route;
  method: string;
  path: string;
  /** Path and query (`/api/v1/workers/…/poll?waitMs=…`). */
  url: string;
  token: string | undefined;
  body: unknown;
  /** The answer's status once answered; 0 when the answer was lost. */
  status?: number;
}

/** Holds requests to one route until released. */
export class Barrier {
  arrivals = 0;
  private released = false;
  private readonly waiters: Array<() => void> = [];
  private readonly ee = new EventEmitter();
  /** Resolves once `n` requests have arrived. */
  arrived(n = 1): Promise<void> {
    if (this.arrivals >= n) return Promise.resolve();
    return new Promise((resolve) => {
      const on = () => {
        if (this.arrivals < n) return;
        this.ee.off('arrive', on);
        resolve();
      };
      this.ee.on('arrive', on);
    });
  }
  /** @internal */
  async pass(): Promise<void> {
    this.arrivals++;
    this.ee.emit('arrive');
    if (!this.released) await new Promise<void>((resolve) => this.waiters.push(resolve));
  }
  release(): void {
    this.released = true;
    for (const w of this.waiters.splice(0)) w();
  }
}

interface Canned {
  status: number;
  code?: ErrorCode;
  retryAfterSeconds?: number;
}

function routeOf(method: string, path: string): Route {
  if (path.endsWith('/workers/register')) return 'register';
  if (/\/workers\/[^/]+\/poll/.test(path)) return 'poll';
  if (/\/workers\/[^/]+\/heartbeat/.test(path)) return 'heartbeat';
  if (/\/builds\/[^/]+\/source/.test(path)) return 'source';
  if (/\/builds\/[^/]+\/start/.test(path)) return 'start';
  if (method === 'POST' && /\/builds\/[^/]+\/logs/.test(path)) return 'logs';
  if (method === 'PUT' && /\/builds\/[^/]+\/artifacts\//.test(path)) return 'artifact';
  if (/\/builds\/[^/]+\/finish/.test(path)) return 'finish';
  return 'other';
}

/** `p`, or a rejection with the abort reason once `signal` aborts. */
function abortable(p: Promise<void> | undefined, signal: AbortSignal | undefined): Promise<void> | undefined {
  if (!p || !signal) return p;
  signal.throwIfAborted();
  return new Promise<void>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      () => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      },
      reject,
    );
  });
}

/** `res` with half its body, then silence until `signal` aborts. */
async function stalled(res: Response, signal: AbortSignal | undefined): Promise<Response> {
  const whole = new Uint8Array(await res.arrayBuffer());
  const half = whole.subarray(0, Math.floor(whole.length / 2));
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      c.enqueue(half);
      const stop = () => c.error(signal?.reason ?? new Error('aborted'));
      if (signal?.aborted) stop();
      else signal?.addEventListener('abort', stop, { once: true });
    },
  });
  return new Response(body, { status: res.status, headers: res.headers });
}

export class Faults {
  readonly requests: Recorded[] = [];
  readonly events = new EventEmitter();
  private readonly canned = new Map<Route, Canned[]>();
  private readonly drops = new Map<Route, number>();
  private readonly stalls = new Map<Route, number>();
  private readonly barriers = new Map<Route, Barrier>();
  private readonly answerBarriers = new Map<Route, Barrier>();

  constructor(private readonly base: Transport = (url, init) => fetch(url, init)) {
    this.events.setMaxListeners(0);
  }

  /** The worker's transport. */
  readonly transport: Transport = async (url, init) => {
    const method = (init.method ?? 'GET').toUpperCase();
    const parsed = new URL(url);
    const path = parsed.pathname;
    const route = routeOf(method, path);
    const headers = new Headers(init.headers);
    let body: unknown;
    if (typeof init.body === 'string') {
      try {
        body = JSON.parse(init.body);
      } catch {
        body = init.body;
      }
    }
    const rec: Recorded = { n: this.requests.length, route, method, path, url: path + parsed.search, token: headers.get('authorization')?.replace(/^Bearer /, ''), body };
    this.requests.push(rec);
    this.events.emit('request', rec);
    // A held request still gives way to its caller's abort, as a real connection would.
    await abortable(this.barriers.get(route)?.pass(), init.signal ?? undefined);
    const canned = this.canned.get(route)?.shift();
    if (canned) {
      rec.status = canned.status;
      this.events.emit('answered', rec);
      const h: Record<string, string> = {};
      if (canned.retryAfterSeconds !== undefined) h['retry-after'] = String(canned.retryAfterSeconds);
      if (!canned.code) return new Response('injected failure', { status: canned.status, headers: h });
      return Response.json({ error: { code: canned.code, message: `injected ${canned.code}` } }, { status: canned.status, headers: h });
    }
    const res = await this.base(url, init);
    // The controller has acted: its answer is on its way, even to a caller that gave up (a crash mid-answer).
    await this.answerBarriers.get(route)?.pass();
    const drop = this.drops.get(route) ?? 0;
    if (drop > 0) {
      this.drops.set(route, drop - 1);
      await res.arrayBuffer().catch(() => undefined); // the controller answered; the answer is lost on the way
      rec.status = 0;
      this.events.emit('answered', rec);
      throw new TypeError('fetch failed: answer lost (injected)');
    }
    rec.status = res.status;
    this.events.emit('answered', rec);
    const stall = this.stalls.get(route) ?? 0;
    if (stall > 0 && res.body) {
      this.stalls.set(route, stall - 1);
      return stalled(res, init.signal ?? undefined);
    }
    return res;
  };

  count(route: Route): number {
    return this.of(route).length;
  }
  of(route: Route): Recorded[] {
    return this.requests.filter((r) => r.route === route);
  }
  /** The next `times` requests to `route` get this answer instead of the controller's (a protocol body unless `code` is absent). */
  failNext(route: Route, err: ErrorCode | Canned, times = 1): void {
    const c: Canned = typeof err === 'string' ? { status: ERROR_STATUS[err], code: err } : err;
    const list = this.canned.get(route) ?? [];
    for (let i = 0; i < times; i++) list.push(c);
    this.canned.set(route, list);
  }
  /** The next `times` requests to `route` reach the controller, but their answers are lost. */
  dropNextAnswer(route: Route, times = 1): void {
    this.drops.set(route, (this.drops.get(route) ?? 0) + times);
  }
  /**
   * The next `times` answers to `route` deliver their headers and half the
   * body, then nothing more until the request is aborted (a connection that
   * stalls mid-body; the controller sends whole bodies).
   */
  stallNextAnswer(route: Route, times = 1): void {
    this.stalls.set(route, (this.stalls.get(route) ?? 0) + times);
  }
  /** Requests to `route` wait at the returned barrier (before reaching the controller) until `unhold`. */
  hold(route: Route): Barrier {
    const b = new Barrier();
    this.barriers.set(route, b);
    return b;
  }
  /** Answers to `route` (the controller has acted) wait at the returned barrier until `unholdAnswers`. */
  holdAnswers(route: Route): Barrier {
    const b = new Barrier();
    this.answerBarriers.set(route, b);
    return b;
  }
  unhold(route: Route): void {
    this.barriers.get(route)?.release();
    this.barriers.delete(route);
  }
  unholdAnswers(route: Route): void {
    this.answerBarriers.get(route)?.release();
    this.answerBarriers.delete(route);
  }
  /** Releases every barrier (end of a test). */
  releaseAll(): void {
    for (const r of [...this.barriers.keys()]) this.unhold(r);
    for (const r of [...this.answerBarriers.keys()]) this.unholdAnswers(r);
  }
  /** The first answered request (answered already or later) to `route` matching `pred`. */
  waitForAnswer(route: Route, pred: (r: Recorded) => boolean = () => true): Promise<Recorded> {
    const found = this.requests.find((r) => r.route === route && r.status !== undefined && pred(r));
    if (found) return Promise.resolve(found);
    return new Promise((resolve) => {
      const on = (r: Recorded) => {
        if (r.route !== route || !pred(r)) return;
        this.events.off('answered', on);
        resolve(r);
      };
      this.events.on('answered', on);
    });
  }

  /** The first request (made or future) to `route` matching `pred`. */
  waitForRequest(route: Route, pred: (r: Recorded) => boolean = () => true): Promise<Recorded> {
    const found = this.requests.find((r) => r.route === route && pred(r));
    if (found) return Promise.resolve(found);
    return new Promise((resolve) => {
      const on = (r: Recorded) => {
        if (r.route !== route || !pred(r)) return;
        this.events.off('request', on);
        resolve(r);
      };
      this.events.on('request', on);
    });
  }
}
