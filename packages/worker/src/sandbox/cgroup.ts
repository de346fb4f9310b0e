/**
 * One control group per build, where the worker may create them: it holds
 * every process the build starts (whatever it does: double fork, setsid,
 * nohup), caps its memory and process count, counts its CPU time, and tells
 * which limit the kernel enforced (OOM kills, refused forks).
 *
 * cgroup v2 (unified) when the worker's own cgroup offers the `memory` and
 * `pids` controllers, else cgroup v1 when the `memory` and `pids`
 * hierarchies are mounted; both only where this process may create cgroups
 * below its own (root, or a v2 subtree delegated to its user, e.g. systemd's
 * `Delegate=yes`). Build cgroups live in `<own cgroup>/buildfleet-<key>/`,
 * `key` naming this worker, so a restarted worker finds and kills what a
 * previous run of itself left behind and nobody else's.
 *
 * Kernel interfaces: Documentation/admin-guide/cgroup-v2.rst (memory.max,
 * memory.swap.max, memory.oom.group, memory.events, pids.max, pids.events,
 * cpu.stat, cgroup.kill, cgroup.procs) and admin-guide/cgroup-v1/
 * (memory.limit_in_bytes, memory.memsw.limit_in_bytes, memory.oom_control,
 * pids.max, pids.events, cpuacct.usage, freezer.state).
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, rmdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Clock } from '@buildfleet/protocol';
import { killUntilGone, signalAll } from './tree.js';

/** The controllers a build cgroup uses; v1 mounts each in a hierarchy of its own (or shared). */
const V1_CONTROLLERS = ['memory', 'pids', 'cpuacct', 'freezer'] as const;
type V1Controller = (typeof V1_CONTROLLERS)[number];

/** Where and how this worker creates build cgroups. */
export type CgroupHost =
  | { version: 2; parent: string }
  | { version: 1; parents: Partial<Record<V1Controller, string>> };

/** Files the detection reads; tests point them at a fake cgroup tree. */
export interface CgroupSources {
  /** Text of /proc/self/mountinfo. */
  mountinfo: string;
  /** Text of /proc/self/cgroup. */
  selfCgroup: string;
  /** This process's pid (moved into a leaf on v2 when its cgroup must stay process-free). */
  pid: number;
}

interface Mount {
  root: string;
  point: string;
  fstype: string;
  superOptions: string[];
}

function parseMountinfo(text: string): Mount[] {
  const out: Mount[] = [];
  for (const line of text.split('\n')) {
    const dash = line.indexOf(' - ');
    if (dash < 0) continue;
    const left = line.slice(0, dash).split(' ');
    const right = line.slice(dash + 3).split(' ');
    const unescape = (s: string) => s.replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    out.push({ root: unescape(left[3] ?? '/'), point: unescape(left[4] ?? ''), fstype: right[0] ?? '', superOptions: (right[2] ?? '').split(',') });
  }
  return out;
}

/** The directory of cgroup `cgPath` in `mount` (a mount may show a subtree only). */
function dirIn(mount: Mount, cgPath: string): string | undefined {
  const root = mount.root === '/' ? '' : mount.root;
  if (root && cgPath !== root && !cgPath.startsWith(root + '/')) return undefined;
  return path.join(mount.point, cgPath.slice(root.length));
}

function readText(file: string): string | undefined {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}

/** `key value` lines (memory.events, pids.events, cpu.stat, memory.oom_control) as numbers. */
export function parseKeyed(text: string | undefined): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of (text ?? '').split('\n')) {
    const [k, v] = line.trim().split(/\s+/);
    if (k && v !== undefined && /^\d+$/.test(v)) out[k] = Number(v);
  }
  return out;
}

function errText(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? (err as Error).message;
}

/**
 * Finds out whether this process may create build cgroups and prepares the
 * parent `buildfleet-<key>` (created once, kept across restarts). Never
 * throws: `{ok: false, reason}` says why not.
 */
