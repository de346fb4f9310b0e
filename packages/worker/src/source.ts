/**
 * A build's source: downloaded as a stream to a file next to the workspace,
 * checked entry by entry, then unpacked into the workspace. An archive with
 * any entry that would land outside the workspace fails the build with a
 * message naming the entry (it is not silently skipped): absolute paths, `..`
 * segments, links whose target leaves the workspace, entries written through
 * a symlink, and device/fifo entries. So does an archive that would unpack
 * to more than its limits (`SourceLimits`: bytes, entries, and the free
 * space of the workspace's file system): a small gzip bomb must not fill
 * the worker's disk (issue 9). Both are checked on the entry headers before
 * anything is written.
 */
import fs from 'node:fs/promises';
import { createReadStream, createWriteStream } from 'node:fs';
import { createGunzip } from 'node:zlib';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import * as tar from 'tar';
import type { Clock, TimerHandle } from '@buildfleet/protocol';

/** The archive is unsafe to unpack; `message` names the entry and why. */
export class UnsafeArchiveError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UnsafeArchiveError';
  }
}

/**
 * The archive would unpack to more than a limit allows; `message` says how
 * much and which setting. An UnsafeArchiveError, so it fails the build the
 * same way.
 */
export class ArchiveTooLargeError extends UnsafeArchiveError {
  constructor(message: string) {
    super(message);
    this.name = 'ArchiveTooLargeError';
  }
}

/** What one source (or cache) archive may unpack to. */
export interface SourceLimits {
  /** Sum of the sizes its entries declare, bytes (`BUILDFLEET_MAX_SOURCE_UNPACKED_MB`). */
  maxBytes: number;
  /** Entries of every kind: files, directories, links (`BUILDFLEET_MAX_SOURCE_FILES`). */
  maxEntries: number;
}

const MiB = 1024 * 1024;

/** 8 GiB and 500,000 entries: far above a source tree, far below a full disk's worth of a bomb. */
export const DEFAULT_SOURCE_LIMITS: SourceLimits = Object.freeze({ maxBytes: 8 * 1024 * MiB, maxEntries: 500_000 });

/**
 * Space the unpacked archive must leave free on the workspace's file system,
 * bytes: 5% of it, at most 1 GiB (the build itself, its logs and the other
 * builds need room too).
 */
function reserveOf(fsBytes: number): number {
  return Math.min(1024 * MiB, Math.floor(fsBytes * 0.05));
}

const mib = (n: number) => `${n % MiB === 0 ? n / MiB : (n / MiB).toFixed(1)} MiB`;

/**
 * Writes a fetch body to `file` as a stream; returns the byte count. With
 * `idle`, a body that delivers no bytes for `idle.ms` (on the clock) is
 * aborted with a "stalled" error: a hung download must not hold a build
 * forever while its heartbeats keep the lease alive.
 */
export async function saveBody(
  body: globalThis.ReadableStream<Uint8Array> | null,
  file: string,
  idle?: { clock: Clock; ms: number },
  signal?: AbortSignal,
): Promise<number> {
  await fs.mkdir(path.dirname(file), { recursive: true });
  if (!body) {
    await fs.writeFile(file, '');
    return 0;
  }
  let bytes = 0;
  const src = Readable.fromWeb(body as unknown as WebReadableStream<Uint8Array>);
  let timer: TimerHandle | undefined;
  const arm = () => {
    if (!idle) return;
    idle.clock.clearTimeout(timer);
    timer = idle.clock.setTimeout(() => src.destroy(new Error(`source download stalled: no data for ${idle.ms}ms`)), idle.ms);
  };
  const onAbort = () => src.destroy(new Error('source download aborted'));
  if (signal?.aborted) onAbort();
  signal?.addEventListener('abort', onAbort, { once: true });
  src.on('data', (c: Buffer) => {
    bytes += c.length;
    arm();
  });
  arm();
  try {
    await pipeline(src, createWriteStream(file));
  } finally {
    idle?.clock.clearTimeout(timer);
    signal?.removeEventListener('abort', onAbort);
  }
  return bytes;
}

const ALLOWED_TYPES = new Set(['File', 'OldFile', 'ContiguousFile', 'Directory', 'SymbolicLink', 'Link', 'GNUDumpDir']);
// Metadata entries carry no path of their own.
const META_TYPES = new Set(['ExtendedHeader', 'GlobalExtendedHeader', 'NextFileHasLongPath', 'NextFileHasLongLinkpath', 'OldExtendedHeader']);

/** A workspace-relative path with no `..` escape, or an UnsafeArchiveError. */
function inside(rel: string, what: string): string {
  if (rel.includes('\0')) throw new UnsafeArchiveError(`${what}: path contains NUL`);
  if (path.posix.isAbsolute(rel) || /^[A-Za-z]:[\\/]/.test(rel)) throw new UnsafeArchiveError(`${what}: absolute path ${JSON.stringify(rel)}`);
  const norm = path.posix.normalize(rel);
  if (norm === '..' || norm.startsWith('../')) throw new UnsafeArchiveError(`${what}: ${JSON.stringify(rel)} leads outside the workspace`);
  if (rel.split('/').includes('..')) throw new UnsafeArchiveError(`${what}: ${JSON.stringify(rel)} has a '..' segment`);
  return norm.replace(/\/+$/, '');
}

/**
 * Reads every entry header of a `.tar.gz` (the bodies are decompressed and
 * skipped, nothing is written) and throws UnsafeArchiveError for the first
 * entry that could write outside the workspace, or ArchiveTooLargeError as
 * soon as the entries exceed `limits` (`room`: bytes free for the unpacked
 * tree, when known). Reading stops at the first problem.
 */
