/**
 * Builds: submission, reads and listings, and the single-build state
 * changes a user or the build's own worker asks for (cancel, start, finish;
 * docs/protocol.md "Builds"). Every state change goes through `transitions.ts`.
 * Dialect differences: the label filter of `listBuilds` (below) and the row
 * locks of `context.ts`.
 */
import { sql } from 'kysely';
import { ApiError, isTerminal, type Build, type BuildOutcome, type LimitReason } from '@buildfleet/protocol';
import type { RejectReason } from '../../domain/transition.js';
import type { Dialect } from '../schema.js';
import type { AttemptRef, BuildListFilter, NewBuild, StepResult } from '../types.js';
import { applyGuarded } from './guarded.js';
import { run, tx, type Db, type SqlContext } from './context.js';
import { fence, lockBuild, raceError } from './fencing.js';
import { buildNotFound, labelsJson, rowToBuild, type AttemptRow, type BuildRow } from './rows.js';
import { applyTransition } from './transitions.js';
import { gone } from './gone.js';
import { recordBuildEvent } from './webhooks.js';
import { buildFilterConditions } from './dashboard.js';

/** Stores a new `queued` build as attempt 1 and returns it. */
export function createBuild(ctx: SqlContext, input: NewBuild): Promise<Build> {
  return run(async () => {
    const row: BuildRow = {
      id: input.id,
      state: 'queued',
      attempt: 1,
      worker_id: null,
      spec: JSON.stringify(input.spec),
      labels: labelsJson(input.spec.labels),
      priority: input.spec.priority,
      max_attempts: input.spec.maxAttempts,
      timeout_seconds: input.spec.timeoutSeconds,
      cancel_requested: 0,
      exit_code: null,
      reason: null,
      message: null,
      created_at: input.now,
      assigned_at: null,
      started_at: null,
      finished_at: null,
      ack_deadline: null,
      lease_expires_at: null,
      source_key: input.sourceKey,
      source_size: input.sourceSize,
      source_sha256: input.sourceSha256,
      keep: 0,
      source_deleted_at: null,
      source_deleted_reason: null,
      logs_deleted_at: null,
      artifacts_deleted_at: null,
      concurrency_group: input.spec.concurrency?.group ?? null,
      concurrency_limit: input.spec.concurrency ? input.spec.concurrency.limit : null,
    };
    // The build.created webhook event commits with the build (transactional outbox).
    await ctx.db.transaction().execute(async (trx) => {
      await trx.insertInto('builds').values(row).execute();
      await recordBuildEvent(trx, 'build.created', row.id, input.now);
    });
    return rowToBuild(row, []);
  });
}

/** A build with its attempts, or undefined. */
export async function loadBuild(db: Db, id: string): Promise<Build | undefined> {
  const row = await db.selectFrom('builds').selectAll().where('id', '=', id).executeTakeFirst();
  if (!row) return undefined;
  const attempts = await db.selectFrom('build_attempts').selectAll().where('build_id', '=', id).execute();
  return rowToBuild(row, attempts);
}

/** Throws BUILD_NOT_FOUND. */
export function getBuild(ctx: SqlContext, id: string): Promise<Build> {
  return run(async () => {
    const b = await loadBuild(ctx.db, id);
    if (!b) throw buildNotFound(id);
    return b;
  });
}

/** The blob key of the build's source tarball. Throws BUILD_NOT_FOUND, or GONE once retention removed it. */
export function getSourceKey(ctx: SqlContext, id: string): Promise<string> {
  return run(async () => {
    const row = await ctx.db
      .selectFrom('builds')
      .select(['source_key', 'source_deleted_at', 'source_deleted_reason'])
      .where('id', '=', id)
      .executeTakeFirst();
    if (!row) throw buildNotFound(id);
    if (row.source_deleted_at !== null) throw gone(`the source of build ${id}`, row.source_deleted_at, row.source_deleted_reason, 'BUILDFLEET_RETAIN_SOURCES');
    return row.source_key;
  });
}

