/**
 * `buildfleet doctor` (issue 14): a missing bubblewrap and a full disk are
 * reported with their fixes. In-process with an injected PATH and statfs,
 * and as the real command on a real, small, full tmpfs when this host lets
 * us mount one (root); never by filling the real disk.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { checkController, checkDisk, checkPort, checkSandbox, defaultDoctorDeps, formatDoctor, runDoctor, type DoctorDeps } from '../src/doctor.js';
import { childEnv, runCli } from '../../../test/e2e/support.js';

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});
async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'bf-doctor-'));
  dirs.push(d);
  return d;
}

function deps(over: Partial<DoctorDeps> & { env?: NodeJS.ProcessEnv }): DoctorDeps {
  return { ...defaultDoctorDeps(over.env ?? {}), ...over };
}

describe('doctor checks', () => {
  it('reports a missing bubblewrap with how to install it', async () => {
    const [r] = await checkSandbox(deps({ env: { PATH: '/nonexistent/bin' } }));
    expect(r).toMatchObject({ name: 'sandbox', status: 'fail' });
    expect(r!.detail).toMatch(/bubblewrap \(bwrap\) is not installed/);
    expect(r!.fix).toMatch(/apt-get install bubblewrap/);
  });

  it('names the sysctl when bwrap is there but user namespaces are off', async () => {
    const d = deps({
      env: { PATH: '/usr/bin' },
      isExecutable: async (p) => p === '/usr/bin/bwrap',
      run: async (_f, args) => (args[0] === '--version' ? { code: 0, stdout: 'bubblewrap 0.8.0\n', stderr: '' } : { code: 1, stdout: '', stderr: 'bwrap: No permissions to creating new namespace\n' }),
      readText: async (p) => (p.endsWith('unprivileged_userns_clone') ? '0\n' : undefined),
    });
    const [r] = await checkSandbox(d);
    expect(r).toMatchObject({ status: 'fail' });
    expect(r!.fix).toMatch(/kernel\.unprivileged_userns_clone=1/);
  });

  it('reports a full disk, a nearly full one and a healthy one by free bytes and share', async () => {
    const dataDir = await tempDir();
    const env = { BUILDFLEET_DATA_DIR: dataDir };
    const full = await checkDisk(deps({ env, diskSpace: async () => ({ freeBytes: 0, totalBytes: 100 * 2 ** 30 }) }));
    expect(full).toMatchObject({ name: 'disk', status: 'fail' });
    expect(full.detail).toMatch(/disk nearly full: 0 B free of 100\.0 GiB/);
    expect(full.fix).toMatch(/BUILDFLEET_RETAIN_ARTIFACTS.*BUILDFLEET_BLOB_MAX_MB.*larger disk/);
    const low = await checkDisk(deps({ env, diskSpace: async () => ({ freeBytes: 3 * 2 ** 30, totalBytes: 20 * 2 ** 30 }) }));
    expect(low.status).toBe('warn');
    const fine = await checkDisk(deps({ env, diskSpace: async () => ({ freeBytes: 50 * 2 ** 30, totalBytes: 100 * 2 ** 30 }) }));
    expect(fine.status).toBe('ok');
  });

  it('checks the controller the other commands would use: BUILDFLEET_PORT, else the credentials file\'s url', async () => {
    const asked: string[] = [];
    const fetch = (async (url: string) => (asked.push(url), new Response('{}', { status: url.includes(':7788/') ? 200 : 503 }))) as typeof globalThis.fetch;
    expect(await checkController(deps({ env: { BUILDFLEET_PORT: '7788' }, fetch }))).toMatchObject({ status: 'ok', detail: 'http://127.0.0.1:7788 ready' });
    const dir = await tempDir();
    await writeFile(join(dir, 'credentials.json'), JSON.stringify({ url: 'http://127.0.0.1:7788/' }));
    expect((await checkController(deps({ env: { BUILDFLEET_DATA_DIR: dir }, fetch }))).status).toBe('ok');
    expect((await checkController(deps({ env: {}, fetch }), dir)).status).toBe('fail');
    expect(asked).toEqual(['http://127.0.0.1:7788/readyz', 'http://127.0.0.1:7788/readyz', 'http://127.0.0.1:7700/readyz']);
  });

  it('tells a taken port from one a controller already holds', async () => {
    const env = { BUILDFLEET_HOST: '127.0.0.1', BUILDFLEET_PORT: '7799' };
    const taken = await checkPort(deps({ env, portFree: async () => false, fetch: (async () => { throw new Error('refused'); }) as typeof fetch }));
    expect(taken).toMatchObject({ status: 'fail' });
    expect(taken.fix).toMatch(/BUILDFLEET_PORT/);
    const ours = await checkPort(deps({ env, portFree: async () => false, fetch: (async () => new Response('{"ok":true}', { status: 200 })) as typeof fetch }));
    expect(ours.status).toBe('ok');
  });

  it('on this machine, an embedded store with valid settings passes the controller checks', async () => {
    const dataDir = await tempDir();
    const results = await runDoctor('controller', deps({ env: { BUILDFLEET_DATA_DIR: dataDir, BUILDFLEET_PORT: '0' } }));
    const byName = Object.fromEntries(results.map((r) => [r.name, r]));
    expect(byName.database).toMatchObject({ status: 'ok' });
    expect(byName.database!.detail).toMatch(/SQLite 3\./);
    expect(byName.config).toMatchObject({ status: 'ok' });
    expect(formatDoctor(results)).toMatch(/^ok {2}/m);
  });

  it('fails the config check on a bad setting and the database check on an unreachable PostgreSQL', async () => {
    const dataDir = await tempDir();
    const results = await runDoctor(
      'controller',
      deps({ env: { BUILDFLEET_DATA_DIR: dataDir, BUILDFLEET_PORT: '0', BUILDFLEET_LEASE_MS: 'soon', DATABASE_URL: 'postgres://nobody@127.0.0.1:1/none' } }),
    );
    const byName = Object.fromEntries(results.map((r) => [r.name, r]));
    expect(byName.config).toMatchObject({ status: 'fail' });
    expect(byName.config!.detail).toMatch(/BUILDFLEET_LEASE_MS/);
    expect(byName.database).toMatchObject({ status: 'fail' });
    expect(byName.database!.fix).toMatch(/start PostgreSQL/);
  });
});

/** Mounts a 1 MiB tmpfs and fills it; undefined when this host does not allow mounting. */
async function fullTmpfs(): Promise<{ dir: string; unmount(): void } | undefined> {
  if (process.getuid?.() !== 0) return undefined;
  const dir = await tempDir();
  if (spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', dir], { stdio: 'ignore' }).status !== 0) return undefined;
  const unmount = () => execFileSync('umount', [dir]);
  try {
    await writeFile(join(dir, 'filler'), Buffer.alloc(1024 * 1024 + 4096));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') {
      unmount();
      throw e;
    }
  }
  return { dir, unmount };
}

