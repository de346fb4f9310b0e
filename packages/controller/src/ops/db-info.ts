/**
 * What `buildfleet doctor` asks of the database, without migrating or
 * writing anything: is it reachable, which server version, which
 * migrations, and (PostgreSQL) its clock against ours.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import pg from 'pg';
import { SQLITE_FILE } from '../backup.js';
import { knownMigrations } from '../store/schema-guard.js';

export interface DatabaseInfo {
  dialect: 'sqlite' | 'postgres';
  /** `sqlite 3.45.1`, `PostgreSQL 15.8`. */
  serverVersion: string;
  /** False for a SQLite file not created yet (first start creates it). */
  exists: boolean;
  applied: string[];
  known: string[];
  /** PostgreSQL: database clock minus local clock, ms, corrected by half the round trip. */
  clockSkewMs?: number;
}

/**
 * Inspects the database the configuration names. Rejects with the driver's
 * error when PostgreSQL cannot be reached (`connectTimeoutMs`, default 5 s).
 * `localNow` is epoch ms (injected so tests can skew it).
 */
export async function inspectDatabase(opts: {
  databaseUrl?: string | undefined;
  dataDir: string;
  localNow?: () => number;
  connectTimeoutMs?: number;
}): Promise<DatabaseInfo> {
  const localNow = opts.localNow ?? Date.now;
  if (opts.databaseUrl) {
    const client = new pg.Client({ connectionString: opts.databaseUrl, connectionTimeoutMillis: opts.connectTimeoutMs ?? 5_000 });
    await client.connect();
    try {
      const version = (await client.query<{ v: string }>('show server_version')).rows[0]!.v;
      const t0 = localNow();
      const dbNow = Number((await client.query<{ now: string }>(`select (extract(epoch from clock_timestamp()) * 1000)::float8 as now`)).rows[0]!.now);
      const t1 = localNow();
      const applied = await client
        .query<{ name: string }>(`select name from kysely_migration order by name`)
        .then((r) => r.rows.map((x) => x.name))
        .catch(() => [] as string[]);
      return {
        dialect: 'postgres',
        serverVersion: `PostgreSQL ${version}`,
        exists: true,
        applied,
        known: await knownMigrations('postgres'),
        clockSkewMs: Math.round(dbNow - (t0 + t1) / 2),
      };
    } finally {
      await client.end().catch(() => {});
    }
  }
  const file = join(opts.dataDir, SQLITE_FILE);
  const exists = existsSync(file);
  const db = new Database(exists ? file : ':memory:', { readonly: exists, fileMustExist: exists });
  try {
    const version = (db.prepare('select sqlite_version() as v').get() as { v: string }).v;
    const hasTable = db.prepare(`select 1 from sqlite_master where type = 'table' and name = 'kysely_migration'`).get();
    const applied = hasTable ? (db.prepare('select name from kysely_migration order by name').all() as Array<{ name: string }>).map((r) => r.name) : [];
    return { dialect: 'sqlite', serverVersion: `SQLite ${version}`, exists, applied, known: await knownMigrations('sqlite') };
  } finally {
    db.close();
  }
}
