/**
 * The worker agent: registers, long-polls for builds, heartbeats the builds it
 * runs, and drains on request. It wires the session (credentials), the
 * controller client (transport) and the executor (builds) together.
 *
 * Loops (each waits on the injected clock, never on raw timers):
 * - poll: waits for the session gate (no poll while a re-registration is in
 *   flight), then `POST /workers/{id}/poll?waitMs=settings.pollWaitMs` with
 *   its free slots; starts what comes back;
 * - heartbeat: every `heartbeatIntervalMs`, with `activeBuildIds`; acts on
 *   `cancel` (graceful stop, report canceled) and `abandon` (kill, drop);
 * - fence: a build whose lease was not renewed for `leaseMs` is stopped
 *   (PROTOCOL.md "Worker duties": the controller gives it to someone else).
 */
import { EventEmitter } from 'node:events';
import {
  ApiError,
  paths,
  systemClock,
  type Clock,
  type HeartbeatResponse,
  type PollResponse,
} from '@buildfleet/protocol';
import type { WorkerConfig } from './config.js';
import { Executor } from './executor.js';
import type { ScriptRunner } from './process.js';
import { ControllerClient, TransportError, type Transport } from './http.js';
import { IdentityStore } from './identity.js';
import { defaultLogger, type Logger } from './logger.js';
import { backoffDelay } from './retry.js';
import { Session, SessionFatalError, type RegisteredEvent } from './session.js';

export interface StartWorkerOptions {
  clock?: Clock;
  /** fetch-compatible transport (default global fetch). */
  transport?: Transport;
  logger?: Logger;
  /** Backoff after failed polls/registrations, ms (defaults 500 / 30000). */
  retryBaseMs?: number;
  retryMaxMs?: number;
  /** Log chunk cut size (bytes) and interval (ms). */
  logChunkBytes?: number;
  logFlushMs?: number;
  /** Runs build scripts (default: real `sh -c` process groups; the simulation injects a fake one). */
  runner?: ScriptRunner;
}

/**
 * A started worker. `events`: `registered` (RegisteredEvent, every
 * registration), `reregistered` (every one after the first), `build:start`,
 * `build:running`, `build:finish` (BuildResult), `build:dropped`,
 * `build:done` (id), `build:fenced` (id), `heartbeat` (HeartbeatResponse),
 * `poll:paused` / `poll:resumed` (around a re-registration), `poll` (status),
 * `draining`, `fatal` (SessionFatalError), `stopped`.
 */
export interface RunningWorker {
  /** Current worker id (changes only if the controller forgot this worker). */
  readonly workerId: string;
  /**
   * `drain: true`: stop polling, keep heartbeating, let running builds
   * finish, then stop. Otherwise running builds are canceled (SIGTERM, grace,
   * SIGKILL, reported `canceled`) and the worker stops. A second stop without
   * drain during a drain cancels the running builds.
   */
  stop(opts?: { drain?: boolean }): Promise<void>;
  /** Settles when the worker has stopped; rejects with SessionFatalError when it had to. */
  readonly done: Promise<void>;
  readonly events: EventEmitter;
  readonly session: Session;
  readonly executor: Executor;
}

/**
 * Starts a worker: kills process groups left by a previous run, registers
 * (resolves after the first registration), then runs the loops. Rejects with
 * SessionFatalError when it cannot register at all (bad enrollment token,
 * identity conflict).
 */
