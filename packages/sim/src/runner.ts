/**
 * Simulated build processes for the worker's executor (its `ScriptRunner`
 * injection point). A build's script is a plan written by the simulation
 * (`sim:{...}`); the "process" prints the plan's lines over simulated time,
 * writes its artifact files into the workspace, and exits with the plan's
 * code. It honours SIGTERM (exits soon, or ignores it when the plan says so)
 * and SIGKILL (exits at once). The output is a pure function of build,
 * attempt and plan, so the checker knows what every attempt wrote.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import type { ChildProcess } from 'node:child_process';
import type { Clock } from '@buildfleet/protocol';
import type { ScriptRunner, SpawnedBuild } from '@buildfleet/worker';

/** What one build's script does (the same for every attempt). */
export interface ScriptPlan {
  lines: number;
  /** ms before each line */
  stepMs: number[];
  exitCode: number;
  /** true: SIGTERM is ignored (only SIGKILL after the grace ends it). */
  ignoreTerm: boolean;
  artifacts: Array<{ name: string; bytes: number }>;
}

export const SCRIPT_PREFIX = 'sim:';

export function planScript(plan: ScriptPlan): string {
  return SCRIPT_PREFIX + JSON.stringify(plan);
}

export function parsePlan(script: string): ScriptPlan {
  if (!script.startsWith(SCRIPT_PREFIX)) throw new Error('not a simulated script');
  return JSON.parse(script.slice(SCRIPT_PREFIX.length)) as ScriptPlan;
}

/** Line `i` of attempt `attempt` of build `buildId` (some lines are long, so logs span several chunks). */
export function outputLine(buildId: string, attempt: number, i: number): string {
  const fill = i % 3 === 2 ? ' ' + 'x'.repeat(300 + i * 7) : '';
  return `${buildId} attempt ${attempt} line ${i}${fill}\n`;
}

/** The whole output of an attempt that ran to its end. */
export function fullOutput(buildId: string, attempt: number, plan: ScriptPlan): string {
  let s = '';
  for (let i = 0; i < plan.lines; i++) s += outputLine(buildId, attempt, i);
  return s;
}

/** Bytes of an artifact file (deterministic). */
export function artifactBytes(buildId: string, attempt: number, name: string, size: number): Buffer {
  const out = Buffer.alloc(size);
  let block = createHash('sha256').update(`${buildId}/${attempt}/${name}`).digest();
  for (let off = 0; off < size; off += block.length) {
    block.copy(out, off, 0, Math.min(block.length, size - off));
    block = createHash('sha256').update(block).digest();
  }
  return out;
}

class SimProcess {
  readonly stdout = new PassThrough();
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly closed: Promise<void>;
  private resolveExit!: (v: { code: number | null; signal: NodeJS.Signals | null }) => void;
  private ended = false;
  private readonly ac = new AbortController();

  constructor(
    readonly pgid: number,
    private readonly clock: Clock,
    private readonly plan: ScriptPlan,
    private readonly buildId: string,
    private readonly attempt: number,
    private readonly cwd: string,
    private readonly frozen: () => boolean,
  ) {
    this.stdout.on('error', () => undefined);
    this.exited = new Promise((r) => (this.resolveExit = r));
    this.closed = new Promise((r) => {
      this.stdout.once('close', () => r());
    });
    void this.run();
  }

  private async run(): Promise<void> {
    try {
      for (let i = 0; i < this.plan.lines; i++) {
        await this.clock.sleep(this.plan.stepMs[i] ?? 100, this.ac.signal);
        if (this.ended) return;
        if (!this.stdout.destroyed) this.stdout.write(outputLine(this.buildId, this.attempt, i));
      }
      await this.clock.sleep(10, this.ac.signal);
      for (const a of this.plan.artifacts) {
        const file = path.join(this.cwd, a.name);
        await fs.mkdir(path.dirname(file), { recursive: true });
        await fs.writeFile(file, artifactBytes(this.buildId, this.attempt, a.name, a.bytes));
        if (this.ended) return;
      }
      this.exit(this.plan.exitCode, null);
    } catch {
      // aborted: the exit was decided by a signal
    }
  }

  private exit(code: number | null, signal: NodeJS.Signals | null): void {
    if (this.ended || this.frozen()) return;
    this.ended = true;
    this.ac.abort();
    if (!this.stdout.destroyed) this.stdout.end();
    this.stdout.resume();
    this.resolveExit({ code, signal });
  }

  signal(sig: NodeJS.Signals): void {
    if (this.ended || this.frozen()) return;
    if (sig === 'SIGKILL') return this.exit(null, 'SIGKILL');
    if (sig === 'SIGTERM' && !this.plan.ignoreTerm) {
      // A trap that cleans up for a moment, then exits.
      void this.clock.sleep(50).then(() => this.exit(null, 'SIGTERM'));
    }
  }

  /** The worker crashed: the process stops doing anything (its group is killed by the next start). */
  freeze(): void {
    this.ended = true;
    this.ac.abort();
  }
}

/**
 * One runner per worker process instance. `frozen()` true means that worker
 * crashed: its processes stop producing anything and never report an exit.
 */
export class SimRunner implements ScriptRunner {
  private readonly procs = new Map<number, SimProcess>();
  private next = 1;

  constructor(
    private readonly clock: Clock,
    private readonly frozen: () => boolean,
    private readonly onSpawn?: (buildId: string, attempt: number) => void,
  ) {}

  spawnScript(script: string, opts: { cwd: string; env: NodeJS.ProcessEnv }): SpawnedBuild {
    const plan = parsePlan(script);
    const buildId = opts.env.BUILDFLEET_BUILD_ID ?? '?';
    const attempt = Number(opts.env.BUILDFLEET_BUILD_ATTEMPT ?? 0);
    // Not positive: never recorded in the worker's pid directory, never a real process group.
    const pgid = -this.next++;
    const p = new SimProcess(pgid, this.clock, plan, buildId, attempt, opts.cwd, this.frozen);
    this.procs.set(pgid, p);
    void p.exited.then(() => this.procs.delete(pgid));
    this.onSpawn?.(buildId, attempt);
    return { child: { stdout: p.stdout, pid: undefined } as unknown as ChildProcess, pgid, exited: p.exited, closed: p.closed };
  }

  signalGroup(pgid: number, signal: NodeJS.Signals): boolean {
    const p = this.procs.get(pgid);
    if (!p) return false;
    p.signal(signal);
    return true;
  }

  async stopGroup(pgid: number, exited: Promise<unknown>, graceMs: number, clock: Clock): Promise<void> {
    if (!this.signalGroup(pgid, 'SIGTERM')) return;
    const ac = new AbortController();
    await Promise.race([exited, clock.sleep(graceMs, ac.signal).catch(() => undefined)]);
    ac.abort();
    this.signalGroup(pgid, 'SIGKILL');
  }

  freezeAll(): void {
    for (const p of this.procs.values()) p.freeze();
  }
}
