/**
 * Request and response schemas of docs/protocol.md, shared by the controller (route
 * validation, OpenAPI), the worker and the CLI. Timestamps are ISO-8601 UTC
 * strings; durations are milliseconds (`…Ms`) or seconds (`…Seconds`).
 */
import { Type, type Static, type TSchema } from 'typebox';
import { BUILD_STATES, TERMINAL_STATES } from './states.js';
import { ERROR_CODES } from './errors.js';
import { SpecSecretsInputSchema, SecretRefNormalSchema, normalizeSecretRefs } from './secrets.js';
import { SpecCacheSchema, SpecCachesInputSchema } from './caches.js';
import { BuildLimitsSchema, ISOLATION_LABEL, LIMIT_REASONS } from './limits.js';

/**
 * `T` or null. A primitive schema becomes `{type, nullable: true}` rather than
 * `anyOf [T, null]`: the controller's ajv coerces types (`coerceTypes`), and
 * inside `anyOf` it coerces null in the first branch (a finish's `exitCode:
 * null` was stored as 0, `message: null` as ""); `nullable` keeps null and
 * is OpenAPI 3.0 too. Found by the simulation (packages/sim).
 */
export const Nullable = <T extends TSchema>(schema: T) => {
  const type = (schema as { type?: unknown }).type;
  if (typeof type === 'string' && type !== 'object' && type !== 'array') {
    return Type.Unsafe<Static<T> | null>({ ...schema, nullable: true });
  }
  return Type.Union([schema, Type.Null()]);
};
const Timestamp = Type.String({ description: 'ISO-8601 UTC' });

/**
 * Characters refused in ids, names, labels, versions and descriptions: C0
 * and C1 control characters (NUL among them), DEL, and the invisible Unicode
 * formatting characters (zero-width, line/paragraph separators, and the
 * bidirectional overrides and isolates such as U+202E, which make a name
 * display as something else: "Trojan Source", CVE-2021-42574).
 */
export const UNSAFE_TEXT_CHARS = '\\u0000-\\u001f\\u007f-\\u009f\\u061c\\u200b-\\u200f\\u2028-\\u202e\\u2060-\\u2069\\ufeff';
const UNSAFE_TEXT = new RegExp(`[${UNSAFE_TEXT_CHARS}]`, 'u');

/** Whether `text` contains a character of `UNSAFE_TEXT_CHARS`. */
export function hasUnsafeText(text: string): boolean {
  return UNSAFE_TEXT.test(text);
}

/** Visible text: any characters but `UNSAFE_TEXT_CHARS`. */
const Text = (opts: { minLength?: number; maxLength: number; description?: string }) =>
  Type.String({ ...opts, pattern: `^[^${UNSAFE_TEXT_CHARS}]*$` });

/**
 * Ids the protocol carries (build, worker, boot and registration ids):
 * letters, digits and `_ . : ~ -`, starting with a letter, digit or `_`,
 * at most 200 characters. The controller issues UUIDv7.
 */
export const ID_PATTERN = '^[A-Za-z0-9_][A-Za-z0-9._:~-]*$';
const Id = Type.String({ minLength: 1, maxLength: 200, pattern: ID_PATTERN });

/** Largest integer a counter or offset may carry (2^53 - 1). */
const MAX_SAFE = Number.MAX_SAFE_INTEGER;
/** Largest attempt number a request may name (maxAttempts is at most 10; room to grow). */
const MAX_ATTEMPT = 1000;
/** A process exit code or negative signal number: a signed 32-bit integer. */
const ExitCode = Type.Integer({ minimum: -2147483648, maximum: 2147483647 });

export const ErrorBodySchema = Type.Object({
  error: Type.Object({
    code: Type.Union(ERROR_CODES.map((c) => Type.Literal(c))),
    message: Type.String(),
    id: Type.Optional(Type.String({ description: 'only on 500 INTERNAL: the id of the error in the controller log' })),
  }),
});

export const BuildStateSchema = Type.Enum(BUILD_STATES);
export const OutcomeSchema = Type.Enum(TERMINAL_STATES);

