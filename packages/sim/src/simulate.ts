/**
 * One simulated run: a seed decides the fleet, the builds, the faults and
 * their times; the real controller and real workers run on one SimClock over
 * the simulated network; the checker (invariants.ts) judges the result.
 *
 * Everything that happens is a timer on the SimClock. The scheduler fires
 * one timer at a time and lets the process settle in between, so a seed
 * always replays the same way.
 */
import './fast-compile.js';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import Database from 'better-sqlite3';
import { Header } from 'tar';
import { paths, sleepOn, type BuildSpec, type Clock, type TimerHandle } from '@buildfleet/protocol';
import type { Store } from '@buildfleet/controller';
import { MemoryBlobStore } from './blobs.js';
import { RetryBudgetExhausted, loadWorkerConfig, startWorker, type Logger, type RunningWorker } from '@buildfleet/worker';
import { SimClock } from './clock.js';
import { SimController, type DbFaults } from './controller.js';
import { checkInvariants, Observer } from './invariants.js';
import { Network, type NetworkFaults } from './network.js';
import { Random } from './random.js';
import { planScript, SimRunner, type ScriptPlan } from './runner.js';
import { settle } from './settle.js';
import { Trace } from './trace.js';

export interface SimOptions {
  seed: number;
  /** Worker processes (default: seeded, 2-5). */
  workers?: number;
  /** Builds submitted (default: seeded, 4-12). */
  builds?: number;
  /** Where data dirs go (default: /dev/shm when present, else the OS temp dir). */
  tmpRoot?: string;
  /** Keep the data dir after the run (debugging). */
  keep?: boolean;
  /** Breaks the controller's store on purpose (the checker's self-test). */
  wrapStore?: (store: Store) => Store;
  /** Sets every fault probability to zero (a clean run). */
  noFaults?: boolean;
}

export interface SimResult {
  seed: number;
  ok: boolean;
  violations: string[];
  trace: Trace;
  stats: Record<string, number>;
}

/** Timing of the simulated fleet, ms. Short, so a run covers many leases. */
const TIMING = {
  ackTimeoutMs: 4_000,
  leaseMs: 6_000,
  heartbeatIntervalMs: 1_500,
  pollWaitMs: 4_000,
  pollRecheckMs: 1_000,
  requestTimeoutMs: 3_000,
  cancelGraceMs: 1_000,
  retryBaseMs: 200,
  retryMaxMs: 2_000,
  /** deploy/systemd's RestartSec for a worker whose process exited with an error. */
  serviceRestartMs: 5_000,
};

const API = 'bfa_' + 'sim'.repeat(16);
const ENROLL = 'bfe_' + 'sim'.repeat(16);
const CONTROLLER_URL = 'http://controller.sim';

let sourceTarball: Buffer | undefined;
/** A tiny source archive (one file), the same for every build. */
function source(): Buffer {
  if (sourceTarball) return sourceTarball;
  const data = Buffer.from('echo hello\n');
  const block = Buffer.alloc(512);
  new Header({ path: 'build.sh', type: 'File', size: data.length, mode: 0o644, mtime: new Date(0), uid: 0, gid: 0 }).encode(block, 0);
  const pad = Buffer.alloc((512 - (data.length % 512)) % 512);
  sourceTarball = gzipSync(Buffer.concat([block, data, pad, Buffer.alloc(1024)]));
  return sourceTarball;
}

function multipart(spec: BuildSpec | Record<string, unknown>): { body: Buffer; contentType: string } {
  const b = 'simboundary7MA4YWxkTrZu0gW';
  const body = Buffer.concat([
    Buffer.from(`--${b}\r\nContent-Disposition: form-data; name="spec"\r\n\r\n${JSON.stringify(spec)}\r\n`),
    Buffer.from(`--${b}\r\nContent-Disposition: form-data; name="source"; filename="source.tar.gz"\r\nContent-Type: application/gzip\r\n\r\n`),
    source(),
    Buffer.from(`\r\n--${b}--\r\n`),
  ]);
  return { body, contentType: `multipart/form-data; boundary=${b}` };
}

