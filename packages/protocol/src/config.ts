/**
 * Configuration names of docs/protocol.md ("Configuration variables") and their
 * defaults. Black-box tests set these variables.
 */
export const ENV = {
  host: 'BUILDFLEET_HOST',
  port: 'BUILDFLEET_PORT',
  dataDir: 'BUILDFLEET_DATA_DIR',
  databaseUrl: 'DATABASE_URL',
  apiToken: 'BUILDFLEET_API_TOKEN',
  enrollmentToken: 'BUILDFLEET_ENROLLMENT_TOKEN',
  controllerUrl: 'BUILDFLEET_CONTROLLER_URL',
  labels: 'BUILDFLEET_LABELS',
  workerName: 'BUILDFLEET_WORKER_NAME',
  concurrency: 'BUILDFLEET_CONCURRENCY',
  accessTokenTtlMs: 'BUILDFLEET_ACCESS_TOKEN_TTL_MS',
  ackTimeoutMs: 'BUILDFLEET_ACK_TIMEOUT_MS',
  leaseMs: 'BUILDFLEET_LEASE_MS',
  heartbeatIntervalMs: 'BUILDFLEET_HEARTBEAT_INTERVAL_MS',
  blobDir: 'BUILDFLEET_BLOB_DIR',
  logLevel: 'BUILDFLEET_LOG_LEVEL',
  retainSources: 'BUILDFLEET_RETAIN_SOURCES',
  retainLogs: 'BUILDFLEET_RETAIN_LOGS',
  retainArtifacts: 'BUILDFLEET_RETAIN_ARTIFACTS',
  retainBuilds: 'BUILDFLEET_RETAIN_BUILDS',
  gcInterval: 'BUILDFLEET_GC_INTERVAL',
  blobMaxMb: 'BUILDFLEET_BLOB_MAX_MB',
  logMaxMb: 'BUILDFLEET_LOG_MAX_MB',
  webhookFirstRetry: 'BUILDFLEET_WEBHOOK_FIRST_RETRY',
  webhookRetryFor: 'BUILDFLEET_WEBHOOK_RETRY_FOR',
  webhookTimeout: 'BUILDFLEET_WEBHOOK_TIMEOUT',
  minWorkerVersion: 'BUILDFLEET_MIN_WORKER_VERSION',
  // Issue 13.
  secretsKey: 'BUILDFLEET_SECRETS_KEY',
  secretsKeyFile: 'BUILDFLEET_SECRETS_KEY_FILE',
  cacheMaxMb: 'BUILDFLEET_CACHE_MAX_MB',
  cacheScope: 'BUILDFLEET_CACHE_SCOPE',
  workerCacheMaxMb: 'BUILDFLEET_WORKER_CACHE_MAX_MB',
  // Issue 9: limits, abuse limits and TLS.
  pollWaitMs: 'BUILDFLEET_POLL_WAIT_MS',
  pollRecheckMs: 'BUILDFLEET_POLL_RECHECK_MS',
  maxFollowersPerClient: 'BUILDFLEET_MAX_FOLLOWERS_PER_CLIENT',
  maxAuthFailuresPerMinute: 'BUILDFLEET_MAX_AUTH_FAILURES_PER_MINUTE',
  maxRegistrationsPerMinute: 'BUILDFLEET_MAX_REGISTRATIONS_PER_MINUTE',
  maxSourceBytes: 'BUILDFLEET_MAX_SOURCE_BYTES',
  maxArtifactBytes: 'BUILDFLEET_MAX_ARTIFACT_BYTES',
  maxJsonBytes: 'BUILDFLEET_MAX_JSON_BYTES',
  maxJsonDepth: 'BUILDFLEET_MAX_JSON_DEPTH',
  maxLogChunkBytes: 'BUILDFLEET_MAX_LOG_CHUNK_BYTES',
  maxSpecBytes: 'BUILDFLEET_MAX_SPEC_BYTES',
  maxHeaderBytes: 'BUILDFLEET_MAX_HEADER_BYTES',
  maxDiscardBytes: 'BUILDFLEET_MAX_DISCARD_BYTES',
  tlsCert: 'BUILDFLEET_TLS_CERT',
  tlsKey: 'BUILDFLEET_TLS_KEY',
  caFile: 'BUILDFLEET_CA_FILE',
  requestTimeoutMs: 'BUILDFLEET_REQUEST_TIMEOUT_MS',
  maxSourceUnpackedMb: 'BUILDFLEET_MAX_SOURCE_UNPACKED_MB',
  maxSourceFiles: 'BUILDFLEET_MAX_SOURCE_FILES',
} as const;

export const DEFAULTS = {
  host: '127.0.0.1',
  port: 7700,
  dataDir: './.buildfleet',
  controllerUrl: 'http://127.0.0.1:7700',
  concurrency: 1,
  accessTokenTtlMs: 3_600_000,
  ackTimeoutMs: 30_000,
  leaseMs: 60_000,
  heartbeatIntervalMs: 10_000,
  pollWaitMs: 30_000,
  /** Retention (issue 14): ages after a build ended, as `parseDuration` reads them. */
  retainSources: '7d',
  retainLogs: '30d',
  retainArtifacts: '30d',
  retainBuilds: '90d',
  gcInterval: '5m',
  /** Per attempt, MiB. */
  logMaxMb: 64,
  webhookFirstRetry: '10s',
  webhookRetryFor: '24h',
  webhookTimeout: '10s',
  /** Total size of the controller's build caches, MB (BUILDFLEET_CACHE_MAX_MB). */
  cacheMaxMb: 10_240,
  /** Metadata keys whose values scope caches (BUILDFLEET_CACHE_SCOPE). */
  cacheScope: 'repo',
  /** Size of a worker's local copies of cache archives, MB (BUILDFLEET_WORKER_CACHE_MAX_MB). */
  workerCacheMaxMb: 2_048,
} as const;

/** Header carrying an artifact's SHA-256 (lowercase hex). */
export const CHECKSUM_HEADER = 'x-checksum-sha256';

export const PROTOCOL_VERSION = '1';
