/**
 * The worker agent: wires the session (credentials), the typed controller
 * client, the executor and the active builds together, runs three loops —
 * poll (`poll-loop.ts`), heartbeat (`heartbeat-loop.ts`) and fence
 * (`fence-loop.ts`), each in its own file with its own stop signal — and
 * drains or stops on request. It also acts on what a registration answer
 * says about builds (`builds`, `abandon`).
 */
import { EventEmitter } from 'node:events';
import path from 'node:path';
import { ApiError, systemClock, type Clock, type TimerHandle } from '@buildfleet/protocol';
import { controllerFetch } from '@buildfleet/protocol/node';
import { ActiveBuilds } from './active-builds.js';
import { LocalCache } from './cache/local.js';
import { Connection, type Transport } from './client/connection.js';
import type { ControllerClient } from './client/controller-client.js';
import { HttpControllerClient } from './client/http-controller-client.js';
import { describeError, type Backoff } from './client/retry.js';
import type { WorkerConfig } from './config.js';
import { createExecutor } from './executor/select.js';
import { ShellExecutor } from './executor/shell.js';
import type { Executor } from './executor/types.js';
import { FenceLoop, Leases } from './fence-loop.js';
import { HeartbeatLoop } from './heartbeat-loop.js';
import { IdentityLock, IdentityStore } from './identity.js';
import { defaultLogger, type Logger } from './logger.js';
import type { LoopStatus } from './loop.js';
import { PollLoop } from './poll-loop.js';
import type { ScriptRunner } from './process.js';
import { Session, SessionFatalError, type RegisteredEvent } from './session.js';

export interface StartWorkerOptions {
  clock?: Clock;
  /** fetch-compatible transport (default global fetch). */
  transport?: Transport;
  logger?: Logger;
  /** Backoff between retries and failed polls, ms (defaults 500 / 30000 for the session and polls, 250 / 10000 for build writes). */
  retryBaseMs?: number;
  retryMaxMs?: number;
  /** Random in [0, 1) for retry jitter (default Math.random; the simulation passes a seeded one). */
  random?: () => number;
  /** Log chunk cut size (bytes) and interval (ms). */
  logChunkBytes?: number;
  logFlushMs?: number;
  /** Runs build scripts for the default `shell` executor (the simulation injects a fake one). */
  runner?: ScriptRunner;
  /**
   * The executor (default: the one the configuration asks for, `sandbox` or
   * `shell` (executor/select.ts); with `runner`, the runner-driven `shell`).
   */
  executor?: Executor;
  /** Wraps the controller client (tests and the simulation inject faults the real controller cannot make). */
  wrapClient?: (client: ControllerClient) => ControllerClient;
  /**
   * Hold the identity lock while running (default true). Only the simulation
   * turns it off: its "processes" share one OS process and it kills them itself.
   */
  lockIdentity?: boolean;
}

/**
 * A started worker. `events`: `registered` (RegisteredEvent, every
 * registration), `reregistered` (every one after the first), `build:start`,
 * `build:running`, `build:finish` (BuildResult), `build:dropped`,
 * `build:done` (id), `build:fenced` (id), `heartbeat` (HeartbeatResponse),
 * `heartbeat:error`, `draining` / `resumed` (the controller drained or resumed this worker), `poll:paused` / `poll:resumed` (around a
 * re-registration), `poll` (builds handed out), `poll:cancel` (ids a poll
 * answer asked to cancel), `draining`, `fatal`
 * (SessionFatalError), `stopped`.
 */
export interface RunningWorker {
  /** Current worker id (changes only if the controller forgot this worker). */
  readonly workerId: string;
  /**
   * `drain: true`: stop polling, keep heartbeating, let running builds
   * finish, then stop. Otherwise running builds are canceled (SIGTERM, grace,
   * SIGKILL, reported `canceled`) and the worker stops. A second stop without
   * drain during a drain cancels the running builds. `deregister: true`:
   * once no build runs, the worker removes itself from the controller
   * (`POST /workers/{id}/deregister`) so it is not listed as lost.
   */
  stop(opts?: { drain?: boolean; deregister?: boolean }): Promise<void>;
  /** Settles when the worker has stopped; rejects with SessionFatalError when it had to. */
  readonly done: Promise<void>;
  readonly events: EventEmitter;
  readonly session: Session;
  readonly builds: ActiveBuilds;
  readonly executor: Executor;
  /** The loops' statuses. */
  loops(): LoopStatus[];
}

