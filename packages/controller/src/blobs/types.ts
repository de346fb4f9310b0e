/**
 * Where sources and artifacts live: the filesystem under the data directory
 * (SQLite, or a shared blob directory), or PostgreSQL in chunks (several
 * controllers, no shared directory). Bodies are streamed, never held whole.
 */
import type { Readable } from 'node:stream';

export interface PutResult {
  /** bytes */
  size: number;
  /** lowercase hex SHA-256 of the bytes stored */
  sha256: string;
}

export interface BlobStore {
  /**
   * Streams `body` into `key` (replacing it atomically). Throws
   * `ApiError('PAYLOAD_TOO_LARGE')` past `maxBytes` and
   * `ApiError('CHECKSUM_MISMATCH')` when `expectSha256` is given and differs;
   * in both cases nothing is stored under `key`.
   */
  put(key: string, body: Readable, opts?: { maxBytes?: number; expectSha256?: string }): Promise<PutResult>;
  /** Streams bytes `[start, end]` (inclusive, like HTTP Range) of `key`. Throws NOT_FOUND. */
  get(key: string, range?: { start: number; end: number }): Promise<Readable>;
  /** Size in bytes, or undefined when absent. */
  size(key: string): Promise<number | undefined>;
  delete(key: string): Promise<void>;
  /**
   * Every stored key with its last write time (epoch ms), in no particular
   * order, without in-flight uploads: what the orphan sweep of retention
   * compares with the database. Lazily walked; cheap to stop early.
   */
  list(): AsyncIterable<{ key: string; modifiedAt: number }>;
  /**
   * Removes what uploads that never finished left behind (a controller
   * killed mid-upload) when they started before `beforeEpochMs`; returns how
   * many files or chunks it removed. Called at start-up and by the
   * retention collector's orphan sweep (issue 9: nothing stays for ever).
   */
  sweepTemp(beforeEpochMs: number): Promise<number>;
}
