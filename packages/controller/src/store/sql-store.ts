/**
 * The store on SQL (SQLite via better-sqlite3, PostgreSQL via pg): the
 * `Store` interface (types.ts) mapped onto one module per aggregate under
 * `sql/`, in the manner of graphile-worker's `src/sql/*.ts` and Woodpecker's
 * per-entity datastore files. Each module owns its statements, their
 * reasoning and its dialect differences:
 *
 * | module              | Store methods                                                          |
 * |---------------------|------------------------------------------------------------------------|
 * | `sql/tokens.ts`     | secrets, API tokens, enrollment tokens                                 |
 * | `sql/workers.ts`    | registerNew, reregister, authenticateWorker, list/get/drain/deleteWorker |
 * | `sql/claims.ts`     | poll (re-delivery, then the one-statement claim)                       |
 * | `sql/leases.ts`     | heartbeat, cancelsRequested, reap                                      |
 * | `sql/builds.ts`     | create/get/list builds, cancel, start, finish                          |
 * | `sql/logs.ts`       | appendLog, readLog, checkWritable                                      |
 * | `sql/artifacts.ts`  | recordArtifact, listArtifacts, getArtifact                             |
 * | `sql/retention.ts`  | `retention` (the collector's batches), setKeep                         |
 * | `sql/webhooks.ts`   | `webhooks` (subscriptions, delivery queue); the outbox rows of transitions |
 * | `sql/secrets.ts`    | secrets, their hand-outs (issue 13)                                    |
 * | `sql/caches.ts`     | build cache entries, LRU eviction (issue 13)                           |
 * | `sql/concurrency.ts`| the claim's concurrency-group rule, cancelOlderInGroup (issue 13)      |
 *
 * Shared by them: `sql/context.ts` (transactions, error mapping, row locks),
 * `sql/transitions.ts` (every build state change, from domain/transition.ts),
 * `sql/batch-transitions.ts` (the same, set-based, for many builds at once:
 * reaper, worker deletion, restart),
 * `sql/worker-auth.ts` (access-token checks, held builds), `sql/fencing.ts`
 * (attempt fencing of build-token writes), `sql/rows.ts` (row mapping).
 */
import { sql, Migrator, type Kysely } from 'kysely';
import type { Build, BuildOutcome, EnrollmentToken, LimitReason, MinuteStat, QueueGroup, Scope, Secret, SecretHandout, Worker } from '@buildfleet/protocol';
import type { FleetEntry, QueuedEntry } from '../domain/waiting.js';
import { mapDbError } from './errors.js';
import { appliedMigrations, assertSchemaNotNewer } from './schema-guard.js';
import { migrationProvider, type DB, type Dialect } from './schema.js';
import { run, workerRowLock, type SqlContext, type StoreLogger, type WorkerLockDecorator } from './sql/context.js';
import * as artifacts from './sql/artifacts.js';
import * as builds from './sql/builds.js';
import * as claims from './sql/claims.js';
import * as dashboard from './sql/dashboard.js';
import * as leases from './sql/leases.js';
import * as logs from './sql/logs.js';
import * as tokens from './sql/tokens.js';
import * as workers from './sql/workers.js';
import * as retention from './sql/retention.js';
import * as webhooks from './sql/webhooks.js';
import { withCollectorLock } from './sql/collector-lock.js';
import { buildNotFound } from './sql/rows.js';
import * as secrets from './sql/secrets.js';
import * as caches from './sql/caches.js';
import * as concurrency from './sql/concurrency.js';
import type { RejectReason } from '../domain/transition.js';
import type {
  ArtifactInput,
  CacheLookup,
  NewCacheEntry,
  SealedSecret,
  StoredCacheEntry,
  AttemptRef,
  BuildListFilter,
  HeartbeatInput,
  HeartbeatResult,
  HeldBuild,
  LogChunkInput,
  NewBuild,
  PollInput,
  ReapOptions,
  ReapResult,
  RegisterNewInput,
  RegisterResult,
  ReregisterInput,
  RetentionStore,
  StepResult,
  Store,
  WebhookStore,
  StoredArtifact,
  WorkerAuth,
} from './types.js';

