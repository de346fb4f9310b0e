/**
 * Fencing by attempt (docs/protocol.md "For the worker running a build"): a build-token write is
 * checked, in this order, BUILD_NOT_FOUND, LEASE_LOST (not the build's
 * current attempt), INVALID_TRANSITION (the state does not allow it). Shared
 * by start/finish (`builds.ts`), logs and artifacts.
 */
import type { Transaction } from 'kysely';
import { ApiError } from '@buildfleet/protocol';
import type { DB } from '../schema.js';
import type { AttemptRef } from '../types.js';
import { forShare, forUpdate, type Db, type SqlContext } from './context.js';
import { buildNotFound, type BuildRow } from './rows.js';

/**
 * Reads a build row inside `trx`, locked on PostgreSQL: `update` for a state
 * change, `share` for writes that must not interleave with one (log chunks,
 * artifacts: `finish` waits for those in flight). Throws BUILD_NOT_FOUND.
 */
export async function lockBuild(ctx: SqlContext, trx: Transaction<DB>, id: string, mode: 'update' | 'share' = 'update'): Promise<BuildRow> {
  const q = trx.selectFrom('builds').selectAll().where('id', '=', id);
  const row = await (mode === 'update' ? forUpdate(ctx, q) : forShare(ctx, q)).executeTakeFirst();
  if (!row) throw buildNotFound(id);
  return row;
}

/** Throws LEASE_LOST unless `ref` names the build's current attempt. */
export function fence(row: BuildRow, ref: AttemptRef): void {
  if (row.attempt !== ref.attempt) {
    throw new ApiError('LEASE_LOST', `attempt ${ref.attempt} of build ${row.id} no longer holds the lease (current attempt ${row.attempt})`);
  }
}

/** Logs and artifacts may be written only while the attempt runs: LEASE_LOST, then INVALID_TRANSITION. */
export function checkRunning(row: BuildRow, ref: AttemptRef): void {
  fence(row, ref);
  if (row.state !== 'running') throw new ApiError('INVALID_TRANSITION', `build ${row.id} is ${row.state}: attempt ${ref.attempt} cannot write`);
}

/** The error for a conditional update that matched zero rows: re-reads the build to say why. */
export async function raceError(db: Db, ref: AttemptRef): Promise<ApiError> {
  const row = await db.selectFrom('builds').selectAll().where('id', '=', ref.buildId).executeTakeFirst();
  if (!row) return buildNotFound(ref.buildId);
  if (row.attempt !== ref.attempt) return new ApiError('LEASE_LOST', `attempt ${ref.attempt} of build ${ref.buildId} no longer holds the lease`);
  return new ApiError('INVALID_TRANSITION', `build ${ref.buildId} changed concurrently (now ${row.state})`);
}
