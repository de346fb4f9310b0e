/**
 * One attempt of one build on this worker (flow 1 of docs/design.md, worker half):
 * `start` → source → the executor prepares the workspace → script → log
 * chunks → artifacts → `finish` → clean up.
 *
 * Every controller call goes through the typed client with the attempt's
 * BUILD token (never the access token), so a credential rotation never
 * touches a running build (docs/protocol.md "Credentials"). Duties of docs/protocol.md
 * "Worker duties":
 * - `409 LEASE_LOST` from any build write, or the build in `abandon`: the
 *   process tree is killed at once and the build dropped (no finish);
 * - the build in `cancel`: SIGTERM, grace, SIGKILL, then `finish canceled`;
 * - `timeoutSeconds` exceeded: the same stop, then `finish timed_out`;
 * - fencing (see fence-loop.ts) drops the build like a lost lease;
 * - a write that used up its retry budget drops the build: its lease lapses
 *   and the controller hands it out again.
 */
import type { EventEmitter } from 'node:events';
import fs from 'node:fs/promises';
import path from 'node:path';
import { ApiError, type AssignedBuild, type BuildOutcome, type Clock, type LimitReason } from '@buildfleet/protocol';
import type { ControllerClient } from './client/controller-client.js';
import { describeError, RetryBudgetExhausted } from './client/retry.js';
import type { WorkerConfig } from './config.js';
import { sha256File } from './executor/artifacts.js';
import type { Executor, RunningScript, ScriptExit, Workspace } from './executor/types.js';
import type { Logger } from './logger.js';
import { restoreCaches, saveCaches, type CachePlan, type CacheStepDeps } from './cache/steps.js';
import { keyContext } from './cache/key.js';
import type { LocalCache } from './cache/local.js';
import { LogStreamer } from './logs.js';
import { MaskedLog } from './masked-log.js';
import { removeSecretFiles, secretEnvironment, type HandedSecret } from './secrets.js';

/** Why a build stops before its script ends by itself. */
export type StopReason =
  /** Canceled by a user (heartbeat `cancel`) or by a non-draining stop: graceful, reported `canceled`. */
  | 'canceled'
  /** `timeoutSeconds` passed: graceful, reported `timed_out`. */
  | 'timed_out'
  /** The lease is gone (LEASE_LOST, `abandon`, self-fencing): killed at once, nothing reported. */
  | 'lost';

/** How a build run ended locally. `reported` is false when no finish was sent (dropped). */
export interface BuildResult {
  buildId: string;
  attempt: number;
  reported: boolean;
  outcome?: BuildOutcome;
  /** The resource limit a `failed` build exceeded (issue 8). */
  reason?: LimitReason;
  exitCode: number | null;
  message: string | null;
  /** Why it was dropped, when not reported. */
  dropReason?: string;
  /** Spec `name`, when it has one (for the worker's one-line summary). */
  name?: string | undefined;
  /** Monotonic ms from `start` accepted to the end (0 when it never started). */
  durationMs: number;
}

/**
 * `starting` (start sent) → `preparing` (source, workspace) → `running`
 * (script) → `reporting` (log, artifacts, finish) → `done`.
 */
export type BuildPhase = 'starting' | 'preparing' | 'running' | 'reporting' | 'done';

export interface BuildRunDeps {
  client: ControllerClient;
  executor: Executor;
  clock: Clock;
  config: WorkerConfig;
  logger: Logger;
  /** Events: build:start, build:running, build:finish, build:dropped. */
  events: EventEmitter;
  /** Worker id for the build's environment (may change on re-registration as new). */
  workerId: () => string | undefined;
  /** The worker's own copies of recent cache archives (shared by its builds). */
  localCache: LocalCache;
  /** Log chunk cut size (bytes) and interval (ms); defaults 64 KiB, 250 ms. */
  logChunkBytes?: number | undefined;
  logFlushMs?: number | undefined;
}

