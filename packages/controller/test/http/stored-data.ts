/**
 * Everything a controller stored, as text, on SQLite (the database file and
 * the blob directory) or PostgreSQL (every table of the database, blobs
 * included), so that a test can prove a refused request changed nothing:
 * equal snapshots before and after.
 *
 * When a worker was last seen is left out: any authenticated worker call may
 * move it, and it is not data a request may not change.
 */
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import Database from 'better-sqlite3';
import pg from 'pg';

export interface StoredData {
  /** Every table's rows and every blob file, sorted, as text. */
  snapshot(): Promise<string>;
  /** Runs one statement with `?` placeholders (test setup: rows no route writes). */
  run(sql: string, params: unknown[]): Promise<void>;
  close(): Promise<void>;
}

function line(table: string, row: Record<string, unknown>): string {
  if (table === 'workers') delete row.last_seen_at;
  return JSON.stringify(row, (_k, v: unknown) => (Buffer.isBuffer(v) ? v.toString('base64') : typeof v === 'bigint' ? String(v) : v));
}

async function blobFiles(dataDir: string): Promise<string[]> {
  const blobs = path.join(dataDir, 'blobs');
  const entries = await readdir(blobs, { recursive: true, withFileTypes: true }).catch(() => []);
  const files = entries.filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name)).sort();
  return Promise.all(files.map(async (f) => `blob ${path.relative(blobs, f)} ${(await stat(f)).size}`));
}

/** The stored data of a controller with `dataDir` and, on PostgreSQL, `databaseUrl`. */
export async function openStoredData(dataDir: string, databaseUrl: string | undefined): Promise<StoredData> {
  if (!databaseUrl) {
    const file = path.join(dataDir, 'buildfleet.db');
    return {
      async snapshot() {
        const ro = new Database(file, { readonly: true, fileMustExist: true });
        const out: string[] = [];
        try {
          const tables = ro.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name").all() as Array<{ name: string }>;
          for (const { name } of tables) {
            const rows = ro.prepare(`SELECT * FROM "${name}"`).all() as Array<Record<string, unknown>>;
            out.push(`# ${name}`, ...rows.map((r) => line(name, r)).sort());
          }
        } finally {
          ro.close();
        }
        return [...out, ...(await blobFiles(dataDir))].join('\n');
      },
      async run(sql, params) {
        const db = new Database(file);
        try {
          db.prepare(sql).run(...params);
        } finally {
          db.close();
        }
      },
      async close() {},
    };
  }
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  return {
    async snapshot() {
      const out: string[] = [];
      const tables = await client.query<{ name: string }>("SELECT table_name AS name FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name");
      for (const { name } of tables.rows) {
        const rows = await client.query<Record<string, unknown>>(`SELECT * FROM "${name}"`);
        out.push(`# ${name}`, ...rows.rows.map((r) => line(name, r)).sort());
      }
      return [...out, ...(await blobFiles(dataDir))].join('\n');
    },
    async run(sql, params) {
      let n = 0;
      await client.query(sql.replace(/\?/g, () => `$${++n}`), params);
    },
    close: () => client.end(),
  };
}
