/**
 * Controller options, validated and frozen once at startup and then passed
 * down (design rule 11). Environment names are docs/protocol.md's
 * "Configuration names" (`ENV` in @buildfleet/protocol).
 */
import path from 'node:path';
import { DEFAULTS, ENV, TOKEN_PREFIX } from '@buildfleet/protocol';
import { loadOperationsConfig, type OperationsConfig } from './ops/config.js';

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** Everything the controller needs to run; durations in ms, sizes in bytes. */
export interface ControllerConfig {
  readonly host: string;
  /** TCP port; 0 picks a free one (tests). */
  readonly port: number;
  /** SQLite file, blobs and `credentials.json` live here. */
  readonly dataDir: string;
  /** `postgres://…` selects PostgreSQL; undefined means SQLite in `dataDir`. */
  readonly databaseUrl: string | undefined;
  /**
   * A blob directory every controller shares (PostgreSQL mode). Unset: blobs
   * live in `<dataDir>/blobs` with SQLite, in PostgreSQL chunks with PostgreSQL.
   */
  readonly blobDir: string | undefined;
  /** A `bfa_` token to accept (instead of generating one on first start). */
  readonly apiToken: string | undefined;
  /** A `bfe_` token to accept (instead of generating one on first start). */
  readonly enrollmentToken: string | undefined;
  readonly accessTokenTtlMs: number;
  readonly ackTimeoutMs: number;
  readonly leaseMs: number;
  readonly heartbeatIntervalMs: number;
  /** Longest a poll parks; caps the worker's `waitMs`. */
  readonly pollWaitMs: number;
  /** How often a parked poll re-checks the database without a wake-up, ms. */
  readonly pollRecheckMs: number;
  /** How often a followed log stream re-checks without a wake-up, ms. */
  readonly logFollowRecheckMs: number;
  /** Live log streams one client address may hold open at once (`BUILDFLEET_MAX_FOLLOWERS_PER_CLIENT`); more is 429. */
  readonly maxFollowersPerClient: number;
  /**
   * Failed authentications (401 TOKEN_INVALID) one client address may make
   * per minute before each further failed one is 429 for the rest of the
   * minute; valid credentials still pass (`BUILDFLEET_MAX_AUTH_FAILURES_PER_MINUTE`); 0: no limit.
   */
  readonly maxAuthFailuresPerMinute: number;
  /** New worker registrations per enrollment token per minute (`BUILDFLEET_MAX_REGISTRATIONS_PER_MINUTE`); 0: no limit. */
  readonly maxRegistrationsPerMinute: number;
  /** Largest accepted source tarball, bytes. */
  readonly maxSourceBytes: number;
  /** Largest accepted artifact, bytes. */
  readonly maxArtifactBytes: number;
  /** Largest JSON body of any route but a log chunk, bytes (`BUILDFLEET_MAX_JSON_BYTES`). */
  readonly maxJsonBytes: number;
  /** Deepest nesting of arrays and objects in JSON bodies and specs (`BUILDFLEET_MAX_JSON_DEPTH`). */
  readonly maxJsonDepth: number;
  /** Largest log chunk, decoded bytes (`BUILDFLEET_MAX_LOG_CHUNK_BYTES`); its JSON body may be 4/3 of it plus 64 KiB. */
  readonly maxLogChunkBytes: number;
  /** Largest `spec` part of a submission, bytes (`BUILDFLEET_MAX_SPEC_BYTES`). */
  readonly maxSpecBytes: number;
  /** Largest request line plus headers, bytes (`BUILDFLEET_MAX_HEADER_BYTES`); more is 431. */
  readonly maxHeaderBytes: number;
  /**
   * After answering a request whose body was not read (a refused upload),
   * bytes of that body read and thrown away so the client receives the
   * answer instead of a reset (`BUILDFLEET_MAX_DISCARD_BYTES`); a larger
   * body closes the connection.
   */
  readonly maxDiscardBytes: number;
  /**
   * PEM files of the certificate (chain) and private key the controller
   * serves HTTPS with (`BUILDFLEET_TLS_CERT`, `BUILDFLEET_TLS_KEY`, absolute
   * paths); both or neither. Unset: plain HTTP.
   */
  readonly tlsCertFile: string | undefined;
  readonly tlsKeyFile: string | undefined;
  readonly logLevel: LogLevel;
  /** Retention, log and blob caps, webhook retries (ops/config.ts). */
  readonly ops: OperationsConfig;
  /** BUILDFLEET_SECRETS_KEY: the key sealing secrets (base64 or hex of 32 bytes); never logged (redacted as `secretsKey`). */
  readonly secretsKey: string | undefined;
  /** BUILDFLEET_SECRETS_KEY_FILE: a file holding that key. Without either, `<dataDir>/secrets.key` (generated with SQLite). */
  readonly secretsKeyFile: string | undefined;
  /** BUILDFLEET_CACHE_MAX_MB in bytes: build cache archives kept in all; least recently used go first. */
  readonly cacheMaxBytes: number;
  /** BUILDFLEET_CACHE_SCOPE: metadata keys whose values scope cache entries (default `repo`). */
  readonly cacheScopeKeys: readonly string[];
}

