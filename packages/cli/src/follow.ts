/**
 * Following a build's log by offset polling (PROTOCOL.md `GET
 * /builds/{id}/logs?offset=N&attempt=K`): robust across proxies and
 * controller restarts, and exact, because the offset counts bytes.
 */
import { ApiError, isTerminal, paths, type Build, type Clock } from '@buildfleet/protocol';
import type { ApiClient } from './client.js';

export interface FollowOptions {
  clock: Clock;
  /** Re-check interval when nothing new arrived, ms (default 250). */
  intervalMs?: number;
  /** Follow this attempt only; default: the current one, switching when a new attempt starts. */
  attempt?: number;
  signal?: AbortSignal;
  /** Told when the followed attempt changes (a lost attempt went back to the queue). */
  onAttempt?: (attempt: number) => void;
  /** Told when the build's state changes (queued → assigned → running ...). */
  onState?: (build: Build) => void;
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

/**
 * Writes the build's log to `write` as it grows and resolves with the build
 * once it is terminal and its log is complete (a worker flushes its log before
 * it reports the outcome, so one read after the terminal state gets the rest).
 * Rejects with the signal's reason when aborted.
 */
export async function followBuild(client: ApiClient, id: string, write: (chunk: Buffer) => void, opts: FollowOptions): Promise<Build> {
  const interval = opts.intervalMs ?? 250;
  let build = await client.getBuild(id);
  let lastState = build.state;
  opts.onState?.(build);
  let attempt = opts.attempt ?? build.attempt;
  let offset = 0;
  for (;;) {
    const chunk = await fetchLog(client, id, attempt, offset, opts.signal);
    if (chunk.length > 0) {
      write(chunk);
      offset += chunk.length;
      continue;
    }
    build = await client.getBuild(id);
    if (build.state !== lastState) {
      lastState = build.state;
      opts.onState?.(build);
    }
    if (opts.attempt === undefined && build.attempt !== attempt) {
      // The old attempt may have written more between our last read and its end.
      const rest = await fetchLog(client, id, attempt, offset, opts.signal);
      if (rest.length > 0) write(rest);
      attempt = build.attempt;
      offset = 0;
      opts.onAttempt?.(attempt);
      continue;
    }
    if (isTerminal(build.state) || build.attempt > attempt) {
      const rest = await fetchLog(client, id, attempt, offset, opts.signal);
      if (rest.length > 0) write(rest);
      return build;
    }
    await opts.clock.sleep(interval, opts.signal);
  }
}

/** Polls until the build is terminal, without its log. */
export async function waitForBuild(client: ApiClient, id: string, opts: { clock: Clock; intervalMs?: number; signal?: AbortSignal }): Promise<Build> {
  for (;;) {
    const build = await client.getBuild(id);
    if (isTerminal(build.state)) return build;
    await opts.clock.sleep(opts.intervalMs ?? 250, opts.signal);
  }
}
