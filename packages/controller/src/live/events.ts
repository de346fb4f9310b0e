/**
 * The source of `GET /events` (docs/protocol.md "Events"): turns wake-up
 * hints from this and every other controller (in-process, or PostgreSQL
 * `LISTEN/NOTIFY`) into `build` and `worker` events for the dashboards
 * connected here.
 *
 * Hints are only "look again" (docs/design.md): a 'logs' hint names a build whose
 * state or log moved, a 'workers' or 'builds' hint says the fleet may have
 * changed. The hub collects them for `flushMs`, then reads each named build
 * once and the fleet once, and sends only what changed since it last looked
 * (a build's state, attempt, worker or cancel flag; a worker's state, labels,
 * status or build count), so a chatty log costs one read per build per
 * flush, not one event per line, and nothing is read while nobody listens.
 * While anyone listens, the fleet is also re-read every `recheckMs` (a
 * worker going silent sends no hint; it just becomes offline).
 */
import type { Build, Clock, TimerHandle, Worker } from '@buildfleet/protocol';
import { ApiError } from '@buildfleet/protocol';
import type { Notifier } from '../store/notifier.js';
import { buildViews, workerView, type ViewSource } from '../views.js';

export type EventSink = (event: 'build' | 'worker' | 'worker-deleted', data: unknown) => void;

export interface EventHubDeps {
  store: ViewSource & { getBuild(id: string): Promise<Build>; listWorkers(now: number, leaseMs: number): Promise<Worker[]> };
  notifier: Notifier;
  clock: Clock;
  leaseMs: number;
  /** How long hints gather before one round of reads, ms. */
  flushMs?: number;
  /** Fleet re-read period while anyone listens, ms. */
  recheckMs?: number;
  onError(err: unknown): void;
}

/** Builds read per round at most; the rest wait for the next round. */
const MAX_BUILDS_PER_FLUSH = 200;
/** Builds whose last sent shape is remembered. */
const MAX_REMEMBERED = 10_000;

function buildKey(b: Build): string {
  return [b.state, b.attempt, b.workerId, b.cancelRequested, b.startedAt, b.finishedAt].join('|');
}

function workerKey(w: Worker): string {
  return [w.state, w.name, w.labels.join(','), w.status, w.activeBuildCount, w.maxConcurrentBuilds, w.version, w.executor].join('|');
}

export class EventHub {
  /** Listener → what to call when the hub closes under it. */
  private readonly sinks = new Map<EventSink, () => void>();
  private readonly dirty = new Set<string>();
  private fleetDirty = false;
  private readonly sentBuilds = new Map<string, string>();
  private sentWorkers: Map<string, string> | undefined;
  private flushTimer: TimerHandle | undefined;
  private recheckTimer: TimerHandle | undefined;
  private flushing: Promise<void> | undefined;
  private closed = false;
  private readonly unsubscribe: () => void;
  private readonly flushMs: number;
  private readonly recheckMs: number;

  constructor(private readonly deps: EventHubDeps) {
    this.flushMs = deps.flushMs ?? 250;
    this.recheckMs = deps.recheckMs ?? Math.max(1000, Math.min(5000, Math.floor(deps.leaseMs / 4)));
    this.unsubscribe = deps.notifier.subscribe((topic, key) => {
      if (this.sinks.size === 0) return;
      if (topic === 'logs' && key) this.dirty.add(key);
      else this.fleetDirty = true;
      this.schedule();
    });
  }

  /** Number of connected listeners. */
  get size(): number {
    return this.sinks.size;
  }

