/**
 * What every slice of the store contract shares: one store per suite on the
 * dialect's database, emptied before each test, a barrier hook inside the
 * worker row lock, times passed in explicitly (the store never reads a
 * clock), and helpers that register workers and create builds.
 */
import { createHash, randomUUID } from 'node:crypto';
import { v7 as uuidv7 } from 'uuid';
import { afterAll, beforeAll, beforeEach, expect } from 'vitest';
import { ApiError, normalizeSpec, type BuildSpecInput, type ErrorCode } from '@buildfleet/protocol';
import type { KyselyPlugin, PluginTransformQueryArgs, PluginTransformResultArgs, QueryResult, RootOperationNode, UnknownRow } from 'kysely';
import { openDatabase, SqlStore, type OpenStoreOptions, type WorkerLockDecorator } from '../../../src/store/index.js';
import type { Store } from '../../../src/store/types.js';
import { afterWorkerLock, type AfterWorkerLock } from '../../support/store-hooks.js';

/** What the suite puts into the store it opens: a barrier hook and statement counting. */
export interface StoreInstrumentation {
  decorateWorkerLock: WorkerLockDecorator;
  /** Kysely plugins on the store's database (`openInstrumentedStore`). */
  plugins: KyselyPlugin[];
}

/** Opens a store on the suite's (already created) database with the given instrumentation. */
export type OpenStore = (instrumentation: StoreInstrumentation) => Promise<Store>;

/**
 * `openStore` with instrumentation: the same database configuration
 * (`openDatabase`), with `plugins` on the store's Kysely instance.
 */
export function openInstrumentedStore(options: OpenStoreOptions, i: StoreInstrumentation): Promise<Store> {
  const opened = openDatabase(options);
  const db = i.plugins.reduce((d, p) => d.withPlugin(p), opened.db);
  return Promise.resolve(new SqlStore({ db, dialect: opened.dialect, decorateWorkerLock: i.decorateWorkerLock }));
}

/** Counts the statements the store sends (every compiled query; BEGIN and COMMIT are not queries). */
export class StatementCounter implements KyselyPlugin {
  count = 0;
  transformQuery(args: PluginTransformQueryArgs): RootOperationNode {
    this.count++;
    return args.node;
  }
  transformResult(args: PluginTransformResultArgs): Promise<QueryResult<UnknownRow>> {
    return Promise.resolve(args.result);
  }
  /** Statements sent while `fn` runs. */
  async during(fn: () => Promise<unknown>): Promise<number> {
    const before = this.count;
    await fn();
    return this.count - before;
  }
}

export interface ContractOptions {
  /** Deletes every row of the suite's database (keeps the schema); runs before each test. */
  reset: () => Promise<void>;
  /**
   * Resolves once another connection waits on a row lock (PostgreSQL:
   * pg_stat_activity). Absent on SQLite, where the store's single connection
   * already serialises every transaction.
   */
  waitForLockWaiter?: () => Promise<void>;
}

export const T0 = Date.UTC(2026, 0, 1);
export const TTL = 3_600_000;
export const ACK = 30_000;
export const LEASE = 60_000;
export const ENROLL = 'bfe_enroll';

export const sha = (s: string) => createHash('sha256').update(s).digest('hex');

/** Awaits `p` and asserts it rejects with `ApiError(code)`; resolves that error. */
export async function expectCode(p: Promise<unknown>, code: ErrorCode): Promise<ApiError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(ApiError);
    expect((err as ApiError).code).toBe(code);
    return err as ApiError;
  }
  throw new Error(`expected ApiError ${code}, got success`);
}

export interface TestWorker {
  id: string;
  tokenHash: string;
  secretHash: string;
}

