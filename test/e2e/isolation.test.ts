/**
 * Issue 8 with the real commands as processes: a sandboxed build finds no
 * token (environment, files, /proc) and cannot read the worker's identity or
 * the data directories, under `buildfleet worker` (its token in the
 * environment it was started with) and under `buildfleet up` (whose worker
 * runs in a process of its own, handed the token through a pipe).
 */
import { readFileSync } from 'node:fs';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { Build } from '@buildfleet/protocol';
import { API_TOKEN, ENROLLMENT_TOKEN, UserApi, startTestController, type TestController } from '../support/controller.js';
import { describeSandbox } from '../../packages/worker/test/support/sandbox.js';
import { tarGz } from '../../packages/worker/test/support/tarball.js';
import { childEnv, startService, waitFor, type Service } from './support.js';

/** Prints `TOKENS[...]` with every credential-shaped string the build can read, and `SEES`/`READS` for each of `$PATHS`. */
const SCRIPT = [
  `{ env; for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do tr '\\0' '\\n' < "$f"; done 2>/dev/null; grep -rhoaE 'bf[swae]_[A-Za-z0-9_-]+' /etc /workspace /tmp 2>/dev/null; } | grep -oaE 'bf[swae]_[A-Za-z0-9_-]{8,}' | sort -u > /tmp/found || true`,
  `echo "TOKENS[$(tr '\\n' ' ' < /tmp/found)]"`,
  `IFS=:; for p in $PATHS; do [ -e "$p" ] && echo "SEES $p"; cat "$p" >/dev/null 2>&1 && echo "READS $p"; done; echo probed`,
].join('\n');

function expectIsolated(log: string): void {
  expect(log).toContain('[buildfleet] executor sandbox');
  expect(log).toContain('probed');
  expect(/^TOKENS\[(.*)\]$/m.exec(log)?.[1], log).toBe('');
  expect(log.split('\n').filter((l) => /^(SEES|READS) /.test(l))).toEqual([]);
}

async function runScan(api: UserApi, paths_: string[], labels: string[] = []): Promise<{ build: Build; log: string }> {
  const submitted = await api.submit({ script: SCRIPT, env: { PATHS: paths_.join(':') }, labels, isolation: 'sandbox' }, tarGz([]));
  const build = await api.finished(submitted.id, 60_000);
  return { build, log: await api.log(build.id) };
}

describeSandbox('a sandboxed build under the real commands', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bf-e2e-iso-'));
    // The build user (nobody, when the tests run as root) passes through to the workspaces.
    await chmod(dir, 0o711);
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('under `buildfleet worker`: no token, no identity, no data directory in reach', { timeout: 120_000 }, async () => {
    let ctl: TestController | undefined;
    let worker: Service | undefined;
    try {
      ctl = await startTestController();
      const dataDir = join(dir, 'worker');
      worker = startService(
        ['worker', '--executor', 'sandbox', '--labels', 'cli'],
        childEnv({ BUILDFLEET_CONTROLLER_URL: ctl.url, BUILDFLEET_ENROLLMENT_TOKEN: ENROLLMENT_TOKEN, BUILDFLEET_DATA_DIR: dataDir }),
      );
      const { build, log } = await runScan(ctl.api, [join(dataDir, 'worker', 'identity.json'), dataDir, ctl.dataDir, join(ctl.dataDir, 'controller.db')], ['cli']);
      expect(build.state, `${log}\n${worker.output()}`).toBe('succeeded');
      expectIsolated(log);
    } finally {
      await worker?.stop();
      await ctl?.close();
    }
  });

  it('under `buildfleet up`: the worker is a process of its own with no token in its environment; the build finds none', { timeout: 120_000 }, async () => {
    const dataDir = join(dir, 'up');
    // Tokens given in the environment (no first start, so no example build): the parent holds them, the worker must not.
    const up = startService(['up'], childEnv({ BUILDFLEET_PORT: '0', BUILDFLEET_DATA_DIR: dataDir, BUILDFLEET_API_TOKEN: API_TOKEN, BUILDFLEET_ENROLLMENT_TOKEN: ENROLLMENT_TOKEN }));
    try {
      const url = await waitFor(() => /listening on (http:\/\/\S+)/.exec(up.output())?.[1], 'up to listen', 60_000);
      const pid = Number(await waitFor(() => /process of its own \(pid (\d+)\)/.exec(up.output())?.[1], 'the local worker to start', 60_000));
      expect(pid).not.toBe(up.proc.pid);
      const environ = readFileSync(`/proc/${pid}/environ`, 'utf8');
      expect(environ).not.toMatch(/bf[swae]_/);
      const api = new UserApi(url);
      await waitFor(async () => (await api.workers()).length > 0, 'the local worker to register', 60_000);
      const { build, log } = await runScan(api, [join(dataDir, 'worker', 'identity.json'), join(dataDir, 'credentials.json'), dataDir]);
      expect(build.state, `${log}\n${up.output()}`).toBe('succeeded');
      expectIsolated(log);
      expect(await up.stop()).toBe(0);
    } finally {
      await up.stop();
    }
  });
});
