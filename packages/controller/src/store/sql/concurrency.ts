/**
 * Concurrency groups (issue 13; spec `concurrency: {group, limit,
 * cancelInProgress}`): at most `limit` builds of a group are assigned or
 * running at once, and the group's queued builds are taken in submission
 * order.
 *
 * The rule lives inside the one-statement claim (`claims.ts`) as the
 * condition `groupHasRoom`: a queued build of a group may be claimed only
 * when the group's assigned and running builds plus its queued builds
 * submitted before it number fewer than its limit. Counting the earlier
 * queued builds is what makes it safe without a lock of its own when
 * several controllers claim at once on PostgreSQL: a claimer that takes a
 * build counted every build of the group that was active or queued before
 * it in its snapshot, and a build another claimer takes concurrently was
 * queued in that snapshot (so counted if it is older), or is newer and its
 * claimer counted this one. `FOR UPDATE SKIP LOCKED` keeps the same row
 * from being taken twice. It also keeps the group in order: a build cannot
 * overtake an older queued one of its group, whatever its priority.
 */
import { sql } from 'kysely';
import { ApiError, type Build } from '@buildfleet/protocol';
import { forUpdate, tx, type SqlContext } from './context.js';
import { buildNotFound } from './rows.js';
import { applyTransition } from './transitions.js';
import { loadBuild } from './builds.js';

/** The claim's condition on a candidate build `b`: its concurrency group (if any) has room for it. */
export const groupHasRoom = sql<boolean>`(
  b.concurrency_group is null or (
    select count(*) from builds g
    where g.concurrency_group = b.concurrency_group
      and (g.state in ('assigned', 'running')
           or (g.state = 'queued' and (g.created_at < b.created_at or (g.created_at = b.created_at and g.id < b.id))))
  ) < b.concurrency_limit)`;

/**
 * `cancelInProgress`: cancels every build of `group` submitted before
 * `beforeId` that has not ended, oldest first, each through the `cancel`
 * transition (queued and assigned builds end `canceled`; running ones get
 * `cancelRequested`). Returns the builds it changed. A loop of conditional
 * updates in one transaction: a group rarely has more than a few builds in
 * flight. Throws BUILD_NOT_FOUND for an unknown `beforeId`.
 */
export function cancelOlderInGroup(ctx: SqlContext, group: string, beforeId: string, now: number): Promise<Build[]> {
  return tx(ctx, async (trx) => {
    const newest = await trx.selectFrom('builds').select(['created_at', 'id']).where('id', '=', beforeId).executeTakeFirst();
    if (!newest) throw buildNotFound(beforeId);
    const rows = await forUpdate(
      ctx,
      trx
        .selectFrom('builds')
        .selectAll()
        .where('concurrency_group', '=', group)
        .where('state', 'in', ['queued', 'assigned', 'running'])
        .where((eb) =>
          eb.or([eb('created_at', '<', newest.created_at), eb.and([eb('created_at', '=', newest.created_at), eb('id', '<', newest.id)])]),
        )
        .orderBy('created_at')
        .orderBy('id'),
    ).execute();
    const changed: Build[] = [];
    for (const row of rows) {
      if (row.state === 'running' && Number(row.cancel_requested) === 1) continue;
      try {
        if (await applyTransition(trx, row, { type: 'cancel' }, now)) changed.push((await loadBuild(trx, row.id))!);
      } catch (err) {
        if (!(err instanceof ApiError && err.code === 'INVALID_TRANSITION')) throw err;
      }
    }
    return changed;
  });
}
