/**
 * Build and worker objects as the API answers them to people: a build with
 * its worker's name (and each attempt's) and, while queued, why it waits; a
 * worker with its state in words (idle, building, draining, offline). Two
 * cheap reads per answer at most (the fleet, and the queue only when a
 * queued build is in the answer), never one per build.
 */
import type { Build, Worker, WorkerState } from '@buildfleet/protocol';
import { waitingOf, type QueuedEntry } from './domain/waiting.js';

/** The store reads a view needs. */
export interface ViewSource {
  listWorkers(now: number, leaseMs: number): Promise<Worker[]>;
  /** Every queued build in claim terms (id, labels, priority, createdAt ms). */
  listQueued(): Promise<QueuedEntry[]>;
}

/** `offline` (not seen within one lease period) wins, then `draining`, then `building` (holds a build), else `idle`. */
export function workerStateOf(w: Pick<Worker, 'connected' | 'status' | 'activeBuildCount'>): WorkerState {
  if (!w.connected) return 'offline';
  if (w.status === 'draining') return 'draining';
  return w.activeBuildCount > 0 ? 'building' : 'idle';
}

export function workerView(w: Worker): Worker {
  return { ...w, state: workerStateOf(w) };
}

/**
 * Adds `workerName` (null when the worker was deleted) to each build and
 * attempt, and `waiting` to each queued build (null otherwise). `fleet`:
 * pass the workers when the caller already read them.
 */
export async function buildViews(source: ViewSource, builds: Build[], now: number, leaseMs: number, fleet?: Worker[]): Promise<Build[]> {
  if (builds.length === 0) return builds;
  const workers = fleet ?? (await source.listWorkers(now, leaseMs));
  const names = new Map(workers.map((w) => [w.id, w.name]));
  const queued = builds.some((b) => b.state === 'queued') ? await source.listQueued() : [];
  return builds.map((b) => ({
    ...b,
    workerName: b.workerId === null ? null : (names.get(b.workerId) ?? null),
    attempts: b.attempts.map((a) => ({ ...a, workerName: a.workerId === null ? null : (names.get(a.workerId) ?? null) })),
    waiting:
      b.state === 'queued'
        ? waitingOf({ id: b.id, labels: b.spec.labels, priority: b.spec.priority, createdAt: Date.parse(b.createdAt) }, queued, workers)
        : null,
  }));
}

export async function buildView(source: ViewSource, build: Build, now: number, leaseMs: number): Promise<Build> {
  return (await buildViews(source, [build], now, leaseMs))[0]!;
}
