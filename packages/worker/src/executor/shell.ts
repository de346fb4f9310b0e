/**
 * The `shell` executor: the script runs as `sh -c` in its own process group,
 * as the worker's user, in `<stateDir>/workspaces/<build>-<attempt>`. The
 * group id is recorded in `<stateDir>/pids/` while it runs, so a restarted
 * worker kills what a previous run left behind (docs/protocol.md "Worker
 * duties"). No isolation: the script sees what the worker's user sees.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Clock } from '@buildfleet/protocol';
import type { Logger } from '../logger.js';
import { PidDir, systemRunner, type ScriptRunner } from '../process.js';
import { unpackSource, type SourceLimits } from '../source.js';
import { findArtifacts } from './artifacts.js';
import type { CollectedArtifacts, Executor, RunOptions, RunningScript, ScriptExit, SecretFilesLocation, Workspace } from './types.js';

export interface ShellExecutorOptions {
  /** `<dataDir>/worker`: workspaces/ and pids/ live here. */
  stateDir: string;
  clock: Clock;
  logger: Logger;
  /** Starts and signals the script (default: real processes; the simulation fakes them). */
  runner?: ScriptRunner;
  /** What a source may unpack to (default `DEFAULT_SOURCE_LIMITS`; the worker passes its configuration's). */
  sourceLimits?: SourceLimits;
}

/** Variables of the worker's own environment never passed to builds (credentials, worker config). */
function inheritedEnv(): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('BUILDFLEET_') || k === 'DATABASE_URL') continue;
    out[k] = v;
  }
  return out;
}

function safeName(id: string): string {
  return id.replace(/[^A-Za-z0-9._-]/g, '_');
}

export class ShellExecutor implements Executor {
  readonly kind = 'shell';
  private readonly runner: ScriptRunner;
  private readonly pids: PidDir;
  private readonly workspaces: string;

  constructor(private readonly opts: ShellExecutorOptions) {
    this.runner = opts.runner ?? systemRunner;
    this.pids = new PidDir(opts.stateDir);
    this.workspaces = path.join(opts.stateDir, 'workspaces');
  }

  async prepare(build: { id: string; attempt: number }, sourceFile: string): Promise<Workspace> {
    const dir = path.join(this.workspaces, `${safeName(build.id)}-${build.attempt}`);
    await fs.rm(dir, { recursive: true, force: true });
    await fs.mkdir(dir, { recursive: true });
    try {
      await unpackSource(sourceFile, dir, this.opts.sourceLimits);
    } catch (err) {
      await fs.rm(dir, { recursive: true, force: true }).catch(() => undefined);
      throw err;
    }
    return { buildId: build.id, attempt: build.attempt, dir };
  }

  async run(ws: Workspace, script: string, env: Readonly<Record<string, string>>, onOutput: (chunk: Buffer) => void, opts: RunOptions = {}): Promise<RunningScript> {
    const { clock } = this.opts;
    const runner = this.runner;
    const proc = runner.spawnScript(script, { cwd: ws.dir, env: { ...inheritedEnv(), ...env }, shell: opts.shell });
    // Attach before any await: Node discards output of a child that exits while nobody listens.
    const out = proc.child.stdout;
    out?.on('data', onOutput);
    const pgid = proc.pgid;
    const exited: Promise<ScriptExit> = (async () => {
      const exit = await proc.exited;
      // Whatever the script left running in its group goes with it (and releases the pipe).
      runner.signalGroup(pgid, 'SIGKILL');
      await proc.closed;
      await this.pids.remove(ws.buildId).catch(() => undefined);
      return exit;
    })();
    if (pgid > 0) await this.pids.record(ws.buildId, pgid);
    return {
      pgid,
      exited,
      stop: (graceMs) => void runner.stopGroup(pgid, proc.exited, graceMs, clock),
      kill: () => {
        runner.signalGroup(pgid, 'SIGKILL');
        // The pipe may be paused for backpressure; nobody reads it any more.
        out?.destroy();
      },
      pauseOutput: () => out?.pause(),
      resumeOutput: () => out?.resume(),
    };
  }

  secretFiles(ws: Workspace): SecretFilesLocation {
    // The script runs as the worker's user and sees the host as it is.
    const dir = path.join(this.opts.stateDir, 'secrets', path.basename(ws.dir));
    return { host: dir, build: dir };
  }

  collectArtifacts(ws: Workspace, patterns: readonly string[]): Promise<CollectedArtifacts> {
    return findArtifacts(ws.dir, patterns);
  }

  async cleanup(ws: Workspace): Promise<void> {
    await this.pids.remove(ws.buildId).catch(() => undefined);
    await fs.rm(ws.dir, { recursive: true, force: true }).catch(() => undefined);
  }

  async cleanupLeftovers(): Promise<number[]> {
    const killed = await this.pids.killLeftovers(this.opts.logger, this.opts.clock);
    await fs.rm(this.workspaces, { recursive: true, force: true }).catch(() => undefined);
    // Secret files of builds a previous run left behind.
    await fs.rm(path.join(this.opts.stateDir, 'secrets'), { recursive: true, force: true }).catch(() => undefined);
    await fs.mkdir(this.workspaces, { recursive: true });
    return killed;
  }
}
