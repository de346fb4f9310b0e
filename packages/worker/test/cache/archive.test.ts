import { mkdtemp, mkdir, readFile, readlink, rm, writeFile, symlink, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import * as tar from 'tar';
import { packCache, restoreCache } from '../../src/cache/archive.js';
import { ArchiveTooLargeError, UnsafeArchiveError } from '../../src/source.js';

describe('cache archives', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'bf-arch-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('packs directories with their symlinks and restores them into another workspace', async () => {
    const a = path.join(dir, 'a');
    await mkdir(path.join(a, 'node_modules', 'left-pad'), { recursive: true });
    await mkdir(path.join(a, 'node_modules', '.bin'), { recursive: true });
    await writeFile(path.join(a, 'node_modules', 'left-pad', 'index.js'), 'module.exports = 1;\n');
    await symlink('../left-pad/index.js', path.join(a, 'node_modules', '.bin', 'left-pad'));
    await writeFile(path.join(a, 'not-cached.txt'), 'x');
    const packed = await packCache(a, ['node_modules', 'missing-dir'], path.join(dir, 'c.tar.gz'));
    expect(packed.packed).toEqual(['node_modules']);
    expect(packed.missing).toEqual(['missing-dir']);
    expect(packed.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(packed.size).toBe((await readFile(packed.file)).length);

    const b = path.join(dir, 'b');
    await mkdir(b);
    await restoreCache(packed.file, b);
    expect(await readFile(path.join(b, 'node_modules', 'left-pad', 'index.js'), 'utf8')).toBe('module.exports = 1;\n');
    expect(await readlink(path.join(b, 'node_modules', '.bin', 'left-pad'))).toBe('../left-pad/index.js');
    expect(await readdir(b)).toEqual(['node_modules']);
  });

  it('packs nothing when no path exists', async () => {
    await mkdir(path.join(dir, 'a'));
    const packed = await packCache(path.join(dir, 'a'), ['node_modules'], path.join(dir, 'c.tar.gz'));
    expect(packed.packed).toEqual([]);
    expect(packed.size).toBe(0);
  });

  it('does not pack through a symlinked parent that leaves the workspace', async () => {
    const a = path.join(dir, 'a');
    await mkdir(path.join(dir, 'outside', 'secrets'), { recursive: true });
    await writeFile(path.join(dir, 'outside', 'secrets', 'key'), 'x');
    await mkdir(a);
    await symlink(path.join(dir, 'outside'), path.join(a, 'out'));
    const packed = await packCache(a, ['out/secrets'], path.join(dir, 'c.tar.gz'));
    expect(packed.packed).toEqual([]);
    expect(packed.missing).toEqual(['out/secrets']);
  });

  it('refuses to restore an archive whose entries leave the workspace (a poisoned cache)', async () => {
    const src = path.join(dir, 'src');
    await mkdir(src);
    await writeFile(path.join(src, 'evil'), 'x');
    const file = path.join(dir, 'evil.tar.gz');
    await tar.c({ gzip: true, cwd: src, file, prefix: '../' }, ['evil']);
    const ws = path.join(dir, 'ws');
    await mkdir(ws);
    await expect(restoreCache(file, ws)).rejects.toBeInstanceOf(UnsafeArchiveError);
    await expect(readFile(path.join(dir, 'evil'))).rejects.toThrow();
  });

  it('restores within the source limits: an archive that would unpack to more is refused before a byte lands', async () => {
    const a = path.join(dir, 'a');
    await mkdir(path.join(a, 'node_modules'), { recursive: true });
    for (let i = 0; i < 5; i++) await writeFile(path.join(a, 'node_modules', `f${i}.js`), 'x'.repeat(1000));
    const packed = await packCache(a, ['node_modules'], path.join(dir, 'c.tar.gz'));
    const ws = path.join(dir, 'ws');
    await mkdir(ws);
    await expect(restoreCache(packed.file, ws, { maxBytes: 4_000, maxEntries: 100 })).rejects.toBeInstanceOf(ArchiveTooLargeError);
    await expect(restoreCache(packed.file, ws, { maxBytes: 1_000_000, maxEntries: 3 })).rejects.toBeInstanceOf(ArchiveTooLargeError);
    expect(await readdir(ws)).toEqual([]);
    await restoreCache(packed.file, ws, { maxBytes: 5_000, maxEntries: 6 });
    expect((await readdir(path.join(ws, 'node_modules'))).sort()).toEqual(['f0.js', 'f1.js', 'f2.js', 'f3.js', 'f4.js']);
  });
});
