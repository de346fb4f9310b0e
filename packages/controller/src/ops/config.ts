/**
 * Settings for running a controller for months (issue 14): retention ages,
 * the collector's interval, the blob cap, the per-attempt log cap and the
 * webhook retry window. Read once with the rest of the controller's
 * configuration (config.ts) and frozen.
 */
import { DEFAULTS, ENV, parseDuration } from '@buildfleet/protocol';
import type { RetryPolicy } from '../webhooks/backoff.js';
import { MIN_WORKER_VERSION, assertVersion } from './versions.js';

/** How long data of an ended build is kept, ms after it ended; Infinity keeps it for ever. */
export interface RetentionPolicy {
  readonly sourcesMs: number;
  readonly logsMs: number;
  readonly artifactsMs: number;
  /** The whole build (its row, attempts, logs, artifacts and source). */
  readonly buildsMs: number;
}

export interface OperationsConfig {
  readonly retention: RetentionPolicy;
  /** Pause between two collections, ms. */
  readonly gcIntervalMs: number;
  /** Cap on source and artifact bytes; oldest artifacts go first past it. Undefined: no cap. */
  readonly blobMaxBytes: number | undefined;
  /** Log bytes stored per attempt before the log is cut (the truncation line comes on top). */
  readonly logMaxBytes: number;
  readonly webhookRetry: RetryPolicy;
  /** Workers older than this release are refused at registration (BUILDFLEET_MIN_WORKER_VERSION). */
  readonly minWorkerVersion: string;
  /** How long one webhook request may take, ms. */
  readonly webhookTimeoutMs: number;
  /** A blob no row refers to is collected once it is this old, ms (uploads write the blob before its row). */
  readonly orphanGraceMs: number;
  /** Rows per collector transaction: small, so claims never wait long behind one. */
  readonly gcBatchSize: number;
}

const MiB = 1024 * 1024;

/** `fail` is how config.ts reports a bad value (its ConfigError). */
export function loadOperationsConfig(
  env: Record<string, string | undefined>,
  overrides: Partial<OperationsConfig> | undefined,
  fail: (message: string) => never,
): OperationsConfig {
  const duration = (name: string, fallback: string, allowNever: boolean): number => {
    const raw = env[name];
    try {
      return parseDuration(name, raw === undefined || raw === '' ? fallback : raw, { allowNever });
    } catch (err) {
      return fail((err as Error).message);
    }
  };
  const megabytes = (name: string, raw: string | undefined): number | undefined => {
    if (raw === undefined || raw.trim() === '') return undefined;
    const n = Number(raw.trim());
    if (!Number.isFinite(n) || n <= 0) fail(`${name} must be a positive number of MiB (decimals allowed), got ${JSON.stringify(raw)}`);
    return Math.max(1024, Math.round(n * MiB));
  };
  const retention: RetentionPolicy = overrides?.retention ?? {
    sourcesMs: duration(ENV.retainSources, DEFAULTS.retainSources, true),
    logsMs: duration(ENV.retainLogs, DEFAULTS.retainLogs, true),
    artifactsMs: duration(ENV.retainArtifacts, DEFAULTS.retainArtifacts, true),
    buildsMs: duration(ENV.retainBuilds, DEFAULTS.retainBuilds, true),
  };
  const gcIntervalMs = overrides?.gcIntervalMs ?? duration(ENV.gcInterval, DEFAULTS.gcInterval, false);
  if (gcIntervalMs < 100) fail(`${ENV.gcInterval} must be at least 100ms`);
  const firstDelayMs = duration(ENV.webhookFirstRetry, DEFAULTS.webhookFirstRetry, false);
  const retryForMs = duration(ENV.webhookRetryFor, DEFAULTS.webhookRetryFor, false);
  return Object.freeze({
    retention: Object.freeze({ ...retention }),
    gcIntervalMs,
    blobMaxBytes: overrides && 'blobMaxBytes' in overrides ? overrides.blobMaxBytes : megabytes(ENV.blobMaxMb, env[ENV.blobMaxMb]),
    logMaxBytes: overrides?.logMaxBytes ?? megabytes(ENV.logMaxMb, env[ENV.logMaxMb]) ?? DEFAULTS.logMaxMb * MiB,
    webhookRetry: Object.freeze(overrides?.webhookRetry ?? { firstDelayMs: Math.max(1, firstDelayMs), maxDelayMs: Math.max(firstDelayMs, 3_600_000), retryForMs }),
    minWorkerVersion:
      overrides?.minWorkerVersion ??
      (() => {
        try {
          return assertVersion(ENV.minWorkerVersion, env[ENV.minWorkerVersion] || MIN_WORKER_VERSION);
        } catch (err) {
          return fail((err as Error).message);
        }
      })(),
    webhookTimeoutMs: overrides?.webhookTimeoutMs ?? Math.max(100, duration(ENV.webhookTimeout, DEFAULTS.webhookTimeout, false)),
    orphanGraceMs: overrides?.orphanGraceMs ?? 3_600_000,
    gcBatchSize: overrides?.gcBatchSize ?? 100,
  });
}
