/**
 * Keeps `npm run bench` from rotting: every section and the peer at a tiny
 * size (a handful of builds), through the same code paths as a full run.
 * No timing is asserted (timing targets live in the bench): only that each
 * section completes and counts what it claims to count.
 */
import { describe, expect, it } from 'vitest';
import { runBench } from './bench.js';
import { parseOptions } from './options.js';
import { pgAvailable } from './pgdb.js';
import { buildTable, formatTable } from './table.js';

const hasPg = await pgAvailable();
const hasPeer = await import('graphile-worker').then(
  () => true,
  () => false,
);
if (process.env.CI !== 'true') {
  if (!hasPg) console.warn('\n!! bench.test.ts: PostgreSQL did not answer; the PostgreSQL part and the peer are SKIPPED\n');
  else if (!hasPeer) console.warn('\n!! bench.test.ts: graphile-worker is not installed (run npm install); the PostgreSQL part is SKIPPED\n');
}

function tiny(argv: string[]) {
  const o = parseOptions(['--quick', ...argv]);
  return {
    ...o,
    dispatchSamples: 3,
    drain: { builds: 5, workers: 2 },
    steady: { builds: 5, workers: 2, submitters: 2 },
    stepBuilds: 2,
    reregister: { parked: 2, samples: 3 },
    idle: { sizes: [3], windowMs: 200, probes: 2, settleMs: 0 },
    artifactBytes: 2 * 1024 * 1024,
    skipLockedRows: 50,
  };
}

describe('npm run bench at a tiny size', () => {
  it('runs every section on SQLite and fills the table', async () => {
    const [rep] = await runBench(tiny(['--stores', 'sqlite']), () => {});
    const s = rep!.stores.sqlite!;
    expect(s.dispatch!.n).toBe(3);
    expect(s.drain!.buildsPerSecond).toBeGreaterThan(0);
    expect(s.steady!.latency.n).toBe(5);
    // Counted at the driver and attributed to the five lifecycle routes.
    expect(s.steps!.statementsPerBuild).toBeGreaterThanOrEqual(5);
    expect(s.steps!.steps['POST /builds/:id/finish']!.statements).toBeGreaterThan(0);
    expect(s.reregister!.n).toBe(3);
    expect(s.idle![0]!.dispatch.n).toBe(2);
    expect(s.artifact!.bytes).toBe(2 * 1024 * 1024);
    const table = formatTable(buildTable([rep!]));
    expect(table).toMatch(/dispatch p50.*\|\s+–\s+\|\s+\d/);
  }, 120_000);

  it.runIf((hasPg && hasPeer) || process.env.CI === 'true')('counts PostgreSQL statements and runs the peer', async () => {
    expect(hasPg, 'PostgreSQL is required in CI').toBe(true);
    expect(hasPeer, 'graphile-worker (a root devDependency) is required in CI').toBe(true);
    const [rep] = await runBench(tiny(['--stores', 'postgres', '--only', 'steps,peer']), () => {});
    expect(rep!.stores.postgres!.steps!.statementsPerBuild).toBeGreaterThanOrEqual(5);
    expect(rep!.peer!.graphile.steady.statementsPerJob).toBeGreaterThan(0);
    expect(rep!.peer!.skipLocked.rows).toBe(50);
  }, 120_000);
});