export async function startWorker(config: WorkerConfig, opts: StartWorkerOptions = {}): Promise<RunningWorker> {
  const clock = opts.clock ?? systemClock;
  const logger = opts.logger ?? defaultLogger();
  const events = new EventEmitter();
  events.setMaxListeners(0);
  const client = new ControllerClient({
    urls: config.controllerUrls,
    clock,
    requestTimeoutMs: config.requestTimeoutMs,
    ...(opts.transport ? { transport: opts.transport } : {}),
    onFailover: (from, to, why) => logger.warn({ from, to, why }, `controller ${from} failed (${why}); failing over to ${to}`),
  });
  let session!: Session;
  const executor = new Executor({
    client,
    clock,
    config,
    logger,
    events,
    workerId: () => session.workerId,
    ...(opts.logChunkBytes ? { logChunkBytes: opts.logChunkBytes } : {}),
    ...(opts.logFlushMs ? { logFlushMs: opts.logFlushMs } : {}),
    ...(opts.runner ? { runner: opts.runner } : {}),
  });
  session = new Session({
    client,
    config,
    identityStore: new IdentityStore(config.stateDir),
    clock,
    logger,
    activeBuildIds: () => executor.activeBuildIds(),
    ...(opts.retryBaseMs !== undefined ? { retryBaseMs: opts.retryBaseMs } : {}),
    ...(opts.retryMaxMs !== undefined ? { retryMaxMs: opts.retryMaxMs } : {}),
  });
  const agent = new Agent(config, clock, logger, events, client, session, executor, opts);
  await agent.start();
  return agent.handle();
}

class Agent {
  private draining = false;
  /** The controller says this worker is drained (heartbeat `draining`); its polls get no new builds meanwhile. */
  private remoteDraining = false;
  private stopping = false;
  private readonly stopAc = new AbortController();
  private readonly pollAc = new AbortController();
  /** Monotonic ms of the last heartbeat that renewed each build's lease (send time). */
  private readonly renewed = new Map<string, number>();
  private registrations = 0;
  private loops: Promise<void>[] = [];
  private resolveDone!: () => void;
  private rejectDone!: (err: unknown) => void;
  private readonly done: Promise<void>;
  private finishing: Promise<void> | undefined;

  constructor(
    private readonly config: WorkerConfig,
    private readonly clock: Clock,
    private readonly logger: Logger,
    private readonly events: EventEmitter,
    private readonly client: ControllerClient,
    private readonly session: Session,
    private readonly executor: Executor,
    private readonly opts: StartWorkerOptions,
  ) {
    this.done = new Promise<void>((resolve, reject) => {
      this.resolveDone = resolve;
      this.rejectDone = reject;
    });
    this.done.catch(() => undefined);
  }

  async start(): Promise<void> {
    const killed = await this.executor.cleanupLeftovers();
    if (killed.length > 0) this.logger.warn({ pgids: killed }, 'stopped build processes left by a previous run');
    this.session.on('registered', (ev: RegisteredEvent) => this.onRegistered(ev));
    this.session.on('reregistering', () => this.events.emit('reregistering'));
    this.session.on('fatal', (err: SessionFatalError) => void this.fatal(err));
    this.events.on('build:done', (id: string) => this.renewed.delete(id));
    try {
      await this.session.start();
    } catch (err) {
      this.session.close();
      throw err;
    }
    this.loops = [this.pollLoop(), this.heartbeatLoop(), this.fenceLoop()];
  }

  handle(): RunningWorker {
    const self = this;
    return {
      get workerId() {
        return self.session.workerId!;
      },
      stop: (o) => this.stop(o),
      done: this.done,
      events: this.events,
      session: this.session,
      executor: this.executor,
    };
  }

  private onRegistered(ev: RegisteredEvent): void {
    this.registrations++;
    this.events.emit('registered', ev);
    if (this.registrations > 1) this.events.emit('reregistered', ev);
    if (this.registrations > 1 && ev.kind === 'new') {
      // The controller forgot this worker (deleted): what the old identity ran
      // was handed back to the queue with the deletion (PROTOCOL.md "Admin").
      this.executor.stopAll('lost', 'the worker was deleted; its builds went back to the queue');
    }
    for (const id of ev.answer.abandon ?? []) {
      this.executor.stop(id, 'lost', 'abandoned: the controller says this worker no longer owns it');
    }
    // Builds the controller holds for us that were assigned but never started here (a lost poll answer).
    for (const b of ev.answer.builds ?? []) {
      if (this.executor.runs.has(b.id)) continue;
      if (b.state === 'running') {
        this.logger.warn({ buildId: b.id }, 'controller lists a running build this worker does not run; its lease will lapse');
        continue;
      }
      if (this.draining || this.executor.size >= this.config.maxConcurrentBuilds) continue;
      this.executor.launch(b);
    }
  }