/** Whether any build is queued (the wake-up re-check). */
export function hasQueuedBuilds(ctx: SqlContext): Promise<boolean> {
  return run(async () => {
    const row = await ctx.db.selectFrom('builds').select('id').where('state', '=', 'queued').limit(1).executeTakeFirst();
    return row !== undefined;
  });
}

function encodeCursor(row: BuildRow): string {
  return Buffer.from(JSON.stringify([row.created_at, row.id])).toString('base64url');
}

function decodeCursor(cursor: string, name = 'cursor'): { createdAt: number; id: string } {
  try {
    const v = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as unknown;
    if (Array.isArray(v) && v.length === 2 && Number.isSafeInteger(v[0]) && typeof v[1] === 'string') {
      return { createdAt: v[0] as number, id: v[1] };
    }
  } catch {
    // fall through
  }
  throw new ApiError('VALIDATION_FAILED', `${name}: not a cursor returned by this listing`);
}

/** "The build's labels include `label`", per dialect. */
function hasLabel(dialect: Dialect, label: string) {
  return dialect === 'postgres'
    ? sql<boolean>`labels::jsonb @> jsonb_build_array(${label}::text)`
    : sql<boolean>`exists (select 1 from json_each(builds.labels) as l where l.value = ${label})`;
}

/**
 * Newest first, keyset-paginated by (created_at, id) both ways: `cursor`
 * reads the older page after it, `before` the newer page before it; `limit`
 * is clamped to 1..1000. Filters beyond state and label are
 * `buildFilterConditions` (dashboard.ts). Throws VALIDATION_FAILED for a
 * cursor this listing did not return, or both `cursor` and `before`.
 */
export async function listBuilds(
  ctx: SqlContext,
  filter: BuildListFilter,
): Promise<{ builds: Build[]; nextCursor: string | null; prevCursor: string | null }> {
  if (filter.cursor !== undefined && filter.before !== undefined) throw new ApiError('VALIDATION_FAILED', 'cursor and before: pass one of them');
  const cursor = filter.cursor !== undefined ? decodeCursor(filter.cursor) : undefined;
  const before = filter.before !== undefined ? decodeCursor(filter.before, 'before') : undefined;
  const limit = Math.max(1, Math.min(filter.limit, 1000));
  const conditions = buildFilterConditions(ctx.dialect, filter);
  return run(async () => {
    let q = ctx.db.selectFrom('builds').selectAll();
    if (filter.state !== undefined) q = q.where('state', '=', filter.state);
    if (filter.label !== undefined) q = q.where(hasLabel(ctx.dialect, filter.label));
    for (const c of conditions) q = q.where(c);
    if (cursor) {
      q = q.where((eb) =>
        eb.or([eb('created_at', '<', cursor.createdAt), eb.and([eb('created_at', '=', cursor.createdAt), eb('id', '<', cursor.id)])]),
      );
    }
    if (before) {
      q = q.where((eb) =>
        eb.or([eb('created_at', '>', before.createdAt), eb.and([eb('created_at', '=', before.createdAt), eb('id', '>', before.id)])]),
      );
    }
    // A `before` page reads upwards from its cursor, then shows newest first like every page.
    const rows = before
      ? await q.orderBy('created_at', 'asc').orderBy('id', 'asc').limit(limit + 1).execute()
      : await q.orderBy('created_at', 'desc').orderBy('id', 'desc').limit(limit + 1).execute();
    const more = rows.length > limit;
    const page = before ? rows.slice(0, limit).reverse() : rows.slice(0, limit);
    const attempts = page.length
      ? await ctx.db.selectFrom('build_attempts').selectAll().where('build_id', 'in', page.map((r) => r.id)).execute()
      : [];
    const byBuild = new Map<string, AttemptRow[]>();
    for (const a of attempts) byBuild.set(a.build_id, [...(byBuild.get(a.build_id) ?? []), a]);
    const first = page[0];
    const last = page[page.length - 1];
    return {
      builds: page.map((r) => rowToBuild(r, byBuild.get(r.id) ?? [])),
      // Older builds exist past a full page, and always past a `before` page (its cursor's row).
      nextCursor: last && (before || more) ? encodeCursor(last) : null,
      // Newer builds exist before a `cursor` page (its cursor's row), and past a full `before` page.
      prevCursor: first && (cursor || (before && more)) ? encodeCursor(first) : null,
    };
  });
}

