/**
 * Opens the store: `postgres://` or `postgresql://` selects PostgreSQL (a pg
 * Pool), anything else SQLite at `sqlitePath` (`:memory:` allowed) in WAL
 * mode. Call `migrate()` before use.
 */
import Database from 'better-sqlite3';
import pg from 'pg';
import { Kysely, PostgresDialect } from 'kysely';
import type { DB, Dialect } from './schema.js';
import { SqlStore } from './sql-store.js';
import type { StoreLogger, WorkerLockDecorator } from './sql/context.js';
import { immediateSqliteDialect } from './sqlite-driver.js';
import type { Store } from './types.js';

export { SqlStore } from './sql-store.js';
export type { StoreLogger, WorkerLock, WorkerLockDecorator, WorkerLockOp } from './sql/context.js';
export { transition, type BuildEvent, type TransitionResult } from '../domain/transition.js';
export { isUnavailable, isUniqueViolation, mapDbError } from './errors.js';

export interface OpenStoreOptions {
  /** `postgres://…` selects PostgreSQL; unset or anything else selects SQLite. */
  databaseUrl?: string;
  /** SQLite file (`:memory:` allowed). Required when `databaseUrl` is not a PostgreSQL URL. */
  sqlitePath?: string;
  logger?: StoreLogger;
  /** Wraps the worker row lock (the race tests' barriers; see `WorkerLockDecorator`). */
  decorateWorkerLock?: WorkerLockDecorator;
  /** PostgreSQL pool size (default 10). */
  poolSize?: number;
  /**
   * How long a transaction waits for a lock, ms (default 5000; docs/protocol.md "a
   * lock wait timed out" → UNAVAILABLE): PostgreSQL lock and statement
   * timeout, SQLite busy_timeout. Tests shorten it.
   */
  lockTimeoutMs?: number;
}

/** int8 (BIGINT, count(*)) as a JS number: epoch ms and sizes stay below 2^53. */
const pgTypes = {
  getTypeParser(oid: number, format?: 'text' | 'binary') {
    if (oid === pg.types.builtins.INT8 && format !== 'binary') return (v: string) => Number(v);
    return pg.types.getTypeParser(oid, format as 'text');
  },
};

export function isPostgresUrl(url: string | undefined): url is string {
  return url !== undefined && /^postgres(ql)?:\/\//i.test(url);
}

/** The database a store runs on: a kysely instance over a pg Pool or one better-sqlite3 connection. */
export interface OpenedDatabase {
  db: Kysely<DB>;
  dialect: Dialect;
}

/**
 * Opens the database `databaseUrl` selects (does not migrate), configured as
 * the store needs it: PostgreSQL pool with lock and statement timeouts and
 * int8 as numbers; SQLite in WAL mode with `busy_timeout`, foreign keys and
 * `BEGIN IMMEDIATE` transactions. `openStore` builds on it; tests use it to
 * reach the same database with instrumentation (`db.withPlugin`).
 */
export function openDatabase(options: Omit<OpenStoreOptions, 'decorateWorkerLock'>): OpenedDatabase {
  if (isPostgresUrl(options.databaseUrl)) {
    const pool = new pg.Pool({
      connectionString: options.databaseUrl,
      max: options.poolSize ?? 10,
      connectionTimeoutMillis: 5_000,
      // The protocol's "a lock wait longer than 5 s is UNAVAILABLE", for every
      // statement on every connection (the same as SET LOCAL in each transaction,
      // without a round trip).
      lock_timeout: options.lockTimeoutMs ?? 5_000,
      statement_timeout: options.lockTimeoutMs ?? 5_000,
      types: pgTypes as never,
    });
    // An idle client losing its connection must not crash the controller; the next query reports it.
    pool.on('error', (err) => options.logger?.warn({ err }, 'postgres pool error'));
    return { db: new Kysely<DB>({ dialect: new PostgresDialect({ pool }) }), dialect: 'postgres' };
  }
  const path = options.sqlitePath;
  if (!path) throw new Error('openStore: sqlitePath is required without a PostgreSQL databaseUrl');
  const database = new Database(path);
  // Lets retention hand freed pages back to the file system (incremental_vacuum
  // after each collection); takes effect only on a new, empty database.
  database.pragma('auto_vacuum = INCREMENTAL');
  database.pragma('journal_mode = WAL');
  database.pragma(`busy_timeout = ${Math.trunc(options.lockTimeoutMs ?? 5_000)}`);
  database.pragma('foreign_keys = ON');
  database.pragma('synchronous = NORMAL');
  return { db: new Kysely<DB>({ dialect: immediateSqliteDialect(database) }), dialect: 'sqlite' };
}

/** Opens (does not migrate) the store selected by `databaseUrl`. */
export async function openStore(options: OpenStoreOptions): Promise<Store> {
  return new SqlStore({ ...openDatabase(options), logger: options.logger, decorateWorkerLock: options.decorateWorkerLock });
}
