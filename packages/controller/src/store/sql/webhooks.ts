/**
 * Webhooks in the store (issue 14): the subscriptions, the transactional
 * outbox and the delivery queue.
 *
 * Outbox: `recordBuildEvent` runs inside the transaction of the state change
 * it reports (store transitions call it), writing the event row with its
 * final JSON body and one `pending` delivery per subscribed webhook. A crash
 * after the commit loses nothing (the rows are there); a rollback sends
 * nothing (they are gone with it). Without a subscribed webhook it costs one
 * read of the (small) `webhooks` table.
 *
 * Queue: `claimDeliveries` takes due rows with `FOR UPDATE SKIP LOCKED` on
 * PostgreSQL (one controller per delivery at a time) and moves their due
 * time forward by a lease; `recordDelivery` is conditional on the try's
 * number, so the late outcome of a try whose lease ran out changes nothing.
 */
import { sql, type Insertable, type Kysely, type Selectable, type Transaction } from 'kysely';
import { v7 as uuidv7 } from 'uuid';
import { ApiError, type Webhook, type WebhookDelivery, type WebhookEventBody, type WebhookEventType } from '@buildfleet/protocol';
import type { DB, Dialect } from '../schema.js';
import type { WebhookDeliveriesTable } from '../schema-ops.js';
import type { ClaimedDelivery, DeliveryOutcome } from '../../webhooks/types.js';
import { chunks, rowToBuild } from './rows.js';

export interface WebhookContext {
  readonly db: Kysely<DB>;
  readonly dialect: Dialect;
}

function iso(ms: number | null): string | null {
  return ms === null ? null : new Date(ms).toISOString();
}

function toWebhook(r: Selectable<DB['webhooks']>): Webhook {
  return { id: r.id, url: r.url, events: JSON.parse(r.events) as string[], description: r.description, createdAt: iso(r.created_at)! };
}

/** One outbox event to write: what happened to which build. */
export interface BuildEventRef {
  type: WebhookEventType;
  buildId: string;
}

/**
 * Rows per multi-row INSERT: keeps every statement under SQLite's 32,766
 * bound parameters (12 columns a delivery row) whatever the batch.
 */
const ROWS_PER_INSERT = 2_000;

/**
 * Writes the outbox rows for `type` about `buildId` inside `trx`: the event
 * (its body holds the build as this transaction leaves it) and a
 * delivery per webhook subscribed to `type`. Resolves the deliveries written.
 */
export function recordBuildEvent(trx: Transaction<DB>, type: WebhookEventType, buildId: string, now: number): Promise<number> {
  return recordBuildEvents(trx, [{ type, buildId }], now);
}

/**
 * `recordBuildEvent` for many events at once (a batch state change, see
 * `batch-transitions.ts`), in a bounded number of statements: one read of
 * the webhooks and, when one is subscribed, one read of the builds, one of
 * their attempts, and multi-row inserts of the events and deliveries
 * (`ROWS_PER_INSERT` rows each). Resolves the deliveries written.
 */
export async function recordBuildEvents(trx: Transaction<DB>, events: readonly BuildEventRef[], now: number): Promise<number> {
  if (events.length === 0) return 0;
  const hooks = (await trx.selectFrom('webhooks').select(['id', 'events']).execute()).map((h) => ({ id: h.id, events: JSON.parse(h.events) as string[] }));
  const wanted = events.filter((e) => hooks.some((h) => h.events.includes(e.type)));
  if (wanted.length === 0) return 0;
  const ids = [...new Set(wanted.map((e) => e.buildId))];
  const rows = new Map((await trx.selectFrom('builds').selectAll().where('id', 'in', ids).execute()).map((r) => [r.id, r]));
  const attempts = new Map<string, Selectable<DB['build_attempts']>[]>();
  for (const a of await trx.selectFrom('build_attempts').selectAll().where('build_id', 'in', ids).execute()) {
    attempts.set(a.build_id, [...(attempts.get(a.build_id) ?? []), a]);
  }
  const eventRows: Insertable<DB['webhook_events']>[] = [];
  const deliveryRows: Insertable<DB['webhook_deliveries']>[] = [];
  for (const e of wanted) {
    const row = rows.get(e.buildId);
    if (!row) continue;
    const id = uuidv7({ msecs: now });
    const body: WebhookEventBody = { id, type: e.type, createdAt: new Date(now).toISOString(), build: rowToBuild(row, attempts.get(row.id) ?? []) };
    eventRows.push({ id, type: e.type, build_id: e.buildId, body: JSON.stringify(body), created_at: now });
    for (const h of hooks) {
      if (!h.events.includes(e.type)) continue;
      deliveryRows.push({
        id: uuidv7({ msecs: now }),
        webhook_id: h.id,
        event_id: id,
        state: 'pending',
        attempts: 0,
        next_attempt_at: now,
        last_attempt_at: null,
        last_status_code: null,
        last_error: null,
        last_duration_ms: null,
        delivered_at: null,
        created_at: now,
      });
    }
  }
  for (const part of chunks(eventRows, ROWS_PER_INSERT)) await trx.insertInto('webhook_events').values(part).execute();
  for (const part of chunks(deliveryRows, ROWS_PER_INSERT)) await trx.insertInto('webhook_deliveries').values(part).execute();
  return deliveryRows.length;
}