/**
 * A worker process instance's view of the clock: once the process crashed,
 * its timers never fire again (its loops, retries and build processes stop
 * where they are, as a killed process would).
 */
class InstanceClock implements Clock {
  constructor(
    private readonly base: SimClock,
    private readonly dead: () => boolean,
  ) {}
  now(): number {
    return this.base.now();
  }
  monotonic(): number {
    return this.base.monotonic();
  }
  setTimeout(fn: () => void, ms: number): TimerHandle {
    return this.base.setTimeout(() => {
      if (!this.dead()) fn();
    }, ms);
  }
  clearTimeout(h: TimerHandle | undefined): void {
    this.base.clearTimeout(h);
  }
  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    // A dead process's sleeps never end, not even by an abort.
    return sleepOn(this, ms, signal).catch((err: unknown) => (this.dead() ? new Promise<never>(() => {}) : Promise.reject(err)));
  }
}

/** One worker "machine": a data dir that survives restarts (unless wiped) and its current process. */
class SimWorker {
  instance = 0;
  lineage: number;
  dead = true;
  running: RunningWorker | undefined;
  /** The worker id this machine's identity was last registered as. */
  lastWorkerId: string | undefined;
  private runner: SimRunner | undefined;

  constructor(
    readonly index: number,
    readonly dataDir: string,
    private readonly world: World,
    private readonly concurrency: number,
  ) {
    this.lineage = world.nextLineage++;
  }

  get name(): string {
    return `w${this.index}.${this.instance}`;
  }

  start(): void {
    this.instance++;
    const world = this.world;
    let dead = false;
    this.dead = false;
    const isDead = () => dead;
    this.kill = () => {
      dead = true;
    };
    const actor = this.name;
    const lineage = this.lineage;
    const clock = new InstanceClock(world.clock, isDead);
    const runner = new SimRunner(clock, isDead);
    this.runner = runner;
    const config = loadWorkerConfig(
      {},
      {
        controllerUrls: CONTROLLER_URL,
        enrollmentToken: ENROLL,
        dataDir: this.dataDir,
        name: `w${this.index}`,
        labels: ['linux'],
        maxConcurrentBuilds: this.concurrency,
        requestTimeoutMs: TIMING.requestTimeoutMs,
        cancelGraceMs: TIMING.cancelGraceMs,
      },
    );
    const logger: Logger = {
      debug() {},
      info() {},
      warn: (o, m) => {
        if (!dead) world.trace.add(actor, `warn ${m ?? ''} ${o && typeof o === 'object' ? JSON.stringify(o) : ''}`);
      },
      error: (o, m) => {
        if (!dead) world.trace.add(actor, `error ${m ?? ''} ${o && typeof o === 'object' ? JSON.stringify(o) : ''}`);
      },
    };
    world.trace.add(actor, `process starts (lineage L${lineage})`);
    void startWorker(config, {
      clock,
      transport: world.network.transport(actor, isDead),
      logger,
      runner,
      // Retry jitter from the seed, so a seed replays the same waits.
      random: () => world.jitter.next(),
      // Every simulated worker process lives in this one OS process; crashes are the simulation's.
      lockIdentity: false,
      retryBaseMs: TIMING.retryBaseMs,
      retryMaxMs: TIMING.retryMaxMs,
      logChunkBytes: 512,
      logFlushMs: 200,
    }).then(
      (w) => {
        if (dead) return;
        this.running = w;
        w.events.on('registered', (ev: { kind: string; workerId: string }) => {
          if (dead) return;
          world.trace.add(actor, `registered ${ev.kind} as ${ev.workerId}`);
          world.observer.registered(lineage, ev.workerId, `${actor}`);
          this.lastWorkerId = ev.workerId;
        });
        w.events.on('fatal', (err: Error & { code?: string }) => {
          if (!dead) world.violation(`worker ${actor} stopped fatally: ${err.code}: ${err.message}`);
        });
        // The first registration happened before startWorker resolved.
        const id = w.workerId;
        world.trace.add(actor, `started as ${id}`);
        world.observer.registered(lineage, id, actor);
        this.lastWorkerId = id;
      },
      (err: Error & { code?: string }) => {
        if (dead) return;
        if (err instanceof RetryBudgetExhausted) {
          // A controller down longer than the registration budget: the process
          // exits non-zero and its service manager starts it again
          // (deploy/systemd: Restart=on-failure, RestartSec=5s). Anything else is a bug.
          world.trace.add(actor, `exits: ${err.message}; restarted in ${TIMING.serviceRestartMs} ms`);
          dead = true;
          this.dead = true;
          world.at(clock.monotonic() + TIMING.serviceRestartMs, () => this.start());
          return;
        }
        world.violation(`worker ${actor} could not start: ${err.code ?? ''} ${err.message}`);
      },
    );
  }

