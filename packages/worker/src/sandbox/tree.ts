/**
 * Process trees read from Linux's /proc: what a build started, found without
 * native code.
 *
 * - In a PID namespace (the sandbox) every process of the build descends from
 *   the namespace's init, whatever it does (an orphan is re-parented to that
 *   init), so `descendants()` of the sandbox's outer process is the build.
 * - Outside one (the shell executor without a cgroup) a double fork re-parents
 *   a process to the host's init and the tree loses it; the build's processes
 *   then carry a cookie in their environment, the way Jenkins'
 *   ProcessTreeKiller finds them (`withCookie()`). A process that clears its
 *   own environment escapes that net: a cgroup, when the worker may create
 *   one, does not have that hole.
 */
import { readFileSync, readdirSync } from 'node:fs';
import type { Clock } from '@buildfleet/protocol';

/** The fields of /proc/<pid>/stat this module uses. */
export interface ProcInfo {
  pid: number;
  ppid: number;
  pgrp: number;
  /** R, S, D, Z, T, ... */
  state: string;
  /** Start time in clock ticks since boot: with the pid, a process's identity. */
  startTime: string;
}

/** /proc/<pid>/stat of one process, or undefined when it does not exist. */
export function procInfo(pid: number, proc = '/proc'): ProcInfo | undefined {
  let text: string;
  try {
    text = readFileSync(`${proc}/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // The command name may hold spaces and parentheses: split after the last ')'.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return { pid, state: rest[0]!, ppid: Number(rest[1]), pgrp: Number(rest[2]), startTime: rest[19]! };
}

/** Every live (not zombie) process visible in `proc`. */
export function allProcs(proc = '/proc'): ProcInfo[] {
  let names: string[];
  try {
    names = readdirSync(proc);
  } catch {
    return [];
  }
  const out: ProcInfo[] = [];
  for (const n of names) {
    if (!/^\d+$/.test(n)) continue;
    const p = procInfo(Number(n), proc);
    if (p && p.state !== 'Z' && p.state !== 'X') out.push(p);
  }
  return out;
}

/** Pids of every live descendant of `root` (not `root` itself), parents before children. */
export function descendants(root: number, procs: ProcInfo[] = allProcs()): number[] {
  const children = new Map<number, number[]>();
  for (const p of procs) {
    const list = children.get(p.ppid);
    if (list) list.push(p.pid);
    else children.set(p.ppid, [p.pid]);
  }
  const out: number[] = [];
  const queue = [root];
  while (queue.length > 0) {
    for (const c of children.get(queue.shift()!) ?? []) {
      out.push(c);
      queue.push(c);
    }
  }
  return out;
}

/** True while `pid` exists and is not a zombie. */
export function isAlive(pid: number): boolean {
  const p = procInfo(pid);
  return p !== undefined && p.state !== 'Z' && p.state !== 'X';
}

/** Name of the environment variable that marks a shell build's processes. */
export const COOKIE_VAR = 'BUILDFLEET_PROCESS_COOKIE';

/**
 * Pids of live processes whose environment holds `COOKIE_VAR=cookie`
 * (readable for processes of this user, or all when root).
 */
export function withCookie(cookie: string, proc = '/proc'): number[] {
  const needle = Buffer.from(`\0${COOKIE_VAR}=${cookie}\0`);
  const first = Buffer.from(`${COOKIE_VAR}=${cookie}\0`);
  const out: number[] = [];
  for (const p of allProcs(proc)) {
    if (p.pid === process.pid) continue;
    let env: Buffer;
    try {
      env = readFileSync(`${proc}/${p.pid}/environ`);
    } catch {
      continue;
    }
    if (env.includes(needle) || env.subarray(0, first.length).equals(first)) out.push(p.pid);
  }
  return out;
}

/** Sends `signal` to each pid; ignores processes already gone. Returns how many were signalled. */
export function signalAll(pids: readonly number[], signal: NodeJS.Signals): number {
  let n = 0;
  for (const pid of pids) {
    try {
      process.kill(pid, signal);
      n++;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    }
  }
  return n;
}

/**
 * SIGKILLs whatever `find()` returns until it returns nothing (a process may
 * fork while the first ones die), sleeping `pauseMs` between rounds on the
 * clock. Gives up after `rounds`; returns the pids still alive then (empty
 * when all are gone).
 */
export async function killUntilGone(find: () => number[], clock: Clock, rounds = 200, pauseMs = 10): Promise<number[]> {
  let left = find();
  for (let i = 0; i < rounds && left.length > 0; i++) {
    signalAll(left, 'SIGKILL');
    await clock.sleep(pauseMs);
    left = find();
  }
  return left;
}