export interface SqlStoreOptions {
  db: Kysely<DB>;
  dialect: Dialect;
  logger?: StoreLogger;
  /** Wraps the worker row lock (see `WorkerLockDecorator`); none in production. */
  decorateWorkerLock?: WorkerLockDecorator;
}

/** `Store` on SQL; every method's contract is documented on `Store` (types.ts). */
export class SqlStore implements Store {
  readonly dialect: Dialect;
  private readonly ctx: SqlContext;
  readonly retention: RetentionStore;
  readonly webhooks: WebhookStore;

  constructor(options: SqlStoreOptions) {
    this.dialect = options.dialect;
    const lock = workerRowLock(options.dialect);
    this.ctx = {
      db: options.db,
      dialect: options.dialect,
      logger: options.logger,
      lockWorker: options.decorateWorkerLock ? options.decorateWorkerLock(lock) : lock,
    };
    const ctx = this.ctx;
    this.retention = {
      expireBatch: (kind, cutoff, limit, now) => run(() => retention.expireBatch(ctx, kind, cutoff, limit, now)),
      evictBatch: (want, limit, now) => run(() => retention.evictBatch(ctx, want, limit, now)),
      liveBlobBytes: () => run(() => retention.liveBlobBytes(ctx)),
      liveLogBytes: () => run(() => retention.liveLogBytes(ctx)),
      unreferencedBlobs: (keys) => run(() => retention.unreferenced(ctx.db, keys)),
      expireWebhookEvents: (cutoff, limit) => run(() => retention.expireWebhookEvents(ctx, cutoff, limit)),
      reclaimSpace: () => run(() => retention.reclaimSpace(ctx)),
      withCollectorLock: (fn) => withCollectorLock(ctx.db, ctx.dialect, fn),
    };
    this.webhooks = {
      createWebhook: (input) => run(() => webhooks.createWebhook(ctx, input)),
      listWebhooks: () => run(() => webhooks.listWebhooks(ctx)),
      deleteWebhook: (id) => run(() => webhooks.deleteWebhook(ctx, id)),
      listDeliveries: (id, opts) => run(() => webhooks.listDeliveries(ctx, id, opts)),
      claimDeliveries: (input) => run(() => webhooks.claimDeliveries(ctx, input)),
      recordDelivery: (o) => run(() => webhooks.recordDelivery(ctx, o)),
    };
  }

  async setKeep(id: string, keep: boolean): Promise<Build> {
    if (!(await run(() => retention.setKeep(this.ctx, id, keep)))) throw buildNotFound(id);
    return this.getBuild(id);
  }

  // --- lifecycle -------------------------------------------------------------

  async migrate(): Promise<void> {
    const provider = migrationProvider(this.dialect);
    assertSchemaNotNewer(await run(() => appliedMigrations(this.ctx.db)), Object.keys(await provider.getMigrations()));
    const migrator = new Migrator({ db: this.ctx.db, provider });
    const { error, results } = await migrator.migrateToLatest();
    if (error) {
      const failed = results?.find((r) => r.status === 'Error');
      throw mapDbError(error instanceof Error ? error : new Error(`migration ${failed?.migrationName ?? '?'} failed: ${String(error)}`));
    }
  }

  async close(): Promise<void> {
    await this.ctx.db.destroy();
  }

  async ping(): Promise<void> {
    await run(() => sql`select 1`.execute(this.ctx.db));
  }

  // --- tokens ------------------------------------------------------------------

  getOrCreateSecret(name: string, generate: () => string): Promise<string> {
    return tokens.getOrCreateSecret(this.ctx, name, generate);
  }
  ensureApiToken(hash: string, description: string, now: number): Promise<void> {
    return tokens.ensureApiToken(this.ctx, hash, description, now);
  }
  isApiToken(hash: string): Promise<boolean> {
    return tokens.isApiToken(this.ctx, hash);
  }
  countApiTokens(): Promise<number> {
    return tokens.countApiTokens(this.ctx);
  }
  createEnrollmentToken(input: Parameters<Store['createEnrollmentToken']>[0]): Promise<EnrollmentToken> {
    return tokens.createEnrollmentToken(this.ctx, input);
  }
  ensureEnrollmentToken(hash: string, description: string, now: number): Promise<void> {
    return tokens.ensureEnrollmentToken(this.ctx, hash, description, now);
  }
  listEnrollmentTokens(): Promise<EnrollmentToken[]> {
    return tokens.listEnrollmentTokens(this.ctx);
  }
  revokeEnrollmentToken(id: string, now: number): Promise<void> {
    return tokens.revokeEnrollmentToken(this.ctx, id, now);
  }

