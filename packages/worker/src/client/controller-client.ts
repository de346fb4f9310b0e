/**
 * The worker's typed client of the controller: one method per call of
 * docs/protocol.md the worker makes (after Woodpecker's `rpc/peer.go` and
 * Buildkite's `core/client.go`). Each method says when it is called, what it
 * retries and with what budget; the agent, the session and the build run
 * depend on this interface, never on paths or request bodies.
 *
 * Budgets are attempts (the first included) and a time limit from the first
 * attempt (waits that would end later are not taken). Retried: what
 * `isRetryable` calls retryable (network errors, timeouts, 429, 500, 503).
 * Never retried: every other protocol answer, which the caller decides on.
 * Out of budget: `RetryBudgetExhausted`, logged as an error by the client;
 * a build run then drops the build (its lease lapses and the controller
 * hands it out again) rather than report an outcome it could not deliver.
 * With the default backoff of build writes (250 ms doubling to 10 s, full
 * jitter) 10 attempts wait at most about 46 s in all, enough to ride out a
 * controller restart.
 * Long-lived loops (poll, heartbeat) make one attempt per call: the loop is
 * the retry, and it logs its own failures.
 */
import type {
  AssignedBuild,
  CacheHit,
  FinishRequest,
  HeartbeatRequest,
  HeartbeatResponse,
  PollRequest,
  RegisterRequest,
  RegisterResponse,
} from '@buildfleet/protocol';
import type { RetryBudget } from './retry.js';

/** What a poll brought: builds to run, and ids from `watchCancel` whose cancellation was requested. */
export interface PollAnswer {
  builds: AssignedBuild[];
  cancel: string[];
}

/** Who calls: the worker's id and its current access token (`bfw_…`). */
export interface WorkerCredentials {
  workerId: string;
  accessToken: string;
}

/** One attempt of one build as the worker knows it; writes use its build token (`bfb_…`). */
export type BuildRef = Pick<AssignedBuild, 'id' | 'attempt' | 'buildToken' | 'sourceUrl'>;

/** One log chunk (docs/protocol.md "For the worker running a build"): `offset` counts the attempt's bytes before it. */
export interface LogChunkUpload {
  seq: number;
  offset: number;
  data: Buffer;
}

/** A secret value handed to one attempt (`GET /builds/{id}/secrets`). */
export interface HandedSecret {
  name: string;
  value: string;
}

/** A cache archive to save: the file, its SHA-256 (lowercase hex) and size in bytes. */
export interface CacheUpload {
  key: string;
  file: string;
  sha256: string;
  size: number;
}

/** A file to upload as an artifact: its workspace-relative name, where it is, its size and SHA-256. */
export interface ArtifactUpload {
  name: string;
  path: string;
  size: number;
  sha256: string;
}

export interface CallOptions {
  /** Aborts the request and any wait between attempts. */
  signal?: AbortSignal | undefined;
}

/**
 * Retry budgets of the calls that retry (see each method). The simulation
 * and tests shorten the backoff between attempts, never these.
 */
export const BUDGETS = {
  /** 10 attempts over at most 5 minutes (Buildkite's `Register` also keeps trying for 5 minutes). */
  register: { attempts: 10, withinMs: 5 * 60_000 },
  /** 8 attempts over at most 1 minute: past its ackDeadline (default 30 s) the build is lost anyway. */
  start: { attempts: 8, withinMs: 60_000 },
  /** 10 attempts over at most 5 minutes. */
  source: { attempts: 10, withinMs: 5 * 60_000 },
  /** 12 attempts over at most 10 minutes (logs matter: Buildkite's `UploadChunk` tries ~10 minutes). */
  logChunk: { attempts: 12, withinMs: 10 * 60_000 },
  /** 10 attempts over at most 10 minutes per artifact. */
  artifact: { attempts: 10, withinMs: 10 * 60_000 },
  /** 12 attempts over at most 10 minutes (Buildkite's `FinishJob`: 12 attempts, ~10 minutes). */
  finish: { attempts: 12, withinMs: 10 * 60_000 },
  /** 8 attempts over at most 1 minute: the script waits for its secrets. */
  secrets: { attempts: 8, withinMs: 60_000 },
  /** 3 attempts over at most 30 s per lookup, archive or save: a cache is an optimisation, never worth stalling a build for. */
  cache: { attempts: 3, withinMs: 30_000 },
  /** 5 attempts over at most 30 s: a worker that leaves should not hang on its way out. */
  deregister: { attempts: 5, withinMs: 30_000 },
} as const satisfies Record<string, RetryBudget>;

export interface ControllerClient {
  /**
   * `POST /workers/register`. Called by the session only: at start, for a
   * proactive refresh at 75% of the token's life, after a 401, and as a new
   * worker after 404 (then with `enrollmentToken` as bearer; a
   * re-registration sends `workerSecret` in the body and no bearer).
   * Retries: `BUDGETS.register`. Protocol answers (401, 404, 409
   * IDENTITY_CONFLICT / INVALID_TRANSITION) are thrown as ApiError for the
   * session to decide on.
   */
  register(body: RegisterRequest, enrollmentToken: string | undefined, opts?: CallOptions): Promise<RegisterResponse>;

