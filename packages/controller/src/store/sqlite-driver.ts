/**
 * The kysely dialect for SQLite: kysely's own, except that write
 * transactions start with `BEGIN IMMEDIATE` and prepared statements are
 * cached per connection.
 *
 * kysely's SQLite driver starts transactions with a plain `BEGIN`, which takes
 * the write lock only at the first write; two such transactions can then
 * fail with SQLITE_BUSY mid-way. `BEGIN IMMEDIATE` takes the write lock at
 * once (waiting up to `busy_timeout`), so every write transaction excludes
 * the others from its first read.
 *
 * kysely's driver also prepares every statement anew on each call; preparing
 * was the largest single cost of a SQLite drain (issue 12: a fifth of the
 * controller's busy time). The store runs a small, fixed set of statement
 * texts, so the connection keeps them prepared, keyed by SQL text.
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
  type SqliteDatabase,
  type SqliteStatement,
} from 'kysely';

class ImmediateSqliteDriver extends SqliteDriver {
  override async beginTransaction(connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw('begin immediate'));
  }
}

/**
 * Most statement texts kept prepared. The store's texts are a few hundred at
 * most; texts built from variable-length lists (`in (?, ?, …)`) could grow
 * without bound, so the least recently used one is dropped past this.
 */
export const STATEMENT_CACHE_SIZE = 1_000;

/**
 * `database` as kysely's driver sees it, with `prepare` answered from a
 * cache keyed by SQL text (least recently used dropped past `size`).
 * Sharing one prepared statement is safe here because kysely's SQLite driver
 * runs one query at a time on its one connection (a mutex), and a stream
 * holds the connection until its iterator is done. better-sqlite3 re-prepares
 * a cached statement itself after a schema change (SQLite's `prepare_v2`).
 */
export function cachingDatabase(database: Database.Database, size = STATEMENT_CACHE_SIZE): SqliteDatabase {
  const cache = new Map<string, SqliteStatement>();
  return {
    close: () => {
      cache.clear();
      database.close();
    },
    prepare: (text: string) => {
      let stmt = cache.get(text);
      if (stmt) {
        // re-insert: a Map iterates in insertion order, so the first key is the least recently used
        cache.delete(text);
      } else {
        stmt = database.prepare(text) as unknown as SqliteStatement;
        if (cache.size >= size) cache.delete(cache.keys().next().value!);
      }
      cache.set(text, stmt);
      return stmt;
    },
  };
}

/** A kysely dialect over one better-sqlite3 connection, with `BEGIN IMMEDIATE` transactions and cached statements. */
export function immediateSqliteDialect(database: Database.Database): Dialect {
  return {
    createAdapter: () => new SqliteAdapter(),
    createDriver: () => new ImmediateSqliteDriver({ database: cachingDatabase(database) }),
    createIntrospector: (db) => new SqliteIntrospector(db),
    createQueryCompiler: () => new SqliteQueryCompiler(),
  };
}
