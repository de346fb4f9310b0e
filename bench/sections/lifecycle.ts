/**
 * buildfleet's build lifecycle over HTTP: dispatch latency, backlog drain,
 * steady submit → finish, and statements per lifecycle step. Each leaves
 * the controller running with no worker connected.
 */
import type { ControllerHandle } from '../controller.js';
import { startLoops } from '../fleet.js';
import type { StatementCounts } from '../sqlcount.js';
import { deferred, latency, pool, round, sleep, nowMs, type Latency } from '../stats.js';
import { lost, registerFleet, retried, submitBuild } from '../wire.js';

const WAIT_MS = 30_000;
const WARMUP = 5;

/**
 * Submit → a parked worker holds it: `workers` long-poll, one build at a
 * time is submitted once all of them are parked; latency is from just before
 * the submit request to the poll answer's arrival, ms.
 */
export async function dispatch(ctl: ControllerHandle, samples: number, workers = 4): Promise<Latency> {
  const fleet = await registerFleet(ctl.url, workers, 'dispatch');
  let got = deferred<number>();
  const loops = startLoops(fleet, WAIT_MS, { onBuild: (_b, at) => got.resolve(at) });
  const ms: number[] = [];
  try {
    for (let i = 0; i < samples + WARMUP; i++) {
      await loops.allPolling();
      await sleep(5); // the last re-poll reaches the controller and parks
      got = deferred<number>();
      const t0 = nowMs();
      await submitBuild(ctl.url);
      const at = await got.promise;
      if (i >= WARMUP) ms.push(at - t0);
    }
  } finally {
    await loops.stop();
  }
  return latency(ms);
}

export interface DrainResult {
  builds: number;
  workers: number;
  /** Builds finished per second once the workers start on the full queue. */
  buildsPerSecond: number;
  /** Submissions per second while queueing (16 in parallel). */
  submitPerSecond: number;
  /** Statements per build: while submitting, while draining. */
  statementsPerBuild: { submit: number; drain: number };
  counts: { submit: StatementCounts; drain: StatementCounts };
  /** Requests answered 503/429 and retried (a pool exhausted under load shows here). */
  retried: number;
  /** Attempts lost (not started by their ack deadline) and run again as a new attempt. */
  lostAttempts: number;
}

/** Queues `builds` with no worker polling, then lets `workers` HTTP workers drain them. */
export async function drain(ctl: ControllerHandle, builds: number, workers: number): Promise<DrainResult> {
  const fleet = await registerFleet(ctl.url, workers, 'drain', 32);
  const r0 = retried.count;
  const l0 = lost.count;
  await ctl.counts(true);
  const s0 = performance.now();
  await pool(builds, 16, async () => void (await submitBuild(ctl.url)));
  const submitMs = performance.now() - s0;
  const submit = await ctl.counts(true);
  let finished = 0;
  const done = deferred();
  const loops = startLoops(fleet, WAIT_MS, { onFinished: () => ++finished === builds && done.resolve() }, { paused: true });
  let drainMs!: number;
  let drained: StatementCounts;
  try {
    await ctl.phase('drain', async () => {
      const t0 = performance.now();
      loops.start();
      await Promise.race([done.promise, failed(loops.state)]);
      drainMs = performance.now() - t0;
    });
    drained = await ctl.counts(true);
  } finally {
    await loops.stop();
  }
  return {
    builds,
    workers,
    buildsPerSecond: round((builds / drainMs) * 1000, 1),
    submitPerSecond: round((builds / submitMs) * 1000, 1),
    statementsPerBuild: { submit: round(submit.statements / builds), drain: round(drained.statements / builds) },
    counts: { submit, drain: drained },
    retried: retried.count - r0,
    lostAttempts: lost.count - l0,
  };
}

export interface SteadyResult {
  builds: number;
  workers: number;
  submitters: number;
  /** Builds per second from the first submit to the last finish. */
  buildsPerSecond: number;
  /** Submit request start → finish acknowledged, ms. */
  latency: Latency;
  /** Every statement in the run (submit, claims, parked-poll re-checks, start, log, finish) per build. */
  statementsPerBuild: number;
  transactionsPerBuild: number;
  counts: StatementCounts;
  /** Requests answered 503/429 and retried. */
  retried: number;
  lostAttempts: number;
}

