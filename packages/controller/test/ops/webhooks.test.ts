/**
 * Webhooks through the real controller (issue 14): the API, signed
 * deliveries with retries after 500s, the delivery log, and the
 * transactional outbox: an event committed by a controller that stopped
 * before sending is delivered by the next one, and a state change that rolls
 * back sends nothing.
 */
import { sql, type Kysely } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { paths, webhookPaths, type Build, type Webhook, type WebhookDelivery, type WebhookEventBody } from '@buildfleet/protocol';
import { API_TOKEN, startHarness, type Harness } from '../http/harness.js';
import { createTestDatabase, describePg, type TestDatabase } from '../support/pg.js';
import { WebhookReceiver } from '../support/receiver.js';
import { ProtocolWorker } from './protocol-worker.js';

const FAST = { webhookRetry: { firstDelayMs: 50, maxDelayMs: 200, retryForMs: 60_000 } };

describe('webhooks (SQLite)', () => {
  webhookTests(async (over = {}, dataDir?: string) => startHarness({ ...(dataDir ? { dataDir } : {}), ops: FAST, ...over }));
});

describePg('webhooks (PostgreSQL)', () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await db?.drop();
  });
  webhookTests(async (over = {}) => startHarness({ databaseUrl: db.url, ops: FAST, ...over }));
});

type Start = (over?: Record<string, unknown>, dataDir?: string) => Promise<Harness>;

