/**
 * Server-sent events over fetch: EventSource cannot send an Authorization
 * header, and the token must not go in a URL, so the stream is read with
 * fetch and parsed by `eventsource-parser`.
 */
import { createParser } from 'eventsource-parser';
import { call } from './api.js';

export interface SseHandlers {
  /** One event: its type (`message` when unnamed) and parsed JSON data. */
  onEvent(type: string, data: unknown): void;
}

/**
 * Reads `path` as `text/event-stream` until the server ends it (resolves),
 * the signal aborts (resolves), or the call or stream fails (rejects; an
 * ApiFailure for a refused call).
 */
export async function readEvents(path: string, handlers: SseHandlers, signal: AbortSignal): Promise<void> {
  const res = await call(path, { accept: 'text/event-stream', signal });
  if (!res.body) return;
  const parser = createParser({
    onEvent(event) {
      let data: unknown = event.data;
      try {
        data = JSON.parse(event.data);
      } catch {
        // plain text data stays a string
      }
      handlers.onEvent(event.event ?? 'message', data);
    },
  });
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      parser.feed(value);
    }
  } catch (err) {
    if (signal.aborted) return;
    throw err;
  } finally {
    reader.releaseLock();
  }
}
