/**
 * What every worker call shares: checking a worker access token in
 * docs/protocol.md's order, recording the call, and reading the builds a worker
 * holds. Used by registration (`workers.ts`), polls (`claims.ts`) and
 * heartbeats (`leases.ts`). No dialect differences.
 */
import { sql } from 'kysely';
import { ApiError } from '@buildfleet/protocol';
import type { WorkerAuth } from '../types.js';
import type { Db } from './context.js';
import { HELD_STATES, safeEqual, workerNotFound, type BuildRow, type WorkerRow } from './rows.js';

/**
 * docs/protocol.md order for a worker access token on `/workers/{id}/…`: unknown
 * token on a missing worker → WORKER_NOT_FOUND; unknown → TOKEN_INVALID;
 * expired → TOKEN_EXPIRED (authentication before authorization); another
 * worker's → FORBIDDEN. `pathWorker` is the row of the worker in the path
 * (already read, locked or not). Resolves that row when the token is its own
 * and unexpired (no statement then).
 */
export async function checkAccessToken(db: Db, pathWorker: WorkerRow | undefined, auth: WorkerAuth): Promise<WorkerRow> {
  if (pathWorker && safeEqual(pathWorker.access_token_hash, auth.tokenHash)) {
    if (pathWorker.access_token_expires_at <= auth.now) throw new ApiError('TOKEN_EXPIRED', 'worker access token expired');
    return pathWorker;
  }
  const owner = await db
    .selectFrom('workers')
    .select(['id', 'access_token_expires_at'])
    .where('access_token_hash', '=', auth.tokenHash)
    .executeTakeFirst();
  if (!owner) {
    if (!pathWorker) throw workerNotFound(auth.workerId);
    throw new ApiError('TOKEN_INVALID', 'worker access token unknown or rotated');
  }
  if (owner.access_token_expires_at <= auth.now) throw new ApiError('TOKEN_EXPIRED', 'worker access token expired');
  throw new ApiError('FORBIDDEN', 'this access token belongs to another worker');
}

/**
 * Records an authenticated call at `now` (epoch ms): ends `registrationId`
 * retries (docs/protocol.md "register", case 1), updates `last_seen_at`, and the
 * worker's own count of active builds when given.
 */
export async function touchWorker(db: Db, workerId: string, now: number, activeBuildCount?: number): Promise<void> {
  await db
    .updateTable('workers')
    .set({
      first_auth_at: sql<number>`coalesce(first_auth_at, ${now})`,
      last_seen_at: now,
      ...(activeBuildCount !== undefined ? { active_build_count: activeBuildCount } : {}),
    })
    .where('id', '=', workerId)
    .execute();
}

/** The builds a worker holds (assigned or running), oldest assignment first. */
export function heldBuilds(db: Db, workerId: string): Promise<BuildRow[]> {
  return db
    .selectFrom('builds')
    .selectAll()
    .where('worker_id', '=', workerId)
    .where('state', 'in', HELD_STATES)
    .orderBy('assigned_at')
    .orderBy('id')
    .execute();
}
