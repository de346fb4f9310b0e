/**
 * An in-memory BlobStore (packages/controller/src/blobs/types.ts) that
 * survives controller restarts within a run, like a disk. The filesystem
 * store works too but costs a run most of its time in file I/O; the
 * simulation is about the protocol, and the blob stores have their own
 * contract tests. Same rules: nothing stored past `maxBytes` or on a
 * checksum mismatch, and a put replaces the key atomically.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { ApiError } from '@buildfleet/protocol';
import type { BlobStore, PutResult } from '@buildfleet/controller';

export class MemoryBlobStore implements BlobStore {
  readonly kind = 'memory';
  private readonly blobs = new Map<string, Buffer>();

  async put(key: string, body: Readable, opts: { maxBytes?: number; expectSha256?: string } = {}): Promise<PutResult> {
    const parts: Buffer[] = [];
    let size = 0;
    const hash = createHash('sha256');
    for await (const raw of body.iterator({ destroyOnReturn: false })) {
      const c = typeof raw === 'string' ? Buffer.from(raw) : Buffer.from(raw as Uint8Array);
      size += c.length;
      if (opts.maxBytes !== undefined && size > opts.maxBytes) throw new ApiError('PAYLOAD_TOO_LARGE', `body exceeds ${opts.maxBytes} bytes`);
      hash.update(c);
      parts.push(c);
    }
    const sha256 = hash.digest('hex');
    if (opts.expectSha256 !== undefined && opts.expectSha256.toLowerCase() !== sha256) {
      throw new ApiError('CHECKSUM_MISMATCH', `body SHA-256 is ${sha256}, expected ${opts.expectSha256}`);
    }
    this.blobs.set(key, Buffer.concat(parts));
    return { size, sha256 };
  }

  async get(key: string, range?: { start: number; end: number }): Promise<Readable> {
    const b = this.blobs.get(key);
    if (!b) throw new ApiError('NOT_FOUND', `no blob ${key}`);
    return Readable.from([range ? b.subarray(range.start, range.end + 1) : b]);
  }

  async size(key: string): Promise<number | undefined> {
    return this.blobs.get(key)?.length;
  }

  async delete(key: string): Promise<void> {
    this.blobs.delete(key);
  }

  /** Every key; the simulation never runs the orphan sweep, so the time is 0. */
  async *list(): AsyncGenerator<{ key: string; modifiedAt: number }> {
    for (const key of this.blobs.keys()) yield { key, modifiedAt: 0 };
  }

  /** A put here is one step: nothing is ever left half-written. */
  async sweepTemp(): Promise<number> {
    return 0;
  }

  async close(): Promise<void> {}
}
