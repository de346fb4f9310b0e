/**
 * `buildfleet logs` of a huge log starts near its end, at a byte offset that
 * usually falls mid-line. The CLI asks for one byte more (`offset - 1`) and
 * drops everything up to and including the first newline: so the output
 * starts at the first whole line at or after `offset` (when the byte before
 * `offset` is a newline, the line at `offset` itself).
 */
import { Transform } from 'node:stream';

/** A byte stream that drops its input up to and including the first `\n`, then passes everything through. */
export function fromNextLine(): Transform {
  let found = false;
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      if (found) return cb(null, chunk);
      const nl = chunk.indexOf(0x0a);
      if (nl < 0) return cb();
      found = true;
      cb(null, chunk.subarray(nl + 1));
    },
  });
}
