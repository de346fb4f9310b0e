/**
 * The real controller for worker integration tests: the shared fixture
 * (test/support/controller.ts) on SQLite in a temp dir, with the few
 * user-side calls these tests make and timings short enough for them.
 */
import type { ControllerConfigOverrides, RunningController } from '@buildfleet/controller';
import type { Build, Clock } from '@buildfleet/protocol';
import { ENROLLMENT_TOKEN, startTestController, type TestController } from '../../../../test/support/controller.js';

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