  // --- workers -----------------------------------------------------------------

  registerNew(input: RegisterNewInput): Promise<RegisterResult> {
    return workers.registerNew(this.ctx, input);
  }

  checkEnrollmentToken(hash: string | undefined, now: number, registrationId?: string): Promise<void> {
    return tokens.checkEnrollmentToken(this.ctx, hash, now, registrationId);
  }

  checkWorkerSecret(workerId: string, secretHash: string): Promise<void> {
    return workers.checkWorkerSecret(this.ctx, workerId, secretHash);
  }
  reregister(input: ReregisterInput): Promise<RegisterResult> {
    return workers.reregister(this.ctx, input);
  }
  authenticateWorker(auth: WorkerAuth): Promise<void> {
    return workers.authenticateWorker(this.ctx, auth);
  }
  listWorkers(now: number, leaseMs: number): Promise<Worker[]> {
    return workers.listWorkers(this.ctx, now, leaseMs);
  }
  getWorker(id: string, now: number, leaseMs: number): Promise<Worker> {
    return workers.getWorker(this.ctx, id, now, leaseMs);
  }
  drainWorker(id: string, now: number, leaseMs: number): Promise<Worker> {
    return workers.drainWorker(this.ctx, id, now, leaseMs);
  }

  resumeWorker(id: string, now: number, leaseMs: number): Promise<Worker> {
    return workers.resumeWorker(this.ctx, id, now, leaseMs);
  }
  deleteWorker(id: string, now: number): Promise<{ lost: string[] }> {
    return workers.deleteWorker(this.ctx, id, now);
  }

  // --- claims and leases ---------------------------------------------------------

  poll(input: PollInput): Promise<HeldBuild[]> {
    return claims.poll(this.ctx, input);
  }
  heartbeat(input: HeartbeatInput): Promise<HeartbeatResult> {
    return leases.heartbeat(this.ctx, input);
  }
  cancelsRequested(workerId: string, buildIds: readonly string[]): Promise<string[]> {
    return leases.cancelsRequested(this.ctx, workerId, buildIds);
  }
  reap(options: ReapOptions): Promise<ReapResult> {
    return leases.reap(this.ctx, options);
  }

  // --- builds --------------------------------------------------------------------

  createBuild(input: NewBuild): Promise<Build> {
    return builds.createBuild(this.ctx, input);
  }
  getBuild(id: string): Promise<Build> {
    return builds.getBuild(this.ctx, id);
  }
  getSourceKey(id: string): Promise<string> {
    return builds.getSourceKey(this.ctx, id);
  }
  listBuilds(filter: BuildListFilter): Promise<{ builds: Build[]; nextCursor: string | null; prevCursor: string | null }> {
    return builds.listBuilds(this.ctx, filter);
  }

  listQueued(): Promise<QueuedEntry[]> {
    return dashboard.listQueued(this.ctx);
  }

  workerNames(ids: string[]): Promise<Map<string, string>> {
    return dashboard.workerNames(this.ctx, ids);
  }

  waitingFleet(now: number, leaseMs: number): Promise<FleetEntry[]> {
    return dashboard.waitingFleet(this.ctx, now, leaseMs);
  }

