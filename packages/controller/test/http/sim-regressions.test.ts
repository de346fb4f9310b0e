/**
 * Bugs the deterministic simulation (packages/sim) found, pinned over real
 * HTTP so they stay fixed.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { paths, type Build, type PollResponse } from '@buildfleet/protocol';
import { API_TOKEN, startHarness, type Harness } from './harness.js';

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => {
  await h?.close();
});

describe('nullable fields keep null (ajv coerceTypes used to turn null into 0 or "")', () => {
  it('a finish with exitCode null and message null stores null, not 0 and ""', async () => {
    const labels = ['sim-null'];
    await h.submitOk({ script: 'true', labels });
    const reg = await h.registerOk({ labels });
    const res = await h.req('POST', paths.poll(reg.workerId, 0), { token: reg.accessToken, json: { freeSlots: 1, activeBuildIds: [] } });
    const a = ((await res.json()) as PollResponse).builds[0]!;
    expect((await h.req('POST', paths.start(a.id), { token: a.buildToken, json: { attempt: 1 } })).status).toBe(200);
    const fin = await h.req('POST', paths.finish(a.id), {
      token: a.buildToken,
      json: { attempt: 1, outcome: 'failed', exitCode: null, message: null },
    });
    expect(fin.status).toBe(200);
    const b = ((await (await h.req('GET', paths.build(a.id), { token: API_TOKEN })).json()) as { build: Build }).build;
    expect(b.state).toBe('failed');
    expect(b.exitCode).toBeNull();
    expect(b.attempts[0]!.exitCode).toBeNull();
    // And 0 stays 0.
    const again = await h.req('POST', paths.finish(a.id), { token: a.buildToken, json: { attempt: 1, outcome: 'failed', exitCode: null, message: null } });
    expect(again.status).toBe(200);
  });
});

describe('a submission whose createBuild committed but answered an error', () => {
  it('keeps the source of the build that exists (the worker would get 404 on its source)', async () => {
    const { mkdtemp, rm } = await import('node:fs/promises');
    const { tmpdir } = await import('node:os');
    const path = await import('node:path');
    const pino = (await import('pino')).default;
    const { ApiError } = await import('@buildfleet/protocol');
    const { buildApp } = await import('../../src/app.js');
    const { loadControllerConfig } = await import('../../src/config.js');
    const { openStore } = await import('../../src/store/index.js');
    const { openBlobStore } = await import('../../src/blobs/index.js');
    const { InProcessNotifier } = await import('../../src/store/notifier.js');
    const { hashToken } = await import('../../src/credentials.js');
    const dir = await mkdtemp(path.join(tmpdir(), 'bf-simreg-'));
    const store = await openStore({ sqlitePath: path.join(dir, 'db.sqlite') });
    await store.migrate();
    await store.ensureApiToken(hashToken(API_TOKEN), 'test', Date.now());
    const blobs = await openBlobStore({ dataDir: dir });
    // The row is written, then the connection "drops" before the answer.
    const lossy = new Proxy(store, {
      get(target, prop) {
        const v = Reflect.get(target, prop, target) as unknown;
        if (prop !== 'createBuild') return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
        return async (input: Parameters<typeof store.createBuild>[0]) => {
          await target.createBuild(input);
          throw new ApiError('UNAVAILABLE', 'connection lost after COMMIT');
        };
      },
    });
    const app = await buildApp({
      config: loadControllerConfig({}, { dataDir: dir, logLevel: 'silent' }),
      store: lossy,
      blobs,
      notifier: new InProcessNotifier({}),
      logger: pino({ level: 'silent' }),
    });
    try {
      const b = 'regressionboundary';
      const payload = Buffer.concat([
        Buffer.from(`--${b}\r\nContent-Disposition: form-data; name="spec"\r\n\r\n{"script":"true"}\r\n`),
        Buffer.from(`--${b}\r\nContent-Disposition: form-data; name="source"; filename="s.tar.gz"\r\n\r\nsource-bytes\r\n--${b}--\r\n`),
      ]);
      const res = await app.inject({
        method: 'POST',
        url: paths.builds(),
        headers: { authorization: `Bearer ${API_TOKEN}`, 'content-type': `multipart/form-data; boundary=${b}` },
        payload,
      });
      expect(res.statusCode).toBe(503);
      const { builds } = await store.listBuilds({ limit: 10 });
      expect(builds).toHaveLength(1);
      expect(await blobs.size(await store.getSourceKey(builds[0]!.id))).toBe('source-bytes'.length);
    } finally {
      await app.close();
      await blobs.close();
      await store.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
