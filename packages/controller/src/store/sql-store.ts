/**
 * The store on SQL: one implementation for SQLite (better-sqlite3) and
 * PostgreSQL (pg), switching on `dialect` only where the SQL must differ
 * (row locks, the claim's label-subset test, JSON containment).
 *
 * Concurrency (STYLE.md "Concurrency rules"):
 * - every write transaction excludes the others on SQLite (`BEGIN IMMEDIATE`);
 *   on PostgreSQL a transaction that acts for a worker locks the worker's row
 *   first (`FOR UPDATE`), then touches build rows;
 * - every state change takes its SET values from `transition()` and is
 *   conditional on the state and attempt it read; zero rows = a lost race;
 * - the claim is one `UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED)`.
 */
import { timingSafeEqual } from 'node:crypto';
import { sql, Migrator, type Kysely, type Selectable, type Transaction } from 'kysely';
import { v7 as uuidv7 } from 'uuid';
import {
  ApiError,
  isTerminal,
  type Build,
  type BuildOutcome,
  type BuildSpec,
  type BuildState,
  type EnrollmentToken,
  type Worker,
} from '@buildfleet/protocol';
import { transition, type BuildEvent, type BuildPatch, type LostReason, type TransitionResult } from '../domain/transition.js';
import { isUniqueViolation, mapDbError } from './errors.js';
import { appliedMigrations, assertSchemaNotNewer } from './schema-guard.js';
import { migrationProvider, type DB, type Dialect, type BuildsTable, type WorkersTable, type BuildAttemptsTable } from './schema.js';
import type {
  ArtifactInput,
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
  Store,
  StoredArtifact,
  WorkerAuth,
} from './types.js';

type BuildRow = Selectable<BuildsTable>;
type WorkerRow = Selectable<WorkersTable>;
type AttemptRow = Selectable<BuildAttemptsTable>;
type Db = Kysely<DB> | Transaction<DB>;

/** Minimal logger (pino-compatible). */
export interface StoreLogger {
  warn(obj: object, msg?: string): void;
}

/** Operations that lock a worker's row (for the test hook). */
export type WorkerLockOp = 'poll' | 'heartbeat' | 'reregister' | 'deleteWorker';

/**
 * Test hooks: deterministic barriers inside transactions. Never set in
 * production. `afterWorkerLock` runs while the transaction holds the worker's
 * row lock (PostgreSQL) or the write lock (SQLite).
 */
export interface StoreHooks {
  afterWorkerLock?(op: WorkerLockOp, workerId: string): Promise<void> | void;
}

export interface SqlStoreOptions {
  db: Kysely<DB>;
  dialect: Dialect;
  logger?: StoreLogger;
  hooks?: StoreHooks;
}

