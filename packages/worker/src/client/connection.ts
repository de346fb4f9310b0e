/**
 * The worker's HTTP connection to the controller: the transport under the
 * typed client (`controller-client.ts`). It never retries (design rule 6):
 * it maps answers to typed errors — `ApiError` for a protocol error body,
 * `TransportError` for everything else — and leaves retry policy to
 * `retry.ts` and credential handling to `session.ts`.
 */
import { apiErrorOf, parseRetryAfter, type Clock } from '@buildfleet/protocol';

/** A `fetch`-compatible function (global fetch, or an in-process router in simulations). */
export type Transport = (url: string, init: RequestInit) => Promise<Response>;

export type TransportErrorKind = 'network' | 'timeout' | 'http' | 'aborted';

/**
 * A request that got no protocol answer: the connection failed (`network`),
 * the clock ran out (`timeout`), the caller aborted (`aborted`), or the status
 * was an error without a protocol error body (`http`, with `status`).
 */
export class TransportError extends Error {
  constructor(
    readonly kind: TransportErrorKind,
    message: string,
    readonly url: string,
    readonly status?: number,
    readonly retryAfterMs?: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'TransportError';
  }
}

/**
 * fetch's own message ("fetch failed") with its cause's code, and a hint
 * when the controller's TLS certificate is not trusted.
 */
function networkReason(err: unknown): string {
  const message = (err as Error)?.message ?? String(err);
  const code = ((err as { cause?: { code?: unknown } })?.cause?.code ?? '') as string;
  if (!code) return message;
  const untrusted = /CERT|SELF_SIGNED|UNABLE_TO_(VERIFY|GET_ISSUER)/.test(code);
  return `${message} (${code}${untrusted ? ': the controller\'s TLS certificate is not trusted; BUILDFLEET_CA_FILE names an extra CA' : ''})`;
}

export interface RequestOptions {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  /** Path under the controller, e.g. `/api/v1/workers/register`. */
  path: string;
  /** Bearer token, if any. */
  token?: string | undefined;
  /** JSON body. */
  json?: unknown;
  /** Raw streamed body (sent with `duplex: 'half'`). */
  body?: ReadableStream<Uint8Array> | Uint8Array;
  headers?: Record<string, string>;
  /** Timeout in ms for this request (default: the client's). */
  timeoutMs?: number;
  /** Caller's abort (stop, shutdown). */
  signal?: AbortSignal;
}

export interface JsonAnswer<T> {
  status: number;
  body: T;
  headers: Headers;
}

export interface ConnectionOptions {
  /** Base URLs; the client moves to the next one when the current does not answer. */
  urls: readonly string[];
  clock: Clock;
  /** Default per-request timeout, ms. */
  requestTimeoutMs: number;
  transport?: Transport;
  /** Told when requests move to the next URL: the one that failed, the next, and why. */
  onFailover?: (from: string, to: string, why: string) => void;
}

/**
 * One controller connection with failover across `urls`: after a network
 * error, a timeout or a 5xx, the *next* request goes to the next URL (the
 * failed one is not retried here; `retry.ts` decides whether to call again).
 */
export class Connection {
  private readonly urls: readonly string[];
  private index = 0;
  private readonly transport: Transport;
  private readonly onFailover: ConnectionOptions['onFailover'];
  readonly clock: Clock;
  readonly requestTimeoutMs: number;

  constructor(opts: ConnectionOptions) {
    if (opts.urls.length === 0) throw new Error('Connection needs at least one URL');
    this.urls = opts.urls;
    this.clock = opts.clock;
    this.requestTimeoutMs = opts.requestTimeoutMs;
    this.transport = opts.transport ?? ((url, init) => fetch(url, init));
    this.onFailover = opts.onFailover;
  }

  /** The base URL requests go to now. */
  get baseUrl(): string {
    return this.urls[this.index]!;
  }

  private failover(failedIndex: number, why: string): void {
    // Only move on if nobody else has moved already, so N concurrent failures skip one URL, not N.
    if (this.urls.length > 1 && this.index === failedIndex) {
      this.index = (failedIndex + 1) % this.urls.length;
      this.onFailover?.(this.urls[failedIndex]!, this.urls[this.index]!, why);
    }
  }

  /**
   * Sends one request and returns the raw `Response` for 2xx answers.
   * Throws `ApiError` for a protocol error body (with `retryAfterMs` from
   * `Retry-After`), `TransportError` otherwise. The timeout covers the
   * request until the answer's headers arrive (and the upload of `body`).
   */
  async send(opts: RequestOptions): Promise<Response> {
    const idx = this.index;
    const url = this.urls[idx]! + opts.path;
    const timeoutMs = opts.timeoutMs ?? this.requestTimeoutMs;
    const ac = new AbortController();
    let timedOut = false;
    const timer = this.clock.setTimeout(() => {
      timedOut = true;
      ac.abort(new Error(`timeout after ${timeoutMs}ms`));
    }, timeoutMs);
    const onCallerAbort = () => ac.abort(opts.signal!.reason);
    if (opts.signal?.aborted) onCallerAbort();
    else opts.signal?.addEventListener('abort', onCallerAbort, { once: true });

    const headers: Record<string, string> = { ...opts.headers };
    if (opts.token) headers['authorization'] = `Bearer ${opts.token}`;
    const init: RequestInit & { duplex?: 'half' } = { method: opts.method, headers, signal: ac.signal };
    if (opts.json !== undefined) {
      headers['content-type'] = 'application/json';
      init.body = JSON.stringify(opts.json);
    } else if (opts.body !== undefined) {
      headers['content-type'] ??= 'application/octet-stream';
      init.body = opts.body as NonNullable<RequestInit["body"]>;
      init.duplex = 'half';
    }

    let res: Response;
    try {
      res = await this.transport(url, init);
    } catch (err) {
      if (opts.signal?.aborted) throw new TransportError('aborted', `${opts.method} ${opts.path}: aborted`, url, undefined, undefined, { cause: err });
      const why = networkReason(err);
      this.failover(idx, timedOut ? `no answer within ${timeoutMs}ms` : why);
      if (timedOut) throw new TransportError('timeout', `${opts.method} ${opts.path}: no answer within ${timeoutMs}ms`, url, undefined, undefined, { cause: err });
      throw new TransportError('network', `${opts.method} ${opts.path}: ${why}`, url, undefined, undefined, { cause: err });
    } finally {
      this.clock.clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onCallerAbort);
    }

    if (res.ok) return res;
    // 503 is a database this controller cannot reach, 500 a bug on it: another controller may do better.
    if (res.status >= 500) this.failover(idx, `it answered ${res.status}`);
    const apiError = await apiErrorOf(res, this.clock.now());
    if (apiError) throw apiError;
    const retryAfterMs = parseRetryAfter(res.headers.get('retry-after'), this.clock.now());
    throw new TransportError('http', `${opts.method} ${opts.path}: HTTP ${res.status} without an error body`, url, res.status, retryAfterMs);
  }

  /** Sends a request and parses a JSON answer (undefined body for 204). */
  async json<T>(opts: RequestOptions): Promise<JsonAnswer<T>> {
    const res = await this.send(opts);
    const text = await res.text();
    let body: T;
    try {
      body = (text ? JSON.parse(text) : undefined) as T;
    } catch (err) {
      throw new TransportError('http', `${opts.method} ${opts.path}: answer is not JSON`, res.url, res.status, undefined, { cause: err });
    }
    return { status: res.status, body, headers: res.headers };
  }
}