const SIGNAL_NUMBERS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGTERM: 15, SIGPIPE: 13, SIGABRT: 6, SIGSEGV: 11 };

class Dropped extends Error {
  constructor(readonly reason: string) {
    super(reason);
  }
}

type Outcome = { outcome: BuildOutcome; exitCode: number | null; message: string | null; reason?: LimitReason };

export class BuildRun {
  readonly id: string;
  readonly attempt: number;
  readonly done: Promise<BuildResult>;
  private _phase: BuildPhase = 'starting';
  private stopReason: StopReason | undefined;
  private stopMessage: string | undefined;
  private script: RunningScript | undefined;
  private ws: Workspace | undefined;
  /** The build's log: masked (its secrets) before the streamer cuts and uploads it. */
  private logs: MaskedLog | undefined;
  /** The script's output so far ends without a newline. */
  private midLine = false;
  /** Values handed out for this attempt (never logged; masked in the build's log). */
  private handed: HandedSecret[] = [];
  private readonly abort = new AbortController();
  private startedMono: number | undefined;

  constructor(
    readonly build: AssignedBuild,
    private readonly deps: BuildRunDeps,
  ) {
    this.id = build.id;
    this.attempt = build.attempt;
    this.done = this.run();
  }

  get phase(): BuildPhase {
    return this._phase;
  }
  /** Why the build is being stopped, once `stop()` was called (it may still be ending). */
  get stopping(): StopReason | undefined {
    return this.stopReason;
  }
  /** Monotonic ms when `start` was accepted (the lease began), if it was. */
  get leaseStartedMono(): number | undefined {
    return this.startedMono;
  }
  /** Process group id of the running script, if any. */
  get pgid(): number | undefined {
    return this.script?.pgid;
  }
  /** The workspace directory, once prepared. */
  get workspace(): string | undefined {
    return this.ws?.dir;
  }

  /**
   * Stops the build. `lost` kills the process tree at once and drops the
   * build; `canceled`/`timed_out` stop it gracefully and report that outcome.
   * A stronger stop overrides a weaker one already in progress.
   */
  stop(reason: StopReason, message?: string): void {
    if (this._phase === 'done') return;
    const rank = { timed_out: 1, canceled: 2, lost: 3 } as const;
    if (this.stopReason && rank[this.stopReason] >= rank[reason]) return;
    this.stopReason = reason;
    this.stopMessage = message;
    this.deps.logger.info({ buildId: this.id, attempt: this.attempt, reason, message }, 'stopping build');
    if (reason === 'lost') {
      this.abort.abort(new Dropped(message ?? 'lease lost'));
      this.script?.kill();
      this.logs?.close();
      return;
    }
    if (this.script && this._phase === 'running') this.script.stop(this.deps.config.cancelGraceMs);
  }

  /** Read through a method: stop() changes it while execute() awaits. */
  private currentStop(): StopReason | undefined {
    return this.stopReason;
  }

  /**
   * A build write. LEASE_LOST drops the build at once. So does a call that
   * used up its retry budget: the controller could not be reached for that
   * long, and a build must not be reported failed for it; its lease lapses
   * and the controller hands it out again (the give-up is in the log).
   */
  private async write<T>(fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
    try {
      return await fn(this.abort.signal);
    } catch (err) {
      if (err instanceof ApiError && err.code === 'LEASE_LOST') {
        this.stop('lost', `lease lost: ${err.message}`);
        throw new Dropped('lease lost');
      }
      if (err instanceof RetryBudgetExhausted && !this.abort.signal.aborted) {
        this.stop('lost', `dropped: ${err.message}`);
        throw new Dropped(err.message);
      }
      if (this.abort.signal.aborted) throw this.abort.signal.reason;
      throw err;
    }
  }

  private note(line: string): void {
    // The script may have stopped mid-line (killed for a limit): a note starts a line of its own.
    this.logs?.write(`${this.midLine ? '\n' : ''}[buildfleet] ${line}\n`);
    this.midLine = false;
  }

