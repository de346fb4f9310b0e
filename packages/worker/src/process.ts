/**
 * Build processes: each build's script runs in its own process group, so the
 * whole tree (the script and everything it spawned) can be signalled at once.
 * The group id is recorded in `<stateDir>/pids/<buildId>` while it runs, so a
 * restarted worker can stop what a previous run left behind (docs/protocol.md
 * "Worker duties").
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import type { Clock } from '@buildfleet/protocol';
import { writeFileDurable } from '@buildfleet/protocol/node';
import type { Logger } from './logger.js';
import { scriptArgs } from './shell-command.js';
import { signalAll, withCookie } from './sandbox/tree.js';

/** Sends `signal` to every process in group `pgid`; false when the group is gone. */
export function signalGroup(pgid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(-pgid, signal);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return false;
    throw err;
  }
}

interface ProcStat {
  state: string;
  pgrp: number;
  startTime: string;
}

/** Linux /proc/<pid>/stat fields we need, or undefined when the process does not exist. */
export function procStat(pid: number): ProcStat | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // The command name may contain spaces and parentheses: split after the last ')'.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return { state: rest[0]!, pgrp: Number(rest[2]), startTime: rest[19]! };
}

/** True while a process with this pid exists and is not a zombie. */
export function isAlive(pid: number): boolean {
  const st = procStat(pid);
  if (st) return st.state !== 'Z' && st.state !== 'X';
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Live (non-zombie) processes in group `pgid` (Linux: scans /proc). */
export function groupMembers(pgid: number): number[] {
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return [];
  }
  const out: number[] = [];
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    const st = procStat(Number(e));
    if (st && st.pgrp === pgid && st.state !== 'Z' && st.state !== 'X') out.push(Number(e));
  }
  return out;
}

export interface PidRecord {
  pgid: number;
  /** /proc start time of the group leader (clock ticks since boot), to tell pid reuse. */
  startTime?: string;
  /** The build's process cookie (sandbox/tree.ts), for processes that left the group (setsid). */
  cookie?: string;
}

/** Pid files of running builds: `<stateDir>/pids/<buildId>`. */
export class PidDir {
  readonly dir: string;
  constructor(stateDir: string) {
    this.dir = path.join(stateDir, 'pids');
  }
  private file(buildId: string): string {
    return path.join(this.dir, encodeURIComponent(buildId));
  }
  async record(buildId: string, pgid: number, cookie?: string): Promise<void> {
    await fs.mkdir(this.dir, { recursive: true, mode: 0o700 });
    const st = procStat(pgid);
    const rec: PidRecord = { pgid, ...(st ? { startTime: st.startTime } : {}), ...(cookie ? { cookie } : {}) };
    // Atomic: a worker killed while recording must not leave a torn file that hides the group from its successor.
    await writeFileDurable(this.file(buildId), JSON.stringify(rec), 0o600);
  }
  async remove(buildId: string): Promise<void> {
    await fs.rm(this.file(buildId), { force: true });
  }

