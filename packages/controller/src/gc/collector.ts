/**
 * The retention collector (issue 14; one loop per file, design rule 19).
 * Every controller runs one; a round first takes the cluster-wide collector
 * lock (PostgreSQL advisory lock) and skips when another controller holds
 * it. A round:
 *
 * 1. age-based steps from `plan.ts` (whole builds, artifacts, logs, sources),
 *    each in batches of `gcBatchSize` builds per transaction, yielding to
 *    the event loop between batches so requests (claims) interleave;
 * 2. the blob cap: while live blob bytes exceed `blobMaxBytes`, the oldest
 *    artifacts of ended builds (then their sources) are removed;
 * 3. orphan blobs (no live row refers to them, older than `orphanGraceMs`),
 *    at most once an hour;
 * 4. webhook events older than the logs' age with nothing pending.
 *
 * Blob files are deleted after the transaction that released them commits.
 * Every removal is counted in the metrics and summed in one log line per
 * round. Time comes from the injected clock.
 */
import type { Clock, TimerHandle } from '@buildfleet/protocol';
import type { BlobStore } from '../blobs/types.js';
import type { OperationsConfig } from '../ops/config.js';
import type { OpsMetrics } from '../ops/metrics.js';
import type { BatchResult, RetentionKind } from '../store/sql/retention.js';
import type { RetentionStore } from '../store/types.js';
import { bytesOverCap, collectionSteps } from './plan.js';

/** pino-compatible. */
export interface CollectorLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
}

export interface CollectorOptions {
  store: RetentionStore;
  blobs: BlobStore;
  clock: Clock;
  config: OperationsConfig;
  metrics?: OpsMetrics;
  logger?: CollectorLogger;
  /** Test barrier: awaited between two batches (the collector holds no transaction then). */
  betweenBatches?: () => Promise<void>;
  /** Test barrier: awaited after a round, whatever its result. */
  onRound?: (summary: RoundSummary) => void;
}

/** What one round did. */
export interface RoundSummary {
  ran: boolean;
  /** Items removed by kind (`orphans` for blobs no row referred to, `webhook_events`). */
  removed: Record<string, number>;
  bytes: Record<string, number>;
  batches: number;
  blobsDeleted: number;
  durationMs: number;
}

/** Orphan scans run at most this often, ms. */
const ORPHAN_EVERY_MS = 3_600_000;

export class Collector {
  private timer: TimerHandle | undefined;
  private running = false;
  private round: Promise<RoundSummary> | undefined;
  private lastOrphanScan = -Infinity;

  constructor(private readonly opts: CollectorOptions) {}

  /** Starts the rounds: the first after one interval, then every `gcIntervalMs` after the previous one ended. */
  start(): void {
    if (this.running) return;
    this.running = true;
    this.schedule();
  }

  async stop(): Promise<void> {
    this.running = false;
    this.opts.clock.clearTimeout(this.timer);
    this.timer = undefined;
    await this.round?.catch(() => undefined);
  }

  private schedule(): void {
    if (!this.running) return;
    this.timer = this.opts.clock.setTimeout(() => {
      this.timer = undefined;
      void this.collectOnce()
        .catch(() => undefined)
        .finally(() => this.schedule());
    }, this.opts.config.gcIntervalMs);
  }

  /**
   * One round now (tests, and the loop). Resolves with what it did
   * (`ran: false` when another collector held the lock). A store error
   * rejects after it is logged and counted.
   */
  collectOnce(opts: { orphans?: boolean } = {}): Promise<RoundSummary> {
    if (this.round) return this.round;
    this.round = this.doRound(opts).finally(() => {
      this.round = undefined;
    });
    return this.round;
  }

  private async doRound(opts: { orphans?: boolean }): Promise<RoundSummary> {
    const { clock, metrics, logger, store } = this.opts;
    const t0 = clock.monotonic();
    const summary: RoundSummary = { ran: false, removed: {}, bytes: {}, batches: 0, blobsDeleted: 0, durationMs: 0 };
    try {
      const got = await store.withCollectorLock(() => this.collect(summary, opts));
      summary.ran = got.ran;
    } catch (err) {
      metrics?.gcRuns.inc({ result: 'failed' });
      logger?.warn({ err, ...summary }, 'retention collection failed; the next round tries again');
      throw err;
    } finally {
      summary.durationMs = Math.round(clock.monotonic() - t0);
      this.opts.onRound?.(summary);
    }
    metrics?.gcRuns.inc({ result: summary.ran ? 'ran' : 'skipped' });
    if (summary.ran) {
      metrics?.gcDuration.observe(summary.durationMs / 1000);
      const total = Object.values(summary.removed).reduce((a, b) => a + b, 0);
      if (total > 0) logger?.info({ removed: summary.removed, bytes: summary.bytes, blobsDeleted: summary.blobsDeleted, batches: summary.batches, durationMs: summary.durationMs }, 'retention removed data');
    }
    return summary;
  }

