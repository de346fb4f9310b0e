/**
 * Starts a build's script, in the sandbox or not, and keeps hold of every
 * process it starts, so that nothing survives the build.
 *
 * The first process is a small gate (`/bin/sh`) that waits for one line on
 * its stdin before it execs the build: the worker puts it into the build's
 * cgroup in between, so no process of the build ever starts outside it. A
 * worker running as root starts it as the build user (never root); the
 * script's own first shell then sets the rlimits (limits.ts) and the umask.
 * Stdout and stderr share one pipe (`exec 2>&1` in the gate: bwrap's own
 * errors reach the log too).
 *
 * How the build's processes are found (`members`) and killed (`killAll`):
 * - with a cgroup: its process list, and the kernel's kill of the group;
 * - in the sandbox without one: everything below bwrap's init, whose host
 *   pid bwrap reports (`--info-fd`): in a PID namespace every orphan is
 *   re-parented to that init, and its death makes the kernel kill all of
 *   the namespace (bwrap's `--die-with-parent` kills it when bwrap ends);
 * - shell without one: the process group, the script's descendants and the
 *   processes carrying the build's cookie (tree.ts).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { Readable } from 'node:stream';
import type { Clock } from '@buildfleet/protocol';
import type { BuildCgroup } from './cgroup.js';
import { bwrapArgs, type SandboxMounts } from './bwrap.js';
import { rlimitPrelude, type Limits } from './limits.js';
import { allProcs, COOKIE_VAR, descendants, killUntilGone, procInfo, signalAll, withCookie } from './tree.js';
import type { BuildUser } from './users.js';
import { scriptArgs } from '../shell-command.js';

export interface LaunchSpec {
  script: string;
  /** Spec `shell` (shell-command.ts): `sh` when absent. */
  shell?: string | undefined;
  /** The script's whole environment (the sandbox passes a clean one). */
  env: NodeJS.ProcessEnv;
  /** Host paths of the workspace (the shell executor's working directory) and the build's /tmp. */
  workspace: string;
  tmp: string;
  /** Set when the worker is root: the build runs as this user. */
  runAs?: BuildUser;
  limits: Limits;
  /** The build's cgroup (created by the caller), when the host allows one. */
  cgroup?: BuildCgroup;
  /** Run in bubblewrap: its path and the mounts (without workspace and tmp). */
  sandbox?: { bwrap: string; mounts: Omit<SandboxMounts, 'workspace' | 'tmp'> };
  /** Shell executor without a cgroup: marks the build's processes (tree.ts). */
  cookie?: string;
}

/** A running build's processes. */
export interface LaunchedBuild {
  readonly child: ChildProcess;
  /** Pid of the first process (the gate, then the script or bwrap); -1 when spawning failed. */
  readonly pid: number;
  /** /proc start time of that process, to tell it from a later process with the same pid. */
  readonly startTime: string | undefined;
  /** The first process's exit: exit code, or the signal that ended it. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** The output pipe closed (every process holding it ended). */
  readonly closed: Promise<void>;
  /** Pids of the build's processes now (not bwrap's own). */
  members(): number[];
  /** SIGTERM to every process of the build (the graceful half of a stop). Returns how many. */
  terminate(): number;
  /** SIGKILL to everything the build started; resolves when it is gone. Returns pids that would not die (normally none). */
  killAll(clock: Clock): Promise<number[]>;
}

/** The descriptor bwrap reports its init's pid on (`--info-fd`). */
const INFO_FD = 3;

/** The gate: wait for the worker's go (a line on stdin), merge stderr into stdout, exec the build. */
const GATE = 'read _ || exit 125; exec 2>&1; exec "$@"';

/** The build's first shell inside: rlimits, umask, then the script with its shell (shell-command.ts). */
function innerCommand(prelude: string, script: string, shell: string | undefined): string[] {
  const [, body, ...rest] = scriptArgs(script, shell);
  return ['/bin/sh', '-c', `${prelude ? prelude + '\n' : ''}umask 022\n${body}`, ...rest];
}

/**
 * Starts the build (see the module comment). Spawn errors surface as an
 * `exited` of code 127. Throws when the process cannot be put into the
 * cgroup (it is killed first).
 */
