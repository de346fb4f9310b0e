/**
 * The reaper (docs/protocol.md "States"): returns assigned builds past their
 * `ackDeadline` and running builds past their lease to the queue (or fails
 * them), and ends builds past `timeoutSeconds`. It runs at least every
 * `min(ackTimeoutMs, leaseMs) / 4` on the injected clock.
 *
 * Restart grace: for the first `leaseMs` after it starts, leases and ack
 * deadlines are not reaped, because the controller's own downtime kept
 * workers from heartbeating; blaming them would requeue healthy builds.
 */
import type { Clock } from '@buildfleet/protocol';
import type { ReapResult, Store } from './store/types.js';

export interface ReaperOptions {
  store: Store;
  clock: Clock;
  ackTimeoutMs: number;
  leaseMs: number;
  /** Default `min(ackTimeoutMs, leaseMs) / 4`. */
  intervalMs?: number;
  /** Default `leaseMs`: how long after start leases are left alone. */
  graceMs?: number;
  /** Told after every round that changed something ('builds' hint, metrics, logs). */
  onReaped?: (result: ReapResult) => void;
  onError?: (err: unknown) => void;
}

export class Reaper {
  private readonly startedAt: number;
  private readonly intervalMs: number;
  private readonly graceMs: number;
  private timer: ReturnType<Clock['setTimeout']> | undefined;
  private running = false;
  private stopped = false;
  private inFlight: Promise<unknown> | undefined;

  constructor(private readonly opts: ReaperOptions) {
    this.startedAt = opts.clock.monotonic();
    this.intervalMs = Math.max(10, opts.intervalMs ?? Math.floor(Math.min(opts.ackTimeoutMs, opts.leaseMs) / 4));
    this.graceMs = opts.graceMs ?? opts.leaseMs;
  }

  /** Starts the periodic rounds (the first after one interval). */
  start(): void {
    if (this.running || this.stopped) return;
    this.running = true;
    this.schedule();
  }

  /** Whether leases are reaped now (false during the restart grace). */
  get reapsLeases(): boolean {
    return this.opts.clock.monotonic() - this.startedAt >= this.graceMs;
  }

  /**
   * One round now (tests, the simulation). Resolves with what changed; a
   * store error is passed to `onError` and rethrown.
   */
  async reapOnce(): Promise<ReapResult> {
    const round = this.opts.store.reap({ now: this.opts.clock.now(), reapLeases: this.reapsLeases });
    this.inFlight = round;
    try {
      const result = await round;
      const changed = result.requeued.length + result.failed.length + result.canceled.length + result.timedOut.length;
      if (changed > 0) this.opts.onReaped?.(result);
      return result;
    } catch (err) {
      this.opts.onError?.(err);
      throw err;
    }
  }

  /** Stops the rounds and waits for one in flight. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.running = false;
    this.opts.clock.clearTimeout(this.timer);
    this.timer = undefined;
    await this.inFlight?.catch(() => {});
  }

  private schedule(): void {
    if (!this.running) return;
    this.timer = this.opts.clock.setTimeout(() => {
      this.timer = undefined;
      void this.reapOnce()
        .catch(() => {})
        .finally(() => this.schedule());
    }, this.intervalMs);
  }
}