/** What callers may set instead of the environment; `ops` may be partial. */
export type ControllerConfigOverrides = Omit<Partial<ControllerConfig>, 'ops'> & { ops?: Partial<OperationsConfig> };

/** Thrown for an unusable option at startup; `message` names the option. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

function int(name: string, raw: unknown, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (raw === undefined || raw === '') return fallback;
  const n = typeof raw === 'number' ? raw : Number(String(raw).trim());
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new ConfigError(`${name} must be an integer between ${min} and ${max}, got ${JSON.stringify(raw)}`);
  }
  return n;
}

function token(name: string, raw: string | undefined, prefix: string): string | undefined {
  if (raw === undefined || raw === '') return undefined;
  const t = raw.trim();
  if (!t.startsWith(prefix) || t.length < prefix.length + 16 || /\s/.test(t)) {
    throw new ConfigError(`${name} must start with "${prefix}" and carry at least 16 more characters (docs/protocol.md "Credentials")`);
  }
  return t;
}

function optionalPath(raw: unknown): string | undefined {
  return raw === undefined || raw === '' ? undefined : path.resolve(String(raw));
}

/**
 * Reads the controller's configuration from `env` (names in `ENV`), with
 * `overrides` winning over the environment. Throws ConfigError naming the
 * option for a bad number, level or token prefix. The result is frozen.
 */
