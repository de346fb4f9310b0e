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
  /**
   * Runs `fn` as a measured phase: with a profile directory, the controller's
   * CPU profile of just this phase goes to `<dir>/<name>.cpuprofile`.
   */
  phase<T>(name: string, fn: () => Promise<T>): Promise<T>;
  /** Closes the controller (parked polls answer 204), then drops the database and the temp dir. */
  stop(): Promise<void>;
}

const CHILD = fileURLToPath(new URL('./controller-child.ts', import.meta.url));

/** `cpuProfDir`: write each measured phase's CPU profile there (see `phase`). */
export async function startController(store: StoreKind, opts: { cpuProfDir?: string } = {}): Promise<ControllerHandle> {
  const dir = await mkdtemp(join(tmpdir(), 'bf-bench-'));
  const db = store === 'postgres' ? await createDatabase() : undefined;
  const execArgv = ['--import', 'tsx'];
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
  const ask = <R>(type: string, extra: Record<string, unknown>) =>
    new Promise<R>((resolve, reject) => {
      const mine = ++seq;
      const on = (m: { type: string; seq: number; error?: string } & R) => {
        if (m.type !== type || m.seq !== mine) return;
        child.off('message', on);
        if (m.error) reject(new Error(m.error));
        else resolve(m);
      };
      child.on('message', on);
      child.send({ type, seq: mine, ...extra });
    });
  return {
    store,
    url,
    pid: child.pid!,
    db,
    dataDir: join(dir, 'controller'),
    counts: async (reset = false) => (await ask<{ counts: StatementCounts }>('counts', { reset })).counts,
    phase: async (name, fn) => {
      if (!opts.cpuProfDir) return fn();
      await ask('profile', {});
      try {
        return await fn();
      } finally {
        await ask('profile', { file: join(opts.cpuProfDir, `${name}.cpuprofile`) });
      }
    },
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