export function setupCgroups(
  key: string,
  sources: CgroupSources = {
    mountinfo: readText('/proc/self/mountinfo') ?? '',
    selfCgroup: readText('/proc/self/cgroup') ?? '',
    pid: process.pid,
  },
): { ok: true; host: CgroupHost } | { ok: false; reason: string } {
  const mounts = parseMountinfo(sources.mountinfo);
  const own = new Map<string, string>();
  for (const line of sources.selfCgroup.split('\n')) {
    const m = /^(\d+):([^:]*):(.*)$/.exec(line.trim());
    if (!m) continue;
    if (m[1] === '0' && m[2] === '') own.set('', m[3]!);
    for (const c of m[2]!.split(',')) if (c) own.set(c, m[3]!);
  }
  const name = `buildfleet-${key}`;
  const reasons: string[] = [];

  // cgroup v2, when its memory and pids controllers are there.
  const v2mount = mounts.find((m) => m.fstype === 'cgroup2');
  const v2own = own.get('');
  if (v2mount && v2own !== undefined) {
    const dir = dirIn(v2mount, v2own);
    const available = dir ? (readText(path.join(dir, 'cgroup.controllers')) ?? '').trim().split(/\s+/) : [];
    if (dir && available.includes('memory') && available.includes('pids')) {
      const r = setupV2(dir, name, available.includes('cpu'), sources.pid);
      if (r.ok) return { ok: true, host: { version: 2, parent: r.parent } };
      reasons.push(r.reason);
    } else {
      reasons.push(`cgroup v2 at ${v2mount.point} offers no memory and pids controllers here`);
    }
  }

  // cgroup v1: a hierarchy per controller (memory and pids needed, cpuacct and freezer used when there).
  const parents: Partial<Record<V1Controller, string>> = {};
  for (const c of V1_CONTROLLERS) {
    const mount = mounts.find((m) => m.fstype === 'cgroup' && m.superOptions.includes(c));
    const ownPath = own.get(c);
    if (!mount || ownPath === undefined) continue;
    const dir = dirIn(mount, ownPath);
    if (!dir) continue;
    const parent = path.join(dir, name);
    try {
      mkdirSync(parent, { recursive: true, mode: 0o755 });
      parents[c] = parent;
    } catch (err) {
      reasons.push(`cannot create ${parent} (${errText(err)})`);
    }
  }
  if (parents.memory && parents.pids) return { ok: true, host: { version: 1, parents } };
  if (!mounts.some((m) => m.fstype === 'cgroup')) reasons.push('no cgroup v1 hierarchies are mounted');
  else if (!reasons.some((r) => r.startsWith('cannot create'))) reasons.push('the cgroup v1 memory and pids hierarchies are not both mounted');
  return { ok: false, reason: reasons.join('; ') };
}

function setupV2(own: string, name: string, cpu: boolean, pid: number): { ok: true; parent: string } | { ok: false; reason: string } {
  const controllers = cpu ? '+memory +pids +cpu' : '+memory +pids';
  const enable = (dir: string) => writeFileSync(path.join(dir, 'cgroup.subtree_control'), controllers);
  try {
    try {
      enable(own);
    } catch (err) {
      // "No internal processes": a non-root cgroup that hands controllers to
      // its children may hold no process itself. Move this worker into a leaf
      // of its own (what systemd's Delegate=yes expects a service to do).
      if ((err as NodeJS.ErrnoException).code !== 'EBUSY') throw err;
      const leaf = path.join(own, `${name}-worker`);
      mkdirSync(leaf, { recursive: true });
      writeFileSync(path.join(leaf, 'cgroup.procs'), String(pid));
      try {
        enable(own);
      } catch (err2) {
        if ((err2 as NodeJS.ErrnoException).code === 'EBUSY') {
          return { ok: false, reason: `cgroup v2: ${own} holds other processes; run the worker in a cgroup of its own (systemd: Delegate=yes)` };
        }
        throw err2;
      }
    }
    const parent = path.join(own, name);
    mkdirSync(parent, { recursive: true });
    enable(parent);
    return { ok: true, parent };
  } catch (err) {
    return { ok: false, reason: `cgroup v2: cannot create cgroups below ${own} (${errText(err)})` };
  }
}

/** What the kernel enforced on a build cgroup so far. */
export interface CgroupEvents {
  /** Processes the OOM killer ended because the memory limit was reached. */
  oomKills: number;
  /** Forks refused because the process limit was reached. */
  pidsMax: number;
}

