/**
 * Real PostgreSQL for tests (design rule 13: real databases, isolated per
 * test file). Every test file gets its own freshly created database on the
 * server named by `BUILDFLEET_TEST_PG_URL` (default
 * postgres://postgres@127.0.0.1:5432/postgres) and drops it afterwards.
 *
 * When the server does not answer, PostgreSQL suites are skipped with a loud
 * banner on a developer's machine, and registered as a failing test in CI
 * (`CI=true`), so a CI run without PostgreSQL can never look green.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { describe, it } from 'vitest';

/** Connection URL of the server used for test databases (any database on it). */
export const TEST_PG_URL = process.env.BUILDFLEET_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

let availability: Promise<boolean> | undefined;

/** Whether the test server answers a query within ~3 s. Decided once per process. */
export function pgAvailable(): Promise<boolean> {
  availability ??= (async () => {
    const client = new pg.Client({ connectionString: TEST_PG_URL, connectionTimeoutMillis: 3_000 });
    try {
      await client.connect();
      await client.query('SELECT 1');
      return true;
    } catch {
      return false;
    } finally {
      await client.end().catch(() => {});
    }
  })();
  return availability;
}

/** A database created for one test file. */
export interface TestDatabase {
  /** Connection URL of the new database. */
  url: string;
  /** Name of the new database. */
  name: string;
  /** Terminates leftover connections and drops the database. */
  drop(): Promise<void>;
}

async function admin<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: TEST_PG_URL, connectionTimeoutMillis: 5_000 });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => {});
  }
}

/**
 * Creates a uniquely named empty database (`bf_test_<pid>_<random>`).
 * Throws when the server is unreachable: guard with `describePg`.
 */
export async function createTestDatabase(): Promise<TestDatabase> {
  const name = `bf_test_${process.pid}_${randomBytes(6).toString('hex')}`;
  await admin((c) => c.query(`CREATE DATABASE ${name}`));
  return {
    name,
    url: withDatabase(TEST_PG_URL, name),
    drop: () =>
      admin(async (c) => {
        // pool.end() resolves before its connections have closed; terminating
        // them then makes the closing client emit an unhandled FATAL 57P01.
        // So give connections up to 1 s to leave, then terminate the rest.
        const deadline = performance.now() + 1_000;
        const count = async () =>
          Number((await c.query('SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()', [name])).rows[0].n);
        while ((await count()) > 0 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 20));
        await c.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()', [name]);
        await c.query(`DROP DATABASE IF EXISTS ${name}`);
      }),
  };
}

const available = await pgAvailable();

/**
 * `describe` for suites that need PostgreSQL. Unreachable server: in CI a
 * failing test says so; elsewhere a loud warning and `describe.skip`.
 */
export function describePg(name: string, fn: () => void): void {
  if (available) {
    describe(name, fn);
    return;
  }
  if (process.env.CI === 'true') {
    describe(name, () => {
      it('needs PostgreSQL', () => {
        throw new Error(`PostgreSQL is required in CI but ${TEST_PG_URL} did not answer (set BUILDFLEET_TEST_PG_URL)`);
      });
    });
    return;
  }
  const bar = '!'.repeat(78);
  console.warn(`\n${bar}\n!! SKIPPED "${name}": PostgreSQL at ${TEST_PG_URL} did not answer.\n!! Start PostgreSQL 15 or set BUILDFLEET_TEST_PG_URL to run these tests.\n${bar}\n`);
  describe.skip(name, fn);
}
