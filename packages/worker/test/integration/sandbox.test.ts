/**
 * Issue 8 "Done when", with a real controller (in this process), a real
 * worker and real bubblewrap: what a sandboxed build cannot reach, the
 * limits that end it, and that nothing it starts survives it.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { paths, type Build } from '@buildfleet/protocol';
import { startWorker, type RunningWorker } from '../../src/agent.js';
import { silentLogger } from '../../src/logger.js';
import { describeSandbox } from '../support/sandbox.js';
import { tempDir, testConfig } from '../support/harness.js';
import { tarGz } from '../support/tarball.js';
import { waitFor } from '../support/wait.js';
import { startCtl, type Ctl } from './harness.js';

const EMPTY = tarGz([]);

async function finished(ctl: Ctl, id: string, timeoutMs = 30_000): Promise<Build> {
  let b: Build | undefined;
  await waitFor(
    async () => {
      b = await ctl.build(id);
      return ['succeeded', 'failed', 'canceled', 'timed_out'].includes(b.state);
    },
    { what: `build ${id} to finish`, timeoutMs, intervalMs: 50 },
  );
  return b!;
}

async function logText(ctl: Ctl, id: string): Promise<string> {
  return (await ctl.api('GET', `${paths.logs(id)}?offset=0`)).text();
}

describeSandbox('sandbox executor through a real controller and worker', () => {
  let ctl: Ctl;
  let dir: string;
  let worker: RunningWorker;

  beforeAll(async () => {
    ctl = await startCtl();
    dir = await tempDir('bf-sbx-');
    // The build user (nobody, when the tests run as root) passes through to the workspaces.
    await fs.chmod(dir, 0o711);
    worker = await startWorker(testConfig(ctl, path.join(dir, 'data'), { executor: 'sandbox', maxConcurrentBuilds: 2 }), {
      logger: silentLogger,
      retryBaseMs: 10,
      retryMaxMs: 100,
    });
  });
  afterAll(async () => {
    await worker?.stop().catch(() => undefined);
    await ctl?.close();
    await fs.rm(dir, { recursive: true, force: true });
  });

  async function run(spec: Record<string, unknown>, source = EMPTY): Promise<{ build: Build; log: string }> {
    const submitted = await ctl.submit({ timeoutSeconds: 60, ...spec }, source);
    const build = await finished(ctl, submitted.id);
    return { build, log: await logText(ctl, build.id) };
  }

  it('registers as sandbox and runs a build as an unprivileged user in /workspace', async () => {
    expect(worker.executor.kind).toBe('sandbox');
    const w = (await (await ctl.api('GET', paths.worker(worker.workerId))).json()) as { worker: { executor: string } };
    expect(w.worker.executor).toBe('sandbox');
    const { build, log } = await run({ script: 'id -u; pwd; echo "HOME=$HOME"; env | sort' });
    expect(build.state).toBe('succeeded');
    expect(log).toContain('[buildfleet] executor sandbox');
    expect(log).toMatch(/^1000$/m);
    expect(log).toMatch(/^\/workspace$/m);
    expect(log).toContain('HOME=/workspace');
  });
});
