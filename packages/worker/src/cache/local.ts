/**
 * The worker's own copy of recent cache archives (issue 13), so a repeat
 * build on the same worker downloads nothing: `<dir>/<sha256>.tar.gz`,
 * named by content (a damaged or partial file never gets a name), bounded
 * in total size with least-recently-used eviction (a file's mtime is its
 * last use).
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { randomUUID } from 'node:crypto';

const SHA256_HEX = /^[0-9a-f]{64}$/;

/** A downloaded archive whose bytes do not hash to the expected SHA-256. */
export class CacheChecksumError extends Error {
  constructor(expected: string, actual: string) {
    super(`cache archive checksum mismatch: expected ${expected}, got ${actual}`);
    this.name = 'CacheChecksumError';
  }
}

async function sha256Of(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

export class LocalCache {
  /**
   * @param dir where archives live (created on first use)
   * @param maxBytes total size kept, bytes; 0 keeps nothing
   * @param now wall clock, epoch ms (marks use; injected for tests)
   */
  constructor(
    readonly dir: string,
    private readonly maxBytes: number,
    private readonly now: () => number = Date.now,
  ) {}

  private file(sha256: string): string {
    if (!SHA256_HEX.test(sha256)) throw new Error(`not a SHA-256: ${sha256}`);
    return path.join(this.dir, `${sha256}.tar.gz`);
  }

  /** The path of the archive with this SHA-256 when kept here (and marks it used), else undefined. */
  async get(sha256: string): Promise<string | undefined> {
    const file = this.file(sha256);
    const t = new Date(this.now());
    try {
      await fs.utimes(file, t, t);
      return file;
    } catch {
      return undefined;
    }
  }

  /**
   * Keeps a copy of `source` (an archive with this SHA-256, e.g. one just
   * packed) under its address, then evicts. Returns the kept path, or
   * undefined when it is larger than the whole budget.
   */
  async add(sha256: string, source: string): Promise<string | undefined> {
    const target = this.file(sha256);
    const tmp = path.join(this.dir, `.tmp-${randomUUID()}`);
    await fs.mkdir(this.dir, { recursive: true });
    await fs.copyFile(source, tmp);
    return this.adopt(sha256, tmp, target);
  }

  /**
   * Downloads an archive with `fetch(tmpFile)` into this directory, checks
   * its SHA-256 and keeps it. Throws CacheChecksumError (nothing is kept) or
   * what `fetch` throws. Returns the kept path; when the archive is larger
   * than the whole budget, a temporary path the caller must `discard`.
   */
  async download(sha256: string, fetch: (tmpFile: string) => Promise<void>): Promise<{ file: string; kept: boolean }> {
    const target = this.file(sha256);
    const tmp = path.join(this.dir, `.tmp-${randomUUID()}`);
    await fs.mkdir(this.dir, { recursive: true });
    try {
      await fetch(tmp);
      const actual = await sha256Of(tmp);
      if (actual !== sha256) throw new CacheChecksumError(sha256, actual);
    } catch (err) {
      await fs.rm(tmp, { force: true });
      throw err;
    }
    const kept = await this.adopt(sha256, tmp, target, true);
    return kept ? { file: kept, kept: true } : { file: tmp, kept: false };
  }

  /** Removes a temporary file `download` handed out. */
  async discard(file: string): Promise<void> {
    if (path.basename(file).startsWith('.tmp-')) await fs.rm(file, { force: true });
  }

  private async adopt(sha256: string, tmp: string, target: string, keepTmpWhenTooBig = false): Promise<string | undefined> {
    const { size } = await fs.stat(tmp);
    if (size > this.maxBytes) {
      if (!keepTmpWhenTooBig) await fs.rm(tmp, { force: true });
      return undefined;
    }
    const t = new Date(this.now());
    await fs.utimes(tmp, t, t);
    await fs.rename(tmp, target);
    await this.evict(sha256);
    return target;
  }

  /** Deletes least recently used archives until the total fits; never `keep`. */
  async evict(keep?: string): Promise<string[]> {
    let names: string[];
    try {
      names = await fs.readdir(this.dir);
    } catch {
      return [];
    }
    const entries: { name: string; size: number; mtime: number }[] = [];
    for (const name of names) {
      if (!/^[0-9a-f]{64}\.tar\.gz$/.test(name)) continue;
      try {
        const st = await fs.stat(path.join(this.dir, name));
        entries.push({ name, size: st.size, mtime: st.mtimeMs });
      } catch {
        // evicted meanwhile by a concurrent build
      }
    }
    let total = entries.reduce((n, e) => n + e.size, 0);
    const evicted: string[] = [];
    for (const e of entries.sort((a, b) => a.mtime - b.mtime)) {
      if (total <= this.maxBytes) break;
      if (keep !== undefined && e.name === `${keep}.tar.gz`) continue;
      await fs.rm(path.join(this.dir, e.name), { force: true });
      total -= e.size;
      evicted.push(e.name.slice(0, 64));
    }
    return evicted;
  }

  /** Bytes kept now. */
  async totalBytes(): Promise<number> {
    let total = 0;
    for (const name of await fs.readdir(this.dir).catch(() => [] as string[])) {
      if (!/^[0-9a-f]{64}\.tar\.gz$/.test(name)) continue;
      total += (await fs.stat(path.join(this.dir, name)).catch(() => ({ size: 0 }))).size;
    }
    return total;
  }
}