  private async run(): Promise<BuildResult> {
    const { client, events, logger } = this.deps;
    const base = { buildId: this.id, attempt: this.attempt };
    const summary = () => ({
      name: this.build.spec.name,
      durationMs: this.startedMono === undefined ? 0 : Math.round(this.deps.clock.monotonic() - this.startedMono),
    });
    try {
      await this.write((signal) => client.start(this.build, { signal }));
      this.startedMono = this.deps.clock.monotonic();
      events.emit('build:start', base);
      const result = await this.execute();
      this._phase = 'reporting';
      const finish = { attempt: this.attempt, ...result };
      await this.write((signal) => client.finish(this.build, finish, { signal }));
      const out: BuildResult = { ...base, reported: true, ...result, ...summary() };
      events.emit('build:finish', out);
      logger.info({ ...base, outcome: result.outcome, exitCode: result.exitCode }, 'build finished');
      return out;
    } catch (err) {
      const reason =
        err instanceof Dropped
          ? (this.stopMessage ?? err.reason)
          : err instanceof ApiError
            ? `${err.code}: ${err.message}`
            : this.abort.signal.aborted
              ? (this.stopMessage ?? 'stopped')
              : `worker error: ${describeError(err)}`;
      this.script?.kill();
      const out: BuildResult = { ...base, reported: false, exitCode: null, message: null, dropReason: reason, ...summary() };
      logger.warn({ ...base, reason }, 'build dropped');
      events.emit('build:dropped', out);
      return out;
    } finally {
      this._phase = 'done';
      this.logs?.close();
      if (this.ws) {
        await removeSecretFiles(this.deps.executor.secretFiles(this.ws));
        await fs.rm(path.join(this.deps.config.stateDir, 'tmp', path.basename(this.ws.dir)), { recursive: true, force: true }).catch(() => undefined);
        await this.deps.executor.cleanup(this.ws);
      }
    }
  }

  /** Runs the build after `start`; returns what `finish` reports. Throws Dropped. */
  private async execute(): Promise<Outcome> {
    this._phase = 'preparing';
    this.logs = new MaskedLog(
      new LogStreamer({
        clock: this.deps.clock,
        ...(this.deps.logChunkBytes ? { minChunkBytes: this.deps.logChunkBytes } : {}),
        ...(this.deps.logFlushMs ? { flushIntervalMs: this.deps.logFlushMs } : {}),
        send: (chunk) => this.write((signal) => this.deps.client.appendLog(this.build, chunk, { signal })),
        backpressure: (high) => (high ? this.script?.pauseOutput() : this.script?.resumeOutput()),
      }),
    );

    await this.fetchSecrets();
    const failed = await this.prepare();
    if (failed) return failed;
    if (this.abort.signal.aborted) throw this.abort.signal.reason;
    if (this.currentStop() === 'canceled') {
      await this.flushLogs();
      return { outcome: 'canceled', exitCode: null, message: this.stopMessage ?? 'canceled before the script started' };
    }

    const caches = await this.restoreCaches(this.ws!);
    const exit = await this.runScript(this.ws!);
    if (this.abort.signal.aborted) throw this.abort.signal.reason;
    let { outcome, message } = this.judge(exit);
    // A limit's breach is the build's reason until something weightier (artifact failure) takes over.
    let reason = outcome === 'failed' ? exit.limit?.reason : undefined;
    const exitCode = exit.code ?? (exit.signal ? 128 + (SIGNAL_NUMBERS[exit.signal] ?? 0) : null);
    this.note(`${outcome}${message ? `: ${message}` : ''}`);
    if (outcome === 'succeeded' && caches.some((c) => !c.exactHit)) {
      await saveCaches(caches, this.ws!.dir, this.cacheSteps(this.ws!));
      if (this.abort.signal.aborted) throw this.abort.signal.reason;
    }

    // Logs first: after finish the controller refuses them.
    this._phase = 'reporting';
    await this.flushLogs();
    if (outcome !== 'canceled' && this.build.spec.artifacts.length > 0) {
      const failures = await this.uploadArtifacts(this.ws!, this.build.spec.artifacts);
      await this.flushLogs();
      if (failures.length > 0 && outcome === 'succeeded') {
        outcome = 'failed';
        message = `artifact upload failed: ${failures.join('; ')}`;
        reason = undefined;
      }
    }
    return { outcome, exitCode, message, ...(reason ? { reason } : {}) };
  }

