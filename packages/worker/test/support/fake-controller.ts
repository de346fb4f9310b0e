/**
 * A fake controller: a real in-process HTTP server (fastify on 127.0.0.1,
 * port 0) implementing the subset of PROTOCOL.md the worker uses, with knobs
 * to count requests, force errors, drop answers, expire tokens, and hold
 * requests at barriers so tests interleave deterministically (after
 * Buildkite's `agent/fake_api_server_test.go`; STYLE.md habit 12).
 *
 * It is deliberately simple: no leases expire by themselves, no database.
 */
import { EventEmitter } from 'node:events';
import { Barrier } from './faults.js';

export { Barrier };
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { PassThrough, type Readable } from 'node:stream';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import {
  bearerToken,
  normalizeSpec,
  type BuildSpec,
  type BuildSpecInput,
  type ErrorCode,
  ERROR_STATUS,
  type FinishRequest,
  type LogChunkRequest,
  type RegisterRequest,
  type WorkerSettings,
} from '@buildfleet/protocol';

export type Route = 'register' | 'poll' | 'heartbeat' | 'source' | 'start' | 'logs' | 'artifact' | 'finish';

export interface RecordedRequest {
  n: number;
  route: Route;
  method: string;
  url: string;
  token: string | undefined;
  body: unknown;
  /** Set when answered: status code (0 = answer dropped). */
  status?: number;
}

export interface FakeWorker {
  id: string;
  secret: string;
  token: string;
  /** Tokens this worker held before (they answer TOKEN_EXPIRED/TOKEN_INVALID). */
  oldTokens: Set<string>;
  tokenExpired: boolean;
  bootIds: string[];
  registrationId?: string;
  /** True after its first authenticated call (registrationId used up). */
  used: boolean;
  registrations: number;
}

export interface FakeBuild {
  id: string;
  attempt: number;
  spec: BuildSpec;
  source: Buffer;
  state: 'queued' | 'assigned' | 'running' | 'finished';
  workerId?: string;
  cancelRequested: boolean;
  leaseLost: boolean;
  chunks: LogChunkRequest[];
  log: Buffer[];
  logBytes: number;
  artifacts: Map<string, { sha256: string; size: number; data: Buffer }>;
  finish?: FinishRequest;
  starts: number;
}

interface Injected {
  status: number;
  code?: ErrorCode;
  message?: string;
  retryAfterSeconds?: number;
}

export interface FakeControllerOptions {
  enrollmentToken?: string;
  accessTokenTtlMs?: number;
  settings?: Partial<WorkerSettings>;
  /** Real-time cap on how long a poll parks (ms; default 100). */
  pollHoldMs?: number;
}

export class FakeController {
  readonly app: FastifyInstance;
  url = '';
  readonly requests: RecordedRequest[] = [];
  readonly events = new EventEmitter();
  readonly workers = new Map<string, FakeWorker>();
  readonly builds = new Map<string, FakeBuild>();
  readonly enrollmentToken: string;
  accessTokenTtlMs: number;
  settings: WorkerSettings;
  pollHoldMs: number;
  private readonly failures = new Map<Route, Injected[]>();
  private readonly drops = new Map<Route, number>();
  private readonly barriers = new Map<Route, Barrier>();
  private readonly wake = new EventEmitter();
  private stallSources = 0;
  private readonly stalled: PassThrough[] = [];

  constructor(opts: FakeControllerOptions = {}) {
    this.enrollmentToken = opts.enrollmentToken ?? 'bfe_test_enrollment';
    this.accessTokenTtlMs = opts.accessTokenTtlMs ?? 3_600_000;
    this.settings = { pollWaitMs: 30_000, heartbeatIntervalMs: 10_000, leaseMs: 60_000, ackTimeoutMs: 30_000, ...opts.settings };
    this.pollHoldMs = opts.pollHoldMs ?? 100;
    this.wake.setMaxListeners(0);
    this.events.setMaxListeners(0);
    this.app = Fastify({ logger: false, bodyLimit: 64 * 1024 * 1024, forceCloseConnections: true });
    this.app.addContentTypeParser('application/octet-stream', (_req, payload, done) => done(null, payload));
    this.routes();
  }

  static async start(opts: FakeControllerOptions = {}): Promise<FakeController> {
    const f = new FakeController(opts);
    await f.app.listen({ host: '127.0.0.1', port: 0 });
    const addr = f.app.server.address();
    if (!addr || typeof addr === 'string') throw new Error('no address');
    f.url = `http://127.0.0.1:${addr.port}`;
    return f;
  }

