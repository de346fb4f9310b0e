/**
 * A build's lifecycle step (start, finish) as one conditional
 * `UPDATE … RETURNING` (issue 12): no `SELECT … FOR UPDATE` before it, no
 * re-read after it.
 *
 * No state rule lives here. The UPDATE's WHERE is derived from
 * `transition()` (domain/transition.ts): the from-states for which it
 * allows the event, changes the state, and gives the same SET values
 * whatever else it is told about the row (attempts left, cancel requested).
 * For those rows the locking path (`applyTransition` after `lockBuild`)
 * would write exactly these values, so writing them without reading first
 * is the same decision. Zero rows means the row is in no such state (an
 * idempotent replay, a lost race, another attempt, no such build): the
 * caller then takes the locking path, which decides and explains.
 */
import { BUILD_STATES, type Build, type BuildState } from '@buildfleet/protocol';
import type { Transaction } from 'kysely';
import { transition, type BuildEvent, type TransitionResult } from '../../domain/transition.js';
import type { DB } from '../schema.js';
import { rowToBuild } from './rows.js';
import { webhookEventOf } from './transitions.js';
import { recordBuildEvent } from './webhooks.js';

/** The states `event` moves the same way whatever the rest of the row, and the move. */
export interface Guard {
  states: BuildState[];
  t: TransitionResult;
}

/**
 * Asks `transition()` about every state, with every value of the inputs a
 * conditional UPDATE cannot see without reading (`maxAttempts`,
 * `cancelRequested`). Resolves undefined when no state qualifies or the
 * qualifying states would be written differently.
 */
function deriveGuard(event: BuildEvent, attempt: number, now: number): Guard | undefined {
  const states: BuildState[] = [];
  let first: TransitionResult | undefined;
  let key: string | undefined;
  for (const state of BUILD_STATES) {
    let same: string | undefined;
    let t: TransitionResult | undefined;
    for (const maxAttempts of [attempt, attempt + 1]) {
      for (const cancelRequested of [false, true]) {
        let r: TransitionResult;
        try {
          r = transition({ state, attempt, maxAttempts, cancelRequested }, event, now);
        } catch {
          same = '';
          break;
        }
        const k = JSON.stringify([r.to, r.build, r.attemptRow]);
        if (r.to === state || (same !== undefined && same !== k)) {
          same = '';
          break;
        }
        same = k;
        t = r;
      }
      if (same === '') break;
    }
    if (same === '' || same === undefined || !t) continue;
    if (key !== undefined && key !== same) return undefined;
    key = same;
    first ??= t;
    states.push(state);
  }
  return first ? { states, t: first } : undefined;
}

/**
 * Which branch `transition()` takes depends on the event's kind (and a
 * finish's outcome and limit reason), never on its times, exit code or
 * message: the derived from-states are remembered per kind, so a step asks
 * `transition()` once (its refusals build an error each, which showed in
 * the SQLite drain profile).
 */
const guardStates = new Map<string, BuildState[] | null>();

/** `deriveGuard`, with the from-states remembered per kind of event (see `guardStates`). */
export function guardFor(event: BuildEvent, attempt: number, now: number): Guard | undefined {
  const kind = event.type === 'finish' ? `finish:${event.outcome}:${event.limitReason ? 'limit' : ''}` : event.type;
  let states = guardStates.get(kind);
  if (states === undefined) {
    states = deriveGuard(event, attempt, now)?.states ?? null;
    guardStates.set(kind, states);
  }
  if (states === null) return undefined;
  const from = states[0]!;
  return { states, t: transition({ state: from, attempt, maxAttempts: attempt, cancelRequested: false }, event, now) };
}

/**
 * Applies `event` to attempt `attempt` of build `buildId` in one conditional
 * UPDATE of the build row and one of its attempt row, each returning the
 * row, plus the webhook outbox rows. Resolves the
 * build as the transaction leaves it, or undefined when the guard matched
 * no row (take the locking path then). Attempts other than `attempt` are
 * read only when there can be any (attempt > 1).
 */
export async function applyGuarded(trx: Transaction<DB>, buildId: string, attempt: number, event: BuildEvent, now: number): Promise<Build | undefined> {
  const g = guardFor(event, attempt, now);
  if (!g) return undefined;
  const row = await trx
    .updateTable('builds')
    .set(g.t.build)
    .where('id', '=', buildId)
    .where('attempt', '=', attempt)
    .where('state', 'in', g.states)
    .returningAll()
    .executeTakeFirst();
  if (!row) return undefined;
  const att = g.t.attemptRow
    ? await trx
        .updateTable('build_attempts')
        .set(g.t.attemptRow)
        .where('build_id', '=', buildId)
        .where('attempt', '=', attempt)
        .returningAll()
        .executeTakeFirst()
    : undefined;
  // The webhook event commits with the state change (transactional outbox), as in `applyTransition`.
  const type = webhookEventOf(g.t);
  if (type) await recordBuildEvent(trx, type, buildId, now);
  const attempts =
    attempt === 1 && att
      ? [att]
      : await trx.selectFrom('build_attempts').selectAll().where('build_id', '=', buildId).orderBy('attempt').execute();
  return rowToBuild(row, attempts);
}
