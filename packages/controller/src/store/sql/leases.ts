/**
 * Leases (docs/protocol.md "heartbeat" and "States"): a heartbeat extends the
 * lease of the running builds a worker lists; the reaper hands expired
 * assignments and leases to the lost-build policy and ends builds past
 * their timeout. Dialect differences: only the row locks of `context.ts`
 * (the reaper takes rows with `SKIP LOCKED` on PostgreSQL, so reapers on
 * several controllers take disjoint rows).
 */
import { sql } from 'kysely';
import type { LostReason } from '../../domain/transition.js';
import type { HeartbeatInput, HeartbeatResult, ReapOptions, ReapResult } from '../types.js';
import { forUpdateSkipLocked, tx, type SqlContext } from './context.js';
import { uniq, type BuildRow } from './rows.js';
import { applyTransitions } from './batch-transitions.js';
import { checkAccessToken, heldBuilds, touchWorker } from './worker-auth.js';

/** Most builds one reaper round changes per kind; the next round takes the rest. */
const REAP_BATCH = 1000;

/**
 * One heartbeat under the worker's row lock; see `Store.heartbeat`. Moving a
 * lease is not a state change: only `lease_expires_at` of running builds
 * this worker owns moves (never an assigned build's ack deadline).
 */
export function heartbeat(ctx: SqlContext, input: HeartbeatInput): Promise<HeartbeatResult> {
  return tx(ctx, async (trx) => {
    const locked = await ctx.lockWorker(trx, input.workerId, 'heartbeat');
    const w = await checkAccessToken(trx, locked, input);
    const listed = uniq(input.activeBuildIds);
    await touchWorker(trx, w.id, input.now, listed.length);
    const held = await heldBuilds(trx, w.id);
    const heldById = new Map(held.map((b) => [b.id, b]));
    const extend = listed.filter((id) => heldById.get(id)?.state === 'running');
    if (extend.length > 0) {
      await trx
        .updateTable('builds')
        .set({ lease_expires_at: input.now + input.leaseMs })
        .where('id', 'in', extend)
        .where('worker_id', '=', w.id)
        .where('state', '=', 'running')
        .execute();
    }
    return {
      cancel: held.filter((b) => b.state === 'running' && Number(b.cancel_requested) === 1).map((b) => b.id),
      abandon: listed.filter((id) => !heldById.has(id)),
      accessTokenExpiresAt: w.access_token_expires_at,
      draining: w.status === 'draining',
    };
  });
}

/**
 * Of `buildIds`, those this worker holds running with a cancel requested; see
 * `Store.cancelsRequested`. One indexed read, no lock: the same rule as a
 * heartbeat's `cancel`, for a poll that watches cancels (docs/protocol.md "poll").
 */
export async function cancelsRequested(ctx: SqlContext, workerId: string, buildIds: readonly string[]): Promise<string[]> {
  const ids = uniq([...buildIds]);
  if (ids.length === 0) return [];
  const rows = await ctx.db
    .selectFrom('builds')
    .select('id')
    .where('worker_id', '=', workerId)
    .where('state', '=', 'running')
    .where('cancel_requested', '=', 1)
    .where('id', 'in', ids)
    .orderBy('id')
    .execute();
  return rows.map((r) => r.id);
}

/** Why the reaper loses a build: its ack deadline or its lease ran out. */
function lostReason(row: BuildRow): LostReason {
  return row.state === 'assigned' ? 'ack_timeout' : 'lease_expired';
}

/**
 * One reaper round at `options.now` (epoch ms); see `Store.reap`. Set-based
 * (`batch-transitions.ts`): two reads and a bounded number of UPDATEs
 * whatever the number of builds (at most `REAP_BATCH` of each kind).
 */
export function reap(ctx: SqlContext, options: ReapOptions): Promise<ReapResult> {
  const { now } = options;
  return tx(ctx, async (trx) => {
    const result: ReapResult = { requeued: [], failed: [], canceled: [], timedOut: [] };
    if (options.reapLeases) {
      const expired = await forUpdateSkipLocked(
        ctx,
        trx
          .selectFrom('builds')
          .selectAll()
          .where((eb) =>
            eb.or([
              eb.and([eb('state', '=', 'assigned'), eb('ack_deadline', '<', now)]),
              eb.and([eb('state', '=', 'running'), eb('lease_expires_at', '<', now)]),
            ]),
          )
          .orderBy('id')
          .limit(REAP_BATCH),
      ).execute();
      const lost = await applyTransitions(trx, expired, (row) => ({ type: 'lose', reason: lostReason(row) }), now);
      for (const { row, t } of lost) {
        if (t.to === 'queued') result.requeued.push(row.id);
        else if (t.to === 'canceled') result.canceled.push(row.id);
        else result.failed.push(row.id);
      }
    }
    const overdue = await forUpdateSkipLocked(
      ctx,
      trx
        .selectFrom('builds')
        .selectAll()
        .where('state', '=', 'running')
        .where(sql<number>`started_at + timeout_seconds * 1000`, '<', now)
        .orderBy('id')
        .limit(REAP_BATCH),
    ).execute();
    result.timedOut = (await applyTransitions(trx, overdue, () => ({ type: 'timeout' }), now)).map((a) => a.row.id);
    if (result.requeued.length + result.failed.length + result.canceled.length + result.timedOut.length > 0) {
      ctx.logger?.warn({ ...result }, 'reaped builds');
    }
    return result;
  });
}