/** `submitters` submit `builds` in a closed loop while `workers` long-poll and run them. */
export async function steady(ctl: ControllerHandle, builds: number, workers: number, submitters = 8): Promise<SteadyResult> {
  const fleet = await registerFleet(ctl.url, workers, 'steady', 32);
  const finishedAt = new Map<string, number>();
  const done = deferred();
  const loops = startLoops(fleet, WAIT_MS, {
    onFinished: (b, at) => {
      finishedAt.set(b.id, at);
      if (finishedAt.size === builds) done.resolve();
    },
  });
  const startedAt = new Map<string, number>();
  const r0 = retried.count;
  const l0 = lost.count;
  let counts: StatementCounts;
  let ms: number;
  try {
    await loops.allPolling();
    await sleep(50);
    await ctl.counts(true);
    const t0 = performance.now();
    await ctl.phase('steady', async () => {
      await pool(builds, submitters, async () => {
        const s = nowMs();
        startedAt.set(await submitBuild(ctl.url), s);
      });
      await Promise.race([done.promise, failed(loops.state)]);
    });
    ms = performance.now() - t0;
    counts = await ctl.counts(true);
  } finally {
    await loops.stop();
  }
  return {
    builds,
    workers,
    submitters,
    buildsPerSecond: round((builds / ms) * 1000, 1),
    latency: latency([...startedAt].map(([id, s]) => finishedAt.get(id)! - s)),
    statementsPerBuild: round(counts.statements / builds),
    transactionsPerBuild: round(counts.transactions / builds),
    counts,
    retried: retried.count - r0,
    lostAttempts: lost.count - l0,
  };
}

export interface StepCounts {
  /** Route → statements and transactions per request, and statements by kind per request. */
  steps: Record<string, { statements: number; transactions: number; byKind: Record<string, number> }>;
  /** Sum over the five lifecycle steps: statements per build, submit to finish. */
  statementsPerBuild: number;
  transactionsPerBuild: number;
  /** SQLite `prepare` calls per build (0 on PostgreSQL). */
  preparesPerBuild: number;
}

const STEPS = ['POST /builds', 'POST /workers/:id/poll', 'POST /builds/:id/start', 'POST /builds/:id/logs', 'POST /builds/:id/finish'];

/**
 * One worker, one build at a time, nothing parked: submit, poll (claims at
 * once), start, one log chunk, finish. Statements are attributed to the
 * route that ran them (background work is left out).
 */
export async function steps(ctl: ControllerHandle, builds: number): Promise<StepCounts> {
  const [w] = await registerFleet(ctl.url, 1, 'steps');
  await ctl.counts(true);
  for (let i = 0; i < builds; i++) {
    await submitBuild(ctl.url);
    const got = await w!.poll(1_000);
    if (got.length !== 1) throw new Error(`poll answered ${got.length} builds, expected 1`);
    if (!(await w!.run(got[0]!))) throw new Error('the attempt was lost with nothing else running');
  }
  const c = await ctl.counts(true);
  const result: StepCounts = { steps: {}, statementsPerBuild: 0, transactionsPerBuild: 0, preparesPerBuild: round(c.prepares / builds) };
  for (const key of STEPS) {
    const r = c.byRoute[key] ?? { requests: 1, statements: 0, transactions: 0, byKind: {} };
    const per = (n: number) => round(n / r.requests);
    result.steps[key] = {
      statements: per(r.statements),
      transactions: per(r.transactions),
      byKind: Object.fromEntries(Object.entries(r.byKind).map(([k, n]) => [k, per(n)])),
    };
    result.statementsPerBuild += per(r.statements);
    result.transactionsPerBuild += per(r.transactions);
  }
  result.statementsPerBuild = round(result.statementsPerBuild);
  result.transactionsPerBuild = round(result.transactionsPerBuild);
  return result;
}

/** Rejects when a worker loop failed, so a broken run stops instead of hanging. */
async function failed(state: { error?: unknown; stopped: boolean }): Promise<never> {
  while (!state.error && !state.stopped) await sleep(100);
  if (state.error) throw state.error;
  return new Promise<never>(() => {});
}