  private count(summary: RoundSummary, kind: string, reason: string, items: number, bytes: number): void {
    if (items === 0) return;
    summary.removed[kind] = (summary.removed[kind] ?? 0) + items;
    summary.bytes[kind] = (summary.bytes[kind] ?? 0) + bytes;
    this.opts.metrics?.gcRemoved.inc({ kind, reason }, items);
    if (bytes > 0) this.opts.metrics?.gcBytes.inc({ kind, reason }, bytes);
  }

  /** Deletes blob files a committed batch released; a failure leaves an orphan for a later scan. */
  private async deleteBlobs(summary: RoundSummary, keys: readonly string[]): Promise<void> {
    for (const key of keys) {
      try {
        await this.opts.blobs.delete(key);
        summary.blobsDeleted++;
      } catch (err) {
        this.opts.logger?.warn({ err, key }, 'could not delete a released blob; the orphan scan will retry');
      }
    }
  }

  private async pause(): Promise<void> {
    // Between batches the collector holds no transaction: let waiting requests run.
    await new Promise<void>((r) => setImmediate(r));
    await this.opts.betweenBatches?.();
  }

  private async batches(summary: RoundSummary, kind: string, reason: string, next: () => Promise<BatchResult>, more: (r: BatchResult) => boolean): Promise<void> {
    for (;;) {
      const r = await next();
      summary.batches++;
      const items = r.builds.length;
      this.count(summary, kind, reason, items, r.bytes);
      await this.deleteBlobs(summary, r.unreferencedBlobs);
      if (!more(r)) return;
      await this.pause();
    }
  }

  private async collect(summary: RoundSummary, opts: { orphans?: boolean }): Promise<void> {
    const { store, clock, config } = this.opts;
    const now = clock.now();
    const limit = config.gcBatchSize;
    for (const step of collectionSteps(config.retention, now)) {
      await this.batches(summary, step.kind, 'retention', () => store.expireBatch(step.kind as RetentionKind, step.cutoff, limit, now), (r) => r.builds.length > 0);
      await this.pause();
    }

    if (config.blobMaxBytes !== undefined) {
      let live = await store.liveBlobBytes();
      let over = bytesOverCap(live.sources + live.artifacts, config.blobMaxBytes);
      while (over > 0) {
        const r = await store.evictBatch(over, limit, now);
        summary.batches++;
        if (r.builds.length === 0) {
          this.opts.logger?.warn({ liveBytes: live.sources + live.artifacts, capBytes: config.blobMaxBytes }, 'blobs are over BUILDFLEET_BLOB_MAX_MB but only queued, running or kept builds hold them');
          break;
        }
        this.count(summary, 'blob_cap', 'blob_cap', r.builds.length, r.bytes);
        await this.deleteBlobs(summary, r.unreferencedBlobs);
        over -= r.bytes;
        await this.pause();
        if (over <= 0) {
          live = await store.liveBlobBytes();
          over = bytesOverCap(live.sources + live.artifacts, config.blobMaxBytes);
        }
      }
    }

    const scanOrphans = opts.orphans ?? clock.monotonic() - this.lastOrphanScan >= ORPHAN_EVERY_MS;
    if (scanOrphans) {
      this.lastOrphanScan = clock.monotonic();
      await this.collectOrphans(summary, now - config.orphanGraceMs);
    }

    if (Number.isFinite(config.retention.logsMs)) {
      const cutoff = now - Math.max(config.retention.logsMs, config.webhookRetry.retryForMs);
      for (let n = await store.expireWebhookEvents(cutoff, limit); n > 0; n = await store.expireWebhookEvents(cutoff, limit)) {
        this.count(summary, 'webhook_events', 'retention', n, 0);
        await this.pause();
      }
    }

    if (Object.keys(summary.removed).length > 0) await store.reclaimSpace();
    const live = await store.liveBlobBytes();
    this.opts.metrics?.storedBytes.set({ kind: 'source' }, live.sources);
    this.opts.metrics?.storedBytes.set({ kind: 'artifact' }, live.artifacts);
    this.opts.metrics?.storedBytes.set({ kind: 'log' }, await store.liveLogBytes());
  }

  /** Blobs older than `before` that no live row refers to, and uploads begun before it that never finished. */
  private async collectOrphans(summary: RoundSummary, before: number): Promise<void> {
    const batch: string[] = [];
    const flush = async () => {
      const orphans = await this.opts.store.unreferencedBlobs(batch.splice(0));
      await this.deleteBlobs(summary, orphans);
      this.count(summary, 'orphans', 'orphan', orphans.length, 0);
      await this.pause();
    };
    for await (const b of this.opts.blobs.list()) {
      if (b.modifiedAt >= before) continue;
      batch.push(b.key);
      if (batch.length >= this.opts.config.gcBatchSize * 5) await flush();
    }
    if (batch.length > 0) await flush();
    // Temporary files (chunks) of uploads a killed controller never finished.
    this.count(summary, 'orphans', 'interrupted_upload', await this.opts.blobs.sweepTemp(before), 0);
  }
}
