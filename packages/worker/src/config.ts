/**
 * Worker options, validated and frozen once, then passed down (docs/design.md
 * habit 11). Environment names are docs/protocol.md's "Configuration variables".
 */
import { createHash } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { DEFAULTS, ENV, EXECUTOR_ENV } from '@buildfleet/protocol';
import { limitsFromEnv, type Limits } from './sandbox/limits.js';
import { DEFAULT_SOURCE_LIMITS, type SourceLimits } from './source.js';

/** `BUILDFLEET_EXECUTOR`: `auto` picks `sandbox` where the host allows it, else `shell` with a warning. */
export const EXECUTOR_MODES = ['auto', 'sandbox', 'shell'] as const;
export type ExecutorMode = (typeof EXECUTOR_MODES)[number];

/** Everything the worker process needs to know, immutable after load. */
export interface WorkerConfig {
  /** Controller base URLs (no trailing slash), tried in order on failover. */
  readonly controllerUrls: readonly string[];
  /** Enrollment token (`bfe_…`) used only to register as a new worker. */
  readonly enrollmentToken: string | undefined;
  /** Data dir; the worker keeps its state in `<dataDir>/worker/`. */
  readonly dataDir: string;
  /** `<dataDir>/worker`: identity.json, workspaces/, pids/. */
  readonly stateDir: string;
  readonly name: string;
  readonly labels: readonly string[];
  /** Builds run at once (BUILDFLEET_CONCURRENCY, default 1). */
  readonly maxConcurrentBuilds: number;
  /**
   * Per-request timeout in ms (a long poll gets `waitMs` on top): how long a
   * controller may stay silent before the worker moves to the next URL
   * (BUILDFLEET_REQUEST_TIMEOUT_MS, default 30000).
   */
  readonly requestTimeoutMs: number;
  /** Grace between SIGTERM and SIGKILL when stopping a build, ms (default 10000). */
  readonly cancelGraceMs: number;
  /**
   * A PEM file of CA certificates trusted besides the system's when the
   * controller serves HTTPS (BUILDFLEET_CA_FILE; absolute path), e.g. a
   * private CA or a self-signed certificate.
   */
  readonly caFile: string | undefined;
  /** What a build's source may unpack to (BUILDFLEET_MAX_SOURCE_UNPACKED_MB, BUILDFLEET_MAX_SOURCE_FILES). */
  readonly sourceLimits: SourceLimits;
  /**
   * Bytes of recent cache archives the worker keeps in `<stateDir>/caches`,
   * so a repeat build here downloads nothing (BUILDFLEET_WORKER_CACHE_MAX_MB,
   * default 2048; 0 keeps none).
   */
  readonly cacheMaxBytes: number;
  /**
   * `buildfleet worker --once` (for autoscalers): take one build, report it,
   * deregister and stop. Polls ask for one build at most.
   */
  readonly once: boolean;
  /**
   * `--idle-timeout SECONDS`, in ms: deregister and stop after this long on
   * the clock with no build running (from the start, or from the last
   * build's end). Undefined: never.
   */
  readonly idleTimeoutMs: number | undefined;
  /** How builds run (BUILDFLEET_EXECUTOR, flag `--executor`; default `auto`). */
  readonly executor: ExecutorMode;
  /** bubblewrap to use: a name looked up in PATH or a path (BUILDFLEET_SANDBOX_BWRAP, default `bwrap`). */
  readonly bwrap: string;
  /** A root filesystem directory sandboxed builds see instead of the host's system directories (BUILDFLEET_SANDBOX_ROOTFS). */
  readonly rootfs: string | undefined;
  /** A sandboxed build may have the network when its spec asks (BUILDFLEET_SANDBOX_NETWORK=allow; default deny). */
  readonly allowNetwork: boolean;
  /** Who builds run as when the worker is root (BUILDFLEET_BUILD_USER, default `nobody`). */
  readonly buildUser: string;
  /**
   * Where build workspaces live (BUILDFLEET_WORKSPACE_DIR): outside the data
   * directory, so a build never shares a tree with the worker's identity.
   * Default: `<dataDir>-workspaces` next to the data directory.
   */
  readonly workspaceDir: string;
  /** The worker's resource limits per build (BUILDFLEET_LIMIT_*; a spec may lower them). */
  readonly limits: Limits;
  /**
   * Host paths (directories or files) a sandboxed build never sees, though
   * the sandbox binds the host's /etc: DEFAULT_SANDBOX_HIDE (the systemd
   * units' env files with the tokens) and every file a setting of this
   * process names that an operator keeps secret (BUILDFLEET_CA_FILE,
   * BUILDFLEET_TLS_KEY, BUILDFLEET_TLS_CERT, BUILDFLEET_SECRETS_KEY_FILE,
   * BUILDFLEET_BLOB_DIR: a controller on the same host, `buildfleet up`,
   * which hands its worker its --tls-* flags this way). The data and workspace
   * directories are hidden besides these.
   */
  readonly sandboxHide: readonly string[];
  readonly version: string;
}

