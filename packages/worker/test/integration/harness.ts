/**
 * The real controller (`startController`, SQLite in a temp dir) for worker
 * integration tests, with the few user-side calls the tests need.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { loadControllerConfig, startController, type ControllerConfigOverrides, type RunningController } from '@buildfleet/controller';
import { paths, type Build, type Clock } from '@buildfleet/protocol';

export const API_TOKEN = 'bfa_worker-integration-api-token-0123456789';
export const ENROLLMENT_TOKEN = 'bfe_worker-integration-enrollment-0123456789';

export interface Ctl {
  ctl: RunningController;
  url: string;
  enrollmentToken: string;
  dataDir: string;
  api(method: string, p: string, json?: unknown): Promise<Response>;
  submit(spec: Record<string, unknown>, source: Uint8Array): Promise<Build>;
  build(id: string): Promise<Build>;
  close(): Promise<void>;
}

export async function startCtl(over: ControllerConfigOverrides = {}, clock?: Clock): Promise<Ctl> {
  const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), 'bf-wint-'));
  const config = loadControllerConfig(
    {},
    {
      host: '127.0.0.1',
      port: 0,
      dataDir,
      apiToken: API_TOKEN,
      enrollmentToken: ENROLLMENT_TOKEN,
      logLevel: 'silent',
      pollWaitMs: 2_000,
      pollRecheckMs: 200,
      heartbeatIntervalMs: 200,
      leaseMs: 3_000,
      ackTimeoutMs: 5_000,
      ...over,
    },
  );
  const ctl = await startController(config, clock ? { clock } : {});
  const api: Ctl['api'] = (method, p, json) =>
    fetch(ctl.url + p, {
      method,
      headers: { authorization: `Bearer ${API_TOKEN}`, ...(json !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(json !== undefined ? { body: JSON.stringify(json) } : {}),
    });
  return {
    ctl,
    url: ctl.url,
    enrollmentToken: ENROLLMENT_TOKEN,
    dataDir,
    api,
    async submit(spec, source) {
      const form = new FormData();
      form.append('spec', JSON.stringify(spec));
      form.append('source', new Blob([source]), 'source.tar.gz');
      const res = await fetch(ctl.url + paths.builds(), { method: 'POST', headers: { authorization: `Bearer ${API_TOKEN}` }, body: form });
      const body = (await res.json()) as { build: Build };
      if (res.status !== 201) throw new Error(`submit answered ${res.status}: ${JSON.stringify(body)}`);
      return body.build;
    },
    async build(id) {
      const res = await api('GET', paths.build(id));
      return ((await res.json()) as { build: Build }).build;
    },
    async close() {
      await ctl.close();
      await fs.rm(dataDir, { recursive: true, force: true });
    },
  };
}
