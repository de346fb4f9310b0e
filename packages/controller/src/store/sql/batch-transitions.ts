/**
 * Batch state changes: the reaper, a worker deletion and a worker restart
 * change many builds at once, in a number of statements bounded by the kinds
 * of change, not by the number of builds (design rule 16,
 * graphile-worker's `failJobs.ts` updating many jobs in one statement).
 *
 * The rule stays in one place: `transition()` (domain/transition.ts) is
 * asked for every row, and rows whose change is the same (same `from`, same
 * SET values, the same attempt increment) share one
 * `UPDATE … WHERE state = <from> AND (id, attempt) IN (VALUES …) RETURNING id`.
 * The condition is the single-row one of `transitions.ts`: a row someone else
 * changed meanwhile is simply not returned (a lost race, never an
 * overwrite). Then one UPDATE per kind of attempt-row change, and the webhook
 * outbox rows of the whole batch in the same transaction (`recordBuildEvents`).
 *
 * No dialect differences: row values compared with a VALUES list work on
 * SQLite (≥ 3.15) and PostgreSQL alike; the attempt is cast so PostgreSQL
 * types the untyped parameter as an integer.
 */
import { sql, type RawBuilder, type Transaction } from 'kysely';
import { transition, type BuildEvent, type TransitionResult } from '../../domain/transition.js';
import type { DB } from '../schema.js';
import { chunks, transitionInput, type BuildRow } from './rows.js';
import { webhookEventOf } from './transitions.js';
import { recordBuildEvents, type BuildEventRef } from './webhooks.js';

/** A change `applyTransitions` made: the row as read and what `transition()` decided for it. */
export interface AppliedTransition {
  row: BuildRow;
  t: TransitionResult;
}

/** Rows per statement: two bound parameters a row, far below SQLite's 32,766. */
const ROWS_PER_STATEMENT = 5_000;

interface Planned extends AppliedTransition {
  /** Position in the caller's list (results keep the caller's order). */
  index: number;
}

/** Groups `items` by `key`, keeping first-seen order. */
function groupBy<T>(items: readonly T[], key: (item: T) => string): T[][] {
  const groups = new Map<string, T[]>();
  for (const item of items) {
    const k = key(item);
    const g = groups.get(k);
    if (g) g.push(item);
    else groups.set(k, [item]);
  }
  return [...groups.values()];
}

/** `(<idColumn>, attempt) IN (VALUES (id, attempt), …)` for `rows`. */
function idAttemptIn(idColumn: 'id' | 'build_id', rows: readonly BuildRow[]): RawBuilder<boolean> {
  const values = sql.join(rows.map((r) => sql`(${r.id}, cast(${r.attempt} as integer))`));
  return sql<boolean>`(${sql.ref(idColumn)}, attempt) in (values ${values})`;
}

/**
 * The attempt increment of a change (`attempt` is the one SET value that
 * depends on the row: `lose` requeues as `attempt + 1`), or null when the
 * change leaves the attempt alone.
 */
function attemptStep(p: AppliedTransition): number | null {
  return p.t.build.attempt === undefined ? null : p.t.build.attempt - p.row.attempt;
}

/**
 * Applies to each of `rows` (read in this transaction) the event
 * `eventOf(row)` at `now` (epoch ms), set-based: see the module comment.
 * Resolves the changes made, in the order of `rows`; a row whose UPDATE
 * matched nothing (someone else changed it) is left out. Throws
 * INVALID_TRANSITION (before any write) when an event is not allowed from
 * its row's state.
 */
export async function applyTransitions(
  trx: Transaction<DB>,
  rows: readonly BuildRow[],
  eventOf: (row: BuildRow) => BuildEvent,
  now: number,
): Promise<AppliedTransition[]> {
  const planned: Planned[] = rows.map((row, index) => ({ row, index, t: transition(transitionInput(row), eventOf(row), now) }));
  const applied: Planned[] = [];
  const sameChange = (p: Planned) => JSON.stringify([p.t.from, { ...p.t.build, attempt: attemptStep(p) }]);
  for (const group of groupBy(planned, sameChange)) {
    const { attempt: _absolute, ...set } = group[0]!.t.build;
    const step = attemptStep(group[0]!);
    for (const part of chunks(group, ROWS_PER_STATEMENT)) {
      const updated = await trx
        .updateTable('builds')
        .set(step === null ? set : { ...set, attempt: sql<number>`attempt + ${step}` })
        .where('state', '=', group[0]!.t.from)
        .where(idAttemptIn('id', part.map((p) => p.row)))
        .returning('id')
        .execute();
      const ids = new Set(updated.map((u) => u.id));
      applied.push(...part.filter((p) => ids.has(p.row.id)));
    }
  }
  const withAttemptRow = applied.filter((p) => p.t.attemptRow !== null);
  for (const group of groupBy(withAttemptRow, (p) => JSON.stringify(p.t.attemptRow))) {
    for (const part of chunks(group, ROWS_PER_STATEMENT)) {
      await trx
        .updateTable('build_attempts')
        .set(group[0]!.t.attemptRow!)
        .where(idAttemptIn('build_id', part.map((p) => p.row)))
        .execute();
    }
  }
  applied.sort((a, b) => a.index - b.index);
  // The webhook events commit (or roll back) with the state changes: a transactional outbox.
  const events: BuildEventRef[] = [];
  for (const p of applied) {
    const type = webhookEventOf(p.t);
    if (type) events.push({ type, buildId: p.row.id });
  }
  await recordBuildEvents(trx, events, now);
  return applied.map(({ row, t }) => ({ row, t }));
}
