import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { gitMetadata, normalizeRemote } from '../src/git.js';
import { loadSpec } from '../src/submit.js';

describe('git metadata for submit', () => {
  let dir: string;
  const git = (...args: string[]) => execFileSync('git', ['-C', dir, ...args], { stdio: 'pipe' }).toString().trim();

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bf-git-'));
  });
  afterEach(async () => rm(dir, { recursive: true, force: true }));

  it('reads repo (as host/owner/name), branch, commit and dirty from a checkout', async () => {
    expect(await gitMetadata(dir)).toBeUndefined();
    git('init', '-q', '-b', 'feature/x');
    git('-c', 'user.email=t@example.invalid', '-c', 'user.name=t', 'commit', '-q', '--allow-empty', '-m', 'first');
    git('remote', 'add', 'origin', 'https://someone:s3cret@example.invalid/acme/widgets.git');
    const commit = git('rev-parse', 'HEAD');
    expect(await gitMetadata(dir)).toEqual({ repo: 'example.invalid/acme/widgets', branch: 'feature/x', commit, dirty: false });
    await writeFile(join(dir, 'new.txt'), 'x');
    expect((await gitMetadata(dir))?.dirty).toBe(true);
  });

  it("merges under the project file's own metadata, which wins", async () => {
    await writeFile(join(dir, 'buildfleet.json'), JSON.stringify({ script: 'true', metadata: { branch: 'from-file' } }));
    const spec = await loadSpec(dir, { name: 'nightly', metadata: { branch: 'main', commit: 'abc' } });
    expect(spec).toMatchObject({ name: 'nightly', metadata: { branch: 'from-file', commit: 'abc' } });
  });

  it('gives every clone of one repository the same repo, without credentials', () => {
    for (const remote of [
      'https://github.com/acme/app.git',
      'https://github.com/acme/app',
      'https://user:tok3n@GitHub.com/acme/app.git/',
      'http://github.com:8080/acme/app.git',
      'git@github.com:acme/app.git',
      'github.com:acme/app',
      'ssh://git@github.com/acme/app',
      'ssh://git@github.com:22/acme/app.git',
      'git://github.com/acme/app.git',
      'git+ssh://git@github.com/~/acme/app.git',
    ]) {
      expect(normalizeRemote(remote), remote).toBe('github.com/acme/app');
    }
    expect(normalizeRemote('https://gitlab.example.com/group/sub/app.git')).toBe('gitlab.example.com/group/sub/app');
  });

  it('leaves local paths as they are', () => {
    expect(normalizeRemote('/srv/git/app.git')).toBe('/srv/git/app.git');
    expect(normalizeRemote('../app')).toBe('../app');
    expect(normalizeRemote('file:///srv/git/app.git')).toBe('file:///srv/git/app.git');
  });
});
