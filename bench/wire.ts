/**
 * The wire protocol as the benchmark speaks it (docs/protocol.md): plain
 * `node:http` requests over keep-alive sockets, no worker or CLI code, so the
 * controller's refactors cannot change what is measured. A `WireWorker` is
 * one worker: register, long-poll, start, one log chunk, finish.
 */
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { gzipSync } from 'node:zlib';

export const API_TOKEN = 'bfa_bench_api_token_0123456789abcdef0123';
export const ENROLLMENT_TOKEN = 'bfe_bench_enrollment_token_0123456789abcd';

/** An empty tar archive (two zero blocks), gzipped: the smallest valid source. */
export const EMPTY_SOURCE = gzipSync(Buffer.alloc(1024));

export interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** One keep-alive agent per process; sockets are never capped (10,000 parked polls). */
export const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity, maxFreeSockets: 20_000 });

/**
 * Sends one request and buffers the answer. `body` may be a Buffer or an
 * async iterable of Buffers (streamed). Rejects on a socket error only; any
 * status resolves.
 */
export function request(
  url: string,
  opts: { method: string; headers?: http.OutgoingHttpHeaders; body?: Buffer | AsyncIterable<Buffer>; sink?: (chunk: Buffer) => void; signal?: AbortSignal },
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: opts.method, headers: opts.headers, agent, ...(opts.signal ? { signal: opts.signal } : {}) }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => (opts.sink ? opts.sink(c) : chunks.push(c)));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    const body = opts.body;
    if (body === undefined || Buffer.isBuffer(body)) {
      req.end(body);
      return;
    }
    void (async () => {
      try {
        for await (const chunk of body) {
          if (!req.write(chunk)) await new Promise((r) => req.once('drain', r));
        }
        req.end();
      } catch (err) {
        req.destroy(err as Error);
      }
    })();
  });
}

/** Attempts dropped on 409 (lease lost) so far in this process. */
export const lost = { count: 0 };

/** 503 and 429 answers retried so far in this process (docs/protocol.md: retry with backoff). */
export const retried = { count: 0 };

/**
 * Sends a request again on 503 UNAVAILABLE or 429 RATE_LIMITED, as a worker
 * does: up to `tries`, backoff from 50 ms doubling to 1 s. Other answers
 * are returned as they are.
 */
async function withRetry(send: () => Promise<Reply>, tries = 10): Promise<Reply> {
  for (let i = 1, wait = 50; ; i++, wait = Math.min(wait * 2, 1_000)) {
    const r = await send();
    if ((r.status !== 503 && r.status !== 429) || i >= tries) return r;
    retried.count++;
    await new Promise((res) => setTimeout(res, wait));
  }
}

/** A JSON call; throws when the status is not one of `ok`, or when `signal` aborts it. */
export async function json<T = any>(
  url: string,
  method: string,
  token: string | undefined,
  body: unknown,
  ok: number[] = [200, 201],
  signal?: AbortSignal,
  tries = 10,
): Promise<{ status: number; data: T }> {
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  const headers: http.OutgoingHttpHeaders = {};
  if (payload) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  const r = await withRetry(() => request(url, { method, headers, ...(payload ? { body: payload } : {}), ...(signal ? { signal } : {}) }), tries);
  if (!ok.includes(r.status)) throw new WireError(method, url, r.status, r.body.toString('utf8').slice(0, 300));
  return { status: r.status, data: (r.body.length ? JSON.parse(r.body.toString('utf8')) : undefined) as T };
}

export class WireError extends Error {
  constructor(
    readonly method: string,
    readonly url: string,
    readonly status: number,
    readonly text: string,
  ) {
    super(`${method} ${url} answered ${status}: ${text}`);
  }
}

const BOUNDARY = 'bfbenchboundary7d1f';

/** `POST /builds` (multipart: spec, then the empty source). Returns the build id. */
export async function submitBuild(base: string, spec: Record<string, unknown> = { script: 'true' }): Promise<string> {
  const head = Buffer.from(
    `--${BOUNDARY}\r\nContent-Disposition: form-data; name="spec"\r\n\r\n${JSON.stringify(spec)}\r\n` +
      `--${BOUNDARY}\r\nContent-Disposition: form-data; name="source"; filename="source.tar.gz"\r\nContent-Type: application/gzip\r\n\r\n`,
  );
  const body = Buffer.concat([head, EMPTY_SOURCE, Buffer.from(`\r\n--${BOUNDARY}--\r\n`)]);
  const r = await withRetry(() =>
    request(`${base}/api/v1/builds`, {
      method: 'POST',
      headers: { authorization: `Bearer ${API_TOKEN}`, 'content-type': `multipart/form-data; boundary=${BOUNDARY}` },
      body,
    }),
  );
  if (r.status !== 201) throw new WireError('POST', '/builds', r.status, r.body.toString('utf8').slice(0, 300));
  return (JSON.parse(r.body.toString('utf8')) as { build: { id: string } }).build.id;
}