  /**
   * `POST /workers/{id}/poll?waitMs=`. Called by the poll loop (through the
   * session, which turns 401/404 into a re-registration) whenever it has a
   * free slot, or builds whose cancel it watches (`watchCancel`, when the
   * controller announced `settings.watchCancel`); parks up to `waitMs` (ms)
   * at the controller. Returns the builds handed out and the watched builds
   * to cancel (both empty on 204). One attempt: the loop backs off and polls
   * again.
   */
  poll(who: WorkerCredentials, body: PollRequest, waitMs: number, opts?: CallOptions): Promise<PollAnswer>;

  /**
   * `POST /workers/{id}/heartbeat`. Called by the heartbeat loop every
   * `heartbeatIntervalMs` with the builds running here; renews their leases
   * and brings `cancel`/`abandon`. Times out after `timeoutMs` (a third of
   * the lease, so a silent controller costs little of it). One attempt: the
   * next heartbeat is the retry, and fencing bounds how long the builds may
   * go without one.
   */
  heartbeat(who: WorkerCredentials, body: HeartbeatRequest, timeoutMs: number, opts?: CallOptions): Promise<HeartbeatResponse>;

  /**
   * `POST /builds/{id}/start` with the build token: the build run's first
   * write, before anything runs. Retries: `BUDGETS.start`. 409 LEASE_LOST /
   * INVALID_TRANSITION (canceled meanwhile) are thrown.
   */
  start(build: BuildRef, opts?: CallOptions): Promise<void>;

  /**
   * `GET {sourceUrl}` streamed into `file`; returns its size in bytes. Called
   * once per build run after `start`. A body that stalls for the request
   * timeout counts as a network failure. Retries: `BUDGETS.source`.
   */
  downloadSource(build: BuildRef, file: string, opts?: CallOptions): Promise<number>;

  /**
   * `POST /builds/{id}/logs`: one chunk, base64. Called by the log streamer,
   * one chunk in flight per build; a retry re-sends the same (seq, offset,
   * data), which the controller stores once. `truncated: true` means the
   * controller stores no more of this attempt's log (its
   * BUILDFLEET_LOG_MAX_MB cap): the streamer stops sending. Retries:
   * `BUDGETS.logChunk`.
   */
  appendLog(build: BuildRef, chunk: LogChunkUpload, opts?: CallOptions): Promise<{ truncated: boolean }>;

  /**
   * `PUT /builds/{id}/artifacts/{name}` with `X-Checksum-SHA256`, the file
   * streamed. Called after the script ended and the log was flushed, once
   * per artifact, before `finish`. Its timeout grows by a second per MiB.
   * Retries: `BUDGETS.artifact`.
   */
  uploadArtifact(build: BuildRef, artifact: ArtifactUpload, opts?: CallOptions): Promise<void>;

  /**
   * `POST /builds/{id}/finish`: the attempt's last write, after its log and
   * artifacts. The same finish twice is 200, so a retry after a lost answer
   * is safe. Retries: `BUDGETS.finish`; once that is spent the build is
   * dropped and its lease lapses (the controller requeues it).
   */
  finish(build: BuildRef, body: FinishRequest, opts?: CallOptions): Promise<void>;

  /**
   * `GET /builds/{id}/secrets` with the build token: the values of the
   * secrets the spec asks for (issue 13). Called once, after `start`, before
   * the script, only when the spec names secrets. Retries: `BUDGETS.secrets`.
   * `409 INVALID_TRANSITION` (the controller failed the build: a secret
   * became unavailable) and `LEASE_LOST` are thrown.
   */
  secrets(build: BuildRef, opts?: CallOptions): Promise<HandedSecret[]>;

  /**
   * `GET /builds/{id}/cache?key=&restoreKeys=` with the build token: the
   * newest entry of the build's scope for `key`, else for the first restore
   * prefix that has one; null on a miss. Retries: `BUDGETS.cache`.
   */
  cacheLookup(build: BuildRef, key: string, restoreKeys: readonly string[], opts?: CallOptions): Promise<CacheHit | null>;

  /** `GET /builds/{id}/cache/{sha256}` streamed into `file`; returns its size in bytes. Retries: `BUDGETS.cache`. */
  cacheDownload(build: BuildRef, sha256: string, file: string, opts?: CallOptions): Promise<number>;

  /**
   * `PUT /builds/{id}/cache?key=` with `X-Checksum-SHA256`, the archive
   * streamed. `created` is false when the key already had an entry (kept).
   * Retries: `BUDGETS.cache`; its timeout grows by a second per MiB.
   */
  cacheUpload(build: BuildRef, upload: CacheUpload, opts?: CallOptions): Promise<{ created: boolean }>;

  /**
   * `POST /workers/{id}/deregister` with the access token: a worker that
   * leaves on purpose (`--once`, `--idle-timeout`) removes itself, so it is
   * not listed as lost. `409 INVALID_TRANSITION` (it still holds builds) is
   * thrown for the caller to run them first. Retries: `BUDGETS.deregister`.
   */
  deregister(who: WorkerCredentials, opts?: CallOptions): Promise<void>;
}