function toIso(ms: number | null): string | null {
  return ms === null ? null : new Date(ms).toISOString();
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

function parseJson<T>(text: string): T {
  return JSON.parse(text) as T;
}

function uniq(ids: readonly string[]): string[] {
  return [...new Set(ids)];
}

/** Maps a build row and its attempt rows to the protocol `Build` (ISO strings). */
export function rowToBuild(row: BuildRow, attempts: AttemptRow[]): Build {
  const spec = parseJson<BuildSpec>(row.spec);
  return {
    id: row.id,
    state: row.state,
    attempt: row.attempt,
    workerId: row.worker_id,
    spec,
    cancelRequested: Number(row.cancel_requested) === 1,
    exitCode: row.exit_code,
    reason: row.reason,
    message: row.message,
    createdAt: toIso(row.created_at)!,
    assignedAt: toIso(row.assigned_at),
    startedAt: toIso(row.started_at),
    finishedAt: toIso(row.finished_at),
    ackDeadline: toIso(row.ack_deadline),
    leaseExpiresAt: toIso(row.lease_expires_at),
    sourceSize: Number(row.source_size),
    sourceSha256: row.source_sha256,
    attempts: attempts
      .slice()
      .sort((a, b) => a.attempt - b.attempt)
      .map((a) => ({
        attempt: a.attempt,
        workerId: a.worker_id,
        state: a.state,
        assignedAt: toIso(a.assigned_at),
        startedAt: toIso(a.started_at),
        finishedAt: toIso(a.finished_at),
        reason: a.reason,
        exitCode: a.exit_code,
      })),
  };
}

function toHeld(row: BuildRow): HeldBuild {
  return {
    id: row.id,
    attempt: row.attempt,
    state: row.state,
    spec: parseJson<BuildSpec>(row.spec),
    ackDeadline: row.ack_deadline,
  };
}

function transitionInput(row: BuildRow) {
  return {
    state: row.state,
    attempt: row.attempt,
    maxAttempts: row.max_attempts,
    cancelRequested: Number(row.cancel_requested) === 1,
  };
}

function encodeCursor(row: BuildRow): string {
  return Buffer.from(JSON.stringify([row.created_at, row.id])).toString('base64url');
}

function decodeCursor(cursor: string): { createdAt: number; id: string } {
  try {
    const v = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as unknown;
    if (Array.isArray(v) && v.length === 2 && Number.isSafeInteger(v[0]) && typeof v[1] === 'string') {
      return { createdAt: v[0] as number, id: v[1] };
    }
  } catch {
    // fall through
  }
  throw new ApiError('VALIDATION_FAILED', 'cursor: not a cursor returned by this listing');
}

const HELD_STATES: BuildState[] = ['assigned', 'running'];

export class SqlStore implements Store {
  readonly dialect: Dialect;
  private readonly db: Kysely<DB>;
  private readonly hooks: StoreHooks | undefined;
  private readonly logger: StoreLogger | undefined;

  constructor(options: SqlStoreOptions) {
    this.db = options.db;
    this.dialect = options.dialect;
    this.hooks = options.hooks;
    this.logger = options.logger;
  }

  private get pg(): boolean {
    return this.dialect === 'postgres';
  }

  /**
   * Runs one store operation: maps driver errors (UNAVAILABLE), and re-runs
   * the whole operation after a unique violation from a concurrent duplicate
   * insert, so the retry finds the row and gives the idempotent answer.
   */
  private async run<T>(fn: () => Promise<T>): Promise<T> {
    for (let i = 0; ; i++) {
      try {
        return await fn();
      } catch (err) {
        if (i < 3 && isUniqueViolation(err)) continue;
        throw mapDbError(err);
      }
    }
  }

  /** A write transaction: `BEGIN IMMEDIATE` on SQLite (see dialects.ts); lock and statement timeouts are set per connection on PostgreSQL. */
  private tx<T>(fn: (trx: Transaction<DB>) => Promise<T>): Promise<T> {
    return this.run(() => this.db.transaction().execute(fn));
  }

  // --- lifecycle -------------------------------------------------------------

  async migrate(): Promise<void> {
    const provider = migrationProvider(this.dialect);
    assertSchemaNotNewer(await this.run(() => appliedMigrations(this.db)), Object.keys(await provider.getMigrations()));
    const migrator = new Migrator({ db: this.db, provider });
    const { error, results } = await migrator.migrateToLatest();
    if (error) {
      const failed = results?.find((r) => r.status === 'Error');
      throw mapDbError(error instanceof Error ? error : new Error(`migration ${failed?.migrationName ?? '?'} failed: ${String(error)}`));
    }
  }

  async close(): Promise<void> {
    await this.db.destroy();
  }

  async ping(): Promise<void> {
    await this.run(() => sql`select 1`.execute(this.db));
  }

  /** Test support: deletes every row (keeps the schema). */
  async resetForTests(): Promise<void> {
    await this.tx(async (trx) => {
      for (const t of ['log_chunks', 'artifacts', 'build_attempts', 'builds', 'workers', 'enrollment_tokens', 'api_tokens', 'settings'] as const) {
        await trx.deleteFrom(t).execute();
      }
    });
  }

  async getOrCreateSecret(name: string, generate: () => string): Promise<string> {
    return this.run(async () => {
      await this.db
        .insertInto('settings')
        .values({ name, value: generate() })
        .onConflict((oc) => oc.column('name').doNothing())
        .execute();
      const row = await this.db.selectFrom('settings').select('value').where('name', '=', name).executeTakeFirstOrThrow();
      return row.value;
    });
  }

  // --- API and enrollment tokens ------------------------------------------------

  async ensureApiToken(hash: string, description: string, now: number): Promise<void> {
    await this.run(() =>
      this.db
        .insertInto('api_tokens')
        .values({ hash, description, created_at: now, revoked_at: null })
        .onConflict((oc) => oc.column('hash').doNothing())
        .execute(),
    );
  }

  async isApiToken(hash: string): Promise<boolean> {
    return this.run(async () => {
      const row = await this.db
        .selectFrom('api_tokens')
        .select('hash')
        .where('hash', '=', hash)
        .where('revoked_at', 'is', null)
        .executeTakeFirst();
      return row !== undefined;
    });
  }

  async countApiTokens(): Promise<number> {
    return this.run(async () => {
      const row = await this.db
        .selectFrom('api_tokens')
        .select((eb) => eb.fn.countAll<number>().as('n'))
        .where('revoked_at', 'is', null)
        .executeTakeFirstOrThrow();
      return Number(row.n);
    });
  }

  private toEnrollmentToken(row: Selectable<DB['enrollment_tokens']>): EnrollmentToken {
    return {
      id: row.id,
      description: row.description,
      createdAt: toIso(row.created_at)!,
      expiresAt: toIso(row.expires_at),
      maxUses: row.max_uses,
      uses: row.uses,
      revoked: row.revoked_at !== null,
    };
  }

  async createEnrollmentToken(input: {
    id: string;
    hash: string;
    description: string | null;
    expiresAt: number | null;
    maxUses: number | null;
    now: number;
  }): Promise<EnrollmentToken> {
    return this.run(async () => {
      const row = {
        id: input.id,
        hash: input.hash,
        description: input.description,
        created_at: input.now,
        expires_at: input.expiresAt,
        max_uses: input.maxUses,
        uses: 0,
        revoked_at: null,
      };
      await this.db.insertInto('enrollment_tokens').values(row).execute();
      return this.toEnrollmentToken(row);
    });
  }

  async ensureEnrollmentToken(hash: string, description: string, now: number): Promise<void> {
    await this.run(() =>
      this.db
        .insertInto('enrollment_tokens')
        .values({
          id: uuidv7({ msecs: now }),
          hash,
          description,
          created_at: now,
          expires_at: null,
          max_uses: null,
          uses: 0,
          revoked_at: null,
        })
        .onConflict((oc) => oc.column('hash').doNothing())
        .execute(),
    );
  }

  async listEnrollmentTokens(): Promise<EnrollmentToken[]> {
    return this.run(async () => {
      const rows = await this.db.selectFrom('enrollment_tokens').selectAll().orderBy('created_at').orderBy('id').execute();
      return rows.map((r) => this.toEnrollmentToken(r));
    });
  }

  async revokeEnrollmentToken(id: string, now: number): Promise<void> {
    await this.run(async () => {
      const res = await this.db
        .updateTable('enrollment_tokens')
        .set({ revoked_at: sql<number>`coalesce(revoked_at, ${now})` })
        .where('id', '=', id)
        .executeTakeFirst();
      if (Number(res.numUpdatedRows) === 0) throw new ApiError('NOT_FOUND', `enrollment token ${id} not found`);
    });
  }

  // --- workers --------------------------------------------------------------

  /** Validates an enrollment token; with `consume`, takes one use (conditional on uses left). */
  private async useEnrollmentToken(trx: Db, hash: string | undefined, now: number, consume: boolean): Promise<void> {
    if (!hash) throw new ApiError('TOKEN_INVALID', 'an enrollment token is required to register a new worker');
    const tok = await trx.selectFrom('enrollment_tokens').selectAll().where('hash', '=', hash).executeTakeFirst();
    if (!tok || tok.revoked_at !== null) throw new ApiError('TOKEN_INVALID', 'enrollment token unknown or revoked');
    if (!consume) return;
    if (tok.expires_at !== null && tok.expires_at <= now) throw new ApiError('TOKEN_EXPIRED', 'enrollment token expired');
    const res = await trx
      .updateTable('enrollment_tokens')
      .set({ uses: sql<number>`uses + 1` })
      .where('id', '=', tok.id)
      .where((eb) => eb.or([eb('max_uses', 'is', null), eb('uses', '<', eb.ref('max_uses'))]))
      .executeTakeFirst();
    if (Number(res.numUpdatedRows) === 0) throw new ApiError('TOKEN_INVALID', 'enrollment token used up');
  }

  async registerNew(input: RegisterNewInput): Promise<RegisterResult> {
    return this.tx(async (trx) => {
      const labels = JSON.stringify(uniq(input.labels).sort());
      if (input.registrationId !== undefined) {
        const existing = await this.lockQuery(
          trx.selectFrom('workers').selectAll().where('registration_id', '=', input.registrationId),
        ).executeTakeFirst();
        if (existing) {
          if (existing.first_auth_at !== null) {
            throw new ApiError('INVALID_TRANSITION', 'registrationId already used: the worker has authenticated since');
          }
          // A retry after a lost answer: same worker, fresh credentials; the lost ones are void.
          await this.useEnrollmentToken(trx, input.enrollmentTokenHash, input.now, false);
          await trx
            .updateTable('workers')
            .set({
              secret_hash: input.secretHash,
              access_token_hash: input.accessToken.hash,
              access_token_expires_at: input.accessToken.expiresAt,
              name: input.name,
              labels,
              max_concurrent_builds: input.maxConcurrentBuilds,
              version: input.version,
              boot_id: input.bootId ?? existing.boot_id,
            })
            .where('id', '=', existing.id)
            .execute();
          return { workerId: existing.id, created: true, builds: [], abandon: [], lost: [] };
        }
      }
      await this.useEnrollmentToken(trx, input.enrollmentTokenHash, input.now, true);
      await trx
        .insertInto('workers')
        .values({
          id: input.newWorkerId,
          name: input.name,
          labels,
          max_concurrent_builds: input.maxConcurrentBuilds,
          version: input.version,
          status: 'active',
          secret_hash: input.secretHash,
          access_token_hash: input.accessToken.hash,
          access_token_expires_at: input.accessToken.expiresAt,
          boot_id: input.bootId ?? null,
          superseded_boot_ids: '[]',
          registration_id: input.registrationId ?? null,
          first_auth_at: null,
          active_build_count: 0,
          created_at: input.now,
          last_seen_at: input.now,
        })
        .execute();
      return { workerId: input.newWorkerId, created: true, builds: [], abandon: [], lost: [] };
    });
  }

  /** Adds `FOR UPDATE` on PostgreSQL (SQLite's `BEGIN IMMEDIATE` already excludes every other writer). */
  private lockQuery<Q extends { forUpdate(): Q }>(q: Q): Q {
    return this.pg ? q.forUpdate() : q;
  }

  private async lockWorker(trx: Transaction<DB>, workerId: string, op: WorkerLockOp): Promise<WorkerRow | undefined> {
    const row = await this.lockQuery(trx.selectFrom('workers').selectAll().where('id', '=', workerId)).executeTakeFirst();
    await this.hooks?.afterWorkerLock?.(op, workerId);
    return row;
  }

  /**
   * PROTOCOL.md order for a worker access token on `/workers/{id}/…`: unknown
   * token on a missing worker → WORKER_NOT_FOUND; unknown → TOKEN_INVALID;
   * expired → TOKEN_EXPIRED (authentication before authorization); another
   * worker's → FORBIDDEN.
   */
  private async checkAccessToken(trx: Db, pathWorker: WorkerRow | undefined, auth: WorkerAuth): Promise<WorkerRow> {
    if (pathWorker && safeEqual(pathWorker.access_token_hash, auth.tokenHash)) {
      if (pathWorker.access_token_expires_at <= auth.now) throw new ApiError('TOKEN_EXPIRED', 'worker access token expired');
      return pathWorker;
    }
    const owner = await trx
      .selectFrom('workers')
      .select(['id', 'access_token_expires_at'])
      .where('access_token_hash', '=', auth.tokenHash)
      .executeTakeFirst();
    if (!owner) {
      if (!pathWorker) throw new ApiError('WORKER_NOT_FOUND', `worker ${auth.workerId} not found`);
      throw new ApiError('TOKEN_INVALID', 'worker access token unknown or rotated');
    }
    if (owner.access_token_expires_at <= auth.now) throw new ApiError('TOKEN_EXPIRED', 'worker access token expired');
    throw new ApiError('FORBIDDEN', 'this access token belongs to another worker');
  }

  /** Records an authenticated call: ends `registrationId` retries, updates last_seen_at. */
  private async touchWorker(trx: Db, workerId: string, now: number, activeBuildCount?: number): Promise<void> {
    await trx
      .updateTable('workers')
      .set({
        first_auth_at: sql<number>`coalesce(first_auth_at, ${now})`,
        last_seen_at: now,
        ...(activeBuildCount !== undefined ? { active_build_count: activeBuildCount } : {}),
      })
      .where('id', '=', workerId)
      .execute();
  }

  async authenticateWorker(auth: WorkerAuth): Promise<void> {
    await this.run(async () => {
      const w = await this.db.selectFrom('workers').selectAll().where('id', '=', auth.workerId).executeTakeFirst();
      await this.checkAccessToken(this.db, w, auth);
      await this.touchWorker(this.db, auth.workerId, auth.now);
    });
  }

  private async heldBuilds(trx: Db, workerId: string): Promise<BuildRow[]> {
    return trx
      .selectFrom('builds')
      .selectAll()
      .where('worker_id', '=', workerId)
      .where('state', 'in', HELD_STATES)
      .orderBy('assigned_at')
      .orderBy('id')
      .execute();
  }

  async reregister(input: ReregisterInput): Promise<RegisterResult> {
    return this.tx(async (trx) => {
      const w = await this.lockWorker(trx, input.workerId, 'reregister');
      if (!w) throw new ApiError('WORKER_NOT_FOUND', `worker ${input.workerId} not found`);
      if (!safeEqual(w.secret_hash, input.secretHash)) throw new ApiError('TOKEN_INVALID', 'wrong worker secret');
      const superseded = parseJson<string[]>(w.superseded_boot_ids);
      if (input.bootId !== undefined && superseded.includes(input.bootId)) {
        throw new ApiError('IDENTITY_CONFLICT', 'a newer instance of this worker (another bootId) holds the identity; two processes share one identity file');
      }
      const restarted = input.bootId !== undefined && w.boot_id !== null && input.bootId !== w.boot_id;
      const active = new Set(input.activeBuildIds ?? []);
      const lost: string[] = [];
      if (restarted) {
        for (const row of await this.heldBuilds(trx, w.id)) {
          if (active.has(row.id)) continue;
          if (await this.applyTransition(trx, row, { type: 'lose', reason: 'worker_restarted' }, input.now)) lost.push(row.id);
        }
      }
      await trx
        .updateTable('workers')
        .set({
          access_token_hash: input.accessToken.hash,
          access_token_expires_at: input.accessToken.expiresAt,
          boot_id: input.bootId ?? w.boot_id,
          superseded_boot_ids: restarted ? JSON.stringify([...superseded, w.boot_id!].slice(-100)) : w.superseded_boot_ids,
          active_build_count: input.activeBuildCount ?? 0,
          first_auth_at: w.first_auth_at ?? input.now,
          last_seen_at: input.now,
          // A restarted process may come back with a new configuration; a
          // token refresh (same process) keeps what the worker registered.
          ...(restarted
            ? {
                name: input.name,
                labels: JSON.stringify(uniq(input.labels).sort()),
                max_concurrent_builds: input.maxConcurrentBuilds,
                version: input.version,
              }
            : {}),
        })
        .where('id', '=', w.id)
        .execute();
      const held = await this.heldBuilds(trx, w.id);
      const heldIds = new Set(held.map((b) => b.id));
      return {
        workerId: w.id,
        created: false,
        builds: held.map(toHeld),
        abandon: uniq(input.activeBuildIds ?? []).filter((id) => !heldIds.has(id)),
        lost,
      };
    });
  }

  async poll(input: PollInput): Promise<HeldBuild[]> {
    return this.tx(async (trx) => {
      const locked = await this.lockWorker(trx, input.workerId, 'poll');
      const w = await this.checkAccessToken(trx, locked, input);
      await this.touchWorker(trx, w.id, input.now, input.activeBuildIds.length);
      const slots = Math.max(0, input.freeSlots);
      if (slots === 0) return [];
      const active = new Set(input.activeBuildIds);
      // Re-deliveries first: an earlier answer may have been lost; the original ack deadline stays.
      const out = (await this.heldBuilds(trx, w.id))
        .filter((b) => b.state === 'assigned' && !active.has(b.id))
        .slice(0, slots)
        .map(toHeld);
      if (w.status === 'active' && out.length < slots) {
        out.push(...(await this.claim(trx, w, slots - out.length, input.now, input.ackTimeoutMs)));
      }
      return out;
    });
  }

  /**
   * Claims up to `n` queued builds whose labels are a subset of the worker's,
   * priority first then oldest, in ONE statement (STYLE.md habit 3), then
   * records each new attempt.
   */
  private async claim(trx: Transaction<DB>, w: WorkerRow, n: number, now: number, ackTimeoutMs: number): Promise<HeldBuild[]> {
    // The patch of queued → assigned does not depend on the row (attempt is unchanged).
    const t = transition(
      { state: 'queued', attempt: 1, maxAttempts: 1, cancelRequested: false },
      { type: 'assign', workerId: w.id, ackDeadline: now + ackTimeoutMs },
      now,
    );
    const subset = this.pg
      ? sql`b.labels::jsonb <@ ${w.labels}::jsonb`
      : sql`not exists (select 1 from json_each(b.labels) as l where l.value not in (select value from json_each(${w.labels})))`;
    const pick = sql`
      select b.id from builds b
      where b.state = 'queued' and ${subset}
      order by b.priority desc, b.created_at, b.id
      limit ${n}`;
    // PostgreSQL: the locked pick must run exactly once; as `IN (subquery)` the
    // planner may re-run it (a LIMIT 1 claimed 3 rows in a test), so it is a
    // MATERIALIZED CTE. Still one statement: no window between choosing and taking.
    const { rows } = this.pg
      ? await sql<BuildRow>`
          with picked as materialized (${pick} for update skip locked)
          update builds set ${this.setClause(t.build)}
          from picked
          where builds.id = picked.id and builds.state = 'queued'
          returning builds.*`.execute(trx)
      : await sql<BuildRow>`
          update builds set ${this.setClause(t.build)}
          where state = 'queued' and id in (${pick})
          returning *`.execute(trx);
    if (rows.length === 0) return [];
    rows.sort((a, b) => b.priority - a.priority || a.created_at - b.created_at || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    await trx
      .insertInto('build_attempts')
      .values(
        rows.map((r) => ({
          build_id: r.id,
          attempt: r.attempt,
          worker_id: w.id,
          state: t.attemptRow!.state,
          assigned_at: t.attemptRow!.assigned_at ?? now,
          started_at: null,
          finished_at: null,
          reason: null,
          exit_code: null,
          log_bytes: 0,
        })),
      )
      .execute();
    return rows.map(toHeld);
  }

  private setClause(patch: BuildPatch) {
    return sql.join(Object.entries(patch).map(([k, v]) => sql`${sql.ref(k)} = ${v as unknown}`));
  }

  /**
   * Applies `event` to a build row read in this transaction: the conditional
   * UPDATE (`state = from AND attempt = attempt`) plus the attempt row.
   * Returns false when zero rows matched (someone else changed the build).
   * Throws INVALID_TRANSITION when the event is not allowed from the row's state.
   */
  private async applyTransition(trx: Transaction<DB>, row: BuildRow, event: BuildEvent, now: number): Promise<TransitionResult | null> {
    const t = transition(transitionInput(row), event, now);
    const res = await trx
      .updateTable('builds')
      .set(t.build)
      .where('id', '=', row.id)
      .where('state', '=', row.state)
      .where('attempt', '=', row.attempt)
      .executeTakeFirst();
    if (Number(res.numUpdatedRows) === 0) return null;
    if (t.attemptRow) {
      await trx
        .updateTable('build_attempts')
        .set(t.attemptRow)
        .where('build_id', '=', row.id)
        .where('attempt', '=', row.attempt)
        .execute();
    }
    return t;
  }

  async heartbeat(input: HeartbeatInput): Promise<HeartbeatResult> {
    return this.tx(async (trx) => {
      const locked = await this.lockWorker(trx, input.workerId, 'heartbeat');
      const w = await this.checkAccessToken(trx, locked, input);
      const listed = uniq(input.activeBuildIds);
      await this.touchWorker(trx, w.id, input.now, listed.length);
      const held = await this.heldBuilds(trx, w.id);
      const heldById = new Map(held.map((b) => [b.id, b]));
      const extend = listed.filter((id) => heldById.get(id)?.state === 'running');
      if (extend.length > 0) {
        // Not a state change: only the lease of running builds this worker owns moves.
        await trx
          .updateTable('builds')
          .set({ lease_expires_at: input.now + input.leaseMs })
          .where('id', 'in', extend)
          .where('worker_id', '=', w.id)
          .where('state', '=', 'running')
          .execute();
      }
      return {
        cancel: held.filter((b) => b.state === 'running' && Number(b.cancel_requested) === 1).map((b) => b.id),
        abandon: listed.filter((id) => !heldById.has(id)),
        accessTokenExpiresAt: w.access_token_expires_at,
        draining: w.status === 'draining',
      };
    });
  }

  private async workerRows(where: { id?: string }): Promise<(WorkerRow & { held: number })[]> {
    let q = this.db
      .selectFrom('workers')
      .selectAll('workers')
      .select((eb) =>
        eb
          .selectFrom('builds')
          .select(eb.fn.countAll<number>().as('n'))
          .whereRef('builds.worker_id', '=', 'workers.id')
          .where('builds.state', 'in', HELD_STATES)
          .as('held'),
      )
      .orderBy('workers.created_at')
      .orderBy('workers.id');
    if (where.id !== undefined) q = q.where('workers.id', '=', where.id);
    const rows = await q.execute();
    return rows.map((r) => ({ ...r, held: Number(r.held ?? 0) }));
  }

  private toWorker(row: WorkerRow & { held: number }, now: number, leaseMs: number): Worker {
    return {
      id: row.id,
      name: row.name,
      labels: parseJson<string[]>(row.labels),
      maxConcurrentBuilds: row.max_concurrent_builds,
      version: row.version,
      status: row.status,
      connected: row.last_seen_at !== null && now - row.last_seen_at <= leaseMs,
      activeBuildCount: row.held,
      createdAt: toIso(row.created_at)!,
      lastSeenAt: toIso(row.last_seen_at),
      accessTokenExpiresAt: toIso(row.access_token_expires_at),
    };
  }

  async listWorkers(now: number, leaseMs: number): Promise<Worker[]> {
    return this.run(async () => (await this.workerRows({})).map((r) => this.toWorker(r, now, leaseMs)));
  }

  async getWorker(id: string, now: number, leaseMs: number): Promise<Worker> {
    return this.run(async () => {
      const [row] = await this.workerRows({ id });
      if (!row) throw new ApiError('WORKER_NOT_FOUND', `worker ${id} not found`);
      return this.toWorker(row, now, leaseMs);
    });
  }

  async drainWorker(id: string, now: number, leaseMs: number): Promise<Worker> {
    await this.run(async () => {
      const res = await this.db.updateTable('workers').set({ status: 'draining' }).where('id', '=', id).executeTakeFirst();
      if (Number(res.numUpdatedRows) === 0) throw new ApiError('WORKER_NOT_FOUND', `worker ${id} not found`);
    });
    return this.getWorker(id, now, leaseMs);
  }

  async deleteWorker(id: string, now: number): Promise<{ lost: string[] }> {
    return this.tx(async (trx) => {
      const w = await this.lockWorker(trx, id, 'deleteWorker');
      if (!w) throw new ApiError('WORKER_NOT_FOUND', `worker ${id} not found`);
      const lost: string[] = [];
      for (const row of await this.heldBuilds(trx, id)) {
        if (await this.applyTransition(trx, row, { type: 'lose', reason: 'worker_deleted' }, now)) lost.push(row.id);
      }
      await trx.deleteFrom('workers').where('id', '=', id).execute();
      return { lost };
    });
  }

  // --- builds ---------------------------------------------------------------

  async createBuild(input: NewBuild): Promise<Build> {
    return this.run(async () => {
      const row: BuildRow = {
        id: input.id,
        state: 'queued',
        attempt: 1,
        worker_id: null,
        spec: JSON.stringify(input.spec),
        labels: JSON.stringify(uniq(input.spec.labels).sort()),
        priority: input.spec.priority,
        max_attempts: input.spec.maxAttempts,
        timeout_seconds: input.spec.timeoutSeconds,
        cancel_requested: 0,
        exit_code: null,
        reason: null,
        message: null,
        created_at: input.now,
        assigned_at: null,
        started_at: null,
        finished_at: null,
        ack_deadline: null,
        lease_expires_at: null,
        source_key: input.sourceKey,
        source_size: input.sourceSize,
        source_sha256: input.sourceSha256,
      };
      await this.db.insertInto('builds').values(row).execute();
      return rowToBuild(row, []);
    });
  }

  private async loadBuild(db: Db, id: string): Promise<Build | undefined> {
    const row = await db.selectFrom('builds').selectAll().where('id', '=', id).executeTakeFirst();
    if (!row) return undefined;
    const attempts = await db.selectFrom('build_attempts').selectAll().where('build_id', '=', id).execute();
    return rowToBuild(row, attempts);
  }

  async getBuild(id: string): Promise<Build> {
    return this.run(async () => {
      const b = await this.loadBuild(this.db, id);
      if (!b) throw new ApiError('BUILD_NOT_FOUND', `build ${id} not found`);
      return b;
    });
  }

  async getSourceKey(id: string): Promise<string> {
    return this.run(async () => {
      const row = await this.db.selectFrom('builds').select('source_key').where('id', '=', id).executeTakeFirst();
      if (!row) throw new ApiError('BUILD_NOT_FOUND', `build ${id} not found`);
      return row.source_key;
    });
  }

  async listBuilds(filter: BuildListFilter): Promise<{ builds: Build[]; nextCursor: string | null }> {
    const cursor = filter.cursor !== undefined ? decodeCursor(filter.cursor) : undefined;
    const limit = Math.max(1, Math.min(filter.limit, 1000));
    return this.run(async () => {
      let q = this.db.selectFrom('builds').selectAll();
      if (filter.state !== undefined) q = q.where('state', '=', filter.state);
      if (filter.label !== undefined) {
        const label = filter.label;
        q = q.where(
          this.pg
            ? sql<boolean>`labels::jsonb @> jsonb_build_array(${label}::text)`
            : sql<boolean>`exists (select 1 from json_each(builds.labels) as l where l.value = ${label})`,
        );
      }
      if (cursor) {
        q = q.where((eb) =>
          eb.or([eb('created_at', '<', cursor.createdAt), eb.and([eb('created_at', '=', cursor.createdAt), eb('id', '<', cursor.id)])]),
        );
      }
      const rows = await q.orderBy('created_at', 'desc').orderBy('id', 'desc').limit(limit + 1).execute();
      const page = rows.slice(0, limit);
      const attempts = page.length
        ? await this.db.selectFrom('build_attempts').selectAll().where('build_id', 'in', page.map((r) => r.id)).execute()
        : [];
      const byBuild = new Map<string, AttemptRow[]>();
      for (const a of attempts) byBuild.set(a.build_id, [...(byBuild.get(a.build_id) ?? []), a]);
      return {
        builds: page.map((r) => rowToBuild(r, byBuild.get(r.id) ?? [])),
        nextCursor: rows.length > limit ? encodeCursor(page[page.length - 1]!) : null,
      };
    });
  }

  /** Reads a build row for a state change: locked on PostgreSQL. Throws BUILD_NOT_FOUND. */
  private async lockBuild(trx: Transaction<DB>, id: string, mode: 'update' | 'share' = 'update'): Promise<BuildRow> {
    let q = trx.selectFrom('builds').selectAll().where('id', '=', id);
    if (this.pg) q = mode === 'update' ? q.forUpdate() : q.forShare();
    const row = await q.executeTakeFirst();
    if (!row) throw new ApiError('BUILD_NOT_FOUND', `build ${id} not found`);
    return row;
  }

  /** Fencing by attempt (PROTOCOL.md "Worker side"): an older attempt → LEASE_LOST. */
  private fence(row: BuildRow, ref: AttemptRef): void {
    if (row.attempt !== ref.attempt) {
      throw new ApiError('LEASE_LOST', `attempt ${ref.attempt} of build ${row.id} no longer holds the lease (current attempt ${row.attempt})`);
    }
  }

  /** Logs and artifacts may be written only while the attempt runs. */
  private checkRunning(row: BuildRow, ref: AttemptRef): void {
    this.fence(row, ref);
    if (row.state !== 'running') throw new ApiError('INVALID_TRANSITION', `build ${row.id} is ${row.state}: attempt ${ref.attempt} cannot write`);
  }

  /** The error for a conditional update that matched zero rows: re-reads the build. */
  private async raceError(trx: Transaction<DB>, ref: AttemptRef): Promise<ApiError> {
    const row = await trx.selectFrom('builds').selectAll().where('id', '=', ref.buildId).executeTakeFirst();
    if (!row) return new ApiError('BUILD_NOT_FOUND', `build ${ref.buildId} not found`);
    if (row.attempt !== ref.attempt) return new ApiError('LEASE_LOST', `attempt ${ref.attempt} of build ${ref.buildId} no longer holds the lease`);
    return new ApiError('INVALID_TRANSITION', `build ${ref.buildId} changed concurrently (now ${row.state})`);
  }

  async startBuild(ref: AttemptRef, now: number, leaseMs: number): Promise<Build> {
    return this.tx(async (trx) => {
      const row = await this.lockBuild(trx, ref.buildId);
      this.fence(row, ref);
      if (row.state !== 'running') {
        const t = await this.applyTransition(trx, row, { type: 'start', leaseExpiresAt: now + leaseMs }, now);
        if (!t) throw await this.raceError(trx, ref);
      }
      return (await this.loadBuild(trx, ref.buildId))!;
    });
  }

  async finishBuild(
    ref: AttemptRef & { outcome: BuildOutcome; exitCode: number | null; message: string | null; now: number },
  ): Promise<Build> {
    return this.tx(async (trx) => {
      const row = await this.lockBuild(trx, ref.buildId);
      this.fence(row, ref);
      if (isTerminal(row.state)) {
        if (row.state === ref.outcome) return (await this.loadBuild(trx, ref.buildId))!;
        throw new ApiError('INVALID_TRANSITION', `build ${row.id} already ended ${row.state}`);
      }
      const t = await this.applyTransition(
        trx,
        row,
        { type: 'finish', outcome: ref.outcome, exitCode: ref.exitCode, message: ref.message },
        ref.now,
      );
      if (!t) throw await this.raceError(trx, ref);
      return (await this.loadBuild(trx, ref.buildId))!;
    });
  }

  async cancelBuild(id: string, now: number): Promise<Build> {
    return this.tx(async (trx) => {
      const row = await this.lockBuild(trx, id);
      const t = await this.applyTransition(trx, row, { type: 'cancel' }, now);
      if (!t) throw await this.raceError(trx, { buildId: id, attempt: row.attempt });
      return (await this.loadBuild(trx, id))!;
    });
  }

  async checkWritable(ref: AttemptRef): Promise<void> {
    await this.run(async () => {
      const row = await this.db.selectFrom('builds').selectAll().where('id', '=', ref.buildId).executeTakeFirst();
      if (!row) throw new ApiError('BUILD_NOT_FOUND', `build ${ref.buildId} not found`);
      this.checkRunning(row, ref);
    });
  }

  async appendLog(input: LogChunkInput): Promise<{ offset: number }> {
    return this.tx(async (trx) => {
      // Shared lock on the build (finish waits for chunks in flight), exclusive on the attempt (one append at a time).
      const row = await this.lockBuild(trx, input.buildId, 'share');
      this.checkRunning(row, input);
      const att = await this.lockQuery(
        trx
          .selectFrom('build_attempts')
          .select('log_bytes')
          .where('build_id', '=', input.buildId)
          .where('attempt', '=', input.attempt),
      ).executeTakeFirstOrThrow();
      const stored = Number(att.log_bytes);
      const dup = await trx
        .selectFrom('log_chunks')
        .select('seq')
        .where('build_id', '=', input.buildId)
        .where('attempt', '=', input.attempt)
        .where('seq', '=', input.seq)
        .executeTakeFirst();
      if (dup) return { offset: stored };
      if (input.offset !== stored) {
        throw new ApiError('OFFSET_MISMATCH', `expected offset ${stored}: ${stored} bytes are stored for attempt ${input.attempt}`);
      }
      await trx
        .insertInto('log_chunks')
        .values({
          build_id: input.buildId,
          attempt: input.attempt,
          seq: input.seq,
          byte_offset: stored,
          size: input.data.length,
          data: input.data,
        })
        .execute();
      await trx
        .updateTable('build_attempts')
        .set({ log_bytes: stored + input.data.length })
        .where('build_id', '=', input.buildId)
        .where('attempt', '=', input.attempt)
        .execute();
      return { offset: stored + input.data.length };
    });
  }

  async readLog(buildId: string, attempt: number, offset: number, limit: number): Promise<Buffer> {
    return this.run(async () => {
      const b = await this.db.selectFrom('builds').select('id').where('id', '=', buildId).executeTakeFirst();
      if (!b) throw new ApiError('BUILD_NOT_FOUND', `build ${buildId} not found`);
      if (limit <= 0) return Buffer.alloc(0);
      const chunks = await this.db
        .selectFrom('log_chunks')
        .select(['byte_offset', 'data'])
        .where('build_id', '=', buildId)
        .where('attempt', '=', attempt)
        .where(sql<number>`byte_offset + size`, '>', offset)
        .where('byte_offset', '<', offset + limit)
        .orderBy('byte_offset')
        .execute();
      if (chunks.length === 0) return Buffer.alloc(0);
      const all = Buffer.concat(chunks.map((c) => Buffer.from(c.data)));
      const start = offset - Number(chunks[0]!.byte_offset);
      return all.subarray(Math.max(0, start), Math.max(0, start) + limit);
    });
  }

  async recordArtifact(input: ArtifactInput): Promise<{ created: boolean }> {
    return this.tx(async (trx) => {
      const row = await this.lockBuild(trx, input.buildId, 'share');
      this.checkRunning(row, input);
      const existing = await trx
        .selectFrom('artifacts')
        .selectAll()
        .where('build_id', '=', input.buildId)
        .where('attempt', '=', input.attempt)
        .where('name', '=', input.name)
        .executeTakeFirst();
      if (existing && existing.sha256 === input.sha256) return { created: false };
      const values = { size: input.size, sha256: input.sha256, blob_key: input.blobKey, created_at: input.now };
      if (existing) {
        await trx
          .updateTable('artifacts')
          .set(values)
          .where('build_id', '=', input.buildId)
          .where('attempt', '=', input.attempt)
          .where('name', '=', input.name)
          .execute();
      } else {
        await trx
          .insertInto('artifacts')
          .values({ build_id: input.buildId, attempt: input.attempt, name: input.name, ...values })
          .execute();
      }
      return { created: true };
    });
  }

  private async artifactsOf(buildId: string, name?: string): Promise<StoredArtifact[]> {
    const b = await this.db.selectFrom('builds').select(['id', 'attempt']).where('id', '=', buildId).executeTakeFirst();
    if (!b) throw new ApiError('BUILD_NOT_FOUND', `build ${buildId} not found`);
    // Terminal builds keep the attempt that finished them as the current one.
    let q = this.db.selectFrom('artifacts').selectAll().where('build_id', '=', buildId).where('attempt', '=', b.attempt);
    if (name !== undefined) q = q.where('name', '=', name);
    const rows = await q.orderBy('name').execute();
    return rows.map((r) => ({ name: r.name, size: Number(r.size), sha256: r.sha256, attempt: r.attempt, blobKey: r.blob_key }));
  }

  async listArtifacts(buildId: string): Promise<StoredArtifact[]> {
    return this.run(() => this.artifactsOf(buildId));
  }

  async getArtifact(buildId: string, name: string): Promise<StoredArtifact> {
    return this.run(async () => {
      const [a] = await this.artifactsOf(buildId, name);
      if (!a) throw new ApiError('ARTIFACT_NOT_FOUND', `artifact ${name} of build ${buildId} not found`);
      return a;
    });
  }

  async reap(options: ReapOptions): Promise<ReapResult> {
    const { now } = options;
    return this.tx(async (trx) => {
      const result: ReapResult = { requeued: [], failed: [], canceled: [], timedOut: [] };
      const skipLocked = <Q extends { forUpdate(): Q; skipLocked(): Q }>(q: Q): Q => (this.pg ? q.forUpdate().skipLocked() : q);
      if (options.reapLeases) {
        const expired = await skipLocked(
          trx
            .selectFrom('builds')
            .selectAll()
            .where((eb) =>
              eb.or([
                eb.and([eb('state', '=', 'assigned'), eb('ack_deadline', '<', now)]),
                eb.and([eb('state', '=', 'running'), eb('lease_expires_at', '<', now)]),
              ]),
            )
            .orderBy('id')
            .limit(1000),
        ).execute();
        for (const row of expired) {
          const reason: LostReason = row.state === 'assigned' ? 'ack_timeout' : 'lease_expired';
          const t = await this.applyTransition(trx, row, { type: 'lose', reason }, now);
          if (!t) continue;
          if (t.to === 'queued') result.requeued.push(row.id);
          else if (t.to === 'canceled') result.canceled.push(row.id);
          else result.failed.push(row.id);
        }
      }
      const overdue = await skipLocked(
        trx
          .selectFrom('builds')
          .selectAll()
          .where('state', '=', 'running')
          .where(sql<number>`started_at + timeout_seconds * 1000`, '<', now)
          .orderBy('id')
          .limit(1000),
      ).execute();
      for (const row of overdue) {
        if (await this.applyTransition(trx, row, { type: 'timeout' }, now)) result.timedOut.push(row.id);
      }
      if (result.requeued.length + result.failed.length + result.canceled.length + result.timedOut.length > 0) {
        this.logger?.warn({ ...result }, 'reaped builds');
      }
      return result;
    });
  }

  async hasQueuedBuilds(): Promise<boolean> {
    return this.run(async () => {
      const row = await this.db.selectFrom('builds').select('id').where('state', '=', 'queued').limit(1).executeTakeFirst();
      return row !== undefined;
    });
  }
}