  private async fatal(err: SessionFatalError): Promise<void> {
    this.logger.error({ code: err.code }, err.message);
    this.events.emit('fatal', err);
    // Another instance holds the identity; our builds belong to nobody we can report as.
    this.executor.stopAll('lost', err.message);
    await this.shutdown(err);
  }

  private slotFreed(): Promise<void> {
    return new Promise((resolve) => {
      if (this.stopAc.signal.aborted || this.pollAc.signal.aborted) return resolve();
      const on = () => {
        this.events.off('build:done', on);
        this.stopAc.signal.removeEventListener('abort', on);
        this.pollAc.signal.removeEventListener('abort', on);
        resolve();
      };
      this.events.on('build:done', on);
      this.stopAc.signal.addEventListener('abort', on);
      this.pollAc.signal.addEventListener('abort', on);
    });
  }

  private async pollLoop(): Promise<void> {
    let failures = 0;
    while (!this.draining && !this.stopping) {
      if (this.session.registering) {
        this.events.emit('poll:paused');
        try {
          await this.session.ready();
        } catch {
          return;
        }
        this.events.emit('poll:resumed');
        if (this.draining || this.stopping) return;
      }
      const free = this.config.maxConcurrentBuilds - this.executor.size;
      if (free <= 0) {
        await this.slotFreed();
        continue;
      }
      try {
        const waitMs = this.session.settings.pollWaitMs;
        const answer = await this.session.call(async (token, workerId) =>
          this.client.json<PollResponse | undefined>({
            method: 'POST',
            path: paths.poll(workerId, waitMs),
            token,
            json: { freeSlots: free, activeBuildIds: this.executor.activeBuildIds() },
            timeoutMs: waitMs + this.config.requestTimeoutMs,
            signal: this.pollAc.signal,
          }),
        );
        failures = 0;
        this.events.emit('poll', answer.status);
        if (answer.status === 200 && answer.body) {
          for (const b of answer.body.builds) {
            if (this.draining || this.stopping) break;
            const run = this.executor.launch(b);
            if (!run) this.logger.debug({ buildId: b.id }, 're-delivered build already runs here');
          }
        }
      } catch (err) {
        if (this.draining || this.stopping || this.session.fatal) return;
        failures++;
        const delay = backoffDelay(failures, err, { baseMs: this.opts.retryBaseMs ?? 500, maxMs: this.opts.retryMaxMs ?? 30_000 });
        this.logger.warn({ err: describe(err), delayMs: delay }, 'poll failed');
        try {
          await this.clock.sleep(delay, this.pollAc.signal);
        } catch {
          return;
        }
      }
    }
  }

  private async heartbeatLoop(): Promise<void> {
    while (!this.stopAc.signal.aborted) {
      try {
        await this.clock.sleep(this.session.settings.heartbeatIntervalMs, this.stopAc.signal);
      } catch {
        return;
      }
      await this.heartbeatOnce();
    }
  }

  /** One heartbeat: renews the leases of the listed builds, acts on cancel/abandon. */
  async heartbeatOnce(): Promise<void> {
    const ids = this.executor.activeBuildIds();
    const sentAt = this.clock.monotonic();
    try {
      const res = await this.session.call(async (token, workerId) =>
        (
          await this.client.json<HeartbeatResponse>({
            method: 'POST',
            path: paths.heartbeat(workerId),
            token,
            json: { activeBuildIds: ids },
            timeoutMs: this.heartbeatTimeoutMs(),
            signal: this.stopAc.signal,
          })
        ).body,
      );
      const abandoned = new Set(res.abandon);
      for (const id of ids) if (!abandoned.has(id)) this.renewed.set(id, sentAt);
      for (const id of res.cancel) this.executor.stop(id, 'canceled', 'canceled: cancellation requested');
      for (const id of res.abandon) this.executor.stop(id, 'lost', 'abandoned: the controller says this worker no longer owns it');
      // POST /workers/{id}/drain: the controller hands out no new builds and
      // running ones finish; the worker stays connected and idle, so
      // POST /workers/{id}/resume gives it builds again (only a signal or
      // stop() makes it exit).
      const remote = res.draining === true;
      if (remote !== this.remoteDraining) {
        this.remoteDraining = remote;
        this.logger.info({}, remote ? 'controller says this worker is draining: running builds finish, no new ones until it is resumed' : 'controller resumed this worker: it takes builds again');
        this.events.emit(remote ? 'draining' : 'resumed');
      }
      this.events.emit('heartbeat', res);
    } catch (err) {
      if (this.stopAc.signal.aborted) return;
      this.logger.warn({ err: describe(err) }, 'heartbeat failed');
      this.events.emit('heartbeat:error', err);
    }
  }

