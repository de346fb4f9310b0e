/**
 * Starts a real controller in a child process (`controller-child.ts`) on a
 * fresh store: SQLite in a temp directory, or a fresh PostgreSQL database
 * that `stop()` drops. The handle reads the child's RSS and CPU from /proc
 * and its statement counts over IPC.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createDatabase, type BenchDatabase } from './pgdb.js';
import type { StatementCounts } from './sqlcount.js';

export type StoreKind = 'sqlite' | 'postgres';

export interface ControllerHandle {
  store: StoreKind;
  url: string;
  pid: number;
  /** The fresh database (PostgreSQL only). */
  db: BenchDatabase | undefined;
  /** The controller's data directory (SQLite file `buildfleet.db`, blobs). */
  dataDir: string;
  /** Statement counts since start or the last reset. */
  counts(reset?: boolean): Promise<StatementCounts>;
  /** Closes the controller (parked polls answer 204), then drops the database and the temp dir. */
  stop(): Promise<void>;
}

const CHILD = fileURLToPath(new URL('./controller-child.ts', import.meta.url));

/** `cpuProfDir`: run the child with `--cpu-prof` and write the profile there on stop. */
export async function startController(store: StoreKind, opts: { cpuProfDir?: string } = {}): Promise<ControllerHandle> {
  const dir = await mkdtemp(join(tmpdir(), 'bf-bench-'));
  const db = store === 'postgres' ? await createDatabase() : undefined;
  const execArgv = ['--import', 'tsx', ...(opts.cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${opts.cpuProfDir}`] : [])];
  const child: ChildProcess = fork(CHILD, [], {
    execArgv,
    env: { ...process.env, BENCH_CONTROLLER: JSON.stringify({ dataDir: join(dir, 'controller'), ...(db ? { databaseUrl: db.url } : {}) }) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const cleanup = async () => {
    await db?.drop().catch((err) => console.warn(`bench: could not drop ${db.name}: ${err}`));
    await rm(dir, { recursive: true, force: true });
  };
  let url: string;
  try {
    url = await new Promise<string>((resolve, reject) => {
      child.once('exit', (code) => reject(new Error(`controller child exited with ${code} before it was ready`)));
      child.once('message', (m: { type: string; url: string }) => (m.type === 'ready' ? resolve(m.url) : reject(new Error(`unexpected ${m.type}`))));
    });
  } catch (err) {
    child.kill('SIGKILL');
    await cleanup();
    throw err;
  }
  let seq = 0;
  let stopping: Promise<void> | undefined;
  return {
    store,
    url,
    pid: child.pid!,
    db,
    dataDir: join(dir, 'controller'),
    counts: (reset = false) =>
      new Promise((resolve) => {
        const mine = ++seq;
        const on = (m: { type: string; seq: number; counts: StatementCounts }) => {
          if (m.type !== 'counts' || m.seq !== mine) return;
          child.off('message', on);
          resolve(m.counts);
        };
        child.on('message', on);
        child.send({ type: 'counts', reset, seq: mine });
      }),
    stop: () =>
      (stopping ??= (async () => {
        child.send({ type: 'stop' });
        const killer = setTimeout(() => child.kill('SIGKILL'), 15_000);
        await exited;
        clearTimeout(killer);
        await cleanup();
      })()),
  };
}
