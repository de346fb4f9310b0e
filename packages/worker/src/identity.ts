/**
 * The worker's identity file, `<dataDir>/worker/identity.json`: who this
 * worker is to the controller. Written atomically (temp file, fsync, rename,
 * fsync of the directory, mode 0600) so a crash leaves the old or the new
 * file, never a torn one.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { randomBytes } from 'node:crypto';

/**
 * `workerId` + `workerSecret` once registered; `registrationId` is saved
 * before a new registration is sent, so a retry after a lost answer reuses it
 * (PROTOCOL.md "Workers", case 1).
 */
export interface Identity {
  workerId?: string;
  workerSecret?: string;
  registrationId?: string;
}

export class IdentityStore {
  readonly file: string;
  constructor(stateDir: string) {
    this.file = path.join(stateDir, 'identity.json');
  }

  /** The saved identity, or `{}` when there is none. Throws on an unreadable/corrupt file. */
  async load(): Promise<Identity> {
    let text: string;
    try {
      text = await fs.readFile(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
      throw err;
    }
    const parsed = JSON.parse(text) as unknown;
    if (typeof parsed !== 'object' || parsed === null) throw new Error(`${this.file}: not a JSON object`);
    const out: Identity = {};
    const p = parsed as Record<string, unknown>;
    if (typeof p.workerId === 'string') out.workerId = p.workerId;
    if (typeof p.workerSecret === 'string') out.workerSecret = p.workerSecret;
    if (typeof p.registrationId === 'string') out.registrationId = p.registrationId;
    return out;
  }

  /** Replaces the identity file atomically and durably (mode 0600). */
  async save(identity: Identity): Promise<void> {
    const dir = path.dirname(this.file);
    await fs.mkdir(dir, { recursive: true, mode: 0o700 });
    const tmp = path.join(dir, `.identity.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
    const fh = await fs.open(tmp, 'wx', 0o600);
    try {
      await fh.writeFile(JSON.stringify(identity, null, 2) + '\n');
      await fh.sync();
    } finally {
      await fh.close();
    }
    try {
      await fs.rename(tmp, this.file);
    } catch (err) {
      await fs.rm(tmp, { force: true });
      throw err;
    }
    const dh = await fs.open(dir, 'r');
    try {
      await dh.sync();
    } finally {
      await dh.close();
    }
  }
}