/** Label: 1-100 visible characters without commas or whitespace. */
export const LabelSchema = Type.String({ minLength: 1, maxLength: 100, pattern: `^[^,\\s${UNSAFE_TEXT_CHARS}]+$` });

/** An environment variable name a spec may set: a letter or `_`, then letters, digits or `_` (POSIX names). */
export const ENV_NAME_PATTERN = '^[A-Za-z_][A-Za-z0-9_]*$';

/**
 * Spec `concurrency` (issue 13): at most `limit` builds of `group` are
 * assigned or running at once; the others stay queued in submission order.
 * With `cancelInProgress`, submitting a build cancels the group's older
 * builds that have not ended instead (like GitHub's
 * `concurrency.cancel-in-progress`).
 */
export const ConcurrencySchema = Type.Object(
  {
    group: Type.String({ minLength: 1, maxLength: 200 }),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
    cancelInProgress: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);
export const ConcurrencyNormalSchema = Type.Object({
  group: Type.String(),
  limit: Type.Integer(),
  cancelInProgress: Type.Boolean(),
});
export type Concurrency = Static<typeof ConcurrencyNormalSchema>;

/**
 * Spec `shell` (issue 13): what runs the script. `sh` (default) and `bash`
 * run it with `-c`; an absolute path names any other interpreter, started
 * with no argument so it reads its program from standard input, as
 * python3, node, perl, ruby and the shells do (`… | /usr/bin/python3`;
 * packages/worker/src/shell-command.ts).
 */
export const ShellSchema = Type.String({ minLength: 1, maxLength: 500, pattern: '^(sh|bash|/[^\\s\\0]+)$' });

/**
 * What a build runs. Only `script` is required; the defaults are docs/protocol.md's.
 */
export const BuildSpecInputSchema = Type.Object(
  {
    script: Type.String({ minLength: 1, maxLength: 1_000_000 }),
    labels: Type.Optional(Type.Array(LabelSchema, { maxItems: 50 })),
    // additionalProperties: a Record's key pattern alone lets other keys through (`A=B` was accepted).
    env: Type.Optional(
      Type.Record(Type.String({ pattern: ENV_NAME_PATTERN, maxLength: 200 }), Type.String({ maxLength: 100_000 }), {
        additionalProperties: false,
        maxProperties: 200,
      }),
    ),
    timeoutSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 7 * 24 * 3600 })),
    artifacts: Type.Optional(Type.Array(Text({ minLength: 1, maxLength: 1000 }), { maxItems: 100 })),
    priority: Type.Optional(Type.Integer({ minimum: -1000, maximum: 1000 })),
    maxAttempts: Type.Optional(Type.Integer({ minimum: 1, maximum: 10 })),
    metadata: Type.Optional(Type.Record(Type.String({ maxLength: 200 }), Type.Unknown(), { maxProperties: 100 })),
    name: Type.Optional(Text({ minLength: 1, maxLength: 200, description: 'shown in lists; default: from metadata or the script' })),
    shell: Type.Optional(ShellSchema),
    secrets: Type.Optional(SpecSecretsInputSchema),
    cache: Type.Optional(SpecCachesInputSchema),
    concurrency: Type.Optional(ConcurrencySchema),
    isolation: Type.Optional(
      Type.Literal('sandbox', { description: `run only on a worker whose executor is sandbox (the same as the label ${ISOLATION_LABEL})` }),
    ),
    network: Type.Optional(Type.Boolean({ description: 'the sandbox shares the network (only where the worker allows it)' })),
    limits: Type.Optional(BuildLimitsSchema),
  },
  { additionalProperties: false },
);
export type BuildSpecInput = Static<typeof BuildSpecInputSchema>;