/** The cgroup of one build (one directory per v1 hierarchy, or one v2 directory). */
export class BuildCgroup {
  private constructor(
    readonly host: CgroupHost,
    /** controller → directory (v2: the same directory for every key). */
    private readonly dirs: Partial<Record<V1Controller, string>>,
  ) {}

  /** The directories, for messages and tests. */
  get paths(): string[] {
    return [...new Set(Object.values(this.dirs))];
  }

  /**
   * Creates the cgroup `name` below this worker's parent with the given
   * limits (null: none) and returns it. Limits the host cannot apply
   * (v1 without swap accounting) are skipped. Throws the file system's error
   * when the cgroup cannot be created.
   */
  static create(host: CgroupHost, name: string, limits: { memoryMb: number | null; processes: number | null }): BuildCgroup {
    const bytes = limits.memoryMb === null ? null : limits.memoryMb * 1024 * 1024;
    if (host.version === 2) {
      const dir = path.join(host.parent, name);
      mkdirSync(dir, { recursive: true });
      const cg = new BuildCgroup(host, { memory: dir, pids: dir, cpuacct: dir, freezer: dir });
      if (bytes !== null) {
        writeFileSync(path.join(dir, 'memory.max'), String(bytes));
        // Swap would let a build exceed its memory limit by as much again; the whole group goes on OOM.
        if (existsSync(path.join(dir, 'memory.swap.max'))) writeFileSync(path.join(dir, 'memory.swap.max'), '0');
        if (existsSync(path.join(dir, 'memory.oom.group'))) writeFileSync(path.join(dir, 'memory.oom.group'), '1');
      }
      if (limits.processes !== null) writeFileSync(path.join(dir, 'pids.max'), String(limits.processes));
      return cg;
    }
    const dirs: Partial<Record<V1Controller, string>> = {};
    for (const [c, parent] of Object.entries(host.parents) as Array<[V1Controller, string]>) {
      const dir = path.join(parent, name);
      mkdirSync(dir, { recursive: true });
      dirs[c] = dir;
    }
    const cg = new BuildCgroup(host, dirs);
    if (bytes !== null && dirs.memory) {
      writeFileSync(path.join(dirs.memory, 'memory.limit_in_bytes'), String(bytes));
      // memsw (memory + swap) exists only with swap accounting; it must not be below the memory limit.
      const memsw = path.join(dirs.memory, 'memory.memsw.limit_in_bytes');
      if (existsSync(memsw)) {
        try {
          writeFileSync(memsw, String(bytes));
        } catch {
          // Swap accounting off at run time: the memory limit alone holds.
        }
      }
    }
    if (limits.processes !== null && dirs.pids) writeFileSync(path.join(dirs.pids, 'pids.max'), String(limits.processes));
    return cg;
  }

  /** Moves process `pid` (and the threads of it) into this cgroup, in every hierarchy. */
  add(pid: number): void {
    for (const dir of this.paths) writeFileSync(path.join(dir, 'cgroup.procs'), String(pid));
  }

  /** Pids in the cgroup now (zombies excluded by the kernel). */
  procs(): number[] {
    const dir = this.dirs.pids ?? this.paths[0];
    if (!dir) return [];
    return (readText(path.join(dir, 'cgroup.procs')) ?? '')
      .split('\n')
      .filter((l) => /^\d+$/.test(l))
      .map(Number);
  }

  /** CPU time of every process the build ran, in seconds; undefined where not accounted (v1 without cpuacct). */
  cpuSeconds(): number | undefined {
    if (this.host.version === 2) {
      const usec = parseKeyed(readText(path.join(this.dirs.memory!, 'cpu.stat'))).usage_usec;
      return usec === undefined ? undefined : usec / 1e6;
    }
    if (!this.dirs.cpuacct) return undefined;
    const ns = readText(path.join(this.dirs.cpuacct, 'cpuacct.usage'));
    return ns === undefined ? undefined : Number(ns.trim()) / 1e9;
  }

