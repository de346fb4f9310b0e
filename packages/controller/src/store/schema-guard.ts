/**
 * A controller must not run on a database that a newer buildfleet migrated
 * (issue 14, "Backups and upgrades"): the newer schema may mean things this
 * version does not know, and rolling it back is not ours to do.
 */
import { sql, type Kysely } from 'kysely';

/** Thrown by `migrate()` and `restore` for a schema newer than the code. */
export class SchemaTooNewError extends Error {
  constructor(
    readonly unknown: string[],
    readonly latestKnown: string | undefined,
  ) {
    super(
      `this database was migrated by a newer buildfleet (it has migration ${unknown.join(', ')}; this version knows up to ${latestKnown ?? 'none'}). ` +
        'Run the newer buildfleet, or restore a backup taken before the upgrade; this version will not change the database.',
    );
    this.name = 'SchemaTooNewError';
  }
}

/** Throws SchemaTooNewError when `applied` holds a migration name not in `known`. */
export function assertSchemaNotNewer(applied: readonly string[], known: readonly string[]): void {
  const knownSet = new Set(known);
  const unknown = applied.filter((n) => !knownSet.has(n));
  if (unknown.length > 0) throw new SchemaTooNewError(unknown, [...known].sort().at(-1));
}

/** Names in kysely's migration table, sorted; empty when the table does not exist yet. */
export async function appliedMigrations(db: Kysely<any>): Promise<string[]> {
  try {
    const { rows } = await sql<{ name: string }>`select name from kysely_migration order by name`.execute(db);
    return rows.map((r) => r.name);
  } catch (err) {
    const msg = String((err as Error).message);
    if (/no such table|does not exist/i.test(msg)) return [];
    throw err;
  }
}

/** Migration names this version ships, sorted. */
export async function knownMigrations(dialect: 'sqlite' | 'postgres'): Promise<string[]> {
  const { migrationProvider } = await import('./schema.js');
  return Object.keys(await migrationProvider(dialect).getMigrations()).sort();
}