  stats(now: number, minutes: number): Promise<{ queue: QueueGroup[]; minutes: MinuteStat[] }> {
    return dashboard.queueStats(this.ctx, now, minutes);
  }
  hasQueuedBuilds(): Promise<boolean> {
    return builds.hasQueuedBuilds(this.ctx);
  }
  cancelBuild(id: string, now: number): Promise<Build> {
    return builds.cancelBuild(this.ctx, id, now);
  }
  startBuild(ref: AttemptRef, now: number, leaseMs: number): Promise<StepResult> {
    return builds.startBuild(this.ctx, ref, now, leaseMs);
  }
  finishBuild(
    ref: AttemptRef & { outcome: BuildOutcome; exitCode: number | null; message: string | null; limitReason?: LimitReason | undefined; now: number },
  ): Promise<StepResult> {
    return builds.finishBuild(this.ctx, ref);
  }

  // --- logs and artifacts ----------------------------------------------------------

  appendLog(input: LogChunkInput): Promise<{ offset: number; truncated?: boolean }> {
    return logs.appendLog(this.ctx, input);
  }
  readLog(buildId: string, attempt: number, offset: number, limit: number): Promise<Buffer> {
    return logs.readLog(this.ctx, buildId, attempt, offset, limit);
  }
  checkWritable(ref: AttemptRef): Promise<void> {
    return logs.checkWritable(this.ctx, ref);
  }
  recordArtifact(input: ArtifactInput): Promise<{ created: boolean }> {
    return artifacts.recordArtifact(this.ctx, input);
  }
  listArtifacts(buildId: string): Promise<StoredArtifact[]> {
    return artifacts.listArtifacts(this.ctx, buildId);
  }
  getArtifact(buildId: string, name: string): Promise<StoredArtifact> {
    return artifacts.getArtifact(this.ctx, buildId, name);
  }

  // --- secrets, caches, concurrency groups, workers that leave (issue 13) ------------

  putSecret(input: { name: string; sealed: string; scope: Scope; now: number }): Promise<{ secret: Secret; created: boolean }> {
    return secrets.putSecret(this.ctx, input);
  }
  listSecrets(): Promise<Secret[]> {
    return secrets.listSecrets(this.ctx);
  }
  getSecret(name: string): Promise<Secret> {
    return secrets.getSecret(this.ctx, name);
  }
  deleteSecret(name: string): Promise<void> {
    return secrets.deleteSecret(this.ctx, name);
  }
  sealedSecrets(names: readonly string[]): Promise<SealedSecret[]> {
    return secrets.sealedSecrets(this.ctx, names);
  }
  recordHandouts(ref: AttemptRef, names: readonly string[], now: number): Promise<void> {
    return secrets.recordHandouts(this.ctx, ref, names, now);
  }
  listHandouts(name: string, limit: number): Promise<SecretHandout[]> {
    return secrets.listHandouts(this.ctx, name, limit);
  }
  rejectBuild(ref: AttemptRef, reason: RejectReason, message: string, now: number): Promise<Build> {
    return builds.rejectBuild(this.ctx, ref, reason, message, now);
  }
  lookupCache(input: CacheLookup): Promise<{ entry: StoredCacheEntry; exact: boolean } | undefined> {
    return caches.lookupCache(this.ctx, input);
  }
  findCacheArchive(scope: string, sha256: string, now: number): Promise<StoredCacheEntry | undefined> {
    return caches.findCacheArchive(this.ctx, scope, sha256, now);
  }
  saveCache(ref: AttemptRef, input: NewCacheEntry): Promise<{ entry: StoredCacheEntry; created: boolean }> {
    return caches.saveCache(this.ctx, ref, input);
  }
  listCaches(): Promise<{ entries: StoredCacheEntry[]; totalBytes: number }> {
    return caches.listCaches(this.ctx);
  }
  deleteCache(id: string): Promise<{ orphanBlobKey: string | undefined }> {
    return caches.deleteCache(this.ctx, id);
  }
  evictCaches(maxBytes: number): Promise<{ evicted: StoredCacheEntry[]; orphanBlobKeys: string[] }> {
    return caches.evictCaches(this.ctx, maxBytes);
  }
  cancelOlderInGroup(group: string, beforeId: string, now: number): Promise<Build[]> {
    return concurrency.cancelOlderInGroup(this.ctx, group, beforeId, now);
  }
  deregisterWorker(auth: WorkerAuth): Promise<void> {
    return workers.deregisterWorker(this.ctx, auth);
  }
}