  kill: () => void = () => {};

  /** The process dies at once: no further request, no answer delivered, its builds' processes gone. */
  crash(keepIdentity: boolean): void {
    this.world.trace.add(this.name, `CRASH (${keepIdentity ? 'identity kept' : 'data dir wiped'})`);
    this.kill();
    this.dead = true;
    this.runner?.freezeAll();
    this.running = undefined;
    if (!keepIdentity) {
      fs.rmSync(this.dataDir, { recursive: true, force: true });
      this.lineage = this.world.nextLineage++;
      this.lastWorkerId = undefined;
    }
  }

  forceReregister(): void {
    const w = this.running;
    if (!w || this.dead) return;
    this.world.trace.add(this.name, 'forced re-registration');
    void w.session.reregister('simulated: forced').catch(() => undefined);
  }
}

export class World {
  readonly clock: SimClock;
  readonly trace: Trace;
  readonly rng: Random;
  readonly network: Network;
  readonly observer: Observer;
  /** Retry jitter of every worker (a stream of its own, so other draws do not shift it). */
  readonly jitter: Random;
  controller!: SimController;
  blobs!: MemoryBlobStore;
  nextLineage = 1;
  faultsUntil = 0;
  readonly violations: string[] = [];
  done = false;

  constructor(readonly seed: number) {
    this.clock = new SimClock(Date.UTC(2026, 0, 1));
    this.trace = new Trace(() => this.clock.monotonic());
    this.rng = new Random(seed * 2654435761);
    this.observer = new Observer(this.trace);
    this.jitter = this.rng.fork('math-random');
    const faults = this.rng.fork('net-intensity');
    const net: NetworkFaults = {
      dropRequest: faults.next() * 0.06,
      dropAnswer: faults.next() * 0.06,
      duplicate: faults.next() * 0.06,
      delay: faults.next() * 0.15,
      maxDelayMs: faults.int(50, 4_000),
    };
    this.network = new Network({
      clock: this.clock,
      rng: this.rng.fork('net'),
      trace: this.trace,
      faults: net,
      faultsOn: () => this.clock.monotonic() < this.faultsUntil,
      app: () => this.controller.current(),
      observe: (e) => this.observer.exchange(e),
    });
  }

  violation(text: string): void {
    this.violations.push(this.trace.clean(text));
    this.trace.add('checker', `VIOLATION ${text}`);
  }

  at(ms: number, what: () => void | Promise<void>): void {
    this.clock.setTimeout(() => {
      void Promise.resolve()
        .then(what)
        .catch((err: unknown) => this.violation(`simulation event failed: ${(err as Error).stack ?? String(err)}`));
    }, ms - this.clock.monotonic());
  }
}

