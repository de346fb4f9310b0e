/**
 * One harness for the credential-lifecycle tests (issue 4, "Done when"): a
 * real controller (the shared fixture test/support/controller.ts, real HTTP on 127.0.0.1 port 0) on
 * SQLite (temp directory) or PostgreSQL (a fresh database per test), real
 * workers (in-process `startWorker`, or a separate process), and the
 * deterministic seams the races need: store-method wrappers that can stop
 * at a barrier, and an `afterWorkerLock` decorator of the store's worker row
 * lock, which runs while a transaction holds the worker's row lock.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import Database from 'better-sqlite3';
import pg from 'pg';
import {
  type ControllerConfig,
  type RunningController,
  type Store,
} from '@buildfleet/controller';
import type { WorkerLockOp } from '../../../controller/src/store/index.js';
import { afterWorkerLock } from '../../../controller/test/support/store-hooks.js';
import { API_TOKEN, ENROLLMENT_TOKEN, startTestController } from '../../../../test/support/controller.js';
import { paths, type Build, type Clock, type RegisterResponse, type Worker } from '@buildfleet/protocol';
import { startWorker, type RunningWorker, type StartWorkerOptions } from '../../src/agent.js';
import type { WorkerConfigOverrides } from '../../src/config.js';
import { silentLogger } from '../../src/logger.js';
import { testConfig } from '../support/harness.js';
import { waitFor } from '../support/wait.js';

export type StoreKind = 'sqlite' | 'postgres';

export { API_TOKEN, ENROLLMENT_TOKEN };

const TERMINAL = ['succeeded', 'failed', 'canceled', 'timed_out'];

/** A promise opened from outside: `wait()` resolves once `open()` was called. */
export class Barrier {
  private resolveFn!: () => void;
  private readonly p = new Promise<void>((r) => (this.resolveFn = r));
  opened = false;
  open(): void {
    this.opened = true;
    this.resolveFn();
  }
  wait(): Promise<void> {
    return this.p;
  }
}

/** Calls to one store method: counted, announced, and optionally held at a barrier before they run. */
export interface Tap {
  /** Calls so far. */
  calls: number;
  /** Emits 'call' (args) when a call arrives and 'done' (result | error) when it settles. */
  events: EventEmitter;
  /** When set, each call waits for `hold(args)` before running (a barrier). */
  hold?: (args: unknown[]) => Promise<void> | void;
}

export interface Rig {
  kind: StoreKind;
  url: string;
  ctl: RunningController;
  store: Store;
  config: ControllerConfig;
  /** Runs while a transaction holds a worker's row lock (PostgreSQL) / the write lock (SQLite). */
  onWorkerLock?: (op: WorkerLockOp, workerId: string) => Promise<void> | void;
  /** A barrier that `close()` opens, so a failed test never leaves a transaction waiting. */
  barrier(): Barrier;
  /** Wraps `store[method]` with a counter/barrier (see `Tap`). */
  tap(method: keyof Store): Tap;
  /** An API-token request. */
  api(method: string, p: string, json?: unknown): Promise<Response>;
  /** A request with any bearer (or none). */
  req(method: string, p: string, opts?: { token?: string; json?: unknown }): Promise<Response>;
  /** Raw registration (defaults: a new worker with the enrollment token). */
  register(body?: Record<string, unknown>, token?: string | null): Promise<Response>;
  registerOk(body?: Record<string, unknown>, token?: string | null): Promise<RegisterResponse>;
  submit(spec: Record<string, unknown>, source?: Uint8Array): Promise<Build>;
  build(id: string): Promise<Build>;
  getWorker(id: string): Promise<Worker>;
  listWorkers(): Promise<Worker[]>;
  /** Waits until the build is terminal and returns it. */
  finished(id: string, timeoutMs?: number): Promise<Build>;
  logText(id: string, attempt?: number): Promise<string>;
  /** The log without the worker's own `[buildfleet] …` lines: what the script wrote. */
  scriptLog(id: string, attempt?: number): Promise<string>;
  /** A worker in this process, with its own data dir (or `dataDir`). */
  worker(over?: WorkerConfigOverrides, opts?: StartWorkerOptions, dataDir?: string): Promise<RunningWorker>;
  /** A fresh data dir for a worker (removed on close). */
  workerDir(): Promise<string>;
  /**
   * A second, independent connection to the same database for reading while
   * the controller's transaction holds its locks (SQLite: a read-only
   * connection, which WAL lets read beside a writer).
   */
  peek<T = Record<string, unknown>>(sqlText: string, params?: unknown[]): Promise<T[]>;
  close(): Promise<void>;
}

