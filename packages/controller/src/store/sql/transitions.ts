/**
 * Applying a build state change to the database: the SET values come from
 * `transition()` (domain/transition.ts, the one function that decides how a
 * build's state changes); the UPDATE is conditional on the state and attempt
 * the caller read, so a lost race is a zero-row update the caller sees.
 */
import type { Transaction } from 'kysely';
import { transition, type BuildEvent, type TransitionResult } from '../../domain/transition.js';
import type { DB } from '../schema.js';
import { transitionInput, type BuildRow } from './rows.js';
import { isTerminal, type WebhookEventType } from '@buildfleet/protocol';
import { recordBuildEvent } from './webhooks.js';

/**
 * Applies `event` (at `now`, epoch ms) to a build row read in this
 * transaction: the build row (`WHERE state = from AND attempt = attempt`)
 * and the row of the attempt it acted on. Resolves null when zero rows
 * matched (someone else changed the build). Throws INVALID_TRANSITION when
 * the event is not allowed from the row's state.
 */
export async function applyTransition(trx: Transaction<DB>, row: BuildRow, event: BuildEvent, now: number): Promise<TransitionResult | null> {
  const t = transition(transitionInput(row), event, now);
  const res = await trx
    .updateTable('builds')
    .set(t.build)
    .where('id', '=', row.id)
    .where('state', '=', row.state)
    .where('attempt', '=', row.attempt)
    .executeTakeFirst();
  if (Number(res.numUpdatedRows) === 0) return null;
  if (t.attemptRow) {
    await trx
      .updateTable('build_attempts')
      .set(t.attemptRow)
      .where('build_id', '=', row.id)
      .where('attempt', '=', row.attempt)
      .execute();
  }
  // The webhook event commits (or rolls back) with the state change: a transactional outbox.
  const type = webhookEventOf(t);
  if (type) await recordBuildEvent(trx, type, row.id, now);
  return t;
}

/** The webhook event a state change reports, if any (issue 14: started and finished builds). */
export function webhookEventOf(t: TransitionResult): WebhookEventType | undefined {
  return isTerminal(t.to) ? 'build.finished' : t.to === 'running' && t.from !== 'running' ? 'build.started' : undefined;
}
