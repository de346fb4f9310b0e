/**
 * One Ctrl-C drains, as a new user meets it: the worker runs under npm
 * (`npm run buildfleet -- worker`, like `npm start`) as the foreground job of
 * a terminal, and Ctrl-C sends SIGINT to the whole process group. npm (and
 * tsx) forward it to their child, so the CLI receives it more than once; it
 * must drain (the running build finishes), not cancel the build (issue 10).
 */
import { spawn } from 'node:child_process';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ENROLLMENT_TOKEN, startTestController, type TestController } from '../support/controller.js';
import { ROOT, childEnv, waitFor } from '../support/process.js';
import { tarGz } from '../../packages/worker/test/support/tarball.js';

let dir: string;
let ctl: TestController;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bf-e2e-ctrlc-'));
  // The build waits on a file here: a root worker runs it as nobody.
  await chmod(dir, 0o711);
  ctl = await startTestController({ config: { heartbeatIntervalMs: 300 } });
});
afterAll(async () => {
  await ctl?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('Ctrl-C on a worker run through npm', { timeout: 120_000 }, () => {
  it('drains: the running build finishes succeeded and the worker stops cleanly', async () => {
    const npm = spawn('npm', ['run', '--silent', 'buildfleet', '--', 'worker'], {
      cwd: ROOT,
      // Its own process group, as a terminal's foreground job.
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: childEnv({ BUILDFLEET_CONTROLLER_URL: ctl.url, BUILDFLEET_ENROLLMENT_TOKEN: ENROLLMENT_TOKEN, BUILDFLEET_DATA_DIR: join(dir, 'worker'), BUILDFLEET_EXECUTOR: 'shell' }),
    });
    let out = '';
    npm.stdout.on('data', (c: Buffer) => (out += c.toString()));
    npm.stderr.on('data', (c: Buffer) => (out += c.toString()));
    const exited = new Promise<number | null>((r) => npm.on('exit', (code) => r(code)));
    try {
      await waitFor(async () => (await ctl.api.workers()).length > 0, `the worker to register\n${out}`, 60_000);
      const go = join(dir, 'go');
      const build = await ctl.api.submit({ script: 'echo started; while [ ! -f "$GO" ]; do sleep 0.05; done; echo finished', env: { GO: go } }, tarGz([]));
      await waitFor(async () => (await ctl.api.log(build.id)).includes('started'), 'the build to start', 30_000);

      process.kill(-npm.pid!, 'SIGINT'); // Ctrl-C: the whole foreground process group
      await waitFor(() => /draining/.test(out), `the worker to say it drains\n${out}`, 30_000);
      await writeFile(go, '');

      expect(await ctl.api.finished(build.id, 30_000)).toMatchObject({ state: 'succeeded' });
      await exited; // npm itself may end by the signal it got; the worker under it said how it ended:
      expect(out).toContain('worker stopped');
      expect(out).not.toMatch(/canceling running builds|exiting now/);
    } finally {
      if (npm.exitCode === null && npm.signalCode === null) process.kill(-npm.pid!, 'SIGKILL');
    }
  });
});
