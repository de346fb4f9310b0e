/**
 * The worker's identity file, `<dataDir>/worker/identity.json`: who this
 * worker is to the controller. Written atomically and durably
 * (`writeFileDurable`, mode 0600) so a crash leaves the old or the new file,
 * never a torn one. While a worker runs it holds the identity's lock
 * (`IdentityLock`), so a second worker started on the same data directory by
 * mistake is refused at once instead of taking the identity over.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import type { Clock } from '@buildfleet/protocol';
import { writeFileDurable } from '@buildfleet/protocol/node';

/**
 * `workerId` + `workerSecret` once registered; `registrationId` is saved
 * before a new registration is sent, so a retry after a lost answer reuses it
 * (docs/protocol.md "Workers", case 1).
 */
export interface Identity {
  workerId?: string;
  workerSecret?: string;
  registrationId?: string;
}

/**
 * The identity file can be read by other users (group or other permission
 * bits): its worker secret is as good as the worker. Refused like ssh
 * refuses a private key others can read; `message` says how to fix it.
 */
export class IdentityPermissionError extends Error {
  constructor(
    readonly file: string,
    readonly mode: number,
  ) {
    super(
      `${file} is readable by other users (mode ${(mode & 0o777).toString(8).padStart(4, '0')}): it holds this worker's secret. ` +
        `Run "chmod 600 ${file}" (and consider the worker secret leaked: delete the worker, then remove the file to register anew)`,
    );
    this.name = 'IdentityPermissionError';
  }
}

/**
 * The identity file is not a JSON object (a torn copy, an edit gone wrong);
 * `message` names the file and the two ways out.
 */
export class IdentityCorruptError extends Error {
  constructor(
    readonly file: string,
    why: string,
  ) {
    super(
      `${file} is corrupt (${why}): restore it from a backup to keep this worker, ` +
        `or remove it to register as a new worker (then delete the old worker on the controller)`,
    );
    this.name = 'IdentityCorruptError';
  }
}

export class IdentityStore {
  readonly file: string;
  constructor(stateDir: string) {
    this.file = path.join(stateDir, 'identity.json');
  }

  /**
   * The saved identity, or `{}` when there is none. Throws
   * IdentityPermissionError when group or others may read or write the file,
   * IdentityCorruptError when it is not a JSON object, and the fs error of an
   * unreadable one.
   */
  async load(): Promise<Identity> {
    let text: string;
    let fh: fs.FileHandle;
    try {
      fh = await fs.open(this.file, 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
      throw err;
    }
    try {
      // Checked on the open descriptor: the file read is the file checked.
      const { mode } = await fh.stat();
      if ((mode & 0o077) !== 0) throw new IdentityPermissionError(this.file, mode);
      text = await fh.readFile('utf8');
    } finally {
      await fh.close();
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (err) {
      throw new IdentityCorruptError(this.file, (err as Error).message);
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new IdentityCorruptError(this.file, 'not a JSON object');
    const out: Identity = {};
    const p = parsed as Record<string, unknown>;
    if (typeof p.workerId === 'string') out.workerId = p.workerId;
    if (typeof p.workerSecret === 'string') out.workerSecret = p.workerSecret;
    if (typeof p.registrationId === 'string') out.registrationId = p.registrationId;
    return out;
  }

  /** Replaces the identity file atomically and durably (mode 0600). */
  async save(identity: Identity): Promise<void> {
    await fs.mkdir(path.dirname(this.file), { recursive: true, mode: 0o700 });
    await writeFileDurable(this.file, JSON.stringify(identity, null, 2) + '\n', 0o600);
  }
}

/** Another live process holds this identity's lock; `pid` names it when it answered. */
export class IdentityLockedError extends Error {
  constructor(
    readonly stateDir: string,
    readonly pid: number | undefined,
  ) {
    super(
      `another buildfleet worker (${pid === undefined ? 'pid unknown' : `pid ${pid}`}) is running on the data directory ${path.dirname(stateDir)} ` +
        `(its identity is ${path.join(stateDir, 'identity.json')}); each worker needs a data directory of its own (BUILDFLEET_DATA_DIR or --data-dir)`,
    );
    this.name = 'IdentityLockedError';
  }
}

/**
 * The lock a running worker holds on its identity: a listening Unix socket
 * in Linux's abstract namespace, named after the state directory's real
 * path. The kernel lets one process bind a name and frees it when that
 * process dies however it dies, so a lock is never stale and taking it is
 * one atomic step; a newcomer connects to learn the holder's pid for its
 * message. (Abstract sockets are per network namespace: two workers in
 * different containers sharing one volume are not stopped by this; the
 * controller's IDENTITY_CONFLICT still is.)
 */
export class IdentityLock {
  private constructor(private readonly server: net.Server | undefined) {}

  /** Takes the lock of `stateDir` (created if missing). Throws IdentityLockedError while a live process holds it. */
  static async acquire(stateDir: string, clock: Clock): Promise<IdentityLock> {
    await fs.mkdir(stateDir, { recursive: true, mode: 0o700 });
    const name = lockName(await fs.realpath(stateDir));
    if (name === undefined) return new IdentityLock(undefined);
    const server = net.createServer((socket) => socket.end(JSON.stringify({ pid: process.pid }) + '\n'));
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ path: name, exclusive: true }, () => resolve());
      });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err;
      throw new IdentityLockedError(stateDir, await holderPid(name, clock));
    }
    server.unref();
    return new IdentityLock(server);
  }

  /** A lock that holds nothing (see StartWorkerOptions.lockIdentity). */
  static none(): IdentityLock {
    return new IdentityLock(undefined);
  }

  /** Lets the next worker on this data directory start. */
  async release(): Promise<void> {
    const s = this.server;
    if (!s?.listening) return;
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }
}

/** The abstract socket name for a state directory; undefined where there is no abstract namespace. */
function lockName(realStateDir: string): string | undefined {
  if (process.platform !== 'linux') return undefined;
  return `\0buildfleet-worker-${createHash('sha256').update(realStateDir).digest('hex').slice(0, 40)}`;
}

/** Asks the lock's holder for its pid (a second at most). */
function holderPid(name: string, clock: Clock): Promise<number | undefined> {
  return new Promise((resolve) => {
    let text = '';
    const socket = net.connect({ path: name });
    const done = (pid?: number) => {
      clock.clearTimeout(timer);
      socket.destroy();
      resolve(pid);
    };
    const timer = clock.setTimeout(() => done(), 1_000);
    socket.on('data', (c: Buffer) => (text += c.toString()));
    socket.on('end', () => {
      try {
        const pid = (JSON.parse(text) as { pid?: unknown }).pid;
        done(typeof pid === 'number' ? pid : undefined);
      } catch {
        done();
      }
    });
    socket.on('error', () => done());
  });
}