  async close(): Promise<void> {
    for (const b of this.barriers.values()) b.release();
    for (const st of this.stalled) st.destroy();
    this.wake.emit('wake');
    await this.app.close();
  }

  // ---- knobs -------------------------------------------------------------

  /** Requests that reached `route` so far. */
  count(route: Route): number {
    return this.requests.filter((r) => r.route === route).length;
  }
  of(route: Route): RecordedRequest[] {
    return this.requests.filter((r) => r.route === route);
  }
  /** The next `times` requests to `route` answer this error (a protocol body unless `code` is absent). */
  failNext(route: Route, err: ErrorCode | Injected, times = 1): void {
    const inj: Injected = typeof err === 'string' ? { status: ERROR_STATUS[err], code: err } : err;
    const list = this.failures.get(route) ?? [];
    for (let i = 0; i < times; i++) list.push(inj);
    this.failures.set(route, list);
  }
  /** The next `times` requests to `route` are processed, but the answer is dropped (socket destroyed). */
  dropNextAnswer(route: Route, times = 1): void {
    this.drops.set(route, (this.drops.get(route) ?? 0) + times);
  }
  /** Requests to `route` wait at the returned barrier until `release()`. */
  hold(route: Route): Barrier {
    const b = new Barrier();
    this.barriers.set(route, b);
    return b;
  }
  unhold(route: Route): void {
    this.barriers.get(route)?.release();
    this.barriers.delete(route);
  }
  /** The next `times` source downloads send half the body and then stall. */
  stallNextSource(times = 1): void {
    this.stallSources += times;
  }
  /** Every current access token now answers 401 TOKEN_EXPIRED. */
  expireTokens(): void {
    for (const w of this.workers.values()) w.tokenExpired = true;
    this.wake.emit('wake');
  }
  deleteWorker(id: string): void {
    this.workers.delete(id);
    for (const b of this.builds.values()) if (b.workerId === id && b.state !== 'finished') b.leaseLost = true;
    this.wake.emit('wake');
  }
  /** Answers every parked poll now (204 unless a build became available). */
  releasePolls(): void {
    this.wake.emit('wake');
  }
  addBuild(spec: BuildSpecInput, source: Buffer = Buffer.alloc(0), id: string = randomUUID()): FakeBuild {
    const b: FakeBuild = {
      id,
      attempt: 1,
      spec: normalizeSpec(spec),
      source,
      state: 'queued',
      cancelRequested: false,
      leaseLost: false,
      chunks: [],
      log: [],
      logBytes: 0,
      artifacts: new Map(),
      starts: 0,
    };
    this.builds.set(id, b);
    this.wake.emit('wake');
    return b;
  }
  cancel(id: string): void {
    this.builds.get(id)!.cancelRequested = true;
  }
  /** Every later write of the build's current attempt answers 409 LEASE_LOST. */
  loseLease(id: string): void {
    this.builds.get(id)!.leaseLost = true;
  }
  buildToken(b: { id: string; attempt: number }): string {
    return `bfb_${b.id}.${b.attempt}.fake`;
  }
  logText(id: string): Buffer {
    return Buffer.concat(this.builds.get(id)!.log);
  }
  /** Resolves with the first request (already made or future) to `route` matching `pred`. */
  waitForRequest(route: Route, pred: (r: RecordedRequest) => boolean = () => true): Promise<RecordedRequest> {
    const found = this.requests.find((r) => r.route === route && pred(r));
    if (found) return Promise.resolve(found);
    return new Promise((resolve) => {
      const on = (r: RecordedRequest) => {
        if (r.route === route && pred(r)) {
          this.events.off('request', on);
          resolve(r);
        }
      };
      this.events.on('request', on);
    });
  }
  /** Resolves when the build's finish arrives. */
  waitForFinish(id: string): Promise<FinishRequest> {
    const b = this.builds.get(id);
    if (b?.finish) return Promise.resolve(b.finish);
    return new Promise((resolve) => {
      const on = (bid: string, f: FinishRequest) => {
        if (bid === id) {
          this.events.off('finish', on);
          resolve(f);
        }
      };
      this.events.on('finish', on);
    });
  }

  // ---- routes ------------------------------------------------------------