  /**
   * Adds a listener; `onClose` runs if the hub closes first. Resolves with
   * its removal once the hub knows the fleet as it is now, so every worker
   * change after that is sent (the listener reads the fleet itself first).
   */
  async subscribe(sink: EventSink, onClose: () => void = () => {}): Promise<() => void> {
    this.sinks.set(sink, onClose);
    const remove = () => {
      this.sinks.delete(sink);
      if (this.sinks.size === 0) {
        this.deps.clock.clearTimeout(this.recheckTimer);
        this.recheckTimer = undefined;
        this.sentWorkers = undefined;
      }
    };
    if (this.sinks.size === 1) this.startRecheck();
    if (!this.sentWorkers) {
      try {
        const fleet = (await this.deps.store.listWorkers(this.deps.clock.now(), this.deps.leaseMs)).map(workerView);
        this.sentWorkers ??= new Map(fleet.map((w) => [w.id, workerKey(w)]));
      } catch (err) {
        remove();
        throw err;
      }
    }
    return remove;
  }

  close(): void {
    this.closed = true;
    this.unsubscribe();
    this.deps.clock.clearTimeout(this.flushTimer);
    this.deps.clock.clearTimeout(this.recheckTimer);
    const closers = [...this.sinks.values()];
    this.sinks.clear();
    for (const c of closers) c();
  }

  /** Resolves when the round in progress (if any) is done (tests). */
  async settled(): Promise<void> {
    while (this.flushing) await this.flushing;
  }

  private startRecheck(): void {
    const tick = () => {
      this.recheckTimer = undefined;
      if (this.closed || this.sinks.size === 0) return;
      this.fleetDirty = true;
      this.schedule();
      this.recheckTimer = this.deps.clock.setTimeout(tick, this.recheckMs);
    };
    this.recheckTimer = this.deps.clock.setTimeout(tick, this.recheckMs);
  }

  private schedule(): void {
    if (this.flushTimer || this.closed) return;
    this.flushTimer = this.deps.clock.setTimeout(() => {
      this.flushTimer = undefined;
      if (this.flushing) return this.schedule();
      this.flushing = this.flush()
        .catch((err: unknown) => this.deps.onError(err))
        .finally(() => {
          this.flushing = undefined;
        });
    }, this.flushMs);
  }

  private emit(event: Parameters<EventSink>[0], data: unknown): void {
    for (const sink of [...this.sinks.keys()]) {
      try {
        sink(event, data);
      } catch (err) {
        this.deps.onError(err);
      }
    }
  }

  private async flush(): Promise<void> {
    const { store, clock, leaseMs } = this.deps;
    const ids = [...this.dirty].slice(0, MAX_BUILDS_PER_FLUSH);
    for (const id of ids) this.dirty.delete(id);
    if (this.dirty.size) this.schedule();
    const changed: Build[] = [];
    for (const id of ids) {
      let b: Build;
      try {
        b = await store.getBuild(id);
      } catch (err) {
        if (err instanceof ApiError && err.code === 'BUILD_NOT_FOUND') continue;
        throw err;
      }
      const key = buildKey(b);
      if (this.sentBuilds.get(id) === key) continue;
      this.sentBuilds.delete(id);
      this.sentBuilds.set(id, key);
      if (this.sentBuilds.size > MAX_REMEMBERED) this.sentBuilds.delete(this.sentBuilds.keys().next().value!);
      changed.push(b);
    }
    // A build that moved may have changed its worker's state (building/idle).
    const readFleet = this.fleetDirty || changed.length > 0;
    this.fleetDirty = false;
    if (!readFleet || this.sinks.size === 0) return;
    const now = clock.now();
    const fleet = (await store.listWorkers(now, leaseMs)).map(workerView);
    for (const b of await buildViews(store, changed, now, leaseMs, fleet)) this.emit('build', { build: b });
    const previous = this.sentWorkers ?? new Map<string, string>();
    const next = new Map(fleet.map((w) => [w.id, workerKey(w)]));
    this.sentWorkers = next;
    for (const w of fleet) if (previous.get(w.id) !== next.get(w.id)) this.emit('worker', { worker: w });
    for (const id of previous.keys()) if (!next.has(id)) this.emit('worker-deleted', { id });
  }
}
