import { mkdtemp, mkdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FakeClock } from '@buildfleet/protocol';
import { LocalCache } from '../../src/cache/local.js';
import { saveCaches, type CacheApi, type CacheStepDeps } from '../../src/cache/steps.js';

describe('saving caches', () => {
  let dir: string;
  let ws: string;
  let uploads: string[];
  let notes: string[];
  let deps: CacheStepDeps;

  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'bf-steps-'));
    ws = path.join(dir, 'ws');
    await mkdir(path.join(ws, '.venv', 'bin'), { recursive: true });
    await writeFile(path.join(ws, '.venv', 'pyvenv.cfg'), 'home = /usr/bin\n');
    uploads = [];
    notes = [];
    // Records what would reach the controller; the archive rules under test are all on the worker's side.
    const api: CacheApi = {
      lookup: async () => null,
      download: async () => undefined,
      upload: async (key) => {
        uploads.push(key);
        return { created: true };
      },
    };
    const clock = new FakeClock();
    deps = { api, local: new LocalCache(path.join(dir, 'local'), 1_000_000, () => clock.now()), clock, note: (l) => notes.push(l), scratchDir: path.join(dir, 'scratch') };
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('does not upload what a restore would refuse (a symlink to an absolute path), and says which entry', async () => {
    await symlink('/usr/bin/python3', path.join(ws, '.venv', 'bin', 'python'));
    await saveCaches([{ key: 'venv-1', paths: ['.venv'], exactHit: false, restored: false }], ws, deps);
    expect(uploads).toEqual([]);
    expect(notes).toHaveLength(1);
    expect(notes[0]).toMatch(/^warning: cache key "venv-1" not saved: a later restore would refuse it: archive entry "\.venv\/bin\/python": symlink to the absolute path "\/usr\/bin\/python3"$/);
  });

  it('does not upload what would unpack past the restore limits', async () => {
    await saveCaches([{ key: 'venv-1', paths: ['.venv'], exactHit: false, restored: false }], ws, { ...deps, limits: { maxBytes: 1_000_000, maxEntries: 2 } });
    expect(uploads).toEqual([]);
    expect(notes[0]).toContain('not saved: a later restore would refuse it: the archive has more than 2 entries');
  });

  it('uploads a cache a restore accepts', async () => {
    await symlink('../pyvenv.cfg', path.join(ws, '.venv', 'bin', 'cfg'));
    await saveCaches([{ key: 'venv-1', paths: ['.venv'], exactHit: false, restored: false }], ws, deps);
    expect(uploads).toEqual(['venv-1']);
    expect(notes[0]).toMatch(/^cache saved: key "venv-1"/);
  });
});
