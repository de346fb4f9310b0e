/**
 * Worker loops: each `WireWorker` long-polls, runs what it gets (start, one
 * log chunk, finish) and polls again, until `state.stopped`.
 */
import type { Assigned, WireWorker } from './wire.js';
import { nowMs } from './stats.js';

export interface LoopState {
  stopped: boolean;
  /** Polls in flight right now (parked or on their way). */
  polling: number;
  /** First unexpected error, if any (a loop that fails stops). */
  error?: unknown;
}

export interface LoopHooks {
  /** A poll answered with this build (`at`: `nowMs()` when the answer arrived). */
  onBuild?: (b: Assigned, at: number) => void;
  /** The build's finish was acknowledged (not called for an attempt lost on the way). */
  onFinished?: (b: Assigned, at: number) => void;
}

/** Runs one worker's loop; resolves when stopped (errors after `stopped` are the controller closing). */
export async function workLoop(w: WireWorker, waitMs: number, state: LoopState, hooks: LoopHooks = {}): Promise<void> {
  try {
    while (!state.stopped) {
      state.polling++;
      let builds: Assigned[];
      try {
        builds = await w.poll(waitMs);
      } finally {
        state.polling--;
      }
      const at = nowMs();
      for (const b of builds) {
        hooks.onBuild?.(b, at);
        if (await w.run(b)) hooks.onFinished?.(b, nowMs());
      }
    }
  } catch (err) {
    if (!state.stopped) {
      state.error ??= err;
      throw err;
    }
  }
}

/**
 * Starts every worker's loop (with `paused`, only when `start()` is called);
 * `stop()` drops their requests (parked polls end on the controller too) and
 * waits for them.
 */
export function startLoops(workers: WireWorker[], waitMs: number, hooks: LoopHooks = {}, opts: { paused?: boolean } = {}) {
  const state: LoopState = { stopped: false, polling: 0 };
  let loops: Promise<void>[] = [];
  const start = () => {
    loops = workers.map((w) => workLoop(w, waitMs, state, hooks));
    for (const l of loops) l.catch(() => {});
  };
  if (!opts.paused) start();
  return {
    state,
    start,
    /** Resolves once every worker has a poll in flight. */
    async allPolling(): Promise<void> {
      while (state.polling < workers.length) {
        if (state.error) throw state.error;
        await new Promise((r) => setTimeout(r, 2));
      }
    },
    async stop(): Promise<void> {
      state.stopped = true;
      for (const w of workers) w.gone.abort();
      await Promise.allSettled(loops);
    },
  };
}
