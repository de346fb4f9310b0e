/**
 * Issue 3 "Done when", with real processes: two `buildfleet controller`
 * processes on one PostgreSQL database (a fresh one for this file), 20
 * `buildfleet worker` processes spread across them, each given both
 * controller URLs. Also issue 5 scenario (a): 20 workers poll at once for 20
 * queued builds, and each build gets exactly one assignee.
 *
 * "Runs exactly once" is observed from outside the system: every build's
 * script appends `<build id> <attempt> <worker id>` to one shared file
 * (O_APPEND, one short line per write), and the build's attempts history
 * must agree with it.
 */
import { chmod, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, describePg, type TestDatabase } from '../../packages/controller/test/support/pg.js';
import { Api, startController, startWorker, stopWorker, tempDir, timingEnv, waitFor, waitForFileSh, type Build, type ControllerProc, type Service } from './support.js';

const WORKERS = 20;
const BATCH1 = 500;
const BATCH2 = 120;

describePg('several controllers on one PostgreSQL database (real processes)', () => {
  let db: TestDatabase;
  let tmp: { dir: string; remove(): Promise<void> };
  let c1: ControllerProc;
  let c2: ControllerProc;
  let api1: Api;
  let api2: Api;
  const workers: Service[] = [];
  let runsFile: string;

  /** Lines of the shared runs file, grouped by build id. */
  async function runsByBuild(): Promise<Map<string, { attempt: number; workerId: string }[]>> {
    const text = await readFile(runsFile, 'utf8').catch(() => '');
    const out = new Map<string, { attempt: number; workerId: string }[]>();
    for (const line of text.split('\n')) {
      if (!line) continue;
      const [id, attempt, workerId] = line.split(' ');
      const list = out.get(id!) ?? [];
      list.push({ attempt: Number(attempt), workerId: workerId! });
      out.set(id!, list);
    }
    return out;
  }

  const record = () => `echo "$BUILDFLEET_BUILD_ID $BUILDFLEET_BUILD_ATTEMPT $BUILDFLEET_WORKER_ID" >> '${runsFile}'`;

  /**
   * Each build ran exactly once, by the worker its only started attempt
   * names. `assignedOnce`: also no other attempt at all (no fault was
   * injected, so nothing may have been assigned twice).
   */
  async function expectExactlyOnce(builds: Build[], assignedOnce: boolean): Promise<void> {
    const runs = await runsByBuild();
    const problems: string[] = [];
    for (const b of builds) {
      const r = runs.get(b.id) ?? [];
      const started = b.attempts.filter((a) => a.startedAt !== null);
      if (b.state !== 'succeeded') problems.push(`${b.id}: ${b.state} (${b.reason})`);
      else if (r.length !== 1) problems.push(`${b.id}: ran ${r.length} times`);
      else if (started.length !== 1) problems.push(`${b.id}: ${started.length} started attempts`);
      else if (assignedOnce && b.attempts.length !== 1) problems.push(`${b.id}: assigned ${b.attempts.length} times`);
      else if (started[0]!.workerId !== r[0]!.workerId || started[0]!.attempt !== r[0]!.attempt || b.attempt !== r[0]!.attempt)
        problems.push(`${b.id}: ran as ${JSON.stringify(r[0])}, history says ${JSON.stringify(started[0])}`);
    }
    expect(problems).toEqual([]);
  }

  async function submitMany(n: number, spec: (i: number) => Record<string, unknown>, parallel = 8): Promise<string[]> {
    const ids: string[] = new Array(n);
    let next = 0;
    await Promise.all(
      Array.from({ length: parallel }, async () => {
        for (let i = next++; i < n; i = next++) ids[i] = (await (i % 2 ? api2 : api1).submit(spec(i))).id;
      }),
    );
    return ids;
  }

  beforeAll(async () => {
    db = await createTestDatabase();
    tmp = await tempDir('bf-cluster-pg-');
    runsFile = join(tmp.dir, 'runs.txt');
    // Builds of a root worker run as nobody and append here.
    await writeFile(runsFile, '', { mode: 0o666 });
    await chmod(runsFile, 0o666);
    // Both at once: migrations must be safe when two controllers start together.
    // Leases are not the point here: generous ones keep a worker starved on a
    // busy machine from losing builds (lease scenarios: leases.test.ts).
    const env = timingEnv({ leaseMs: 8_000, heartbeatIntervalMs: 500, ackTimeoutMs: 8_000 });
    [c1, c2] = await Promise.all([
      startController({ dataDir: join(tmp.dir, 'c1'), databaseUrl: db.url, env }),
      startController({ dataDir: join(tmp.dir, 'c2'), databaseUrl: db.url, env }),
    ]);
    api1 = new Api(c1.url);
    api2 = new Api(c2.url);
  });

  afterAll(async () => {
    await Promise.allSettled(workers.map((w) => stopWorker(w)));
    await Promise.allSettled([c1, c2].filter(Boolean).map((c) => c.service.stop(5_000)));
    await tmp?.remove();
    await db?.drop();
  });

  it('20 workers polling at once for 20 queued builds: each build has exactly one assignee', { timeout: 120_000 }, async () => {
    const release = join(tmp.dir, 'release-a');
    const ids = await submitMany(WORKERS, () => ({
      script: `${record()}; ${waitForFileSh(release)}`,
    }));
    for (let i = 0; i < WORKERS; i++) {
      // Spread across the controllers, each worker knowing both (its own first).
      const urls = i % 2 ? [c2.url, c1.url] : [c1.url, c2.url];
      workers.push(startWorker({ urls, dataDir: join(tmp.dir, `w${i}`), name: `w${i}` }));
    }
    // Every build blocks until released and every worker runs one at a time,
    // so all 20 running at once means 20 different workers took one each.
    let states = '';
    try {
      const running = await waitFor(
        async () => {
          for (const w of workers) if (w.proc.exitCode !== null) throw new Error(`a worker exited:\n${w.output()}`);
          const bs = await Promise.all(ids.map((id) => api1.build(id)));
          states = bs.map((b) => b.state).join(',');
          return bs.every((b) => b.state === 'running') ? bs : undefined;
        },
        'all 20 builds to run',
        60_000,
        250,
      ).catch((e) => {
        console.error(states, workers.map((w) => w.output().slice(-1500)).join('\n----\n'), c1.service.output().slice(-3000));
        throw e;
      });
      expect(new Set(running.map((b) => b.workerId)).size).toBe(WORKERS);
      const registered = await api2.workers();
      expect(registered).toHaveLength(WORKERS);
    } finally {
      // Released even when the test fails, so the builds do not hold the workers.
      await writeFile(release, '');
    }
    await expectExactlyOnce(await api2.waitFinished(ids, 30_000), true);
  });

  it("500 builds through both controllers: each assigned to one worker and run exactly once", { timeout: 120_000 }, async () => {
    const t0 = performance.now();
    const ids = await submitMany(BATCH1, (i) => ({
      // Every 50th build also makes an artifact, read back through both controllers below.
      script: `${record()}; echo "built $BUILDFLEET_BUILD_ID"${i % 50 === 0 ? '; echo "artifact of $BUILDFLEET_BUILD_ID" > out.txt' : ''}`,
      ...(i % 50 === 0 ? { artifacts: ['out.txt'] } : {}),
      priority: i % 3,
    }));
    const builds = await api1.waitFinished(ids, 100_000);
    console.info(`[cluster] ${BATCH1} builds on 2 controllers and ${WORKERS} workers in ${Math.round(performance.now() - t0)} ms`);
    await expectExactlyOnce(builds, true);
    // All 20 workers took part.
    expect(new Set(builds.map((b) => b.workerId)).size).toBeGreaterThan(WORKERS / 2);

    // Logs and artifacts are readable through every controller (blobs in PostgreSQL).
    for (const i of [0, 50, 250]) {
      const id = ids[i]!;
      for (const api of [api1, api2]) {
        expect(await api.log(id)).toContain(`built ${id}`);
        const { artifacts } = await api.get<{ artifacts: { name: string }[] }>(`/api/v1/builds/${id}/artifacts`);
        expect(artifacts.map((a) => a.name)).toEqual(['out.txt']);
        expect(await api.get<string>(`/api/v1/builds/${id}/artifacts/out.txt`)).toBe(`artifact of ${id}\n`);
      }
    }
  });

  it("a controller SIGKILLed in the middle of a batch: every build still finishes exactly once through the other", { timeout: 120_000 }, async () => {
    const ids = await submitMany(BATCH2, () => ({ script: `${record()}; sleep 0.2; echo "built $BUILDFLEET_BUILD_ID"` }));
    const idSet = new Set(ids);
    await waitFor(
      async () => [...(await runsByBuild()).keys()].filter((id) => idSet.has(id)).length >= BATCH2 / 4,
      'a quarter of the second batch to run',
      60_000,
      50,
    );
    c1.service.proc.kill('SIGKILL');
    await c1.service.exited;
    const ranBeforeKill = [...(await runsByBuild()).keys()].filter((id) => idSet.has(id)).length;
    expect(ranBeforeKill).toBeLessThan(BATCH2);

    const builds = await api2.waitFinished(ids, 90_000, 'the second batch to finish through the surviving controller');
    // An assignment whose answer died with c1 may have passed its ack deadline
    // and been assigned again (never started twice): run-once is the invariant.
    await expectExactlyOnce(builds, false);
    for (const w of workers) expect(w.proc.exitCode).toBeNull();
  });
});
