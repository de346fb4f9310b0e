/**
 * Why a queued build waits, for people (the build object's `waiting`,
 * docs/protocol.md / docs/protocol.md "Builds"). A pure function of the queue and
 * the fleet as the caller read them; nothing here is a scheduling decision
 * (the claim statement alone decides who runs what).
 */
import type { Waiting, WaitingReason } from '@buildfleet/protocol';

/** A queued build as the claim orders it. */
export interface QueuedEntry {
  id: string;
  labels: readonly string[];
  priority: number;
  /** Epoch ms. */
  createdAt: number;
  /** Spec `concurrency` (issue 13), with the group's assigned and running builds now. */
  group?: { name: string; limit: number; active: number };
}

/** A worker as far as waiting is concerned. */
export interface FleetEntry {
  labels: readonly string[];
  status: 'active' | 'draining';
  /** Seen within one lease period. */
  connected: boolean;
}

/** Claim order (store claims: priority desc, then created_at, then id): negative when `a` goes first. */
export function claimOrder(a: QueuedEntry, b: QueuedEntry): number {
  return b.priority - a.priority || a.createdAt - b.createdAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

function serves(worker: FleetEntry, labels: readonly string[]): boolean {
  return labels.every((l) => worker.labels.includes(l));
}

/** Whether the build's concurrency group is full for it: its active builds plus its group's queued builds submitted before it reach the limit (the claim's rule, store/sql/concurrency.ts). */
function groupFull(build: QueuedEntry, queue: readonly QueuedEntry[]): boolean {
  const g = build.group;
  if (!g) return false;
  const earlier = queue.filter(
    (q) => q.group?.name === g.name && (q.createdAt < build.createdAt || (q.createdAt === build.createdAt && q.id < build.id)),
  ).length;
  return g.active + earlier >= g.limit;
}

/**
 * `reason`: `no_matching_worker` when no connected worker has all of the
 * build's labels, `workers_draining` when every such worker is draining,
 * `concurrency_group` when its concurrency group is full, else
 * `workers_busy`. `position`: 1 + the queued builds ahead of it in claim
 * order that the same workers could take first (with no matching worker:
 * those with the same labels).
 */
export function waitingOf(build: QueuedEntry, queue: readonly QueuedEntry[], fleet: readonly FleetEntry[]): Waiting {
  const matching = fleet.filter((w) => w.connected && serves(w, build.labels));
  const ready = matching.filter((w) => w.status === 'active');
  const reason: WaitingReason =
    matching.length === 0 ? 'no_matching_worker' : ready.length === 0 ? 'workers_draining' : groupFull(build, queue) ? 'concurrency_group' : 'workers_busy';
  const pool = ready.length ? ready : matching;
  const key = build.labels.join(',');
  let ahead = 0;
  for (const q of queue) {
    if (q.id === build.id || claimOrder(q, build) >= 0) continue;
    const competes = pool.length ? pool.some((w) => serves(w, q.labels)) : q.labels.join(',') === key;
    if (competes) ahead += 1;
  }
  return { reason, position: ahead + 1 };
}
