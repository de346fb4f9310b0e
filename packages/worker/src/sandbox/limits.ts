/**
 * Resource limits of a build: the worker's (BUILDFLEET_LIMIT_*, defaults in
 * the protocol package), lowered by the spec's `limits`, and the setrlimit
 * part of enforcing them.
 *
 * Which mechanism holds which limit (README "Isolation"):
 * - with a build cgroup: memory (the kernel's OOM killer) and processes (refused
 *   forks) per build; CPU time summed over the build, checked by the watcher;
 * - without one: RLIMIT_AS (memory, per process) and RLIMIT_NPROC (processes,
 *   per user: in the sandbox that user exists only in the build's user
 *   namespace, so it counts the build alone);
 * - always: RLIMIT_CPU and RLIMIT_FSIZE per process, disk usage of the
 *   workspace and /tmp checked by the watcher.
 * The rlimits are set by the build's own first shell with `ulimit` (POSIX
 * sh), so the same lines work on the host and in any root filesystem, and
 * are set inside the sandbox's user namespace.
 */
import { DEFAULT_LIMITS, LIMIT_ENV, LIMIT_NAMES, LIMIT_REASONS, type BuildLimits, type LimitName, type LimitReason } from '@buildfleet/protocol';

/** The limits in force for a build: a positive number, or null for "no limit". Units as `BuildLimits`. */
export type Limits = { readonly [K in LimitName]: number | null };

/**
 * The worker's limits: each `BUILDFLEET_LIMIT_*` variable (a non-negative
 * integer; 0 means no limit), else `overrides`, else the default. Throws
 * RangeError naming the variable for anything else.
 */
export function limitsFromEnv(env: Record<string, string | undefined>, overrides: Partial<Record<LimitName, number | null>> = {}): Limits {
  const out = {} as Record<LimitName, number | null>;
  for (const name of LIMIT_NAMES) {
    const raw = env[LIMIT_ENV[name]];
    if (raw !== undefined && raw !== '') {
      const n = Number(raw);
      if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`${LIMIT_ENV[name]} must be a non-negative integer (0: no limit), got ${JSON.stringify(raw)}`);
      out[name] = n === 0 ? null : n;
    } else if (name in overrides) {
      out[name] = overrides[name] ?? null;
    } else {
      out[name] = DEFAULT_LIMITS[name];
    }
  }
  return Object.freeze(out);
}

/** The limits of one build: the spec's where lower than the worker's, never higher. */
export function effectiveLimits(worker: Limits, spec: BuildLimits | undefined): Limits {
  const out = { ...worker } as Record<LimitName, number | null>;
  for (const name of LIMIT_NAMES) {
    const asked = spec?.[name];
    if (asked === undefined) continue;
    const own = worker[name];
    out[name] = own === null ? asked : Math.min(own, asked);
  }
  return Object.freeze(out);
}

/** One line per limit for a build's log, e.g. `memory 512 MiB, processes 64, ...`. */
export function describeLimits(limits: Limits): string {
  const f = (n: number | null, unit: string) => (n === null ? 'none' : `${n}${unit}`);
  return [
    `cpu ${f(limits.cpuSeconds, ' s')}`,
    `memory ${f(limits.memoryMb, ' MiB')}`,
    `processes ${f(limits.processes, '')}`,
    `file size ${f(limits.fileSizeMb, ' MiB')}`,
    `disk ${f(limits.diskMb, ' MiB')}`,
  ].join(', ');
}

/**
 * POSIX sh lines that set the rlimits, to run first in the build's shell.
 * `memory`/`processes`: also set RLIMIT_AS / RLIMIT_NPROC (when no cgroup
 * holds them). Each line that fails leaves a warning in the build log. Units:
 * `ulimit -t` seconds, `-f` 512-byte blocks (POSIX), `-v` KiB; processes are
 * `-u` in bash and `-p` in dash and busybox.
 */
export function rlimitPrelude(limits: Limits, opts: { memory: boolean; processes: boolean }): string {
  const lines: string[] = [];
  const warn = (what: string) => ` || echo "[buildfleet] warning: could not set the ${what} limit" >&2`;
  // Soft below hard, so SIGXCPU (which names the cause) comes before SIGKILL; soft first (a soft limit above the hard one is EINVAL).
  if (limits.cpuSeconds !== null) lines.push(`{ ulimit -S -t ${limits.cpuSeconds} && ulimit -H -t ${limits.cpuSeconds + 5}; }${warn('CPU time')}`);
  if (limits.fileSizeMb !== null) lines.push(`ulimit -f ${limits.fileSizeMb * 2048}${warn('file size')}`);
  if (opts.memory && limits.memoryMb !== null) lines.push(`ulimit -v ${limits.memoryMb * 1024}${warn('memory')}`);
  if (opts.processes && limits.processes !== null) {
    lines.push(`{ ulimit -u ${limits.processes} 2>/dev/null || ulimit -p ${limits.processes}; }${warn('process')}`);
  }
  return lines.join('\n');
}

const SIGNAL_LIMITS: Partial<Record<string, LimitName>> = { SIGXCPU: 'cpuSeconds', SIGXFSZ: 'fileSizeMb' };
// 128 + signal number: how a shell reports a child killed by SIGXCPU (24) or SIGXFSZ (25).
const CODE_LIMITS: Partial<Record<number, LimitName>> = { 152: 'cpuSeconds', 153: 'fileSizeMb' };

/**
 * The rlimit a script's end points at: killed by SIGXCPU (RLIMIT_CPU) or
 * SIGXFSZ (RLIMIT_FSIZE), or exited 152/153, which is how a shell reports a
 * command of it killed so. Undefined for any other end.
 */
export function limitFromExit(exit: { code: number | null; signal: NodeJS.Signals | null }): LimitName | undefined {
  if (exit.signal) return SIGNAL_LIMITS[exit.signal];
  return exit.code === null ? undefined : CODE_LIMITS[exit.code];
}

/** A limit a build exceeded: the build ends `failed` with `reason`, and `message` is its last log line. */
export interface LimitBreach {
  limit: LimitName;
  reason: LimitReason;
  message: string;
}

/** The breach of `limit` with its message. */
export function breach(limit: LimitName, limits: Limits, detail?: string): LimitBreach {
  const value = limits[limit];
  const what: Record<LimitName, string> = {
    cpuSeconds: `CPU time limit reached (${value} CPU seconds)`,
    memoryMb: `memory limit reached (${value} MiB): the kernel's OOM killer ended a process of the build`,
    processes: `process limit reached (${value} processes): a fork was refused`,
    fileSizeMb: `file size limit reached: a process tried to write a file over ${value} MiB`,
    diskMb: `disk limit reached (${value} MiB in the workspace and /tmp)`,
  };
  return { limit, reason: LIMIT_REASONS[limit], message: detail ? `${what[limit]}; ${detail}` : what[limit] };
}
