/**
 * Build states and their allowed transitions (PROTOCOL.md "Builds / States").
 *
 * queued → assigned → running → succeeded | failed | canceled | timed_out.
 * An assigned or running build that is lost returns to `queued` as a new
 * attempt while attempts remain, else ends `failed` (reason `worker_lost`).
 * Terminal states never change.
 */
export const BUILD_STATES = [
  'queued',
  'assigned',
  'running',
  'succeeded',
  'failed',
  'canceled',
  'timed_out',
] as const;

export type BuildState = (typeof BUILD_STATES)[number];

export const TERMINAL_STATES = ['succeeded', 'failed', 'canceled', 'timed_out'] as const;
export type TerminalState = (typeof TERMINAL_STATES)[number];

/** Outcomes a worker may report with `finish`. */
export type BuildOutcome = TerminalState;

export function isTerminal(state: BuildState): state is TerminalState {
  return (TERMINAL_STATES as readonly string[]).includes(state);
}

/** Every allowed `from → to` edge. Anything else is `INVALID_TRANSITION`. */
export const ALLOWED_TRANSITIONS: Readonly<Record<BuildState, readonly BuildState[]>> = {
  queued: ['assigned', 'canceled', 'failed'],
  assigned: ['running', 'queued', 'failed', 'canceled', 'timed_out'],
  running: ['succeeded', 'failed', 'canceled', 'timed_out', 'queued'],
  succeeded: [],
  failed: [],
  canceled: [],
  timed_out: [],
};

export function canTransition(from: BuildState, to: BuildState): boolean {
  return ALLOWED_TRANSITIONS[from].includes(to);
}

/** Why an attempt or a build ended other than by its script's own outcome. */
export const BUILD_REASONS = [
  'worker_lost',
  'ack_timeout',
  'lease_expired',
  'worker_deleted',
  'worker_restarted',
  'canceled',
  'timeout',
  'exit_code',
] as const;
export type BuildReason = (typeof BUILD_REASONS)[number];
