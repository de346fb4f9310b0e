/**
 * Issue 14 "Done when", webhooks, with real processes: two `buildfleet
 * controller` processes on one PostgreSQL database and a worker given both
 * URLs. A receiver started by the test answers 500 to the first two tries
 * of every event; one controller is killed with SIGKILL while events are
 * being delivered. After de-duplication by event id the receiver has every
 * `build.finished` event of the 50 builds exactly once, each signed
 * correctly, and no build has two different events.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { WebhookEventBody } from '@buildfleet/protocol';
import { createTestDatabase, describePg, type TestDatabase } from '../../packages/controller/test/support/pg.js';
import { WebhookReceiver } from '../../packages/controller/test/support/receiver.js';
import { Api, kill, startController, startWorker, stopWorker, tempDir, type ControllerProc, type Service } from './support.js';

const BUILDS = 50;
/** Short retries so the test runs in seconds (the defaults are 10 s, 24 h, 10 s). */
const WEBHOOK_ENV = { BUILDFLEET_WEBHOOK_FIRST_RETRY: '200ms', BUILDFLEET_WEBHOOK_RETRY_FOR: '10m', BUILDFLEET_WEBHOOK_TIMEOUT: '1s' };

describePg('webhooks from two controllers on one PostgreSQL, one killed mid-way (real processes)', () => {
  let db: TestDatabase;
  let tmp: { dir: string; remove(): Promise<void> };
  let c1: ControllerProc;
  let c2: ControllerProc;
  let worker: Service;
  const rx = new WebhookReceiver(({ nth }) => (nth <= 2 ? 500 : 200));

  beforeAll(async () => {
    db = await createTestDatabase();
    tmp = await tempDir('bf-webhooks-');
    await rx.listen();
    [c1, c2] = await Promise.all([
      startController({ dataDir: `${tmp.dir}/c1`, databaseUrl: db.url, env: WEBHOOK_ENV }),
      startController({ dataDir: `${tmp.dir}/c2`, databaseUrl: db.url, env: WEBHOOK_ENV }),
    ]);
    worker = startWorker({ urls: [c1.url, c2.url], dataDir: `${tmp.dir}/w`, name: 'w', concurrency: 4 });
  }, 120_000);

  afterAll(async () => {
    if (worker) await stopWorker(worker);
    for (const c of [c1, c2]) if (c) await kill(c.service);
    await rx.close();
    await db?.drop();
    await tmp?.remove();
  });

  it('delivers every build.finished exactly once after de-duplication, signed, through 500s and a SIGKILLed controller', async () => {
    const api1 = new Api(c1.url);
    const api2 = new Api(c2.url);
    const created = await api1.request<{ webhook: { id: string }; secret: string }>('POST', '/api/v1/webhooks', {
      json: { url: rx.url, events: ['build.finished'] },
    });
    rx.secret = created.secret;

    const ids: string[] = [];
    for (let i = 0; i < BUILDS; i++) ids.push((await (i % 2 ? api2 : api1).submit({ script: `echo build ${i}` })).id);

    // Kill the first controller while deliveries are under way (some delivered, most not).
    await rx.until(() => rx.delivered.size >= 10, 'the first deliveries', 90_000);
    await kill(c1.service);
    const deliveredAtKill = rx.delivered.size;

    const builds = await api2.waitFinished(ids, 120_000);
    expect(builds.filter((b) => b.state !== 'succeeded').map((b) => `${b.id} ${b.state}`)).toEqual([]);
    await rx.until(() => rx.delivered.size >= BUILDS, `all ${BUILDS} build.finished events`, 120_000);

    const events = [...rx.delivered.values()].map((r) => ({ r, body: JSON.parse(r.body) as WebhookEventBody }));
    expect(events.every((e) => e.r.type === 'build.finished' && e.body.type === 'build.finished' && e.body.id === e.r.eventId)).toBe(true);
    // Exactly once per build after de-duplication by event id.
    const perBuild = new Map<string, Set<string>>();
    for (const e of events) perBuild.set(e.body.build.id, (perBuild.get(e.body.build.id) ?? new Set()).add(e.r.eventId));
    expect([...perBuild.keys()].sort()).toEqual([...ids].sort());
    expect([...perBuild.values()].every((s) => s.size === 1)).toBe(true);
    expect(events.every((e) => e.body.build.state === 'succeeded')).toBe(true);
    // Every request, refused or not, carried a valid signature.
    expect(rx.requests.filter((r) => !r.signatureValid)).toEqual([]);
    // Every event was refused twice before it was accepted.
    for (const id of rx.delivered.keys()) {
      expect(rx.requests.filter((r) => r.eventId === id).slice(0, 3).map((r) => r.status)).toEqual([500, 500, 200]);
    }
    const extra = rx.requests.filter((r) => r.status === 200).length - rx.delivered.size;
    console.log(
      `webhooks: ${BUILDS} builds, ${rx.requests.length} requests (${rx.requests.filter((r) => r.status === 500).length} answered 500), ` +
        `${rx.delivered.size} distinct events delivered, ${extra} duplicate deliveries, ${deliveredAtKill} delivered when controller 1 was killed`,
    );
    const log = await api2.get<{ deliveries: Array<{ state: string }> }>(`/api/v1/webhooks/${created.webhook.id}/deliveries?limit=500`);
    expect(log.deliveries).toHaveLength(BUILDS);
    expect(log.deliveries.every((d) => d.state === 'delivered')).toBe(true);
  });
});
