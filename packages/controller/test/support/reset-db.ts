/**
 * Emptying a test database between tests without a test-only method on the
 * store: every table except the migration bookkeeping is cleared through a
 * connection of the test's own.
 */
import Database from 'better-sqlite3';
import type pg from 'pg';

/** Deletes every row of an SQLite database file's tables (keeps the schema and migrations). */
export function resetSqlite(path: string): void {
  const db = new Database(path);
  try {
    db.pragma('busy_timeout = 5000');
    db.pragma('foreign_keys = OFF');
    const tables = db
      .prepare(`select name from sqlite_master where type = 'table' and name not like 'sqlite_%' and name not like 'kysely_%'`)
      .all() as Array<{ name: string }>;
    db.transaction(() => {
      for (const t of tables) db.exec(`delete from "${t.name}"`);
    }).immediate();
  } finally {
    db.close();
  }
}

/** Truncates every table of the connected PostgreSQL database's public schema (keeps the schema and migrations). */
export async function resetPostgres(client: pg.Client): Promise<void> {
  const { rows } = await client.query<{ name: string }>(
    `select tablename as name from pg_tables where schemaname = 'public' and tablename not like 'kysely_%'`,
  );
  if (rows.length > 0) await client.query(`truncate ${rows.map((r) => `"${r.name}"`).join(', ')}`);
}
