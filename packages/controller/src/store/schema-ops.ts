/**
 * Migration 0002 (issue 14): retention marks on builds, artifacts and
 * attempts, and the webhook tables (the transactional outbox). Portable like
 * 0001: BIGINT epoch ms, JSON as TEXT, booleans as INTEGER 0/1.
 */
import { sql, type Kysely, type Migration } from 'kysely';
import type { Dialect } from './schema.js';

export interface WebhooksTable {
  id: string;
  url: string;
  /** JSON string array of event types. */
  events: string;
  /** The signing secret itself (HMAC needs it; shown to the user once). */
  secret: string;
  description: string | null;
  created_at: number;
}

/** The outbox: one row per event, written in the transaction of the state change it reports. */
export interface WebhookEventsTable {
  id: string;
  type: string;
  build_id: string;
  /** The exact JSON body every try sends. */
  body: string;
  created_at: number;
}

export interface WebhookDeliveriesTable {
  id: string;
  webhook_id: string;
  event_id: string;
  state: 'pending' | 'delivered' | 'failed';
  attempts: number;
  /** Due time of the next try (or the end of the current try's lease); null when done. */
  next_attempt_at: number | null;
  last_attempt_at: number | null;
  last_status_code: number | null;
  last_error: string | null;
  last_duration_ms: number | null;
  delivered_at: number | null;
  created_at: number;
}

export function operations(_dialect: Dialect): Migration {
  return {
    async up(db: Kysely<any>) {
      await db.schema.alterTable('builds').addColumn('keep', 'integer', (c) => c.notNull().defaultTo(0)).execute();
      await db.schema.alterTable('builds').addColumn('source_deleted_at', 'bigint').execute();
      await db.schema.alterTable('builds').addColumn('source_deleted_reason', 'text').execute();
      await db.schema.alterTable('builds').addColumn('logs_deleted_at', 'bigint').execute();
      await db.schema.alterTable('builds').addColumn('artifacts_deleted_at', 'bigint').execute();
      await db.schema.alterTable('build_attempts').addColumn('log_truncated', 'integer', (c) => c.notNull().defaultTo(0)).execute();
      await db.schema.alterTable('artifacts').addColumn('deleted_at', 'bigint').execute();
      await db.schema.alterTable('artifacts').addColumn('deleted_reason', 'text').execute();
      // The collector walks ended builds oldest first, one partial index per kind,
      // so rows it already handled are not scanned again every round.
      await sql`create index builds_gc_ended on builds (finished_at, id) where finished_at is not null`.execute(db);
      await sql`create index builds_gc_source on builds (finished_at, id) where finished_at is not null and source_deleted_at is null and keep = 0`.execute(db);
      await sql`create index builds_gc_logs on builds (finished_at, id) where finished_at is not null and logs_deleted_at is null and keep = 0`.execute(db);
      await sql`create index builds_gc_artifacts on builds (finished_at, id) where finished_at is not null and artifacts_deleted_at is null and keep = 0`.execute(db);
      await sql`create index builds_source_key on builds (source_key)`.execute(db);
      await sql`create index artifacts_blob_key on artifacts (blob_key)`.execute(db);
      await sql`create index artifacts_live_created on artifacts (created_at, build_id) where deleted_at is null`.execute(db);

      await db.schema
        .createTable('webhooks')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('url', 'text', (c) => c.notNull())
        .addColumn('events', 'text', (c) => c.notNull())
        .addColumn('secret', 'text', (c) => c.notNull())
        .addColumn('description', 'text')
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('webhook_events')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('type', 'text', (c) => c.notNull())
        // No foreign key: an event outlives the build it reports (retention may delete the build first).
        .addColumn('build_id', 'text', (c) => c.notNull())
        .addColumn('body', 'text', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .execute();
      await sql`create index webhook_events_created on webhook_events (created_at)`.execute(db);
      await db.schema
        .createTable('webhook_deliveries')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('webhook_id', 'text', (c) => c.notNull().references('webhooks.id').onDelete('cascade'))
        .addColumn('event_id', 'text', (c) => c.notNull().references('webhook_events.id').onDelete('cascade'))
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('attempts', 'integer', (c) => c.notNull().defaultTo(0))
        .addColumn('next_attempt_at', 'bigint')
        .addColumn('last_attempt_at', 'bigint')
        .addColumn('last_status_code', 'integer')
        .addColumn('last_error', 'text')
        .addColumn('last_duration_ms', 'integer')
        .addColumn('delivered_at', 'bigint')
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .execute();
      await sql`create index webhook_deliveries_due on webhook_deliveries (next_attempt_at) where state = 'pending'`.execute(db);
      await sql`create index webhook_deliveries_hook on webhook_deliveries (webhook_id, created_at)`.execute(db);
      await sql`create index webhook_deliveries_event on webhook_deliveries (event_id)`.execute(db);
    },
  };
}
