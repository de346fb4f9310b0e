/**
 * `npm run bench`: buildfleet's control plane measured side by side with
 * graphile-worker 0.17.3 and the raw `FOR UPDATE SKIP LOCKED` claim on the
 * same PostgreSQL, in one run (issue 12). Flags: see `options.ts`; sections:
 * `bench.ts`; the table: `table.ts`. Writes the figures, the table and the
 * raw counts as JSON under bench/results/. Timing targets live here, never
 * in tests.
 */
import { execFileSync } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { cpus, loadavg } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runBench, type RepResults } from './bench.js';
import { parseOptions } from './options.js';
import { pgAvailable } from './pgdb.js';
import { buildTable, formatTable } from './table.js';

const here = dirname(fileURLToPath(import.meta.url));
const git = (...args: string[]) => {
  try {
    return execFileSync('git', args, { cwd: here, encoding: 'utf8' }).trim();
  } catch {
    return '';
  }
};

const opts = parseOptions(process.argv.slice(2));
// The controller children run the compiled packages: never measure a stale build.
execFileSync('npm', ['run', 'build', '--silent'], { cwd: join(here, '..'), stdio: 'inherit' });
if (opts.stores.includes('postgres') && !(await pgAvailable())) {
  console.warn('bench: PostgreSQL at 127.0.0.1:5432 does not answer: running SQLite only, without the peer');
  opts.stores = opts.stores.filter((s) => s !== 'postgres');
}
const stamp = new Date().toISOString().replace(/[:.]/g, '-');
const resultsDir = join(here, 'results');
await mkdir(resultsDir, { recursive: true });
const started = performance.now();
const loadBefore = loadavg();
const commit = git('rev-parse', '--short', 'HEAD');
const dirty = git('status', '--porcelain', '--', '../packages') !== '';
const out = opts.out ?? join(resultsDir, `${stamp}${opts.quick ? '-quick' : ''}.json`);
await mkdir(dirname(out), { recursive: true });
const save = (reps: RepResults[], complete: boolean) =>
  writeFile(
    out,
    JSON.stringify(
      { date: new Date().toISOString(), commit, dirty, complete, options: opts, seconds: (performance.now() - started) / 1000, loadBefore, loadAfter: loadavg(), table: buildTable(reps), runs: reps },
      null,
      2,
    ) + '\n',
  );
const reps = await runBench(opts, (l) => console.log(`bench: ${l}`), join(resultsDir, `profiles-${stamp}`), (r) => save(r, false));
await save(reps, true);
const seconds = (performance.now() - started) / 1000;

console.log(`\nbuildfleet ${commit}${dirty ? ' (packages modified)' : ''}, ${new Date().toISOString()}, ${cpus().length} cores, load ${loadBefore.map((l) => l.toFixed(1)).join(' ')} → ${loadavg().map((l) => l.toFixed(1)).join(' ')}, ${opts.repeat} run(s) in ${seconds.toFixed(0)} s${opts.quick ? ' (--quick)' : ''}`);
console.log(formatTable(buildTable(reps)));
console.log(`\nbench: wrote ${relative(process.cwd(), out)}`);
