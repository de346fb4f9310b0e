/**
 * Stop signals of a worker run from the command line (SIGINT = Ctrl-C,
 * SIGTERM): the first drains, the next cancels running builds.
 *
 * One Ctrl-C can arrive more than once: the terminal sends SIGINT to its
 * whole foreground process group, and a parent in that group that forwards
 * signals to its child (npm for `npm start`, tsx) sends it again a moment
 * later. Node cannot tell who sent a signal, so signals that arrive within
 * `DUPLICATE_WINDOW_MS` of the one that counted are the same press; a person
 * who means a second Ctrl-C presses it after reading the "draining" line.
 */
import { systemClock, type Clock } from '@buildfleet/protocol';
import type { RunningWorker } from './agent.js';
import { defaultLogger, type Logger } from './logger.js';

/** Signals closer than this (ms) to the last one that counted are one press forwarded twice. */
export const DUPLICATE_WINDOW_MS = 300;

/**
 * Calls `onSignal(n, signal)` for the n-th distinct SIGINT/SIGTERM (from 1),
 * ignoring duplicates within `DUPLICATE_WINDOW_MS`. Returns a remover.
 */
export function onStopSignals(onSignal: (n: number, signal: NodeJS.Signals) => void, clock: Clock = systemClock): () => void {
  let n = 0;
  let last = -Infinity;
  const handler = (signal: NodeJS.Signals) => {
    const now = clock.monotonic();
    if (now - last < DUPLICATE_WINDOW_MS) return;
    last = now;
    onSignal(++n, signal);
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
  return () => {
    process.off('SIGINT', handler);
    process.off('SIGTERM', handler);
  };
}

/**
 * The first stop signal drains `worker` (running builds finish), the next
 * cancels them. Returns a function that removes the handlers.
 */
export function installSignalHandlers(worker: RunningWorker, logger: Logger = defaultLogger(), clock: Clock = systemClock): () => void {
  return onStopSignals((n, signal) => {
    logger.info({ signal }, n === 1 ? 'draining: running builds finish, no new ones' : 'stopping: canceling running builds');
    void worker.stop({ drain: n === 1 }).catch(() => undefined);
  }, clock);
}