export const BuildSpecSchema = Type.Object({
  script: Type.String(),
  labels: Type.Array(Type.String()),
  env: Type.Record(Type.String(), Type.String()),
  timeoutSeconds: Type.Integer(),
  artifacts: Type.Array(Type.String()),
  priority: Type.Integer(),
  maxAttempts: Type.Integer(),
  metadata: Type.Record(Type.String(), Type.Unknown()),
  name: Type.Optional(Type.String()),
  // Issue 13. Optional: builds stored before them, and specs from older
  // controllers, do not have them; absent means sh, none, none, none.
  shell: Type.Optional(Type.String()),
  secrets: Type.Optional(Type.Array(SecretRefNormalSchema)),
  cache: Type.Optional(Type.Array(SpecCacheSchema)),
  concurrency: Type.Optional(ConcurrencyNormalSchema),
  // Issue 8; absent means any executor, no network, the worker's limits.
  isolation: Type.Optional(Type.String()),
  network: Type.Optional(Type.Boolean()),
  limits: Type.Optional(BuildLimitsSchema),
});
export type BuildSpec = Static<typeof BuildSpecSchema>;

/** Fills docs/protocol.md's defaults into a validated spec. */
export function normalizeSpec(input: BuildSpecInput): BuildSpec {
  // `isolation: "sandbox"` and its label are one requirement: the label is what the claim matches.
  const isolated = input.isolation === 'sandbox' || (input.labels ?? []).includes(ISOLATION_LABEL);
  const limits = Object.fromEntries(Object.entries(input.limits ?? {}).filter(([, v]) => v !== undefined));
  return {
    script: input.script,
    labels: [...new Set([...(input.labels ?? []), ...(isolated ? [ISOLATION_LABEL] : [])])].sort(),
    env: input.env ?? {},
    timeoutSeconds: input.timeoutSeconds ?? 3600,
    artifacts: input.artifacts ?? [],
    priority: input.priority ?? 0,
    maxAttempts: input.maxAttempts ?? 2,
    metadata: input.metadata ?? {},
    ...(input.name !== undefined ? { name: input.name } : {}),
    ...(input.shell !== undefined && input.shell !== 'sh' ? { shell: input.shell } : {}),
    ...(input.secrets?.length ? { secrets: normalizeSecretRefs(input.secrets) } : {}),
    ...(input.cache?.length ? { cache: input.cache } : {}),
    ...(input.concurrency
      ? {
          concurrency: {
            group: input.concurrency.group,
            limit: input.concurrency.limit ?? 1,
            cancelInProgress: input.concurrency.cancelInProgress ?? false,
          },
        }
      : {}),
    ...(isolated ? { isolation: 'sandbox' } : {}),
    ...(input.network ? { network: true } : {}),
    ...(Object.keys(limits).length > 0 ? { limits } : {}),
  };
}

export const AttemptSchema = Type.Object({
  attempt: Type.Integer(),
  workerId: Nullable(Type.String()),
  state: BuildStateSchema,
  assignedAt: Nullable(Timestamp),
  startedAt: Nullable(Timestamp),
  finishedAt: Nullable(Timestamp),
  reason: Nullable(Type.String()),
  exitCode: Nullable(Type.Integer()),
  logBytes: Type.Optional(Type.Integer({ description: 'bytes of log stored for this attempt (with the truncation line)' })),
  logTruncated: Type.Optional(Type.Boolean({ description: 'the log reached BUILDFLEET_LOG_MAX_MB and was cut' })),
  workerName: Type.Optional(Nullable(Type.String({ description: "the worker's name when the answer was made (null: deleted)" }))),
});
export type Attempt = Static<typeof AttemptSchema>;

/**
 * Why a queued build has not been taken yet, checked against the workers
 * seen within one lease period: `no_matching_worker` (none has all its
 * labels), `workers_draining` (every one that has them is draining),
 * `workers_busy` (they are all full or ahead builds take them). Reasons may
 * be added (a client shows an unknown one as is).
 */
export const WAITING_REASONS = ['no_matching_worker', 'workers_busy', 'workers_draining', 'concurrency_group'] as const;
export type WaitingReason = (typeof WAITING_REASONS)[number];
export const WaitingSchema = Type.Object({
  reason: Type.String({ description: WAITING_REASONS.join(' | ') }),
  position: Type.Integer({
    minimum: 1,
    description: 'place among the queued builds a worker would take before it (priority, then oldest), from 1',
  }),
});
export type Waiting = Static<typeof WaitingSchema>;

