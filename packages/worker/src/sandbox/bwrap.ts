/**
 * The bubblewrap command line of a sandboxed build (bwrap(1)).
 *
 * What the build sees:
 * - a root made of the host's system directories read-only (`/usr`, `/etc`,
 *   `/opt` and the `/bin`, `/sbin`, `/lib*` links or directories), or of an
 *   operator's root filesystem directory (BUILDFLEET_SANDBOX_ROOTFS). Not the
 *   whole host root: `/home`, `/root`, `/run` (the D-Bus, ssh-agent and
 *   Docker sockets reach through any network namespace), `/var`, `/srv`,
 *   `/mnt`, `/tmp` and wherever the worker keeps its files stay out of sight;
 *   a worker directory or an operator's secret (/etc/buildfleet, a TLS key)
 *   that lies inside a bound directory is covered by an empty tmpfs, a file
 *   by /dev/null;
 * - `/workspace` (the build's workspace, its HOME and working directory) and
 *   a private `/tmp` (also `/var/tmp`), the only writable places; both are
 *   directories of the build on the host, removed after it;
 * - a new `/proc` of its own PID namespace (other processes are invisible),
 *   a minimal read-only `/dev` with a private `/dev/shm`, no `/sys`;
 * - new user, PID, IPC, UTS, cgroup and network namespaces (network only
 *   when the build asks and the worker allows: `--share-net`), uid and gid
 *   1000 inside, no capabilities, `no_new_privs`, nested user namespaces
 *   disabled where bwrap supports it (0.8+);
 * - `--die-with-parent`: if the worker dies, the sandbox dies with it;
 *   `--new-session`: no terminal to inject input into.
 * The environment is the one bwrap is started with: the executor passes a
 * clean one (spec.env, BUILDFLEET_BUILD_*, PATH, HOME, LANG).
 */
import { lstatSync, readdirSync, readlinkSync, realpathSync, statSync } from 'node:fs';
import path from 'node:path';

/** A top-level entry of the sandbox's root: a directory bound read-only, or a symlink. */
export type RootEntry = { name: string; source: string } | { name: string; symlink: string };

/** The host directories a sandbox sees when no root filesystem is configured. */
export const HOST_SYSTEM_DIRS = ['/usr', '/etc', '/opt', '/bin', '/sbin', '/lib', '/lib32', '/lib64', '/libx32'] as const;

/** Entries of a root filesystem the sandbox always makes itself. */
const OWN_MOUNTS = new Set(['proc', 'dev', 'sys', 'tmp', 'workspace']);

/** Where the build's workspace appears in the sandbox; also its HOME. */
export const SANDBOX_WORKSPACE = '/workspace';
/** The build's uid and gid inside the sandbox. */
export const SANDBOX_UID = 1000;

/**
 * The top-level entries of the sandbox's root: with `rootfs`, every entry of
 * that directory (an operator's image: nothing of the host) but the ones the
 * sandbox mounts itself; without, the host's system directories that exist.
 */
export function rootEntries(rootfs?: string): RootEntry[] {
  const out: RootEntry[] = [];
  const names = rootfs ? readdirSync(rootfs).filter((n) => !OWN_MOUNTS.has(n)) : HOST_SYSTEM_DIRS.map((d) => d.slice(1));
  const base = rootfs ?? '/';
  for (const name of names.sort()) {
    const source = path.join(base, name);
    let st;
    try {
      st = lstatSync(source);
    } catch {
      continue;
    }
    if (st.isSymbolicLink()) out.push({ name: `/${name}`, symlink: readlinkSync(source) });
    else if (st.isDirectory()) out.push({ name: `/${name}`, source });
    else if (st.isFile() && rootfs) out.push({ name: `/${name}`, source });
  }
  return out;
}

/** What one sandboxed build needs besides its command. */
export interface SandboxMounts {
  root: readonly RootEntry[];
  /**
   * Sandbox paths of directories to cover with an empty tmpfs where a bound
   * directory would show them (worker data, other workspaces, /etc/buildfleet);
   * `hiddenPaths` makes them from host paths.
   */
  hide: readonly string[];
  /** Sandbox paths of files to cover with /dev/null, read as empty (a CA file, a TLS key, a secrets key file). */
  hideFiles?: readonly string[];
  /** Host directory mounted read-write at /workspace. */
  workspace: string;
  /** Host directory mounted read-write at /tmp and /var/tmp. */
  tmp: string;
  /** Share the host's network (the build asked and the worker allows). */
  network: boolean;
  /** bwrap supports `--disable-userns` (0.8+). */
  disableUserns: boolean;
  /** Extra read-only binds `[source, dest]` (e.g. resolv.conf's target when the network is shared). */
  extraBinds?: ReadonlyArray<readonly [string, string]>;
  /** A file descriptor bwrap writes `{"child-pid": N}` to: the host pid of the namespace's init. */
  infoFd?: number;
}