export interface Assigned {
  id: string;
  attempt: number;
  buildToken: string;
}

/** One protocol-level worker (one slot). `gone.abort()` drops its requests, as a worker that goes away. */
export class WireWorker {
  workerId = '';
  secret = '';
  accessToken = '';
  readonly bootId = randomUUID();
  readonly gone = new AbortController();
  /** Saved before the first try, so a retry after a lost answer is the same registration. */
  readonly registrationId = randomUUID();

  constructor(
    readonly base: string,
    readonly name: string,
  ) {}

  /** The fields every registration sends (docs/protocol.md "POST /api/v1/workers/register"). */
  private identity() {
    return { name: this.name, labels: [], maxConcurrentBuilds: 1, version: 'bench', bootId: this.bootId, activeBuildCount: 0, activeBuildIds: [] };
  }

  /** New registration with the enrollment token (patient: a busy controller answers 503 for a while). */
  async register(): Promise<void> {
    const body = { ...this.identity(), registrationId: this.registrationId };
    const { data } = await json(`${this.base}/api/v1/workers/register`, 'POST', ENROLLMENT_TOKEN, body, [200, 201], undefined, 60);
    this.workerId = data.workerId;
    this.secret = data.workerSecret;
    this.accessToken = data.accessToken;
  }

  /** Re-registration with the secret (token refresh, same bootId): the access token rotates. */
  async reRegister(): Promise<void> {
    const body = { ...this.identity(), workerId: this.workerId, workerSecret: this.secret };
    const { data } = await json(`${this.base}/api/v1/workers/register`, 'POST', undefined, body);
    this.accessToken = data.accessToken;
  }

  /**
   * One long poll. Returns the builds it was given ([] on 204). A 401 (the
   * token rotated while parked) re-polls with the current token.
   */
  async poll(waitMs: number): Promise<Assigned[]> {
    for (;;) {
      const token = this.accessToken;
      const { status, data } = await json(`${this.base}/api/v1/workers/${this.workerId}/poll?waitMs=${waitMs}`, 'POST', token, { freeSlots: 1, activeBuildIds: [] }, [
        200, 204, 401,
      ], this.gone.signal, 60);
      if (status === 401) {
        // Rotated by a re-registration whose answer may still be on its way.
        for (let i = 0; token === this.accessToken; i++) {
          if (i === 200) throw new WireError('POST', 'poll', 401, 'token rejected and not rotated');
          await new Promise((r) => setTimeout(r, 10));
        }
        continue;
      }
      return status === 200 ? (data.builds as Assigned[]) : [];
    }
  }

  /** Extends the lease of `activeBuildIds` (a long artifact transfer outlives `leaseMs`). */
  async heartbeat(activeBuildIds: string[]): Promise<void> {
    await json(`${this.base}/api/v1/workers/${this.workerId}/heartbeat`, 'POST', this.accessToken, { activeBuildIds });
  }

  /**
   * start → one log chunk → finish(succeeded): the build's life on the
   * worker side. Returns false when the attempt was lost (409: not started
   * by its ack deadline on a saturated controller, so requeued as a new
   * attempt): the worker drops it, as docs/protocol.md's worker duties say.
   */
  async run(b: Assigned): Promise<boolean> {
    const u = `${this.base}/api/v1/builds/${b.id}`;
    const signal = this.gone.signal;
    try {
      await json(`${u}/start`, 'POST', b.buildToken, { attempt: b.attempt }, undefined, signal);
      await json(`${u}/logs`, 'POST', b.buildToken, { attempt: b.attempt, seq: 0, offset: 0, data: 'bench: hello\n' }, undefined, signal);
      await json(`${u}/finish`, 'POST', b.buildToken, { attempt: b.attempt, outcome: 'succeeded', exitCode: 0, message: null }, undefined, signal);
      return true;
    } catch (err) {
      if (err instanceof WireError && err.status === 409) {
        lost.count++;
        return false;
      }
      throw err;
    }
  }
}

/** Registers `n` workers, `parallel` at a time. */
export async function registerFleet(base: string, n: number, prefix: string, parallel = 16): Promise<WireWorker[]> {
  const workers = Array.from({ length: n }, (_, i) => new WireWorker(base, `${prefix}-${i}`));
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(parallel, n) }, async () => {
      while (next < n) await workers[next++]!.register();
    }),
  );
  return workers;
}
