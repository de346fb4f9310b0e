/**
 * A fresh PostgreSQL database per run, dropped afterwards (as the controller's
 * tests do in `packages/controller/test/support/pg.ts`), and the server-side
 * transaction counter `pg_stat_database.xact_commit`.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';

/** Server used for bench databases (any database on it); BENCH_PG_URL overrides. */
export const PG_URL = process.env.BENCH_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

export interface BenchDatabase {
  name: string;
  url: string;
  /** Committed transactions in this database so far (PostgreSQL's own count). */
  xactCommit(): Promise<number>;
  drop(): Promise<void>;
}

async function admin<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: PG_URL, connectionTimeoutMillis: 5_000 });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end().catch(() => {});
  }
}

/** Whether the server answers within 3 s. */
export async function pgAvailable(): Promise<boolean> {
  try {
    await admin((c) => c.query('SELECT 1'));
    return true;
  } catch {
    return false;
  }
}

/** Creates `bf_bench_<pid>_<random>`. */
export async function createDatabase(): Promise<BenchDatabase> {
  const name = `bf_bench_${process.pid}_${randomBytes(4).toString('hex')}`;
  await admin((c) => c.query(`CREATE DATABASE ${name}`));
  const u = new URL(PG_URL);
  u.pathname = `/${name}`;
  return {
    name,
    url: u.toString(),
    xactCommit: () =>
      admin(async (c) => {
        // Stats are cached per transaction; a fresh autocommit query sees the latest flush.
        const r = await c.query('SELECT xact_commit FROM pg_stat_database WHERE datname = $1', [name]);
        return Number(r.rows[0]?.xact_commit ?? 0);
      }),
    drop: () =>
      admin(async (c) => {
        // pool.end() resolves before its connections are gone; terminating one
        // still closing makes its client emit an unhandled FATAL 57P01. So
        // give them up to 2 s to leave before forcing.
        const deadline = performance.now() + 2_000;
        const left = async () => Number((await c.query('SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1', [name])).rows[0].n);
        while ((await left()) > 0 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 20));
        await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      }),
  };
}
