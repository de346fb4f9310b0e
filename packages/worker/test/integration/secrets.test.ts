/**
 * Secrets end to end (issue 13; docs/protocol.md "Secrets"): a real
 * controller in this process (SQLite, then PostgreSQL) and a real worker
 * running real shell scripts.
 *
 * - The build that asks for a secret, inside its scope, gets the value (as a
 *   variable, and as a file) — shown by the value's SHA-256, which the
 *   script prints: the value itself never needs to be in a test's spec.
 * - The value never reaches the stored log: printed plainly (masked by the
 *   worker as `***`; the controller's own second line would write `*` of the
 *   same length), split across two log chunks (which the controller, seeing
 *   each chunk alone, could not mask), or base64-encoded; nor any API
 *   answer, nor the controller's log output, nor the database or any file of
 *   the controller's data directory.
 * - A build asking for a secret out of its scope fails before its script
 *   runs: at submit, and at hand-out when the scope was narrowed after it.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import Database from 'better-sqlite3';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { createLogger } from '@buildfleet/controller';
import { paths, type Build } from '@buildfleet/protocol';
import { startTestController, type TestController } from '../../../../test/support/controller.js';
import { describePg } from '../../../controller/test/support/pg.js';
import type { BuildResult } from '../../src/build-run.js';
import { tarGz } from '../support/tarball.js';
import { once } from '../support/wait.js';
import { fleet } from './harness.js';

const VALUE = 'npm_S3cr3t-tok3n-4f9a2c71e8';
const FILE_VALUE = 'file-secret-77d1c0b9aa\n';
const KEY = 'ab'.repeat(32);
const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');
const b64 = (s: string) => Buffer.from(s).toString('base64');

const f = fleet();
let ctlLog: string[] = [];

function start(store: 'sqlite' | 'postgres'): Promise<TestController> {
  ctlLog = [];
  const logger = createLogger('debug', { write: (line: string) => void ctlLog.push(line) });
  return f.controller({ store, logger, config: { secretsKey: KEY, heartbeatIntervalMs: 200, leaseMs: 5_000 } });
}

// Chunks of 16 bytes, flushed every 50 ms: a value printed in two halves
// with a pause between is cut across two chunks unless the worker holds it back.
const worker = (labels: string[] = []) => f.worker({ labels }, { logChunkBytes: 16, logFlushMs: 50 });

async function putSecret(name: string, value: string, scope?: unknown): Promise<void> {
  const res = await f.ctl.api.req('PUT', paths.secret(name), { json: { value, ...(scope ? { scope } : {}) } });
  expect(res.status, await res.clone().text()).toBeLessThan(300);
}

/** Every API answer a user could read about this build, the secrets and the fleet, as one text. */
async function apiAnswers(build: Build): Promise<string> {
  const out: string[] = [];
  for (const p of [
    paths.build(build.id),
    paths.builds(),
    `${paths.logs(build.id)}?offset=0`,
    paths.secrets(),
    paths.secret('NPM_TOKEN'),
    paths.secretHandouts('NPM_TOKEN'),
    paths.workers(),
    paths.caches(),
    paths.stats(),
    '/metrics',
  ]) {
    const res = await f.ctl.api.req('GET', p);
    expect(res.status, p).toBe(200);
    out.push(await res.text());
  }
  return out.join('\n');
}

/** Everything under the controller's data directory (database, WAL, blobs) as one buffer. */
async function dataDirBytes(dir: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (const e of await fs.readdir(dir, { recursive: true, withFileTypes: true })) {
    if (e.isFile()) parts.push(await fs.readFile(path.join(e.parentPath, e.name)));
  }
  return Buffer.concat(parts);
}

/** The stored (sealed) form of a secret, read from the database directly. */
async function storedForm(c: TestController, name: string): Promise<string> {
  if (c.databaseUrl) {
    const client = new pg.Client({ connectionString: c.databaseUrl });
    await client.connect();
    try {
      return String((await client.query('SELECT sealed FROM secrets WHERE name = $1', [name])).rows[0]?.sealed);
    } finally {
      await client.end();
    }
  }
  const db = new Database(path.join(c.dataDir, 'buildfleet.db'), { readonly: true });
  try {
    return String((db.prepare('SELECT sealed FROM secrets WHERE name = ?').get(name) as { sealed: string } | undefined)?.sealed);
  } finally {
    db.close();
  }
}

