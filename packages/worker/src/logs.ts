/**
 * A build's log streamer: collects output bytes and uploads them as chunks
 * with a sequence number and byte offset (design rule 14, after
 * Buildkite's `api/chunks.go`).
 *
 * One upload is in flight at a time, so offsets stay consecutive. A chunk is
 * cut only when it is about to be sent, and never re-split: a retry (inside
 * `send`) re-sends the very same (seq, offset, data), which the controller
 * stores once. A chunk is sent when at least `minChunkBytes` are pending or
 * `flushIntervalMs` after the first pending byte; output that piles up while
 * an upload is in flight goes out as one larger chunk (up to
 * `maxChunkBytes`), so a chatty build costs fewer requests.
 */
import type { Clock, TimerHandle } from '@buildfleet/protocol';

export interface LogChunk {
  seq: number;
  /** Bytes of this attempt's log before this chunk. */
  offset: number;
  data: Buffer;
}

export interface LogStreamerOptions {
  clock: Clock;
  /**
   * Uploads one chunk; retries are its own business. A throw stops the
   * streamer. `truncated: true` (the controller's log cap was reached) stops
   * uploading for good: later output is dropped, and flush resolves.
   */
  send: (chunk: LogChunk) => Promise<void | { truncated?: boolean }>;
  /** Send once this many bytes are pending (default 64 KiB). */
  minChunkBytes?: number;
  /** Largest chunk (default 1 MiB). */
  maxChunkBytes?: number;
  /** Send this long after the first pending byte at the latest (ms, default 250). */
  flushIntervalMs?: number;
  /** Pending bytes above which `backpressure(true)` is signalled (default 8 MiB). */
  highWaterBytes?: number;
  /** Told when pending bytes cross `highWaterBytes` (pause the producer) and drop below half (resume). */
  backpressure?: (high: boolean) => void;
}

export class LogStreamer {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private seq = 0;
  /** Bytes already cut into chunks (sent or in flight). */
  private offset = 0;
  private timer: TimerHandle | undefined;
  /** The flush interval passed while an upload was in flight: send right after it. */
  private due = false;
  private inFlight: Promise<void> | undefined;
  private failure: unknown;
  private paused = false;
  /** The controller stopped storing this log (its cap): drop everything from now on. */
  private truncated = false;
  private readonly minChunk: number;
  private readonly maxChunk: number;
  private readonly interval: number;
  private readonly highWater: number;

  constructor(private readonly opts: LogStreamerOptions) {
    this.maxChunk = opts.maxChunkBytes ?? 1024 * 1024;
    this.minChunk = Math.min(opts.minChunkBytes ?? 64 * 1024, this.maxChunk);
    this.interval = opts.flushIntervalMs ?? 250;
    this.highWater = opts.highWaterBytes ?? 8 * 1024 * 1024;
  }

  /** Total bytes written so far (uploaded or not). */
  get bytesWritten(): number {
    return this.offset + this.pendingBytes;
  }
  /** The error that stopped uploading, if any. */
  get error(): unknown {
    return this.failure;
  }

  /** Whether the controller said the log reached its cap (nothing more is sent). */
  get wasTruncated(): boolean {
    return this.truncated;
  }

  write(data: Buffer | string): void {
    if (this.failure !== undefined || this.truncated) return;
    const buf = typeof data === 'string' ? Buffer.from(data) : data;
    if (buf.length === 0) return;
    this.pending.push(buf);
    this.pendingBytes += buf.length;
    if (!this.paused && this.pendingBytes > this.highWater) {
      this.paused = true;
      this.opts.backpressure?.(true);
    }
    if (this.pendingBytes >= this.minChunk) this.kick(true);
    else this.arm();
  }

  private arm(): void {
    if (this.timer || this.pendingBytes === 0) return;
    this.timer = this.opts.clock.setTimeout(() => {
      this.timer = undefined;
      this.kick(true);
    }, this.interval);
  }

  /** Starts the next upload if none is in flight and one is due (`force`) or big enough. */
  private kick(force: boolean): void {
    if (this.failure !== undefined || this.pendingBytes === 0) return;
    if (this.inFlight) {
      if (force) this.due = true;
      return;
    }
    if (!force && !this.due && this.pendingBytes < this.minChunk) {
      this.arm();
      return;
    }
    this.due = false;
    this.opts.clock.clearTimeout(this.timer);
    this.timer = undefined;
    const chunk = this.cut();
    this.inFlight = this.opts.send(chunk).then(
      (answer) => {
        this.inFlight = undefined;
        if (answer && answer.truncated) {
          this.truncated = true;
          this.pending = [];
          this.pendingBytes = 0;
          this.opts.clock.clearTimeout(this.timer);
          this.timer = undefined;
          this.release();
          return;
        }
        this.kick(false);
      },
      (err: unknown) => {
        this.inFlight = undefined;
        this.failure = err;
        this.release();
      },
    );
  }

  private cut(): LogChunk {
    const all = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending);
    const data = all.subarray(0, this.maxChunk);
    const rest = all.subarray(data.length);
    this.pending = rest.length > 0 ? [rest] : [];
    this.pendingBytes = rest.length;
    const chunk = { seq: this.seq++, offset: this.offset, data };
    this.offset += data.length;
    if (this.paused && this.pendingBytes < this.highWater / 2) {
      this.paused = false;
      this.opts.backpressure?.(false);
    }
    return chunk;
  }

  /** Sends everything pending and resolves when it is uploaded; throws the upload error. */
  async flush(): Promise<void> {
    for (;;) {
      if (this.failure !== undefined) throw this.failure;
      if (this.inFlight) {
        await this.inFlight;
        continue;
      }
      if (this.pendingBytes === 0) return;
      this.kick(true);
    }
  }

  /** Stops the flush timer (the build was dropped). Pending bytes are discarded. */
  close(): void {
    this.opts.clock.clearTimeout(this.timer);
    this.timer = undefined;
    if (this.failure === undefined) this.failure = new Error('log streamer closed');
    this.release();
  }

  /** Uploading stopped for good: a paused producer must not wait for a drain that never comes. */
  private release(): void {
    if (this.paused) {
      this.paused = false;
      this.opts.backpressure?.(false);
    }
  }
}