export async function checkArchive(file: string, limits: SourceLimits = DEFAULT_SOURCE_LIMITS, room?: { bytes: number; where: string }): Promise<void> {
  const symlinks = new Set<string>();
  let entries = 0;
  let bytes = 0;
  const parser: tar.Parser = tar.t({
    strict: true,
    onReadEntry: (entry) => {
      try {
        const type = String(entry.type);
        if (META_TYPES.has(type)) return;
        const where = `archive entry ${JSON.stringify(entry.path)}`;
        if (!ALLOWED_TYPES.has(type)) throw new UnsafeArchiveError(`${where}: entry type ${type} is not allowed`);
        entries++;
        if (entries > limits.maxEntries) {
          throw new ArchiveTooLargeError(`the archive has more than ${limits.maxEntries} entries (BUILDFLEET_MAX_SOURCE_FILES)`);
        }
        if (type !== 'Link' && type !== 'SymbolicLink') bytes += entry.size ?? 0;
        if (bytes > limits.maxBytes) {
          throw new ArchiveTooLargeError(`the archive unpacks to more than ${mib(limits.maxBytes)} (BUILDFLEET_MAX_SOURCE_UNPACKED_MB)`);
        }
        if (room && bytes > room.bytes) {
          throw new ArchiveTooLargeError(`the archive unpacks to more than the ${mib(Math.max(0, room.bytes))} the worker can spare on ${room.where}`);
        }
        const rel = inside(entry.path, where);
        // No entry may be written through a symlink the archive created.
        const parts = rel.split('/');
        for (let i = 1; i <= parts.length; i++) {
          const prefix = parts.slice(0, i).join('/');
          if (symlinks.has(prefix)) throw new UnsafeArchiveError(`${where}: goes through the symlink ${JSON.stringify(prefix)}`);
        }
        if (type === 'SymbolicLink') {
          const target = entry.linkpath ?? '';
          if (path.posix.isAbsolute(target)) throw new UnsafeArchiveError(`${where}: symlink to the absolute path ${JSON.stringify(target)}`);
          const resolved = path.posix.normalize(path.posix.join(path.posix.dirname(rel), target));
          if (resolved === '..' || resolved.startsWith('../')) throw new UnsafeArchiveError(`${where}: symlink target ${JSON.stringify(target)} leads outside the workspace`);
          symlinks.add(rel);
        } else if (type === 'Link') {
          inside(entry.linkpath ?? '', `${where}: hard link target`);
        }
      } catch (err) {
        // Stops the parser (and its decompressor) at once; it emits this error.
        parser.abort(err instanceof UnsafeArchiveError ? err : new UnsafeArchiveError(String(err)));
      }
    },
  }) as tar.Parser;
  const src = createReadStream(file);
  try {
    await new Promise<void>((resolve, reject) => {
      parser.on('error', reject);
      parser.on('end', () => resolve());
      src.on('error', reject);
      src.pipe(parser as unknown as NodeJS.WritableStream);
    });
  } finally {
    src.destroy();
  }
}

/** True when the gzip holds nothing but zero bytes (a tar with no entries). */
async function isEmptyTar(file: string): Promise<boolean> {
  try {
    for await (const chunk of createReadStream(file).pipe(createGunzip())) {
      if ((chunk as Buffer).some((b) => b !== 0)) return false;
    }
    return true;
  } catch {
    return false;
  }
}

/** After unpacking: every symlink in the workspace must resolve inside it (catches link chains). */
async function checkSymlinks(workspace: string): Promise<void> {
  const root = await fs.realpath(workspace);
  const entries = await fs.readdir(workspace, { recursive: true, withFileTypes: true });
  for (const e of entries) {
    if (!e.isSymbolicLink()) continue;
    const full = path.join(e.parentPath, e.name);
    let real: string;
    try {
      real = await fs.realpath(full);
    } catch {
      continue; // dangling inside the workspace: harmless
    }
    if (real !== root && !real.startsWith(root + path.sep)) {
      throw new UnsafeArchiveError(`archive entry ${JSON.stringify(path.relative(workspace, full))}: symlink resolves outside the workspace`);
    }
  }
}

/** Bytes the unpacked tree may take on the file system holding `dir`; undefined when unknown. */
async function roomIn(dir: string): Promise<{ bytes: number; where: string } | undefined> {
  try {
    const s = await fs.statfs(dir);
    return { bytes: s.bavail * s.bsize - reserveOf(s.blocks * s.bsize), where: `the file system of ${dir}` };
  } catch {
    return undefined;
  }
}

/**
 * Unpacks a `.tar.gz` into `workspace` after `checkArchive` (with `limits`
 * and the free space of the workspace's file system). An empty file is an
 * empty source. Throws UnsafeArchiveError (ArchiveTooLargeError past a
 * limit) or tar's error; nothing is unpacked then.
 */
export async function unpackSource(file: string, workspace: string, limits: SourceLimits = DEFAULT_SOURCE_LIMITS): Promise<void> {
  const st = await fs.stat(file);
  if (st.size === 0) return;
  try {
    await checkArchive(file, limits, await roomIn(workspace));
  } catch (err) {
    // An archive of an empty directory is only end-of-archive blocks, which tar calls unrecognized.
    if ((err as { code?: string }).code === 'TAR_BAD_ARCHIVE' && (await isEmptyTar(file))) return;
    throw err;
  }
  await tar.x({ file, cwd: workspace, strict: true, preserveOwner: false, noChmod: false });
  await checkSymlinks(workspace);
}
