/**
 * Following a build: its log as it grows and its end, from the controller's
 * event stream (docs/protocol.md `GET /builds/{id}/logs` with `Accept:
 * text/event-stream`; events `log`, `attempt`, `state`, `end`, `error`). One
 * request for the whole build instead of a poll every 250 ms. A stream cut
 * off before `end` (a proxy, a controller restart) is opened again from the
 * byte offset reached; a few failed reopenings in a row end the follow.
 */
import { EventSourceParserStream } from 'eventsource-parser/stream';
import { ApiError, isTerminal, paths, type Build, type Clock, type LogStreamEvents } from '@buildfleet/protocol';
import type { ApiClient } from './client.js';
import { CliError } from './errors.js';

export interface FollowOptions {
  clock: Clock;
  /** Follow this attempt only; default: the current one, switching when a new attempt starts. */
  attempt?: number;
  signal?: AbortSignal;
  /** Told when the followed attempt changes (a lost attempt went back to the queue). */
  onAttempt?: (attempt: number) => void;
  /** Told when the build's state changes (queued → assigned → running ...). */
  onState?: (state: LogStreamEvents['state']) => void;
  /** Reopenings of a cut stream in a row before giving up (default 5), with a growing pause (ms, default 500 doubling). */
  reconnects?: number;
  reconnectBaseMs?: number;
}

/** Bytes of one attempt's log from `offset`; empty when there are none yet. */
export async function fetchLog(client: ApiClient, id: string, attempt: number | undefined, offset: number, signal?: AbortSignal): Promise<Buffer> {
  try {
    const res = await client.request(paths.logs(id), { query: { offset, attempt }, headers: { accept: 'text/plain' }, ...(signal ? { signal } : {}) });
    return Buffer.from(await res.arrayBuffer());
  } catch (err) {
    // An attempt that has not written anything may have no log at all yet.
    if (err instanceof ApiError && err.status === 404 && err.code !== 'BUILD_NOT_FOUND') return Buffer.alloc(0);
    throw err;
  }
}

interface Position {
  attempt: number | undefined;
  offset: number;
}

/**
 * Writes the build's log to `write` as it grows and resolves with the build
 * once it is terminal and its log is complete (the stream's `end` comes after
 * the last byte). Rejects with ApiError (BUILD_NOT_FOUND, an `error` event),
 * CliError when the stream keeps breaking, or the signal's reason.
 */
export async function followBuild(client: ApiClient, id: string, write: (chunk: Buffer) => void, opts: FollowOptions): Promise<Build> {
  const pos: Position = { attempt: opts.attempt, offset: 0 };
  const tries = opts.reconnects ?? 5;
  let failures = 0;
  for (;;) {
    let progressed = false;
    try {
      const ended = await streamOnce(client, id, pos, opts, (chunk) => {
        progressed = true;
        write(chunk);
      });
      if (ended) return await client.getBuild(id);
    } catch (err) {
      if (opts.signal?.aborted || err instanceof ApiError) throw err;
      if (++failures >= tries) throw new CliError(`following build ${id}: the log stream broke ${failures} times in a row (${(err as Error).message})`);
    }
    if (progressed) failures = 0;
    await opts.clock.sleep((opts.reconnectBaseMs ?? 500) * 2 ** Math.min(failures, 6), opts.signal);
    await catchUp(client, id, pos, write, opts);
  }
}

/** Resolves when the build is terminal, without printing its log (the same stream, log ignored). */
export function waitForBuild(client: ApiClient, id: string, opts: Omit<FollowOptions, 'onAttempt'>): Promise<Build> {
  return followBuild(client, id, () => {}, opts);
}

/**
 * Before reopening a stream that follows the current attempt: if the build
 * moved to a new attempt meanwhile, print the rest of the old one first.
 */
async function catchUp(client: ApiClient, id: string, pos: Position, write: (chunk: Buffer) => void, opts: FollowOptions): Promise<void> {
  if (opts.attempt !== undefined || pos.attempt === undefined) return;
  const build = await client.getBuild(id);
  if (build.attempt === pos.attempt && !isTerminal(build.state)) return;
  const rest = await fetchLog(client, id, pos.attempt, pos.offset, opts.signal);
  if (rest.length > 0) write(rest);
  pos.offset += rest.length;
  if (build.attempt !== pos.attempt) {
    pos.attempt = build.attempt;
    pos.offset = 0;
    opts.onAttempt?.(build.attempt);
  }
}

/** One event stream from `pos`; true when it ended with `end`, false when it was cut off. */
async function streamOnce(client: ApiClient, id: string, pos: Position, opts: FollowOptions, write: (chunk: Buffer) => void): Promise<boolean> {
  const res = await client.request(paths.logs(id), {
    query: { offset: pos.offset, attempt: opts.attempt },
    headers: { accept: 'text/event-stream' },
    ...(opts.signal ? { signal: opts.signal } : {}),
  });
  if (!res.body) return false;
  const events = res.body.pipeThrough(new TextDecoderStream()).pipeThrough(new EventSourceParserStream());
  for await (const ev of events as unknown as AsyncIterable<{ event?: string; data: string }>) {
    switch (ev.event) {
      case 'log': {
        const data = JSON.parse(ev.data) as LogStreamEvents['log'];
        const bytes = Buffer.from(data.text, 'utf8');
        pos.attempt = data.attempt;
        pos.offset = data.offset + bytes.length;
        if (bytes.length > 0) write(bytes);
        break;
      }
      case 'attempt':
        pos.attempt = (JSON.parse(ev.data) as LogStreamEvents['attempt']).attempt;
        pos.offset = 0;
        opts.onAttempt?.(pos.attempt);
        break;
      case 'state': {
        const data = JSON.parse(ev.data) as LogStreamEvents['state'];
        pos.attempt ??= data.attempt;
        opts.onState?.(data);
        break;
      }
      case 'end':
        return true;
      case 'error': {
        const data = JSON.parse(ev.data) as LogStreamEvents['error'];
        throw new ApiError(data.code, data.message);
      }
    }
  }
  return false;
}
