/**
 * The fence loop (docs/protocol.md "What a worker must do"): a build whose lease was not
 * renewed for `leaseMs` is stopped, because the controller hands it to
 * someone else. It checks every `min(heartbeatIntervalMs, leaseMs / 4)`.
 * Only builds whose script may still run are fenced: one that is reporting
 * has nothing left to stop, and its writes are bounded by their retry
 * budgets (a write of a lost attempt gets 409 LEASE_LOST and is dropped).
 *
 * Events: `build:fenced` (build id).
 */
import type { EventEmitter } from 'node:events';
import type { Clock } from '@buildfleet/protocol';
import type { ActiveBuilds } from './active-builds.js';
import type { Logger } from './logger.js';
import { Loop } from './loop.js';
import type { Session } from './session.js';

/** When each running build's lease was last renewed (monotonic ms of the heartbeat's send time). */
export class Leases {
  private readonly at = new Map<string, number>();
  renewed(buildId: string, mono: number): void {
    this.at.set(buildId, mono);
  }
  lastRenewed(buildId: string): number | undefined {
    return this.at.get(buildId);
  }
  forget(buildId: string): void {
    this.at.delete(buildId);
  }
}

export interface FenceLoopDeps {
  clock: Clock;
  logger: Logger;
  events: EventEmitter;
  session: Session;
  builds: ActiveBuilds;
  leases: Leases;
}

export class FenceLoop extends Loop {
  constructor(private readonly deps: FenceLoopDeps) {
    super('fence', deps.clock);
  }

  protected async body(): Promise<void> {
    for (;;) {
      const s = this.deps.session.settings;
      this.state = 'waiting';
      if (!(await this.sleep(Math.max(10, Math.min(s.heartbeatIntervalMs, Math.floor(s.leaseMs / 4)))))) return;
      this.check();
      this.succeeded();
    }
  }

  /** Stops every build whose script still runs and whose lease was not renewed for `leaseMs`. */
  check(): void {
    const { logger, events, session, builds, leases } = this.deps;
    const now = this.clock.monotonic();
    const leaseMs = session.settings.leaseMs;
    for (const run of builds.runs.values()) {
      const started = run.leaseStartedMono;
      if (started === undefined || run.phase === 'done' || run.phase === 'reporting') continue;
      const last = Math.max(started, leases.lastRenewed(run.id) ?? -Infinity);
      if (now - last >= leaseMs) {
        logger.warn({ buildId: run.id, sinceMs: now - last, leaseMs }, 'lease not renewed for leaseMs: stopping the build (fencing)');
        events.emit('build:fenced', run.id);
        run.stop('lost', `fenced: lease not renewed for ${leaseMs}ms`);
      }
    }
  }
}
