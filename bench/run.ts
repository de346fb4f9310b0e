/**
 * `npm run bench`: end-to-end throughput and latency of the real system in
 * one process: a controller (SQLite in a temp dir, or PostgreSQL with
 * --postgres / DATABASE_URL) and K workers, fed N trivial builds through the
 * public API. Timing targets live here, never in tests.
 *
 *   npm run bench -- --builds 200 --workers 4 --concurrency 2 [--postgres]
 *
 * Prints: submit rate, builds finished per second (each one is one claim),
 * and queue/run/total latency percentiles from the controller's own
 * timestamps (createdAt → startedAt → finishedAt), so polling here does not
 * skew them.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { isTerminal, systemClock, type Build } from '@buildfleet/protocol';
import { ApiClient } from '../packages/cli/src/client.js';
import { loadControllerModule, loadWorkerModule, type RunningWorker } from '../packages/cli/src/services.js';
import { submitDirectory } from '../packages/cli/src/submit.js';

const { values } = parseArgs({
  options: {
    builds: { type: 'string', default: '100' },
    workers: { type: 'string', default: '4' },
    concurrency: { type: 'string', default: '1' },
    parallel: { type: 'string', default: '8', short: 'p' },
    postgres: { type: 'boolean', default: false },
    script: { type: 'string', default: 'true' },
  },
});
const N = Number(values.builds);
const K = Number(values.workers);
const C = Number(values.concurrency);
const P = Number(values.parallel);
const API = 'bfa_bench_api_token_0123456789abcdef0123';
const ENROLL = 'bfe_bench_enrollment_token_0123456789abcd';

function pct(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}
function summary(name: string, ms: number[]): string {
  const s = [...ms].sort((a, b) => a - b);
  const f = (n: number) => `${n.toFixed(0)}ms`.padStart(8);
  return `${name.padEnd(22)} p50 ${f(pct(s, 50))}  p95 ${f(pct(s, 95))}  p99 ${f(pct(s, 99))}  max ${f(s.at(-1) ?? NaN)}`;
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'bf-bench-'));
  // --postgres without DATABASE_URL: a throwaway database, dropped at the end.
  let databaseUrl = values.postgres ? process.env.DATABASE_URL : undefined;
  let dropDb: (() => Promise<void>) | undefined;
  if (values.postgres && !databaseUrl) {
    const admin = 'postgres://postgres@127.0.0.1:5432/postgres';
    const name = `buildfleet_bench_${process.pid}`;
    const run = async (sql: string) => {
      const c = new pg.Client({ connectionString: admin });
      await c.connect();
      try {
        await c.query(sql);
      } finally {
        await c.end();
      }
    };
    await run(`CREATE DATABASE ${name}`);
    databaseUrl = `postgres://postgres@127.0.0.1:5432/${name}`;
    dropDb = () => run(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  }
  const cmod = await loadControllerModule();
  const wmod = await loadWorkerModule();
  const controller = await cmod.startController(
    cmod.loadControllerConfig(
      {},
      {
        host: '127.0.0.1',
        port: 0,
        dataDir: join(dir, 'controller'),
        apiToken: API,
        enrollmentToken: ENROLL,
        logLevel: 'warn',
        heartbeatIntervalMs: 1000,
        ...(databaseUrl ? { databaseUrl } : {}),
      },
    ),
  );
  const workers: RunningWorker[] = [];
  try {
    process.env.BUILDFLEET_LOG_LEVEL ??= 'warn';
    for (let i = 0; i < K; i++) {
      const cfg = wmod.loadWorkerConfig(
        {},
        {
          controllerUrls: controller.url,
          enrollmentToken: ENROLL,
          dataDir: join(dir, `worker-${i}`),
          name: `bench-${i}`,
          maxConcurrentBuilds: C,
        },
      );
      workers.push(await wmod.startWorker(cfg));
    }
    const src = join(dir, 'src');
    await mkdir(src);
    await writeFile(join(src, 'README'), 'a trivial build\n');
    const client = new ApiClient({ controllerUrl: controller.url, apiToken: API, tokenSource: 'bench' });

    console.log(
      `bench: ${N} builds (script "${values.script}"), ${K} workers x ${C} slots, ${databaseUrl ? 'PostgreSQL' : 'SQLite'}, ${P} submitters`,
    );
    const t0 = performance.now();
    const ids: string[] = [];
    let next = 0;
    await Promise.all(
      Array.from({ length: P }, async () => {
        while (next < N) {
          next++;
          const b = await submitDirectory(client, src, { script: values.script! });
          ids.push(b.id);
        }
      }),
    );
    const submitMs = performance.now() - t0;

    const done = new Map<string, Build>();
    while (done.size < ids.length) {
      let cursor: string | undefined;
      do {
        const page = await client.listBuilds({ limit: 500, cursor });
        for (const b of page.builds) if (isTerminal(b.state)) done.set(b.id, b);
        cursor = page.nextCursor ?? undefined;
      } while (cursor);
      if (done.size < ids.length) await systemClock.sleep(50);
    }
    const totalMs = performance.now() - t0;

    const builds = [...done.values()];
    const failed = builds.filter((b) => b.state !== 'succeeded').length;
    const at = (s: string | null) => (s ? Date.parse(s) : NaN);
    const queue = builds.map((b) => at(b.startedAt) - at(b.createdAt)).filter(Number.isFinite);
    const run = builds.map((b) => at(b.finishedAt) - at(b.startedAt)).filter(Number.isFinite);
    const total = builds.map((b) => at(b.finishedAt) - at(b.createdAt)).filter(Number.isFinite);
    const first = Math.min(...builds.map((b) => at(b.createdAt)));
    const last = Math.max(...builds.map((b) => at(b.finishedAt)));

    console.log(`submitted              ${N} in ${submitMs.toFixed(0)}ms (${((N / submitMs) * 1000).toFixed(1)} builds/s)`);
    console.log(`all finished after     ${totalMs.toFixed(0)}ms; ${failed} not succeeded`);
    console.log(`throughput             ${((N / (last - first)) * 1000).toFixed(1)} builds/s finished (= claims/s), first submit to last finish`);
    console.log(summary('queue (created→start)', queue));
    console.log(summary('run (start→finish)', run));
    console.log(summary('total (created→finish)', total));
  } finally {
    await Promise.all(workers.map((w) => w.stop({ drain: false }).catch(() => undefined)));
    await controller.close();
    await dropDb?.();
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