/**
 * Starts a worker: locks its identity file (refused at once while another
 * live process holds it), kills process groups left by a previous run,
 * registers (resolves after the first registration), then runs the loops.
 * Rejects with IdentityLockedError, SessionFatalError (bad enrollment token,
 * identity conflict) or RetryBudgetExhausted (no controller answered).
 */
export async function startWorker(config: WorkerConfig, opts: StartWorkerOptions = {}): Promise<RunningWorker> {
  const clock = opts.clock ?? systemClock;
  const logger = opts.logger ?? defaultLogger();
  const random = opts.random ?? Math.random;
  const events = new EventEmitter();
  events.setMaxListeners(0);
  const lock = opts.lockIdentity === false ? IdentityLock.none() : await IdentityLock.acquire(config.stateDir, clock);
  try {
    const backoff = (baseMs: number, maxMs: number): Backoff => ({ baseMs: opts.retryBaseMs ?? baseMs, maxMs: opts.retryMaxMs ?? maxMs });
    const conn = new Connection({
      urls: config.controllerUrls,
      clock,
      requestTimeoutMs: config.requestTimeoutMs,
      // A controller serving HTTPS with a private CA: trust BUILDFLEET_CA_FILE too.
      transport: opts.transport ?? controllerFetch(config.caFile),
      onFailover: (from, to, why) => logger.warn({ from, to, why }, `controller ${from} failed (${why}); failing over to ${to}`),
    });
    const http = (b: Backoff) => new HttpControllerClient(conn, { clock, random, logger, backoff: b });
    const wrap = opts.wrapClient ?? ((c: ControllerClient) => c);
    // Registration backs off longer than build writes, which race a lease.
    const sessionClient = wrap(http(backoff(500, 30_000)));
    const client = wrap(http(backoff(250, 10_000)));
    const executor =
      opts.executor ??
      (opts.runner
        ? new ShellExecutor({ stateDir: config.stateDir, clock, logger, sourceLimits: config.sourceLimits, runner: opts.runner })
        : await createExecutor(config, { clock, logger }));
    let session!: Session;
    const localCache = new LocalCache(path.join(config.stateDir, 'caches'), config.cacheMaxBytes, () => clock.now());
    const builds = new ActiveBuilds({
      localCache,
      client,
      executor,
      clock,
      config,
      logger,
      events,
      workerId: () => session.workerId,
      logChunkBytes: opts.logChunkBytes,
      logFlushMs: opts.logFlushMs,
    });
    session = new Session({
      client: sessionClient,
      config,
      identityStore: new IdentityStore(config.stateDir),
      clock,
      logger,
      activeBuildIds: () => builds.ids(),
      executor: executor.kind,
    });
    const agent = new Agent({ config, clock, logger, events, client, session, builds, executor, lock, random, backoff: backoff(500, 30_000) });
    await agent.start();
    return agent.handle();
  } catch (err) {
    await lock.release();
    throw err;
  }
}

interface AgentDeps {
  config: WorkerConfig;
  clock: Clock;
  logger: Logger;
  events: EventEmitter;
  client: ControllerClient;
  session: Session;
  builds: ActiveBuilds;
  executor: Executor;
  lock: IdentityLock;
  random: () => number;
  backoff: Backoff;
}

class Agent {
  private draining = false;
  /** The controller says this worker is drained (heartbeat `draining`); its polls get no new builds meanwhile. */
  private remoteDraining = false;
  private stopping = false;
  private registrations = 0;
  private readonly leases = new Leases();
  private readonly poll: PollLoop;
  private readonly heartbeat: HeartbeatLoop;
  private readonly fence: FenceLoop;
  private resolveDone!: () => void;
  private rejectDone!: (err: unknown) => void;
  private readonly done: Promise<void>;
  private finishing: Promise<void> | undefined;
  /** Deregister before stopping (`--once`, `--idle-timeout`, `stop({deregister})`). */
  private leaving = false;
  private idleTimer: TimerHandle | undefined;

