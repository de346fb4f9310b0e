/**
 * `npm run bench` flags and the sizes of each section (full or `--quick`).
 *
 *   --quick                 small sizes; the whole run in under two minutes
 *   --only a,b              sections: dispatch, drain, steady, steps, reregister, idle, artifact, peer
 *   --stores sqlite,postgres
 *   --repeat N              run everything N times; the table shows ranges
 *   --fleets 1000,5000      idle fleet sizes
 *   --artifact-mib N        artifact size
 *   --builds N              drain and steady size (peer too)
 *   --shared / --no-shared  one controller per store for all sections (default with --quick) or one per section
 *   --cpu-prof              CPU profiles of the controller during the measured drain and steady phases
 *                           (bench/results/profiles-<timestamp>/<store>-<section>-<rep>/<phase>.cpuprofile)
 *   --out FILE              JSON file (default bench/results/<timestamp>.json)
 */
import { parseArgs } from 'node:util';
import type { StoreKind } from './controller.js';

export const SECTIONS = ['dispatch', 'drain', 'steady', 'steps', 'reregister', 'idle', 'artifact', 'peer'] as const;
export type Section = (typeof SECTIONS)[number];

export interface BenchOptions {
  quick: boolean;
  sections: Section[];
  stores: StoreKind[];
  repeat: number;
  /** One controller per store for every section instead of a fresh one per section. */
  shareController: boolean;
  cpuProf: boolean;
  out: string | undefined;
  dispatchSamples: number;
  drain: { builds: number; workers: number };
  steady: { builds: number; workers: number; submitters: number };
  stepBuilds: number;
  reregister: { parked: number; samples: number };
  idle: { sizes: number[]; windowMs: number; probes: number; settleMs?: number };
  artifactBytes: number;
  skipLockedRows: number;
}

function list(raw: string | undefined): string[] | undefined {
  return raw === undefined ? undefined : raw.split(',').map((s) => s.trim()).filter(Boolean);
}

/** Parses argv; throws with the flag's name on a bad value. */
export function parseOptions(argv: string[]): BenchOptions {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      only: { type: 'string' },
      stores: { type: 'string' },
      repeat: { type: 'string', default: '1' },
      fleets: { type: 'string' },
      'artifact-mib': { type: 'string' },
      builds: { type: 'string' },
      'cpu-prof': { type: 'boolean', default: false },
      shared: { type: 'boolean' },
      'no-shared': { type: 'boolean' },
      out: { type: 'string' },
    },
  });
  const q = values.quick === true;
  const sections = (list(values.only) ?? [...SECTIONS]) as Section[];
  for (const s of sections) if (!SECTIONS.includes(s)) throw new Error(`--only: unknown section "${s}" (one of ${SECTIONS.join(', ')})`);
  const stores = (list(values.stores) ?? ['postgres', 'sqlite']) as StoreKind[];
  for (const s of stores) if (s !== 'sqlite' && s !== 'postgres') throw new Error(`--stores: unknown store "${s}" (sqlite, postgres)`);
  const num = (name: string, raw: string | undefined, fallback: number) => {
    if (raw === undefined) return fallback;
    const n = Number(raw);
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer, got ${raw}`);
    return n;
  };
  const builds = num('builds', values.builds, q ? 200 : 2_000);
  return {
    quick: q,
    sections,
    stores,
    repeat: num('repeat', values.repeat, 1),
    shareController: values['no-shared'] ? false : (values.shared ?? q),
    cpuProf: values['cpu-prof'] === true,
    out: values.out,
    dispatchSamples: q ? 20 : 200,
    drain: { builds, workers: q ? 20 : 100 },
    steady: { builds: q ? 100 : Math.ceil(builds / 2), workers: q ? 20 : 100, submitters: 8 },
    stepBuilds: q ? 5 : 20,
    reregister: { parked: q ? 20 : 100, samples: q ? 30 : 300 },
    idle: {
      sizes: (list(values.fleets) ?? (q ? ['300'] : ['1000', '5000', '10000'])).map((s) => num('fleets', s, 0)),
      windowMs: q ? 3_000 : 35_000,
      // PostgreSQL flushes a backend's xact counts up to 10 s late: let registration's land before the window.
      settleMs: q ? 2_000 : 11_000,
      probes: q ? 10 : 30,
    },
    artifactBytes: num('artifact-mib', values['artifact-mib'], q ? 16 : 1024) * 1024 * 1024,
    skipLockedRows: q ? 5_000 : 20_000,
  };
}