  /** Source download and workspace; an outcome when the source cannot be used. */
  private async prepare(): Promise<Outcome | undefined> {
    const { client, config, executor } = this.deps;
    const srcDir = path.join(config.stateDir, 'sources');
    const srcFile = path.join(srcDir, `${encodeURIComponent(this.id)}-${this.attempt}.tar.gz`);
    try {
      await fs.mkdir(srcDir, { recursive: true });
      await this.write((signal) => client.downloadSource(this.build, srcFile, { signal }));
      this.ws = await executor.prepare(this.build, srcFile);
      return undefined;
    } catch (err) {
      if (err instanceof Dropped || this.abort.signal.aborted) throw err;
      const message = `could not prepare the source: ${describeError(err)}`;
      this.note(message);
      await this.flushLogs();
      return { outcome: 'failed', exitCode: null, message };
    } finally {
      await fs.rm(srcFile, { force: true }).catch(() => undefined);
    }
  }

  /**
   * The attempt's secret values, before anything of the build runs, so every
   * log line from here on is masked. The controller answers 409 when it has
   * just failed the build (a secret was deleted or narrowed since submit):
   * the build is dropped, nothing runs and nothing is reported (it ended).
   */
  private async fetchSecrets(): Promise<void> {
    if (!this.build.spec.secrets?.length) return;
    try {
      this.handed = await this.write((signal) => this.deps.client.secrets(this.build, { signal }));
    } catch (err) {
      if (err instanceof ApiError) {
        this.stopMessage = `secrets refused: ${err.code}: ${err.message}`;
        throw new Dropped(this.stopMessage);
      }
      throw err;
    }
    this.logs!.addSecrets(this.handed.map((s) => s.value));
  }

  /**
   * The spec's caches restored into the workspace before the script (a
   * cache problem is a warning in the log, never a failed build). Returns
   * what `saveCaches` needs after a successful script.
   */
  private async restoreCaches(ws: Workspace): Promise<CachePlan[]> {
    const spec = this.build.spec;
    if (!spec.cache?.length) return [];
    const plans = await restoreCaches(spec.cache, keyContext(ws.dir, spec), this.cacheSteps(ws));
    if (this.abort.signal.aborted) throw this.abort.signal.reason;
    if (plans.some((p) => p.restored)) await this.deps.executor.workspaceChanged?.(ws);
    return plans;
  }

  /** The cache steps' calls with this attempt's build token; a lost lease drops the build, anything else is the steps' warning. */
  private cacheSteps(ws: Workspace): CacheStepDeps {
    const { client, clock, config, localCache } = this.deps;
    const call = async <T>(fn: (signal: AbortSignal) => Promise<T>): Promise<T> => {
      try {
        return await fn(this.abort.signal);
      } catch (err) {
        if (err instanceof ApiError && err.code === 'LEASE_LOST') this.stop('lost', `lease lost: ${err.message}`);
        throw err;
      }
    };
    return {
      api: {
        lookup: (key, restoreKeys) => call((signal) => client.cacheLookup(this.build, key, restoreKeys, { signal })),
        download: async (sha256, file) => void (await call((signal) => client.cacheDownload(this.build, sha256, file, { signal }))),
        upload: (key, file, sha256, size) => call((signal) => client.cacheUpload(this.build, { key, file, sha256, size }, { signal })),
      },
      local: localCache,
      clock,
      note: (line) => this.note(line),
      scratchDir: path.join(config.stateDir, 'tmp', path.basename(ws.dir)),
      limits: config.sourceLimits,
    };
  }