  private routes(): void {
    const P = '/api/v1';
    const wrap =
      (route: Route, handler: (req: FastifyRequest, rec: RecordedRequest) => Promise<[number, unknown?]>) =>
      async (req: FastifyRequest, reply: FastifyReply) => {
        const rec: RecordedRequest = {
          n: this.requests.length,
          route,
          method: req.method,
          url: req.url,
          token: bearerToken(req.headers.authorization),
          body: route === 'artifact' ? undefined : req.body,
        };
        this.requests.push(rec);
        this.events.emit('request', rec);
        const barrier = this.barriers.get(route);
        if (barrier) await barrier.pass();
        const inj = this.failures.get(route)?.shift();
        let status: number;
        let body: unknown;
        if (inj) {
          if (route === 'artifact') await drain(req.body as Readable);
          status = inj.status;
          body = inj.code ? { error: { code: inj.code, message: inj.message ?? `injected ${inj.code}` } } : 'injected failure';
          if (inj.retryAfterSeconds !== undefined) reply.header('retry-after', String(inj.retryAfterSeconds));
        } else {
          try {
            [status, body] = await handler(req, rec);
          } catch (err) {
            if (err instanceof FakeError) {
              status = ERROR_STATUS[err.code];
              body = { error: { code: err.code, message: err.message } };
            } else throw err;
          }
        }
        const drop = this.drops.get(route) ?? 0;
        if (drop > 0) {
          this.drops.set(route, drop - 1);
          rec.status = 0;
          this.events.emit('dropped', rec);
          reply.hijack();
          req.raw.socket.destroy();
          return;
        }
        rec.status = status;
        this.events.emit('answered', rec);
        reply.code(status);
        if (body instanceof Buffer || body instanceof PassThrough) return reply.type('application/octet-stream').send(body);
        return body === undefined ? reply.send() : reply.send(body);
      };

    this.app.post(`${P}/workers/register`, wrap('register', async (req) => this.register(req)));
    this.app.post<{ Params: { id: string } }>(
      `${P}/workers/:id/poll`,
      wrap('poll', async (req) => this.poll(req as FastifyRequest<{ Params: { id: string } }>)),
    );
    this.app.post(`${P}/workers/:id/heartbeat`, wrap('heartbeat', async (req) => this.heartbeat(req)));
    this.app.get(
      `${P}/builds/:id/source`,
      wrap('source', async (req) => {
        const src = this.buildAuth(req, false).source;
        if (this.stallSources > 0) {
          this.stallSources--;
          // Headers and half the body, then silence: the connection stays open.
          const stream = new PassThrough();
          stream.write(src.subarray(0, Math.floor(src.length / 2)));
          this.stalled.push(stream);
          return [200, stream];
        }
        return [200, src];
      }),
    );
    this.app.post(`${P}/builds/:id/start`, wrap('start', async (req) => this.start(req)));
    this.app.post(`${P}/builds/:id/logs`, wrap('logs', async (req) => this.logs(req)));
    this.app.put(`${P}/builds/:id/artifacts/*`, wrap('artifact', async (req) => this.artifact(req)));
    this.app.post(`${P}/builds/:id/finish`, wrap('finish', async (req) => this.finish(req)));
  }

  private answerFor(w: FakeWorker, status: number, body: RegisterRequest) {
    w.oldTokens.add(w.token);
    w.token = `bfw_${randomBytes(16).toString('hex')}`;
    w.tokenExpired = false;
    w.registrations++;
    const active = body.activeBuildIds ?? [];
    const mine = [...this.builds.values()].filter((b) => b.workerId === w.id && b.state !== 'finished' && !b.leaseLost);
    this.wake.emit('wake'); // parked polls with the old token answer 401
    return [
      status,
      {
        workerId: w.id,
        ...(status === 201 ? { workerSecret: w.secret } : {}),
        accessToken: w.token,
        accessTokenExpiresAt: new Date(Date.now() + this.accessTokenTtlMs).toISOString(),
        accessTokenExpiresInMs: this.accessTokenTtlMs,
        settings: this.settings,
        builds: status === 200 ? mine.map((b) => this.assigned(b)) : [],
        abandon: active.filter((id) => !mine.some((b) => b.id === id)),
      },
    ] as [number, unknown];
  }

