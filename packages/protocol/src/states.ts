/**
 * Build states and their allowed transitions (docs/protocol.md "States").
 *
 * queued → assigned → running → succeeded | failed | canceled | timed_out.
 * An assigned or running build that is lost returns to `queued` as a new
 * attempt while attempts remain, else ends `failed` (reason `worker_lost`).
 * Terminal states never change.
 */
export const BUILD_STATES = [
  /** Waiting for a worker whose labels include all of the build's labels. */
  'queued',
  /** Handed to a worker by a poll; it must `start` before `ackDeadline` or the attempt is lost. */
  'assigned',
  /** Started by its worker, whose heartbeats keep the lease (`leaseExpiresAt`) alive. */
  'running',
  /** Terminal: the script exited 0. */
  'succeeded',
  /** Terminal: the script exited non-zero, could not run, or the build was lost with no attempts left (`worker_lost`). */
  'failed',
  /** Terminal: a user canceled it; never requeued. */
  'canceled',
  /** Terminal: it ran longer than `spec.timeoutSeconds`. */
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
  /** The build was lost and no attempts remain (it ends `failed`). */
  'worker_lost',
  /** An attempt was assigned but not started before its `ackDeadline`. */
  'ack_timeout',
  /** A running attempt's lease ran out without a heartbeat. */
  'lease_expired',
  /** An admin deleted the worker that held the attempt. */
  'worker_deleted',
  /** The worker restarted (new `bootId`) without reporting the running attempt. */
  'worker_restarted',
  /** A user canceled the build. */
  'canceled',
  /** The build ran past `spec.timeoutSeconds`. */
  'timeout',
  /** The script's own exit code decided the outcome. */
  'exit_code',
  /** The spec asks for a secret that does not exist or whose scope leaves this build out; it failed before its script ran. */
  'secret_unavailable',
  /** The build exceeded a resource limit (issue 8, limits.ts `LIMIT_REASONS`); the worker reported it `failed` so. */
  'limit_cpu',
  'limit_memory',
  'limit_processes',
  'limit_file_size',
  'limit_disk',
] as const;
export type BuildReason = (typeof BUILD_REASONS)[number];