export function loadControllerConfig(
  env: Record<string, string | undefined> = process.env,
  overrides: ControllerConfigOverrides = {},
): ControllerConfig {
  const pick = <K extends Exclude<keyof ControllerConfig, 'ops'>>(k: K, envName?: string): unknown =>
    overrides[k] !== undefined ? overrides[k] : envName ? env[envName] : undefined;

  const dataDir = path.resolve(String(pick('dataDir', ENV.dataDir) ?? DEFAULTS.dataDir));
  const databaseUrl = (pick('databaseUrl', ENV.databaseUrl) as string | undefined) || undefined;
  if (databaseUrl !== undefined && !/^postgres(ql)?:\/\//.test(databaseUrl)) {
    throw new ConfigError(`${ENV.databaseUrl} must be a postgres:// URL`);
  }
  const logLevel = String(pick('logLevel', ENV.logLevel) ?? 'info') as LogLevel;
  if (!LOG_LEVELS.includes(logLevel)) {
    throw new ConfigError(`${ENV.logLevel} must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(logLevel)}`);
  }
  const leaseMs = int(ENV.leaseMs, pick('leaseMs', ENV.leaseMs), DEFAULTS.leaseMs, 100);
  const config: ControllerConfig = {
    host: String(pick('host', ENV.host) ?? DEFAULTS.host),
    port: int(ENV.port, pick('port', ENV.port), DEFAULTS.port, 0, 65535),
    dataDir,
    databaseUrl,
    blobDir: pick('blobDir', ENV.blobDir) ? path.resolve(String(pick('blobDir', ENV.blobDir))) : undefined,
    apiToken: token(ENV.apiToken, pick('apiToken', ENV.apiToken) as string | undefined, TOKEN_PREFIX.api),
    enrollmentToken: token(
      ENV.enrollmentToken,
      pick('enrollmentToken', ENV.enrollmentToken) as string | undefined,
      TOKEN_PREFIX.enrollment,
    ),
    accessTokenTtlMs: int(ENV.accessTokenTtlMs, pick('accessTokenTtlMs', ENV.accessTokenTtlMs), DEFAULTS.accessTokenTtlMs, 1000),
    ackTimeoutMs: int(ENV.ackTimeoutMs, pick('ackTimeoutMs', ENV.ackTimeoutMs), DEFAULTS.ackTimeoutMs, 100),
    leaseMs,
    heartbeatIntervalMs: int(
      ENV.heartbeatIntervalMs,
      pick('heartbeatIntervalMs', ENV.heartbeatIntervalMs),
      DEFAULTS.heartbeatIntervalMs,
      50,
    ),
    pollWaitMs: int(ENV.pollWaitMs, pick('pollWaitMs', ENV.pollWaitMs), DEFAULTS.pollWaitMs, 0, 600_000),
    pollRecheckMs: int(ENV.pollRecheckMs, pick('pollRecheckMs', ENV.pollRecheckMs), 2_000, 10),
    logFollowRecheckMs: int('logFollowRecheckMs', pick('logFollowRecheckMs'), 1_000, 10),
    maxFollowersPerClient: int(
      ENV.maxFollowersPerClient,
      pick('maxFollowersPerClient', ENV.maxFollowersPerClient),
      32,
      1,
    ),
    maxAuthFailuresPerMinute: int(
      ENV.maxAuthFailuresPerMinute,
      pick('maxAuthFailuresPerMinute', ENV.maxAuthFailuresPerMinute),
      30,
      0,
    ),
    maxRegistrationsPerMinute: int(
      ENV.maxRegistrationsPerMinute,
      pick('maxRegistrationsPerMinute', ENV.maxRegistrationsPerMinute),
      60,
      0,
    ),
    maxSourceBytes: int(ENV.maxSourceBytes, pick('maxSourceBytes', ENV.maxSourceBytes), GiB, 1),
    maxArtifactBytes: int(ENV.maxArtifactBytes, pick('maxArtifactBytes', ENV.maxArtifactBytes), 2 * GiB, 1),
    maxJsonBytes: int(ENV.maxJsonBytes, pick('maxJsonBytes', ENV.maxJsonBytes), MiB, 1024),
    maxJsonDepth: int(ENV.maxJsonDepth, pick('maxJsonDepth', ENV.maxJsonDepth), 32, 2, 1000),
    maxLogChunkBytes: int(ENV.maxLogChunkBytes, pick('maxLogChunkBytes', ENV.maxLogChunkBytes), 4 * MiB, 1024),
    maxSpecBytes: int(ENV.maxSpecBytes, pick('maxSpecBytes', ENV.maxSpecBytes), 2 * MiB, 1024),
    maxHeaderBytes: int(ENV.maxHeaderBytes, pick('maxHeaderBytes', ENV.maxHeaderBytes), 16 * 1024, 1024, MiB),
    maxDiscardBytes: int(ENV.maxDiscardBytes, pick('maxDiscardBytes', ENV.maxDiscardBytes), 32 * MiB, 0),
    tlsCertFile: optionalPath(pick('tlsCertFile', ENV.tlsCert)),
    tlsKeyFile: optionalPath(pick('tlsKeyFile', ENV.tlsKey)),
    logLevel,
    ops: loadOperationsConfig(env, overrides.ops, (message) => {
      throw new ConfigError(message);
    }),
    secretsKey: (pick('secretsKey', ENV.secretsKey) as string | undefined) || undefined,
    secretsKeyFile: pick('secretsKeyFile', ENV.secretsKeyFile) ? path.resolve(String(pick('secretsKeyFile', ENV.secretsKeyFile))) : undefined,
    cacheMaxBytes: overrides.cacheMaxBytes ?? int(ENV.cacheMaxMb, env[ENV.cacheMaxMb], DEFAULTS.cacheMaxMb, 0) * 1024 * 1024,
    cacheScopeKeys: Object.freeze(
      (overrides.cacheScopeKeys ?? String(env[ENV.cacheScope] ?? DEFAULTS.cacheScope).split(','))
        .map((k) => k.trim())
        .filter((k) => k.length > 0),
    ),
  };
  if ((config.tlsCertFile === undefined) !== (config.tlsKeyFile === undefined)) {
    throw new ConfigError(`${ENV.tlsCert} and ${ENV.tlsKey} go together: give both (PEM files of the certificate and its key) or neither`);
  }
  if (config.heartbeatIntervalMs >= config.leaseMs) {
    throw new ConfigError(
      `${ENV.heartbeatIntervalMs} (${config.heartbeatIntervalMs}) must be shorter than ${ENV.leaseMs} (${config.leaseMs}), or every lease expires between heartbeats`,
    );
  }
  return Object.freeze(config);
}
