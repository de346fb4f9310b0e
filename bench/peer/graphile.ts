/**
 * The peer: graphile-worker 0.17.3 with its defaults and 4 runners (`run()`
 * four times, each its own pool and LISTEN connection, concurrency 1), on a
 * fresh database of the same PostgreSQL, in this process. The same three
 * figures as buildfleet's: dispatch latency (addJob → the task starts),
 * backlog drain and steady add → complete, and statements per job counted
 * at the `pg` driver.
 */
import { Logger, makeWorkerUtils, run, type Runner, type WorkerUtils } from 'graphile-worker';
import { createDatabase, type BenchDatabase } from '../pgdb.js';
import { installCounters, takeCounts } from '../sqlcount.js';
import { deferred, latency, nowMs, pool, round, sleep, type Latency } from '../stats.js';

const RUNNERS = 4;
const silent = new Logger(() => () => {});

export interface GraphileResult {
  dispatch: Latency;
  drain: { jobs: number; jobsPerSecond: number };
  steady: { jobs: number; adders: number; jobsPerSecond: number; latency: Latency; statementsPerJob: number; transactionsPerJob: number };
}

interface Peer {
  db: BenchDatabase;
  utils: WorkerUtils;
  runners: Runner[];
  /** Called when a job's task starts (`at` = nowMs()) and when it completed. */
  onStart?: (payload: { i: number }, at: number) => void;
  onComplete?: (payload: { i: number }, at: number) => void;
}

async function startRunners(peer: Peer): Promise<void> {
  peer.runners = await Promise.all(
    Array.from({ length: RUNNERS }, async () => {
      const runner = await run({
        connectionString: peer.db.url,
        noHandleSignals: true,
        logger: silent,
        taskList: { bench: async (payload) => peer.onStart?.(payload as { i: number }, nowMs()) },
      });
      runner.events.on('job:complete', ({ job }) => peer.onComplete?.(job.payload as { i: number }, nowMs()));
      return runner;
    }),
  );
}

async function stopRunners(peer: Peer): Promise<void> {
  await Promise.all(peer.runners.map((r) => r.stop()));
  peer.runners = [];
}

/** Runs the three graphile-worker measurements on one fresh database. */
export async function graphile(sizes: { dispatch: number; drain: number; steady: number }): Promise<GraphileResult> {
  installCounters();
  const db = await createDatabase();
  const utils = await makeWorkerUtils({ connectionString: db.url, logger: silent });
  const peer: Peer = { db, utils, runners: [] };
  try {
    await utils.migrate();
    await startRunners(peer);
    await sleep(200); // runners LISTEN before the first job

    // dispatch: one job at a time into idle runners
    const ms: number[] = [];
    for (let i = 0; i < sizes.dispatch + 5; i++) {
      const started = deferred<number>();
      const completed = deferred();
      peer.onStart = (_p, at) => started.resolve(at);
      peer.onComplete = () => completed.resolve();
      const t0 = nowMs();
      await utils.addJob('bench', { i });
      const at = await started.promise;
      await completed.promise;
      if (i >= 5) ms.push(at - t0);
      await sleep(5);
    }

    // drain: queue with the runners stopped, then start them
    await stopRunners(peer);
    peer.onStart = undefined;
    await pool(sizes.drain, 16, async (i) => void (await utils.addJob('bench', { i })));
    let completed = 0;
    const drained = deferred();
    peer.onComplete = () => ++completed === sizes.drain && drained.resolve();
    const d0 = performance.now();
    await startRunners(peer);
    await drained.promise;
    const drainMs = performance.now() - d0;

    // steady: 8 adders while the runners work
    const adders = 8;
    const addedAt = new Map<number, number>();
    const doneAt = new Map<number, number>();
    const steadyDone = deferred();
    peer.onComplete = (p, at) => {
      doneAt.set(p.i, at);
      if (doneAt.size === sizes.steady) steadyDone.resolve();
    };
    await sleep(100);
    takeCounts(true);
    const s0 = performance.now();
    await pool(sizes.steady, adders, async (i) => {
      addedAt.set(i, nowMs());
      await utils.addJob('bench', { i });
    });
    await steadyDone.promise;
    const steadyMs = performance.now() - s0;
    const counts = takeCounts(true);

    return {
      dispatch: latency(ms),
      drain: { jobs: sizes.drain, jobsPerSecond: round((sizes.drain / drainMs) * 1000, 1) },
      steady: {
        jobs: sizes.steady,
        adders,
        jobsPerSecond: round((sizes.steady / steadyMs) * 1000, 1),
        latency: latency([...addedAt].map(([i, t]) => doneAt.get(i)! - t)),
        statementsPerJob: round(counts.statements / sizes.steady),
        transactionsPerJob: round(counts.transactions / sizes.steady),
      },
    };
  } finally {
    await stopRunners(peer).catch(() => {});
    await utils.release();
    await db.drop();
  }
}
