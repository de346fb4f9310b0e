/**
 * `ControllerClient` over HTTP: builds each request of PROTOCOL.md, sends it
 * through the `Connection` (which never retries) and applies the call's
 * budget with `withRetry` (the one place that decides what is retryable).
 */
import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';
import {
  CHECKSUM_HEADER,
  paths,
  type Clock,
  type FinishRequest,
  type HeartbeatRequest,
  type HeartbeatResponse,
  type LogChunkRequest,
  type PollRequest,
  type PollResponse,
  type RegisterRequest,
  type RegisterResponse,
} from '@buildfleet/protocol';
import { saveBody } from '../source.js';
import { silentLogger, type Logger } from '../logger.js';
import { Connection, TransportError, type Transport } from './connection.js';
import {
  BUDGETS,
  type ArtifactUpload,
  type BuildRef,
  type CallOptions,
  type ControllerClient,
  type LogChunkUpload,
  type PollAnswer,
  type WorkerCredentials,
} from './controller-client.js';
import { withRetry, type Backoff, type RetryBudget, type RetryContext } from './retry.js';

export class HttpControllerClient implements ControllerClient {
  constructor(
    private readonly conn: Connection,
    private readonly retry: RetryContext,
  ) {}

  private retried<T>(what: string, budget: RetryBudget, opts: CallOptions, fields: Record<string, unknown>, fn: () => Promise<T>): Promise<T> {
    return withRetry(fn, { what, budget, signal: opts.signal, fields }, this.retry);
  }

  register(body: RegisterRequest, enrollmentToken: string | undefined, opts: CallOptions = {}): Promise<RegisterResponse> {
    return this.retried('POST /workers/register', BUDGETS.register, opts, { workerId: body.workerId }, async () => {
      const answer = await this.conn.json<RegisterResponse>({ method: 'POST', path: paths.register(), token: enrollmentToken, json: body, signal: opts.signal });
      return answer.body;
    });
  }

  async poll(who: WorkerCredentials, body: PollRequest, waitMs: number, opts: CallOptions = {}): Promise<PollAnswer> {
    const answer = await this.conn.json<PollResponse | undefined>({
      method: 'POST',
      path: paths.poll(who.workerId, waitMs),
      token: who.accessToken,
      json: body,
      timeoutMs: waitMs + this.conn.requestTimeoutMs,
      signal: opts.signal,
    });
    if (answer.status !== 200 || !answer.body) return { builds: [], cancel: [] };
    return { builds: answer.body.builds, cancel: answer.body.cancel ?? [] };
  }

  async heartbeat(who: WorkerCredentials, body: HeartbeatRequest, timeoutMs: number, opts: CallOptions = {}): Promise<HeartbeatResponse> {
    const answer = await this.conn.json<HeartbeatResponse>({
      method: 'POST',
      path: paths.heartbeat(who.workerId),
      token: who.accessToken,
      json: body,
      timeoutMs,
      signal: opts.signal,
    });
    return answer.body;
  }

  start(build: BuildRef, opts: CallOptions = {}): Promise<void> {
    return this.retried('POST /builds/{id}/start', BUDGETS.start, opts, fieldsOf(build), async () => {
      await this.conn.json({ method: 'POST', path: paths.start(build.id), token: build.buildToken, json: { attempt: build.attempt }, signal: opts.signal });
    });
  }

  downloadSource(build: BuildRef, file: string, opts: CallOptions = {}): Promise<number> {
    const { clock } = this.retry;
    return this.retried('GET /builds/{id}/source', BUDGETS.source, opts, fieldsOf(build), async () => {
      const res = await this.conn.send({ method: 'GET', path: build.sourceUrl, token: build.buildToken, signal: opts.signal });
      try {
        return await saveBody(res.body, file, { clock, ms: this.conn.requestTimeoutMs }, opts.signal);
      } catch (err) {
        // A body cut off or stalled mid-way is a transport failure (retried); a local file error is not.
        if (opts.signal?.aborted || err instanceof TransportError || (err as NodeJS.ErrnoException).syscall) throw err;
        throw new TransportError('network', `source download failed: ${(err as Error).message}`, res.url, undefined, undefined, { cause: err });
      }
    });
  }

  appendLog(build: BuildRef, chunk: LogChunkUpload, opts: CallOptions = {}): Promise<{ truncated: boolean }> {
    const body: LogChunkRequest = { attempt: build.attempt, seq: chunk.seq, offset: chunk.offset, data: chunk.data.toString('base64'), encoding: 'base64' };
    return this.retried('POST /builds/{id}/logs', BUDGETS.logChunk, opts, { ...fieldsOf(build), seq: chunk.seq }, async () => {
      const answer = await this.conn.json<{ offset: number; truncated?: boolean }>({ method: 'POST', path: paths.logs(build.id), token: build.buildToken, json: body, signal: opts.signal });
      return { truncated: answer.body?.truncated === true };
    });
  }

  uploadArtifact(build: BuildRef, artifact: ArtifactUpload, opts: CallOptions = {}): Promise<void> {
    return this.retried('PUT /builds/{id}/artifacts/{name}', BUDGETS.artifact, opts, { ...fieldsOf(build), artifact: artifact.name }, async () => {
      const body = Readable.toWeb(createReadStream(artifact.path)) as unknown as ReadableStream<Uint8Array>;
      await this.conn.send({
        method: 'PUT',
        path: paths.artifact(build.id, artifact.name),
        token: build.buildToken,
        body,
        headers: { [CHECKSUM_HEADER]: artifact.sha256, 'content-length': String(artifact.size) },
        signal: opts.signal,
        // Until the answer arrives: the base timeout plus one second per MiB (a floor of 1 MiB/s).
        timeoutMs: this.conn.requestTimeoutMs + Math.ceil(artifact.size / (1024 * 1024)) * 1000,
      });
    });
  }

  finish(build: BuildRef, body: FinishRequest, opts: CallOptions = {}): Promise<void> {
    return this.retried('POST /builds/{id}/finish', BUDGETS.finish, opts, { ...fieldsOf(build), outcome: body.outcome }, async () => {
      await this.conn.json({ method: 'POST', path: paths.finish(build.id), token: build.buildToken, json: body, signal: opts.signal });
    });
  }
}

function fieldsOf(build: BuildRef): Record<string, unknown> {
  return { buildId: build.id, attempt: build.attempt };
}

export interface HttpClientOptions {
  /** Controller base URLs, tried in order on failover. */
  urls: readonly string[];
  clock: Clock;
  /** Per-request timeout, ms. */
  requestTimeoutMs: number;
  transport?: Transport | undefined;
  logger?: Logger | undefined;
  /** Random in [0, 1) for retry jitter (default Math.random). */
  random?: (() => number) | undefined;
  /** Backoff between attempts, ms (default 250 → 10000). */
  backoff?: Backoff | undefined;
}

/** A `ControllerClient` over its own `Connection` (tests, tools; the agent shares one connection). */
export function createHttpClient(opts: HttpClientOptions): ControllerClient {
  const conn = new Connection({ urls: opts.urls, clock: opts.clock, requestTimeoutMs: opts.requestTimeoutMs, ...(opts.transport ? { transport: opts.transport } : {}) });
  return new HttpControllerClient(conn, {
    clock: opts.clock,
    random: opts.random ?? Math.random,
    logger: opts.logger ?? silentLogger,
    backoff: opts.backoff ?? { baseMs: 250, maxMs: 10_000 },
  });
}