export const BuildSchema = Type.Object({
  id: Type.String(),
  state: BuildStateSchema,
  attempt: Type.Integer({ description: 'current attempt, from 1' }),
  workerId: Nullable(Type.String()),
  spec: BuildSpecSchema,
  cancelRequested: Type.Boolean(),
  exitCode: Nullable(Type.Integer()),
  reason: Nullable(Type.String()),
  message: Nullable(Type.String()),
  createdAt: Timestamp,
  assignedAt: Nullable(Timestamp),
  startedAt: Nullable(Timestamp),
  finishedAt: Nullable(Timestamp),
  ackDeadline: Nullable(Timestamp),
  leaseExpiresAt: Nullable(Timestamp),
  sourceSize: Type.Integer({ description: 'bytes' }),
  sourceSha256: Type.String(),
  attempts: Type.Array(AttemptSchema),
  keep: Type.Optional(Type.Boolean({ description: 'exempt from retention (`buildfleet keep`)' })),
  sourceExpiredAt: Type.Optional(Nullable(Timestamp)),
  logsExpiredAt: Type.Optional(Nullable(Timestamp)),
  artifactsExpiredAt: Type.Optional(Nullable(Timestamp)),
  workerName: Type.Optional(Nullable(Type.String({ description: "name of the worker holding the build (workerId's)" }))),
  waiting: Type.Optional(Nullable(WaitingSchema)),
});
export type Build = Static<typeof BuildSchema>;

export const BuildEnvelopeSchema = Type.Object({ build: BuildSchema });
export const BuildListSchema = Type.Object({
  builds: Type.Array(BuildSchema),
  nextCursor: Nullable(Type.String({ description: 'pass as `cursor` for the next (older) page; null on the last' })),
  prevCursor: Type.Optional(
    Nullable(Type.String({ description: 'pass as `before` for the previous (newer) page; null on the first' })),
  ),
});
export type BuildList = Static<typeof BuildListSchema>;

/**
 * `GET /builds`: newest first. Filters combine with AND: `state`, `label`
 * (the build has it), `worker` (an attempt ran on it), `meta` (`key=value`,
 * repeatable: `metadata[key]` equals the value as text), `q` (case-insensitive
 * text in the id, the name or the script). Paging: `cursor` (older than a
 * page) or `before` (newer than a page), never both.
 */
const MetaPair = Type.String({ maxLength: 500, pattern: '^[^=]+=' });
export const BuildListQuerySchema = Type.Object({
  state: Type.Optional(BuildStateSchema),
  label: Type.Optional(LabelSchema),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 500 })),
  cursor: Type.Optional(Text({ maxLength: 500 })),
  before: Type.Optional(Text({ maxLength: 500 })),
  worker: Type.Optional(Id),
  // One `meta=k=v`, or several (an array); queries are not coerced into arrays.
  meta: Type.Optional(Type.Union([MetaPair, Type.Array(MetaPair, { maxItems: 10 })])),
  q: Type.Optional(Text({ maxLength: 200 })),
});
export type BuildListQuery = Static<typeof BuildListQuerySchema>;

export const ArtifactSchema = Type.Object({
  name: Type.String(),
  size: Type.Integer({ description: 'bytes' }),
  sha256: Type.String(),
  expiredAt: Type.Optional(Timestamp),
});
export type Artifact = Static<typeof ArtifactSchema>;
export const ArtifactListSchema = Type.Object({ artifacts: Type.Array(ArtifactSchema) });

/** Settings the controller announces to workers with every access token. */
export const WorkerSettingsSchema = Type.Object({
  pollWaitMs: Type.Integer(),
  heartbeatIntervalMs: Type.Integer(),
  leaseMs: Type.Integer(),
  ackTimeoutMs: Type.Integer(),
  // Absent from older controllers: a worker sends `watchCancel` only when this is true.
  watchCancel: Type.Optional(
    Type.Boolean({ description: 'polls take `watchCancel`: a parked poll answers at once with `cancel` (docs/protocol.md "poll")' }),
  ),
});
export type WorkerSettings = Static<typeof WorkerSettingsSchema>;

