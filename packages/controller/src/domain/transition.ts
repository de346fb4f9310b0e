/**
 * The one place that decides how a build's state changes (design rule 2,
 * docs/protocol.md "States"). The store takes every SET value of every
 * state change from `transition()` and makes the UPDATE conditional on the
 * state and attempt it read (`WHERE id = ? AND state = <from> AND attempt = ?`),
 * so a lost race is a visible zero-row update, never a silent overwrite.
 *
 * Pure: no clock, no I/O. Times are epoch milliseconds passed in.
 */
import { ApiError, canTransition, isTerminal, type BuildOutcome, type BuildReason, type BuildState, type LimitReason } from '@buildfleet/protocol';

/** What `transition()` needs to know about a build. */
export interface TransitionInput {
  state: BuildState;
  /** Current attempt, from 1. */
  attempt: number;
  maxAttempts: number;
  cancelRequested: boolean;
}

/** Why an attempt was lost (the attempt row's `reason`). */
export type LostReason = Extract<BuildReason, 'ack_timeout' | 'lease_expired' | 'worker_deleted' | 'worker_restarted' | 'worker_lost'>;

/** Events that move a build. */
export type BuildEvent =
  /** A worker claimed the queued build (attempt unchanged). */
  | { type: 'assign'; workerId: string; ackDeadline: number }
  /** The worker started the assigned attempt. */
  | { type: 'start'; leaseExpiresAt: number }
  /** The worker reported the attempt's outcome. */
  | { type: 'finish'; outcome: BuildOutcome; exitCode: number | null; message: string | null; limitReason?: LimitReason | undefined }
  /** The attempt was lost (ack deadline, lease, worker deleted or restarted). */
  | { type: 'lose'; reason: LostReason }
  /** A user asked to cancel. */
  | { type: 'cancel' }
  /** The build ran past its `timeoutSeconds`. */
  | { type: 'timeout' }
  /** The build cannot run as asked (a secret it may not have): it fails before its script runs. */
  | { type: 'reject'; reason: RejectReason; message: string };

/** Why a build was rejected before its script ran. */
export type RejectReason = Extract<BuildReason, 'secret_unavailable'>;

/** Columns of `builds` a transition sets (snake_case, as stored). */
export interface BuildPatch {
  state: BuildState;
  attempt?: number;
  worker_id?: string | null;
  assigned_at?: number | null;
  started_at?: number | null;
  finished_at?: number | null;
  ack_deadline?: number | null;
  lease_expires_at?: number | null;
  cancel_requested?: number;
  exit_code?: number | null;
  reason?: string | null;
  message?: string | null;
}

/** Columns of the `build_attempts` row of the attempt the event acted on. */
export interface AttemptPatch {
  state: BuildState;
  worker_id?: string | null;
  assigned_at?: number | null;
  started_at?: number | null;
  finished_at?: number | null;
  reason?: string | null;
  exit_code?: number | null;
}

export interface TransitionResult {
  from: BuildState;
  to: BuildState;
  /** SET values for the build row (apply with `WHERE state = from AND attempt = input.attempt`). */
  build: BuildPatch;
  /**
   * SET values for the attempt row `input.attempt`; for `assign` the values of
   * the row to insert. Null when no attempt row exists (a queued build).
   */
  attemptRow: AttemptPatch | null;
}

function invalid(from: BuildState, what: string): never {
  throw new ApiError('INVALID_TRANSITION', `build is ${from}: cannot ${what}`);
}

function check(from: BuildState, to: BuildState, what: string): void {
  if (!canTransition(from, to)) invalid(from, what);
}

/** The build's `reason` for an outcome the worker reported. */
export function outcomeReason(outcome: BuildOutcome): string | null {
  switch (outcome) {
    case 'succeeded':
      return null;
    case 'failed':
      return 'exit_code';
    case 'canceled':
      return 'canceled';
    case 'timed_out':
      return 'timeout';
  }
}

/**
 * Computes the target state and column patch of `event` on a build in
 * `current` at time `now` (epoch ms). Throws `ApiError('INVALID_TRANSITION')`
 * for anything `canTransition` forbids, for `lose` outside assigned/running,
 * and for every event on a terminal build. A cancel on a running build is not
 * a state change: it only sets `cancel_requested` (the worker reports later).
 */
