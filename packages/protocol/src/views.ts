/**
 * What the dashboard reads besides the core resources: the live event
 * stream and the queue statistics. Timestamps are ISO-8601 UTC strings,
 * durations milliseconds.
 */
import { Type, type Static } from 'typebox';
import { BuildSchema, WorkerSchema } from './schemas.js';

/**
 * `GET /events` (API token, `text/event-stream`): one stream of changes for
 * the whole controller cluster. Each event's `data` is JSON:
 *
 * - `hello` `{now}` first, and again after the stream resumed: the client
 *   re-reads what it shows, since changes in between were not sent;
 * - `build` `{build}` when a build's state, attempt, worker or cancel flag
 *   changed (at most a few a second per build; log lines are not events);
 * - `worker` `{worker}` when a worker registered, changed state or was seen
 *   again after being offline;
 * - `worker-deleted` `{id}`.
 *
 * Events are hints with the current object, not a journal: a client that
 * missed some re-reads. Idle streams get a `: keepalive` comment.
 */
export const EVENT_TYPES = ['hello', 'build', 'worker', 'worker-deleted'] as const;
export type EventType = (typeof EVENT_TYPES)[number];

export const HelloEventSchema = Type.Object({ now: Type.String() });
export const BuildEventSchema = Type.Object({ build: BuildSchema });
export const WorkerEventSchema = Type.Object({ worker: WorkerSchema });
export const WorkerDeletedEventSchema = Type.Object({ id: Type.String() });

/** The `data` of each event type. */
export interface EventData {
  hello: Static<typeof HelloEventSchema>;
  build: Static<typeof BuildEventSchema>;
  worker: Static<typeof WorkerEventSchema>;
  'worker-deleted': Static<typeof WorkerDeletedEventSchema>;
}

/** Queued builds that share one label set. */
export const QueueGroupSchema = Type.Object({
  labels: Type.Array(Type.String()),
  count: Type.Integer(),
  oldestCreatedAt: Type.String({ description: 'ISO-8601 UTC: the longest-waiting build of the group was submitted then' }),
});
export type QueueGroup = Static<typeof QueueGroupSchema>;

/** One minute of history, `[at, at + 60 s)`. */
export const MinuteStatSchema = Type.Object({
  at: Type.String({ description: 'ISO-8601 UTC start of the minute' }),
  finished: Type.Integer({ description: 'builds that reached a terminal state' }),
  failed: Type.Integer({ description: 'of those, failed or timed out' }),
  assigned: Type.Integer({ description: 'builds handed to a worker for the first time' }),
  queueWaitAvgMs: Type.Union([Type.Integer(), Type.Null()], { description: 'mean submit-to-first-assignment time of those, ms' }),
  queueWaitMaxMs: Type.Union([Type.Integer(), Type.Null()]),
});
export type MinuteStat = Static<typeof MinuteStatSchema>;

/** `GET /stats?minutes=N` (API token; N from 1 to 1440, default 60). */
export const StatsQuerySchema = Type.Object({
  minutes: Type.Optional(Type.Integer({ minimum: 1, maximum: 1440 })),
});
export const StatsSchema = Type.Object({
  now: Type.String(),
  queue: Type.Array(QueueGroupSchema),
  minutes: Type.Array(MinuteStatSchema, { description: 'oldest first, one per minute, the current minute last' }),
});
export type Stats = Static<typeof StatsSchema>;
