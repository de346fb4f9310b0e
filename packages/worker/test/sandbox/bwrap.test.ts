/** The bubblewrap command line, as data: what is bound, hidden, shared and in which order. */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { bwrapArgs, hiddenPaths, rootEntries, type SandboxMounts } from '../../src/sandbox/index.js';

const mounts = (over: Partial<SandboxMounts> = {}): SandboxMounts => ({
  root: [
    { name: '/usr', source: '/usr' },
    { name: '/bin', symlink: 'usr/bin' },
    { name: '/opt', source: '/opt' },
  ],
  hide: [],
  workspace: '/ws/b1/workspace',
  tmp: '/ws/b1/tmp',
  network: false,
  disableUserns: true,
  ...over,
});

/** `flag a b` triples etc. as strings, for order checks. */
const at = (args: string[], ...seq: string[]) => args.findIndex((_, i) => seq.every((s, j) => args[i + j] === s));

describe('bwrapArgs', () => {
  it('unshares every namespace, runs as 1000:1000, dies with the worker, ends with the command', () => {
    const a = bwrapArgs(mounts(), ['/bin/sh', '-c', 'make']);
    for (const f of ['--unshare-all', '--unshare-user', '--disable-userns', '--die-with-parent', '--new-session']) expect(a).toContain(f);
    expect(a).not.toContain('--share-net');
    expect(at(a, '--uid', '1000', '--gid', '1000')).toBeGreaterThanOrEqual(0);
    expect(a.slice(-4)).toEqual(['--', '/bin/sh', '-c', 'make']);
  });

  it('shares the network only when asked', () => {
    expect(bwrapArgs(mounts({ network: true }), ['true'])).toContain('--share-net');
  });

  it('leaves out --disable-userns for a bwrap that lacks it', () => {
    expect(bwrapArgs(mounts({ disableUserns: false }), ['true'])).not.toContain('--disable-userns');
  });

  it('binds the root read-only, the workspace and /tmp read-write, then makes / read-only', () => {
    const a = bwrapArgs(mounts(), ['true']);
    expect(at(a, '--ro-bind', '/usr', '/usr')).toBeGreaterThanOrEqual(0);
    expect(at(a, '--symlink', 'usr/bin', '/bin')).toBeGreaterThanOrEqual(0);
    const ws = at(a, '--bind', '/ws/b1/workspace', '/workspace');
    const tmp = at(a, '--bind', '/ws/b1/tmp', '/tmp');
    const ro = at(a, '--remount-ro', '/');
    expect(ws).toBeGreaterThan(at(a, '--ro-bind', '/opt', '/opt'));
    expect(tmp).toBeGreaterThan(0);
    expect(ro).toBeGreaterThan(Math.max(ws, tmp));
    expect(at(a, '--chdir', '/workspace')).toBeGreaterThan(ro);
    // Exactly these read-write binds: nothing else of the host is writable.
    expect(a.filter((x) => x === '--bind')).toHaveLength(3);
  });

  it('covers a hidden path with a tmpfs only where a bound directory shows it, after the binds', () => {
    const a = bwrapArgs(mounts({ hide: ['/opt/buildfleet/worker', '/var/lib/buildfleet'] }), ['true']);
    const cover = at(a, '--tmpfs', '/opt/buildfleet/worker');
    expect(cover).toBeGreaterThan(at(a, '--ro-bind', '/opt', '/opt'));
    expect(a).not.toContain('/var/lib/buildfleet');
    // "/optx" is not inside "/opt".
    expect(bwrapArgs(mounts({ hide: ['/optx/data'] }), ['true'])).not.toContain('/optx/data');
  });

  it('covers a hidden file with /dev/null where a bound directory shows it', () => {
    const a = bwrapArgs(mounts({ hideFiles: ['/opt/bf/tls.key', '/srv/tls.key'] }), ['true']);
    expect(at(a, '--dev-bind', '/dev/null', '/opt/bf/tls.key')).toBeGreaterThan(at(a, '--ro-bind', '/opt', '/opt'));
    expect(a).not.toContain('/srv/tls.key');
  });

  it('reports the init pid on the info descriptor when asked', () => {
    expect(at(bwrapArgs(mounts({ infoFd: 3 }), ['true']), '--info-fd', '3')).toBeGreaterThanOrEqual(0);
  });
});

describe('rootEntries', () => {
  it('on the host: only system directories, symlinks kept as symlinks', () => {
    const names = rootEntries().map((e) => e.name);
    expect(names).toContain('/usr');
    expect(names).toContain('/etc');
    for (const hidden of ['/home', '/root', '/run', '/var', '/tmp', '/srv', '/mnt', '/proc', '/sys', '/work']) expect(names).not.toContain(hidden);
  });

  it('with a root filesystem: its entries, but not the ones the sandbox mounts itself', async () => {
    const rootfs = await fs.mkdtemp(path.join(os.tmpdir(), 'bf-rootfs-'));
    for (const d of ['usr', 'etc', 'var', 'home', 'proc', 'dev', 'tmp', 'sys']) await fs.mkdir(path.join(rootfs, d));
    await fs.symlink('usr/bin', path.join(rootfs, 'bin'));
    try {
      expect(rootEntries(rootfs)).toEqual([
        { name: '/bin', symlink: 'usr/bin' },
        { name: '/etc', source: path.join(rootfs, 'etc') },
        { name: '/home', source: path.join(rootfs, 'home') },
        { name: '/usr', source: path.join(rootfs, 'usr') },
        { name: '/var', source: path.join(rootfs, 'var') },
      ]);
    } finally {
      await fs.rm(rootfs, { recursive: true, force: true });
    }
  });
});

describe('hiddenPaths', () => {
  it('resolves host paths to where the bound entries show them: directories, files, symlinks; skips the rest', async () => {
    const host = await fs.mkdtemp(path.join(os.tmpdir(), 'bf-hidden-'));
    try {
      await fs.mkdir(path.join(host, 'etc', 'buildfleet'), { recursive: true });
      await fs.writeFile(path.join(host, 'etc', 'buildfleet', 'worker.env'), 'x');
      await fs.writeFile(path.join(host, 'etc', 'tls.key'), 'x');
      await fs.symlink(path.join(host, 'etc', 'tls.key'), path.join(host, 'key-link'));
      // A root filesystem: /etc in the sandbox is <host>/etc.
      const root = [{ name: '/etc', source: path.join(host, 'etc') }];
      const h = hiddenPaths(root, [
        path.join(host, 'etc', 'buildfleet'),
        path.join(host, 'etc', 'buildfleet', 'worker.env'), // inside a hidden directory: covered by it
        path.join(host, 'key-link'), // what a build would read is the target
        path.join(host, 'etc', 'missing'),
        path.join(host, 'elsewhere'),
      ]);
      expect(h).toEqual({ dirs: ['/etc/buildfleet'], files: ['/etc/tls.key'] });
    } finally {
      await fs.rm(host, { recursive: true, force: true });
    }
  });
});
