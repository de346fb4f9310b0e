/**
 * One contract for every BlobStore (design rule 5): the FS and the
 * PostgreSQL implementations must pass the same tests.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { ApiError } from '@buildfleet/protocol';
import { beforeEach, expect, it } from 'vitest';
import type { BlobStore } from '../../src/blobs/types.js';

const MiB = 1024 * 1024;

export interface BlobHarness {
  store: BlobStore;
  /** Temporary files / rows of unfinished uploads currently present. */
  leftovers(): Promise<number>;
  /** Bytes of unfinished uploads already written to disk / the database. */
  inFlightBytes(): Promise<number>;
}

/** Streams `data` in pieces of `piece` bytes, as an HTTP body would arrive. */
export function streamOf(data: Buffer, piece = 64 * 1024 + 7): Readable {
  return Readable.from(
    (function* () {
      for (let i = 0; i < data.length; i += piece) yield data.subarray(i, Math.min(i + piece, data.length));
    })(),
    { objectMode: false },
  );
}

/** A stream that yields `good` bytes, then fails like a client that went away. */
function failingStream(good: Buffer): Readable {
  return Readable.from(
    (async function* () {
      yield good;
      throw Object.assign(new Error('aborted'), { code: 'ECONNRESET' });
    })(),
    { objectMode: false },
  );
}

export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

async function read(store: BlobStore, key: string, range?: { start: number; end: number }): Promise<Buffer> {
  return buffer(await store.get(key, range));
}

async function expectCode(p: Promise<unknown>, code: string): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, `expected ApiError ${code}`).toBeInstanceOf(ApiError);
  expect((err as ApiError).code).toBe(code);
}

