/**
 * Which executor a worker runs builds with (issue 8), from
 * `BUILDFLEET_EXECUTOR` / `--executor`:
 * - `sandbox`: bubblewrap; refused at start-up where it cannot work here,
 *   with the fix (the package to install, the sysctl to set);
 * - `shell`: no isolation; chosen by the operator, it adds nothing to the
 *   build logs (the worker's registered executor says it);
 * - `auto` (default): `sandbox` when the probe succeeds, else `shell` with a
 *   loud warning at start-up and in every build log.
 * Both get the build cgroups where this process may create them.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import type { Clock } from '@buildfleet/protocol';
import type { WorkerConfig } from '../config.js';
import type { Logger } from '../logger.js';
import { describeCgroupHost, probeSandbox, resolveBuildUser, runningAsRoot, setupCgroups, type SandboxProbe } from '../sandbox/index.js';
import { ContainedExecutor } from './contained.js';

/** Thrown when `--executor sandbox` cannot work on this host; `message` says how to fix it. */
export class ExecutorUnavailableError extends Error {
  constructor(
    message: string,
    readonly fix: string,
  ) {
    super(message);
    this.name = 'ExecutorUnavailableError';
  }
}

/** The warning of a worker that fell back to `shell` (start-up log and the top of every build log). */
export function notIsolatedWarning(probe: Extract<SandboxProbe, { ok: false }>): string {
  return `WARNING: this build is NOT isolated (shell executor): it runs with the worker's view of this machine. The sandbox is unavailable: ${probe.problem}; fix: ${probe.fix}`;
}

/** Names this worker's cgroups (`buildfleet-<key>`): stable across restarts, distinct per data directory. */
export function cgroupKey(stateDir: string): string {
  return createHash('sha256').update(stateDir).digest('hex').slice(0, 12);
}

/**
 * Builds the executor `config` asks for. Throws ExecutorUnavailableError
 * (`sandbox` asked for, not possible here) or BuildUserError (a worker
 * running as root with no usable build user).
 */
export async function createExecutor(config: WorkerConfig, deps: { clock: Clock; logger: Logger }): Promise<ContainedExecutor> {
  const { logger } = deps;
  const runAs = runningAsRoot() ? resolveBuildUser(config.buildUser) : undefined;
  await fs.mkdir(config.workspaceDir, { recursive: true, mode: 0o700 });
  await fs.chmod(config.workspaceDir, runAs ? 0o711 : 0o700);

  let probe: SandboxProbe | undefined;
  if (config.executor !== 'shell') {
    probe = probeSandbox({ bwrap: config.bwrap, rootfs: config.rootfs, scratchDir: config.workspaceDir, ...(runAs ? { runAs } : {}) });
    if (!probe.ok && config.executor === 'sandbox') {
      throw new ExecutorUnavailableError(`--executor sandbox: ${probe.problem}. Fix: ${probe.fix}`, probe.fix);
    }
  }
  const cg = setupCgroups(cgroupKey(config.stateDir));
  if (cg.ok) logger.info({ cgroups: describeCgroupHost(cg.host) }, 'build limits held by cgroups');
  else logger.info({ why: cg.reason }, 'no build cgroups here: limits held by rlimits and the watcher');

  const common = {
    stateDir: config.stateDir,
    workspaceDir: config.workspaceDir,
    clock: deps.clock,
    logger,
    limits: config.limits,
    sourceLimits: config.sourceLimits,
    cgroups: cg.ok ? cg.host : undefined,
    runAs,
  };
  if (probe?.ok) {
    logger.info({ bwrap: probe.bwrap, version: probe.version, rootfs: config.rootfs }, 'executor sandbox: builds run in bubblewrap');
    return new ContainedExecutor({
      ...common,
      kind: 'sandbox',
      sandbox: {
        bwrap: probe.bwrap,
        version: probe.version,
        disableUserns: probe.disableUserns,
        rootfs: config.rootfs,
        allowNetwork: config.allowNetwork,
        hide: [config.dataDir, config.workspaceDir, ...config.sandboxHide],
      },
    });
  }
  const notices: string[] = [];
  if (probe && !probe.ok) {
    const warning = notIsolatedWarning(probe);
    const bar = '!'.repeat(78);
    logger.warn({ problem: probe.problem, fix: probe.fix }, `\n${bar}\n${warning}\n${bar}`);
    notices.push(warning);
  }
  return new ContainedExecutor({ ...common, kind: 'shell', notices });
}
