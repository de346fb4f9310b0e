/**
 * A controller refuses to start on a database that a newer buildfleet
 * migrated, with a message that says what to do, and changes nothing.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'kysely';
import { afterAll, describe, expect, it } from 'vitest';
import { openDatabase, openStore } from '../../src/store/index.js';
import { SchemaTooNewError } from '../../src/store/schema-guard.js';
import { loadControllerConfig } from '../../src/config.js';
import { startController } from '../../src/server.js';
import { createTestDatabase, describePg } from '../support/pg.js';

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function futureMigration(opts: { databaseUrl?: string; sqlitePath?: string }): Promise<void> {
  const store = await openStore(opts);
  await store.migrate();
  await store.close();
  const { db } = openDatabase(opts);
  await sql`insert into kysely_migration (name, timestamp) values ('9999_from_the_future', '2099-01-01T00:00:00.000Z')`.execute(db);
  await db.destroy();
}

describe('schema newer than the code (SQLite)', () => {
  it('migrate() and startController refuse with a clear message', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'bf-schema-'));
    dirs.push(dataDir);
    const sqlitePath = join(dataDir, 'buildfleet.db');
    await futureMigration({ sqlitePath });
    const store = await openStore({ sqlitePath });
    const err = await store.migrate().catch((e: unknown) => e);
    await store.close();
    expect(err).toBeInstanceOf(SchemaTooNewError);
    expect((err as Error).message).toMatch(/migrated by a newer buildfleet .*9999_from_the_future.*knows up to 0\d{3}_/);
    const config = loadControllerConfig({}, { host: '127.0.0.1', port: 0, dataDir, logLevel: 'silent' });
    await expect(startController(config, { reaper: false })).rejects.toThrow(SchemaTooNewError);
  });
});

describePg('schema newer than the code (PostgreSQL)', () => {
  it('migrate() refuses', async () => {
    const db = await createTestDatabase();
    try {
      await futureMigration({ databaseUrl: db.url });
      const store = await openStore({ databaseUrl: db.url });
      await expect(store.migrate()).rejects.toThrow(SchemaTooNewError);
      await store.close();
    } finally {
      await db.drop();
    }
  });
});