/** Registers the contract tests; call inside a describe whose setup fills `h`. */
export function blobStoreContract(harness: () => BlobHarness): void {
  let h: BlobHarness;
  beforeEach(() => {
    h = harness();
  });

  it('round-trips a multi-MiB streamed body with its checksum', async () => {
    const data = randomBytes(5 * MiB + 123);
    const res = await h.store.put('sources/b1', streamOf(data), { expectSha256: sha256(data).toUpperCase(), maxBytes: data.length });
    expect(res).toEqual({ size: data.length, sha256: sha256(data) });
    expect(await h.store.size('sources/b1')).toBe(data.length);
    expect((await read(h.store, 'sources/b1')).equals(data)).toBe(true);
    expect(await h.leftovers()).toBe(0);
  });

  it('stores an empty body and a chunk-aligned body', async () => {
    expect(await h.store.put('sources/empty', streamOf(Buffer.alloc(0)))).toEqual({ size: 0, sha256: sha256(Buffer.alloc(0)) });
    expect(await h.store.size('sources/empty')).toBe(0);
    expect((await read(h.store, 'sources/empty')).length).toBe(0);
    const aligned = randomBytes(2 * MiB);
    await h.store.put('sources/aligned', streamOf(aligned, MiB));
    expect((await read(h.store, 'sources/aligned')).equals(aligned)).toBe(true);
  });

  it('serves inclusive byte ranges, across chunk boundaries too', async () => {
    const data = randomBytes(3 * MiB + 10);
    await h.store.put('artifacts/b2/1/x', streamOf(data));
    const ranges: [number, number][] = [
      [0, 0],
      [5, 9],
      [MiB - 1, MiB],
      [MiB - 3, 2 * MiB + 3],
      [MiB, 2 * MiB - 1],
      [data.length - 1, data.length - 1],
      [17, data.length - 1],
    ];
    for (const [start, end] of ranges) {
      const got = await read(h.store, 'artifacts/b2/1/x', { start, end });
      expect(got.equals(data.subarray(start, end + 1)), `range ${start}-${end}`).toBe(true);
    }
    // An end past the last byte is clamped (RFC 9110 §14.1.2).
    expect((await read(h.store, 'artifacts/b2/1/x', { start: data.length - 4, end: data.length + 100 })).equals(data.subarray(-4))).toBe(true);
    await expectCode(h.store.get('artifacts/b2/1/x', { start: data.length, end: data.length + 5 }), 'VALIDATION_FAILED');
    await expectCode(h.store.get('artifacts/b2/1/x', { start: 10, end: 9 }), 'VALIDATION_FAILED');
  });

  it('refuses a body over maxBytes, stores nothing, leaves the old bytes and the body alone', async () => {
    const old = randomBytes(1000);
    await h.store.put('sources/b3', streamOf(old));
    const body = streamOf(randomBytes(3 * MiB));
    await expectCode(h.store.put('sources/b3', body, { maxBytes: 2 * MiB }), 'PAYLOAD_TOO_LARGE');
    // The HTTP layer must still be able to answer 413 on this connection.
    expect(body.destroyed).toBe(false);
    body.destroy();
    expect((await read(h.store, 'sources/b3')).equals(old)).toBe(true);
    await expectCode(h.store.put('sources/b3-new', streamOf(randomBytes(10)), { maxBytes: 9 }), 'PAYLOAD_TOO_LARGE');
    expect(await h.store.size('sources/b3-new')).toBeUndefined();
    expect(await h.leftovers()).toBe(0);
  });

  it('refuses a checksum mismatch and stores nothing', async () => {
    const data = randomBytes(2 * MiB + 5);
    const wrong = sha256(Buffer.from('something else'));
    await expectCode(h.store.put('artifacts/b4/1/y', streamOf(data), { expectSha256: wrong }), 'CHECKSUM_MISMATCH');
    expect(await h.store.size('artifacts/b4/1/y')).toBeUndefined();
    await expectCode(h.store.get('artifacts/b4/1/y'), 'NOT_FOUND');
    expect(await h.leftovers()).toBe(0);
    await expectCode(h.store.put('artifacts/b4/1/y', streamOf(data), { expectSha256: 'nothex' }), 'VALIDATION_FAILED');
  });

  it('stores nothing when the body fails midway', async () => {
    await expect(h.store.put('sources/b5', failingStream(randomBytes(MiB + 5)))).rejects.toThrow(/aborted/);
    expect(await h.store.size('sources/b5')).toBeUndefined();
    expect(await h.leftovers()).toBe(0);
  });

  it('concurrent puts to one key leave exactly one complete body', async () => {
    const bodies = [randomBytes(2 * MiB + 1), randomBytes(MiB / 2), randomBytes(3 * MiB + 77), randomBytes(17)];
    const results = await Promise.all(bodies.map((b) => h.store.put('sources/same', streamOf(b, 100_003))));
    results.forEach((r, i) => expect(r.sha256).toBe(sha256(bodies[i]!)));
    const got = await read(h.store, 'sources/same');
    expect(bodies.some((b) => b.equals(got))).toBe(true);
    expect(await h.store.size('sources/same')).toBe(got.length);
    expect(await h.leftovers()).toBe(0);
  });

  it('streams: persists the body while it arrives instead of holding it whole', async () => {
    const MiBs = 12;
    const piece = Buffer.alloc(256 * 1024, 3);
    let produced = 0;
    let worstLag = 0;
    const body = Readable.from(
      (async function* () {
        for (let i = 0; i < (MiBs * MiB) / piece.length; i++) {
          if (produced % MiB === 0 && produced > 0) worstLag = Math.max(worstLag, produced - (await h.inFlightBytes()));
          produced += piece.length;
          yield piece;
        }
      })(),
      { objectMode: false },
    );
    const res = await h.store.put('sources/streamed', body);
    expect(res.size).toBe(MiBs * MiB);
    // One chunk being filled plus one being written, plus stream buffers: far from the whole body.
    expect(worstLag).toBeLessThanOrEqual(3 * MiB);
    expect(await h.inFlightBytes()).toBe(0);
  });

  it('accepts object-mode bodies of strings and Uint8Arrays', async () => {
    const body = Readable.from(['ab', new Uint8Array([99, 100]), Buffer.from('e')]);
    expect(await h.store.put('sources/mixed', body)).toEqual({ size: 5, sha256: sha256(Buffer.from('abcde')) });
    expect((await read(h.store, 'sources/mixed')).toString()).toBe('abcde');
  });

  it('reports a missing key', async () => {
    await expectCode(h.store.get('sources/missing'), 'NOT_FOUND');
    await expectCode(h.store.get('sources/missing', { start: 0, end: 0 }), 'NOT_FOUND');
    expect(await h.store.size('sources/missing')).toBeUndefined();
    await h.store.delete('sources/missing');
  });

  it('does not take a prefix of other keys for a blob', async () => {
    await h.store.put('artifacts/b6/1/z', streamOf(Buffer.from('z')));
    for (const key of ['artifacts', 'artifacts/b6', 'artifacts/b6/1']) {
      await expectCode(h.store.get(key), 'NOT_FOUND');
      expect(await h.store.size(key)).toBeUndefined();
      await h.store.delete(key);
    }
    await expectCode(h.store.get('artifacts/b6/1/z/deeper'), 'NOT_FOUND');
    expect(await h.store.size('artifacts/b6/1/z/deeper')).toBeUndefined();
    expect((await read(h.store, 'artifacts/b6/1/z')).toString()).toBe('z');
  });

  it('deletes a blob', async () => {
    await h.store.put('sources/del', streamOf(randomBytes(MiB + 1)));
    await h.store.delete('sources/del');
    expect(await h.store.size('sources/del')).toBeUndefined();
    await expectCode(h.store.get('sources/del'), 'NOT_FOUND');
  });

  it('rejects keys that could escape the store or collide with temporary uploads', async () => {
    const bad = ['../x', '/etc/passwd', 'a/../../b', 'a//b', '', 'a/', 'a\\b', '.tmp/1/x', 'sources/.hidden', 'sources/..', 'a\0b', 'x'.repeat(2000)];
    for (const key of bad) {
      await expectCode(h.store.put(key, streamOf(Buffer.from('x'))), 'VALIDATION_FAILED');
      await expectCode(h.store.get(key), 'VALIDATION_FAILED');
      await expectCode(h.store.size(key), 'VALIDATION_FAILED');
      await expectCode(h.store.delete(key), 'VALIDATION_FAILED');
    }
    expect(await h.leftovers()).toBe(0);
  });
}

/** Streams a 64 MiB blob in and out; returns MiB/s for each direction. */
export async function measureThroughput(store: BlobStore): Promise<{ putMiBs: number; getMiBs: number }> {
  const size = 64 * MiB;
  const data = randomBytes(size);
  const t0 = performance.now();
  const res = await store.put('artifacts/bench/1/big', streamOf(data, 64 * 1024));
  const t1 = performance.now();
  let n = 0;
  const hash = createHash('sha256');
  for await (const chunk of await store.get('artifacts/bench/1/big')) {
    n += (chunk as Buffer).length;
    hash.update(chunk as Buffer);
  }
  const t2 = performance.now();
  expect(res.size).toBe(size);
  expect(n).toBe(size);
  expect(hash.digest('hex')).toBe(sha256(data));
  await store.delete('artifacts/bench/1/big');
  return { putMiBs: 64 / ((t1 - t0) / 1000), getMiBs: 64 / ((t2 - t1) / 1000) };
}
