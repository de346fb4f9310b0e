/**
 * Blob store on a filesystem: `<rootDir>/<key>`. Used with SQLite (under
 * `<dataDir>/blobs`) and with PostgreSQL when every controller mounts the
 * same `BUILDFLEET_BLOB_DIR`.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, rename, rm, stat, unlink } from 'node:fs/promises';
import { dirname, join, resolve, sep } from 'node:path';
import { Readable } from 'node:stream';
import { ApiError, systemClock, type Clock } from '@buildfleet/protocol';
import { checkKey, meteredChunks, resolveRange, type Meter } from './common.js';
import type { BlobStore, PutResult } from './types.js';

/** Prefix of in-flight upload files; keys cannot start with `.`, so no key collides. */
const TMP_PREFIX = '.tmp-';
/** Temp files older than this at `init()` belong to a crashed upload. 1 hour, ms. */
const STALE_TMP_MS = 3_600_000;

/** ENOTDIR: a key below another key's file (`a/b` when `a` is a blob) does not exist either. */
function isNotFound(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

/**
 * Each `put` streams into `.tmp-<random>` beside the final file, then fsyncs
 * it, renames it over the key (atomic on POSIX) and fsyncs the directory:
 * readers see the old bytes or the new ones, never a torn file, and a crash
 * leaves at most a stray temp file. Concurrent puts to one key: the last
 * rename wins, each reader gets one complete body.
 */
export class FsBlobStore implements BlobStore {
  readonly root: string;
  private readonly clock: Clock;

  constructor(rootDir: string, opts: { clock?: Clock } = {}) {
    this.root = resolve(rootDir);
    this.clock = opts.clock ?? systemClock;
  }

  /** Absolute path of `key`; throws VALIDATION_FAILED for keys that could leave the root. */
  pathOf(key: string): string {
    checkKey(key);
    const p = resolve(this.root, key);
    // checkKey already excludes `..` and absolute keys; this is the belt to its braces.
    if (!p.startsWith(this.root + sep)) throw new ApiError('VALIDATION_FAILED', 'blob key escapes the blob directory');
    return p;
  }

  /** Creates the root directory and removes temp files of uploads that died over an hour ago. */
  async init(): Promise<void> {
    // Sources, logs and artifacts are the users' secrets: owner only, whatever the umask.
    await mkdir(this.root, { recursive: true, mode: 0o700 });
    await this.sweepTemp(this.clock.now() - STALE_TMP_MS);
  }

  /**
   * Removes temp files last written before `beforeEpochMs` (a crash between
   * create and rename leaves one). Walks the whole tree: call at start-up,
   * not per request. Returns how many it removed.
   */
  async sweepTemp(beforeEpochMs: number): Promise<number> {
    let removed = 0;
    for (const e of await readdir(this.root, { withFileTypes: true, recursive: true })) {
      if (!e.isFile() || !e.name.startsWith(TMP_PREFIX)) continue;
      const p = join(e.parentPath, e.name);
      const st = await stat(p).catch(() => undefined);
      if (st && st.mtimeMs < beforeEpochMs) {
        await rm(p, { force: true });
        removed++;
      }
    }
    return removed;
  }

  async put(key: string, body: Readable, opts: { maxBytes?: number; expectSha256?: string } = {}): Promise<PutResult> {
    const file = this.pathOf(key);
    const dir = dirname(file);
    await mkdir(dir, { recursive: true, mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
      // A blob already sits where this key needs a directory (`a` vs `a/b`).
      if (err.code === 'ENOTDIR' || err.code === 'EEXIST') throw new ApiError('VALIDATION_FAILED', `blob key ${key} nests under another blob`);
      throw err;
    });
    const tmp = join(dir, `${TMP_PREFIX}${randomBytes(8).toString('hex')}`);
    const fh = await open(tmp, 'wx', 0o600);
    let open_ = true;
    try {
      const meter: Meter = { size: 0, sha256: undefined };
      for await (const chunk of meteredChunks(body, opts, meter)) {
        await fh.write(chunk);
      }
      await fh.sync();
      open_ = false;
      await fh.close();
      await rename(tmp, file);
      await syncDir(dir);
      return { size: meter.size, sha256: meter.sha256! };
    } catch (err) {
      if (open_) await fh.close().catch(() => {});
      await rm(tmp, { force: true }).catch(() => {});
      throw err;
    }
  }

  async get(key: string, range?: { start: number; end: number }): Promise<Readable> {
    const file = this.pathOf(key);
    let fh;
    try {
      fh = await open(file, 'r');
    } catch (err) {
      if (isNotFound(err)) throw new ApiError('NOT_FOUND', `blob ${key} not found`);
      throw err;
    }
    try {
      // Reading through the open descriptor keeps serving these bytes even if
      // the key is replaced or deleted meanwhile.
      const st = await fh.stat();
      // A key that is a prefix of other keys is a directory here, not a blob.
      if (!st.isFile()) throw new ApiError('NOT_FOUND', `blob ${key} not found`);
      const r = resolveRange(st.size, range);
      if (r.end < r.start) {
        await fh.close();
        return Readable.from([]);
      }
      return fh.createReadStream({ start: r.start, end: r.end, autoClose: true });
    } catch (err) {
      await fh.close().catch(() => {});
      throw err;
    }
  }

  async size(key: string): Promise<number | undefined> {
    try {
      const st = await stat(this.pathOf(key));
      return st.isFile() ? st.size : undefined;
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  list(): AsyncIterable<{ key: string; modifiedAt: number }> {
    return walk(this.root, this.root);
  }

  async delete(key: string): Promise<void> {
    const file = this.pathOf(key);
    try {
      await unlink(file);
    } catch (err) {
      // Absent, or a directory (a prefix of other keys): nothing to delete.
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'EISDIR' && code !== 'EPERM' && code !== 'ENOTDIR') throw err;
    }
  }
}

/** See `BlobStore.list`: walks the tree one directory at a time. */
async function* walk(root: string, dir: string): AsyncGenerator<{ key: string; modifiedAt: number }> {
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch (err) {
    if (isNotFound(err)) return;
    throw err;
  }
  for (const e of entries) {
    if (e.name.startsWith(TMP_PREFIX)) continue;
    const p = join(dir, e.name);
    if (e.isDirectory()) yield* walk(root, p);
    else if (e.isFile()) {
      const st = await stat(p).catch(() => undefined);
      if (st) yield { key: p.slice(root.length + 1).split(sep).join('/'), modifiedAt: st.mtimeMs };
    }
  }
}

async function syncDir(dir: string): Promise<void> {
  // Makes the rename itself durable. Some filesystems refuse fsync on a
  // directory; the rename is still atomic there, only its durability differs.
  const d = await open(dir, 'r');
  try {
    await d.sync();
  } catch {
    /* not supported here */
  } finally {
    await d.close();
  }
}