  /**
   * A heartbeat unanswered for a third of the lease gives way (and the client
   * moves to the next controller URL), so a controller that stops answering
   * costs at most that much of the lease, never the whole of it.
   */
  private heartbeatTimeoutMs(): number {
    return Math.min(this.config.requestTimeoutMs, Math.max(1_000, Math.floor(this.session.settings.leaseMs / 3)));
  }

  private async fenceLoop(): Promise<void> {
    while (!this.stopAc.signal.aborted) {
      const s = this.session.settings;
      const every = Math.max(10, Math.min(s.heartbeatIntervalMs, Math.floor(s.leaseMs / 4)));
      try {
        await this.clock.sleep(every, this.stopAc.signal);
      } catch {
        return;
      }
      this.fenceCheck();
    }
  }

  /** Stops every build whose script still runs and whose lease was not renewed for `leaseMs` (self-fencing). */
  fenceCheck(): void {
    const now = this.clock.monotonic();
    const leaseMs = this.session.settings.leaseMs;
    for (const run of this.executor.runs.values()) {
      const started = run.leaseStartedMono;
      // Fencing stops a script that may run twice. Once the script has ended
      // (reporting) there is nothing left to stop: its writes either land while
      // the attempt still holds the lease (a controller back from a restart
      // grants one lease period of grace) or get 409 LEASE_LOST and are dropped.
      if (started === undefined || run.phase === 'done' || run.phase === 'reporting') continue;
      const last = Math.max(started, this.renewed.get(run.id) ?? -Infinity);
      if (now - last >= leaseMs) {
        this.logger.warn({ buildId: run.id, sinceMs: now - last, leaseMs }, 'lease not renewed for leaseMs: stopping the build (fencing)');
        this.events.emit('build:fenced', run.id);
        run.stop('lost', `fenced: lease not renewed for ${leaseMs}ms`);
      }
    }
  }

  async stop(o: { drain?: boolean } = {}): Promise<void> {
    if (!o.drain) {
      this.executor.stopAll('canceled', 'canceled: the worker is stopping');
    }
    if (!this.draining) {
      this.draining = true;
      this.pollAc.abort(new TransportError('aborted', 'worker stopping', ''));
      this.logger.info({ drain: !!o.drain, running: this.executor.size }, o.drain ? 'draining' : 'stopping');
    }
    this.finishing ??= (async () => {
      await this.executor.idle();
      await this.shutdown();
    })();
    await this.finishing;
  }

  private async shutdown(err?: unknown): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.draining = true;
    this.pollAc.abort();
    this.stopAc.abort();
    this.session.close();
    if (err) {
      await this.executor.idle();
    }
    await Promise.allSettled(this.loops);
    this.events.emit('stopped');
    if (err) this.rejectDone(err);
    else this.resolveDone();
  }
}

function describe(err: unknown): string {
  if (err instanceof ApiError) return `${err.code}: ${err.message}`;
  return (err as Error)?.message ?? String(err);
}

/**
 * Process signals for a worker run from the command line: the first SIGTERM
 * or SIGINT drains (running builds finish), a second one cancels them.
 * Returns a function that removes the handlers.
 */
export function installSignalHandlers(worker: RunningWorker, logger: Logger = defaultLogger()): () => void {
  let count = 0;
  const on = (sig: NodeJS.Signals) => {
    count++;
    logger.info({ signal: sig }, count === 1 ? 'draining: running builds finish, no new ones' : 'stopping: canceling running builds');
    void worker.stop({ drain: count === 1 }).catch(() => undefined);
  };
  process.on('SIGTERM', on);
  process.on('SIGINT', on);
  return () => {
    process.off('SIGTERM', on);
    process.off('SIGINT', on);
  };
}
