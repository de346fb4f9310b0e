import pg from 'pg';
import { EventEmitter } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, describePg, type TestDatabase } from '../support/pg.js';
import { once, waitFor } from '../support/wait.js';

describePg('test support: createTestDatabase', () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await db?.drop();
  });

  it('creates a fresh database and drops it even with a connection left open', async () => {
    const client = new pg.Client({ connectionString: db.url });
    await client.connect();
    client.on('error', () => {});
    const { rows } = await client.query<{ d: string }>('SELECT current_database() AS d');
    expect(rows[0]!.d).toBe(db.name);
    await db.drop();
    const admin = new pg.Client({ connectionString: process.env.BUILDFLEET_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres' });
    await admin.connect();
    const left = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [db.name]);
    await admin.end();
    expect(left.rowCount).toBe(0);
    await client.end().catch(() => {});
  });
});

it('waitFor names what it waited for on timeout', async () => {
  await expect(waitFor(() => false, { timeoutMs: 50, what: 'the moon' })).rejects.toThrow(/the moon/);
});

it('waitFor returns once the condition holds and wakes on events', async () => {
  const e = new EventEmitter();
  let ready = false;
  const p = waitFor(() => ready, { timeoutMs: 2_000, intervalMs: 10_000, what: 'ready', wakeOn: { emitter: e, event: 'x' } });
  ready = true;
  e.emit('x');
  await p;
  const q = once(e, 'y');
  e.emit('y', 1, 2);
  expect(await q).toEqual([1, 2]);
});

describe('describePg without a reachable PostgreSQL', () => {
  const repoRoot = fileURLToPath(new URL('../../../../', import.meta.url));
  const supportPg = fileURLToPath(new URL('../support/pg.ts', import.meta.url));
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bf-describepg-'));
    await writeFile(join(dir, 'vitest.config.mjs'), `export default { test: { include: ['*.test.ts'] } };\n`);
    await writeFile(
      join(dir, 'probe.test.ts'),
      `import { it } from 'vitest';\nimport { describePg } from ${JSON.stringify(supportPg)};\n` +
        `describePg('needs pg', () => { it('uses pg', () => {}); });\nit('other', () => {});\n`,
    );
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** Runs the probe file in a child vitest against a port where nothing listens. */
  function runProbe(ci: boolean) {
    const env: Record<string, string | undefined> = { ...process.env, BUILDFLEET_TEST_PG_URL: 'postgres://postgres@127.0.0.1:1/none', CI: ci ? 'true' : '' };
    delete env.VITEST;
    delete env.VITEST_POOL_ID;
    delete env.VITEST_WORKER_ID;
    return execa(join(repoRoot, 'node_modules/.bin/vitest'), ['run', '--root', dir, '--config', join(dir, 'vitest.config.mjs')], {
      env,
      extendEnv: false,
      reject: false,
      all: true,
      cwd: repoRoot,
    });
  }

  it('fails in CI, saying PostgreSQL is required', async () => {
    const r = await runProbe(true);
    expect(r.all).toMatch(/PostgreSQL is required in CI/);
    expect(r.exitCode).not.toBe(0);
  });

  it('skips loudly elsewhere', async () => {
    const r = await runProbe(false);
    expect(r.all).toMatch(/!{20,}/);
    expect(r.all).toMatch(/SKIPPED "needs pg"/);
    expect(r.all).toMatch(/1 skipped/);
    expect(r.exitCode).toBe(0);
  });
});
