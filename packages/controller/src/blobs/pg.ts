/**
 * Blob store in PostgreSQL, for several controllers without a shared
 * directory. A blob is a row in `blobs` plus 1 MiB rows in `blob_chunks`.
 */
import { randomBytes } from 'node:crypto';
import { Readable, pipeline } from 'node:stream';
import { to as copyTo } from 'pg-copy-streams';
import { CopyBinaryColumn } from './pg-copy.js';
import type pg from 'pg';
import { ApiError, systemClock, type Clock } from '@buildfleet/protocol';
import { CHUNK_BYTES, checkKey, meteredChunks, resolveRange, type Meter } from './common.js';
import { mapDbError as mapError } from '../store/errors.js';
import type { BlobStore, PutResult } from './types.js';

/** Advisory lock taken while creating the tables ("bfblob" in ASCII). */
const INIT_LOCK = 0x626662_6c6f62;
/** In-flight uploads live under `.tmp/<epoch ms>/<random>`; keys cannot start with `.`. */
const TMP_PREFIX = '.tmp/';
/** Temp chunks older than this at `init()` belong to a crashed upload. 1 hour, ms. */
const STALE_TMP_MS = 3_600_000;

/**
 * `put` inserts each 1 MiB chunk in its own statement under a temporary key
 * (no transaction stays open while a client uploads, memory stays at one
 * chunk), then one short transaction upserts the `blobs` row (its row lock
 * serialises swaps of the same key), deletes the old chunks and renames the
 * temporary ones. `get` streams the chunks with one `COPY … TO STDOUT (FORMAT
 * binary)` on a connection of its own, paused while the reader is
 * (`pg-copy.ts`): memory stays at a few socket buffers whatever the size.
 *
 * A reader of a key that is replaced by other bytes or deleted mid-stream
 * gets a stream error, never a mix of two bodies (the FS store keeps serving
 * the old bytes instead). Keys in practice are written once
 * (`sources/<build>`) or content-addressed, so this is rare.
 */
export class PgBlobStore implements BlobStore {
  private readonly clock: Clock;

  constructor(
    private readonly pool: pg.Pool,
    opts: { clock?: Clock } = {},
  ) {
    this.clock = opts.clock ?? systemClock;
  }

  /**
   * Creates the tables if absent and removes chunks of uploads that died more
   * than an hour ago. Safe when several controllers start at once (advisory
   * transaction lock).
   */
  async init(): Promise<void> {
    const c = await this.pool.connect().catch((e: unknown) => Promise.reject(mapError(e)));
    try {
      await c.query('BEGIN');
      await c.query('SELECT pg_advisory_xact_lock($1)', [INIT_LOCK]);
      await c.query(`CREATE TABLE IF NOT EXISTS blobs (
        key TEXT PRIMARY KEY,
        size BIGINT NOT NULL,
        sha256 TEXT NOT NULL,
        created_at BIGINT NOT NULL)`);
      await c.query(`CREATE TABLE IF NOT EXISTS blob_chunks (
        key TEXT NOT NULL,
        idx INTEGER NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (key, idx))`);
      // Sources are gzip and artifacts mostly compressed already: skip TOAST
      // compression, keep out-of-line storage (substring reads stay cheap).
      // Only once: ALTER TABLE takes an exclusive lock that would stall the
      // blob reads of controllers already running.
      const storage = await c.query<{ s: string }>(
        `SELECT attstorage AS s FROM pg_attribute WHERE attrelid = 'blob_chunks'::regclass AND attname = 'data'`,
      );
      if (storage.rows[0]?.s !== 'e') await c.query('ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL');
      await c.query('COMMIT');
    } catch (err) {
      await c.query('ROLLBACK').catch(() => {});
      throw mapError(err);
    } finally {
      c.release();
    }
    await this.sweepTemp(this.clock.now() - STALE_TMP_MS);
  }

  /** Deletes chunks of uploads started before `beforeEpochMs`. Returns rows deleted. */
  async sweepTemp(beforeEpochMs: number): Promise<number> {
    const r = await this.query(`DELETE FROM blob_chunks WHERE key LIKE '.tmp/%' AND split_part(key, '/', 2)::bigint < $1`, [
      beforeEpochMs,
    ]);
    return r.rowCount ?? 0;
  }

