/**
 * The CLI's HTTP client: one place that turns answers into values or typed
 * errors. It never retries (design rule 6): a CLI call that fails is
 * reported to the user, who runs it again.
 */
import { ApiError, apiErrorOf, paths, systemClock, type Artifact, type Build, type BuildList, type Worker } from '@buildfleet/protocol';
import { CaFileError, controllerFetch, type FetchLike } from '@buildfleet/protocol/node';
import { CliError } from './errors.js';
import type { ClientSettings } from './settings.js';

/** TLS verification failures (Node's and OpenSSL's codes): the certificate is not one the CLI trusts. */
const UNTRUSTED_CERT = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_UNTRUSTED',
]);

export interface RequestOptions {
  method?: string;
  query?: Record<string, string | number | undefined>;
  json?: unknown;
  body?: NonNullable<RequestInit['body']> | ReadableStream<Uint8Array>;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

/** Talks to one controller with the API token. */
export class ApiClient {
  private fetcher: FetchLike | undefined;

  constructor(readonly settings: ClientSettings) {}

  /** The global fetch, or one that also trusts BUILDFLEET_CA_FILE (made once). */
  private get fetch(): FetchLike {
    try {
      return (this.fetcher ??= controllerFetch(this.settings.caFile));
    } catch (err) {
      if (err instanceof CaFileError) throw new CliError(err.message);
      throw err;
    }
  }

  /**
   * Sends a request; resolves with the response when its status is 2xx.
   * Throws ApiError for an error body (with a hint for 401/404 codes), CliError
   * when the controller cannot be reached or answers something that is not
   * the protocol.
   */
  async request(path: string, opts: RequestOptions = {}): Promise<Response> {
    const url = new URL(this.settings.controllerUrl + path);
    for (const [k, v] of Object.entries(opts.query ?? {})) if (v !== undefined) url.searchParams.set(k, String(v));
    const headers: Record<string, string> = { ...opts.headers };
    if (this.settings.apiToken) headers.authorization = `Bearer ${this.settings.apiToken}`;
    let body = opts.body;
    if (opts.json !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(opts.json);
    }
    const init: RequestInit & { duplex?: 'half' } = { method: opts.method ?? 'GET', headers };
    if (body !== undefined) init.body = body as RequestInit['body'];
    if (body instanceof ReadableStream) init.duplex = 'half';
    if (opts.signal) init.signal = opts.signal;
    let res: Response;
    try {
      res = await this.fetch(url, init);
    } catch (err) {
      if (opts.signal?.aborted) throw err;
      throw this.connectionError(err);
    }
    if (res.ok) return res;
    throw await this.errorFrom(res);
  }

  /** `request` and parse the JSON answer. */
  async json<T>(path: string, opts: RequestOptions = {}): Promise<T> {
    const res = await this.request(path, opts);
    try {
      return (await res.json()) as T;
    } catch {
      throw new CliError(`${this.settings.controllerUrl} answered ${path} with something that is not JSON; is it a buildfleet controller?`);
    }
  }

  getBuild(id: string): Promise<Build> {
    return this.json<{ build: Build }>(paths.build(id)).then((r) => r.build);
  }
  listBuilds(query: { state?: string; label?: string; limit?: number; cursor?: string }): Promise<BuildList> {
    return this.json<BuildList>(paths.builds(), { query });
  }
  cancel(id: string): Promise<Build> {
    return this.json<{ build: Build }>(paths.cancel(id), { method: 'POST' }).then((r) => r.build);
  }
  retry(id: string): Promise<Build> {
    return this.json<{ build: Build }>(paths.retry(id), { method: 'POST' }).then((r) => r.build);
  }
  artifacts(id: string): Promise<Artifact[]> {
    return this.json<{ artifacts: Artifact[] }>(paths.artifacts(id)).then((r) => r.artifacts);
  }
  workers(): Promise<Worker[]> {
    return this.json<{ workers: Worker[] }>(paths.workers()).then((r) => r.workers);
  }
  drain(id: string): Promise<Worker | undefined> {
    return this.json<{ worker?: Worker }>(paths.drain(id), { method: 'POST' }).then((r) => r.worker);
  }

  /** Undoes a drain (`POST /workers/{id}/resume`). */
  resume(id: string): Promise<Worker | undefined> {
    return this.json<{ worker?: Worker }>(paths.resume(id), { method: 'POST' }).then((r) => r.worker);
  }

  private connectionError(err: unknown): CliError {
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    const code = cause?.code;
    const where = this.settings.controllerUrl;
    if (code === 'ECONNREFUSED')
      return new CliError(`cannot connect to the controller at ${where} (connection refused); start one with "buildfleet up" or set BUILDFLEET_CONTROLLER_URL`);
    if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return new CliError(`cannot resolve the controller's host in ${where} (${code})`);
    if (code === 'ECONNRESET' || code === 'UND_ERR_SOCKET') return new CliError(`the controller at ${where} closed the connection (${code}); try again`);
    if (code && UNTRUSTED_CERT.has(code))
      return new CliError(`the controller at ${where} presented a certificate this CLI does not trust (${code}); set BUILDFLEET_CA_FILE to the PEM file of the CA that signed it`);
    if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') return new CliError(`the controller's certificate does not name the host in ${where} (${code}); use the name the certificate was issued for`);
    if (code === 'CERT_HAS_EXPIRED') return new CliError(`the controller's certificate at ${where} has expired (${code})`);
    return new CliError(`cannot reach the controller at ${where}: ${cause?.message ?? (err as Error).message}`);
  }

  private async errorFrom(res: Response): Promise<Error> {
    const status = `${res.status} ${res.statusText}`;
    const err = await apiErrorOf(res, systemClock.now());
    if (!err) return new CliError(`the controller answered ${status} without a protocol error body`);
    if (err.code !== 'TOKEN_INVALID' && err.code !== 'TOKEN_EXPIRED') return err;
    const message = this.settings.apiToken
      ? `the controller rejected the API token from ${this.settings.tokenSource}: ${err.message}`
      : `no API token: set BUILDFLEET_API_TOKEN, or run where the controller's credentials.json is (BUILDFLEET_DATA_DIR): ${err.message}`;
    return new ApiError(err.code, message, err.retryAfterMs);
  }
}