  private register(req: FastifyRequest): [number, unknown] {
    const body = req.body as RegisterRequest;
    if (body.workerId) {
      if (!body.workerSecret) throw new FakeError('VALIDATION_FAILED', 'workerSecret required with workerId');
      const w = this.workers.get(body.workerId);
      if (!w) throw new FakeError('WORKER_NOT_FOUND', 'no such worker');
      if (w.secret !== body.workerSecret) throw new FakeError('TOKEN_INVALID', 'wrong secret');
      if (body.bootId) {
        const i = w.bootIds.indexOf(body.bootId);
        if (i >= 0 && i < w.bootIds.length - 1) throw new FakeError('IDENTITY_CONFLICT', 'a newer instance holds this identity');
        if (i < 0) w.bootIds.push(body.bootId);
      }
      return this.answerFor(w, 200, body);
    }
    if (bearerToken(req.headers.authorization) !== this.enrollmentToken) throw new FakeError('TOKEN_INVALID', 'bad enrollment token');
    if (body.registrationId) {
      const w = [...this.workers.values()].find((x) => x.registrationId === body.registrationId);
      if (w) {
        if (w.used) throw new FakeError('INVALID_TRANSITION', 'registrationId used up');
        w.secret = `bfs_${randomBytes(16).toString('hex')}`;
        return this.answerFor(w, 201, body);
      }
    }
    const w: FakeWorker = {
      id: randomUUID(),
      secret: `bfs_${randomBytes(16).toString('hex')}`,
      token: '',
      oldTokens: new Set(),
      tokenExpired: false,
      bootIds: body.bootId ? [body.bootId] : [],
      used: false,
      registrations: 0,
      ...(body.registrationId ? { registrationId: body.registrationId } : {}),
    };
    this.workers.set(w.id, w);
    return this.answerFor(w, 201, body);
  }

  private workerAuth(req: FastifyRequest): FakeWorker {
    const id = (req.params as { id: string }).id;
    const token = bearerToken(req.headers.authorization);
    const w = this.workers.get(id);
    if (!w) throw new FakeError('WORKER_NOT_FOUND', 'no such worker');
    if (token !== w.token) {
      if (token && w.oldTokens.has(token)) throw new FakeError('TOKEN_INVALID', 'token rotated');
      throw new FakeError('TOKEN_INVALID', 'unknown token');
    }
    if (w.tokenExpired) throw new FakeError('TOKEN_EXPIRED', 'token expired');
    w.used = true;
    return w;
  }

  /** Assigns a queued build to `workerId` and returns what a poll would hand out (executor tests). */
  assign(b: FakeBuild, workerId = 'w-test') {
    b.state = 'assigned';
    b.workerId = workerId;
    return this.assigned(b);
  }

  private assigned(b: FakeBuild) {
    return {
      id: b.id,
      attempt: b.attempt,
      state: b.state === 'running' ? ('running' as const) : ('assigned' as const),
      buildToken: this.buildToken(b),
      spec: b.spec,
      sourceUrl: `/api/v1/builds/${encodeURIComponent(b.id)}/source`,
      ackDeadline: new Date(Date.now() + this.settings.ackTimeoutMs).toISOString(),
    };
  }