export const WORKER_VERSION = '0.1.0';

/**
 * Hidden from every sandboxed build: deploy/systemd keeps the enrollment,
 * API and secrets tokens in /etc/buildfleet/*.env, readable by the very
 * user a non-root worker's builds run as.
 */
export const DEFAULT_SANDBOX_HIDE: readonly string[] = Object.freeze(['/etc/buildfleet']);

/**
 * The settings naming paths an operator keeps from builds (see
 * WorkerConfig.sandboxHide); the blob directory holds every build's sources,
 * logs and artifacts.
 */
const SECRET_FILE_SETTINGS = [ENV.caFile, ENV.tlsKey, ENV.tlsCert, ENV.secretsKeyFile, ENV.blobDir] as const;

function sandboxHide(env: Record<string, string | undefined>, caFile: string | undefined): string[] {
  const files = SECRET_FILE_SETTINGS.map((k) => env[k]).filter((v): v is string => !!v);
  return [...new Set([...DEFAULT_SANDBOX_HIDE, ...(caFile ? [caFile] : []), ...files.map((f) => path.resolve(f))])];
}

const MiB = 1024 * 1024;

/**
 * The default name: the host name and four hex digits of the data
 * directory's path, so two workers on one host (each with its own data
 * directory) are told apart, and a restarted worker keeps its name.
 */
export function defaultWorkerName(hostname: string, dataDir: string): string {
  return `${hostname}-${createHash('sha256').update(path.resolve(dataDir)).digest('hex').slice(0, 4)}`;
}

/** Thrown for an invalid option; `message` names the option. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

function splitList(value: string | undefined): string[] {
  if (!value) return [];
  return value
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}

function positiveInt(name: string, value: unknown, fallback: number): number {
  if (value === undefined || value === '') return fallback;
  const n = typeof value === 'number' ? value : Number(value);
  if (!Number.isInteger(n) || n < 1) throw new ConfigError(`${name} must be a positive integer, got ${String(value)}`);
  return n;
}

function nonNegativeInt(name: string, value: unknown, fallback: number): number {
  if (value === undefined || value === '') return fallback;
  const n = typeof value === 'number' ? value : Number(value);
  if (!Number.isInteger(n) || n < 0) throw new ConfigError(`${name} must be a whole number (0 or more), got ${String(value)}`);
  return n;
}

function normalizeUrl(u: string): string {
  let parsed: URL;
  try {
    parsed = new URL(u);
  } catch {
    throw new ConfigError(`${ENV.controllerUrl}: not a URL: ${u}`);
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new ConfigError(`${ENV.controllerUrl}: only http and https are supported: ${u}`);
  }
  return parsed.toString().replace(/\/+$/, '');
}

/** Partial options that override the environment (tests, the CLI's flags). */
export type WorkerConfigOverrides = Partial<Omit<WorkerConfig, 'stateDir' | 'controllerUrls' | 'labels' | 'executor'>> & {
  controllerUrls?: readonly string[] | string;
  labels?: readonly string[] | string;
  executor?: ExecutorMode | string;
};

/**
 * Reads the worker's options from `env` (docs/protocol.md names), applies
 * `overrides`, validates and freezes them. Throws `ConfigError` naming the
 * bad option.
 */
