/**
 * Watches a running build against the limits no kernel mechanism ends by
 * itself, and notices the ones the kernel enforced: the build cgroup's CPU
 * time, OOM kills and refused forks; without a cgroup, the number of the
 * build's processes; and always its disk usage. The first breach is
 * reported once (`onBreach`); the executor then kills the build and ends it
 * `failed` with the breach's reason.
 *
 * Runs on the injected clock: a check every `intervalMs`, and a disk walk
 * spaced by twenty times as long as the last walk took (at least
 * `diskIntervalMs`), so walking a large workspace costs the build at most
 * about 5% of one core.
 */
import type { Clock, TimerHandle } from '@buildfleet/protocol';
import type { BuildCgroup } from './cgroup.js';
import { diskUsage } from './disk.js';
import { breach, type LimitBreach, type Limits } from './limits.js';

export interface LimitWatcherOptions {
  clock: Clock;
  limits: Limits;
  /** The build's cgroup, when it has one (only its counters are read). */
  cgroup?: Pick<BuildCgroup, 'events' | 'cpuSeconds'>;
  /** Without a cgroup: how many processes the build has now. */
  countProcesses?: () => number;
  /** Directories whose usage counts against `diskMb` (workspace and /tmp). */
  diskDirs: readonly string[];
  onBreach: (b: LimitBreach) => void;
  /** Between checks of the cgroup and the process count, ms (default 250). */
  intervalMs?: number;
  /** Least time between disk walks, ms (default 2000). */
  diskIntervalMs?: number;
}

export class LimitWatcher {
  private timer: TimerHandle | undefined;
  private diskTimer: TimerHandle | undefined;
  private stopped = false;
  private breached: LimitBreach | undefined;

  constructor(private readonly o: LimitWatcherOptions) {}

  /** The first breach seen, if any. */
  get breach(): LimitBreach | undefined {
    return this.breached;
  }

  start(): void {
    const tick = () => {
      if (this.stopped) return;
      this.report(this.check());
      if (!this.stopped) this.timer = this.o.clock.setTimeout(tick, this.o.intervalMs ?? 250);
    };
    this.timer = this.o.clock.setTimeout(tick, this.o.intervalMs ?? 250);
    if (this.o.limits.diskMb !== null && this.o.diskDirs.length > 0) this.scheduleDisk(0);
  }

  stop(): void {
    this.stopped = true;
    this.o.clock.clearTimeout(this.timer);
    this.o.clock.clearTimeout(this.diskTimer);
  }

  /**
   * The limit the kernel enforced or the build crossed, from the cgroup's
   * counters or the process count (not the disk: see `checkDisk`).
   */
  check(): LimitBreach | undefined {
    const { limits, cgroup } = this.o;
    if (cgroup) {
      const ev = cgroup.events();
      if (ev.oomKills > 0 && limits.memoryMb !== null) return breach('memoryMb', limits);
      if (ev.pidsMax > 0 && limits.processes !== null) return breach('processes', limits);
      const cpu = cgroup.cpuSeconds();
      if (cpu !== undefined && limits.cpuSeconds !== null && cpu >= limits.cpuSeconds) {
        return breach('cpuSeconds', limits, `${cpu.toFixed(1)} CPU seconds used`);
      }
    } else if (this.o.countProcesses && limits.processes !== null) {
      const n = this.o.countProcesses();
      if (n >= limits.processes) return breach('processes', limits, `${n} processes running`);
    }
    return undefined;
  }

  /** Walks the disk directories once; the breach when they hold more than `diskMb`. */
  async checkDisk(): Promise<LimitBreach | undefined> {
    const { limits } = this.o;
    if (limits.diskMb === null) return undefined;
    const max = limits.diskMb * 1024 * 1024;
    const used = await diskUsage(this.o.diskDirs, max);
    return used > max ? breach('diskMb', limits, `over ${Math.floor(used / (1024 * 1024))} MiB used`) : undefined;
  }

  private scheduleDisk(delayMs: number): void {
    this.diskTimer = this.o.clock.setTimeout(() => {
      if (this.stopped) return;
      const started = this.o.clock.monotonic();
      void this.checkDisk().then(
        (b) => {
          this.report(b);
          const took = this.o.clock.monotonic() - started;
          if (!this.stopped) this.scheduleDisk(Math.max(this.o.diskIntervalMs ?? 2000, took * 20));
        },
        () => {
          if (!this.stopped) this.scheduleDisk(this.o.diskIntervalMs ?? 2000);
        },
      );
    }, delayMs);
  }

  private report(b: LimitBreach | undefined): void {
    if (!b || this.breached || this.stopped) return;
    this.breached = b;
    this.o.onBreach(b);
  }
}