  constructor(private readonly d: AgentDeps) {
    this.done = new Promise<void>((resolve, reject) => {
      this.resolveDone = resolve;
      this.rejectDone = reject;
    });
    this.done.catch(() => undefined);
    const { clock, logger, events, session, builds } = d;
    this.poll = new PollLoop({ ...d });
    this.heartbeat = new HeartbeatLoop({ ...d, leases: this.leases, onDraining: (remote) => this.onRemoteDraining(remote) });
    this.fence = new FenceLoop({ clock, logger, events, session, builds, leases: this.leases });
  }

  async start(): Promise<void> {
    const { logger, events, session, executor } = this.d;
    const killed = await executor.cleanupLeftovers();
    if (killed.length > 0) logger.warn({ pgids: killed }, 'stopped build processes left by a previous run');
    session.on('registered', (ev: RegisteredEvent) => this.onRegistered(ev));
    session.on('reregistering', () => events.emit('reregistering'));
    session.on('fatal', (err: SessionFatalError) => void this.fatal(err));
    events.on('build:done', (id: string) => this.leases.forget(id));
    events.on('build:launched', () => this.onLaunched());
    events.on('build:done', () => {
      if (this.d.builds.size === 0) this.armIdleTimer();
    });
    try {
      await session.start();
    } catch (err) {
      session.close();
      throw err;
    }
    this.armIdleTimer();
    void this.poll.start();
    void this.heartbeat.start();
    void this.fence.start();
  }

  handle(): RunningWorker {
    const { session, events, builds, executor } = this.d;
    return {
      get workerId() {
        return session.workerId!;
      },
      stop: (o) => this.stop(o),
      done: this.done,
      events,
      session,
      builds,
      executor,
      loops: () => [this.poll.status, this.heartbeat.status, this.fence.status],
    };
  }

  /**
   * A registration answer lists the builds the controller holds for this
   * worker (`builds`) and the reported ids it no longer owns (`abandon`,
   * docs/protocol.md "POST /api/v1/workers/register"): abandoned ones are killed at once;
   * assigned ones not running here start now (their poll answer was lost).
   */
  private onRegistered(ev: RegisteredEvent): void {
    const { config, logger, events, builds } = this.d;
    this.registrations++;
    events.emit('registered', ev);
    if (this.registrations > 1) events.emit('reregistered', ev);
    if (this.registrations > 1 && ev.kind === 'new') {
      // The controller forgot this worker (deleted): what the old identity ran
      // was handed back to the queue with the deletion (docs/protocol.md "Administration of workers").
      builds.stopAll('lost', 'the worker was deleted; its builds went back to the queue');
    }
    for (const id of ev.answer.abandon ?? []) {
      builds.stop(id, 'lost', 'abandoned: the controller says this worker no longer owns it');
    }
    for (const b of ev.answer.builds ?? []) {
      if (builds.runs.has(b.id)) continue;
      if (b.state === 'running') {
        logger.warn({ buildId: b.id }, 'controller lists a running build this worker does not run; its lease will lapse');
        continue;
      }
      if (this.draining || builds.size >= config.maxConcurrentBuilds) continue;
      builds.launch(b);
    }
  }

  /**
   * POST /workers/{id}/drain: the controller hands out no new builds and
   * running ones finish; the worker stays connected and idle, so
   * POST /workers/{id}/resume gives it builds again (only a signal or stop()
   * makes it exit).
   */
  private onRemoteDraining(remote: boolean): void {
    if (remote === this.remoteDraining) return;
    this.remoteDraining = remote;
    this.d.logger.info(
      {},
      remote ? 'controller says this worker is draining: running builds finish, no new ones until it is resumed' : 'controller resumed this worker: it takes builds again',
    );
    this.d.events.emit(remote ? 'draining' : 'resumed');
  }

