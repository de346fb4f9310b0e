/**
 * The heartbeat loop: every `heartbeatIntervalMs` it sends the ids of the
 * builds running here (`ControllerClient.heartbeat`, through the session),
 * records which leases were renewed (for the fence loop), and acts on the
 * answer: `cancel` → graceful stop and `canceled`; `abandon` → kill and drop;
 * `draining` → the agent is told (it takes no new builds until resumed). A failed heartbeat is logged (with the
 * time since the last good one) and not retried: the next one is the retry,
 * and fencing stops builds whose lease could not be renewed for `leaseMs`.
 *
 * Events: `heartbeat` (HeartbeatResponse), `heartbeat:error` (the error).
 */
import type { EventEmitter } from 'node:events';
import type { Clock } from '@buildfleet/protocol';
import type { ActiveBuilds } from './active-builds.js';
import type { ControllerClient } from './client/controller-client.js';
import { describeError } from './client/retry.js';
import type { WorkerConfig } from './config.js';
import type { Leases } from './fence-loop.js';
import type { Logger } from './logger.js';
import { Loop } from './loop.js';
import type { Session } from './session.js';

export interface HeartbeatLoopDeps {
  clock: Clock;
  config: WorkerConfig;
  logger: Logger;
  events: EventEmitter;
  client: ControllerClient;
  session: Session;
  builds: ActiveBuilds;
  leases: Leases;
  /** Told the controller's `draining` flag of every answer (`POST /workers/{id}/drain` / `resume`). */
  onDraining: (draining: boolean) => void;
}

export class HeartbeatLoop extends Loop {
  constructor(private readonly deps: HeartbeatLoopDeps) {
    super('heartbeat', deps.clock);
  }

  protected async body(): Promise<void> {
    for (;;) {
      this.state = 'waiting';
      if (!(await this.sleep(this.deps.session.settings.heartbeatIntervalMs))) return;
      await this.beat();
    }
  }

  /**
   * A heartbeat unanswered for a third of the lease gives way (and the
   * connection moves to the next controller URL), so a controller that stops
   * answering costs at most that much of the lease, never the whole of it.
   */
  private timeoutMs(): number {
    return Math.min(this.deps.config.requestTimeoutMs, Math.max(1_000, Math.floor(this.deps.session.settings.leaseMs / 3)));
  }

  /** One heartbeat: renews the leases of the listed builds, acts on cancel/abandon/draining. */
  async beat(): Promise<void> {
    const { logger, events, client, session, builds, leases } = this.deps;
    const ids = builds.ids();
    const sentAt = this.clock.monotonic();
    this.state = 'calling';
    try {
      const res = await session.call((accessToken, workerId) =>
        client.heartbeat({ workerId, accessToken }, { activeBuildIds: ids }, this.timeoutMs(), { signal: this.stopSignal }),
      );
      this.succeeded();
      const abandoned = new Set(res.abandon);
      for (const id of ids) if (!abandoned.has(id)) leases.renewed(id, sentAt);
      for (const id of res.cancel) builds.stop(id, 'canceled', 'cancellation requested');
      for (const id of res.abandon) builds.stop(id, 'lost', 'abandoned: the controller says this worker no longer owns it');
      this.deps.onDraining(res.draining === true);
      events.emit('heartbeat', res);
    } catch (err) {
      if (this.stopped) return;
      const n = this.failed();
      const last = this.status.lastSuccessMono;
      logger.warn(
        { err: describeError(err), failuresInARow: n, sinceLastMs: last === undefined ? undefined : Math.round(this.clock.monotonic() - last) },
        'heartbeat failed; the next one tries again',
      );
      events.emit('heartbeat:error', err);
    }
  }
}
