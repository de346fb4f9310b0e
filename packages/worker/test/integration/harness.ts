/**
 * The real controller for worker integration tests: the shared fixture
 * (test/support/controller.ts) on SQLite in a temp dir, with the few
 * user-side calls these tests make and timings short enough for them.
 */
import fs from 'node:fs/promises';
import { afterEach } from 'vitest';
import type { ControllerConfigOverrides, RunningController } from '@buildfleet/controller';
import type { Build, Clock } from '@buildfleet/protocol';
import { ENROLLMENT_TOKEN, startTestController, type TestController, type TestControllerOptions } from '../../../../test/support/controller.js';
import { startWorker, type RunningWorker, type StartWorkerOptions } from '../../src/agent.js';
import type { WorkerConfig, WorkerConfigOverrides } from '../../src/config.js';
import type { Executor } from '../../src/executor/types.js';
import { silentLogger } from '../../src/logger.js';
import { tempDir, testConfig } from '../support/harness.js';

export interface Ctl {
  url: string;
  ctl: RunningController;
  enrollmentToken: string;
  fixture: TestController;
  /** A request with the API token. */
  api(method: string, p: string, json?: unknown): Promise<Response>;
  submit(spec: Record<string, unknown>, source: Uint8Array): Promise<Build>;
  build(id: string): Promise<Build>;
  close(): Promise<void>;
}

export async function startCtl(over: ControllerConfigOverrides = {}, clock?: Clock): Promise<Ctl> {
  const fixture = await startTestController({
    config: { heartbeatIntervalMs: 200, leaseMs: 3_000, ackTimeoutMs: 5_000, ...over },
    ...(clock ? { clock } : {}),
  });
  const { api } = fixture;
  return {
    url: fixture.url,
    ctl: fixture.ctl!,
    enrollmentToken: ENROLLMENT_TOKEN,
    fixture,
    api: (method, p, json) => api.req(method, p, json === undefined ? {} : { json }),
    submit: (spec, source) => api.submit(spec, source),
    build: (id) => api.build(id),
    close: () => fixture.close(),
  };
}

/**
 * A controller and real workers for the tests of one file, torn down after
 * each test (call once at the top level of the file): `controller()` starts
 * the shared fixture, `worker()` a worker with a data directory of its own,
 * `dir()` a temp directory removed afterwards.
 */
export function fleet() {
  let current: TestController | undefined;
  const workers: RunningWorker[] = [];
  const dirs: string[] = [];
  afterEach(async () => {
    for (const w of workers.splice(0)) await w.stop().catch(() => undefined);
    await current?.close();
    current = undefined;
    // A worker's workspaces live beside its data directory (`<dir>-workspaces`).
    for (const d of dirs.splice(0)) for (const x of [d, `${d}-workspaces`]) await fs.rm(x, { recursive: true, force: true });
  });
  const dir = async (prefix?: string) => {
    const d = await tempDir(prefix);
    dirs.push(d);
    return d;
  };
  return {
    /** The controller of the running test (after `controller()`). */
    get ctl(): TestController {
      if (!current) throw new Error('no controller started');
      return current;
    },
    async controller(opts: TestControllerOptions = {}): Promise<TestController> {
      current = await startTestController(opts);
      return current;
    },
    /**
     * A worker; `executorFor` builds its executor from its configuration (the
     * default is the shell executor); `url`: another controller than `ctl`.
     */
    async worker(
      over: WorkerConfigOverrides = {},
      opts: StartWorkerOptions = {},
      executorFor?: (config: WorkerConfig) => Executor,
      url?: string,
    ): Promise<RunningWorker> {
      const config = testConfig({ url: url ?? this.ctl.url, enrollmentToken: ENROLLMENT_TOKEN }, await dir(), over);
      const w = await startWorker(config, { logger: silentLogger, ...opts, ...(executorFor ? { executor: executorFor(config) } : {}) });
      workers.push(w);
      return w;
    },
    dir,
  };
}