  private async poll(req: FastifyRequest<{ Params: { id: string } }>): Promise<[number, unknown?]> {
    const body = req.body as { freeSlots: number; activeBuildIds: string[] };
    const waitMs = Math.min(Number((req.query as { waitMs?: string }).waitMs ?? 0), this.pollHoldMs);
    const deadline = Date.now() + waitMs;
    for (;;) {
      const w = this.workerAuth(req);
      if (body.freeSlots <= 0) return [204];
      const out: FakeBuild[] = [];
      for (const b of this.builds.values()) {
        if (out.length >= body.freeSlots) break;
        if (b.workerId === w.id && b.state === 'assigned' && !body.activeBuildIds.includes(b.id)) out.push(b);
      }
      for (const b of this.builds.values()) {
        if (out.length >= body.freeSlots) break;
        if (b.state === 'queued') {
          b.state = 'assigned';
          b.workerId = w.id;
          out.push(b);
        }
      }
      if (out.length > 0) return [200, { builds: out.map((b) => this.assigned(b)) }];
      const left = deadline - Date.now();
      if (left <= 0) return [204];
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, left);
        this.wake.once('wake', done);
        function done() {
          clearTimeout(t);
          resolve();
        }
      });
      if (Date.now() >= deadline && ![...this.builds.values()].some((b) => b.state === 'queued')) {
        this.workerAuth(req);
        return [204];
      }
    }
  }

  private heartbeat(req: FastifyRequest): [number, unknown] {
    const w = this.workerAuth(req);
    const body = req.body as { activeBuildIds: string[] };
    const cancel: string[] = [];
    const abandon: string[] = [];
    for (const id of body.activeBuildIds) {
      const b = this.builds.get(id);
      if (!b || b.workerId !== w.id || b.leaseLost || b.state === 'finished') abandon.push(id);
      else if (b.cancelRequested) cancel.push(id);
    }
    return [
      200,
      {
        cancel,
        abandon,
        accessTokenExpiresAt: new Date(Date.now() + this.accessTokenTtlMs).toISOString(),
        accessTokenExpiresInMs: this.accessTokenTtlMs,
      },
    ];
  }

  private buildAuth(req: FastifyRequest, write: boolean, attempt?: number): FakeBuild {
    const id = (req.params as { id: string }).id;
    const token = bearerToken(req.headers.authorization) ?? '';
    const m = /^bfb_(.+)\.(\d+)\.fake$/.exec(token);
    if (!m) throw new FakeError('TOKEN_INVALID', 'not a build token');
    if (m[1] !== id) throw new FakeError('FORBIDDEN', 'token of another build');
    const b = this.builds.get(id);
    if (!b) throw new FakeError('BUILD_NOT_FOUND', 'no such build');
    if (write) {
      if (b.leaseLost || Number(m[2]) !== b.attempt || (attempt !== undefined && attempt !== b.attempt)) {
        throw new FakeError('LEASE_LOST', 'attempt no longer holds the lease');
      }
    }
    return b;
  }

  private start(req: FastifyRequest): [number, unknown] {
    const body = req.body as { attempt: number };
    const b = this.buildAuth(req, true, body.attempt);
    if (b.state === 'finished' || (b.cancelRequested && b.state === 'assigned')) throw new FakeError('INVALID_TRANSITION', 'canceled');
    b.state = 'running';
    b.starts++;
    this.events.emit('start', b.id);
    return [200, { build: { id: b.id, state: 'running', attempt: b.attempt } }];
  }

  private logs(req: FastifyRequest): [number, unknown] {
    const body = req.body as LogChunkRequest;
    const b = this.buildAuth(req, true, body.attempt);
    if (b.state === 'finished') throw new FakeError('INVALID_TRANSITION', 'attempt finished');
    const dup = b.chunks.find((c) => c.seq === body.seq);
    if (dup) {
      if (dup.offset === body.offset && dup.data === body.data) return [200, { offset: b.logBytes }];
      throw new FakeError('OFFSET_MISMATCH', String(b.logBytes));
    }
    if (body.offset !== b.logBytes) throw new FakeError('OFFSET_MISMATCH', String(b.logBytes));
    const data = Buffer.from(body.data, body.encoding === 'base64' ? 'base64' : 'utf8');
    b.chunks.push(body);
    b.log.push(data);
    b.logBytes += data.length;
    this.events.emit('log', b.id, body);
    return [200, { offset: b.logBytes }];
  }

  private async artifact(req: FastifyRequest): Promise<[number, unknown?]> {
    const stream = req.body as Readable;
    let b: FakeBuild;
    try {
      b = this.buildAuth(req, true);
    } catch (err) {
      await drain(stream);
      throw err;
    }
    const name = decodeURIComponent((req.params as { '*': string })['*']);
    const parts: Buffer[] = [];
    for await (const c of stream) parts.push(c as Buffer);
    const data = Buffer.concat(parts);
    const sha256 = createHash('sha256').update(data).digest('hex');
    if (sha256 !== req.headers['x-checksum-sha256']) throw new FakeError('CHECKSUM_MISMATCH', 'checksum mismatch');
    if (b.state === 'finished') throw new FakeError('INVALID_TRANSITION', 'attempt finished');
    const again = b.artifacts.get(name)?.sha256 === sha256;
    b.artifacts.set(name, { sha256, size: data.length, data });
    return [again ? 200 : 201, { name, size: data.length, sha256 }];
  }

  private finish(req: FastifyRequest): [number, unknown] {
    const body = req.body as FinishRequest;
    const b = this.buildAuth(req, true, body.attempt);
    if (b.finish) {
      if (b.finish.outcome === body.outcome) return [200, { build: { id: b.id } }];
      throw new FakeError('INVALID_TRANSITION', 'already finished');
    }
    b.finish = body;
    b.state = 'finished';
    this.events.emit('finish', b.id, body);
    return [200, { build: { id: b.id, state: body.outcome } }];
  }
}

class FakeError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
  }
}

async function drain(stream: Readable | undefined): Promise<void> {
  if (!stream) return;
  for await (const _ of stream) void _;
}
