/**
 * Who among the parked long polls looks at the queue when a build may be
 * available (docs/design.md "An idle fleet costs the database nothing per
 * worker"): instead of waking every parked poll on a 'builds' hint (each
 * then runs a claim under its worker's row lock, so a submit would cost one
 * query per connected worker), parked polls are woken one at a time, oldest
 * first, and a cheap `hasQueuedBuilds` check between them ends the round as
 * soon as the queue is empty. A submit then costs about three queries: check,
 * one claim, check.
 *
 * A parked poll that was tried and found nothing is not tried again by the
 * periodic re-check until the next real hint (the queue only changes with
 * one; the re-check covers lost hints for polls that parked since).
 */
import type { Clock } from '@buildfleet/protocol';
import type { WakeChannel } from './wakeups.js';

/** Longest a round waits for a woken poll to report, ms (a poll that went away). */
const REPORT_TIMEOUT_MS = 5_000;

export class PollDispatcher {
  private running = false;
  private again: 'hint' | 'recheck' | undefined;
  private readonly triedSinceHint = new Set<string>();
  private readonly reports = new Map<string, (claimed: number) => void>();

  constructor(
    private readonly channel: WakeChannel,
    private readonly hasQueuedBuilds: () => Promise<boolean>,
    private readonly clock: Clock,
    private readonly onError: (err: unknown) => void = () => {},
  ) {}

  /**
   * A poll for `workerId` finished a claim round after a wake-up; `claimed`
   * builds were handed to it. Lets the dispatcher move on.
   */
  report(workerId: string, claimed: number): void {
    const resolve = this.reports.get(workerId);
    if (resolve) {
      this.reports.delete(workerId);
      resolve(claimed);
    }
  }

  /**
   * A 'builds' hint (`recheck` false) or the periodic re-check (`recheck`
   * true). Rounds never overlap; a hint during a round runs one more round.
   */
  async poke(recheck = false): Promise<void> {
    if (this.channel.interested === 0 || this.channel.isClosed) {
      if (!recheck) this.triedSinceHint.clear();
      return;
    }
    if (this.running) {
      if (!recheck || this.again === undefined) this.again = recheck ? 'recheck' : 'hint';
      return;
    }
    this.running = true;
    try {
      let kind: 'hint' | 'recheck' | undefined = recheck ? 'recheck' : 'hint';
      while (kind && !this.channel.isClosed) {
        this.again = undefined;
        if (kind === 'hint') this.triedSinceHint.clear();
        await this.round();
        kind = this.again;
      }
    } catch (err) {
      this.onError(err);
    } finally {
      this.running = false;
    }
  }

  private async round(): Promise<void> {
    for (;;) {
      let queued = true;
      try {
        queued = await this.hasQueuedBuilds();
      } catch (err) {
        // Wake one poll anyway: it will answer with the store's error.
        this.onError(err);
      }
      if (!queued) return;
      const key = this.channel.parkedKeys().find((k) => !this.triedSinceHint.has(k));
      if (key === undefined) return;
      this.triedSinceHint.add(key);
      await this.wakeAndWait(key);
    }
  }

  private wakeAndWait(key: string): Promise<number> {
    return new Promise<number>((resolve) => {
      const timer = this.clock.setTimeout(() => finish(0), REPORT_TIMEOUT_MS);
      const finish = (claimed: number) => {
        this.clock.clearTimeout(timer);
        if (this.reports.get(key) === finish) this.reports.delete(key);
        resolve(claimed);
      };
      this.reports.set(key, finish);
      this.channel.wake(key);
    });
  }
}