/** docs/protocol.md "States": queued/assigned → canceled; running → cancelRequested. Terminal → INVALID_TRANSITION. */
export function cancelBuild(ctx: SqlContext, id: string, now: number): Promise<Build> {
  return tx(ctx, async (trx) => {
    const row = await lockBuild(ctx, trx, id);
    const t = await applyTransition(trx, row, { type: 'cancel' }, now);
    if (!t) throw await raceError(trx, { buildId: id, attempt: row.attempt });
    return (await loadBuild(trx, id))!;
  });
}

/**
 * assigned → running with a lease until `now + leaseMs` (epoch ms); the same
 * start again answers the build (`changed` false). The common case is one
 * conditional UPDATE (`guarded.ts`); anything else takes the locking path.
 */
export function startBuild(ctx: SqlContext, ref: AttemptRef, now: number, leaseMs: number): Promise<StepResult> {
  const event = { type: 'start', leaseExpiresAt: now + leaseMs } as const;
  return tx(ctx, async (trx) => {
    const started = await applyGuarded(trx, ref.buildId, ref.attempt, event, now);
    if (started) return { build: started, changed: true };
    const row = await lockBuild(ctx, trx, ref.buildId);
    fence(row, ref);
    let changed = false;
    if (row.state !== 'running') {
      const t = await applyTransition(trx, row, event, now);
      if (!t) throw await raceError(trx, ref);
      changed = true;
    }
    return { build: (await loadBuild(trx, ref.buildId))!, changed };
  });
}

/**
 * Fails attempt `ref` before its script runs (queued, assigned or running →
 * failed with `reason` and `message`; issue 13). Throws BUILD_NOT_FOUND,
 * LEASE_LOST, INVALID_TRANSITION.
 */
export function rejectBuild(ctx: SqlContext, ref: AttemptRef, reason: RejectReason, message: string, now: number): Promise<Build> {
  return tx(ctx, async (trx) => {
    const row = await lockBuild(ctx, trx, ref.buildId);
    fence(row, ref);
    const t = await applyTransition(trx, row, { type: 'reject', reason, message }, now);
    if (!t) throw await raceError(trx, ref);
    return (await loadBuild(trx, ref.buildId))!;
  });
}

/**
 * The attempt's outcome; the same outcome twice answers the build (`changed`
 * false), another after terminal is INVALID_TRANSITION. The common case is
 * one conditional UPDATE (`guarded.ts`); anything else takes the locking path.
 */
export function finishBuild(
  ctx: SqlContext,
  ref: AttemptRef & { outcome: BuildOutcome; exitCode: number | null; message: string | null; limitReason?: LimitReason | undefined; now: number },
): Promise<StepResult> {
  const event = { type: 'finish', outcome: ref.outcome, exitCode: ref.exitCode, message: ref.message, limitReason: ref.limitReason } as const;
  return tx(ctx, async (trx) => {
    const finished = await applyGuarded(trx, ref.buildId, ref.attempt, event, ref.now);
    if (finished) return { build: finished, changed: true };
    const row = await lockBuild(ctx, trx, ref.buildId);
    fence(row, ref);
    if (isTerminal(row.state)) {
      if (row.state === ref.outcome) return { build: (await loadBuild(trx, ref.buildId))!, changed: false };
      throw new ApiError('INVALID_TRANSITION', `build ${row.id} already ended ${row.state}`);
    }
    const t = await applyTransition(trx, row, event, ref.now);
    if (!t) throw await raceError(trx, ref);
    return { build: (await loadBuild(trx, ref.buildId))!, changed: true };
  });
}
