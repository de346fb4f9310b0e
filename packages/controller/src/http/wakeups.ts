/**
 * Wake-ups for parked long polls and followed log streams. A wake-up is only
 * a hint to look again (STYLE.md "Wake-ups are hints"): the database is the
 * truth, and waiters re-check it themselves.
 *
 * Waiters compare a generation counter read *before* their database check,
 * so a wake-up that lands between the check and the wait is never lost.
 */
import type { Clock, TimerHandle } from '@buildfleet/protocol';

/** Why `waitForChange` returned. */
export type WakeReason = 'woken' | 'timeout' | 'aborted' | 'closed';

export class WakeChannel {
  private gen = 0;
  private waiters = new Set<() => void>();
  private closed = false;

  constructor(private readonly clock: Clock) {}

  /** Current generation; pass it to `waitForChange` after checking the database. */
  get generation(): number {
    return this.gen;
  }

  private holders = 0;

  /**
   * Marks a waiter-to-be that is checking the database now (not parked yet),
   * so wake-up gates do not skip it; call the returned function when done.
   */
  retain(): () => void {
    this.holders++;
    let released = false;
    return () => {
      if (!released) this.holders--;
      released = true;
    };
  }

  /** Waiters parked or about to park (retained). */
  get interested(): number {
    return this.holders + this.waiters.size;
  }

  /** Number of parked waiters (metrics, the periodic re-check). */
  get size(): number {
    return this.waiters.size;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Wakes every waiter. */
  wake(): void {
    this.gen++;
    for (const w of [...this.waiters]) w();
  }

  /** Ends every wait now and every later one at once ('closed'). */
  close(): void {
    this.closed = true;
    this.wake();
  }

  /**
   * Resolves when a wake-up happened after generation `since` ('woken', at
   * once if one already did), after `timeoutMs` on the clock, when `signal`
   * aborts, or when the channel closes.
   */
  waitForChange(since: number, timeoutMs: number, signal?: AbortSignal): Promise<WakeReason> {
    if (this.closed) return Promise.resolve('closed');
    if (this.gen !== since) return Promise.resolve('woken');
    if (signal?.aborted) return Promise.resolve('aborted');
    if (timeoutMs <= 0) return Promise.resolve('timeout');
    return new Promise<WakeReason>((resolve) => {
      let timer: TimerHandle | undefined;
      const done = (reason: WakeReason) => {
        this.waiters.delete(onWake);
        this.clock.clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        resolve(reason);
      };
      const onWake = () => done(this.closed ? 'closed' : 'woken');
      const onAbort = () => done('aborted');
      this.waiters.add(onWake);
      timer = this.clock.setTimeout(() => done('timeout'), timeoutMs);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }
}