  async put(key: string, body: Readable, opts: { maxBytes?: number; expectSha256?: string } = {}): Promise<PutResult> {
    checkKey(key);
    const tmp = `${TMP_PREFIX}${this.clock.now()}/${randomBytes(8).toString('hex')}`;
    let wrote = false;
    try {
      const meter: Meter = { size: 0, sha256: undefined };
      let idx = 0;
      for await (const chunk of meteredChunks(body, opts, meter)) {
        wrote = true;
        await this.query('INSERT INTO blob_chunks (key, idx, data) VALUES ($1, $2, $3)', [tmp, idx++, chunk]);
      }
      await this.tx(async (c) => {
        await c.query(
          `INSERT INTO blobs (key, size, sha256, created_at) VALUES ($1, $2, $3, $4)
           ON CONFLICT (key) DO UPDATE SET size = EXCLUDED.size, sha256 = EXCLUDED.sha256, created_at = EXCLUDED.created_at`,
          [key, meter.size, meter.sha256, this.clock.now()],
        );
        await c.query('DELETE FROM blob_chunks WHERE key = $1', [key]);
        await c.query('UPDATE blob_chunks SET key = $1 WHERE key = $2', [key, tmp]);
      });
      wrote = false;
      return { size: meter.size, sha256: meter.sha256! };
    } catch (err) {
      if (wrote) await this.pool.query('DELETE FROM blob_chunks WHERE key = $1', [tmp]).catch(() => {});
      // Body errors (a client that went away) pass through as they are.
      throw err;
    }
  }

  async get(key: string, range?: { start: number; end: number }): Promise<Readable> {
    checkKey(key);
    const found = await this.query<{ size: string; sha256: string }>('SELECT size, sha256 FROM blobs WHERE key = $1', [key]);
    const head = found.rows[0];
    if (!head) throw new ApiError('NOT_FOUND', `blob ${key} not found`);
    const size = Number(head.size);
    const { start, end } = resolveRange(size, range);
    if (end < start) return Readable.from([]);
    const first = Math.floor(start / CHUNK_BYTES);
    const last = Math.floor(end / CHUNK_BYTES);
    // Offsets within the first and last chunk; the numbers are ours, the key and checksum go in as literals.
    const from = `(CASE WHEN c.idx = ${first} THEN ${start - first * CHUNK_BYTES} ELSE 0 END)`;
    const to = `(CASE WHEN c.idx = ${last} THEN ${end - last * CHUNK_BYTES} ELSE ${CHUNK_BYTES - 1} END)`;
    const client = await this.pool.connect().catch((e: unknown) => Promise.reject(mapError(e)));
    // One statement, one snapshot: a key replaced mid-read is never mixed with
    // its new bytes; the join on the sha256 seen above makes a replacement
    // since then a short stream, which fails (CopyBinaryColumn).
    const text = `COPY (SELECT substring(c.data FROM ${from} + 1 FOR ${to} - ${from} + 1)
        FROM blob_chunks c JOIN blobs b ON b.key = c.key
        WHERE c.key = ${client.escapeLiteral(key)} AND b.sha256 = ${client.escapeLiteral(head.sha256)}
          AND c.idx BETWEEN ${first} AND ${last}
        ORDER BY c.idx) TO STDOUT (FORMAT binary)`;
    let released = false;
    // A COPY cut short leaves the connection mid-protocol: it is closed, not reused.
    const release = (err?: Error) => {
      if (released) return;
      released = true;
      client.release(err);
    };
    const copy = client.query(copyTo(text));
    const body = new CopyBinaryColumn(end - start + 1, `blob ${key}`);
    pipeline(copy, body, (err) => release(err ? (err instanceof Error ? err : new Error(String(err))) : undefined));
    return body;
  }

  async size(key: string): Promise<number | undefined> {
    checkKey(key);
    const r = await this.query<{ size: string }>('SELECT size FROM blobs WHERE key = $1', [key]);
    return r.rows[0] ? Number(r.rows[0].size) : undefined;
  }

  async delete(key: string): Promise<void> {
    checkKey(key);
    await this.tx(async (c) => {
      await c.query('DELETE FROM blobs WHERE key = $1', [key]);
      await c.query('DELETE FROM blob_chunks WHERE key = $1', [key]);
    });
  }

  /** See `BlobStore.list`: pages of 1000 keys in key order. */
  async *list(): AsyncGenerator<{ key: string; modifiedAt: number }> {
    let after = '';
    for (;;) {
      const { rows } = await this.query<{ key: string; created_at: string }>('SELECT key, created_at FROM blobs WHERE key > $1 ORDER BY key LIMIT 1000', [after]);
      for (const r of rows) yield { key: r.key, modifiedAt: Number(r.created_at) };
      if (rows.length < 1000) return;
      after = rows[rows.length - 1]!.key;
    }
  }

  private async query<R extends pg.QueryResultRow = pg.QueryResultRow>(
    sql: string | pg.QueryConfig,
    params?: unknown[],
  ): Promise<pg.QueryResult<R>> {
    try {
      return typeof sql === 'string' ? await this.pool.query<R>(sql, params) : await this.pool.query<R>(sql);
    } catch (err) {
      throw mapError(err);
    }
  }

  private async tx<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    let c: pg.PoolClient;
    try {
      c = await this.pool.connect();
    } catch (err) {
      throw mapError(err);
    }
    try {
      await c.query('BEGIN');
      const out = await fn(c);
      await c.query('COMMIT');
      return out;
    } catch (err) {
      await c.query('ROLLBACK').catch(() => {});
      throw mapError(err);
    } finally {
      c.release();
    }
  }
}
