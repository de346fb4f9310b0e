/**
 * The live log stream: `GET /builds/{id}/logs` with `Accept:
 * text/event-stream` (or `follow=1`). Each event's `data` is one JSON object;
 * docs/protocol.md ("Live log stream") describes when each is sent.
 */
import type { BuildState } from './states.js';
import type { ErrorCode } from './errors.js';

/** Data of each event of the log stream, by event name. */
export interface LogStreamEvents {
  /** New text; `offset` is the attempt's byte count before it (bytes, not characters). */
  log: { attempt: number; offset: number; text: string };
  /** The build moved to a new attempt; offsets start again at 0. */
  attempt: { attempt: number };
  /** The build's state changed. */
  state: { state: BuildState; attempt: number; cancelRequested: boolean };
  /** Last event: the build ended and every byte was sent. */
  end: { state: BuildState; attempt: number; exitCode: number | null; reason: string | null };
  /** The controller could not go on with the stream. */
  error: { code: ErrorCode; message: string };
}

export type LogStreamEventName = keyof LogStreamEvents;

/** Every event name of the log stream. */
export const LOG_STREAM_EVENTS: readonly LogStreamEventName[] = ['log', 'attempt', 'state', 'end', 'error'];

/** Seconds of silence after which a stream sends a `: keepalive` comment. */
export const LOG_STREAM_KEEPALIVE_SECONDS = 15;
