/**
 * Reading one bytea column through `COPY … TO STDOUT (FORMAT binary)`
 * (issue 12): the bytes leave PostgreSQL as they are stored, and the
 * connection's socket is paused whenever the consumer is (pg-copy-streams),
 * so a download holds a few socket buffers, not one hex string and one
 * decoded Buffer per 1 MiB chunk waiting for the garbage collector.
 *
 * The binary COPY format (PostgreSQL manual, "COPY", "Binary Format"): an
 * 11-byte signature, a 32-bit flags field and a 32-bit header-extension
 * length (then that many bytes); per row a 16-bit field count and per field
 * a 32-bit length (-1 for NULL) and the bytes; a 16-bit -1 ends the data.
 */
import { Transform, type TransformCallback } from 'node:stream';

const SIGNATURE = Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1');

/**
 * A Transform from a binary COPY stream of one-column rows to the column's
 * bytes, row after row, without copying them (subarrays of the input).
 * Fails the stream on a malformed header, a row of more than one field, or
 * a NULL. `expected` bytes must arrive in all, or the stream fails at its
 * end (a row missing: the blob changed or was deleted while being read).
 */
export class CopyBinaryColumn extends Transform {
  private pending = Buffer.alloc(0);
  private state: 'header' | 'row' | 'field' | 'done' = 'header';
  private fieldLeft = 0;
  private seen = 0;

  constructor(
    private readonly expected: number,
    private readonly what: string,
  ) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    let buf = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    try {
      for (;;) {
        if (this.state === 'field') {
          if (buf.length === 0) break;
          const n = Math.min(this.fieldLeft, buf.length);
          this.seen += n;
          if (this.seen > this.expected) throw new Error(`${this.what}: more bytes than expected`);
          this.push(buf.subarray(0, n));
          buf = buf.subarray(n);
          this.fieldLeft -= n;
          if (this.fieldLeft === 0) this.state = 'row';
          continue;
        }
        if (this.state === 'header') {
          if (buf.length < 19) break;
          if (!buf.subarray(0, 11).equals(SIGNATURE)) throw new Error(`${this.what}: not a binary COPY stream`);
          const ext = buf.readUInt32BE(15);
          if (buf.length < 19 + ext) break;
          buf = buf.subarray(19 + ext);
          this.state = 'row';
          continue;
        }
        if (this.state === 'row') {
          if (buf.length < 2) break;
          const fields = buf.readInt16BE(0);
          if (fields === -1) {
            this.state = 'done';
            buf = buf.subarray(2);
            continue;
          }
          if (fields !== 1) throw new Error(`${this.what}: a row of ${fields} fields`);
          if (buf.length < 6) break;
          const len = buf.readInt32BE(2);
          if (len < 0) throw new Error(`${this.what}: a NULL chunk`);
          buf = buf.subarray(6);
          this.fieldLeft = len;
          this.state = len > 0 ? 'field' : 'row';
          continue;
        }
        // done: nothing may follow the trailer
        if (buf.length > 0) throw new Error(`${this.what}: data after the end of the COPY stream`);
        break;
      }
    } catch (err) {
      done(err as Error);
      return;
    }
    // Only a partial header, row head or trailer is kept (a few bytes).
    this.pending = buf.length ? Buffer.from(buf) : Buffer.alloc(0);
    done();
  }

  override _flush(done: TransformCallback): void {
    if (this.state !== 'done' || this.seen !== this.expected) {
      done(new Error(`${this.what} changed while it was being read (${this.seen} of ${this.expected} bytes)`));
      return;
    }
    done();
  }
}
