/**
 * What the agent's background loops share (Buildkite's `agent_worker_*.go`:
 * each loop its own file, its own stop signal, its own status): a stop
 * signal, a status a person can read, and the count of failures in a row.
 */
import type { Clock } from '@buildfleet/protocol';

/** What a loop is doing now; `stopped` is final. */
export type LoopState = 'starting' | 'waiting' | 'calling' | 'paused' | 'backing off' | 'stopped';

/** A loop's status (for logs, tests and diagnostics). */
export interface LoopStatus {
  readonly name: string;
  readonly state: LoopState;
  /** Failures since the last success. */
  readonly failuresInARow: number;
  /** Monotonic ms of the last success, if any. */
  readonly lastSuccessMono: number | undefined;
}

/** Base of the poll, heartbeat and fence loops: `start()` once, `stop()` once, `status` any time. */
export abstract class Loop {
  private _state: LoopState = 'starting';
  private failures = 0;
  private lastSuccess: number | undefined;
  private running: Promise<void> | undefined;
  /** Aborted by `stop()`: every wait and request of the loop listens to it. */
  protected readonly stopSignal: AbortSignal;
  private readonly ac = new AbortController();

  constructor(
    readonly name: string,
    protected readonly clock: Clock,
  ) {
    this.stopSignal = this.ac.signal;
  }

  get status(): LoopStatus {
    return { name: this.name, state: this._state, failuresInARow: this.failures, lastSuccessMono: this.lastSuccess };
  }
  get stopped(): boolean {
    return this.ac.signal.aborted;
  }

  protected set state(s: LoopState) {
    if (this._state !== 'stopped') this._state = s;
  }
  protected succeeded(): void {
    this.failures = 0;
    this.lastSuccess = this.clock.monotonic();
  }
  /** Counts a failure; returns how many in a row. */
  protected failed(): number {
    return ++this.failures;
  }

  /** Starts the loop; the promise settles when it ended. */
  start(): Promise<void> {
    this.running ??= this.body()
      .catch(() => undefined)
      .finally(() => {
        this._state = 'stopped';
      });
    return this.running;
  }

  /** Asks the loop to end (aborts its wait or request); resolves when it did. */
  async stop(reason?: unknown): Promise<void> {
    if (!this.ac.signal.aborted) this.ac.abort(reason ?? new Error(`${this.name} loop stopped`));
    await this.running;
  }

  /** Sleeps on the clock; false when the loop was stopped meanwhile. */
  protected async sleep(ms: number): Promise<boolean> {
    try {
      await this.clock.sleep(ms, this.stopSignal);
      return true;
    } catch {
      return false;
    }
  }

  protected abstract body(): Promise<void>;
}
