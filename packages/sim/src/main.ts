/**
 * `npm run sim -- --seeds N`: runs the deterministic simulation for seeds
 * 1..N (or `--start S --seeds N`: S..S+N-1, or one `--seed S`), prints one
 * line per failing seed with its violations, the trace tail and the command
 * that replays it, then `N passed, M failed`; exits 1 on any failure.
 *
 * Options: --trace (print the whole trace of each seed run), --stats (sum of
 * outcomes, retries and lost attempts over the seeds), --workers N,
 * --builds N, --digest (print each seed's trace digest, to compare runs),
 * --quiet (no progress dots).
 *
 * Determinism needs file I/O to complete in the order it was started, so the
 * process re-runs itself with UV_THREADPOOL_SIZE=1 when that is not set.
 */
import { spawn } from 'node:child_process';

/** Seeds per child process (`SIM_CHUNK`): fresh processes keep a long run's memory bounded whatever a run leaves behind. */
const CHUNK = Number(process.env.SIM_CHUNK ?? 500);

if (process.env.UV_THREADPOOL_SIZE !== '1') {
  // Parent: run the seeds in child processes of at most CHUNK seeds each, then sum up.
  const argv = process.argv.slice(2);
  const val = (name: string) => {
    const i = argv.lastIndexOf(name);
    return i >= 0 ? Number(argv[i + 1]) : undefined;
  };
  const single = val('--seed');
  const start = single ?? val('--start') ?? 1;
  const count = single !== undefined ? 1 : (val('--seeds') ?? 100);
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (['--seed', '--start', '--seeds'].includes(argv[i]!)) i++;
    else rest.push(argv[i]!);
  }
  let passed = 0;
  let failed = 0;
  let status = 0;
  const failing: string[] = [];
  const t0 = performance.now();
  for (let s = start; s < start + count; s += CHUNK) {
    const n = Math.min(CHUNK, start + count - s);
    // Stream the child's output (progress dots, failures) and keep it to find its summary.
    const child = spawn(process.execPath, [...process.execArgv, process.argv[1]!, '--start', String(s), '--seeds', String(n), ...rest], {
      stdio: ['inherit', 'pipe', 'inherit'],
      env: { ...process.env, UV_THREADPOOL_SIZE: '1' },
    });
    let out = '';
    let shown = 0;
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString();
      // Hold back the last line: it may be the summary, which a chunked run replaces with its own.
      const cut = count > CHUNK ? out.lastIndexOf('\n') + 1 : out.length;
      if (cut > shown) {
        process.stdout.write(out.slice(shown, cut));
        shown = cut;
      }
    });
    const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
    const r = { status: code };
    const m = /\n(\d+) passed, (\d+) failed \(seeds[^\n]*?(?:failing seeds: ([\d ]+))?\n?$/.exec(out);
    if (count <= CHUNK || !m) process.stdout.write(out.slice(shown));
    if (m) {
      passed += Number(m[1]);
      failed += Number(m[2]);
      if (m[3]) failing.push(m[3].trim());
    } else {
      failed += n;
      failing.push(`${s}..${s + n - 1} (the child process ended with status ${r.status})`);
    }
    if (r.status !== 0) status = 1;
  }
  if (count > CHUNK) {
    const secs = ((performance.now() - t0) / 1000).toFixed(1);
    console.log(`\n${passed} passed, ${failed} failed (seeds ${start}..${start + count - 1}, ${secs}s)${failing.length ? `; failing seeds: ${failing.join(' ')}` : ''}`);
  }
  process.exit(status);
}

const { runSeed } = await import('./simulate.js');

interface Args {
  start: number;
  count: number;
  trace: boolean;
  digest: boolean;
  quiet: boolean;
  stats: boolean;
  workers?: number;
  builds?: number;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { start: 1, count: 100, trace: false, digest: false, quiet: false, stats: false };
  const num = (i: number, name: string) => {
    const n = Number(argv[i]);
    if (!Number.isInteger(n) || n < 0) throw new Error(`${name} needs a non-negative integer, got ${argv[i]}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--seeds') a.count = num(++i, arg);
    else if (arg === '--start') a.start = num(++i, arg);
    else if (arg === '--seed') {
      a.start = num(++i, arg);
      a.count = 1;
    } else if (arg === '--trace') a.trace = true;
    else if (arg === '--digest') a.digest = true;
    else if (arg === '--quiet') a.quiet = true;
    else if (arg === '--stats') a.stats = true;
    else if (arg === '--workers') a.workers = num(++i, arg);
    else if (arg === '--builds') a.builds = num(++i, arg);
    else if (arg === '--help' || arg === '-h') {
      console.log('usage: npm run sim -- [--seeds N] [--start S] [--seed S] [--trace] [--digest] [--stats] [--workers N] [--builds N] [--quiet]');
      process.exit(0);
    } else throw new Error(`unknown option ${arg}`);
  }
  return a;
}

let args: Args;
try {
  args = parseArgs(process.argv.slice(2));
} catch (err) {
  console.error((err as Error).message);
  process.exit(2);
}

let passed = 0;
let failed = 0;
const failedSeeds: number[] = [];
const t0 = performance.now();
const totals: Record<string, number> = {};
for (let seed = args.start; seed < args.start + args.count; seed++) {
  const r = await runSeed({ seed, ...(args.workers ? { workers: args.workers } : {}), ...(args.builds ? { builds: args.builds } : {}) });
  if (args.trace) for (const e of r.trace.events) console.log(e);
  for (const [k, n] of Object.entries(r.stats)) totals[k] = (totals[k] ?? 0) + n;
  if (args.digest) console.log(`seed ${seed} digest ${r.trace.digest()} steps ${r.stats.steps}`);
  if (r.ok) {
    passed++;
    if (!args.quiet && !args.trace && !args.digest && args.count > 1) process.stdout.write(passed % 100 === 0 ? `${seed}\n` : '.');
  } else {
    failed++;
    failedSeeds.push(seed);
    const extra = [args.workers ? `--workers ${args.workers}` : '', args.builds ? `--builds ${args.builds}` : ''].filter(Boolean).join(' ');
    console.log(`\nFAIL seed ${seed}:`);
    for (const v of r.violations) console.log(`  - ${v}`);
    if (!args.trace) {
      console.log('  last events:');
      for (const e of r.trace.tail(60)) console.log(`    ${e}`);
    }
    console.log(`  replay: npm run sim -- --seed ${seed} --trace${extra ? ' ' + extra : ''}`);
  }
}
const secs = ((performance.now() - t0) / 1000).toFixed(1);
if (args.stats) {
  console.log('\ntotals over the run:');
  for (const k of Object.keys(totals).sort()) console.log(`  ${k.padEnd(32)} ${totals[k]}`);
}
console.log(`\n${passed} passed, ${failed} failed (seeds ${args.start}..${args.start + args.count - 1}, ${secs}s)${failed ? `; failing seeds: ${failedSeeds.join(' ')}` : ''}`);
process.exit(failed ? 1 : 0);
