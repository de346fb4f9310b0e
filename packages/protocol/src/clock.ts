/**
 * Injected time. No scheduler, lease, token or retry code reads the wall clock
 * or sets timers directly (DEVELOPERS.md "Standards"); tests pass a FakeClock.
 */
export interface TimerHandle {
  readonly id: number;
}

export interface Clock {
  /** Wall-clock time, epoch milliseconds (leases, deadlines, timestamps). */
  now(): number;
  /** Monotonic milliseconds from an arbitrary origin (refresh timing, backoff). */
  monotonic(): number;
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle | undefined): void;
  /** Resolves after `ms`; rejects with the signal's reason when aborted. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new Error('aborted');
}

/**
 * `Clock.sleep` for any clock, built on its `setTimeout`: resolves after
 * `ms`; rejects with the signal's reason (or an Error) when aborted, and
 * clears its timer then. Every Clock implementation shares this one.
 */
export function sleepOn(clock: Clock, ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortReason(signal));
    const onAbort = () => {
      clock.clearTimeout(handle);
      reject(abortReason(signal!));
    };
    const handle = clock.setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** The real clock: Date.now, performance.now and Node timers (unref'd). */
export class SystemClock implements Clock {
  private readonly timers = new Map<number, NodeJS.Timeout>();
  private nextId = 1;
  now(): number {
    return Date.now();
  }
  monotonic(): number {
    return performance.now();
  }
  setTimeout(fn: () => void, ms: number): TimerHandle {
    const id = this.nextId++;
    const t = setTimeout(() => {
      this.timers.delete(id);
      fn();
    }, Math.max(0, ms));
    this.timers.set(id, t);
    return { id };
  }
  clearTimeout(handle: TimerHandle | undefined): void {
    if (!handle) return;
    const t = this.timers.get(handle.id);
    if (t) clearTimeout(t);
    this.timers.delete(handle.id);
  }
  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return sleepOn(this, ms, signal);
  }
}

export const systemClock: Clock = new SystemClock();

interface FakeTimer {
  id: number;
  at: number;
  seq: number;
  fn: () => void;
}

/**
 * A clock that moves only when told. `advance(ms)` fires due timers in time
 * order and lets promise continuations run between them, so code awaiting
 * `sleep` progresses as it would in real time.
 */
export class FakeClock implements Clock {
  private time: number;
  private mono = 0;
  private timers: FakeTimer[] = [];
  private nextId = 1;
  private seq = 0;
  constructor(startEpochMs = Date.UTC(2026, 0, 1)) {
    this.time = startEpochMs;
  }
  now(): number {
    return this.time;
  }
  monotonic(): number {
    return this.mono;
  }
  /** Moves only the wall clock (simulates a clock step or skew). */
  skewWallClock(deltaMs: number): void {
    this.time += deltaMs;
  }
  setTimeout(fn: () => void, ms: number): TimerHandle {
    const id = this.nextId++;
    this.timers.push({ id, at: this.mono + Math.max(0, ms), seq: this.seq++, fn });
    return { id };
  }
  clearTimeout(handle: TimerHandle | undefined): void {
    if (!handle) return;
    this.timers = this.timers.filter((t) => t.id !== handle.id);
  }
  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return sleepOn(this, ms, signal);
  }
  /** Number of timers waiting. */
  pending(): number {
    return this.timers.length;
  }
  /** Monotonic time of the next timer, or undefined. */
  nextTimerAt(): number | undefined {
    let best: FakeTimer | undefined;
    for (const t of this.timers) if (!best || t.at < best.at || (t.at === best.at && t.seq < best.seq)) best = t;
    return best?.at;
  }
  /** Fires the earliest due timer at or before `limit`; false if none. */
  private fireNext(limit: number): boolean {
    let best: FakeTimer | undefined;
    for (const t of this.timers) if (t.at <= limit && (!best || t.at < best.at || (t.at === best.at && t.seq < best.seq))) best = t;
    if (!best) return false;
    this.timers = this.timers.filter((t) => t !== best);
    this.time += best.at - this.mono;
    this.mono = best.at;
    best.fn();
    return true;
  }
  /** Advances both clocks by `ms`, firing due timers in order. */
  async advance(ms: number): Promise<void> {
    const target = this.mono + ms;
    await flushMicrotasks();
    while (this.fireNext(target)) await flushMicrotasks();
    this.time += target - this.mono;
    this.mono = target;
    await flushMicrotasks();
  }
}

/** Lets pending promise continuations (and I/O callbacks queued now) run. */
export function flushMicrotasks(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