/** A build handed to a worker (poll answer, re-registration `builds`). */
export const AssignedBuildSchema = Type.Object({
  id: Type.String(),
  attempt: Type.Integer(),
  state: Type.Optional(BuildStateSchema),
  buildToken: Type.String(),
  spec: BuildSpecSchema,
  sourceUrl: Type.String({ description: 'path, resolved against the controller the worker talks to' }),
  ackDeadline: Nullable(Timestamp),
});
export type AssignedBuild = Static<typeof AssignedBuildSchema>;

export const RegisterRequestSchema = Type.Object({
  name: Text({ minLength: 1, maxLength: 200 }),
  labels: Type.Array(LabelSchema, { maxItems: 100 }),
  maxConcurrentBuilds: Type.Integer({ minimum: 1, maximum: 1000 }),
  version: Text({ maxLength: 100 }),
  bootId: Type.Optional(Id),
  registrationId: Type.Optional(Id),
  workerId: Type.Optional(Id),
  workerSecret: Type.Optional(Type.String({ minLength: 1, maxLength: 500, pattern: '^[\\x21-\\x7e]+$' })),
  activeBuildCount: Type.Optional(Type.Integer({ minimum: 0, maximum: 100_000 })),
  activeBuildIds: Type.Optional(Type.Array(Id, { maxItems: 1000 })),
  executor: Type.Optional(Type.String({ maxLength: 100, description: 'how the worker runs builds, e.g. "process" or "bubblewrap"' })),
});
export type RegisterRequest = Static<typeof RegisterRequestSchema>;

export const RegisterResponseSchema = Type.Object({
  workerId: Type.String(),
  workerSecret: Type.Optional(Type.String({ description: 'only when a worker is created' })),
  accessToken: Type.String(),
  accessTokenExpiresAt: Timestamp,
  accessTokenExpiresInMs: Type.Integer(),
  settings: WorkerSettingsSchema,
  builds: Type.Array(AssignedBuildSchema),
  abandon: Type.Array(Type.String()),
});
export type RegisterResponse = Static<typeof RegisterResponseSchema>;

/**
 * `POST /workers/{id}/poll`. `watchCancel` (optional; older workers do not
 * send it) opts in to hearing cancellations on the poll: the ids of builds
 * running here whose cancel the worker wants at once. The poll then answers
 * as soon as one of them has `cancelRequested`, and with `freeSlots: 0` and a
 * non-empty list it parks instead of answering 204 at once.
 */
export const PollRequestSchema = Type.Object({
  freeSlots: Type.Integer({ minimum: 0, maximum: 1000 }),
  activeBuildIds: Type.Array(Id, { maxItems: 1000 }),
  watchCancel: Type.Optional(Type.Array(Id, { maxItems: 1000 })),
});
export type PollRequest = Static<typeof PollRequestSchema>;
export const PollQuerySchema = Type.Object({
  waitMs: Type.Optional(Type.Integer({ minimum: 0, maximum: 3_600_000 })),
});
/** `cancel`: ids from the request's `watchCancel` whose cancellation was requested (only to a poll that sent `watchCancel`). */
export const PollResponseSchema = Type.Object({
  builds: Type.Array(AssignedBuildSchema),
  cancel: Type.Optional(Type.Array(Type.String())),
});
export type PollResponse = Static<typeof PollResponseSchema>;

export const HeartbeatRequestSchema = Type.Object({
  activeBuildIds: Type.Array(Id, { maxItems: 1000 }),
});
export type HeartbeatRequest = Static<typeof HeartbeatRequestSchema>;
export const HeartbeatResponseSchema = Type.Object({
  cancel: Type.Array(Type.String()),
  abandon: Type.Array(Type.String()),
  accessTokenExpiresAt: Timestamp,
  accessTokenExpiresInMs: Type.Integer(),
  draining: Type.Optional(Type.Boolean()),
});
export type HeartbeatResponse = Static<typeof HeartbeatResponseSchema>;

const Attempt = Type.Integer({ minimum: 1, maximum: MAX_ATTEMPT });

export const StartRequestSchema = Type.Object({ attempt: Attempt });
export type StartRequest = Static<typeof StartRequestSchema>;