export interface RigOptions {
  clock?: Clock;
  config?: Partial<ControllerConfig>;
  /** Environment the controller's configuration is read from (docs/protocol.md names); `config` wins. */
  env?: Record<string, string>;
}

/** Starts a controller on `kind` with the harness's defaults (`config` wins). */
export async function startRig(kind: StoreKind, options: RigOptions = {}): Promise<Rig> {
  // eslint-disable-next-line prefer-const
  let rig: Rig;
  const fixture = await startTestController({
    store: kind,
    env: options.env ?? {},
    config: { heartbeatIntervalMs: 200, leaseMs: 10_000, ackTimeoutMs: 10_000, ...options.config },
    decorateWorkerLock: afterWorkerLock((op, workerId) => rig.onWorkerLock?.(op, workerId)),
    ...(options.clock ? { clock: options.clock } : {}),
  });
  const cleanups: Array<() => Promise<void> | void> = [() => fixture.close()];
  const ctl = fixture.ctl!;
  const config = fixture.config!;
  const url = ctl.url;
  const dataDir = fixture.dataDir;
  const db = fixture.databaseUrl ? { url: fixture.databaseUrl } : undefined;

  let peekDb: Database.Database | undefined;
  let peekPool: pg.Pool | undefined;
  const req: Rig['req'] = (method, p, opts = {}) =>
    fetch(url + p, {
      method,
      headers: {
        ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}),
        ...(opts.json !== undefined ? { 'content-type': 'application/json' } : {}),
      },
      ...(opts.json !== undefined ? { body: JSON.stringify(opts.json) } : {}),
    });
  const api: Rig['api'] = (method, p, json) => req(method, p, { token: API_TOKEN, json });
  const register: Rig['register'] = (body = {}, token = ENROLLMENT_TOKEN) =>
    req('POST', paths.register(), {
      ...(token ? { token } : {}),
      json: { name: 'w', labels: [], maxConcurrentBuilds: 2, version: 'test', bootId: randomUUID(), activeBuildCount: 0, ...body },
    });
  const dirs: string[] = [];
  const barriers: Barrier[] = [];
  const workers: RunningWorker[] = [];

  rig = {
    kind,
    url,
    ctl,
    store: ctl.store,
    config,
    barrier() {
      const b = new Barrier();
      barriers.push(b);
      return b;
    },
    tap(method) {
      const tap: Tap = { calls: 0, events: new EventEmitter() };
      const target = ctl.store as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>;
      const original = target[method]!.bind(ctl.store);
      target[method] = async (...args: unknown[]) => {
        tap.calls++;
        tap.events.emit('call', args);
        if (tap.hold) await tap.hold(args);
        try {
          const result = await original(...args);
          tap.events.emit('done', result);
          return result;
        } catch (err) {
          tap.events.emit('done', err);
          throw err;
        }
      };
      return tap;
    },
    api,
    req,
    register,
    async registerOk(body, token) {
      const res = await register(body, token);
      const json = (await res.json()) as RegisterResponse;
      if (res.status !== 200 && res.status !== 201) throw new Error(`register answered ${res.status}: ${JSON.stringify(json)}`);
      return json;
    },
    async submit(spec, source) {
      const form = new FormData();
      form.append('spec', JSON.stringify(spec));
      form.append('source', new Blob([source ?? new Uint8Array([0x1f, 0x8b, 1, 2, 3])]), 'source.tar.gz');
      const res = await fetch(url + paths.builds(), { method: 'POST', headers: { authorization: `Bearer ${API_TOKEN}` }, body: form });
      const body = (await res.json()) as { build: Build };
      if (res.status !== 201) throw new Error(`submit answered ${res.status}: ${JSON.stringify(body)}`);
      return body.build;
    },
    async build(id) {
      const res = await api('GET', paths.build(id));
      if (res.status !== 200) throw new Error(`GET build answered ${res.status}: ${await res.text()}`);
      return ((await res.json()) as { build: Build }).build;
    },
    async getWorker(id) {
      const res = await api('GET', paths.worker(id));
      if (res.status !== 200) throw new Error(`GET worker answered ${res.status}: ${await res.text()}`);
      return ((await res.json()) as { worker: Worker }).worker;
    },
    async listWorkers() {
      return ((await (await api('GET', paths.workers())).json()) as { workers: Worker[] }).workers;
    },
    async finished(id, timeoutMs = 20_000) {
      let b: Build | undefined;
      await waitFor(
        async () => {
          b = await rig.build(id);
          return TERMINAL.includes(b.state);
        },
        { what: `build ${id} to finish`, timeoutMs, intervalMs: 25 },
      );
      return b!;
    },
    async logText(id, attempt) {
      const res = await api('GET', `${paths.logs(id)}?offset=0${attempt ? `&attempt=${attempt}` : ''}`);
      return res.text();
    },
    async scriptLog(id, attempt) {
      return (await rig.logText(id, attempt))
        .split(/(?<=\n)/)
        .filter((l) => !l.startsWith('[buildfleet] '))
        .join('');
    },
    async workerDir() {
      const d = await fs.mkdtemp(path.join(os.tmpdir(), 'bf-cred-w-'));
      // Tests put flag files (go) here for builds to wait on; a root worker runs builds as nobody,
      // which must reach them. The worker's own state stays in worker/ (0700).
      await fs.chmod(d, 0o711);
      dirs.push(d);
      return d;
    },
    async worker(over = {}, opts = {}, dataDir) {
      const dir = dataDir ?? (await rig.workerDir());
      const w = await startWorker(testConfig({ url, enrollmentToken: ENROLLMENT_TOKEN }, dir, { cancelGraceMs: 1_000, ...over }), {
        logger: silentLogger,
        retryBaseMs: 10,
        retryMaxMs: 100,
        ...opts,
      });
      workers.push(w);
      return w;
    },
    async peek<T>(sqlText: string, params: unknown[] = []): Promise<T[]> {
      if (kind === 'postgres') {
        peekPool ??= new pg.Pool({ connectionString: db!.url, max: 2 });
        peekPool.on('error', () => undefined);
        return (await peekPool.query(sqlText, params)).rows as T[];
      }
      peekDb ??= new Database(path.join(dataDir, 'buildfleet.db'), { readonly: true, fileMustExist: true });
      return peekDb.prepare(sqlText.replace(/\$\d+/g, '?')).all(...params) as T[];
    },
    async close() {
      rig.onWorkerLock = undefined;
      for (const b of barriers.splice(0)) b.open();
      for (const w of workers.splice(0)) await w.stop().catch(() => undefined);
      peekDb?.close();
      await peekPool?.end();
      for (const d of dirs.splice(0)) await fs.rm(d, { recursive: true, force: true });
      for (const c of cleanups.splice(0).reverse()) await c();
    },
  };
  return rig;
}

/** The error code of a protocol error answer (asserts the shape). */
export async function errorCode(res: Response): Promise<string> {
  const text = await res.text();
  const body = JSON.parse(text) as { error?: { code?: unknown; message?: unknown } };
  if (typeof body.error?.code !== 'string' || typeof body.error.message !== 'string') {
    throw new Error(`status ${res.status}: not an error body: ${text.slice(0, 200)}`);
  }
  return body.error.code;
}
