/**
 * `buildfleet worker --stop-with-stdin`, as `up` starts its worker: when the
 * pipe on its standard input ends (what the kernel does when `up` dies, even
 * by SIGKILL), the worker stops instead of running on as an orphan. A real
 * worker process against a real controller; waits are on its output and its
 * exit event.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ENROLLMENT_TOKEN, startTestController, type TestController } from '../../../test/support/controller.js';
import { childEnv, ROOT } from '../../../test/support/process.js';

let ctl: TestController;
let dataDir: string;
beforeEach(async () => {
  ctl = await startTestController();
  dataDir = await mkdtemp(join(tmpdir(), 'bf-cli-stdin-'));
});
afterEach(async () => {
  await ctl.close();
  await rm(dataDir, { recursive: true, force: true });
});

describe('worker --stop-with-stdin', { timeout: 120_000 }, () => {
  it('stops and exits 0 when its standard input ends, the token having come through the same pipe', async () => {
    const args = ['--conditions=source', '--import', 'tsx', join(ROOT, 'packages/cli/src/main.ts'), 'worker', '--stop-with-stdin', '--enrollment-token-stdin'];
    const child = spawn(process.execPath, [...args, '--executor', 'shell', '--data-dir', dataDir], {
      cwd: ROOT,
      env: childEnv({ BUILDFLEET_CONTROLLER_URL: ctl.url }),
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    let output = '';
    const started = new Promise<void>((resolve, reject) => {
      const look = (c: Buffer) => {
        output += c.toString();
        if (/worker \S+ started/.test(output)) resolve();
      };
      child.stdout.on('data', look);
      child.stderr.on('data', look);
      void exited.then((code) => reject(new Error(`the worker exited (${code}) before starting:\n${output}`)));
    });
    try {
      child.stdin.write(`${ENROLLMENT_TOKEN}\n`);
      await started;
      // The parent's end of the pipe closes, as it does when the parent dies.
      child.stdin.end();
      expect(await exited).toBe(0);
      expect(output).toMatch(/standard input ended .*: stopping/);
      expect(output).toMatch(/worker stopped/);
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('exits at once when its standard input ends while it still tries to register (its controller died with its parent)', async () => {
    const args = ['--conditions=source', '--import', 'tsx', join(ROOT, 'packages/cli/src/main.ts'), 'worker', '--stop-with-stdin', '--enrollment-token-stdin'];
    // Port 9 (discard) refuses: registration retries with backoff for minutes.
    const child = spawn(process.execPath, [...args, '--executor', 'shell', '--data-dir', dataDir], {
      cwd: ROOT,
      env: childEnv({ BUILDFLEET_CONTROLLER_URL: 'http://127.0.0.1:9' }),
      stdio: ['pipe', 'ignore', 'pipe'],
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    let output = '';
    const retrying = new Promise<void>((resolve) =>
      child.stderr.on('data', (c: Buffer) => {
        output += c.toString();
        if (output.includes('retrying')) resolve();
      }),
    );
    try {
      child.stdin.write(`${ENROLLMENT_TOKEN}\n`);
      await retrying;
      child.stdin.end();
      expect(await exited).toBe(0);
      expect(output).toMatch(/standard input ended .* before the worker started: exiting/);
    } finally {
      child.kill('SIGKILL');
    }
  });
});
