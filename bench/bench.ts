/**
 * Runs the selected sections for each store and the peer, `repeat` times.
 * Every buildfleet section gets a fresh controller (child process) on a
 * fresh store (with `shareController`, as `--quick` does, one per store);
 * the peer gets fresh databases of the same PostgreSQL.
 */
import { mkdir } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { startController, type ControllerHandle, type StoreKind } from './controller.js';
import type { BenchOptions, Section } from './options.js';
import type { GraphileResult } from './peer/graphile.js';
import { skipLocked } from './peer/skiplocked.js';
import { artifact, type ArtifactResult } from './sections/artifact.js';
import { idle, type IdleResult } from './sections/idle.js';
import { dispatch, drain, steady, steps, type DrainResult, type StepCounts, type SteadyResult } from './sections/lifecycle.js';
import { reregister } from './sections/reregister.js';
import { round, type Latency } from './stats.js';

export interface StoreResults {
  dispatch?: Latency;
  drain?: DrainResult;
  steady?: SteadyResult;
  steps?: StepCounts;
  reregister?: Latency;
  idle?: IdleResult[];
  artifact?: ArtifactResult;
}

export interface PeerResults {
  graphile: GraphileResult;
  skipLocked: { rows: number; connections: number; rowsPerSecond: number };
}

export interface RepResults {
  stores: Partial<Record<StoreKind, StoreResults>>;
  peer?: PeerResults;
  /** 1-minute load average before each section: the machine is shared. */
  load: Record<string, number>;
  /** Wall-clock seconds per section, controller start and stop included. */
  seconds: Record<string, number>;
}

type Log = (line: string) => void;

/**
 * Runs everything `opts` selects; `profileDir` receives the controllers' CPU
 * profiles with `cpuProf`; `onSection` sees the results so far after each
 * section (a crash later keeps them).
 */
export async function runBench(opts: BenchOptions, log: Log, profileDir?: string, onSection?: (reps: RepResults[]) => Promise<void>): Promise<RepResults[]> {
  const reps: RepResults[] = [];
  for (let rep = 0; rep < opts.repeat; rep++) {
    const r: RepResults = { stores: {}, load: {}, seconds: {} };
    reps.push(r);
    const has = (s: Section) => opts.sections.includes(s);
    if (has('peer') && opts.stores.includes('postgres')) {
      r.load.peer = loadavg()[0]!;
      log(`[${rep + 1}/${opts.repeat}] peer: graphile-worker 0.17.3, raw SKIP LOCKED`);
      const t0 = performance.now();
      // Imported here: a checkout whose node_modules predate the peer still runs the rest.
      const { graphile } = await import('./peer/graphile.js');
      r.peer = {
        graphile: await graphile({ dispatch: opts.dispatchSamples, drain: opts.drain.builds, steady: opts.steady.builds }),
        skipLocked: await skipLocked(opts.skipLockedRows),
      };
      r.seconds.peer = round((performance.now() - t0) / 1000, 1);
      await onSection?.(reps);
    }
    for (const store of opts.stores) {
      const s: StoreResults = {};
      r.stores[store] = s;
      // A fresh controller per section (or one per store with `shareController`); stopped even when a section throws.
      // The result lands in `s[section]` (StoreResults' keys are the section names).
      let shared: ControllerHandle | undefined;
      const fresh = async <K extends Exclude<Section, 'peer'>>(section: K, fn: (ctl: ControllerHandle) => Promise<StoreResults[K]>): Promise<void> => {
        if (!has(section)) return;
        r.load[`${store}.${section}`] = loadavg()[0]!;
        log(`[${rep + 1}/${opts.repeat}] ${store}: ${section}`);
        const t0 = performance.now();
        const ctl = shared ?? (await start(`${store}-${opts.shareController ? 'all' : section}-${rep + 1}`));
        if (opts.shareController) shared = ctl;
        try {
          s[section] = await fn(ctl);
        } finally {
          if (!opts.shareController) await ctl.stop();
          r.seconds[`${store}.${section}`] = round((performance.now() - t0) / 1000, 1);
          await onSection?.(reps);
        }
      };
      const start = async (name: string) => {
        const dir = profileDir && opts.cpuProf ? join(profileDir, name) : undefined;
        if (dir) await mkdir(dir, { recursive: true });
        return startController(store, dir ? { cpuProfDir: dir } : {});
      };
      await fresh('dispatch', (c) => dispatch(c, opts.dispatchSamples));
      await fresh('drain', (c) => drain(c, opts.drain.builds, opts.drain.workers));
      await fresh('steady', (c) => steady(c, opts.steady.builds, opts.steady.workers, opts.steady.submitters));
      await fresh('steps', (c) => steps(c, opts.stepBuilds));
      await fresh('reregister', (c) => reregister(c, opts.reregister.parked, opts.reregister.samples));
      await fresh('idle', (c) => idle(c, opts.idle.sizes, opts.idle));
      await fresh('artifact', (c) => artifact(c, opts.artifactBytes));
      await shared?.stop();
    }
  }
  return reps;
}
