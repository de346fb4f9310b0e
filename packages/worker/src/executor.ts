/**
 * The executor runs builds (flow 1 of STYLE.md, worker half): start → fresh
 * workspace → source → script in its own process group → log chunks →
 * artifacts → finish → workspace removed.
 *
 * Every build write uses the attempt's BUILD token (never the access token),
 * so a credential rotation never touches a running build (PROTOCOL.md
 * "Credentials"). Duties of PROTOCOL.md "Worker duties":
 * - `409 LEASE_LOST` from any build write, or the build in `abandon`: the
 *   process tree is killed at once and the build dropped (no finish);
 * - the build in `cancel`: SIGTERM, grace, SIGKILL, then `finish canceled`;
 * - `timeoutSeconds` exceeded: the same stop, then `finish timed_out`;
 * - fencing (see agent.ts) drops the build like a lost lease.
 */
import { EventEmitter } from 'node:events';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { glob } from 'tinyglobby';
import {
  ApiError,
  CHECKSUM_HEADER,
  artifactNameProblem,
  paths,
  type AssignedBuild,
  type BuildOutcome,
  type Clock,
  type FinishRequest,
  type LogChunkRequest,
} from '@buildfleet/protocol';
import type { WorkerConfig } from './config.js';
import { TransportError, type ControllerClient } from './http.js';
import type { Logger } from './logger.js';
import { LogStreamer } from './logs.js';
import { PidDir, systemRunner, type ScriptRunner, type SpawnedBuild } from './process.js';
import { withRetry } from './retry.js';
import { saveBody, unpackSource } from './source.js';

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
  exitCode: number | null;
  message: string | null;
  /** Why it was dropped, when not reported. */
  dropReason?: string;
}

export type BuildPhase = 'starting' | 'preparing' | 'running' | 'reporting' | 'done';

export interface ExecutorDeps {
  client: ControllerClient;
  clock: Clock;
  config: WorkerConfig;
  logger: Logger;
  /** Events: build:start, build:running, build:finish, build:dropped. */
  events: EventEmitter;
  /** Worker id for the build's environment (may change on re-registration as new). */
  workerId: () => string | undefined;
  /** Log chunk cut size and interval (defaults 64 KiB, 250 ms). */
  logChunkBytes?: number;
  logFlushMs?: number;
  /** Backoff of build-write retries (ms). */
  retryBaseMs?: number;
  retryMaxMs?: number;
  /** Runs and signals build scripts (default `systemRunner`: `sh -c` in a process group; the simulation fakes it). */
  runner?: ScriptRunner;
}

const SIGNAL_NUMBERS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGTERM: 15, SIGPIPE: 13, SIGABRT: 6, SIGSEGV: 11 };

/** Variables of the worker's own environment never passed to builds (credentials, worker config). */
function inheritedEnv(): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('BUILDFLEET_') || k === 'DATABASE_URL') continue;
    out[k] = v;
  }
  return out;
}

class Dropped extends Error {
  constructor(readonly reason: string) {
    super(reason);
  }
}

/** One attempt of one build on this worker. */
export class BuildRun {
  readonly id: string;
  readonly attempt: number;
  readonly workspace: string;
  readonly done: Promise<BuildResult>;
  private _phase: BuildPhase = 'starting';
  private stopReason: StopReason | undefined;
  private stopMessage: string | undefined;
  private proc: SpawnedBuild | undefined;
  private logs: LogStreamer | undefined;
  private readonly abort = new AbortController();
  private startedMono: number | undefined;
  private readonly notes: string[] = [];
  private readonly runner: ScriptRunner;

  constructor(
    readonly build: AssignedBuild,
    private readonly deps: ExecutorDeps,
    private readonly pids: PidDir,
  ) {
    this.id = build.id;
    this.attempt = build.attempt;
    this.workspace = path.join(deps.config.stateDir, 'workspaces', `${safeName(build.id)}-${build.attempt}`);
    this.runner = deps.runner ?? systemRunner;
    this.done = this.run();
  }