function secretSuite(store: 'sqlite' | 'postgres'): void {
  it('reaches the build inside its scope as a variable and a file, masked everywhere it could leak', async () => {
    const c = await start(store);
    await putSecret('NPM_TOKEN', VALUE, { metadata: { repo: 'acme/app' } });
    await putSecret('DEPLOY_KEY', FILE_VALUE);
    await worker();
    const half = VALUE.indexOf('-');
    const script = [
      'printf "sha=%s\\n" "$(printf %s "$NPM_TOKEN" | sha256sum | cut -d" " -f1)"',
      'echo "plain: $NPM_TOKEN."',
      // The two halves in two writes 0.3 s apart: two log chunks at the controller.
      `printf "split: %s" "$(printf %s "$NPM_TOKEN" | cut -c1-${half})"; sleep 0.3; printf "%s.\\n" "$(printf %s "$NPM_TOKEN" | cut -c${half + 1}-)"`,
      'echo "b64: $(printf %s "$NPM_TOKEN" | base64)"',
      'echo "file at $KEY_FILE"; echo "file sha=$(sha256sum < "$KEY_FILE" | cut -d" " -f1)"; cat "$KEY_FILE"',
      'case "$KEY_FILE" in "$BUILDFLEET_WORKSPACE"*) echo "file inside the workspace";; esac',
    ].join('\n');
    const build = await c.api.submit(
      { script, metadata: { repo: 'acme/app' }, secrets: ['NPM_TOKEN', { name: 'DEPLOY_KEY', as: 'file', env: 'KEY_FILE' }] },
      tarGz([]),
    );
    // Same repository, but it does not ask: it gets nothing.
    const other = await c.api.submit({ script: 'echo "token=${NPM_TOKEN:-unset} key=${KEY_FILE:-unset}"', metadata: { repo: 'acme/app' } }, tarGz([]));
    const done = await c.api.finished(build.id);
    const log = await c.api.log(build.id);
    expect(done.state, log).toBe('succeeded');
    expect((await c.api.finished(other.id)).state).toBe('succeeded');
    expect(await c.api.scriptLog(other.id)).toBe('token=unset key=unset\n');

    // The build had the values.
    expect(log).toContain(`sha=${sha256(VALUE)}\n`);
    expect(log).toContain(`file sha=${sha256(FILE_VALUE)}\n`);
    expect(log).not.toContain('file inside the workspace');
    // The worker masked them (three stars; the controller keeps lengths).
    expect(log).toContain('plain: ***.\n');
    expect(log).toContain('split: ***.\n');
    expect(log).toContain('b64: ***\n');
    for (const leak of [VALUE, b64(VALUE), VALUE.slice(0, half), VALUE.slice(half + 1), FILE_VALUE.trim()]) expect(log).not.toContain(leak);

    // Nowhere else either.
    const answers = await apiAnswers(done);
    for (const leak of [VALUE, b64(VALUE), FILE_VALUE.trim()]) {
      expect(answers).not.toContain(leak);
      expect(ctlLog.join('')).not.toContain(leak);
    }
    expect(ctlLog.join('')).toContain('secrets handed out');
    const handouts = (await c.api.ok<{ handouts: { buildId: string; attempt: number }[] }>('GET', paths.secretHandouts('NPM_TOKEN'))).handouts;
    expect(handouts).toEqual([expect.objectContaining({ buildId: build.id, attempt: 1 })]);
    const sealed = await storedForm(c, 'NPM_TOKEN');
    expect(sealed.length).toBeGreaterThan(VALUE.length);
    expect(sealed).not.toContain(VALUE);
    if (!c.databaseUrl) expect((await dataDirBytes(c.dataDir)).includes(Buffer.from(VALUE))).toBe(false);
  });

  it('a build asking for a secret out of its scope fails before its script runs, at submit and at hand-out', async () => {
    const c = await start(store);
    await putSecret('NPM_TOKEN', VALUE, { metadata: { repo: 'acme/app' } });
    const marker = path.join(await f.dir('bf-marker-'), 'ran');
    const script = `touch ${marker}; echo "$NPM_TOKEN"`;

    // At submit: another repository's build.
    const other = await c.api.submit({ script, metadata: { repo: 'evil/app' }, secrets: ['NPM_TOKEN'] }, tarGz([]));
    expect(other).toMatchObject({ state: 'failed', reason: 'secret_unavailable' });
    expect(other.message).toMatch(/NPM_TOKEN/);

    // At hand-out: in scope when submitted (no worker has its label yet), narrowed before a worker takes it.
    const late = await c.api.submit({ script, labels: ['late'], metadata: { repo: 'acme/app' }, secrets: ['NPM_TOKEN'] }, tarGz([]));
    expect(late.state).toBe('queued');
    await putSecret('NPM_TOKEN', VALUE, { metadata: { repo: 'acme/other' } });
    const w = await worker(['late']);
    const dropped = once(w.events, 'build:dropped');
    const b = await c.api.finished(late.id);
    expect(b).toMatchObject({ state: 'failed', reason: 'secret_unavailable' });
    const [result] = (await dropped) as [BuildResult];
    expect(result.dropReason).toMatch(/secrets refused: INVALID_TRANSITION/);
    await expect(fs.access(marker)).rejects.toThrow();
    expect(await c.api.scriptLog(late.id)).toBe('');
    expect((await c.api.ok<{ handouts: unknown[] }>('GET', paths.secretHandouts('NPM_TOKEN'))).handouts).toEqual([]);
  });
}

describe('secrets on the worker (SQLite)', () => secretSuite('sqlite'));
describePg('secrets on the worker (PostgreSQL)', () => {
  secretSuite('postgres');

  it('two controllers with the same key: a secret stored through one reaches a build whose worker talks to the other', async () => {
    const a = await start('postgres');
    const b = await startTestController({ databaseUrl: a.databaseUrl!, config: { secretsKey: KEY, heartbeatIntervalMs: 200, leaseMs: 5_000 } });
    try {
      await putSecret('NPM_TOKEN', VALUE);
      await f.worker({}, { logChunkBytes: 16, logFlushMs: 50 }, undefined, b.url);
      const build = await a.api.submit({ script: 'printf "sha=%s\\n" "$(printf %s "$NPM_TOKEN" | sha256sum | cut -d" " -f1)"; echo "$NPM_TOKEN"', secrets: ['NPM_TOKEN'] }, tarGz([]));
      expect((await b.api.finished(build.id)).state).toBe('succeeded');
      expect(await b.api.scriptLog(build.id)).toBe(`sha=${sha256(VALUE)}\n***\n`);
    } finally {
      await b.close();
    }
  });
});
