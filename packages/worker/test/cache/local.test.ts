import { createHash } from 'node:crypto';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CacheChecksumError, LocalCache } from '../../src/cache/local.js';

const sha = (s: string) => createHash('sha256').update(s).digest('hex');

describe("the worker's local cache", () => {
  let dir: string;
  let t: number;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'bf-local-'));
    t = 1_700_000_000_000;
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function source(content: string): Promise<string> {
    const f = path.join(dir, `src-${sha(content).slice(0, 8)}`);
    await writeFile(f, content);
    return f;
  }

  it('keeps what it is given under its SHA-256 and finds it again', async () => {
    const cache = new LocalCache(path.join(dir, 'cache'), 1000, () => t);
    expect(await cache.get(sha('a'))).toBeUndefined();
    const kept = await cache.add(sha('a'), await source('a'));
    expect(kept).toBe(path.join(dir, 'cache', `${sha('a')}.tar.gz`));
    expect(await cache.get(sha('a'))).toBe(kept);
  });

  it('evicts the least recently used archives past its budget', async () => {
    const cache = new LocalCache(path.join(dir, 'cache'), 25, () => t);
    const ten = (c: string) => c.repeat(10);
    await cache.add(sha(ten('a')), await source(ten('a')));
    t += 1000;
    await cache.add(sha(ten('b')), await source(ten('b')));
    t += 1000;
    await cache.get(sha(ten('a'))); // a is now more recent than b
    t += 1000;
    await cache.add(sha(ten('c')), await source(ten('c')));
    expect(await cache.get(sha(ten('b')))).toBeUndefined();
    expect(await cache.get(sha(ten('a')))).toBeDefined();
    expect(await cache.get(sha(ten('c')))).toBeDefined();
    expect(await cache.totalBytes()).toBe(20);
  });

  it('downloads into place only when the checksum matches', async () => {
    const cache = new LocalCache(path.join(dir, 'cache'), 1000, () => t);
    await expect(cache.download(sha('x'), (tmp) => writeFile(tmp, 'not x'))).rejects.toBeInstanceOf(CacheChecksumError);
    expect((await readdir(path.join(dir, 'cache'))).length).toBe(0);
    const got = await cache.download(sha('x'), (tmp) => writeFile(tmp, 'x'));
    expect(got.kept).toBe(true);
    expect(await cache.get(sha('x'))).toBe(got.file);
  });

  it('hands back an archive larger than the whole budget without keeping it', async () => {
    const cache = new LocalCache(path.join(dir, 'cache'), 3, () => t);
    const got = await cache.download(sha('toolarge'), (tmp) => writeFile(tmp, 'toolarge'));
    expect(got.kept).toBe(false);
    expect(await cache.get(sha('toolarge'))).toBeUndefined();
    await cache.discard(got.file);
    expect((await readdir(path.join(dir, 'cache'))).length).toBe(0);
  });
});
