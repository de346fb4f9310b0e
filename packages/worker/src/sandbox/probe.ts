/**
 * Can this host run sandboxed builds? Found out the only reliable way: by
 * starting a sandbox exactly as a build would (same namespaces, same user)
 * and running `/bin/sh -c 'exit 0'` in it. When that fails, the kernel
 * settings that commonly forbid user namespaces are read to say how to fix
 * it (a sysctl to set, the package to install).
 */
import { spawnSync } from 'node:child_process';
import { accessSync, chownSync, constants, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { bwrapArgs, rootEntries } from './bwrap.js';
import type { BuildUser } from './users.js';

/** The outcome of a probe: how to run bwrap, or what is missing and how to fix it. */
export type SandboxProbe =
  | { ok: true; bwrap: string; version: string; disableUserns: boolean }
  | { ok: false; problem: string; fix: string };

export interface ProbeOptions {
  /** `bwrap` (searched in PATH) or a path to it. */
  bwrap: string;
  /** Root filesystem directory, when builds use one instead of the host's system directories. */
  rootfs?: string;
  /** The user builds run as when this process is root. */
  runAs?: BuildUser;
  /** A directory the probe may create its scratch workspace in (reachable by `runAs`). */
  scratchDir: string;
  /** Where the kernel settings are read (tests point it elsewhere). */
  procSys?: string;
  /** PATH to search (default: this process's). */
  searchPath?: string;
}

const INSTALL_FIX = 'install bubblewrap: apt-get install bubblewrap (Debian, Ubuntu), dnf install bubblewrap (Fedora), apk add bubblewrap (Alpine)';

/** The absolute path of an executable `name` (a path, or looked up in `searchPath`), or undefined. */
export function findExecutable(name: string, searchPath = process.env.PATH ?? ''): string | undefined {
  const candidates = name.includes('/') ? [path.resolve(name)] : [...searchPath.split(':').filter(Boolean), '/usr/bin', '/usr/local/bin'].map((d) => path.join(d, name));
  for (const c of candidates) {
    try {
      accessSync(c, constants.X_OK);
      return c;
    } catch {
      // next
    }
  }
  return undefined;
}

function readSysctl(procSys: string, name: string): string | undefined {
  try {
    return readFileSync(path.join(procSys, ...name.split('.')), 'utf8').trim();
  } catch {
    return undefined;
  }
}

/**
 * How to let unprivileged processes create user namespaces here, from the
 * kernel settings that forbid it; undefined when none of them does.
 */
export function userNamespaceFix(procSys = '/proc/sys'): string | undefined {
  const persist = (setting: string) => `sysctl -w ${setting} (keep it across reboots: echo '${setting}' > /etc/sysctl.d/90-buildfleet.conf)`;
  if (readSysctl(procSys, 'user.max_user_namespaces') === '0') return persist('user.max_user_namespaces=15000');
  if (readSysctl(procSys, 'kernel.unprivileged_userns_clone') === '0') return persist('kernel.unprivileged_userns_clone=1');
  if (readSysctl(procSys, 'kernel.apparmor_restrict_unprivileged_userns') === '1') {
    return `${persist('kernel.apparmor_restrict_unprivileged_userns=0')}, or allow bwrap through an AppArmor profile (Ubuntu 24.04 and later)`;
  }
  return undefined;
}

/** How to fix what bwrap said when the trial sandbox failed. */
function fixFor(said: string, o: ProbeOptions, procSys: string): string {
  if (/can't find source path/i.test(said)) {
    return `the build user${o.runAs ? ` (${o.runAs.name})` : ''} must be able to reach the workspace directory: give it and its parents mode 0711 or wider`;
  }
  const userns = userNamespaceFix(procSys);
  if (userns) return userns;
  if (/namespace|uid map|operation not permitted/i.test(said)) {
    return 'allow unprivileged user namespaces (in a container: start it with a seccomp profile that allows creating namespaces, e.g. --security-opt seccomp=unconfined)';
  }
  if (o.rootfs) return `check BUILDFLEET_SANDBOX_ROOTFS=${o.rootfs}: it must be a root filesystem with /bin/sh (README "Isolation")`;
  return 'see the message of bwrap above';
}

/**
 * Probes the host (see the module comment). Never throws. Takes some tens
 * of milliseconds; call it once at start-up.
 */
export function probeSandbox(o: ProbeOptions): SandboxProbe {
  const procSys = o.procSys ?? '/proc/sys';
  const bwrap = findExecutable(o.bwrap, o.searchPath);
  if (!bwrap) return { ok: false, problem: `bubblewrap (${o.bwrap}) was not found`, fix: INSTALL_FIX };

  const ids = o.runAs ? { uid: o.runAs.uid, gid: o.runAs.gid } : {};
  const help = spawnSync(bwrap, ['--help'], { encoding: 'utf8', timeout: 20_000, ...ids });
  const version = spawnSync(bwrap, ['--version'], { encoding: 'utf8', timeout: 20_000, ...ids });
  if (help.error || version.status !== 0) {
    return { ok: false, problem: `${bwrap} does not run (${help.error?.message ?? version.stderr.trim()})`, fix: INSTALL_FIX };
  }
  const disableUserns = help.stdout.includes('--disable-userns');

  let scratch: string | undefined;
  try {
    scratch = mkdtempSync(path.join(o.scratchDir, 'probe-'));
    const ws = path.join(scratch, 'workspace');
    const tmp = path.join(scratch, 'tmp');
    for (const d of [ws, tmp]) mkdirSync(d);
    if (o.runAs) for (const d of [scratch, ws, tmp]) chownSync(d, o.runAs.uid, o.runAs.gid);
    const args = bwrapArgs(
      { root: rootEntries(o.rootfs), hide: [], workspace: ws, tmp, network: false, disableUserns },
      ['/bin/sh', '-c', 'exit 0'],
    );
    const run = spawnSync(bwrap, args, { encoding: 'utf8', timeout: 20_000, cwd: '/', env: { PATH: '/usr/bin:/bin' }, ...ids });
    if (run.status === 0) return { ok: true, bwrap, version: version.stdout.trim(), disableUserns };
    const said = (run.stderr || run.error?.message || `exit ${run.status ?? run.signal}`).trim();
    return { ok: false, problem: `bubblewrap cannot create a sandbox here: ${said}`, fix: fixFor(said, o, procSys) };
  } catch (err) {
    return { ok: false, problem: `the sandbox probe failed: ${(err as Error).message}`, fix: 'check that the workspace directory is writable' };
  } finally {
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  }
}