  private async runScript(ws: Workspace) {
    const { clock, config, events, workerId, executor } = this.deps;
    const spec = this.build.spec;
    const secretEnv = spec.secrets?.length ? await secretEnvironment(spec.secrets, this.handed, executor.secretFiles(ws)) : {};
    const env: Record<string, string> = {
      ...spec.env,
      ...secretEnv,
      BUILDFLEET_BUILD_ID: this.id,
      BUILDFLEET_BUILD_ATTEMPT: String(this.attempt),
      BUILDFLEET_WORKSPACE: ws.dir,
      BUILDFLEET_WORKER_ID: workerId() ?? '',
      BUILDFLEET_WORKER_NAME: config.name,
    };
    this._phase = 'running';
    const onOutput = (chunk: Buffer) => {
      if (chunk.length > 0) this.midLine = chunk[chunk.length - 1] !== 0x0a;
      this.logs!.write(chunk);
    };
    const script = await executor.run(ws, spec.script, env, onOutput, {
      shell: spec.shell,
      limits: spec.limits,
      network: spec.network,
    });
    this.script = script;
    if (this.currentStop() === 'lost') script.kill();
    else if (this.currentStop()) script.stop(config.cancelGraceMs);
    events.emit('build:running', { buildId: this.id, attempt: this.attempt, pgid: script.pgid });
    const timeout = clock.setTimeout(() => this.stop('timed_out', `timed out after ${spec.timeoutSeconds}s`), spec.timeoutSeconds * 1000);
    try {
      return await script.exited;
    } finally {
      clock.clearTimeout(timeout);
    }
  }

  private judge(exit: ScriptExit): { outcome: BuildOutcome; message: string | null } {
    const stop = this.currentStop();
    if (stop === 'canceled') return { outcome: 'canceled', message: this.stopMessage ?? 'canceled' };
    if (stop === 'timed_out') return { outcome: 'timed_out', message: this.stopMessage ?? 'timed out' };
    if (exit.limit) return { outcome: 'failed', message: exit.limit.message };
    if (exit.code === 0) return { outcome: 'succeeded', message: null };
    return { outcome: 'failed', message: exit.signal ? `script killed by ${exit.signal}` : `script exited with code ${exit.code}` };
  }

  private async flushLogs(): Promise<void> {
    try {
      await this.logs!.flush();
    } catch (err) {
      if (err instanceof Dropped || this.abort.signal.aborted) throw this.abort.signal.reason ?? err;
      // A log that cannot be stored (e.g. OFFSET_MISMATCH) must not hide the outcome.
      this.deps.logger.error({ buildId: this.id, err: describeError(err) }, 'log upload failed');
    }
  }

  /** Uploads every artifact the executor finds; returns the failures (names and why). */
  private async uploadArtifacts(ws: Workspace, patterns: readonly string[]): Promise<string[]> {
    const failures: string[] = [];
    const found = await this.deps.executor.collectArtifacts(ws, patterns);
    for (const line of found.notes) this.note(line);
    for (const file of found.files) {
      const sha256 = await sha256File(file.path);
      try {
        await this.write((signal) => this.deps.client.uploadArtifact(this.build, { ...file, sha256 }, { signal }));
        this.note(`artifact ${file.name} uploaded (${file.size} bytes, sha256 ${sha256})`);
      } catch (err) {
        if (err instanceof Dropped || this.abort.signal.aborted) throw this.abort.signal.reason ?? err;
        const why = `${file.name}: ${err instanceof ApiError ? err.code : describeError(err)}`;
        failures.push(why);
        this.note(`artifact upload failed: ${why}`);
      }
    }
    return failures;
  }
}
