import fs from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { IdentityStore } from '../src/identity.js';
import { tempDir } from './support/harness.js';

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
    await fs.writeFile(s.file, '{not json');
    await expect(s.load()).rejects.toThrow();
  });
});
