/**
 * Row shapes of the SQL store and their mapping to protocol objects. Times
 * are stored as epoch milliseconds and leave as ISO-8601 strings
 * (docs/protocol.md "Conventions"); JSON columns are TEXT.
 */
import { timingSafeEqual } from 'node:crypto';
import type { Selectable } from 'kysely';
import { ApiError, ISOLATION_LABEL, type Build, type BuildSpec, type BuildState } from '@buildfleet/protocol';
import type { TransitionInput } from '../../domain/transition.js';
import type { BuildAttemptsTable, BuildsTable, WorkersTable } from '../schema.js';
import type { HeldBuild } from '../types.js';

export type BuildRow = Selectable<BuildsTable>;
export type WorkerRow = Selectable<WorkersTable>;
export type AttemptRow = Selectable<BuildAttemptsTable>;

/** States in which a build belongs to a worker. */
export const HELD_STATES: readonly BuildState[] = ['assigned', 'running'];

/** Epoch ms → ISO-8601 UTC (null stays null). */
export function toIso(ms: number | null): string | null {
  return ms === null ? null : new Date(ms).toISOString();
}

/** Constant-time comparison of two hex digests (token hashes). */
export function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

export function parseJson<T>(text: string): T {
  return JSON.parse(text) as T;
}

export function uniq(ids: readonly string[]): string[] {
  return [...new Set(ids)];
}

/** `items` in slices of at most `size` (multi-row statements under the bound-parameter limits). */
export function chunks<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/**
 * A worker's labels as stored: the isolation label (`isolation:sandbox`,
 * which builds with `"isolation": "sandbox"` carry) only when the worker
 * reports the `sandbox` executor, never because its operator typed it, so a
 * build that requires isolation is never claimed by a `shell` worker.
 */
export function workerLabelsJson(labels: readonly string[], executor: string | null | undefined): string {
  const own = labels.filter((l) => l !== ISOLATION_LABEL);
  return labelsJson(executor === 'sandbox' ? [...own, ISOLATION_LABEL] : own);
}

/** A label set as stored: JSON of the sorted distinct labels (the claim compares these). */
export function labelsJson(labels: readonly string[]): string {
  return JSON.stringify(uniq(labels).sort());
}

/** Maps a build row and its attempt rows to the protocol `Build` (ISO strings, attempts in order). */
export function rowToBuild(row: BuildRow, attempts: AttemptRow[]): Build {
  const spec = parseJson<BuildSpec>(row.spec);
  return {
    id: row.id,
    state: row.state,
    attempt: row.attempt,
    workerId: row.worker_id,
    spec,
    cancelRequested: Number(row.cancel_requested) === 1,
    exitCode: row.exit_code,
    reason: row.reason,
    message: row.message,
    createdAt: toIso(row.created_at)!,
    assignedAt: toIso(row.assigned_at),
    startedAt: toIso(row.started_at),
    finishedAt: toIso(row.finished_at),
    ackDeadline: toIso(row.ack_deadline),
    leaseExpiresAt: toIso(row.lease_expires_at),
    sourceSize: Number(row.source_size),
    sourceSha256: row.source_sha256,
    keep: Number(row.keep) === 1,
    sourceExpiredAt: toIso(row.source_deleted_at),
    logsExpiredAt: toIso(row.logs_deleted_at),
    artifactsExpiredAt: toIso(row.artifacts_deleted_at),
    attempts: attempts
      .slice()
      .sort((a, b) => a.attempt - b.attempt)
      .map((a) => ({
        attempt: a.attempt,
        workerId: a.worker_id,
        state: a.state,
        assignedAt: toIso(a.assigned_at),
        startedAt: toIso(a.started_at),
        finishedAt: toIso(a.finished_at),
        reason: a.reason,
        exitCode: a.exit_code,
        logBytes: Number(a.log_bytes),
        logTruncated: Number(a.log_truncated) === 1,
      })),
  };
}

/** A build row as the worker-facing `HeldBuild` (the HTTP layer adds the build token). */
export function toHeld(row: BuildRow): HeldBuild {
  return {
    id: row.id,
    attempt: row.attempt,
    state: row.state,
    spec: parseJson<BuildSpec>(row.spec),
    ackDeadline: row.ack_deadline,
  };
}

/** What `transition()` reads from a build row. */
export function transitionInput(row: BuildRow): TransitionInput {
  return {
    state: row.state,
    attempt: row.attempt,
    maxAttempts: row.max_attempts,
    cancelRequested: Number(row.cancel_requested) === 1,
  };
}

export function buildNotFound(id: string): ApiError {
  return new ApiError('BUILD_NOT_FOUND', `build ${id} not found`);
}

export function workerNotFound(id: string): ApiError {
  return new ApiError('WORKER_NOT_FOUND', `worker ${id} not found`);
}
