/**
 * The worker's session: the one object that owns its credentials (worker id,
 * worker secret, access token) and the only code that registers.
 *
 * Flow 2 of docs/design.md: register → access token → poll → 401 → re-register
 * (same id) → poll. Rules (docs/protocol.md "Workers"; design rules 7-8):
 * - a random `bootId` per process start goes with every registration;
 * - a new worker saves its `registrationId` before sending, so a retry after
 *   a lost answer gets the same worker id;
 * - the access token is refreshed proactively at 75% of its lifetime,
 *   measured on the monotonic clock from when the answer arrived;
 * - when calls see 401, exactly one re-registration runs (single flight);
 *   callers arriving meanwhile wait for it, then retry with the new token; a
 *   caller whose rejected token is already stale retries at once;
 * - 401 keeps the worker id; `404 WORKER_NOT_FOUND` drops id and secret and
 *   registers as new; `409 IDENTITY_CONFLICT` is fatal (two processes share
 *   one identity file).
 * Build writes never go through the session: they use the build token.
 */
import { EventEmitter } from 'node:events';
import { randomUUID } from 'node:crypto';
import {
  ApiError,
  type Clock,
  type RegisterRequest,
  type RegisterResponse,
  type TimerHandle,
  type WorkerSettings,
} from '@buildfleet/protocol';
import type { ControllerClient } from './client/controller-client.js';
import { describeError } from './client/retry.js';
import type { WorkerConfig } from './config.js';
import type { Identity, IdentityStore } from './identity.js';
import type { Logger } from './logger.js';

/** Fraction of an access token's lifetime after which it is refreshed (GitLab Runner's 75%). */
export const REFRESH_FRACTION = 0.75;

/** The session cannot go on; the worker must stop. `code` says why. */
export class SessionFatalError extends Error {
  constructor(
    readonly code: 'IDENTITY_CONFLICT' | 'SECRET_REJECTED' | 'ENROLLMENT_REJECTED' | 'NO_ENROLLMENT_TOKEN' | 'CLOSED',
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'SessionFatalError';
  }
}

export type RegistrationKind = 'new' | 'reregistered';

/** Payload of the `registered` event. */
export interface RegisteredEvent {
  kind: RegistrationKind;
  reason: string;
  workerId: string;
  answer: RegisterResponse;
}

export interface SessionOptions {
  client: ControllerClient;
  config: WorkerConfig;
  identityStore: IdentityStore;
  clock: Clock;
  logger: Logger;
  /** Build ids running here now (sent as `activeBuildIds` with re-registrations). */
  activeBuildIds: () => string[];
  /** How this worker runs builds, reported at registration (`shell`, `sandbox`). */
  executor?: string;
}

/**
 * Events: `registered` (RegisteredEvent) after every successful registration,
 * `reregistering` (reason) when one starts, `fatal` (SessionFatalError).
 */
export class Session extends EventEmitter {
  /** Random per process start; tells a restart from a token refresh. */
  readonly bootId: string = randomUUID();
  private identity: Identity = {};
  private token: string | undefined;
  /** Bumped each time the access token changes; a 401 on an older generation is stale. */
  private generation = 0;
  private inflight: Promise<void> | undefined;
  private refreshTimer: TimerHandle | undefined;
  private fatalError: SessionFatalError | undefined;
  private readonly abort = new AbortController();
  private _settings: WorkerSettings | undefined;
  private _tokenExpiresAtMono = 0;
  /** Leaving on purpose (deregistering): a 404 means "gone", never "register as new". */
  private retired = false;

  constructor(private readonly opts: SessionOptions) {
    super();
  }

  get workerId(): string | undefined {
    return this.identity.workerId;
  }
  /** Settings announced with the last access token. */
  get settings(): WorkerSettings {
    if (!this._settings) throw new Error('session is not registered yet');
    return this._settings;
  }
  /** The current access token (for diagnostics and tests). */
  get accessToken(): string | undefined {
    return this.token;
  }
  /** True while a registration is in flight (polling waits on `ready()`). */
  get registering(): boolean {
    return this.inflight !== undefined;
  }
  /** Monotonic ms at which the access token expires. */
  get tokenExpiresAtMono(): number {
    return this._tokenExpiresAtMono;
  }
  get fatal(): SessionFatalError | undefined {
    return this.fatalError;
  }

  /**
   * Loads the identity file and registers (new or re-registration). Retries
   * within the client's registration budget (`BUDGETS.register`). Throws
   * SessionFatalError, or RetryBudgetExhausted when the controller could not
   * be reached.
   */
  async start(): Promise<void> {
    this.identity = await this.opts.identityStore.load();
    await this.reregister('start');
  }

