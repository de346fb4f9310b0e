/** The host probe: a working sandbox where bubblewrap works, and a fix-it message for each way it does not. */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { probeSandbox, userNamespaceFix } from '../../src/sandbox/index.js';
import { SANDBOX, TEST_BUILD_USER, describeSandbox } from '../support/sandbox.js';

let dir: string;
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bf-probe-test-'));
  await fs.chmod(dir, 0o711);
});
afterAll(() => fs.rm(dir, { recursive: true, force: true }));

const runAs = TEST_BUILD_USER ? { runAs: TEST_BUILD_USER } : {};

describe('probeSandbox without bubblewrap', () => {
  it('says bubblewrap is missing and how to install it', () => {
    const p = probeSandbox({ bwrap: path.join(dir, 'no-such-bwrap'), scratchDir: dir, ...runAs });
    expect(p.ok).toBe(false);
    if (p.ok) return;
    expect(p.problem).toContain('no-such-bwrap');
    expect(p.fix).toContain('apt-get install bubblewrap');
  });

  it('searches PATH for a bare name', () => {
    const p = probeSandbox({ bwrap: 'bwrap-not-installed', scratchDir: dir, searchPath: dir });
    expect(p.ok).toBe(false);
  });
});

describe('userNamespaceFix', () => {
  const sys = async (files: Record<string, string>) => {
    const root = await fs.mkdtemp(path.join(dir, 'sys-'));
    for (const [name, value] of Object.entries(files)) {
      const f = path.join(root, ...name.split('.'));
      await fs.mkdir(path.dirname(f), { recursive: true });
      await fs.writeFile(f, value);
    }
    return root;
  };

  it('names the sysctl that forbids user namespaces, and how to keep the fix', async () => {
    expect(userNamespaceFix(await sys({ 'user.max_user_namespaces': '0\n' }))).toMatch(/sysctl -w user\.max_user_namespaces=15000.*sysctl\.d/);
    expect(userNamespaceFix(await sys({ 'user.max_user_namespaces': '100', 'kernel.unprivileged_userns_clone': '0' }))).toContain(
      'kernel.unprivileged_userns_clone=1',
    );
    expect(userNamespaceFix(await sys({ 'kernel.apparmor_restrict_unprivileged_userns': '1' }))).toContain('AppArmor');
    expect(userNamespaceFix(await sys({ 'user.max_user_namespaces': '100' }))).toBeUndefined();
  });
});

describeSandbox('probeSandbox with bubblewrap', () => {
  it('runs a trial sandbox as the build user and reports bwrap and its features', () => {
    expect(SANDBOX.ok).toBe(true);
    const p = probeSandbox({ bwrap: 'bwrap', scratchDir: dir, ...runAs });
    expect(p).toMatchObject({ ok: true, version: expect.stringMatching(/bubblewrap/) });
    expect(p.ok && path.isAbsolute(p.bwrap)).toBe(true);
  });

  it('a workspace directory the build user cannot reach is named in the fix', async (ctx) => {
    if (!TEST_BUILD_USER) ctx.skip();
    const closed = await fs.mkdtemp(path.join(dir, 'closed-'));
    await fs.chmod(closed, 0o700);
    const p = probeSandbox({ bwrap: 'bwrap', scratchDir: closed, ...runAs });
    expect(p.ok).toBe(false);
    if (!p.ok) expect(p.fix).toMatch(/reach the workspace directory/);
  });

  it('a root filesystem without /bin/sh fails with a fix that names it', async () => {
    const rootfs = await fs.mkdtemp(path.join(dir, 'rootfs-'));
    await fs.chmod(rootfs, 0o755);
    await fs.mkdir(path.join(rootfs, 'etc'));
    const p = probeSandbox({ bwrap: 'bwrap', scratchDir: dir, rootfs, ...runAs });
    expect(p.ok).toBe(false);
    if (!p.ok) expect(p.fix).toContain('BUILDFLEET_SANDBOX_ROOTFS');
  });
});
