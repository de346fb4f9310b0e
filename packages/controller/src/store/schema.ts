/**
 * Table shapes and numbered migrations of the SQL store, portable between
 * SQLite and PostgreSQL: times are BIGINT epoch milliseconds, JSON is TEXT,
 * booleans are INTEGER 0/1, bytes are BLOB/bytea. Migrations are a static
 * list (no filesystem scanning) so they run the same from src (tsx) and dist.
 */
import { sql, type Generated, type Kysely, type Migration, type MigrationProvider } from 'kysely';
import type { BuildState } from '@buildfleet/protocol';
import { operations, type WebhookDeliveriesTable, type WebhookEventsTable, type WebhooksTable } from './schema-ops.js';
import { createDashboardIndexes } from './sql/dashboard.js';

export type Dialect = 'sqlite' | 'postgres';

export interface SettingsTable {
  name: string;
  value: string;
}

export interface ApiTokensTable {
  hash: string;
  description: string | null;
  created_at: number;
  revoked_at: number | null;
}

export interface EnrollmentTokensTable {
  id: string;
  hash: string;
  description: string | null;
  created_at: number;
  expires_at: number | null;
  max_uses: number | null;
  uses: number;
  revoked_at: number | null;
}

export interface WorkersTable {
  id: string;
  name: string;
  /** JSON string array, sorted. */
  labels: string;
  max_concurrent_builds: number;
  version: string;
  status: 'active' | 'draining';
  secret_hash: string;
  access_token_hash: string;
  access_token_expires_at: number;
  boot_id: string | null;
  /** JSON string array of boot ids a newer boot id replaced (IDENTITY_CONFLICT). */
  superseded_boot_ids: string;
  registration_id: string | null;
  /** Id of the enrollment token the registration used: a `registrationId` retry must present the same one. */
  registration_token_id: string | null;
  first_auth_at: number | null;
  active_build_count: number;
  created_at: number;
  last_seen_at: number | null;
  /** How it runs builds, as it registered (migration 0003; null for older workers). */
  executor: string | null;
}

export interface BuildsTable {
  id: string;
  state: BuildState;
  attempt: number;
  worker_id: string | null;
  /** JSON BuildSpec. */
  spec: string;
  /** JSON string array (the spec's labels), for the claim's subset test. */
  labels: string;
  priority: number;
  max_attempts: number;
  timeout_seconds: number;
  cancel_requested: number;
  exit_code: number | null;
  reason: string | null;
  message: string | null;
  created_at: number;
  assigned_at: number | null;
  started_at: number | null;
  finished_at: number | null;
  ack_deadline: number | null;
  lease_expires_at: number | null;
  source_key: string;
  source_size: number;
  source_sha256: string;
  /** 1: exempt from retention (0002). */
  keep: Generated<number>;
  /** When retention (or the blob cap) removed the source, and why: `retention` | `blob_cap` (0002). */
  source_deleted_at: number | null;
  source_deleted_reason: string | null;
  logs_deleted_at: number | null;
  artifacts_deleted_at: number | null;
  /** Spec `concurrency.group` (migration 0005); null when the build has none. */
  concurrency_group: string | null;
  /** Spec `concurrency.limit`; null without a group. */
  concurrency_limit: number | null;
}

export interface BuildAttemptsTable {
  build_id: string;
  attempt: number;
  worker_id: string | null;
  state: BuildState;
  assigned_at: number | null;
  started_at: number | null;
  finished_at: number | null;
  reason: string | null;
  exit_code: number | null;
  /** Bytes of log stored for this attempt (the next chunk's expected offset). */
  log_bytes: number;
  /** 1 once the log reached the cap and ends with the truncation line (0002). */
  log_truncated: Generated<number>;
}

export interface LogChunksTable {
  build_id: string;
  attempt: number;
  seq: number;
  byte_offset: number;
  size: number;
  data: Buffer;
}

export interface ArtifactsTable {
  build_id: string;
  attempt: number;
  name: string;
  size: number;
  sha256: string;
  blob_key: string;
  created_at: number;
  /** Set when retention or the blob cap removed the bytes (0002); the row stays so the API can answer 410. */
  deleted_at: number | null;
  deleted_reason: string | null;
}

/** Migration 0005: secrets, sealed by the controller (AES-256-GCM); the key is never stored. */
export interface SecretsTable {
  name: string;
  /** `v1.<nonce>.<ciphertext+tag>` (secrets/cipher.ts). */
  sealed: string;
  /** JSON Scope. */
  scope: string;
  created_at: number;
  updated_at: number;
}

/** Migration 0005: one row per secret handed to an attempt of a build. */
export interface SecretHandoutsTable {
  build_id: string;
  attempt: number;
  name: string;
  handed_out_at: number;
}

