/**
 * Opens the store: `postgres://` or `postgresql://` selects PostgreSQL (a pg
 * Pool), anything else SQLite at `sqlitePath` (`:memory:` allowed) in WAL
 * mode. Call `migrate()` before use.
 */
import Database from 'better-sqlite3';
import pg from 'pg';
import {
  CompiledQuery,
  Kysely,
  PostgresDialect,
  SqliteAdapter,
  SqliteDriver,
  SqliteIntrospector,
  SqliteQueryCompiler,
  type DatabaseConnection,
  type Dialect,
  type SqliteDialectConfig,
} from 'kysely';
import type { DB } from './schema.js';
import { SqlStore, type StoreHooks, type StoreLogger } from './sql-store.js';
import type { Store } from './types.js';

export { SqlStore, rowToBuild, type StoreHooks, type StoreLogger, type WorkerLockOp } from './sql-store.js';
export { transition, type BuildEvent, type TransitionResult } from '../domain/transition.js';
export { isUnavailable, isUniqueViolation, mapDbError } from './errors.js';

export interface OpenStoreOptions {
  /** `postgres://…` selects PostgreSQL; unset or anything else selects SQLite. */
  databaseUrl?: string;
  /** SQLite file (`:memory:` allowed). Required when `databaseUrl` is not a PostgreSQL URL. */
  sqlitePath?: string;
  logger?: StoreLogger;
  /** Test-only barriers (see `StoreHooks`). */
  hooks?: StoreHooks;
  /** PostgreSQL pool size (default 10). */
  poolSize?: number;
  /**
   * How long a transaction waits for a lock, ms (default 5000; PROTOCOL.md "a
   * lock wait timed out" → UNAVAILABLE): PostgreSQL lock and statement
   * timeout, SQLite busy_timeout. Tests shorten it.
   */
  lockTimeoutMs?: number;
}

/**
 * kysely's SQLite driver starts transactions with a plain `BEGIN`, which takes
 * the write lock only at the first write; two such transactions can then
 * fail with SQLITE_BUSY mid-way. `BEGIN IMMEDIATE` takes the write lock at
 * once (waiting up to `busy_timeout`), so every write transaction excludes
 * the others from its first read.
 */
class ImmediateSqliteDriver extends SqliteDriver {
  override async beginTransaction(connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw('begin immediate'));
  }
}

function immediateSqliteDialect(config: SqliteDialectConfig): Dialect {
  return {
    createAdapter: () => new SqliteAdapter(),
    createDriver: () => new ImmediateSqliteDriver(config),
    createIntrospector: (db) => new SqliteIntrospector(db),
    createQueryCompiler: () => new SqliteQueryCompiler(),
  };
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

/** Opens (does not migrate) the store selected by `databaseUrl`. */
export async function openStore(options: OpenStoreOptions): Promise<SqlStore & Store> {
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
    const db = new Kysely<DB>({ dialect: new PostgresDialect({ pool }) });
    return new SqlStore({ db, dialect: 'postgres', logger: options.logger, hooks: options.hooks });
  }
  const path = options.sqlitePath;
  if (!path) throw new Error('openStore: sqlitePath is required without a PostgreSQL databaseUrl');
  const database = new Database(path);
  database.pragma('journal_mode = WAL');
  database.pragma(`busy_timeout = ${Math.trunc(options.lockTimeoutMs ?? 5_000)}`);
  database.pragma('foreign_keys = ON');
  database.pragma('synchronous = NORMAL');
  const db = new Kysely<DB>({ dialect: immediateSqliteDialect({ database }) });
  return new SqlStore({ db, dialect: 'sqlite', logger: options.logger, hooks: options.hooks });
}