function webhookTests(start: Start): void {
  const api = (h: Harness, method: string, p: string, json?: unknown) => h.req(method, p, { token: API_TOKEN, ...(json !== undefined ? { json } : {}) });

  async function addHook(h: Harness, rx: WebhookReceiver, events: string[]): Promise<Webhook> {
    const res = await api(h, 'POST', webhookPaths.webhooks(), { url: rx.url, events, description: 'test' });
    expect(res.status).toBe(201);
    const body = (await res.json()) as { webhook: Webhook; secret: string };
    expect(body.secret).toMatch(/^bfh_[A-Za-z0-9_-]{43}$/);
    rx.secret = body.secret;
    return body.webhook;
  }

  it('signs and delivers build events, retries a 500, shows the delivery log, and lists hooks without their secret', async () => {
    const h = await start();
    const rx = new WebhookReceiver(({ nth }) => (nth <= 2 ? 500 : 204));
    await rx.listen();
    try {
      const hook = await addHook(h, rx, ['build.created', 'build.finished']);
      const listed = (await (await api(h, 'GET', webhookPaths.webhooks())).json()) as { webhooks: Array<Record<string, unknown>> };
      expect(listed.webhooks).toHaveLength(1);
      expect(listed.webhooks[0]).toMatchObject({ id: hook.id, url: rx.url, events: ['build.created', 'build.finished'] });
      expect(JSON.stringify(listed)).not.toContain(rx.secret);
      const bad = await api(h, 'POST', webhookPaths.webhooks(), { url: 'ftp://x', events: ['build.finished'] });
      expect(bad.status).toBe(400);

      const w = await ProtocolWorker.register(h);
      const build = await h.submitOk({ script: 'true' });
      await w.claim(1);
      await w.start(build.id);
      await w.finish(build.id, 'failed');
      await rx.until(() => rx.delivered.size === 2, 'both events delivered');
      const byType = new Map([...rx.delivered.values()].map((r) => [r.type, r]));
      const finished = JSON.parse(byType.get('build.finished')!.body) as WebhookEventBody;
      expect(finished).toMatchObject({ type: 'build.finished', build: { id: build.id, state: 'failed', exitCode: 1 } });
      expect(finished.id).toBe(byType.get('build.finished')!.eventId);
      expect((JSON.parse(byType.get('build.created')!.body) as WebhookEventBody).build.state).toBe('queued');
      expect(rx.requests.every((r) => r.signatureValid)).toBe(true);
      // Each event was refused twice, then accepted: three tries with the same bytes.
      for (const id of rx.delivered.keys()) {
        const tries = rx.requests.filter((r) => r.eventId === id);
        expect(tries.map((t) => t.status)).toEqual([500, 500, 204]);
        expect(new Set(tries.map((t) => t.body)).size).toBe(1);
      }
      const log = (await (await api(h, 'GET', webhookPaths.deliveries(hook.id))).json()) as { deliveries: WebhookDelivery[] };
      expect(log.deliveries).toHaveLength(2);
      for (const d of log.deliveries) expect(d).toMatchObject({ state: 'delivered', attempts: 3, lastStatusCode: 204, lastError: null, nextAttemptAt: null });
      expect((await api(h, 'GET', webhookPaths.deliveries('nope'))).status).toBe(404);
      expect((await api(h, 'DELETE', webhookPaths.webhook(hook.id))).status).toBe(204);
      expect((await api(h, 'DELETE', webhookPaths.webhook(hook.id))).status).toBe(404);
      const metrics = await (await h.req('GET', '/metrics')).text();
      expect(metrics).toMatch(/buildfleet_webhook_deliveries_total\{result="retry"\} 4/);
      expect(metrics).toMatch(/buildfleet_builds_finished_total\{outcome="failed"\} 1/);
    } finally {
      await rx.close();
      await h.close();
    }
  });

  it('an event committed by a controller that stopped before sending it is delivered by the next controller', async () => {
    const h = await start({}, undefined);
    const rx = new WebhookReceiver();
    await rx.listen();
    let h2: Harness | undefined;
    try {
      await addHook(h, rx, ['build.finished']);
      // Stop this controller's delivery loop: the event can only be in the outbox.
      await h.ctl.deliverer.stop();
      const w = await ProtocolWorker.register(h);
      const build = await h.submitOk({ script: 'true' });
      await w.claim(1);
      await w.start(build.id);
      await w.finish(build.id);
      expect(rx.requests).toHaveLength(0);
      // A second controller on the same database (PostgreSQL) or data directory (SQLite, after the first closes).
      if (h.ctl.store.dialect === 'sqlite') {
        await h.ctl.close();
        h2 = await start({}, h.dataDir);
      } else {
        h2 = await start();
      }
      await rx.until(() => rx.delivered.size === 1, 'the event through the second controller');
      expect((JSON.parse([...rx.delivered.values()][0]!.body) as WebhookEventBody).build).toMatchObject({ id: build.id, state: 'succeeded' });
    } finally {
      await rx.close();
      await h2?.close();
      await h.close();
    }
  });

  it('a state change that rolls back sends no event, and the build keeps its state', async () => {
    const h = await start();
    const rx = new WebhookReceiver();
    await rx.listen();
    const db = (h.ctl.store as unknown as { ctx: { db: Kysely<any> } }).ctx.db;
    try {
      await addHook(h, rx, ['build.finished']);
      const w = await ProtocolWorker.register(h);
      const build = await h.submitOk({ script: 'true' });
      await w.claim(1);
      await w.start(build.id);
      // The last statement of the finish transaction (the delivery row) fails: everything before it rolls back.
      if (h.ctl.store.dialect === 'sqlite') {
        await sql`create trigger fail_delivery before insert on webhook_deliveries begin select raise(abort, 'injected failure'); end`.execute(db);
      } else {
        await sql`create function fail_delivery() returns trigger language plpgsql as $$ begin raise exception 'injected failure'; end $$`.execute(db);
        await sql`create trigger fail_delivery before insert on webhook_deliveries for each row execute function fail_delivery()`.execute(db);
      }
      await expect(w.finish(build.id)).rejects.toThrow(/finish/);
      expect((await h.ctl.store.getBuild(build.id)).state).toBe('running');
      const events = await sql<{ n: number }>`select count(*) as n from webhook_events where build_id = ${build.id}`.execute(db);
      expect(Number(events.rows[0]!.n)).toBe(0);
      await sql`drop trigger fail_delivery${h.ctl.store.dialect === 'postgres' ? sql` on webhook_deliveries` : sql``}`.execute(db);
      await w.finish(build.id);
      await rx.until(() => rx.delivered.size === 1, 'the event of the finish that committed');
      expect(rx.requests).toHaveLength(1);
      const b = (await (await api(h, 'GET', paths.build(build.id))).json()) as { build: Build };
      expect(b.build.state).toBe('succeeded');
    } finally {
      await rx.close();
      await h.close();
    }
  });
}