  /** Resolves when no registration is in progress (the gate polling waits on). Throws if fatal. */
  async ready(): Promise<void> {
    while (this.inflight) await this.inflight.catch(() => undefined);
    if (this.fatalError) throw this.fatalError;
  }

  /**
   * The worker is leaving on purpose (`--once`, `--idle-timeout`): from now
   * on `404 WORKER_NOT_FOUND` is thrown to the caller instead of starting a
   * registration as a new worker (a heartbeat racing the deregistration
   * must not bring the worker back).
   */
  retire(): void {
    this.retired = true;
  }

  /** After a deregistration: the identity file keeps no worker id, so the next start registers as new. */
  async forget(): Promise<void> {
    this.retired = true;
    await this.opts.identityStore.save({});
  }

  /** Stops the refresh timer and any registration retry loop. */
  close(): void {
    this.opts.clock.clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
    this.abort.abort(new SessionFatalError('CLOSED', 'session closed'));
  }

  /**
   * Runs `fn` with the current access token and worker id. On 401 it
   * re-registers once (shared by all concurrent callers) and retries; on
   * `404 WORKER_NOT_FOUND` it registers as new and retries. Other errors
   * propagate unchanged (retry policy is the caller's).
   */
  async call<T>(fn: (accessToken: string, workerId: string) => Promise<T>): Promise<T> {
    for (let round = 0; ; round++) {
      await this.ready();
      const token = this.token;
      const workerId = this.identity.workerId;
      const gen = this.generation;
      if (!token || !workerId) throw new Error('session is not registered');
      try {
        return await fn(token, workerId);
      } catch (err) {
        if (!(err instanceof ApiError)) throw err;
        const credential = err.status === 401 || (err.code === 'WORKER_NOT_FOUND' && !this.retired);
        if (!credential) throw err;
        if (gen !== this.generation) continue; // our token was already replaced: retry at once
        if (round >= 5) throw err;
        await this.reregister(err.code === 'WORKER_NOT_FOUND' ? 'worker not found' : `access token rejected (${err.code})`);
      }
    }
  }

  /** Starts a re-registration, or joins the one in flight (single flight). */
  reregister(reason: string): Promise<void> {
    if (this.fatalError) return Promise.reject(this.fatalError);
    if (!this.inflight) {
      this.emit('reregistering', reason);
      const p = this.registerLoop(reason)
        .catch((err: unknown) => {
          if (err instanceof SessionFatalError) {
            this.fatalError = err;
            if (err.code !== 'CLOSED') this.emit('fatal', err);
          } else {
            // Not for ever: the caller that needs the token next starts another round.
            this.opts.logger.error({ reason, err: describeError(err) }, 'registration gave up; the next call that needs the token tries again');
          }
          throw err;
        })
        .finally(() => {
          if (this.inflight === p) this.inflight = undefined;
        });
      this.inflight = p;
      // A refresh started by the timer has nobody awaiting it.
      p.catch(() => undefined);
    }
    return this.inflight;
  }

  private async saveIdentity(next: Identity): Promise<void> {
    await this.opts.identityStore.save(next);
    this.identity = next;
  }

  private common(): Pick<RegisterRequest, 'name' | 'labels' | 'maxConcurrentBuilds' | 'version' | 'bootId' | 'executor'> {
    const c = this.opts.config;
    return {
      name: c.name,
      labels: [...c.labels],
      maxConcurrentBuilds: c.maxConcurrentBuilds,
      version: c.version,
      bootId: this.bootId,
      ...(this.opts.executor ? { executor: this.opts.executor } : {}),
    };
  }

