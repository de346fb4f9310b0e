/**
 * End-to-end support: the controller, workers and the CLI run as real,
 * separate processes (`node --conditions=source --import tsx
 * packages/cli/src/main.ts …`), so these tests see exactly what a user sees.
 * Waiting is always a condition with a deadline, never a fixed sleep.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { API_TOKEN, ENROLLMENT_TOKEN, startTestController } from '../support/controller.js';
import { childEnv, startService, waitFor, type Service } from '../support/process.js';

export { API_TOKEN, ENROLLMENT_TOKEN };
export { ROOT, childEnv, runCli, startService, waitFor, type CliResult, type Service } from '../support/process.js';

/** A controller process on a free port (BUILDFLEET_PORT=0) with SQLite in a temp dir, ready (`/readyz` 200). */
export interface E2eFleet {
  url: string;
  dir: string;
  controller: Service;
  worker: Service;
  /** Env for CLI processes talking to this controller. */
  cliEnv: NodeJS.ProcessEnv;
  /** Authenticated JSON GET against the user API. */
  api<T>(path: string): Promise<T>;
  /** A build's log (current attempt) over HTTP: cheaper than a CLI process inside a wait loop. */
  log(id: string): Promise<string>;
  close(): Promise<void>;
}

export async function startFleet(opts: { workerEnv?: Record<string, string> } = {}): Promise<E2eFleet> {
  const dir = await mkdtemp(join(tmpdir(), 'bf-e2e-'));
  let worker: Service | undefined;
  const controller = await startTestController({
    process: true,
    dataDir: join(dir, 'controller'),
    // Short intervals so cancellation (announced with heartbeats) arrives quickly.
    env: { BUILDFLEET_HEARTBEAT_INTERVAL_MS: '300', BUILDFLEET_LEASE_MS: '10000' },
  }).catch(async (e: unknown) => {
    await rm(dir, { recursive: true, force: true });
    throw e;
  });
  const url = controller.url;
  try {
    worker = startService(
      ['worker'],
      childEnv({
        BUILDFLEET_CONTROLLER_URL: url,
        BUILDFLEET_ENROLLMENT_TOKEN: ENROLLMENT_TOKEN,
        BUILDFLEET_DATA_DIR: join(dir, 'worker'),
        BUILDFLEET_CONCURRENCY: '2',
        // Builds here wait on marker files the tests write on the host (the sandbox has e2e tests of its own).
        BUILDFLEET_EXECUTOR: 'shell',
        ...opts.workerEnv,
      }),
    );
    const api = <T>(path: string): Promise<T> => controller.api.ok<T>('GET', path);
    const log = (id: string): Promise<string> => controller.api.log(id);
    const w = worker;
    await waitFor(
      async () => {
        if (w.proc.exitCode !== null) throw new Error(`worker exited ${w.proc.exitCode}:\n${w.output()}`);
        return (await controller.api.workers()).length > 0;
      },
      'the worker to register',
      30_000,
    );
    return {
      url,
      dir,
      controller: controller.service!,
      worker: w,
      cliEnv: childEnv({ BUILDFLEET_CONTROLLER_URL: url, BUILDFLEET_API_TOKEN: API_TOKEN }),
      api,
      log,
      async close() {
        await w.stop();
        await controller.close();
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (e) {
    await worker?.stop();
    await controller.close();
    await rm(dir, { recursive: true, force: true });
    throw e;
  }
}