  private async fatal(err: SessionFatalError): Promise<void> {
    this.d.logger.error({ code: err.code }, err.message);
    this.d.events.emit('fatal', err);
    // Another instance holds the identity; our builds belong to nobody we can report as.
    this.d.builds.stopAll('lost', err.message);
    await this.shutdown(err);
  }

  /** `--once`: the first build launched is the last; the worker leaves when it ends. */
  private onLaunched(): void {
    this.d.clock.clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    if (this.d.config.once) {
      this.d.logger.info({}, '--once: this build is the last; the worker leaves when it ends');
      void this.stop({ drain: true, deregister: true }).catch(() => undefined);
    }
  }

  /** `--idle-timeout`: (re)starts the wait on the clock while no build runs. */
  private armIdleTimer(): void {
    const ms = this.d.config.idleTimeoutMs;
    if (ms === undefined || this.draining) return;
    const { clock, logger, events, builds } = this.d;
    clock.clearTimeout(this.idleTimer);
    this.idleTimer = clock.setTimeout(() => {
      this.idleTimer = undefined;
      if (builds.size > 0 || this.draining) return;
      logger.info({ idleTimeoutMs: ms }, `no build for ${ms / 1000} s (--idle-timeout): the worker leaves`);
      events.emit('idle-timeout');
      void this.stop({ drain: true, deregister: true }).catch(() => undefined);
    }, ms);
  }

  /**
   * `POST /workers/{id}/deregister` once no build runs. `409
   * INVALID_TRANSITION` means a poll claimed builds for this worker just as
   * it stopped taking them: they are taken (a poll re-delivers them), run,
   * and the worker asks again, three rounds at most. Any other failure is
   * logged: the worker stops anyway and the controller will show it offline.
   */
  private async deregister(): Promise<void> {
    const { session, client, builds, config, logger, events } = this.d;
    session.retire();
    for (let round = 1; ; round++) {
      try {
        await session.call((accessToken, workerId) => client.deregister({ workerId, accessToken }));
        await session.forget().catch((err: unknown) => logger.warn({ err: describeError(err) }, 'could not clear the identity file'));
        logger.info({ workerId: session.workerId }, 'deregistered: this worker left the fleet');
        events.emit('deregistered');
        return;
      } catch (err) {
        if (err instanceof ApiError && err.code === 'INVALID_TRANSITION' && round < 3) {
          logger.warn({ err: err.message }, 'the controller still holds builds for this worker; running them before leaving');
          try {
            const answer = await session.call((accessToken, workerId) =>
              client.poll({ workerId, accessToken }, { freeSlots: config.maxConcurrentBuilds, activeBuildIds: builds.ids() }, 0),
            );
            for (const b of answer.builds) builds.launch(b);
            await builds.idle();
            continue;
          } catch (pollErr) {
            err = pollErr;
          }
        }
        logger.error({ err: describeError(err) }, 'could not deregister; the controller will show this worker offline');
        return;
      }
    }
  }

  async stop(o: { drain?: boolean; deregister?: boolean } = {}): Promise<void> {
    const { logger, builds } = this.d;
    if (o.deregister) this.leaving = true;
    this.d.clock.clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    if (!o.drain) builds.stopAll('canceled', 'the worker is stopping');
    if (!this.draining) {
      this.draining = true;
      // No new builds; cancels of the running ones still come on the poll.
      this.poll.drain();
      logger.info({ drain: !!o.drain, running: builds.size }, o.drain ? 'draining' : 'stopping');
    }
    this.finishing ??= (async () => {
      await builds.idle();
      if (this.leaving && !this.d.session.fatal) await this.deregister();
      await this.shutdown();
    })();
    await this.finishing;
  }

  private async shutdown(err?: unknown): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.draining = true;
    this.d.session.close();
    if (err) await this.d.builds.idle();
    await Promise.all([this.poll.stop(), this.heartbeat.stop(), this.fence.stop()]);
    // Nothing of this worker stays on the host once it stopped (its cgroups); a build still running keeps them.
    if (this.d.builds.size === 0) await this.d.executor.close?.();
    await this.d.lock.release();
    this.d.events.emit('stopped');
    if (err) this.rejectDone(err);
    else this.resolveDone();
  }
}