export async function createWebhook(
  ctx: WebhookContext,
  input: { id: string; url: string; events: string[]; secret: string; description: string | null; now: number },
): Promise<Webhook> {
  const row = { id: input.id, url: input.url, events: JSON.stringify([...new Set(input.events)].sort()), secret: input.secret, description: input.description, created_at: input.now };
  await ctx.db.insertInto('webhooks').values(row).execute();
  return toWebhook(row);
}

export async function listWebhooks(ctx: WebhookContext): Promise<Webhook[]> {
  return (await ctx.db.selectFrom('webhooks').selectAll().orderBy('created_at').orderBy('id').execute()).map(toWebhook);
}

/** Removes a webhook and its delivery log. Throws NOT_FOUND. */
export async function deleteWebhook(ctx: WebhookContext, id: string): Promise<void> {
  await ctx.db.transaction().execute(async (trx) => {
    await trx.deleteFrom('webhook_deliveries').where('webhook_id', '=', id).execute();
    const r = await trx.deleteFrom('webhooks').where('id', '=', id).executeTakeFirst();
    if (Number(r.numDeletedRows) === 0) throw new ApiError('NOT_FOUND', `webhook ${id} not found`);
  });
}

/** A webhook's deliveries, newest first. Throws NOT_FOUND for an unknown webhook. */
export async function listDeliveries(ctx: WebhookContext, webhookId: string, opts: { limit: number; state?: string }): Promise<WebhookDelivery[]> {
  const hook = await ctx.db.selectFrom('webhooks').select('id').where('id', '=', webhookId).executeTakeFirst();
  if (!hook) throw new ApiError('NOT_FOUND', `webhook ${webhookId} not found`);
  let q = ctx.db
    .selectFrom('webhook_deliveries as d')
    .innerJoin('webhook_events as e', 'e.id', 'd.event_id')
    .selectAll('d')
    .select(['e.type', 'e.build_id'])
    .where('d.webhook_id', '=', webhookId);
  if (opts.state) q = q.where('d.state', '=', opts.state as WebhookDeliveriesTable['state']);
  const rows = await q.orderBy('d.created_at', 'desc').orderBy('d.id', 'desc').limit(opts.limit).execute();
  return rows.map((r) => ({
    id: r.id,
    eventId: r.event_id,
    eventType: r.type,
    buildId: r.build_id,
    state: r.state,
    attempts: r.attempts,
    createdAt: iso(r.created_at)!,
    lastAttemptAt: iso(r.last_attempt_at),
    lastStatusCode: r.last_status_code,
    lastError: r.last_error,
    lastDurationMs: r.last_duration_ms,
    nextAttemptAt: r.state === 'pending' ? iso(r.next_attempt_at) : null,
    deliveredAt: iso(r.delivered_at),
  }));
}

/** See `WebhookQueue.claimDeliveries`. */
export async function claimDeliveries(ctx: WebhookContext, input: { now: number; limit: number; leaseMs: number }): Promise<ClaimedDelivery[]> {
  const { now, limit, leaseMs } = input;
  return ctx.db.transaction().execute(async (trx) => {
    const pick = sql`select id from webhook_deliveries where state = 'pending' and next_attempt_at <= ${now} order by next_attempt_at, id limit ${limit}`;
    const set = sql`attempts = attempts + 1, next_attempt_at = ${now + leaseMs}, last_attempt_at = ${now}`;
    const { rows } =
      ctx.dialect === 'postgres'
        ? await sql<{ id: string; attempts: number }>`
            with due as materialized (${pick} for update skip locked)
            update webhook_deliveries d set ${set} from due where d.id = due.id and d.state = 'pending'
            returning d.id, d.attempts`.execute(trx)
        : await sql<{ id: string; attempts: number }>`
            update webhook_deliveries set ${set} where state = 'pending' and id in (${pick})
            returning id, attempts`.execute(trx);
    if (rows.length === 0) return [];
    const details = await trx
      .selectFrom('webhook_deliveries as d')
      .innerJoin('webhooks as w', 'w.id', 'd.webhook_id')
      .innerJoin('webhook_events as e', 'e.id', 'd.event_id')
      .select(['d.id', 'd.webhook_id', 'w.url', 'w.secret', 'e.id as event_id', 'e.type', 'e.body', 'e.created_at'])
      .where('d.id', 'in', rows.map((r) => r.id))
      .execute();
    const attempts = new Map(rows.map((r) => [r.id, Number(r.attempts)]));
    return details
      .map((d) => ({
        id: d.id,
        webhookId: d.webhook_id,
        url: d.url,
        secret: d.secret,
        eventId: d.event_id,
        eventType: d.type,
        body: d.body,
        eventAt: Number(d.created_at),
        attempt: attempts.get(d.id)!,
      }))
      .sort((a, b) => a.eventAt - b.eventAt || (a.id < b.id ? -1 : 1));
  });
}

/** See `WebhookQueue.recordDelivery`. */
export async function recordDelivery(ctx: WebhookContext, o: DeliveryOutcome): Promise<void> {
  const state = o.ok ? 'delivered' : o.nextAttemptAt === null ? 'failed' : 'pending';
  await ctx.db
    .updateTable('webhook_deliveries')
    .set({
      state,
      next_attempt_at: state === 'pending' ? o.nextAttemptAt : null,
      last_status_code: o.statusCode,
      last_error: o.error,
      last_duration_ms: o.durationMs,
      delivered_at: o.ok ? o.now : null,
    })
    .where('id', '=', o.id)
    .where('attempts', '=', o.attempt)
    .where('state', '=', 'pending')
    .execute();
}
