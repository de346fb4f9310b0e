/** Workers report their version; the controller names the oldest it accepts (issue 14). */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkWorkerVersion } from '../../src/ops/versions.js';
import { loadControllerConfig } from '../../src/config.js';

const MIN_WORKER_VERSION = '0.1.0';
import { startHarness, type Harness } from '../http/harness.js';

describe('worker versions', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ ops: loadControllerConfig({ BUILDFLEET_MIN_WORKER_VERSION: MIN_WORKER_VERSION }).ops });
  });
  afterAll(async () => {
    await h?.close();
  });

  it('refuses a worker release older than the oldest accepted, naming both, and accepts newer and development versions', async () => {
    const old = await h.register({ version: '0.0.9' });
    expect(old.status).toBe(400);
    const body = (await old.json()) as { error: { code: string; message: string } };
    expect(body.error).toEqual({
      code: 'VALIDATION_FAILED',
      message: `version: worker 0.0.9 is older than ${MIN_WORKER_VERSION}, the oldest this controller (0.1.0) accepts; upgrade the worker`,
    });
    for (const v of [MIN_WORKER_VERSION, '0.2.0', '1.0.0-rc.1', 'dev-build']) expect((await h.register({ version: v })).status, v).toBe(201);
    const health = (await (await h.req('GET', '/healthz')).json()) as Record<string, unknown>;
    expect(health).toEqual({ ok: true, version: '0.1.0', minWorkerVersion: MIN_WORKER_VERSION });
  });

  it('accepts every release by default (older protocol-v1 workers keep working) and refuses a malformed setting', () => {
    expect(loadControllerConfig({}).ops.minWorkerVersion).toBe('0.0.0');
    expect(() => loadControllerConfig({ BUILDFLEET_MIN_WORKER_VERSION: 'latest' })).toThrow(/BUILDFLEET_MIN_WORKER_VERSION must be a version/);
  });

  it('compares numerically, not as text', () => {
    expect(() => checkWorkerVersion('0.10.0', '0.9.0')).not.toThrow();
    expect(() => checkWorkerVersion('0.9.10', '0.10.0')).toThrow(/older than 0.10.0/);
    expect(() => checkWorkerVersion('v1.2.3', '1.2.3')).not.toThrow();
  });
});
