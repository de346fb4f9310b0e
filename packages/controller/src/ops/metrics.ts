/**
 * Metrics for operators (issue 14), registered on the controller's registry
 * (http/metrics.ts): queue wait per label set, builds by outcome, dispatch
 * latency, log and blob bytes, what retention removed and how webhook
 * deliveries went. Workers by state are counted at scrape time
 * (`collectWorkerStates`).
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { isTerminal, type Build } from '@buildfleet/protocol';

export interface OpsMetrics {
  /** Seconds from queued (submitted or requeued) to assigned, by the build's sorted labels (`linux,x64`; `` for none). */
  queueWait: Histogram<'labels'>;
  /** Seconds from assigned to running: how long a handed-out build takes to start on its worker. */
  dispatchLatency: Histogram;
  /** Builds that ended, by outcome (succeeded, failed, canceled, timed_out). */
  buildsFinished: Counter<'outcome'>;
  /** Workers by state (active, draining, disconnected), counted at scrape. */
  workers: Gauge<'state'>;
  /** Log bytes received from workers (before the cap). */
  logBytes: Counter;
  /** Blob bytes stored, by kind (source, artifact). */
  blobBytesWritten: Counter<'kind'>;
  /** Live bytes, as the last collection measured them: `log`, `source`, `artifact`. */
  storedBytes: Gauge<'kind'>;
  /** What the collector removed: items by kind (sources, logs, artifacts, builds, orphans, webhook_events) and reason (retention, blob_cap, orphan). */
  gcRemoved: Counter<'kind' | 'reason'>;
  gcBytes: Counter<'kind' | 'reason'>;
  /** Collections by result: ran, skipped (another controller held the lock), failed. */
  gcRuns: Counter<'result'>;
  gcDuration: Histogram;
  /** Webhook tries by result: delivered, retry, failed (given up). */
  webhookDeliveries: Counter<'result'>;
}

export function createOpsMetrics(registry: Registry): OpsMetrics {
  const registers = [registry];
  return {
    queueWait: new Histogram({
      name: 'buildfleet_queue_wait_seconds',
      help: 'Time builds waited in the queue before a worker took them, by label set',
      labelNames: ['labels'],
      buckets: [0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800],
      registers,
    }),
    dispatchLatency: new Histogram({
      name: 'buildfleet_dispatch_latency_seconds',
      help: 'Time from a build being handed to a worker until it started running',
      buckets: [0.01, 0.05, 0.1, 0.5, 1, 5, 30],
      registers,
    }),
    buildsFinished: new Counter({ name: 'buildfleet_builds_finished_total', help: 'Builds that ended, by outcome', labelNames: ['outcome'], registers }),
    workers: new Gauge({ name: 'buildfleet_workers', help: 'Workers by state (active, draining, disconnected)', labelNames: ['state'], registers }),
    logBytes: new Counter({ name: 'buildfleet_log_bytes_received_total', help: 'Log bytes received from workers', registers }),
    blobBytesWritten: new Counter({ name: 'buildfleet_blob_bytes_written_total', help: 'Blob bytes stored, by kind', labelNames: ['kind'], registers }),
    storedBytes: new Gauge({ name: 'buildfleet_stored_bytes', help: 'Live bytes as of the last collection, by kind (log, source, artifact)', labelNames: ['kind'], registers }),
    gcRemoved: new Counter({ name: 'buildfleet_gc_removed_total', help: 'Items removed by retention, by kind and reason', labelNames: ['kind', 'reason'], registers }),
    gcBytes: new Counter({ name: 'buildfleet_gc_removed_bytes_total', help: 'Bytes removed by retention, by kind and reason', labelNames: ['kind', 'reason'], registers }),
    gcRuns: new Counter({ name: 'buildfleet_gc_runs_total', help: 'Retention collections by result (ran, skipped, failed)', labelNames: ['result'], registers }),
    gcDuration: new Histogram({ name: 'buildfleet_gc_duration_seconds', help: 'Duration of retention collections that ran', buckets: [0.01, 0.1, 1, 10, 60, 600], registers }),
    webhookDeliveries: new Counter({ name: 'buildfleet_webhook_deliveries_total', help: 'Webhook tries by result (delivered, retry, failed)', labelNames: ['result'], registers }),
  };
}

/** Sets `workers{state}` from the store at scrape time: one query per scrape. */
export async function countWorkerStates(
  metrics: OpsMetrics,
  store: { listWorkers(now: number, leaseMs: number): Promise<Array<{ status: string; connected: boolean }>> },
  now: number,
  leaseMs: number,
): Promise<void> {
  const counts = { active: 0, draining: 0, disconnected: 0 };
  for (const w of await store.listWorkers(now, leaseMs)) {
    if (!w.connected) counts.disconnected++;
    else if (w.status === 'draining') counts.draining++;
    else counts.active++;
  }
  for (const [state, n] of Object.entries(counts)) metrics.workers.set({ state }, n);
}

/**
 * Observes a build that just started running: its queue wait (from submit,
 * or from the end of the attempt it replaced, to assignment) by label set,
 * and its dispatch latency (assignment to start).
 */
export function observeStarted(metrics: OpsMetrics, build: Build): void {
  if (!build.assignedAt || !build.startedAt) return;
  const assigned = Date.parse(build.assignedAt);
  const previous = build.attempts.find((a) => a.attempt === build.attempt - 1)?.finishedAt;
  const queued = Date.parse(previous ?? build.createdAt);
  const labels = [...build.spec.labels].sort().join(',');
  if (assigned >= queued) metrics.queueWait.observe({ labels }, (assigned - queued) / 1000);
  const started = Date.parse(build.startedAt);
  if (started >= assigned) metrics.dispatchLatency.observe((started - assigned) / 1000);
}

/** Counts a build that reached `state`, when it is terminal. */
export function observeEnded(metrics: OpsMetrics, state: string, n = 1): void {
  if (n > 0 && isTerminal(state as Build['state'])) metrics.buildsFinished.inc({ outcome: state }, n);
}
