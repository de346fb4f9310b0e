/**
 * Build and worker objects as the API answers them to people: a build with
 * its worker's name (and each attempt's) and, while queued, why it waits; a
 * worker with its state in words (idle, building, draining, offline). A
 * single-build answer costs one indexed lookup of a worker's name; the
 * fleet and the queue are read only when a queued build is in the answer;
 * never one read per build.
 */
import type { Build, Worker, WorkerState } from '@buildfleet/protocol';
import { waitingOf, type FleetEntry, type QueuedEntry } from './domain/waiting.js';

/** The store reads a view needs (store/dashboard-queries.ts). */
export interface ViewSource {
  /** Names of these workers (deleted ones are absent). */
  workerNames(ids: string[]): Promise<Map<string, string>>;
  /** Every worker's labels, status and whether it was seen within `leaseMs` of `now`. */
  waitingFleet(now: number, leaseMs: number): Promise<FleetEntry[]>;
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
 * attempt, and `waiting` to each queued build (null otherwise). Reads only
 * what the builds need: the names of the workers they mention, and the
 * fleet and queue only when one is queued. `fleet`: the workers, when the
 * caller already read them.
 */
export async function buildViews(source: ViewSource, builds: Build[], now: number, leaseMs: number, fleet?: Worker[]): Promise<Build[]> {
  if (builds.length === 0) return builds;
  let names: Map<string, string>;
  if (fleet) names = new Map(fleet.map((w) => [w.id, w.name]));
  else {
    const ids = new Set<string>();
    for (const b of builds) {
      if (b.workerId) ids.add(b.workerId);
      for (const a of b.attempts) if (a.workerId) ids.add(a.workerId);
    }
    names = ids.size ? await source.workerNames([...ids]) : new Map();
  }
  const anyQueued = builds.some((b) => b.state === 'queued');
  const [queue, workers] = anyQueued ? await Promise.all([source.listQueued(), fleet ?? source.waitingFleet(now, leaseMs)]) : [[], []];
  const nameOf = (id: string | null) => (id === null ? null : (names.get(id) ?? null));
  return builds.map((b) => ({
    ...b,
    workerName: nameOf(b.workerId),
    attempts: b.attempts.map((a) => ({ ...a, workerName: nameOf(a.workerId) })),
    waiting:
      b.state === 'queued'
        ? waitingOf(queue.find((q) => q.id === b.id) ?? { id: b.id, labels: b.spec.labels, priority: b.spec.priority, createdAt: Date.parse(b.createdAt) }, queue, workers)
        : null,
  }));
}

export async function buildView(source: ViewSource, build: Build, now: number, leaseMs: number): Promise<Build> {
  return (await buildViews(source, [build], now, leaseMs))[0]!;
}
