/**
 * Idle fleets: N workers long-polling one controller and nothing to do. For
 * each fleet size (grown on one controller) it measures, over a window, the
 * controller's CPU and RSS, the database's transactions per second
 * (PostgreSQL: `pg_stat_database.xact_commit`; both: counted at the driver),
 * then the dispatch latency of builds submitted into the idle fleet.
 * Workers live in child processes of at most `perChild` each (file
 * descriptors, and the load generator's CPU).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { ControllerHandle } from '../controller.js';
import { cpuMs, rssBytes } from '../proc.js';
import { deferred, latency, nowMs, round, sleep, type Latency } from '../stats.js';
import { submitBuild } from '../wire.js';

const CHILD = fileURLToPath(new URL('../fleet-child.ts', import.meta.url));
const MiB = 1024 * 1024;

export interface IdleResult {
  workers: number;
  windowSeconds: number;
  /** Controller CPU over the window, % of one core. */
  cpuPercent: number;
  rssMiB: { mean: number; max: number };
  /** PostgreSQL's own count (null on SQLite). */
  xactPerSecond: number | null;
  /** Counted at the driver: BEGINs plus autocommit statements. */
  transactionsPerSecond: number;
  statementsPerSecond: number;
  /** Submit → some idle worker holds it, ms. */
  dispatch: Latency;
  /** Seconds it took to register and park the workers added for this size. */
  registerSeconds: number;
}

export async function idle(ctl: ControllerHandle, sizes: number[], opts: { windowMs: number; probes: number; perChild?: number; settleMs?: number }): Promise<IdleResult[]> {
  const perChild = opts.perChild ?? 5_000;
  const children: ChildProcess[] = [];
  let waiting: ((at: number) => void) | undefined;
  let have = 0;
  const results: IdleResult[] = [];
  try {
    for (const size of sizes) {
      const r0 = performance.now();
      const parked: Promise<void>[] = [];
      while (have < size) {
        const count = Math.min(perChild - (have % perChild), size - have);
        const child = fork(CHILD, [], {
          execArgv: ['--import', 'tsx', '--conditions=source'],
          env: { ...process.env, BENCH_FLEET: JSON.stringify({ url: ctl.url, count, prefix: `idle-${children.length}`, waitMs: 30_000 }) },
          stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
        });
        children.push(child);
        const ready = deferred();
        child.on('message', (m: { type: string; at?: number; message?: string }) => {
          if (m.type === 'parked') ready.resolve();
          else if (m.type === 'got') waiting?.(m.at!);
          else if (m.type === 'error') console.error(`bench: fleet child: ${m.message}`);
        });
        child.once('exit', (code) => ready.reject(new Error(`fleet child exited with ${code} before its workers were parked`)));
        parked.push(ready.promise);
        have += count;
      }
      await Promise.all(parked);
      const registerSeconds = round((performance.now() - r0) / 1000, 1);
      await sleep(opts.settleMs ?? 2_000); // registration's tail settles

      const rss: number[] = [];
      const sampler = setInterval(() => rss.push(rssBytes(ctl.pid)), 250);
      const x0 = ctl.db ? await ctl.db.xactCommit() : 0;
      await ctl.counts(true);
      const c0 = cpuMs(ctl.pid);
      const t0 = performance.now();
      await sleep(opts.windowMs);
      const seconds = (performance.now() - t0) / 1000;
      const cpu = cpuMs(ctl.pid) - c0;
      const counts = await ctl.counts(true);
      const x1 = ctl.db ? await ctl.db.xactCommit() : 0;
      clearInterval(sampler);

      const ms: number[] = [];
      for (let i = 0; i < opts.probes; i++) {
        const got = deferred<number>();
        waiting = got.resolve;
        const t = nowMs();
        await submitBuild(ctl.url);
        ms.push((await got.promise) - t);
        await sleep(20); // the worker that took it finishes and parks again
      }
      results.push({
        workers: size,
        windowSeconds: round(seconds, 1),
        cpuPercent: round((cpu / 1000 / seconds) * 100, 1),
        rssMiB: { mean: round(rss.reduce((a, b) => a + b, 0) / rss.length / MiB, 1), max: round(Math.max(...rss) / MiB, 1) },
        xactPerSecond: ctl.db ? round((x1 - x0) / seconds, 1) : null,
        transactionsPerSecond: round(counts.transactions / seconds, 1),
        statementsPerSecond: round(counts.statements / seconds, 1),
        dispatch: latency(ms),
        registerSeconds,
      });
    }
  } finally {
    for (const c of children) c.connected && c.send({ type: 'stop' });
    await Promise.all(children.map((c) => (c.exitCode === null ? new Promise((r) => c.once('exit', r)) : undefined)));
  }
  return results;
}