  private async registerLoop(reason: string): Promise<void> {
    const { client, logger } = this.opts;
    // Set when our secret was refused and we ask again with our registrationId.
    let secretRefused: ApiError | undefined;
    for (;;) {
      if (this.abort.signal.aborted) throw this.abort.signal.reason;
      const known = this.identity.workerId && this.identity.workerSecret;
      if (known) {
        try {
          const active = this.opts.activeBuildIds();
          const body: RegisterRequest = {
            ...this.common(),
            workerId: this.identity.workerId!,
            workerSecret: this.identity.workerSecret!,
            activeBuildCount: active.length,
            activeBuildIds: active,
          };
          const answer = await client.register(body, undefined, { signal: this.abort.signal });
          this.apply(answer, 'reregistered', reason);
          return;
        } catch (err) {
          if (err instanceof ApiError) {
            if (err.code === 'WORKER_NOT_FOUND' && this.retired) throw err;
            if (err.code === 'WORKER_NOT_FOUND') {
              logger.warn({ workerId: this.identity.workerId }, 'controller does not know this worker any more; registering as new');
              await this.saveIdentity({});
              continue;
            }
            if (err.code === 'IDENTITY_CONFLICT') {
              throw new SessionFatalError(
                'IDENTITY_CONFLICT',
                `another worker process holds the identity of worker ${this.identity.workerId} (a newer bootId registered with it): ` +
                  `two processes share one identity file (${this.opts.identityStore.file}); this one stops`,
                { cause: err },
              );
            }
            if (err.status === 401 && this.identity.registrationId && !secretRefused) {
              // A late copy of our first registration request reached the controller
              // before our first authenticated call: the same registrationId answers
              // 201 with fresh credentials and voids ours (docs/protocol.md "Workers", case
              // 1). Ask again with it: same worker id, new credentials. Found by the
              // simulation (packages/sim, a duplicated request).
              logger.warn({ workerId: this.identity.workerId }, 'worker secret refused before the first authenticated call; registering again with the same registrationId');
              secretRefused = err;
              await this.saveIdentity({ registrationId: this.identity.registrationId });
              continue;
            }
            if (err.status === 401) {
              throw new SessionFatalError(
                'SECRET_REJECTED',
                `the controller rejected the worker secret of ${this.identity.workerId} (${err.code}); remove ${this.opts.identityStore.file} to register as a new worker`,
                { cause: err },
              );
            }
          }
          throw this.abortOr(err);
        }
      }

      const enrollment = this.opts.config.enrollmentToken;
      if (!enrollment) {
        throw new SessionFatalError('NO_ENROLLMENT_TOKEN', 'no worker identity saved and no enrollment token (BUILDFLEET_ENROLLMENT_TOKEN) to register with');
      }
      if (!this.identity.registrationId) {
        // Saved before sending: a retry after a lost answer must reuse it.
        await this.saveIdentity({ registrationId: randomUUID() });
      }
      const registrationId = this.identity.registrationId!;
      try {
        const body: RegisterRequest = { ...this.common(), registrationId, activeBuildCount: 0, activeBuildIds: [] };
        const answer = await client.register(body, enrollment, { signal: this.abort.signal });
        if (!answer.workerSecret) throw new Error('controller answered a new registration without workerSecret');
        // The registrationId stays: if a late copy of this request voids these
        // credentials before our first authenticated call, it gets them back.
        await this.saveIdentity({ workerId: answer.workerId, workerSecret: answer.workerSecret, registrationId });
        this.apply(answer, 'new', reason);
        return;
      } catch (err) {
        if (err instanceof ApiError && err.code === 'INVALID_TRANSITION' && secretRefused) {
          // Used up: this worker did authenticate with that secret, so its refusal is real.
          throw new SessionFatalError(
            'SECRET_REJECTED',
            `the controller rejected the worker secret (${secretRefused.code}); remove ${this.opts.identityStore.file} to register as a new worker`,
            { cause: secretRefused },
          );
        }
        if (err instanceof ApiError && err.code === 'INVALID_TRANSITION') {
          // The registrationId is used up (docs/protocol.md): start over with a fresh one.
          logger.warn({ registrationId }, 'registrationId already used; registering with a new one');
          await this.saveIdentity({});
          continue;
        }
        if (err instanceof ApiError && err.status === 401) {
          throw new SessionFatalError('ENROLLMENT_REJECTED', `the controller rejected the enrollment token (${err.code}): ${err.message}`, { cause: err });
        }
        throw this.abortOr(err);
      }
    }
  }

  private abortOr(err: unknown): unknown {
    return this.abort.signal.aborted ? this.abort.signal.reason : err;
  }

  private apply(answer: RegisterResponse, kind: RegistrationKind, reason: string): void {
    const { clock, logger } = this.opts;
    const arrived = clock.monotonic();
    this.token = answer.accessToken;
    this.generation++;
    this._settings = answer.settings;
    this._tokenExpiresAtMono = arrived + answer.accessTokenExpiresInMs;
    clock.clearTimeout(this.refreshTimer);
    // Lifetime, not expiresAt: a skewed wall clock must not move the refresh.
    const refreshIn = Math.max(0, Math.floor(answer.accessTokenExpiresInMs * REFRESH_FRACTION));
    this.refreshTimer = clock.setTimeout(() => {
      this.refreshTimer = undefined;
      this.reregister('proactive refresh').catch(() => undefined);
    }, refreshIn);
    logger.info({ workerId: answer.workerId, kind, reason, refreshInMs: refreshIn }, 'registered');
    this.emit('registered', { kind, reason, workerId: answer.workerId, answer } satisfies RegisteredEvent);
  }
}