describe('buildfleet doctor (the command)', () => {
  it('exits 1 and prints the fixes for a missing bubblewrap and a full disk', async () => {
    const fs = await fullTmpfs();
    if (!fs) console.warn('doctor: cannot mount a tmpfs here (not root or no CAP_SYS_ADMIN); the full disk is covered by the injected statfs test above only');
    try {
      const dataDir = fs ? join(fs.dir) : await tempDir();
      const r = await runCli(['doctor', '--role', 'worker'], { ...childEnv({ BUILDFLEET_DATA_DIR: dataDir, BUILDFLEET_CONTROLLER_URL: 'http://127.0.0.1:9' }), PATH: '/nonexistent/bin' });
      expect(r.code, r.stderr).toBe(1);
      expect(r.stdout).toMatch(/^FAIL {2}sandbox .*bubblewrap \(bwrap\) is not installed/m);
      expect(r.stdout).toMatch(/fix: install bubblewrap: apt-get install bubblewrap/);
      if (fs) {
        expect(r.stdout).toMatch(/^FAIL {2}disk .*disk nearly full/m);
        expect(r.stdout).toMatch(/fix: free space on the file system holding/);
      }
      expect(r.stdout).toMatch(/problem\(s\)/);
    } finally {
      fs?.unmount();
    }
  });
});