export function transition(current: TransitionInput, event: BuildEvent, now: number): TransitionResult {
  const from = current.state;
  if (isTerminal(from)) invalid(from, event.type);
  switch (event.type) {
    case 'assign': {
      check(from, 'assigned', 'assign');
      if (from !== 'queued') invalid(from, 'assign');
      return {
        from,
        to: 'assigned',
        build: {
          state: 'assigned',
          worker_id: event.workerId,
          assigned_at: now,
          started_at: null,
          ack_deadline: event.ackDeadline,
          lease_expires_at: null,
        },
        attemptRow: { state: 'assigned', worker_id: event.workerId, assigned_at: now },
      };
    }
    case 'start': {
      check(from, 'running', 'start');
      return {
        from,
        to: 'running',
        build: { state: 'running', started_at: now, ack_deadline: null, lease_expires_at: event.leaseExpiresAt },
        attemptRow: { state: 'running', started_at: now },
      };
    }
    case 'finish': {
      const to = event.outcome;
      check(from, to, `finish as ${to}`);
      // A limit names why a build failed (issue 8); any other outcome keeps its own reason.
      const reason = to === 'failed' && event.limitReason ? event.limitReason : outcomeReason(to);
      return {
        from,
        to,
        build: {
          state: to,
          exit_code: event.exitCode,
          message: event.message,
          reason,
          finished_at: now,
          ack_deadline: null,
          lease_expires_at: null,
        },
        attemptRow: { state: to, finished_at: now, reason, exit_code: event.exitCode },
      };
    }
    case 'lose': {
      if (from !== 'assigned' && from !== 'running') invalid(from, 'lose');
      const attemptRow: AttemptPatch = { state: 'failed', finished_at: now, reason: event.reason };
      if (current.cancelRequested) {
        // A canceled build is never requeued (docs/protocol.md "States").
        check(from, 'canceled', 'cancel');
        return {
          from,
          to: 'canceled',
          build: { state: 'canceled', reason: 'canceled', finished_at: now, ack_deadline: null, lease_expires_at: null },
          attemptRow: { ...attemptRow, state: 'canceled' },
        };
      }
      if (current.attempt < current.maxAttempts) {
        check(from, 'queued', 'requeue');
        return {
          from,
          to: 'queued',
          build: {
            state: 'queued',
            attempt: current.attempt + 1,
            worker_id: null,
            assigned_at: null,
            started_at: null,
            ack_deadline: null,
            lease_expires_at: null,
            reason: null,
          },
          attemptRow,
        };
      }
      check(from, 'failed', 'fail');
      return {
        from,
        to: 'failed',
        build: { state: 'failed', reason: 'worker_lost', finished_at: now, ack_deadline: null, lease_expires_at: null },
        attemptRow,
      };
    }
    case 'cancel': {
      if (from === 'running') {
        return { from, to: 'running', build: { state: 'running', cancel_requested: 1 }, attemptRow: null };
      }
      check(from, 'canceled', 'cancel');
      return {
        from,
        to: 'canceled',
        build: {
          state: 'canceled',
          cancel_requested: 1,
          reason: 'canceled',
          finished_at: now,
          ack_deadline: null,
          lease_expires_at: null,
        },
        attemptRow: from === 'queued' ? null : { state: 'canceled', finished_at: now, reason: 'canceled' },
      };
    }
    case 'reject': {
      check(from, 'failed', 'reject');
      return {
        from,
        to: 'failed',
        build: { state: 'failed', reason: event.reason, message: event.message, finished_at: now, ack_deadline: null, lease_expires_at: null },
        attemptRow: from === 'queued' ? null : { state: 'failed', finished_at: now, reason: event.reason },
      };
    }
    case 'timeout': {
      check(from, 'timed_out', 'time out');
      return {
        from,
        to: 'timed_out',
        build: { state: 'timed_out', reason: 'timeout', finished_at: now, ack_deadline: null, lease_expires_at: null },
        attemptRow: { state: 'timed_out', finished_at: now, reason: 'timeout' },
      };
    }
  }
}
