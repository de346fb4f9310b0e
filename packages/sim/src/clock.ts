/**
 * The simulation's clock: a `Clock` for the controller and every worker that
 * moves only when the scheduler fires its next timer. Unlike FakeClock's
 * `advance`, `fireNext` fires exactly one timer, so the scheduler can let all
 * consequences of one event settle (including real file I/O) before the next.
 */
import { sleepOn, type Clock, type TimerHandle } from '@buildfleet/protocol';

interface Timer {
  id: number;
  at: number;
  fn: () => void;
}

export class SimClock implements Clock {
  private mono = 0;
  private nextId = 1;
  private readonly timers = new Map<number, Timer>();

  constructor(private readonly epochMs: number) {}

  now(): number {
    return this.epochMs + this.mono;
  }
  monotonic(): number {
    return this.mono;
  }
  setTimeout(fn: () => void, ms: number): TimerHandle {
    const id = this.nextId++;
    this.timers.set(id, { id, at: this.mono + Math.max(0, Math.floor(ms)), fn });
    return { id };
  }
  clearTimeout(handle: TimerHandle | undefined): void {
    if (handle) this.timers.delete(handle.id);
  }
  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return sleepOn(this, ms, signal);
  }
  /** Timers waiting. */
  get pending(): number {
    return this.timers.size;
  }
  /** Monotonic time of the next timer (ties: the one set first), or undefined. */
  private earliest(): Timer | undefined {
    let best: Timer | undefined;
    for (const t of this.timers.values()) if (!best || t.at < best.at || (t.at === best.at && t.id < best.id)) best = t;
    return best;
  }
  nextAt(): number | undefined {
    return this.earliest()?.at;
  }
  /** Moves time to the earliest timer at or before `limit` and fires it; false when none. */
  fireNext(limit = Infinity): boolean {
    const t = this.earliest();
    if (!t || t.at > limit) return false;
    this.timers.delete(t.id);
    this.mono = Math.max(this.mono, t.at);
    t.fn();
    return true;
  }
  /** Moves time forward without firing anything (nothing may be due before `to`). */
  jumpTo(to: number): void {
    if (to > this.mono) this.mono = to;
  }
}
