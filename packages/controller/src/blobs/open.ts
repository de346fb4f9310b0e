/**
 * Chooses where blobs live (docs/protocol.md "Configuration variables": with
 * `DATABASE_URL` blobs live where every controller can read them).
 */
import { join } from 'node:path';
import pg from 'pg';
import type { Clock } from '@buildfleet/protocol';
import { FsBlobStore } from './fs.js';
import { PgBlobStore } from './pg.js';
import type { BlobStore } from './types.js';

export interface BlobStoreOptions {
  /** `postgres://…` selects PostgreSQL mode; unset means SQLite mode. */
  databaseUrl?: string;
  /** Pool to use in PostgreSQL mode (not ended by `close`); created from `databaseUrl` if absent. */
  pool?: pg.Pool;
  /** `BUILDFLEET_DATA_DIR`. */
  dataDir: string;
  /** `BUILDFLEET_BLOB_DIR`: a directory every controller shares (PostgreSQL mode only). */
  blobDir?: string;
  clock?: Clock;
}

/** An opened blob store; `close` releases what `openBlobStore` created. */
export interface OpenedBlobStore extends BlobStore {
  readonly kind: 'fs' | 'pg';
  readonly store: FsBlobStore | PgBlobStore;
  close(): Promise<void>;
}

function isPostgresUrl(url: string | undefined): boolean {
  return !!url && /^postgres(ql)?:\/\//i.test(url);
}

/**
 * SQLite mode → files under `<dataDir>/blobs`. PostgreSQL mode → files
 * under `blobDir` when given, else chunks in PostgreSQL (tables created by
 * `init`). The store is initialised before it is returned.
 */
export async function openBlobStore(opts: BlobStoreOptions): Promise<OpenedBlobStore> {
  const postgres = isPostgresUrl(opts.databaseUrl) || opts.pool !== undefined;
  if (!postgres || opts.blobDir) {
    const store = new FsBlobStore(postgres ? opts.blobDir! : join(opts.dataDir, 'blobs'), opts.clock ? { clock: opts.clock } : {});
    await store.init();
    return wrap('fs', store, async () => {});
  }
  const ownPool = opts.pool === undefined;
  const pool = opts.pool ?? new pg.Pool({ connectionString: opts.databaseUrl });
  const store = new PgBlobStore(pool, opts.clock ? { clock: opts.clock } : {});
  try {
    await store.init();
  } catch (err) {
    if (ownPool) await pool.end().catch(() => {});
    throw err;
  }
  return wrap('pg', store, async () => {
    if (ownPool) await pool.end();
  });
}

function wrap(kind: 'fs' | 'pg', store: FsBlobStore | PgBlobStore, close: () => Promise<void>): OpenedBlobStore {
  return {
    kind,
    store,
    put: (key, body, o) => store.put(key, body, o),
    get: (key, range) => store.get(key, range),
    size: (key) => store.size(key),
    delete: (key) => store.delete(key),
    list: () => store.list(),
    sweepTemp: (before) => store.sweepTemp(before),
    close,
  };
}
