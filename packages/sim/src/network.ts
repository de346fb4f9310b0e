/**
 * The simulated network between workers and the controller: a fetch-style
 * `Transport` that hands each request to the current controller's fastify
 * app through `app.inject` (no sockets), with seeded faults:
 * - request lost (never delivered, the caller sees a network error),
 * - answer lost (delivered and processed, the caller sees a network error),
 * - duplicated (delivered twice; the caller gets one answer),
 * - delayed (delivered after a random wait on the simulated clock).
 * While the controller is down every request fails like a refused connection.
 * A crashed worker's transport never settles again: the process is gone.
 */
import type { FastifyInstance } from 'fastify';
import type { Clock } from '@buildfleet/protocol';
import type { Transport } from '@buildfleet/worker';
import type { Random } from './random.js';
import type { Trace } from './trace.js';

export interface NetworkFaults {
  /** Probability per request, each. */
  dropRequest: number;
  dropAnswer: number;
  duplicate: number;
  delay: number;
  /** Longest delay, ms. */
  maxDelayMs: number;
}

/** One delivered request and its answer, for the invariant checks. */
export interface Exchange {
  actor: string;
  method: string;
  path: string;
  body: unknown;
  /** The bearer token the request carried, if any. */
  token: string | undefined;
  status: number;
  answer: unknown;
  /** Simulated epoch ms when the answer was produced. */
  at: number;
}

export interface NetworkOptions {
  clock: Clock;
  rng: Random;
  trace: Trace;
  faults: NetworkFaults;
  /** Whether faults are injected now (the fault window). */
  faultsOn: () => boolean;
  /** The controller's app while it is up. */
  app: () => FastifyInstance | undefined;
  /** Told about every answer the controller produced (also ones then lost). */
  observe: (e: Exchange) => void;
}

/**
 * A promise that never settles, new each time: one shared never-settling
 * promise would collect the continuation of every frozen caller, and with it
 * every closed app and dead worker of every run (a leak of ~1 MB a seed).
 */
function never(): Promise<never> {
  return new Promise<never>(() => {});
}

class NetworkError extends TypeError {
  constructor(message: string) {
    super(`fetch failed: ${message}`);
  }
}

async function bodyBytes(body: RequestInit['body']): Promise<Buffer | string | undefined> {
  if (body === undefined || body === null) return undefined;
  if (typeof body === 'string') return body;
  if (body instanceof Uint8Array) return Buffer.from(body);
  if (body instanceof ReadableStream) {
    const parts: Buffer[] = [];
    for await (const c of body as ReadableStream<Uint8Array>) parts.push(Buffer.from(c));
    return Buffer.concat(parts);
  }
  throw new Error(`sim transport: unsupported body ${Object.prototype.toString.call(body)}`);
}

function shortPath(p: string): string {
  return p.replace('/api/v1', '').replace(/\?.*$/, '');
}