/** Is `p` (absolute, resolved) inside the tree a bound entry shows? */
function shownBy(root: readonly RootEntry[], p: string): boolean {
  return root.some((e) => 'source' in e && (p === e.name || p.startsWith(e.name + '/')));
}

/**
 * The bwrap arguments (without the program) that run `command` in the
 * sandbox. Pure: the paths must already be absolute and resolved.
 */
export function bwrapArgs(m: SandboxMounts, command: readonly string[]): string[] {
  const a: string[] = ['--unshare-all', '--unshare-user'];
  if (m.network) a.push('--share-net');
  if (m.disableUserns) a.push('--disable-userns');
  a.push('--uid', String(SANDBOX_UID), '--gid', String(SANDBOX_UID), '--hostname', 'buildfleet');
  a.push('--die-with-parent', '--new-session');
  if (m.infoFd !== undefined) a.push('--info-fd', String(m.infoFd));
  for (const e of m.root) {
    if ('symlink' in e) a.push('--symlink', e.symlink, e.name);
    else a.push('--ro-bind', e.source, e.name);
  }
  for (const [src, dest] of m.extraBinds ?? []) a.push('--ro-bind-try', src, dest);
  // /dev read-only but for a private /dev/shm (POSIX shared memory), gone with the sandbox.
  a.push('--proc', '/proc', '--dev', '/dev', '--tmpfs', '/dev/shm', '--remount-ro', '/dev');
  // Mount points in a read-only bind cannot be created: only paths that exist there are covered.
  for (const h of m.hide) if (shownBy(m.root, h)) a.push('--tmpfs', h);
  // /dev/null, as in the sandbox's own /dev: a plain bind is `nodev`, where opening it is refused.
  for (const f of m.hideFiles ?? []) if (shownBy(m.root, f)) a.push('--dev-bind', '/dev/null', f);
  a.push('--bind', m.workspace, SANDBOX_WORKSPACE, '--bind', m.tmp, '/tmp', '--bind', m.tmp, '/var/tmp');
  a.push('--remount-ro', '/', '--chdir', SANDBOX_WORKSPACE, '--');
  return [...a, ...command];
}

/**
 * Where the sandbox would show host paths that must stay out of a build's
 * sight: each is resolved (symlinks followed: what a build would read is the
 * target) and mapped to its place under the bound entry that shows it.
 * Paths that do not exist, or that no bound entry shows, need nothing (a
 * read-only bind cannot get a mount point anyway); paths inside a hidden
 * directory are covered by it. Read afresh for each build, so a file made
 * after the worker started is hidden too.
 */
export function hiddenPaths(root: readonly RootEntry[], hostPaths: readonly string[]): { dirs: string[]; files: string[] } {
  const found: Array<{ at: string; dir: boolean }> = [];
  for (const p of hostPaths) {
    let real: string;
    let dir: boolean;
    try {
      real = realpathSync(p);
      dir = statSync(real).isDirectory();
    } catch {
      continue;
    }
    for (const e of root) {
      if (!('source' in e) || !(real === e.source || real.startsWith(e.source + '/'))) continue;
      found.push({ at: e.name + real.slice(e.source.length), dir });
    }
  }
  const dirs = [...new Set(found.filter((f) => f.dir).map((f) => f.at))];
  const inside = (p: string) => dirs.some((d) => p !== d && p.startsWith(d + '/'));
  return {
    dirs: dirs.filter((d) => !inside(d)),
    files: [...new Set(found.filter((f) => !f.dir && !inside(f.at)).map((f) => f.at))],
  };
}

/**
 * With the network shared, `/etc/resolv.conf` must resolve: where it is a
 * symlink out of the bound directories (systemd-resolved's
 * /run/systemd/resolve/stub-resolv.conf), its target is bound where the
 * link points. Returns those binds.
 */
export function resolvConfBinds(root: readonly RootEntry[], rootfs?: string): Array<[string, string]> {
  if (rootfs) return [];
  let real: string;
  try {
    real = realpathSync('/etc/resolv.conf');
  } catch {
    return [];
  }
  return shownBy(root, real) ? [] : [[real, real]];
}