export function launchBuild(spec: LaunchSpec): LaunchedBuild {
  const { cgroup, sandbox, cookie } = spec;
  const prelude = rlimitPrelude(spec.limits, { memory: !cgroup, processes: !cgroup });
  const inner = innerCommand(prelude, spec.script, spec.shell);
  const argv = sandbox
    ? [sandbox.bwrap, ...bwrapArgs({ ...sandbox.mounts, workspace: spec.workspace, tmp: spec.tmp, infoFd: INFO_FD }, inner)]
    : inner;
  const env = cookie ? { ...spec.env, [COOKIE_VAR]: cookie } : spec.env;
  const child = spawn('/bin/sh', ['-c', GATE, 'buildfleet-gate', ...argv], {
    cwd: sandbox ? '/' : spec.workspace,
    env,
    detached: true,
    stdio: sandbox ? ['pipe', 'pipe', 'ignore', 'pipe'] : ['pipe', 'pipe', 'ignore'],
    ...(spec.runAs ? { uid: spec.runAs.uid, gid: spec.runAs.gid } : {}),
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
    child.once('error', () => resolve({ code: 127, signal: null }));
  });
  const closed = new Promise<void>((resolve) => {
    if (!child.stdout) return resolve();
    child.stdout.once('close', () => resolve());
  });
  child.stdin?.on('error', () => undefined);
  const pid = child.pid ?? -1;
  const startTime = pid > 0 ? procInfo(pid)?.startTime : undefined;

  // The sandbox's init (pid 1 of its namespace), as bwrap reports it: every process of the build descends from it.
  let init: { pid: number; startTime: string } | undefined;
  if (sandbox) {
    let info = '';
    const fd = child.stdio[INFO_FD] as Readable | null;
    fd?.on('data', (c: Buffer) => {
      info += c.toString();
      const m = /"child-pid"\s*:\s*(\d+)/.exec(info);
      if (m && !init) {
        const st = procInfo(Number(m[1]))?.startTime;
        if (st) init = { pid: Number(m[1]), startTime: st };
      }
    });
    fd?.on('error', () => undefined);
  }

  if (pid > 0 && cgroup) {
    try {
      cgroup.add(pid);
    } catch (err) {
      process.kill(pid, 'SIGKILL');
      throw err;
    }
  }
  child.stdin?.end('\n');

  const same = (p: { pid: number; startTime: string | undefined } | undefined) =>
    p !== undefined && p.pid > 0 && p.startTime !== undefined && procInfo(p.pid)?.startTime === p.startTime;
  /** Is the first process still the one this launch started? */
  const ours = () => same({ pid, startTime });
  const initAlive = () => (init && same(init) ? init.pid : undefined);

  const members = (): number[] => {
    const procs = allProcs();
    if (cgroup) {
      const own = new Set(sandbox ? [pid, initAlive()] : []);
      return cgroup.procs().filter((p) => !own.has(p));
    }
    if (sandbox) {
      const i = initAlive();
      return i === undefined ? [] : descendants(i, procs);
    }
    const out = new Set<number>(cookie ? withCookie(cookie) : []);
    if (pid > 0) {
      // The group outlives its leader, and the kernel reuses no pid while the group lives.
      const leaderReused = procInfo(pid) !== undefined && !ours();
      for (const p of procs) if (p.pgrp === pid && !leaderReused) out.add(p.pid);
      if (ours()) for (const d of descendants(pid, procs)) out.add(d);
    }
    return [...out];
  };

  return {
    child,
    pid,
    startTime,
    exited,
    closed,
    members,
    terminate: () => signalAll(members(), 'SIGTERM'),
    async killAll(clock: Clock): Promise<number[]> {
      if (cgroup) return cgroup.killAll(clock);
      if (sandbox) {
        // The init's death makes the kernel kill the whole namespace.
        const i = initAlive();
        if (i !== undefined) signalAll([i], 'SIGKILL');
        if (ours()) signalAll([pid], 'SIGKILL');
        return killUntilGone(() => {
          const j = initAlive();
          return j === undefined ? [] : [j, ...descendants(j)];
        }, clock);
      }
      return killUntilGone(() => [...members(), ...(ours() ? [pid] : [])], clock);
    },
  };
}
