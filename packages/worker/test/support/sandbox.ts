/**
 * Guards and helpers for tests that need bubblewrap or cgroups. Like the
 * PostgreSQL and Chromium guards: without bubblewrap a suite is skipped with
 * a loud banner on a developer's machine, and fails under `CI=true` (`.ci/run`
 * installs bubblewrap, so CI always runs them).
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'vitest';
import { probeSandbox, releaseCgroups, resolveBuildUser, runningAsRoot, setupCgroups, type BuildUser, type CgroupHost, type SandboxProbe } from '../../src/sandbox/index.js';

/** The user builds run as when the tests run as root (the worker's default). */
export const TEST_BUILD_USER: BuildUser | undefined = runningAsRoot() ? resolveBuildUser('nobody') : undefined;

const scratch = await fs.mkdtemp(path.join(os.tmpdir(), 'bf-probe-'));
await fs.chmod(scratch, 0o711);
/** This host's sandbox probe (bwrap from PATH, or BUILDFLEET_SANDBOX_BWRAP). */
export const SANDBOX: SandboxProbe = probeSandbox({
  bwrap: process.env.BUILDFLEET_SANDBOX_BWRAP ?? 'bwrap',
  scratchDir: scratch,
  ...(TEST_BUILD_USER ? { runAs: TEST_BUILD_USER } : {}),
});
await fs.rm(scratch, { recursive: true, force: true });

/**
 * `describe` for suites that need a working bubblewrap sandbox. Without one:
 * in CI a failing test that says why; elsewhere a loud warning and a skip.
 */
export function describeSandbox(name: string, fn: () => void): void {
  if (SANDBOX.ok) {
    describe(name, fn);
    return;
  }
  const why = `${SANDBOX.problem} (fix: ${SANDBOX.fix})`;
  if (process.env.CI === 'true') {
    describe(name, () => {
      it('needs bubblewrap', () => {
        throw new Error(`bubblewrap is required in CI: ${why}`);
      });
    });
    return;
  }
  const bar = '!'.repeat(78);
  console.warn(`\n${bar}\n!! SKIPPED "${name}": no usable bubblewrap sandbox.\n!! ${why}\n${bar}\n`);
  describe.skip(name, fn);
}

let cgroupKey = 0;
/**
 * A cgroup host for one test file (its own `buildfleet-test-…` parent), or
 * undefined when this process may not create cgroups (not root, no
 * delegation): such tests are skipped with a warning, also in CI (cgroups
 * are the host's to give; the rlimit path is tested either way).
 */
export function testCgroupHost(): CgroupHost | undefined {
  const r = setupCgroups(`test-${process.pid}-${cgroupKey++}`);
  if (r.ok) return r.host;
  console.warn(`\n!! cgroup tests SKIPPED: ${r.reason}\n`);
  return undefined;
}

/** Removes a test's cgroup parents (after its build cgroups are gone). */
export async function removeCgroupHost(host: CgroupHost | undefined): Promise<void> {
  if (host) releaseCgroups(host);
}

/** A build's host directories (workspace and tmp), owned by the build user when the tests run as root. */
export async function buildDirs(base: string, name: string): Promise<{ workspace: string; tmp: string; root: string }> {
  const root = path.join(base, name);
  const workspace = path.join(root, 'workspace');
  const tmp = path.join(root, 'tmp');
  await fs.mkdir(workspace, { recursive: true });
  await fs.mkdir(tmp, { recursive: true });
  if (TEST_BUILD_USER) {
    await fs.chmod(base, 0o711);
    await fs.chmod(root, 0o711);
    for (const d of [workspace, tmp]) await fs.chown(d, TEST_BUILD_USER.uid, TEST_BUILD_USER.gid);
  }
  return { root, workspace, tmp };
}