export function loadWorkerConfig(
  env: Record<string, string | undefined> = process.env,
  overrides: WorkerConfigOverrides = {},
): WorkerConfig {
  const urlsRaw = overrides.controllerUrls ?? env[ENV.controllerUrl] ?? DEFAULTS.controllerUrl;
  const urls = (typeof urlsRaw === 'string' ? splitList(urlsRaw) : [...urlsRaw]).map(normalizeUrl);
  if (urls.length === 0) throw new ConfigError(`${ENV.controllerUrl} is empty`);

  const labelsRaw = overrides.labels ?? env[ENV.labels];
  const labels = [...new Set(typeof labelsRaw === 'string' || labelsRaw === undefined ? splitList(labelsRaw) : [...labelsRaw])];
  for (const l of labels) {
    if (/[\s,]/.test(l) || l.length > 100) throw new ConfigError(`${ENV.labels}: invalid label ${JSON.stringify(l)}`);
  }

  const dataDir = path.resolve(overrides.dataDir ?? env[ENV.dataDir] ?? DEFAULTS.dataDir);
  const name = overrides.name ?? (env[ENV.workerName] || defaultWorkerName(os.hostname(), dataDir));
  if (!name || name.length > 200) throw new ConfigError('worker name must be 1-200 characters');

  const enrollmentToken = overrides.enrollmentToken ?? (env[ENV.enrollmentToken] || undefined);
  const caFile = overrides.caFile ?? (env[ENV.caFile] ? path.resolve(env[ENV.caFile]!) : undefined);

  const config: WorkerConfig = {
    controllerUrls: Object.freeze(urls),
    enrollmentToken,
    dataDir,
    stateDir: path.join(dataDir, 'worker'),
    name,
    labels: Object.freeze(labels.sort()),
    maxConcurrentBuilds: positiveInt(
      ENV.concurrency,
      overrides.maxConcurrentBuilds ?? env[ENV.concurrency],
      DEFAULTS.concurrency,
    ),
    requestTimeoutMs: positiveInt(ENV.requestTimeoutMs, overrides.requestTimeoutMs ?? env[ENV.requestTimeoutMs], 30_000),
    cancelGraceMs: positiveInt('cancelGraceMs', overrides.cancelGraceMs, 10_000),
    caFile,
    sourceLimits: Object.freeze(
      overrides.sourceLimits ?? {
        maxBytes: positiveInt(ENV.maxSourceUnpackedMb, env[ENV.maxSourceUnpackedMb], DEFAULT_SOURCE_LIMITS.maxBytes / MiB) * MiB,
        maxEntries: positiveInt(ENV.maxSourceFiles, env[ENV.maxSourceFiles], DEFAULT_SOURCE_LIMITS.maxEntries),
      },
    ),
    cacheMaxBytes: overrides.cacheMaxBytes ?? nonNegativeInt(ENV.workerCacheMaxMb, env[ENV.workerCacheMaxMb], DEFAULTS.workerCacheMaxMb) * MiB,
    once: overrides.once ?? false,
    idleTimeoutMs: overrides.idleTimeoutMs === undefined ? undefined : positiveInt('--idle-timeout', overrides.idleTimeoutMs, 1),
    executor: executorMode(overrides.executor ?? env[EXECUTOR_ENV.executor]),
    bwrap: overrides.bwrap ?? (env[EXECUTOR_ENV.bwrap] || 'bwrap'),
    rootfs: overrides.rootfs ?? (env[EXECUTOR_ENV.rootfs] ? path.resolve(env[EXECUTOR_ENV.rootfs]!) : undefined),
    allowNetwork: overrides.allowNetwork ?? networkPolicy(env[EXECUTOR_ENV.network]),
    buildUser: overrides.buildUser ?? (env[EXECUTOR_ENV.buildUser] || 'nobody'),
    workspaceDir: path.resolve(overrides.workspaceDir ?? (env[EXECUTOR_ENV.workspaceDir] || `${dataDir}-workspaces`)),
    limits: overrides.limits ?? workerLimits(env),
    sandboxHide: Object.freeze([...(overrides.sandboxHide ?? sandboxHide(env, caFile))]),
    version: overrides.version ?? WORKER_VERSION,
  };
  if (config.workspaceDir === dataDir || config.workspaceDir.startsWith(dataDir + path.sep)) {
    throw new ConfigError(`${EXECUTOR_ENV.workspaceDir} must lie outside the data directory ${dataDir} (a build must not share a tree with the worker's identity)`);
  }
  return Object.freeze(config);
}

function executorMode(value: string | undefined): ExecutorMode {
  const v = value === undefined || value === '' ? 'auto' : value;
  if (!(EXECUTOR_MODES as readonly string[]).includes(v)) {
    throw new ConfigError(`${EXECUTOR_ENV.executor} (--executor) must be one of ${EXECUTOR_MODES.join(', ')}, got ${JSON.stringify(v)}`);
  }
  return v as ExecutorMode;
}

function networkPolicy(value: string | undefined): boolean {
  if (value === undefined || value === '' || value === 'deny') return false;
  if (value === 'allow') return true;
  throw new ConfigError(`${EXECUTOR_ENV.network} must be allow or deny, got ${JSON.stringify(value)}`);
}

function workerLimits(env: Record<string, string | undefined>): Limits {
  try {
    return limitsFromEnv(env);
  } catch (err) {
    throw new ConfigError((err as Error).message);
  }
}

/**
 * Removes the tokens from this process's environment once the configuration
 * has read them (issue 8): a build started later, or anything that reads
 * the environment of this process, finds none there. (The kernel's copy in
 * /proc/<pid>/environ keeps what the process was started with: a sandboxed
 * build cannot see this process, and a shell build of a root worker runs as
 * another user; `buildfleet up` hands its worker the token through a pipe.)
 */
export function forgetTokenEnvironment(env: NodeJS.ProcessEnv = process.env): void {
  delete env[ENV.enrollmentToken];
  delete env[ENV.apiToken];
}
