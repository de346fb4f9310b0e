/**
 * A build's log streamer: collects output bytes and uploads them as chunks
 * with a sequence number and byte offset (STYLE.md habit 14, after
 * Buildkite's `api/chunks.go`). A chunk is cut once and never re-split, and
 * one upload is in flight at a time, so offsets stay consecutive and a retry
 * re-sends the very same (seq, offset, data) that the controller stores once.
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
  /** Uploads one chunk; retries are its own business. A throw stops the streamer. */
  send: (chunk: LogChunk) => Promise<void>;
  /** Cut a chunk when this many bytes are pending (default 64 KiB). */
  maxChunkBytes?: number;
  /** Cut a chunk this long after the first pending byte (ms, default 250). */
  flushIntervalMs?: number;
  /** Bytes not yet uploaded above which `backpressure(true)` is signalled (default 8 MiB). */
  highWaterBytes?: number;
  /** Told when the backlog crosses `highWaterBytes` (pause the producer) and drains below half (resume). */
  backpressure?: (high: boolean) => void;
}

export class LogStreamer {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private readonly queue: LogChunk[] = [];
  private queuedBytes = 0;
  private seq = 0;
  private offset = 0;
  private timer: TimerHandle | undefined;
  private pumping: Promise<void> | undefined;
  private failure: unknown;
  private paused = false;
  private readonly maxChunk: number;
  private readonly interval: number;
  private readonly highWater: number;

  constructor(private readonly opts: LogStreamerOptions) {
    this.maxChunk = opts.maxChunkBytes ?? 64 * 1024;
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

  write(data: Buffer | string): void {
    if (this.failure !== undefined) return;
    const buf = typeof data === 'string' ? Buffer.from(data) : data;
    if (buf.length === 0) return;
    this.pending.push(buf);
    this.pendingBytes += buf.length;
    if (this.pendingBytes >= this.maxChunk) this.cut();
    else if (!this.timer) this.timer = this.opts.clock.setTimeout(() => ((this.timer = undefined), this.cut()), this.interval);
  }

  private cut(): void {
    this.opts.clock.clearTimeout(this.timer);
    this.timer = undefined;
    if (this.pendingBytes === 0) return;
    let all = Buffer.concat(this.pending);
    this.pending = [];
    this.pendingBytes = 0;
    while (all.length > 0) {
      const data = all.subarray(0, this.maxChunk);
      all = all.subarray(data.length);
      this.queue.push({ seq: this.seq++, offset: this.offset, data });
      this.offset += data.length;
      this.queuedBytes += data.length;
    }
    if (!this.paused && this.queuedBytes > this.highWater) {
      this.paused = true;
      this.opts.backpressure?.(true);
    }
    this.pump();
  }

  private pump(): void {
    if (this.pumping || this.failure !== undefined) return;
    this.pumping = (async () => {
      try {
        while (this.queue.length > 0 && this.failure === undefined) {
          const chunk = this.queue[0]!;
          await this.opts.send(chunk);
          this.queue.shift();
          this.queuedBytes -= chunk.data.length;
          if (this.paused && this.queuedBytes < this.highWater / 2) {
            this.paused = false;
            this.opts.backpressure?.(false);
          }
        }
      } catch (err) {
        this.failure = err;
        this.release();
      } finally {
        this.pumping = undefined;
      }
    })();
  }

  /** Cuts what is pending and resolves when everything is uploaded; throws the upload error. */
  async flush(): Promise<void> {
    this.cut();
    while (this.pumping) await this.pumping;
    if (this.failure !== undefined) throw this.failure;
    if (this.queue.length > 0) {
      this.pump();
      return this.flush();
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
