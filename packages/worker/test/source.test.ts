/**
 * Source archive limits (issue 9): what an archive may unpack to is checked
 * on its entry headers before anything is written, so a small gzip bomb or
 * an archive of millions of files fails with a message naming the setting
 * and leaves the workspace empty.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Header } from 'tar';
import { ArchiveTooLargeError, checkArchive, unpackSource, UnsafeArchiveError } from '../src/source.js';
import { tempDir } from './support/harness.js';
import { tarGz } from './support/tarball.js';

let dir: string;
let workspace: string;
beforeEach(async () => {
  dir = await tempDir();
  workspace = path.join(dir, 'ws');
  await fs.mkdir(workspace);
});
afterEach(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

const MiB = 1024 * 1024;

async function archive(name: string, bytes: Buffer): Promise<string> {
  const file = path.join(dir, name);
  await fs.writeFile(file, bytes);
  return file;
}

/**
 * 40 MiB that gzip shrinks about 700 times (a byte of noise every 2 KiB):
 * under tar's own 1000:1 decompression-ratio guard, so only a size limit
 * stops it.
 */
function bombData(): Buffer {
  const b = Buffer.alloc(40 * MiB);
  let x = 1;
  for (let i = 0; i < b.length; i += 2048) {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    b[i] = x & 255;
  }
  return b;
}

/** A header alone that declares a file of `size` bytes (no body follows). */
function lyingHeader(size: number): Buffer {
  const block = Buffer.alloc(512);
  new Header({ path: 'huge.bin', type: 'File', size, mode: 0o644, mtime: new Date(0), uid: 0, gid: 0 }).encode(block, 0);
  return gzipSync(Buffer.concat([block, Buffer.alloc(1024)]));
}

describe('source limits', () => {
  it('a gzip bomb (40 MiB in under 100 KiB) past maxBytes fails naming BUILDFLEET_MAX_SOURCE_UNPACKED_MB; nothing is written', async () => {
    const bomb = tarGz([{ path: 'README', data: 'hi\n' }, { path: 'zeros.bin', data: bombData() }]);
    expect(bomb.length).toBeLessThan(100 * 1024);
    const file = await archive('bomb.tar.gz', bomb);
    const err = await unpackSource(file, workspace, { maxBytes: 8 * MiB, maxEntries: 100 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ArchiveTooLargeError);
    expect(err).toBeInstanceOf(UnsafeArchiveError);
    expect((err as Error).message).toBe('the archive unpacks to more than 8 MiB (BUILDFLEET_MAX_SOURCE_UNPACKED_MB)');
    expect(await fs.readdir(workspace)).toEqual([]);
    // Under a limit that fits, the same archive unpacks.
    await unpackSource(file, workspace, { maxBytes: 41 * MiB, maxEntries: 100 });
    expect((await fs.stat(path.join(workspace, 'zeros.bin'))).size).toBe(40 * MiB);
  });

  it('is decided on the headers: a header declaring 64 GiB is refused before its (missing) body is read', async () => {
    const file = await archive('liar.tar.gz', lyingHeader(64 * 1024 * MiB));
    await expect(checkArchive(file, { maxBytes: 8 * 1024 * MiB, maxEntries: 10 })).rejects.toThrow(/unpacks to more than 8192 MiB/);
    // Without the limit, tar itself only finds out at the end of the input.
    await expect(checkArchive(file, { maxBytes: Number.MAX_SAFE_INTEGER, maxEntries: 10 })).rejects.toThrow(/Truncated input|TAR_BAD_ARCHIVE/);
  });

  it('more entries than maxEntries fail naming BUILDFLEET_MAX_SOURCE_FILES; exactly maxEntries unpack', async () => {
    const entries = Array.from({ length: 50 }, (_, i) => ({ path: `d/f${i}`, data: '' }));
    const file = await archive('many.tar.gz', tarGz([{ path: 'd', type: 'Directory' }, ...entries]));
    await expect(unpackSource(file, workspace, { maxBytes: MiB, maxEntries: 50 })).rejects.toThrow(
      'the archive has more than 50 entries (BUILDFLEET_MAX_SOURCE_FILES)',
    );
    expect(await fs.readdir(workspace)).toEqual([]);
    await unpackSource(file, workspace, { maxBytes: MiB, maxEntries: 51 });
    expect(await fs.readdir(path.join(workspace, 'd'))).toHaveLength(50);
  });

  it('must leave room on the file system: more than the free space (less a reserve) is refused, naming where', async () => {
    const file = await archive('mid.tar.gz', tarGz([{ path: 'a.bin', data: Buffer.alloc(2 * MiB) }]));
    await expect(checkArchive(file, { maxBytes: 100 * MiB, maxEntries: 10 }, { bytes: MiB, where: 'the file system of /ws' })).rejects.toThrow(
      'the archive unpacks to more than the 1 MiB the worker can spare on the file system of /ws',
    );
    await checkArchive(file, { maxBytes: 100 * MiB, maxEntries: 10 }, { bytes: 3 * MiB, where: 'x' });
  });
});
