import fs from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { IdentityCorruptError, IdentityPermissionError, IdentityStore } from '../src/identity.js';
import { startWorker } from '../src/agent.js';
import { tempDir, testConfig } from './support/harness.js';

let dir: string;
beforeEach(async () => {
  dir = await tempDir();
});
afterEach(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

describe('IdentityStore', () => {
  it('is empty without a file, round-trips, replaces atomically and leaves no temp files (mode 0600)', async () => {
    const s = new IdentityStore(path.join(dir, 'worker'));
    expect(await s.load()).toEqual({});
    await s.save({ registrationId: 'r1' });
    expect(await s.load()).toEqual({ registrationId: 'r1' });
    await s.save({ workerId: 'w1', workerSecret: 'bfs_x' });
    expect(await s.load()).toEqual({ workerId: 'w1', workerSecret: 'bfs_x' });
    expect(await fs.readdir(path.join(dir, 'worker'))).toEqual(['identity.json']);
    expect((await fs.stat(s.file)).mode & 0o777).toBe(0o600);
  });

  it('a failed replace keeps the previous identity', async () => {
    const s = new IdentityStore(path.join(dir, 'worker'));
    await s.save({ workerId: 'w1', workerSecret: 'bfs_x' });
    // A directory where the file should go makes rename fail after the temp file was written.
    const blocked = new IdentityStore(path.join(dir, 'blocked'));
    await fs.mkdir(blocked.file, { recursive: true });
    await expect(blocked.save({ workerId: 'w2' })).rejects.toThrow();
    expect(await fs.readdir(path.join(dir, 'blocked'))).toEqual(['identity.json']);
    expect(await s.load()).toEqual({ workerId: 'w1', workerSecret: 'bfs_x' });
  });

  it('a corrupt file is an error, not a silent new identity', async () => {
    const s = new IdentityStore(path.join(dir, 'worker'));
    await fs.mkdir(path.dirname(s.file), { recursive: true });
    await fs.writeFile(s.file, '{not json', { mode: 0o600 });
    const err = await s.load().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(IdentityCorruptError);
    // Names the file and the way out.
    expect((err as Error).message).toContain(s.file);
    expect((err as Error).message).toMatch(/restore it .* or remove it/);
    await fs.writeFile(s.file, '[]');
    await expect(s.load()).rejects.toBeInstanceOf(IdentityCorruptError);
  });

  it('refuses a file that group or others may read or write, naming the fix; the secret is not in the message', async () => {
    const s = new IdentityStore(path.join(dir, 'worker'));
    await s.save({ workerId: 'w1', workerSecret: 'bfs_the-secret-itself' });
    for (const mode of [0o644, 0o640, 0o604, 0o620]) {
      await fs.chmod(s.file, mode);
      const err = (await s.load().catch((e: unknown) => e)) as IdentityPermissionError;
      expect(err).toBeInstanceOf(IdentityPermissionError);
      expect(err.message).toContain(`(mode ${mode.toString(8).padStart(4, '0')})`);
      expect(err.message).toContain(`chmod 600 ${s.file}`);
      expect(err.message).not.toContain('bfs_');
    }
    await fs.chmod(s.file, 0o600);
    expect(await s.load()).toEqual({ workerId: 'w1', workerSecret: 'bfs_the-secret-itself' });
    await fs.chmod(s.file, 0o400);
    expect((await s.load()).workerId).toBe('w1');
  });

  it('a worker with a readable identity file stops before sending anything', async () => {
    const config = testConfig({ url: 'http://127.0.0.1:9', enrollmentToken: 'bfe_unused-0123456789abcdef' }, dir);
    const s = new IdentityStore(config.stateDir);
    await s.save({ workerId: 'w1', workerSecret: 'bfs_x' });
    await fs.chmod(s.file, 0o644);
    let requests = 0;
    const transport = async (): Promise<Response> => {
      requests++;
      throw new Error('no request expected');
    };
    await expect(startWorker(config, { transport })).rejects.toBeInstanceOf(IdentityPermissionError);
    expect(requests).toBe(0);
  });
});
