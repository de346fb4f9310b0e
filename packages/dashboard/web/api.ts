/**
 * The typed API client: one function per call the dashboard makes, typed by
 * the protocol package's schemas. Every call carries the session's API token;
 * a 401 signs out (the sign-in form asks again) and throws.
 */
import {
  paths,
  type Artifact,
  type Build,
  type BuildList,
  type EnrollmentToken,
  type Stats,
  type Webhook,
  type WebhookCreate,
  type WebhookDelivery,
  type Worker,
  webhookPaths,
} from '@buildfleet/protocol';
import { clearToken, getToken } from './auth.js';

/** A refused call: the protocol's error `code` and `message` (docs/protocol.md "Conventions"). */
export class ApiFailure extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export interface CallOptions {
  method?: string;
  body?: unknown;
  accept?: string;
  signal?: AbortSignal;
  /** A token to try instead of the session's (signing in); a 401 then leaves the session alone. */
  token?: string;
}

/** Sends one call; resolves with the response when it is 2xx, else throws ApiFailure. */
export async function call(path: string, opts: CallOptions = {}): Promise<Response> {
  const headers: Record<string, string> = { authorization: `Bearer ${opts.token ?? getToken() ?? ''}` };
  if (opts.accept) headers.accept = opts.accept;
  if (opts.body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(path, {
    method: opts.method ?? 'GET',
    headers,
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    signal: opts.signal,
    cache: 'no-store',
  });
  if (res.ok) return res;
  let code = `HTTP_${res.status}`;
  let message = res.statusText || `HTTP ${res.status}`;
  try {
    const body = (await res.json()) as { error?: { code?: string; message?: string } };
    if (body.error?.code) code = body.error.code;
    if (body.error?.message) message = body.error.message;
  } catch {
    // not a protocol error body
  }
  if (res.status === 401 && opts.token === undefined) clearToken();
  throw new ApiFailure(res.status, code, message);
}

async function json<T>(path: string, opts?: CallOptions): Promise<T> {
  return (await (await call(path, opts)).json()) as T;
}

/** `GET /builds` filters and paging (docs/protocol.md "For users"). */
export interface BuildQuery {
  state?: string;
  label?: string;
  worker?: string;
  meta?: string[];
  q?: string;
  limit?: number;
  cursor?: string;
  before?: string;
}

export function buildListPath(query: BuildQuery): string {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (Array.isArray(v)) for (const item of v) p.append(k, item);
    else if (v !== undefined && v !== '') p.set(k, String(v));
  }
  const s = p.toString();
  return s ? `${paths.builds()}?${s}` : paths.builds();
}

export const api = {
  listBuilds: (query: BuildQuery, signal?: AbortSignal) => json<BuildList>(buildListPath(query), { signal }),
  getBuild: async (id: string, signal?: AbortSignal) => (await json<{ build: Build }>(paths.build(id), { signal })).build,
  cancelBuild: async (id: string) => (await json<{ build: Build }>(paths.cancel(id), { method: 'POST' })).build,
  retryBuild: async (id: string) => (await json<{ build: Build }>(paths.retry(id), { method: 'POST' })).build,
  listArtifacts: async (id: string, signal?: AbortSignal) =>
    (await json<{ artifacts: Artifact[] }>(paths.artifacts(id), { signal })).artifacts,
  /** The artifact's bytes (a bearer cannot ride on a plain link, so downloads go through fetch). */
  artifactBlob: async (id: string, name: string) => (await call(paths.artifact(id, name))).blob(),
  /** The whole log of one attempt as text. */
  /** The log of an attempt as text, from byte `offset` (default 0). */
  logText: async (id: string, attempt: number, signal?: AbortSignal, offset = 0) =>
    (await call(`${paths.logs(id)}?attempt=${attempt}${offset ? `&offset=${offset}` : ''}`, { signal })).text(),
  listWorkers: async (signal?: AbortSignal) => (await json<{ workers: Worker[] }>(paths.workers(), { signal })).workers,
  getWorker: async (id: string, signal?: AbortSignal) => (await json<{ worker: Worker }>(paths.worker(id), { signal })).worker,
  drainWorker: async (id: string) => (await json<{ worker: Worker }>(paths.drain(id), { method: 'POST' })).worker,
  resumeWorker: async (id: string) => (await json<{ worker: Worker }>(paths.resume(id), { method: 'POST' })).worker,
  deleteWorker: (id: string) => json<{ lost: string[] }>(paths.worker(id), { method: 'DELETE' }),
  listTokens: async (signal?: AbortSignal) =>
    (await json<{ enrollmentTokens: EnrollmentToken[] }>(paths.enrollmentTokens(), { signal })).enrollmentTokens,
  createToken: (body: { description?: string; expiresAt?: string; maxUses?: number }) =>
    json<EnrollmentToken>(paths.enrollmentTokens(), { method: 'POST', body }),
  listWebhooks: async (signal?: AbortSignal) => (await json<{ webhooks: Webhook[] }>(webhookPaths.webhooks(), { signal })).webhooks,
  /** The answer carries the signing secret; it is never shown again. */
  createWebhook: (body: WebhookCreate) => json<{ webhook: Webhook; secret: string }>(webhookPaths.webhooks(), { method: 'POST', body }),
  deleteWebhook: async (id: string) => {
    await call(webhookPaths.webhook(id), { method: 'DELETE' });
  },
  /** The delivery log, newest first. */
  listDeliveries: async (id: string, signal?: AbortSignal) =>
    (await json<{ deliveries: WebhookDelivery[] }>(`${webhookPaths.deliveries(id)}?limit=100`, { signal })).deliveries,
  revokeToken: async (id: string) => {
    await call(paths.enrollmentToken(id), { method: 'DELETE' });
  },
  stats: (minutes: number, signal?: AbortSignal) => json<Stats>(`${paths.stats()}?minutes=${minutes}`, { signal }),
};

/** Saves a blob under `filename` through a temporary object URL. */
export function saveBlob(blob: Blob, filename: string): void {
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
