/**
 * Per-build resource limits and isolation (issue 8): the names a build spec
 * uses (`limits`, `isolation`, `network`), the worker's configuration names
 * for them, and the `reason` a build that exceeded one ends with.
 *
 * A worker's operator sets each limit (`BUILDFLEET_LIMIT_*`); a build's spec
 * may lower one, never raise it. Wall-clock time stays `timeoutSeconds`.
 */
import { Type, type Static } from 'typebox';

/** The limits, in the order they are documented. */
export const LIMIT_NAMES = ['cpuSeconds', 'memoryMb', 'processes', 'fileSizeMb', 'diskMb'] as const;
export type LimitName = (typeof LIMIT_NAMES)[number];

/**
 * Resource limits of one build; a missing limit means "the worker's".
 * Units: `cpuSeconds` CPU seconds summed over every process of the build;
 * `memoryMb` MiB; `processes` processes (and threads) at once; `fileSizeMb`
 * MiB per file written; `diskMb` MiB used in the workspace and /tmp.
 */
export type BuildLimits = { [K in LimitName]?: number };

/** The `reason` of a build ended `failed` because it exceeded a limit. */
export const LIMIT_REASONS = {
  cpuSeconds: 'limit_cpu',
  memoryMb: 'limit_memory',
  processes: 'limit_processes',
  fileSizeMb: 'limit_file_size',
  diskMb: 'limit_disk',
} as const satisfies Record<LimitName, string>;
export type LimitReason = (typeof LIMIT_REASONS)[LimitName];

/** The worker's environment variable for each limit (0 means no limit). */
export const LIMIT_ENV = {
  cpuSeconds: 'BUILDFLEET_LIMIT_CPU_SECONDS',
  memoryMb: 'BUILDFLEET_LIMIT_MEMORY_MB',
  processes: 'BUILDFLEET_LIMIT_PROCESSES',
  fileSizeMb: 'BUILDFLEET_LIMIT_FILE_SIZE_MB',
  diskMb: 'BUILDFLEET_LIMIT_DISK_MB',
} as const satisfies Record<LimitName, string>;

/** A worker's limits when its operator sets none. */
export const DEFAULT_LIMITS = {
  cpuSeconds: 7200,
  memoryMb: 8192,
  processes: 4096,
  fileSizeMb: 8192,
  diskMb: 20480,
} as const satisfies Record<LimitName, number>;

const limit = (description: string) => Type.Optional(Type.Integer({ minimum: 1, maximum: 2 ** 40, description }));

/** `spec.limits`: each one lowers the worker's limit for this build. */
export const BuildLimitsSchema = Type.Object(
  {
    cpuSeconds: limit('CPU seconds over all processes of the build'),
    memoryMb: limit('MiB of memory'),
    processes: limit('processes and threads at once'),
    fileSizeMb: limit('MiB per file written'),
    diskMb: limit('MiB used in the workspace and /tmp'),
  },
  { additionalProperties: false },
);
export type BuildLimitsInput = Static<typeof BuildLimitsSchema>;

/** How a worker runs builds: `sandbox` isolates them (bubblewrap), `shell` does not. */
export const EXECUTORS = ['shell', 'sandbox'] as const;
export type ExecutorKind = (typeof EXECUTORS)[number];

/**
 * The label equivalent to `"isolation": "sandbox"`: a build carrying it (or
 * that spec field) runs only on a worker whose executor is `sandbox`.
 */
export const ISOLATION_LABEL = 'isolation:sandbox';

/** Worker configuration names of the executor (README "Isolation"). */
export const EXECUTOR_ENV = {
  executor: 'BUILDFLEET_EXECUTOR',
  bwrap: 'BUILDFLEET_SANDBOX_BWRAP',
  rootfs: 'BUILDFLEET_SANDBOX_ROOTFS',
  network: 'BUILDFLEET_SANDBOX_NETWORK',
  buildUser: 'BUILDFLEET_BUILD_USER',
  workspaceDir: 'BUILDFLEET_WORKSPACE_DIR',
} as const;
