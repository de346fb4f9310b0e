/**
 * Bugs the simulation found in the worker, pinned against the real controller
 * (fastify app over `app.inject`, SQLite) and the real worker.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { FakeClock } from '@buildfleet/protocol';
import { buildApp, hashToken, InProcessNotifier, loadControllerConfig, openStore, type Store } from '@buildfleet/controller';
import { loadWorkerConfig, Session, IdentityStore, createHttpClient, silentLogger, type Transport } from '@buildfleet/worker';
import { MemoryBlobStore } from '../src/blobs.js';

const ENROLL = 'bfe_' + 'regression'.repeat(4);
const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function controller(): Promise<{ app: Awaited<ReturnType<typeof buildApp>>; store: Store; dir: string }> {
  const dir = await mkdtemp(path.join(tmpdir(), 'bf-sim-reg-'));
  const store = await openStore({ sqlitePath: path.join(dir, 'db.sqlite') });
  await store.migrate();
  await store.ensureEnrollmentToken(hashToken(ENROLL), 'test', Date.now());
  const app = await buildApp({
    config: loadControllerConfig({}, { dataDir: dir, logLevel: 'silent' }),
    store,
    blobs: new MemoryBlobStore(),
    notifier: new InProcessNotifier({}),
    logger: pino({ level: 'silent' }),
  });
  cleanups.push(async () => {
    await app.close();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });
  return { app, store, dir };
}

describe('a duplicated first registration request', () => {
  it('does not strand the worker: its voided secret is replaced through the same registrationId', async () => {
    const { app, store, dir } = await controller();
    let copies = 0;
    // The network delivers the first registration twice; the worker gets the first answer.
    const transport: Transport = async (url, init) => {
      const u = new URL(url);
      const deliver = () =>
        app.inject({
          method: init.method as 'POST',
          url: u.pathname + u.search,
          headers: Object.fromEntries(new Headers(init.headers).entries()),
          ...(typeof init.body === 'string' ? { payload: init.body } : {}),
        });
      const res = await deliver();
      if (u.pathname.endsWith('/workers/register') && copies++ === 0) await deliver();
      return new Response(res.statusCode === 204 ? null : res.body, { status: res.statusCode, headers: { 'content-type': String(res.headers['content-type'] ?? '') } });
    };
    const clock = new FakeClock();
    const config = loadWorkerConfig({}, { controllerUrls: 'http://controller.test', enrollmentToken: ENROLL, dataDir: path.join(dir, 'w'), name: 'w' });
    const client = createHttpClient({ urls: config.controllerUrls, clock, requestTimeoutMs: 5_000, transport, backoff: { baseMs: 1, maxMs: 1 } });
    const session = new Session({
      client,
      config,
      identityStore: new IdentityStore(config.stateDir),
      clock,
      logger: silentLogger,
      activeBuildIds: () => [],
    });
    cleanups.push(async () => session.close());
    await session.start();
    const firstId = session.workerId!;
    // The copy voided the credentials the worker holds: its first call is refused,
    // and so is the re-registration with the voided secret; the session then asks
    // again with its registrationId and the call goes through.
    const answer = await session.call((accessToken, workerId) => client.heartbeat({ workerId, accessToken }, { activeBuildIds: [] }, 5_000));
    expect(answer).toMatchObject({ cancel: [], abandon: [] });
    expect(session.fatal).toBeUndefined();
    expect(session.workerId).toBe(firstId);
    expect((await store.listWorkers(Date.now(), 60_000)).map((w) => w.id)).toEqual([firstId]);
  });
});
