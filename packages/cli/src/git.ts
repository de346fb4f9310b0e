/**
 * What `buildfleet submit` records about a git checkout in the build's
 * `metadata`: `repo` (the `origin` remote, without any credentials in it),
 * `branch`, `commit` and `dirty` (uncommitted changes). Read with the `git`
 * command; a directory outside a checkout, or no git installed, gives
 * nothing (a build needs none of it).
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface GitMetadata {
  repo?: string;
  branch?: string;
  commit?: string;
  dirty?: boolean;
}

async function git(dir: string, args: string[]): Promise<string | undefined> {
  try {
    const { stdout } = await run('git', ['-C', dir, ...args], { timeout: 10_000, maxBuffer: 4 * 1024 * 1024 });
    return stdout.trim();
  } catch {
    return undefined;
  }
}

/** A remote URL without user or password (`https://token@host/x` → `https://host/x`); scp-like `git@host:x` stays. */
export function withoutCredentials(url: string): string {
  try {
    const u = new URL(url);
    if (u.username || u.password) {
      u.username = '';
      u.password = '';
    }
    return u.toString();
  } catch {
    return url;
  }
}

/** The checkout's metadata, or undefined when `dir` is not in a git work tree. */
export async function gitMetadata(dir: string): Promise<GitMetadata | undefined> {
  if ((await git(dir, ['rev-parse', '--is-inside-work-tree'])) !== 'true') return undefined;
  const [commit, branch, remote, status] = await Promise.all([
    git(dir, ['rev-parse', 'HEAD']),
    git(dir, ['rev-parse', '--abbrev-ref', 'HEAD']),
    git(dir, ['config', '--get', 'remote.origin.url']),
    git(dir, ['status', '--porcelain', '--untracked-files=normal', '--', '.']),
  ]);
  const meta: GitMetadata = {};
  if (remote) meta.repo = withoutCredentials(remote);
  if (branch && branch !== 'HEAD') meta.branch = branch;
  if (commit && /^[0-9a-f]{40,64}$/.test(commit)) meta.commit = commit;
  if (status !== undefined) meta.dirty = status.length > 0;
  return meta;
}