  get phase(): BuildPhase {
    return this._phase;
  }
  /** Monotonic ms when `start` was accepted (the lease began), if it was. */
  get leaseStartedMono(): number | undefined {
    return this.startedMono;
  }
  /** Process group id of the running script, if any. */
  get pgid(): number | undefined {
    return this.proc?.pgid;
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
      if (this.proc) {
        this.runner.signalGroup(this.proc.pgid, 'SIGKILL');
        // The pipe may be paused for backpressure; nobody reads it any more.
        this.proc.child.stdout?.destroy();
      }
      this.logs?.close();
      return;
    }
    if (this.proc && this._phase === 'running') {
      void this.runner.stopGroup(this.proc.pgid, this.proc.exited, this.deps.config.cancelGraceMs, this.deps.clock);
    }
  }

  /** Read through a method: stop() changes it while execute() awaits. */
  private currentStop(): StopReason | undefined {
    return this.stopReason;
  }

  private retryOpts() {
    return {
      clock: this.deps.clock,
      maxAttempts: Infinity,
      baseMs: this.deps.retryBaseMs ?? 250,
      maxMs: this.deps.retryMaxMs ?? 10_000,
      signal: this.abort.signal,
    };
  }

  /** A build write with the build token; LEASE_LOST drops the build at once. */
  private async write<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await withRetry(fn, this.retryOpts());
    } catch (err) {
      if (err instanceof ApiError && err.code === 'LEASE_LOST') {
        this.stop('lost', `lease lost: ${err.message}`);
        throw new Dropped('lease lost');
      }
      if (this.abort.signal.aborted) throw this.abort.signal.reason;
      throw err;
    }
  }

  private post<T>(p: string, json: unknown): Promise<T> {
    return this.write(async () => (await this.deps.client.json<T>({ method: 'POST', path: p, token: this.build.buildToken, json, signal: this.abort.signal })).body);
  }

  private note(line: string): void {
    this.logs?.write(`[buildfleet] ${line}\n`);
  }

  private async run(): Promise<BuildResult> {
    const { events, logger } = this.deps;
    const base = { buildId: this.id, attempt: this.attempt };
    try {
      await this.post(paths.start(this.id), { attempt: this.attempt });
      this.startedMono = this.deps.clock.monotonic();
      events.emit('build:start', { buildId: this.id, attempt: this.attempt });
      const result = await this.execute();
      this._phase = 'reporting';
      const finish: FinishRequest = { attempt: this.attempt, outcome: result.outcome, exitCode: result.exitCode, message: result.message };
      await this.post(paths.finish(this.id), finish);
      const out: BuildResult = { ...base, reported: true, ...result };
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
              : `worker error: ${(err as Error).message}`;
      if (this.proc) this.runner.signalGroup(this.proc.pgid, 'SIGKILL');
      const out: BuildResult = { ...base, reported: false, exitCode: null, message: null, dropReason: reason };
      logger.warn({ ...base, reason }, 'build dropped');
      events.emit('build:dropped', out);
      return out;
    } finally {
      this._phase = 'done';
      this.logs?.close();
      await this.pids.remove(this.id).catch(() => undefined);
      await fs.rm(this.workspace, { recursive: true, force: true }).catch(() => undefined);
      await fs.rm(this.workspace + '.src.tar.gz', { force: true }).catch(() => undefined);
    }
  }

  /** Runs the build after `start`; returns what `finish` reports. Throws Dropped. */
  private async execute(): Promise<{ outcome: BuildOutcome; exitCode: number | null; message: string | null }> {
    const { client, clock, config } = this.deps;
    this._phase = 'preparing';
    this.logs = new LogStreamer({
      clock,
      ...(this.deps.logChunkBytes ? { minChunkBytes: this.deps.logChunkBytes } : {}),
      ...(this.deps.logFlushMs ? { flushIntervalMs: this.deps.logFlushMs } : {}),
      send: (chunk) =>
        this.write(async () => {
          const body: LogChunkRequest = { attempt: this.attempt, seq: chunk.seq, offset: chunk.offset, data: chunk.data.toString('base64'), encoding: 'base64' };
          const answer = await client.json<{ offset: number; truncated?: boolean }>({ method: 'POST', path: paths.logs(this.id), token: this.build.buildToken, json: body, signal: this.abort.signal });
          // The controller stores no more of this attempt's log (BUILDFLEET_LOG_MAX_MB): stop sending it.
          return { truncated: answer.body?.truncated === true };
        }),
      backpressure: (high) => {
        const out = this.proc?.child.stdout;
        if (!out) return;
        if (high) out.pause();
        else out.resume();
      },
    });

    await fs.rm(this.workspace, { recursive: true, force: true });
    await fs.mkdir(this.workspace, { recursive: true });

    // Source: stream to a file beside the workspace, check, unpack.
    const srcFile = this.workspace + '.src.tar.gz';
    try {
      await this.write(async () => {
        const res = await client.send({ method: 'GET', path: this.build.sourceUrl, token: this.build.buildToken, signal: this.abort.signal });
        try {
          await saveBody(res.body, srcFile, { clock, ms: config.requestTimeoutMs }, this.abort.signal);
        } catch (err) {
          // A body cut off or stalled mid-way is a transport failure (retried); a local file error is not.
          if (this.abort.signal.aborted || err instanceof TransportError || (err as NodeJS.ErrnoException).syscall) throw err;
          throw new TransportError('network', `source download failed: ${(err as Error).message}`, res.url, undefined, undefined, { cause: err });
        }
      });
      await unpackSource(srcFile, this.workspace);
    } catch (err) {
      if (err instanceof Dropped || this.abort.signal.aborted) throw err;
      const message = `could not prepare the source: ${(err as Error).message}`;
      this.note(message);
      await this.flushLogs();
      return { outcome: 'failed', exitCode: null, message };
    } finally {
      await fs.rm(srcFile, { force: true }).catch(() => undefined);
    }
    if (this.abort.signal.aborted) throw this.abort.signal.reason;
    if (this.currentStop() === 'canceled') {
      await this.flushLogs();
      return { outcome: 'canceled', exitCode: null, message: this.stopMessage ?? 'canceled before the script started' };
    }

    // Script.
    const spec = this.build.spec;
    const env: NodeJS.ProcessEnv = {
      ...inheritedEnv(),
      ...spec.env,
      BUILDFLEET_BUILD_ID: this.id,
      BUILDFLEET_BUILD_ATTEMPT: String(this.attempt),
      BUILDFLEET_WORKSPACE: this.workspace,
      BUILDFLEET_WORKER_ID: this.deps.workerId() ?? '',
      BUILDFLEET_WORKER_NAME: config.name,
    };
    this._phase = 'running';
    const proc = this.runner.spawnScript(spec.script, { cwd: this.workspace, env });
    this.proc = proc;
    // Attach before any await: Node discards output of a child that exits while nobody listens.
    proc.child.stdout?.on('data', (chunk: Buffer) => this.logs!.write(chunk));
    if (proc.pgid > 0) await this.pids.record(this.id, proc.pgid);
    if (this.currentStop() === 'lost') this.runner.signalGroup(proc.pgid, 'SIGKILL');
    else if (this.currentStop()) void this.runner.stopGroup(proc.pgid, proc.exited, config.cancelGraceMs, clock);
    this.deps.events.emit('build:running', { buildId: this.id, attempt: this.attempt, pgid: proc.pgid });
    const timeout = clock.setTimeout(() => this.stop('timed_out', `timed out after ${spec.timeoutSeconds}s`), spec.timeoutSeconds * 1000);
    const exit = await proc.exited;
    clock.clearTimeout(timeout);
    // Whatever the script left running in its group goes with it (and releases the pipe).
    this.runner.signalGroup(proc.pgid, 'SIGKILL');
    await proc.closed;
    await this.pids.remove(this.id);
    if (this.abort.signal.aborted) throw this.abort.signal.reason;

    const exitCode = exit.code ?? (exit.signal ? 128 + (SIGNAL_NUMBERS[exit.signal] ?? 0) : null);
    let outcome: BuildOutcome;
    let message: string | null;
    if (this.currentStop() === 'canceled') {
      outcome = 'canceled';
      message = this.stopMessage ?? 'canceled';
    } else if (this.currentStop() === 'timed_out') {
      outcome = 'timed_out';
      message = this.stopMessage ?? 'timed out';
    } else if (exit.code === 0) {
      outcome = 'succeeded';
      message = null;
    } else {
      outcome = 'failed';
      message = exit.signal ? `script killed by ${exit.signal}` : `script exited with code ${exit.code}`;
    }
    this.note(`${outcome}${message ? `: ${message}` : ''}`);

    // Logs first: after finish the controller refuses them.
    this._phase = 'reporting';
    await this.flushLogs();
    if (outcome !== 'canceled' && spec.artifacts.length > 0) {
      const failed = await this.uploadArtifacts(spec.artifacts);
      await this.flushLogs();
      if (failed.length > 0) {
        if (outcome === 'succeeded') {
          outcome = 'failed';
          message = `artifact upload failed: ${failed.join('; ')}`;
        }
      }
    }
    return { outcome, exitCode, message };
  }

  private async flushLogs(): Promise<void> {
    try {
      await this.logs!.flush();
    } catch (err) {
      if (err instanceof Dropped || this.abort.signal.aborted) throw this.abort.signal.reason ?? err;
      // A log that cannot be stored (e.g. OFFSET_MISMATCH) must not hide the outcome.
      this.deps.logger.error({ buildId: this.id, err: (err as Error).message }, 'log upload failed');
    }
  }

  /** Uploads every regular file matching `patterns`; returns the failures (names and why). */
  private async uploadArtifacts(patterns: readonly string[]): Promise<string[]> {
    const { client } = this.deps;
    const failures: string[] = [];
    const root = await fs.realpath(this.workspace);
    const globOptions = { cwd: this.workspace, onlyFiles: true, dot: true, followSymbolicLinks: false, expandDirectories: false };
    const names = await glob([...patterns], globOptions);
    // Like GitLab Runner: a pattern that matched nothing is worth a line in the log, not silence.
    for (const pattern of patterns) {
      if ((await glob([pattern], globOptions)).length === 0) this.note(`warning: artifact pattern ${JSON.stringify(pattern)} matched no files`);
    }
    for (const rel of [...new Set(names)].sort()) {
      const name = rel.split(path.sep).join('/');
      const full = path.resolve(this.workspace, rel);
      const problem = artifactNameProblem(name);
      let real: string;
      try {
        real = await fs.realpath(full);
      } catch {
        continue;
      }
      if (problem || (real !== root && !real.startsWith(root + path.sep))) {
        this.note(`artifact ${JSON.stringify(name)} skipped: ${problem ?? 'it resolves outside the workspace'}`);
        continue;
      }
      const st = await fs.stat(real);
      if (!st.isFile()) continue;
      const sha256 = await sha256File(real);
      try {
        await this.write(async () => {
          const body = Readable.toWeb(createReadStream(real)) as unknown as ReadableStream<Uint8Array>;
          await client.send({
            method: 'PUT',
            path: paths.artifact(this.id, name),
            token: this.build.buildToken,
            body,
            headers: { [CHECKSUM_HEADER]: sha256, 'content-length': String(st.size) },
            signal: this.abort.signal,
            // Until the answer arrives: the base timeout plus one second per MiB (a floor of 1 MiB/s).
            timeoutMs: this.deps.client.requestTimeoutMs + Math.ceil(st.size / (1024 * 1024)) * 1000,
          });
        });
        this.note(`artifact ${name} uploaded (${st.size} bytes, sha256 ${sha256})`);
      } catch (err) {
        if (err instanceof Dropped || this.abort.signal.aborted) throw this.abort.signal.reason ?? err;
        const why = `${name}: ${err instanceof ApiError ? err.code : (err as Error).message}`;
        failures.push(why);
        this.note(`artifact upload failed: ${why}`);
      }
    }
    return failures;
  }
}

