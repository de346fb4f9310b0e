/**
 * Pieces both blob stores share: key validation and the metered reader that
 * hashes, counts and bounds a streamed body.
 */
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { ApiError } from '@buildfleet/protocol';

/** Size of one stored chunk: PostgreSQL rows, and file writes. 1 MiB. */
export const CHUNK_BYTES = 1024 * 1024;

const SEGMENT = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$/;

/**
 * Checks a blob key such as `sources/<buildId>` or
 * `artifacts/<buildId>/<attempt>/<sha256>`: `/`-separated segments of
 * letters, digits, `.`, `_`, `-`, not starting with `.` or `-` (so `..`,
 * absolute paths and our own `.tmp` names are impossible), at most 1024
 * characters. Throws `ApiError('VALIDATION_FAILED')` otherwise.
 */
export function checkKey(key: string): void {
  if (typeof key !== 'string' || key.length === 0 || key.length > 1024 || !key.split('/').every((s) => SEGMENT.test(s))) {
    throw new ApiError('VALIDATION_FAILED', `invalid blob key ${JSON.stringify(String(key).slice(0, 100))}`);
  }
}

/** Options of `BlobStore.put`, validated. */
export interface PutLimits {
  maxBytes?: number;
  expectSha256?: string;
}

/** Normalises `expectSha256` (lowercase hex); throws VALIDATION_FAILED on a malformed one. */
export function normaliseSha256(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  const v = value.toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(v)) throw new ApiError('VALIDATION_FAILED', 'expected checksum is not 64 hex characters (SHA-256)');
  return v;
}

/**
 * What a metered read found. `sha256` is set once the body has ended.
 */
export interface Meter {
  size: number;
  sha256: string | undefined;
}

/**
 * Reads `body` into chunks of exactly `CHUNK_BYTES` (the last one shorter;
 * none for an empty body), hashing and counting as it goes. Throws
 * `ApiError('PAYLOAD_TOO_LARGE')` as soon as more than `maxBytes` arrived and
 * `ApiError('CHECKSUM_MISMATCH')` at the end when the digest differs from
 * `expectSha256`, so the caller stores nothing in either case.
 *
 * The body is NOT destroyed when we stop early: it belongs to the caller
 * (the HTTP layer must still be able to answer 413/422 on its socket, and
 * then drains or closes it).
 */
export async function* meteredChunks(body: Readable, limits: PutLimits, meter: Meter): AsyncGenerator<Buffer> {
  const expect = normaliseSha256(limits.expectSha256);
  const max = limits.maxBytes;
  const hash = createHash('sha256');
  let buf = Buffer.allocUnsafe(CHUNK_BYTES);
  let pos = 0;
  for await (const raw of body.iterator({ destroyOnReturn: false })) {
    const data = toBuffer(raw);
    meter.size += data.length;
    if (max !== undefined && meter.size > max) {
      throw new ApiError('PAYLOAD_TOO_LARGE', `body exceeds ${max} bytes`);
    }
    hash.update(data);
    let off = 0;
    while (off < data.length) {
      const n = Math.min(CHUNK_BYTES - pos, data.length - off);
      data.copy(buf, pos, off, off + n);
      pos += n;
      off += n;
      if (pos === CHUNK_BYTES) {
        yield buf;
        buf = Buffer.allocUnsafe(CHUNK_BYTES);
        pos = 0;
      }
    }
  }
  const digest = hash.digest('hex');
  if (expect !== undefined && digest !== expect) {
    throw new ApiError('CHECKSUM_MISMATCH', `body SHA-256 is ${digest}, expected ${expect}`);
  }
  meter.sha256 = digest;
  if (pos > 0) yield buf.subarray(0, pos);
}

/** Object-mode streams may yield strings or plain Uint8Arrays; byte streams yield Buffers. */
function toBuffer(raw: unknown): Buffer {
  if (Buffer.isBuffer(raw)) return raw;
  if (typeof raw === 'string') return Buffer.from(raw);
  if (raw instanceof Uint8Array) return Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
  throw new ApiError('VALIDATION_FAILED', 'body stream yielded something other than bytes');
}

/**
 * Resolves an inclusive byte range against a blob of `size` bytes (RFC 9110
 * §14.1.2: `end` past the last byte is clamped). Throws
 * `ApiError('VALIDATION_FAILED')` when the range cannot be satisfied; the
 * HTTP layer answers 416 before asking by comparing with `size()`.
 */
export function resolveRange(size: number, range: { start: number; end: number } | undefined): { start: number; end: number } {
  if (!range) return { start: 0, end: size - 1 };
  const { start } = range;
  const end = Math.min(range.end, size - 1);
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(range.end) || start < 0 || start > end) {
    throw new ApiError('VALIDATION_FAILED', `range ${range.start}-${range.end} not satisfiable for ${size} bytes`);
  }
  return { start, end };
}
