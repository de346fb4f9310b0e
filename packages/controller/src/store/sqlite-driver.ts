/**
 * The kysely dialect for SQLite: kysely's own, except that write
 * transactions start with `BEGIN IMMEDIATE`.
 *
 * kysely's SQLite driver starts transactions with a plain `BEGIN`, which takes
 * the write lock only at the first write; two such transactions can then
 * fail with SQLITE_BUSY mid-way. `BEGIN IMMEDIATE` takes the write lock at
 * once (waiting up to `busy_timeout`), so every write transaction excludes
 * the others from its first read.
 */
import type Database from 'better-sqlite3';
import {
  CompiledQuery,
  SqliteAdapter,
  SqliteDriver,
  SqliteIntrospector,
  SqliteQueryCompiler,
  type DatabaseConnection,
  type Dialect,
} from 'kysely';

class ImmediateSqliteDriver extends SqliteDriver {
  override async beginTransaction(connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw('begin immediate'));
  }
}

/** A kysely dialect over one better-sqlite3 connection, with `BEGIN IMMEDIATE` transactions. */
export function immediateSqliteDialect(database: Database.Database): Dialect {
  return {
    createAdapter: () => new SqliteAdapter(),
    createDriver: () => new ImmediateSqliteDriver({ database }),
    createIntrospector: (db) => new SqliteIntrospector(db),
    createQueryCompiler: () => new SqliteQueryCompiler(),
  };
}