  /**
   * Stops every process group a previous run of this worker left behind
   * (best effort) and removes the pid files. A group is killed only when its
   * leader is still the same process (same pid, still group leader, same
   * start time) or, with the leader gone, when processes still carry the
   * group id (the kernel does not reuse a pid while its group lives).
   * With a `clock`, waits (up to ~2 s) until the killed groups are gone.
   * Returns the killed group ids.
   */
  async killLeftovers(logger: Logger, clock?: Clock): Promise<number[]> {
    let names: string[];
    try {
      names = await fs.readdir(this.dir);
    } catch {
      return [];
    }
    const killed: number[] = [];
    for (const name of names) {
      const file = path.join(this.dir, name);
      try {
        const rec = JSON.parse(await fs.readFile(file, 'utf8')) as PidRecord;
        const pgid = rec.pgid;
        if (Number.isInteger(pgid) && pgid > 1 && pgid !== process.pid) {
          const leader = procStat(pgid);
          const leaderOk = leader !== undefined && leader.pgrp === pgid && (!rec.startTime || rec.startTime === leader.startTime);
          const orphans = leader === undefined ? groupMembers(pgid) : [];
          if (leaderOk || orphans.length > 0) {
            if (signalGroup(pgid, 'SIGKILL')) {
              killed.push(pgid);
              logger.warn({ buildId: decodeURIComponent(name), pgid }, 'killed a build process group left behind by a previous run');
            }
          }
        }
        if (typeof rec.cookie === 'string' && rec.cookie.length >= 16) {
          // What left the group (setsid, a double fork) still carries the build's cookie.
          const strays = withCookie(rec.cookie);
          if (signalAll(strays, 'SIGKILL') > 0) {
            logger.warn({ buildId: decodeURIComponent(name), pids: strays }, 'killed build processes left behind by a previous run');
            if (!killed.includes(pgid)) killed.push(pgid);
          }
        }
      } catch (err) {
        logger.warn({ file, err: (err as Error).message }, 'could not check a leftover pid file');
      }
      await fs.rm(file, { force: true });
    }
    // SIGKILL is asynchronous: wait (bounded) until the groups are really gone.
    if (clock) {
      for (let i = 0; i < 200 && killed.some((g) => isAlive(g) || groupMembers(g).length > 0); i++) await clock.sleep(10);
    }
    return killed;
  }
}

export interface SpawnedBuild {
  child: ChildProcess;
  pgid: number;
  /** Resolves when the script's process exited: exit code, or the signal that ended it. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves when the output pipe closed. */
  closed: Promise<void>;
}

/** Where and how a script starts. */
export interface SpawnOptions {
  cwd: string;
  env: NodeJS.ProcessEnv;
  /** Spec `shell` (see shell-command.ts); `sh` when absent. */
  shell?: string | undefined;
}

/**
 * Runs `script` with its shell (`sh -c` by default) in a new process group (detached: the child is
 * its group's leader), stdout and stderr merged into ONE pipe by the shell
 * itself (`exec 2>&1`), so the log keeps the order the script wrote in.
 */
export function spawnScript(script: string, opts: SpawnOptions): SpawnedBuild {
  const child = spawn('/bin/sh', scriptArgs(script, opts.shell), {
    cwd: opts.cwd,
    env: opts.env,
    detached: true,
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
    child.once('error', () => resolve({ code: 127, signal: null }));
  });
  const closed = new Promise<void>((resolve) => {
    if (!child.stdout) return resolve();
    child.stdout.once('close', () => resolve());
  });
  if (child.pid === undefined) {
    return { child, pgid: -1, exited, closed };
  }
  return { child, pgid: child.pid, exited, closed };
}

/**
 * Stops a process group: SIGTERM, then SIGKILL after `graceMs` on the clock
 * unless `exited` settled first. With `graceMs` 0 it sends SIGKILL at once.
 */
export async function stopGroup(pgid: number, exited: Promise<unknown>, graceMs: number, clock: Clock): Promise<void> {
  if (pgid <= 0) return;
  if (graceMs <= 0) {
    signalGroup(pgid, 'SIGKILL');
    return;
  }
  if (!signalGroup(pgid, 'SIGTERM')) return;
  const ac = new AbortController();
  const timedOut = await Promise.race([
    exited.then(() => false),
    clock.sleep(graceMs, ac.signal).then(
      () => true,
      () => false,
    ),
  ]);
  ac.abort();
  // Even when the leader exited in time, children it left in the group get SIGKILL.
  signalGroup(pgid, 'SIGKILL');
  void timedOut;
}

/**
 * How the executor starts and signals build scripts. The default is the
 * real thing (`systemRunner`); the deterministic simulation (packages/sim)
 * injects one whose "processes" run on its fake clock. Group ids a runner
 * hands out that are not positive are never recorded in the pid directory.
 */
export interface ScriptRunner {
  spawnScript(script: string, opts: SpawnOptions): SpawnedBuild;
  signalGroup(pgid: number, signal: NodeJS.Signals): boolean;
  stopGroup(pgid: number, exited: Promise<unknown>, graceMs: number, clock: Clock): Promise<void>;
}

/** Real `sh -c` processes in their own process groups. */
export const systemRunner: ScriptRunner = { spawnScript, signalGroup, stopGroup };
