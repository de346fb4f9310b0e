/**
 * The builds this worker runs now: one `BuildRun` per build id. The agent's
 * loops launch, list and stop them here; the runs do the work.
 */
import type { AssignedBuild } from '@buildfleet/protocol';
import { BuildRun, type BuildRunDeps, type StopReason } from './build-run.js';

export class ActiveBuilds {
  readonly runs = new Map<string, BuildRun>();
  private _launched = 0;

  constructor(private readonly deps: BuildRunDeps) {}

  /** Ids of builds this worker runs now (sent as `activeBuildIds`). */
  ids(): string[] {
    return [...this.runs.keys()];
  }
  get size(): number {
    return this.runs.size;
  }
  /** Builds launched since the worker started (`--once` takes one). */
  get launched(): number {
    return this._launched;
  }
  /** Ids of builds not being stopped yet: those whose cancel a poll watches for (`watchCancel`). */
  cancelable(): string[] {
    return [...this.runs.values()].filter((r) => r.stopping === undefined && r.phase !== 'done').map((r) => r.id);
  }

  /**
   * Starts a build unless one with this id already runs here (a poll may
   * re-deliver it; an older attempt of it is stopped as lost); returns the
   * run, or undefined when ignored. Emits `build:launched` (id) at once and
   * `build:done` (id) when the run ends.
   */
  launch(build: AssignedBuild): BuildRun | undefined {
    const existing = this.runs.get(build.id);
    if (existing) {
      // A newer attempt of a build that runs here (say the worker was deleted
      // and got it back under a new identity): the old attempt is void, so it
      // goes at once; the newer one is re-delivered by a poll once it is gone.
      if (build.attempt > existing.attempt) existing.stop('lost', `superseded by attempt ${build.attempt}`);
      return undefined;
    }
    const run = new BuildRun(build, this.deps);
    this.runs.set(build.id, run);
    this._launched++;
    this.deps.events.emit('build:launched', build.id);
    void run.done.finally(() => {
      if (this.runs.get(build.id) === run) this.runs.delete(build.id);
      this.deps.events.emit('build:done', build.id);
    });
    return run;
  }

  stop(buildId: string, reason: StopReason, message?: string): void {
    this.runs.get(buildId)?.stop(reason, message);
  }

  stopAll(reason: StopReason, message?: string): void {
    for (const r of this.runs.values()) r.stop(reason, message);
  }

  /** Resolves when no build runs. */
  async idle(): Promise<void> {
    while (this.runs.size > 0) await Promise.all([...this.runs.values()].map((r) => r.done));
  }
}