  /** What the kernel enforced so far (counters only grow). */
  events(): CgroupEvents {
    if (this.host.version === 2) {
      const dir = this.dirs.memory!;
      return {
        oomKills: parseKeyed(readText(path.join(dir, 'memory.events'))).oom_kill ?? 0,
        pidsMax: parseKeyed(readText(path.join(dir, 'pids.events'))).max ?? 0,
      };
    }
    const oom = this.dirs.memory ? parseKeyed(readText(path.join(this.dirs.memory, 'memory.oom_control'))) : {};
    const pids = this.dirs.pids ? parseKeyed(readText(path.join(this.dirs.pids, 'pids.events'))) : {};
    return { oomKills: oom.oom_kill ?? 0, pidsMax: pids.max ?? 0 };
  }

  /**
   * Kills every process in the cgroup and waits (on the clock, bounded) until
   * none is left. v2: `cgroup.kill`; v1: the freezer stops the group first so
   * nothing forks while it is being killed (a kill loop without it). Returns
   * the pids still there when it gave up (normally none).
   */
  async killAll(clock: Clock): Promise<number[]> {
    if (this.host.version === 2) {
      const kill = path.join(this.dirs.memory!, 'cgroup.kill');
      if (existsSync(kill)) {
        try {
          writeFileSync(kill, '1');
        } catch {
          // An older kernel without cgroup.kill: the loop below.
        }
      }
      return killUntilGone(() => this.procs(), clock);
    }
    const freezer = this.dirs.freezer ? path.join(this.dirs.freezer, 'freezer.state') : undefined;
    if (freezer && this.procs().length > 0) {
      try {
        writeFileSync(freezer, 'FROZEN');
        for (let i = 0; i < 100 && readText(freezer)?.trim() === 'FREEZING'; i++) await clock.sleep(5);
        signalAll(this.procs(), 'SIGKILL');
      } finally {
        // A frozen process cannot die: thaw so the SIGKILLs take effect.
        writeFileSync(freezer, 'THAWED');
      }
    }
    return killUntilGone(() => this.procs(), clock);
  }

  /** Removes the (empty) cgroup; a cgroup still holding processes stays (logged by the caller). */
  remove(): void {
    for (const dir of this.paths) {
      try {
        rmdirSync(dir);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
  }

  /** The build cgroups a previous run of this worker left behind. */
  static leftovers(host: CgroupHost): BuildCgroup[] {
    const parents = host.version === 2 ? { memory: host.parent } : host.parents;
    const names = new Set<string>();
    for (const parent of Object.values(parents)) {
      try {
        for (const e of readdirSync(parent, { withFileTypes: true })) if (e.isDirectory()) names.add(e.name);
      } catch {
        // No parent yet: nothing left behind.
      }
    }
    return [...names].map((n) => {
      if (host.version === 2) {
        const dir = path.join(host.parent, n);
        return new BuildCgroup(host, { memory: dir, pids: dir, cpuacct: dir, freezer: dir });
      }
      const dirs: Partial<Record<V1Controller, string>> = {};
      for (const [c, parent] of Object.entries(host.parents) as Array<[V1Controller, string]>) {
        if (existsSync(path.join(parent, n))) dirs[c] = path.join(parent, n);
      }
      return new BuildCgroup(host, dirs);
    });
  }
}

/**
 * At a clean stop, once every build has ended: removes this worker's empty
 * build cgroups, then its parent `buildfleet-<key>` directories (one per v1
 * hierarchy, or the v2 one), so a stopped worker leaves nothing in the
 * cgroup tree. (On v2 the leaf a worker moved itself into stays: it is
 * still in it.) Returns the directories that stayed because a process is
 * still in them; the next start kills those. Never throws.
 */
export function releaseCgroups(host: CgroupHost): string[] {
  for (const cg of BuildCgroup.leftovers(host)) {
    try {
      cg.remove();
    } catch {
      // Busy: its parent stays too, reported below.
    }
  }
  const stayed: string[] = [];
  for (const dir of new Set(host.version === 2 ? [host.parent] : Object.values(host.parents))) {
    try {
      rmdirSync(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') stayed.push(dir);
    }
  }
  return stayed;
}

/** One line for logs and the README's "which limit holds where". */
export function describeCgroupHost(host: CgroupHost): string {
  if (host.version === 2) return `cgroup v2 (${host.parent})`;
  return `cgroup v1 (${Object.entries(host.parents)
    .map(([c, p]) => `${c}: ${p}`)
    .join(', ')})`;
}
