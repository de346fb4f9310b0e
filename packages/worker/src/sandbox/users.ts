/**
 * Who a build runs as. A worker running as root never runs a build as root:
 * it runs it as the build user (`BUILDFLEET_BUILD_USER`, default `nobody`),
 * which cannot read the worker's 0700 data directory nor signal the worker.
 * A worker running as an ordinary user runs builds as itself (the sandbox
 * then keeps them away from its files through namespaces).
 */
import { readFileSync } from 'node:fs';

/** A numeric user and group (`name` for messages). */
export interface BuildUser {
  uid: number;
  gid: number;
  name: string;
}

/** Thrown when `BUILDFLEET_BUILD_USER` names no usable user; `message` says why. */
export class BuildUserError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BuildUserError';
  }
}

/** The user and group ids of `/etc/passwd`'s line for `name`, if any. */
function lookupPasswd(name: string, passwd: string): BuildUser | undefined {
  for (const line of passwd.split('\n')) {
    const f = line.split(':');
    if (f[0] === name && f.length >= 4) return { name, uid: Number(f[2]), gid: Number(f[3]) };
  }
  return undefined;
}

/**
 * Resolves `spec`: a user name from `passwd` (the text of /etc/passwd), or
 * `uid` / `uid:gid` numbers. `nobody` falls back to 65534:65534 where
 * /etc/passwd lacks it. Throws BuildUserError for an unknown name or for
 * uid 0 (a build never runs as root).
 */
export function resolveBuildUser(spec: string, passwd?: string): BuildUser {
  let user: BuildUser | undefined;
  const numeric = /^(\d+)(?::(\d+))?$/.exec(spec);
  if (numeric) {
    const uid = Number(numeric[1]);
    user = { uid, gid: numeric[2] !== undefined ? Number(numeric[2]) : uid, name: spec };
  } else {
    let text = passwd;
    if (text === undefined) {
      try {
        text = readFileSync('/etc/passwd', 'utf8');
      } catch {
        text = '';
      }
    }
    user = lookupPasswd(spec, text) ?? (spec === 'nobody' ? { name: 'nobody', uid: 65534, gid: 65534 } : undefined);
    if (!user) throw new BuildUserError(`BUILDFLEET_BUILD_USER: no user ${JSON.stringify(spec)} in /etc/passwd`);
  }
  if (!Number.isInteger(user.uid) || !Number.isInteger(user.gid) || user.uid < 0 || user.gid < 0) {
    throw new BuildUserError(`BUILDFLEET_BUILD_USER: ${JSON.stringify(spec)} has no valid uid/gid`);
  }
  if (user.uid === 0 || user.gid === 0) throw new BuildUserError('BUILDFLEET_BUILD_USER: builds never run as root (uid or gid 0)');
  return user;
}

/** True when this process runs as root (builds then run as the build user). */
export function runningAsRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}
