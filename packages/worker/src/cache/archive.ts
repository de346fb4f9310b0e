/**
 * Cache archives (issue 13): the cached `paths` of a workspace packed as one
 * `.tar.gz`, addressed by the SHA-256 of its bytes, and restored with the
 * same checks as a build's source (no entry may land outside the
 * workspace, whatever the archive says). The worker packs and unpacks on
 * its own side of the executor, so this works the same for every executor.
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar';
import { unpackSource, type SourceLimits } from '../source.js';

/** What `packCache` wrote. */
export interface PackedCache {
  file: string;
  /** Lowercase hex SHA-256 of the archive. */
  sha256: string;
  /** Archive bytes. */
  size: number;
  /** The requested paths that exist and were packed. */
  packed: string[];
  /** The requested paths that do not exist in the workspace (skipped). */
  missing: string[];
}

/** Whether `rel` (workspace-relative) exists without leaving the workspace through a symlinked parent. */
async function existsInside(root: string, workspace: string, rel: string): Promise<boolean> {
  const full = path.resolve(workspace, rel);
  if (full !== workspace && !full.startsWith(workspace + path.sep)) return false;
  try {
    await fs.lstat(full);
    const parent = await fs.realpath(path.dirname(full));
    return parent === root || parent.startsWith(root + path.sep);
  } catch {
    return false;
  }
}

/**
 * Packs `paths` (relative to `workspace`; directories recursively, symlinks
 * as links) into `file` as gzip level 1 (caches are mostly already
 * compressed packages; speed matters more than the last percent). Paths that
 * do not exist are reported in `missing`; when none exists nothing is
 * written and `packed` is empty.
 */
export async function packCache(workspace: string, paths: readonly string[], file: string): Promise<PackedCache> {
  const ws = path.resolve(workspace);
  const root = await fs.realpath(ws);
  const packed: string[] = [];
  const missing: string[] = [];
  for (const p of paths) {
    const rel = path.posix.normalize(p).replace(/\/+$/, '');
    if (await existsInside(root, ws, rel)) packed.push(rel);
    else missing.push(p);
  }
  if (packed.length === 0) return { file, sha256: '', size: 0, packed, missing };
  const hash = createHash('sha256');
  let size = 0;
  const count = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      size += chunk.length;
      cb(null, chunk);
    },
  });
  await fs.mkdir(path.dirname(file), { recursive: true });
  const stream = tar.c({ gzip: { level: 1 }, cwd: ws, portable: true, follow: false, noDirRecurse: false }, packed);
  await pipeline(stream as unknown as NodeJS.ReadableStream, count, createWriteStream(file));
  return { file, sha256: hash.digest('hex'), size, packed, missing };
}

/**
 * Unpacks a cache archive into `workspace`, over what is there, within the
 * same limits as a source (`limits`: unpacked bytes and entries). Throws
 * UnsafeArchiveError (from source.ts) for an entry that would land outside
 * it or past the limits, or tar's error for a damaged archive.
 */
export async function restoreCache(file: string, workspace: string, limits?: SourceLimits): Promise<void> {
  await unpackSource(file, workspace, limits);
}
