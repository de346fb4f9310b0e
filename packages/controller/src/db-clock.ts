/**
 * One clock for leases across controllers (docs/design.md "Concurrency rules"):
 * with several controllers on one PostgreSQL, deadlines and leases must agree
 * even when the machines' wall clocks do not. `DatabaseClock` reads the
 * database's time, keeps the offset to the local wall clock (corrected by half
 * the round trip), and answers `now()` locally, so no request pays a query.
 * Timers and `monotonic()` stay the base clock's: only "what time is it" moves.
 */
import type { Clock, TimerHandle } from '@buildfleet/protocol';

export interface DatabaseClockOptions {
  base: Clock;
  /** Reads the database's current time, epoch ms. */
  readDbNow: () => Promise<number>;
  /** Re-sync period, ms (default 60 s). */
  resyncMs?: number;
  /** Called when a re-sync fails; the last offset stays in force. */
  onError?: (err: unknown) => void;
}

export class DatabaseClock implements Clock {
  private offset = 0;
  private timer: TimerHandle | undefined;
  private stopped = false;
  constructor(private readonly opts: DatabaseClockOptions) {}

  /** Offset of the database's clock from the base wall clock, ms. */
  get offsetMs(): number {
    return this.offset;
  }

  /** Measures the offset once. Throws what `readDbNow` throws. */
  async sync(): Promise<void> {
    const { base } = this.opts;
    const sent = base.monotonic();
    const localAtSend = base.now();
    const dbNow = await this.opts.readDbNow();
    const rtt = base.monotonic() - sent;
    this.offset = Math.round(dbNow - (localAtSend + rtt / 2));
  }

  /** Syncs now, then every `resyncMs`. Throws when the first sync fails. */
  async start(): Promise<void> {
    await this.sync();
    this.schedule();
  }

  stop(): void {
    this.stopped = true;
    this.opts.base.clearTimeout(this.timer);
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = this.opts.base.setTimeout(() => {
      this.sync().then(
        () => this.schedule(),
        (err: unknown) => {
          this.opts.onError?.(err);
          this.schedule();
        },
      );
    }, this.opts.resyncMs ?? 60_000);
  }

  now(): number {
    return this.opts.base.now() + this.offset;
  }
  monotonic(): number {
    return this.opts.base.monotonic();
  }
  setTimeout(fn: () => void, ms: number): TimerHandle {
    return this.opts.base.setTimeout(fn, ms);
  }
  clearTimeout(handle: TimerHandle | undefined): void {
    this.opts.base.clearTimeout(handle);
  }
  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return this.opts.base.sleep(ms, signal);
  }
}

/** The PostgreSQL query behind `readDbNow` (epoch ms, sub-millisecond precision dropped). */
export const PG_NOW_SQL = 'select (extract(epoch from clock_timestamp()) * 1000)::float8 as now';