/** Migration 0005: build cache entries; the archive is the blob `blob_key` (content-addressed). */
export interface CacheEntriesTable {
  id: string;
  /** cacheScope() of the build that saved it: builds share entries only within one scope. */
  scope: string;
  key: string;
  sha256: string;
  size: number;
  blob_key: string;
  build_id: string;
  created_at: number;
  last_used_at: number;
}

export interface DB {
  settings: SettingsTable;
  api_tokens: ApiTokensTable;
  enrollment_tokens: EnrollmentTokensTable;
  workers: WorkersTable;
  builds: BuildsTable;
  build_attempts: BuildAttemptsTable;
  log_chunks: LogChunksTable;
  artifacts: ArtifactsTable;
  webhooks: WebhooksTable;
  webhook_events: WebhookEventsTable;
  webhook_deliveries: WebhookDeliveriesTable;
  secrets: SecretsTable;
  secret_handouts: SecretHandoutsTable;
  cache_entries: CacheEntriesTable;
}

function initial(dialect: Dialect): Migration {
  const blob = dialect === 'postgres' ? 'bytea' : 'blob';
  return {
    async up(db: Kysely<any>) {
      await db.schema
        .createTable('settings')
        .addColumn('name', 'text', (c) => c.primaryKey())
        .addColumn('value', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('api_tokens')
        .addColumn('hash', 'text', (c) => c.primaryKey())
        .addColumn('description', 'text')
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('revoked_at', 'bigint')
        .execute();
      await db.schema
        .createTable('enrollment_tokens')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('hash', 'text', (c) => c.notNull().unique())
        .addColumn('description', 'text')
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('expires_at', 'bigint')
        .addColumn('max_uses', 'integer')
        .addColumn('uses', 'integer', (c) => c.notNull().defaultTo(0))
        .addColumn('revoked_at', 'bigint')
        .execute();
      await db.schema
        .createTable('workers')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('labels', 'text', (c) => c.notNull())
        .addColumn('max_concurrent_builds', 'integer', (c) => c.notNull())
        .addColumn('version', 'text', (c) => c.notNull())
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('secret_hash', 'text', (c) => c.notNull())
        .addColumn('access_token_hash', 'text', (c) => c.notNull().unique())
        .addColumn('access_token_expires_at', 'bigint', (c) => c.notNull())
        .addColumn('boot_id', 'text')
        .addColumn('superseded_boot_ids', 'text', (c) => c.notNull().defaultTo('[]'))
        .addColumn('registration_id', 'text', (c) => c.unique())
        .addColumn('first_auth_at', 'bigint')
        .addColumn('active_build_count', 'integer', (c) => c.notNull().defaultTo(0))
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('last_seen_at', 'bigint')
        .execute();
      await db.schema
        .createTable('builds')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('attempt', 'integer', (c) => c.notNull())
        // No foreign key: a deleted worker's id stays in build history.
        .addColumn('worker_id', 'text')
        .addColumn('spec', 'text', (c) => c.notNull())
        .addColumn('labels', 'text', (c) => c.notNull())
        .addColumn('priority', 'integer', (c) => c.notNull())
        .addColumn('max_attempts', 'integer', (c) => c.notNull())
        .addColumn('timeout_seconds', 'integer', (c) => c.notNull())
        .addColumn('cancel_requested', 'integer', (c) => c.notNull().defaultTo(0))
        .addColumn('exit_code', 'integer')
        .addColumn('reason', 'text')
        .addColumn('message', 'text')
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('assigned_at', 'bigint')
        .addColumn('started_at', 'bigint')
        .addColumn('finished_at', 'bigint')
        .addColumn('ack_deadline', 'bigint')
        .addColumn('lease_expires_at', 'bigint')
        .addColumn('source_key', 'text', (c) => c.notNull())
        .addColumn('source_size', 'bigint', (c) => c.notNull())
        .addColumn('source_sha256', 'text', (c) => c.notNull())
        .execute();
      // Matches the claim's ORDER BY, only over queued builds.
      await sql`create index builds_claim on builds (priority desc, created_at, id) where state = 'queued'`.execute(db);
      await sql`create index builds_worker on builds (worker_id, state) where worker_id is not null`.execute(db);
      await sql`create index builds_created on builds (created_at desc, id desc)`.execute(db);
      await sql`create index builds_ack on builds (ack_deadline) where state = 'assigned'`.execute(db);
      await sql`create index builds_lease on builds (lease_expires_at) where state = 'running'`.execute(db);
      await db.schema
        .createTable('build_attempts')
        .addColumn('build_id', 'text', (c) => c.notNull().references('builds.id').onDelete('cascade'))
        .addColumn('attempt', 'integer', (c) => c.notNull())
        .addColumn('worker_id', 'text')
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('assigned_at', 'bigint')
        .addColumn('started_at', 'bigint')
        .addColumn('finished_at', 'bigint')
        .addColumn('reason', 'text')
        .addColumn('exit_code', 'integer')
        .addColumn('log_bytes', 'bigint', (c) => c.notNull().defaultTo(0))
        .addPrimaryKeyConstraint('build_attempts_pk', ['build_id', 'attempt'])
        .execute();
      await db.schema
        .createTable('log_chunks')
        .addColumn('build_id', 'text', (c) => c.notNull().references('builds.id').onDelete('cascade'))
        .addColumn('attempt', 'integer', (c) => c.notNull())
        .addColumn('seq', 'integer', (c) => c.notNull())
        .addColumn('byte_offset', 'bigint', (c) => c.notNull())
        .addColumn('size', 'integer', (c) => c.notNull())
        .addColumn('data', blob, (c) => c.notNull())
        .addPrimaryKeyConstraint('log_chunks_pk', ['build_id', 'attempt', 'seq'])
        .execute();
      await sql`create index log_chunks_offset on log_chunks (build_id, attempt, byte_offset)`.execute(db);
      await db.schema
        .createTable('artifacts')
        .addColumn('build_id', 'text', (c) => c.notNull().references('builds.id').onDelete('cascade'))
        .addColumn('attempt', 'integer', (c) => c.notNull())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('size', 'bigint', (c) => c.notNull())
        .addColumn('sha256', 'text', (c) => c.notNull())
        .addColumn('blob_key', 'text', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addPrimaryKeyConstraint('artifacts_pk', ['build_id', 'attempt', 'name'])
        .execute();
    },
  };
}

/** Issue 11: a worker's executor; indexes for the per-minute history (store/sql/dashboard.ts). */
function dashboard(): Migration {
  return {
    async up(db: Kysely<any>) {
      await db.schema.alterTable('workers').addColumn('executor', 'text').execute();
      await createDashboardIndexes(db);
    },
  };
}

/**
 * A `registrationId` belongs to the enrollment token it was first used
 * with (issue 9: a replay with another valid token took over the pending
 * registration). Rows from before stay unbound.
 */
const registrationToken: Migration = {
  async up(db: Kysely<any>) {
    await db.schema.alterTable('workers').addColumn('registration_token_id', 'text').execute();
  },
};

/** Issue 13: secrets and their hand-outs, cache entries, concurrency groups. */
function secretsCachesConcurrency(): Migration {
  return {
    async up(db: Kysely<any>) {
      await db.schema
        .createTable('secrets')
        .addColumn('name', 'text', (c) => c.primaryKey())
        .addColumn('sealed', 'text', (c) => c.notNull())
        .addColumn('scope', 'text', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('secret_handouts')
        .addColumn('build_id', 'text', (c) => c.notNull().references('builds.id').onDelete('cascade'))
        .addColumn('attempt', 'integer', (c) => c.notNull())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('handed_out_at', 'bigint', (c) => c.notNull())
        .addPrimaryKeyConstraint('secret_handouts_pk', ['build_id', 'attempt', 'name'])
        .execute();
      await sql`create index secret_handouts_name on secret_handouts (name, handed_out_at desc)`.execute(db);
      await db.schema
        .createTable('cache_entries')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('scope', 'text', (c) => c.notNull())
        .addColumn('key', 'text', (c) => c.notNull())
        .addColumn('sha256', 'text', (c) => c.notNull())
        .addColumn('size', 'bigint', (c) => c.notNull())
        .addColumn('blob_key', 'text', (c) => c.notNull())
        // No foreign key: an entry outlives the build that saved it.
        .addColumn('build_id', 'text', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('last_used_at', 'bigint', (c) => c.notNull())
        .addUniqueConstraint('cache_entries_scope_key', ['scope', 'key'])
        .execute();
      await sql`create index cache_entries_blob on cache_entries (blob_key)`.execute(db);
      await sql`create index cache_entries_used on cache_entries (last_used_at desc, id desc)`.execute(db);
      await db.schema.alterTable('builds').addColumn('concurrency_group', 'text').execute();
      await db.schema.alterTable('builds').addColumn('concurrency_limit', 'integer').execute();
      // The claim counts a group's assigned, running and earlier queued builds.
      await sql`create index builds_concurrency on builds (concurrency_group, state, created_at, id) where concurrency_group is not null`.execute(db);
    },
  };
}

/** Numbered migrations, in order. Never edit a released one: add the next number. */
export function migrationProvider(dialect: Dialect): MigrationProvider {
  return {
    async getMigrations() {
      return {
        '0001_initial': initial(dialect),
        '0002_operations': operations(dialect),
        '0003_dashboard': dashboard(),
        '0004_registration_token': registrationToken,
        '0005_secrets_caches_concurrency': secretsCachesConcurrency(),
      };
    },
  };
}
