/**
 * Wake-ups for parked long polls and followed log streams. A wake-up is only
 * a hint to look again (docs/design.md "Wake-ups are hints"): the database is the
 * truth, and waiters re-check it themselves.
 *
 * A wake-up is either for everyone (a build was queued) or for one key (a
 * worker id: its token rotated, it was drained or deleted; a build id: its
 * log grew), so a hint about one worker or build costs one re-check, not one
 * per parked waiter.
 *
 * Waiters take a `snapshot(key)` *before* their database check and pass it to
 * `waitForChange`, so a wake-up that lands between the check and the wait is
 * never lost.
 */
import type { Clock, TimerHandle } from '@buildfleet/protocol';

/** Why `waitForChange` returned. */
export type WakeReason = 'woken' | 'timeout' | 'aborted' | 'closed';

/** Generations seen before a database check (see `snapshot`). */
export interface WakeSnapshot {
  readonly all: number;
  readonly key: string | undefined;
  readonly keyed: number;
}

interface Waiter {
  key: string | undefined;
  wake: () => void;
}

export class WakeChannel {
  private gen = 0;
  private readonly keyGen = new Map<string, number>();
  private readonly waiters = new Set<Waiter>();
  private closed = false;
  private holders = 0;
  private readonly keyHolders = new Map<string, number>();

  constructor(private readonly clock: Clock) {}

  /** Generations to pass to `waitForChange` after checking the database (take it after `retain`). */
  snapshot(key?: string): WakeSnapshot {
    return { all: this.gen, key, keyed: key === undefined ? 0 : (this.keyGen.get(key) ?? 0) };
  }

  /**
   * Marks a waiter that is checking the database or parked, so gates do not
   * skip it and keyed wake-ups for `key` are remembered until it waits. Take
   * the snapshot after this; call the returned function when done.
   */
  retain(key?: string): () => void {
    this.holders++;
    if (key !== undefined) this.keyHolders.set(key, (this.keyHolders.get(key) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.holders--;
      if (key === undefined) return;
      const left = (this.keyHolders.get(key) ?? 1) - 1;
      if (left > 0) this.keyHolders.set(key, left);
      else {
        this.keyHolders.delete(key);
        this.keyGen.delete(key);
      }
    };
  }

  /** Waiters retained (checking or parked). */
  get interested(): number {
    return this.holders;
  }

  /** Number of parked waiters (metrics, tests). */
  get size(): number {
    return this.waiters.size;
  }

  /** Keys of parked waiters, oldest first, each once. */
  parkedKeys(): string[] {
    const keys = new Set<string>();
    for (const w of this.waiters) if (w.key !== undefined) keys.add(w.key);
    return [...keys];
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Wakes every waiter, or (with `key`) only those waiting on that key. */
  wake(key?: string): void {
    if (key === undefined) {
      this.gen++;
      for (const w of [...this.waiters]) w.wake();
      return;
    }
    // Remembered only while a waiter for this key is retained, so the map
    // stays as small as the number of waiters.
    if (this.keyHolders.has(key)) this.keyGen.set(key, (this.keyGen.get(key) ?? 0) + 1);
    for (const w of [...this.waiters]) if (w.key === key) w.wake();
  }

  /** Ends every wait now and every later one at once ('closed'). */
  close(): void {
    this.closed = true;
    this.wake();
  }

  /**
   * Resolves when a wake-up for everyone or for the snapshot's key happened
   * after the snapshot ('woken', at once if one already did), after
   * `timeoutMs` on the clock, when `signal` aborts, or when the channel closes.
   */
  waitForChange(since: WakeSnapshot, timeoutMs: number, signal?: AbortSignal): Promise<WakeReason> {
    if (this.closed) return Promise.resolve('closed');
    if (this.gen !== since.all) return Promise.resolve('woken');
    if (since.key !== undefined && (this.keyGen.get(since.key) ?? 0) !== since.keyed) return Promise.resolve('woken');
    if (signal?.aborted) return Promise.resolve('aborted');
    if (timeoutMs <= 0) return Promise.resolve('timeout');
    return new Promise<WakeReason>((resolve) => {
      let timer: TimerHandle | undefined;
      const waiter: Waiter = { key: since.key, wake: () => done(this.closed ? 'closed' : 'woken') };
      const done = (reason: WakeReason) => {
        this.waiters.delete(waiter);
        this.clock.clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        resolve(reason);
      };
      const onAbort = () => done('aborted');
      this.waiters.add(waiter);
      timer = this.clock.setTimeout(() => done('timeout'), timeoutMs);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }
}
