/**
 * Claims (docs/protocol.md "poll"): under the worker's row lock, re-deliver the
 * builds assigned to it but not started, then claim queued builds in ONE
 * statement (design rule 3, graphile-worker's `getJobs.ts`): no window
 * between choosing and taking.
 *
 * Dialects differ only in `claimStatement` below: PostgreSQL picks with
 * `FOR UPDATE SKIP LOCKED` in a MATERIALIZED CTE and tests the label subset
 * with jsonb `<@`; SQLite (one writer at a time) picks in a subquery and
 * tests the subset with `json_each`. A build of a full concurrency group
 * is not claimable (`concurrency.ts`).
 */
import { sql, type Transaction } from 'kysely';
import { transition, type BuildPatch } from '../../domain/transition.js';
import type { DB, Dialect } from '../schema.js';
import type { HeldBuild, PollInput } from '../types.js';
import { tx, type SqlContext } from './context.js';
import { toHeld, type BuildRow, type WorkerRow } from './rows.js';
import { checkAccessToken, heldBuilds, touchWorker } from './worker-auth.js';
import { groupHasRoom } from './concurrency.js';

/**
 * One claim round; see `Store.poll`. Statements: lock the worker, record the
 * call, read its held builds, and when it may take more, one claim UPDATE
 * and one INSERT of the new attempt rows.
 */
export function poll(ctx: SqlContext, input: PollInput): Promise<HeldBuild[]> {
  return tx(ctx, async (trx) => {
    const locked = await ctx.lockWorker(trx, input.workerId, 'poll');
    const w = await checkAccessToken(trx, locked, input);
    await touchWorker(trx, w.id, input.now, input.activeBuildIds.length);
    const slots = Math.max(0, input.freeSlots);
    if (slots === 0) return [];
    const active = new Set(input.activeBuildIds);
    const held = await heldBuilds(trx, w.id);
    // Re-deliveries first: an earlier answer may have been lost; the original ack deadline stays.
    const out = held
      .filter((b) => b.state === 'assigned' && !active.has(b.id))
      .slice(0, slots)
      .map(toHeld);
    // `freeSlots` is the worker's word; what it registered is the bound: it
    // never holds more than `maxConcurrentBuilds` (docs/protocol.md "poll").
    const room = Math.min(slots - out.length, w.max_concurrent_builds - held.length);
    if (w.status === 'active' && room > 0) {
      out.push(...(await claim(ctx, trx, w, room, input.now, input.ackTimeoutMs)));
    }
    return out;
  });
}

function setClause(patch: BuildPatch) {
  return sql.join(Object.entries(patch).map(([k, v]) => sql`${sql.ref(k)} = ${v as unknown}`));
}

/**
 * The claim statement of each dialect: takes up to `n` queued builds whose
 * labels are a subset of `workerLabels` (JSON array text), priority first
 * then oldest, sets `patch` on them and returns the updated rows.
 */
function claimStatement(dialect: Dialect, workerLabels: string, n: number, patch: BuildPatch) {
  const subset =
    dialect === 'postgres'
      ? sql`b.labels::jsonb <@ ${workerLabels}::jsonb`
      : sql`not exists (select 1 from json_each(b.labels) as l where l.value not in (select value from json_each(${workerLabels})))`;
  const pick = sql`
    select b.id from builds b
    where b.state = 'queued' and ${subset} and ${groupHasRoom}
    order by b.priority desc, b.created_at, b.id
    limit ${n}`;
  // PostgreSQL: the locked pick must run exactly once; as `IN (subquery)` the
  // planner may re-run it (a LIMIT 1 claimed 3 rows in a test), so it is a
  // MATERIALIZED CTE. Still one statement: no window between choosing and taking.
  return dialect === 'postgres'
    ? sql<BuildRow>`
        with picked as materialized (${pick} for update skip locked)
        update builds set ${setClause(patch)}
        from picked
        where builds.id = picked.id and builds.state = 'queued'
        returning builds.*`
    : sql<BuildRow>`
        update builds set ${setClause(patch)}
        where state = 'queued' and id in (${pick})
        returning *`;
}

/**
 * Claims up to `n` queued builds for worker `w` (ack deadline `now +
 * ackTimeoutMs`, epoch ms) and records each new attempt. The SET values are
 * `transition()`'s for queued → assigned, which do not depend on the row
 * (the attempt number is unchanged).
 */
async function claim(ctx: SqlContext, trx: Transaction<DB>, w: WorkerRow, n: number, now: number, ackTimeoutMs: number): Promise<HeldBuild[]> {
  const t = transition(
    { state: 'queued', attempt: 1, maxAttempts: 1, cancelRequested: false },
    { type: 'assign', workerId: w.id, ackDeadline: now + ackTimeoutMs },
    now,
  );
  const { rows } = await claimStatement(ctx.dialect, w.labels, n, t.build).execute(trx);
  if (rows.length === 0) return [];
  rows.sort((a, b) => b.priority - a.priority || a.created_at - b.created_at || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  await trx
    .insertInto('build_attempts')
    .values(
      rows.map((r) => ({
        build_id: r.id,
        attempt: r.attempt,
        worker_id: w.id,
        state: t.attemptRow!.state,
        assigned_at: t.attemptRow!.assigned_at ?? now,
        started_at: null,
        finished_at: null,
        reason: null,
        exit_code: null,
        log_bytes: 0,
      })),
    )
    .execute();
  return rows.map(toHeld);
}
