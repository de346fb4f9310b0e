/**
 * What `buildfleet submit` records about a git checkout in the build's
 * `metadata`: `repo` (the `origin` remote as `host/owner/name`, see normalizeRemote),
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

/**
 * The `origin` remote as `host/owner/name`, the one name every clone of a
 * repository shares whatever its protocol: `https://user:token@github.com/acme/app.git`,
 * `git@github.com:acme/app.git` and `ssh://git@github.com:22/acme/app` all give
 * `github.com/acme/app`. Credentials, port, a trailing `/` and `.git` are
 * dropped, the host is lower-cased. A local path or `file://` URL stays as
 * it is. Why: `repo` scopes secrets and caches, and a scope written as
 * `repo=github.com/acme/app` must match every checkout of that repository.
 */
export function normalizeRemote(remote: string): string {
  const url = remote.trim();
  let host: string;
  let path: string;
  // scp-like `[user@]host:path` (git's own rule: a colon before any slash, not `://`).
  const scp = /^(?:[^@/]+@)?([^:/]+):(?!\/\/)(.+)$/.exec(url);
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(url)) {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      return url;
    }
    if (u.protocol === 'file:' || !u.hostname) return url;
    host = u.hostname;
    path = decodeURIComponent(u.pathname);
  } else if (scp?.[1] && scp[2] && scp[1].length > 1) {
    host = scp[1];
    path = scp[2];
  } else {
    return url;
  }
  path = path.replace(/^[/~]+/, '').replace(/\/+$/, '').replace(/\.git$/, '');
  host = host.toLowerCase();
  return path ? `${host}/${path}` : host;
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
  if (remote) meta.repo = normalizeRemote(remote);
  if (branch && branch !== 'HEAD') meta.branch = branch;
  if (commit && /^[0-9a-f]{40,64}$/.test(commit)) meta.commit = commit;
  if (status !== undefined) meta.dirty = status.length > 0;
  return meta;
}
