/**
 * The controller's data directory is its owner's alone (issue 8): under a
 * umask of 000, and over a directory and database an older version left
 * world-readable, the directory ends 0700 and the database, its -wal and
 * -shm, credentials.json and a stored blob 0600.
 */
import { chmod, mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { paths } from '@buildfleet/protocol';
import { createLogger } from '../../src/app.js';
import { loadControllerConfig } from '../../src/config.js';
import { startController } from '../../src/server.js';

const mode = async (p: string) => (await stat(p)).mode & 0o777;

describe('controller data directory permissions', () => {
  let base: string;
  let oldUmask: number;
  beforeAll(async () => {
    base = await mkdtemp(path.join(tmpdir(), 'bf-modes-'));
    oldUmask = process.umask(0o000);
  });
  afterAll(async () => {
    process.umask(oldUmask);
    await rm(base, { recursive: true, force: true });
  });

  it('are 0700 and 0600 whatever the umask, also for what an older version left open', async () => {
    const dataDir = path.join(base, 'data');
    await mkdir(dataDir, { mode: 0o755 });
    await chmod(dataDir, 0o755);
    // A database file an older version created under the usual umask.
    await writeFile(path.join(dataDir, 'buildfleet.db'), '', { mode: 0o644 });
    await chmod(path.join(dataDir, 'buildfleet.db'), 0o644);
    const config = loadControllerConfig({}, { port: 0, dataDir, logLevel: 'silent' });
    const ctl = await startController(config, { logger: createLogger('silent') });
    try {
      const form = new FormData();
      form.append('spec', JSON.stringify({ script: 'true' }));
      form.append('source', new Blob([new Uint8Array([1, 2, 3])]), 's.tar.gz');
      const res = await fetch(ctl.url + paths.builds(), { method: 'POST', headers: { authorization: `Bearer ${ctl.firstStart!.apiToken}` }, body: form });
      expect(res.status).toBe(201);
    } finally {
      await ctl.close();
    }
    expect(await mode(dataDir)).toBe(0o700);
    const names = await readdir(dataDir, { recursive: true });
    expect(names).toContain('credentials.json');
    expect(names).toContain('buildfleet.db');
    for (const n of names) {
      const full = path.join(dataDir, n);
      const st = await stat(full);
      expect.soft(st.mode & 0o777, n).toBe(st.isDirectory() ? 0o700 : 0o600);
    }
    // The stored source is a blob file too.
    expect(names.filter((n) => n.startsWith('blobs')).length).toBeGreaterThan(1);
  });
});
