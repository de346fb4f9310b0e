/**
 * Waiting for a condition instead of sleeping a fixed time (DEVELOPERS.md
 * testing rules; design rule 13). Real time is used only as a deadline and
 * a short re-check interval, never as the thing a test relies on.
 */
import type { EventEmitter } from 'node:events';

export interface WaitOptions {
  /** Give up after this many ms (default 10000: generous, a loaded 2-core CI box is slow). */
  timeoutMs?: number;
  /** What is awaited, named in the timeout error. */
  what: string;
  /** Re-check interval in ms (default 10). */
  intervalMs?: number;
  /** Re-check at once whenever this emitter emits `event` (besides polling). */
  wakeOn?: { emitter: EventEmitter; event: string };
}

/**
 * Resolves as soon as `cond()` returns true. Throws
 * `Error('timed out after Nms waiting for <what>')` at the deadline; an error
 * thrown by `cond` is rethrown at once.
 */
export async function waitFor(cond: () => boolean | Promise<boolean>, opts: WaitOptions): Promise<void> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const intervalMs = opts.intervalMs ?? 10;
  const deadline = performance.now() + timeoutMs;
  let wake: (() => void) | undefined;
  // An event between a check and the start of the wait must not be lost.
  let dirty = false;
  const onEvent = () => {
    dirty = true;
    wake?.();
  };
  opts.wakeOn?.emitter.on(opts.wakeOn.event, onEvent);
  try {
    for (;;) {
      dirty = false;
      if (await cond()) return;
      if (dirty && performance.now() < deadline) continue;
      const left = deadline - performance.now();
      if (left <= 0) throw new Error(`timed out after ${timeoutMs}ms waiting for ${opts.what}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(intervalMs, left));
        wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      wake = undefined;
    }
  } finally {
    opts.wakeOn?.emitter.off(opts.wakeOn.event, onEvent);
  }
}

/**
 * Resolves with the arguments of the next `event` on `emitter`; rejects when
 * `error` is emitted first or after `timeoutMs` (default 10000) naming the event.
 */
export function once(emitter: EventEmitter, event: string, timeoutMs = 10_000): Promise<unknown[]> {
  return new Promise((resolve, reject) => {
    const onEvent = (...args: unknown[]) => {
      cleanup();
      resolve(args);
    };
    const onError = (err: unknown) => {
      cleanup();
      reject(err);
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`timed out after ${timeoutMs}ms waiting for event "${event}"`));
    }, timeoutMs);
    function cleanup() {
      clearTimeout(timer);
      emitter.off(event, onEvent);
      if (event !== 'error') emitter.off('error', onError);
    }
    emitter.on(event, onEvent);
    if (event !== 'error') emitter.on('error', onError);
  });
}