export const LogChunkRequestSchema = Type.Object({
  attempt: Attempt,
  seq: Type.Integer({ minimum: 0, maximum: MAX_SAFE }),
  offset: Type.Integer({ minimum: 0, maximum: MAX_SAFE, description: 'bytes stored so far for this attempt' }),
  // The controller's own limit (maxLogChunkBytes) is checked on the decoded bytes.
  data: Type.String(),
  encoding: Type.Optional(Type.Union([Type.Literal('utf8'), Type.Literal('base64')])),
});
export type LogChunkRequest = Static<typeof LogChunkRequestSchema>;
export const LogChunkResponseSchema = Type.Object({
  offset: Type.Integer({ description: 'bytes stored for this attempt after the chunk' }),
  truncated: Type.Optional(Type.Boolean({ description: 'the log reached its cap: stop sending, the build goes on' })),
});

export const FinishRequestSchema = Type.Object({
  attempt: Attempt,
  outcome: OutcomeSchema,
  exitCode: Nullable(ExitCode),
  message: Type.Optional(Nullable(Type.String({ maxLength: 10_000 }))),
  /** Only with outcome `failed`: the resource limit the build exceeded (issue 8); absent means `exit_code`. */
  reason: Type.Optional(Type.Enum(Object.values(LIMIT_REASONS))),
});
export type FinishRequest = Static<typeof FinishRequestSchema>;

export const WorkerStatusSchema = Type.Union([Type.Literal('active'), Type.Literal('draining')]);
export type WorkerStatus = Static<typeof WorkerStatusSchema>;

/**
 * What a worker is doing, for people: `offline` (not seen within one lease
 * period), `draining`, `building` (holds at least one build) or `idle`.
 */
export const WORKER_STATES = ['idle', 'building', 'draining', 'offline'] as const;
export type WorkerState = (typeof WORKER_STATES)[number];

export const WorkerSchema = Type.Object({
  id: Type.String(),
  name: Type.String(),
  labels: Type.Array(Type.String()),
  maxConcurrentBuilds: Type.Integer(),
  version: Type.String(),
  status: WorkerStatusSchema,
  connected: Type.Boolean({ description: 'seen within one lease period' }),
  activeBuildCount: Type.Integer(),
  createdAt: Timestamp,
  lastSeenAt: Nullable(Timestamp),
  accessTokenExpiresAt: Nullable(Timestamp),
  state: Type.Optional(Type.Enum(WORKER_STATES)),
  executor: Type.Optional(Nullable(Type.String())),
});
export type Worker = Static<typeof WorkerSchema>;
export const WorkerEnvelopeSchema = Type.Object({ worker: WorkerSchema });
export const WorkerListSchema = Type.Object({ workers: Type.Array(WorkerSchema) });

export const EnrollmentTokenCreateSchema = Type.Object({
  description: Type.Optional(Text({ maxLength: 500 })),
  expiresAt: Type.Optional(Text({ maxLength: 40 })),
  maxUses: Type.Optional(Type.Integer({ minimum: 1, maximum: 1_000_000_000 })),
});
export const EnrollmentTokenSchema = Type.Object({
  id: Type.String(),
  description: Nullable(Type.String()),
  createdAt: Timestamp,
  expiresAt: Nullable(Timestamp),
  maxUses: Nullable(Type.Integer()),
  uses: Type.Integer(),
  revoked: Type.Boolean(),
  token: Type.Optional(Type.String({ description: 'only in the answer that creates it' })),
});
export type EnrollmentToken = Static<typeof EnrollmentTokenSchema>;
export const EnrollmentTokenListSchema = Type.Object({ enrollmentTokens: Type.Array(EnrollmentTokenSchema) });

export const IdParamsSchema = Type.Object({ id: Id });
export const ArtifactParamsSchema = Type.Object({ id: Id, name: Type.String({ minLength: 1, maxLength: 1000 }) });
export const LogQuerySchema = Type.Object({
  offset: Type.Optional(Type.Integer({ minimum: 0, maximum: MAX_SAFE })),
  attempt: Type.Optional(Attempt),
  follow: Type.Optional(Type.Union([Type.Literal('1'), Type.Literal('true'), Type.Literal('0'), Type.Literal('false')])),
});