export interface StoreFixture {
  /** The suite's store (set before the first test). */
  readonly store: Store;
  /** Set by a test to stop inside the worker row lock; cleared before each test. */
  hooks: { afterWorkerLock?: AfterWorkerLock };
  readonly options: ContractOptions;
  /** Counts every statement the suite's store sends. */
  readonly statements: StatementCounter;
  /** A monotonically increasing time for build ids (UUIDv7 sorts by it). */
  tick(): number;
  /** Registers a worker with the default enrollment token (`maxConcurrentBuilds` 4 unless given). */
  worker(opts?: { labels?: string[]; name?: string; bootId?: string; now?: number; maxConcurrentBuilds?: number; executor?: string }): Promise<TestWorker>;
  /** Submits a build created at `now` (default `tick()`). */
  build(spec?: Partial<BuildSpecInput>, now?: number): ReturnType<Store['createBuild']>;
  /** One poll of `w` (default 1 free slot, nothing active, at T0 + 1 s). */
  poll(w: { id: string; tokenHash: string }, freeSlots?: number, activeBuildIds?: string[], now?: number): ReturnType<Store['poll']>;
  /** A build assigned to and started by a fresh worker (attempt 1, started at T0 + 2 s). */
  running(spec?: Partial<BuildSpecInput>): Promise<{ w: TestWorker; b: Awaited<ReturnType<Store['createBuild']>> }>;
}

/**
 * Registers the suite's hooks (open once, reset and seed the default
 * enrollment token before each test, close after all) and returns the fixture.
 * Call inside a `describe`.
 */
export function useStoreFixture(open: OpenStore, options: ContractOptions): StoreFixture {
  let store: Store | undefined;
  let clockMs = T0;
  const f: StoreFixture = {
    get store() {
      if (!store) throw new Error('the store is opened in beforeAll');
      return store;
    },
    hooks: {},
    options,
    statements: new StatementCounter(),
    tick: () => (clockMs += 1),
    async worker(opts = {}) {
      const token = `bfw_${randomUUID()}`;
      const secret = `bfs_${randomUUID()}`;
      const res = await f.store.registerNew({
        enrollmentTokenHash: sha(ENROLL),
        newWorkerId: uuidv7(),
        secretHash: sha(secret),
        accessToken: { hash: sha(token), expiresAt: (opts.now ?? T0) + TTL },
        name: opts.name ?? 'w',
        labels: opts.labels ?? [],
        maxConcurrentBuilds: opts.maxConcurrentBuilds ?? 4,
        version: '1',
        bootId: opts.bootId ?? 'boot-1',
        ...(opts.executor !== undefined ? { executor: opts.executor } : {}),
        now: opts.now ?? T0,
      });
      return { id: res.workerId, tokenHash: sha(token), secretHash: sha(secret) };
    },
    build(spec = {}, now = f.tick()) {
      return f.store.createBuild({
        id: uuidv7({ msecs: now }),
        spec: normalizeSpec({ script: 'true', ...spec }),
        sourceKey: `src/${now}`,
        sourceSize: 10,
        sourceSha256: sha('src'),
        now,
      });
    },
    poll: (w, freeSlots = 1, activeBuildIds = [], now = T0 + 1000) =>
      f.store.poll({ workerId: w.id, tokenHash: w.tokenHash, now, freeSlots, activeBuildIds, ackTimeoutMs: ACK }),
    async running(spec = {}) {
      const w = await f.worker();
      const b = await f.build(spec);
      const [held] = await f.poll(w);
      expect(held?.id).toBe(b.id);
      await f.store.startBuild({ buildId: b.id, attempt: 1 }, T0 + 2000, LEASE);
      return { w, b };
    },
  };
  beforeAll(async () => {
    store = await open({ decorateWorkerLock: afterWorkerLock((op, workerId) => f.hooks.afterWorkerLock?.(op, workerId)), plugins: [f.statements] });
    await store.migrate();
  });
  afterAll(async () => {
    await store?.close();
  });
  beforeEach(async () => {
    delete f.hooks.afterWorkerLock;
    await options.reset();
    await f.store.ensureEnrollmentToken(sha(ENROLL), 'default', T0);
    clockMs = T0;
  });
  return f;
}
