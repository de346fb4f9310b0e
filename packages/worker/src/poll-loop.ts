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
 * Events on the agent's emitter: `poll:paused` / `poll:resumed` around a
 * registration, `poll` (the builds handed out) after each answer.
 */
import type { EventEmitter } from 'node:events';
import type { Clock } from '@buildfleet/protocol';
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

export class PollLoop extends Loop {
  constructor(private readonly deps: PollLoopDeps) {
    super('poll', deps.clock);
  }

  /** Resolves when a build ends or the loop stops (a slot may be free). */
  private slotFreed(): Promise<void> {
    const { events } = this.deps;
    return new Promise((resolve) => {
      if (this.stopSignal.aborted) return resolve();
      const on = () => {
        events.off('build:done', on);
        this.stopSignal.removeEventListener('abort', on);
        resolve();
      };
      events.on('build:done', on);
      this.stopSignal.addEventListener('abort', on);
    });
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
      const free = config.maxConcurrentBuilds - builds.size;
      if (free <= 0) {
        this.state = 'waiting';
        await this.slotFreed();
        continue;
      }
      try {
        this.state = 'calling';
        const waitMs = session.settings.pollWaitMs;
        const handed = await session.call((accessToken, workerId) =>
          client.poll({ workerId, accessToken }, { freeSlots: free, activeBuildIds: builds.ids() }, waitMs, { signal: this.stopSignal }),
        );
        this.succeeded();
        since.mono = this.clock.monotonic();
        events.emit('poll', handed);
        for (const b of handed) {
          if (this.stopped) break;
          if (!builds.launch(b)) logger.debug({ buildId: b.id }, 're-delivered build already runs here');
        }
      } catch (err) {
        if (this.stopped || session.fatal) return;
        const n = this.failed();
        const delay = backoffDelay(n, err, this.deps.backoff, this.deps.random);
        const fields = { err: describeError(err), delayMs: delay, failuresInARow: n };
        if (n % 10 === 0) logger.error({ ...fields, sinceMs: Math.round(this.clock.monotonic() - since.mono) }, 'polls keep failing; still trying');
        else logger.warn(fields, 'poll failed');
        this.state = 'backing off';
        if (!(await this.sleep(delay))) return;
      }
    }
  }
}
