/**
 * The poll loop: while the worker takes builds and has a free slot, it long
 * polls (`ControllerClient.poll`, through the session so a 401 becomes one
 * re-registration) and hands what comes back to the active builds. It waits
 * at the session's gate while a registration is in flight (flow 2: no poll
 * with a token being replaced). It never gives up while the worker runs: a
 * failed poll is logged and followed by a jittered, growing pause (an error
 * line every 10 failures in a row says for how long the controller has
 * been unreachable).
 *
 * Cancels on the poll (docs/protocol.md "poll", `watchCancel`): when the
 * controller announced `settings.watchCancel`, every poll lists the builds
 * running here that are not being stopped yet, and the controller answers
 * at once when a cancel is requested for one of them, so a cancel reaches
 * the build within a round trip instead of at the next heartbeat. With
 * every slot busy the loop keeps such a poll parked (`freeSlots: 0`); a
 * build ending cuts it short, so the next poll can take builds again. While
 * the worker drains (`drain()`) it takes no builds but keeps watching
 * cancels of the builds that still run.
 *
 * Events on the agent's emitter: `poll:paused` / `poll:resumed` around a
 * registration, `poll` (the builds handed out) after each answer,
 * `poll:cancel` (ids) when an answer asked for cancels.
 */
import type { EventEmitter } from 'node:events';
import type { Clock, PollRequest } from '@buildfleet/protocol';
import type { ActiveBuilds } from './active-builds.js';
import type { ControllerClient } from './client/controller-client.js';
import { backoffDelay, describeError, type Backoff } from './client/retry.js';
import type { WorkerConfig } from './config.js';
import type { Logger } from './logger.js';
import { Loop } from './loop.js';
import type { Session } from './session.js';

export interface PollLoopDeps {
  clock: Clock;
  config: WorkerConfig;
  logger: Logger;
  events: EventEmitter;
  client: ControllerClient;
  session: Session;
  builds: ActiveBuilds;
  backoff: Backoff;
  random: () => number;
}

/** Why a poll was cut short by the loop itself (not a failure). */
class CutShort extends Error {}

export class PollLoop extends Loop {
  private takingBuilds = true;
  /** Aborts the poll in flight (a slot freed under a watch-only poll, or a drain began). */
  private current: AbortController | undefined;
  /** Ends the wait of `somethingChanged`, if the loop waits there. */
  private wakeUp: (() => void) | undefined;

  constructor(private readonly deps: PollLoopDeps) {
    super('poll', deps.clock);
  }

  /**
   * Takes no more builds (a poll in flight is cut short); keeps watching
   * cancels of the builds still running until `stop()`.
   */
  drain(): void {
    if (!this.takingBuilds) return;
    this.takingBuilds = false;
    this.current?.abort(new CutShort('draining'));
    this.wakeUp?.();
  }

  /** Resolves when a build ends, the loop drains, or the loop stops (a slot may be free, or the watch list changed). */
  private somethingChanged(): Promise<void> {
    const { events } = this.deps;
    return new Promise((resolve) => {
      if (this.stopSignal.aborted) return resolve();
      const on = () => {
        events.off('build:done', on);
        this.stopSignal.removeEventListener('abort', on);
        this.wakeUp = undefined;
        resolve();
      };
      events.on('build:done', on);
      this.stopSignal.addEventListener('abort', on);
      this.wakeUp = on;
    });
  }

  /** Sleeps `ms` on the clock, ended early by a build ending, a drain or a stop. */
  private async pause(ms: number): Promise<void> {
    const { events } = this.deps;
    const ac = new AbortController();
    const on = () => ac.abort();
    events.on('build:done', on);
    this.wakeUp = on;
    try {
      await this.clock.sleep(ms, AbortSignal.any([this.stopSignal, ac.signal]));
    } catch {
      // woken early
    } finally {
      events.off('build:done', on);
      if (this.wakeUp === on) this.wakeUp = undefined;
    }
  }

  protected async body(): Promise<void> {
    const { config, logger, events, client, session, builds } = this.deps;
    const since = { mono: this.clock.monotonic() };
    while (!this.stopped) {
      if (session.registering) {
        this.state = 'paused';
        events.emit('poll:paused');
        try {
          await session.ready();
        } catch {
          return; // fatal: the agent stops
        }
        events.emit('poll:resumed');
        if (this.stopped) return;
      }
      // `--once`: one build in the worker's life, so never ask for more.
      const slots = config.once ? Math.min(config.maxConcurrentBuilds, 1 - builds.launched) : config.maxConcurrentBuilds;
      const free = this.takingBuilds ? Math.max(0, slots - builds.size) : 0;
      const watchCancel = session.settings.watchCancel === true ? builds.cancelable() : undefined;
      if (free === 0 && !watchCancel?.length) {
        this.state = 'waiting';
        await this.somethingChanged();
        continue;
      }
      const body: PollRequest = { freeSlots: free, activeBuildIds: builds.ids(), ...(watchCancel ? { watchCancel } : {}) };
      const ac = new AbortController();
      this.current = ac;
      // A poll that only watches cancels gives way when a slot frees: the next one takes builds.
      const slotFreed = () => ac.abort(new CutShort('a slot freed'));
      if (free === 0 && this.takingBuilds) events.on('build:done', slotFreed);
      const signal = AbortSignal.any([this.stopSignal, ac.signal]);
      try {
        this.state = 'calling';
        const waitMs = session.settings.pollWaitMs;
        const sentAt = this.clock.monotonic();
        const answer = await session.call((accessToken, workerId) => client.poll({ workerId, accessToken }, body, waitMs, { signal }));
        this.succeeded();
        since.mono = this.clock.monotonic();
        if (free === 0 && answer.builds.length + answer.cancel.length === 0 && since.mono - sentAt < waitMs / 2) {
          // Nothing, long before the wait ran out: this controller does not park watch-only
          // polls (an older one behind the same address during an upgrade, or one closing).
          // Not again before a heartbeat interval or a change here; heartbeats bring cancels meanwhile.
          this.state = 'waiting';
          await this.pause(session.settings.heartbeatIntervalMs);
          continue;
        }
        if (answer.cancel.length > 0) {
          for (const id of answer.cancel) builds.stop(id, 'canceled', 'cancellation requested');
          events.emit('poll:cancel', answer.cancel);
        }
        events.emit('poll', answer.builds);
        for (const b of answer.builds) {
          if (this.stopped) break;
          if (!builds.launch(b)) logger.debug({ buildId: b.id }, 're-delivered build already runs here');
        }
      } catch (err) {
        if (this.stopped || session.fatal) return;
        if (ac.signal.aborted) continue; // cut short on purpose: poll again at once
        const n = this.failed();
        const delay = backoffDelay(n, err, this.deps.backoff, this.deps.random);
        const fields = { err: describeError(err), delayMs: delay, failuresInARow: n };
        if (n % 10 === 0) logger.error({ ...fields, sinceMs: Math.round(this.clock.monotonic() - since.mono) }, 'polls keep failing; still trying');
        else logger.warn(fields, 'poll failed');
        this.state = 'backing off';
        if (!(await this.sleep(delay))) return;
      } finally {
        events.off('build:done', slotFreed);
        if (this.current === ac) this.current = undefined;
      }
    }
  }
}