/** SHA-256 of a file, lowercase hex, streamed. */
export async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

function safeName(id: string): string {
  return id.replace(/[^A-Za-z0-9._-]/g, '_');
}

/** All builds running on this worker; the agent's view of the executor. */
export class Executor {
  readonly runs = new Map<string, BuildRun>();
  readonly pids: PidDir;

  constructor(private readonly deps: ExecutorDeps) {
    this.pids = new PidDir(deps.config.stateDir);
  }

  /** Ids of builds this worker runs now (sent as `activeBuildIds`). */
  activeBuildIds(): string[] {
    return [...this.runs.keys()];
  }
  get size(): number {
    return this.runs.size;
  }

  /**
   * Starts a build unless one with this id already runs here (a poll may
   * re-deliver it; an older attempt of it is stopped as lost); returns the
   * run, or undefined when ignored.
   */
  launch(build: AssignedBuild): BuildRun | undefined {
    const existing = this.runs.get(build.id);
    if (existing) {
      // A newer attempt of a build that runs here (say the worker was deleted
      // and got it back under a new identity): the old attempt is void, so it
      // goes at once; the newer one is re-delivered by a poll once it is gone.
      if (build.attempt > existing.attempt) existing.stop('lost', `superseded by attempt ${build.attempt}`);
      return undefined;
    }
    const run = new BuildRun(build, this.deps, this.pids);
    this.runs.set(build.id, run);
    void run.done.finally(() => {
      if (this.runs.get(build.id) === run) this.runs.delete(build.id);
      this.deps.events.emit('build:done', build.id);
    });
    return run;
  }

  stop(buildId: string, reason: StopReason, message?: string): void {
    this.runs.get(buildId)?.stop(reason, message);
  }

  stopAll(reason: StopReason, message?: string): void {
    for (const r of this.runs.values()) r.stop(reason, message);
  }

  /** Resolves when no build runs. */
  async idle(): Promise<void> {
    while (this.runs.size > 0) await Promise.all([...this.runs.values()].map((r) => r.done));
  }

  /** Removes workspaces and kills process groups a previous run left behind. */
  async cleanupLeftovers(): Promise<number[]> {
    const killed = await this.pids.killLeftovers(this.deps.logger, this.deps.clock);
    const ws = path.join(this.deps.config.stateDir, 'workspaces');
    await fs.rm(ws, { recursive: true, force: true }).catch(() => undefined);
    await fs.mkdir(ws, { recursive: true });
    return killed;
  }
}
