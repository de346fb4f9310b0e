/**
 * `ControllerClient` over HTTP: builds each request of docs/protocol.md, sends it
 * through the `Connection` (which never retries) and applies the call's
 * budget with `withRetry` (the one place that decides what is retryable).
 */
import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';
import {
  CHECKSUM_HEADER,
  paths,
  type BuildSecretsResponse,
  type CacheHit,
  type CacheLookupResponse,
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
  type CacheUpload,
  type CallOptions,
  type HandedSecret,
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
    return this.retried('GET /builds/{id}/source', BUDGETS.source, opts, fieldsOf(build), () => this.download(build, build.sourceUrl, file, 'source', opts));
  }

  /** One streamed GET into `file` with the build token. */
  private async download(build: BuildRef, path: string, file: string, what: string, opts: CallOptions): Promise<number> {
    const res = await this.conn.send({ method: 'GET', path, token: build.buildToken, signal: opts.signal });
    try {
      return await saveBody(res.body, file, { clock: this.retry.clock, ms: this.conn.requestTimeoutMs }, opts.signal);
    } catch (err) {
      // A body cut off or stalled mid-way is a transport failure (retried); a local file error is not.
      if (opts.signal?.aborted || err instanceof TransportError || (err as NodeJS.ErrnoException).syscall) throw err;
      throw new TransportError('network', `${what} download failed: ${(err as Error).message}`, res.url, undefined, undefined, { cause: err });
    }
  }

  /** One streamed PUT of `file` with the build token and its checksum; its timeout grows by a second per MiB. */
  private upload(build: BuildRef, path: string, file: { path: string; size: number; sha256: string }, opts: CallOptions): Promise<Response> {
    const body = Readable.toWeb(createReadStream(file.path)) as unknown as ReadableStream<Uint8Array>;
    return this.conn.send({
      method: 'PUT',
      path,
      token: build.buildToken,
      body,
      headers: { [CHECKSUM_HEADER]: file.sha256, 'content-length': String(file.size), 'content-type': 'application/octet-stream' },
      signal: opts.signal,
      // Until the answer arrives: the base timeout plus one second per MiB (a floor of 1 MiB/s).
      timeoutMs: this.conn.requestTimeoutMs + Math.ceil(file.size / (1024 * 1024)) * 1000,
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
      await this.upload(build, paths.artifact(build.id, artifact.name), artifact, opts);
    });
  }

  finish(build: BuildRef, body: FinishRequest, opts: CallOptions = {}): Promise<void> {
    return this.retried('POST /builds/{id}/finish', BUDGETS.finish, opts, { ...fieldsOf(build), outcome: body.outcome }, async () => {
      await this.conn.json({ method: 'POST', path: paths.finish(build.id), token: build.buildToken, json: body, signal: opts.signal });
    });
  }

  secrets(build: BuildRef, opts: CallOptions = {}): Promise<HandedSecret[]> {
    return this.retried('GET /builds/{id}/secrets', BUDGETS.secrets, opts, fieldsOf(build), async () => {
      const answer = await this.conn.json<BuildSecretsResponse>({ method: 'GET', path: paths.buildSecrets(build.id), token: build.buildToken, signal: opts.signal });
      return answer.body.secrets;
    });
  }

  cacheLookup(build: BuildRef, key: string, restoreKeys: readonly string[], opts: CallOptions = {}): Promise<CacheHit | null> {
    const q = new URLSearchParams({ key });
    for (const k of restoreKeys) q.append('restoreKeys', k);
    return this.retried('GET /builds/{id}/cache', BUDGETS.cache, opts, fieldsOf(build), async () => {
      const answer = await this.conn.json<CacheLookupResponse>({ method: 'GET', path: `${paths.buildCache(build.id)}?${q}`, token: build.buildToken, signal: opts.signal });
      return answer.body.entry;
    });
  }

  cacheDownload(build: BuildRef, sha256: string, file: string, opts: CallOptions = {}): Promise<number> {
    return this.retried('GET /builds/{id}/cache/{sha256}', BUDGETS.cache, opts, fieldsOf(build), () =>
      this.download(build, paths.buildCacheArchive(build.id, sha256), file, 'cache archive', opts),
    );
  }

  cacheUpload(build: BuildRef, upload: CacheUpload, opts: CallOptions = {}): Promise<{ created: boolean }> {
    const path = `${paths.buildCache(build.id)}?${new URLSearchParams({ key: upload.key })}`;
    return this.retried('PUT /builds/{id}/cache', BUDGETS.cache, opts, fieldsOf(build), async () => {
      const res = await this.upload(build, path, { path: upload.file, size: upload.size, sha256: upload.sha256 }, opts);
      const answer = (await res.json()) as { created: boolean };
      return { created: answer.created };
    });
  }

  deregister(who: WorkerCredentials, opts: CallOptions = {}): Promise<void> {
    return this.retried('POST /workers/{id}/deregister', BUDGETS.deregister, opts, { workerId: who.workerId }, async () => {
      await this.conn.send({ method: 'POST', path: paths.deregister(who.workerId), token: who.accessToken, signal: opts.signal });
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