/** Final builds by `state/reason` and attempts used, for `--stats`. */
function outcomeCounts(dbFile: string): Record<string, number> {
  const db = new Database(dbFile, { readonly: true, fileMustExist: true });
  try {
    const out: Record<string, number> = {};
    for (const r of db.prepare('SELECT state, reason, attempt FROM builds').all() as Array<{ state: string; reason: string | null; attempt: number }>) {
      const k = `build ${r.state}${r.reason ? '/' + r.reason : ''}`;
      out[k] = (out[k] ?? 0) + 1;
      if (r.attempt > 1) out['builds retried'] = (out['builds retried'] ?? 0) + 1;
    }
    const lost = db.prepare("SELECT reason, count(*) AS n FROM build_attempts WHERE reason IN ('ack_timeout','lease_expired','worker_deleted','worker_restarted','worker_lost') GROUP BY reason").all() as Array<{ reason: string; n: number }>;
    for (const r of lost) out[`attempt lost/${r.reason}`] = r.n;
    return out;
  } finally {
    db.close();
  }
}

/** Runs one seed and checks it. Never throws for a failing run: see `violations`. */
export async function runSeed(opts: SimOptions): Promise<SimResult> {
  const world = new World(opts.seed);
  const { clock, trace } = world;
  const rng = world.rng.fork('plan');
  const tmpRoot = opts.tmpRoot ?? (fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir());
  const root = fs.mkdtempSync(path.join(tmpRoot, `buildfleet-sim-${opts.seed}-`));
  const stats: Record<string, number> = {};
  try {
    // --- the plan -----------------------------------------------------------
    const nWorkers = opts.workers ?? rng.int(2, 5);
    const nBuilds = opts.builds ?? rng.int(4, 12);
    const faultWindow = rng.int(15_000, 60_000);
    world.faultsUntil = opts.noFaults ? 0 : faultWindow;
    const dbFaults: DbFaults = opts.noFaults ? { before: 0, after: 0 } : { before: rng.next() * 0.04, after: rng.next() * 0.03 };
    const accessTokenTtlMs = rng.int(2_000, 30_000);
    trace.add('sim', `seed ${opts.seed}: ${nWorkers} workers, ${nBuilds} builds, faults until ${faultWindow}ms, token TTL ${accessTokenTtlMs}ms, db faults ${dbFaults.before.toFixed(3)}/${dbFaults.after.toFixed(3)}`);

    world.blobs = new MemoryBlobStore();
    fs.mkdirSync(path.join(root, 'controller'), { recursive: true });
    world.controller = new SimController({
      dataDir: path.join(root, 'controller'),
      clock,
      rng: world.rng.fork('db'),
      trace,
      blobs: world.blobs,
      config: {
        accessTokenTtlMs,
        ackTimeoutMs: TIMING.ackTimeoutMs,
        leaseMs: TIMING.leaseMs,
        heartbeatIntervalMs: TIMING.heartbeatIntervalMs,
        pollWaitMs: TIMING.pollWaitMs,
        pollRecheckMs: TIMING.pollRecheckMs,
      },
      apiToken: API,
      enrollmentToken: ENROLL,
      dbFaults,
      faultsOn: () => clock.monotonic() < world.faultsUntil,
      ...(opts.wrapStore ? { wrapStore: opts.wrapStore } : {}),
    });
    await world.controller.start();

    const workers: SimWorker[] = [];
    for (let i = 1; i <= nWorkers; i++) {
      const w = new SimWorker(i, path.join(root, `w${i}`), world, rng.int(1, 2));
      workers.push(w);
      world.at(rng.int(0, 2_000), () => w.start());
    }

    // --- builds (the user side: no network faults, but the controller may be down or fail) ---
    const submitted: string[] = [];
    let pendingSubmissions = nBuilds;
    let maxScriptMs = 0;
    const submit = async (n: number, spec: BuildSpec, tries = 0): Promise<void> => {
      const app = world.controller.current();
      const { body, contentType } = multipart(spec);
      const res = app
        ? await app.inject({ method: 'POST', url: paths.builds(), headers: { authorization: `Bearer ${API}`, 'content-type': contentType }, payload: body })
        : undefined;
      if (res?.statusCode === 201) {
        const id = (res.json() as { build: { id: string } }).build.id;
        trace.alias(id, `b${n}`);
        trace.add('user', `submitted b${n} (${spec.script.length} bytes of plan, timeout ${spec.timeoutSeconds}s)`);
        submitted.push(id);
        world.observer.submitted(id);
        pendingSubmissions--;
        if (rng.chance(0.15)) world.at(clock.monotonic() + rng.int(0, 15_000), () => cancel(id));
        return;
      }
      trace.add('user', `submit b${n} failed (${res ? `${res.statusCode} ${res.body.slice(0, 200)}` : 'controller down'}), retrying`);
      if (tries > 1000) return world.violation(`could not submit b${n}`);
      world.at(clock.monotonic() + 1_000, () => submit(n, spec, tries + 1));
    };
    const cancel = async (id: string, tries = 0): Promise<void> => {
      const app = world.controller.current();
      const res = app ? await app.inject({ method: 'POST', url: `/api/v1/builds/${id}/cancel`, headers: { authorization: `Bearer ${API}` } }) : undefined;
      trace.add('user', `cancel ${id} -> ${res ? res.statusCode : 'controller down'}`);
      // Asked, whatever the answer: a cancel can commit and still answer 503.
      if (res) world.observer.canceled(id, clock.now());
      if ((!res || res.statusCode === 503) && tries < 20) world.at(clock.monotonic() + 1_000, () => cancel(id, tries + 1));
    };
    const admin = async (method: 'DELETE' | 'POST', w: SimWorker, suffix: string, id = w.lastWorkerId, tries = 0): Promise<void> => {
      if (!id) return;
      const app = world.controller.current();
      // Asked, whatever the answer: a DELETE can commit and still answer 503.
      if (method === 'DELETE' && app) world.observer.workerDeleted(id);
      const res = app ? await app.inject({ method, url: `/api/v1/workers/${id}${suffix}`, headers: { authorization: `Bearer ${API}` } }) : undefined;
      trace.add('admin', `${method} ${id}${suffix} -> ${res ? `${res.statusCode} ${res.body.slice(0, 120)}` : 'controller down'}`);
      if ((!res || res.statusCode === 503) && tries < 20) world.at(clock.monotonic() + 1_000, () => admin(method, w, suffix, id, tries + 1));
    };
    for (let n = 1; n <= nBuilds; n++) {
      const lines = rng.int(0, 8);
      const plan: ScriptPlan = {
        lines,
        stepMs: Array.from({ length: lines }, () => rng.int(20, 2_000)),
        exitCode: rng.chance(0.75) ? 0 : rng.int(1, 3),
        ignoreTerm: rng.chance(0.3),
        artifacts: Array.from({ length: rng.int(0, 2) }, (_, i) => ({ name: `out/artifact-${i}.bin`, bytes: rng.int(0, 3_000) })),
      };
      const scriptMs = plan.stepMs.reduce((a, b) => a + b, 0);
      const timeoutSeconds = rng.chance(0.1) ? rng.int(1, 6) : 600;
      maxScriptMs = Math.max(maxScriptMs, Math.min(scriptMs, timeoutSeconds * 1000));
      const spec: BuildSpec = {
        script: planScript(plan),
        labels: rng.chance(0.5) ? ['linux'] : [],
        env: {},
        timeoutSeconds,
        artifacts: plan.artifacts.length ? ['out/**'] : [],
        priority: rng.int(0, 2),
        maxAttempts: rng.int(1, 4),
        metadata: { plan: n },
      };
      world.at(rng.int(0, Math.floor(faultWindow * 0.8)), () => submit(n, spec));
    }

    // --- faults ---------------------------------------------------------------
    let lastFault = opts.noFaults ? 0 : faultWindow;
    if (!opts.noFaults) {
      const f = world.rng.fork('faults');
      for (let i = f.int(0, nWorkers + 1); i > 0; i--) {
        const w = f.pick(workers);
        const t = f.int(1_000, faultWindow);
        const down = f.int(100, 5_000);
        const keep = f.chance(0.7);
        lastFault = Math.max(lastFault, t + down);
        world.at(t, () => {
          if (w.dead) return;
          w.crash(keep);
          world.at(clock.monotonic() + down, () => w.start());
        });
      }
      for (let i = f.int(0, 2); i > 0; i--) {
        const t = f.int(1_000, faultWindow);
        const down = f.int(50, 4_000);
        lastFault = Math.max(lastFault, t + down);
        world.at(t, async () => {
          const stopping = world.controller.stop();
          world.at(clock.monotonic() + down, async () => {
            await stopping;
            await world.controller.start();
          });
          await stopping;
        });
      }
      for (let i = f.int(0, 4); i > 0; i--) {
        const w = f.pick(workers);
        world.at(f.int(500, faultWindow), () => {
          const id = w.running?.workerId;
          if (id && world.controller.expireToken(id)) trace.add('sim', `access token of ${w.name} (${id}) expires now`);
        });
      }
      for (let i = f.int(0, 3); i > 0; i--) {
        const w = f.pick(workers);
        world.at(f.int(500, faultWindow), () => w.forceReregister());
      }
      // An admin deletes a worker: its builds are lost at once, it registers anew.
      for (let i = f.chance(0.3) ? 1 : 0; i > 0; i--) {
        const w = f.pick(workers);
        world.at(f.int(2_000, faultWindow), () => admin('DELETE', w, ''));
      }
      // An admin drains one worker for good (never all of them: someone must run the builds).
      if (nWorkers >= 2 && f.chance(0.2)) {
        const w = workers[0]!;
        world.at(f.int(2_000, faultWindow), () => admin('POST', w, '/drain'));
      }
    }

    // --- run ------------------------------------------------------------------
    const perSlot = Math.ceil(nBuilds / nWorkers);
    const boundMs =
      2 * TIMING.leaseMs + TIMING.ackTimeoutMs + 2 * TIMING.pollWaitMs + 10_000 + perSlot * (maxScriptMs + 2 * TIMING.cancelGraceMs + 5_000);
    const deadline = lastFault + boundMs;
    const check = () => {
      if (pendingSubmissions === 0 && clock.monotonic() >= lastFault && world.observer.allTerminal(world.controller.dbFile)) {
        world.done = true;
        return;
      }
      if (clock.monotonic() > deadline) {
        const open = world.observer.nonTerminal(world.controller.dbFile);
        world.violation(
          `not every build is terminal ${boundMs}ms after the last fault (at ${lastFault}ms): ${open.join(', ')}${pendingSubmissions ? `; ${pendingSubmissions} never submitted` : ''}`,
        );
        world.done = true;
        return;
      }
      world.at(clock.monotonic() + 1_000, check);
    };
    world.at(1_000, check);

    let steps = 0;
    while (!world.done) {
      await settle();
      if (world.done) break;
      if (!clock.fireNext()) {
        world.violation('nothing left to do but builds are not terminal (no timer pending)');
        break;
      }
      steps++;
    }
    await settle();
    stats.steps = steps;
    stats.simMs = clock.monotonic();
    stats.builds = submitted.length;
    stats.workers = nWorkers;
    stats.restarts = world.controller.restarts;

    // --- stop the world and check ------------------------------------------
    for (const w of workers) {
      w.kill();
      w.dead = true;
    }
    await world.controller.shutdown();
    await settle();
    const found = await checkInvariants({ dbFile: world.controller.dbFile, blobs: world.blobs, observer: world.observer });
    Object.assign(stats, outcomeCounts(world.controller.dbFile));
    for (const v of found) world.violation(v);
    await world.blobs.close();
    return { seed: opts.seed, ok: world.violations.length === 0, violations: world.violations, trace, stats };
  } finally {
    if (!opts.keep) fs.rmSync(root, { recursive: true, force: true });
  }
}