/** Describes a JSON request/answer body in a few words for the trace. */
function brief(path: string, body: unknown): string {
  if (!body || typeof body !== 'object') return '';
  const b = body as Record<string, unknown>;
  const out: string[] = [];
  for (const k of ['attempt', 'seq', 'offset', 'outcome', 'exitCode', 'freeSlots', 'activeBuildIds', 'cancel', 'abandon', 'workerId', 'bootId']) {
    if (b[k] !== undefined && !(Array.isArray(b[k]) && (b[k] as unknown[]).length === 0)) out.push(`${k}=${JSON.stringify(b[k])}`);
  }
  if (Array.isArray(b.builds)) out.push(`builds=${JSON.stringify((b.builds as Array<{ id: string; attempt: number }>).map((x) => `${x.id}#${x.attempt}`))}`);
  if (b.error && typeof b.error === 'object') out.push((b.error as { code: string }).code);
  if (b.build && typeof b.build === 'object') {
    const bb = b.build as { state: string; attempt: number };
    out.push(`state=${bb.state}#${bb.attempt}`);
  }
  void path;
  return out.join(' ');
}

export class Network {
  constructor(private readonly opts: NetworkOptions) {}

  /**
   * A transport for `actor`. `dead()` true means the caller's process is gone:
   * nothing more is sent and no answer is delivered (promises never settle).
   */
  transport(actor: string, dead: () => boolean, faulty = true): Transport {
    return async (url, init) => {
      if (dead()) return never();
      const { clock, rng, trace, faults } = this.opts;
      const u = new URL(url);
      const path = u.pathname + u.search;
      const method = (init.method ?? 'GET').toUpperCase();
      const headers: Record<string, string> = {};
      new Headers(init.headers).forEach((v, k) => (headers[k] = v));
      const payload = await bodyBytes(init.body);
      if (dead()) return never();
      let reqJson: unknown;
      if (typeof payload === 'string' && headers['content-type']?.includes('json')) {
        try {
          reqJson = JSON.parse(payload);
        } catch {
          reqJson = undefined;
        }
      }
      const on = faulty && this.opts.faultsOn();
      const label = `${method} ${shortPath(path)} ${brief(path, reqJson)}`.trim();
      const abort = new Promise<never>((_, reject) => {
        const s = init.signal;
        if (!s) return;
        if (s.aborted) return reject(s.reason);
        s.addEventListener('abort', () => reject(s.reason), { once: true });
      });
      abort.catch(() => undefined);

      if (on && rng.chance(faults.delay)) {
        const ms = rng.int(1, faults.maxDelayMs);
        trace.add(actor, `${label} [delayed ${ms}ms]`);
        await Promise.race([clock.sleep(ms), abort]);
        if (dead()) return never();
      }
      if (on && rng.chance(faults.dropRequest)) {
        trace.add(actor, `${label} [request lost]`);
        throw new NetworkError('simulated: request lost');
      }
      const duplicate = on && rng.chance(faults.duplicate);
      const dropAnswer = on && rng.chance(faults.dropAnswer);
      const deliver = async (copy: string) => {
        const app = this.opts.app();
        if (!app) {
          trace.add(actor, `${label}${copy} -> connection refused`);
          throw new NetworkError('simulated: connection refused (controller down)');
        }
        const res = await app.inject({ method: method as 'GET', url: path, headers, ...(payload !== undefined ? { payload } : {}) });
        let answer: unknown;
        if ((res.headers['content-type'] ?? '').toString().includes('json')) {
          try {
            answer = res.json();
          } catch {
            answer = undefined;
          }
        }
        trace.add(actor, `${label}${copy} -> ${res.statusCode} ${brief(path, answer)}`.trimEnd());
        this.opts.observe({ actor, method, path, body: reqJson, token: headers['authorization']?.replace(/^Bearer /i, ''), status: res.statusCode, answer, at: clock.now() });
        return res;
      };
      const first = deliver('');
      first.catch(() => undefined);
      if (duplicate) {
        // The copy arrives a little later, whatever happened to the first.
        const lag = rng.int(0, 500);
        void (async () => {
          await clock.sleep(lag);
          await deliver(' [duplicate]');
        })().catch(() => undefined);
      }
      const res = await Promise.race([first, abort]);
      if (dead()) return never();
      if (dropAnswer) {
        trace.add(actor, `${label} [answer lost]`);
        throw new NetworkError('simulated: answer lost');
      }
      const out = new Headers();
      for (const [k, v] of Object.entries(res.headers)) {
        if (v === undefined) continue;
        if (Array.isArray(v)) for (const x of v) out.append(k, String(x));
        else out.set(k, String(v));
      }
      const nullBody = res.statusCode === 204 || res.statusCode === 304 || method === 'HEAD';
      return new Response(nullBody ? null : new Uint8Array(res.rawPayload), { status: res.statusCode, headers: out });
    };
  }
}
