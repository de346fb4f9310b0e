/** The binary COPY framing reader of the PostgreSQL blob store's downloads (no database needed). */
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { CopyBinaryColumn } from '../../src/blobs/pg-copy.js';

/** A binary COPY stream of one-column rows (PostgreSQL manual, "COPY", "Binary Format"). */
function copyStream(rows: Buffer[], trailer = true): Buffer {
  const parts: Buffer[] = [Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1'), Buffer.alloc(8)];
  for (const r of rows) {
    const head = Buffer.alloc(6);
    head.writeInt16BE(1, 0);
    head.writeInt32BE(r.length, 2);
    parts.push(head, r);
  }
  if (trailer) parts.push(Buffer.from([0xff, 0xff]));
  return Buffer.concat(parts);
}

async function read(input: Buffer, expected: number, piece: number): Promise<Buffer> {
  const pieces: Buffer[] = [];
  for (let i = 0; i < input.length; i += piece) pieces.push(input.subarray(i, i + piece));
  const out: Buffer[] = [];
  for await (const c of Readable.from(pieces).pipe(new CopyBinaryColumn(expected, 'blob t'))) out.push(c as Buffer);
  return Buffer.concat(out);
}

describe('CopyBinaryColumn', () => {
  const rows = [Buffer.from('hello '), Buffer.alloc(0), Buffer.from('world'), Buffer.alloc(3000, 7)];
  const whole = Buffer.concat(rows);

  it('yields the column bytes row after row, however the stream is cut', async () => {
    for (const piece of [1, 2, 5, 7, 64, 100_000]) expect((await read(copyStream(rows), whole.length, piece)).equals(whole)).toBe(true);
  });

  it('fails a stream with fewer bytes than expected (the blob changed or went away)', async () => {
    await expect(read(copyStream(rows.slice(0, 2)), whole.length, 64)).rejects.toThrow(/changed while it was being read \(6 of 3011 bytes\)/);
    await expect(read(copyStream([]), 1, 64)).rejects.toThrow(/changed while it was being read/);
  });

  it('fails a stream cut before its trailer, with more bytes than expected, or not in binary COPY format', async () => {
    await expect(read(copyStream(rows, false), whole.length, 64)).rejects.toThrow(/changed while it was being read/);
    await expect(read(copyStream(rows), whole.length - 1, 64)).rejects.toThrow(/more bytes than expected/);
    await expect(read(Buffer.from('PGCOPY nope, not binary'), 1, 64)).rejects.toThrow(/not a binary COPY stream/);
  });
});
