/**
 * The executor of real workers (issue 8): every build is started by the
 * launcher (sandbox/launch.ts), in bubblewrap (`sandbox`) or not (`shell`),
 * with the worker's resource limits lowered by its spec, watched by the
 * limit watcher, and with nothing of it left running when it ends.
 *
 * Files of one attempt: `<workspaceDir>/bf-<build>-<attempt>/` holds
 * `workspace/` (the build's working directory and HOME) and `tmp/` (its
 * /tmp in the sandbox, its TMPDIR in the shell). `workspaceDir` lies
 * outside the worker's data directory. A worker running as root gives both
 * to the build user and runs the build as that user (never root): the
 * attempt directory is 0711, so the build reaches its own workspace but
 * cannot list the others.
 *
 * What a previous run left behind is killed at start-up: its build cgroups,
 * or (without cgroups) the process groups and cookies recorded in
 * `<stateDir>/pids/`; a sandbox without a cgroup dies with its worker
 * (`--die-with-parent`).
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { systemClock, type Clock, type ExecutorKind } from '@buildfleet/protocol';
import type { Logger } from '../logger.js';
import { PidDir } from '../process.js';
import {
  BuildCgroup,
  breach,
  describeLimits,
  effectiveLimits,
  hiddenPaths,
  launchBuild,
  limitFromExit,
  LimitWatcher,
  releaseCgroups,
  removeTree,
  resolvConfBinds,
  rootEntries,
  SANDBOX_WORKSPACE,
  type BuildUser,
  type CgroupHost,
  type LaunchedBuild,
  type LimitBreach,
  type Limits,
  type RootEntry,
} from '../sandbox/index.js';
import { unpackSource, type SourceLimits } from '../source.js';
import { findArtifacts } from './artifacts.js';
import type { CollectedArtifacts, Executor, RunOptions, RunningScript, ScriptExit, SecretFilesLocation, Workspace } from './types.js';

/** How sandboxed builds run (from the probe and the worker's configuration). */
export interface SandboxSettings {
  bwrap: string;
  /** bubblewrap's `--version`, for the build log. */
  version: string;
  disableUserns: boolean;
  rootfs?: string | undefined;
  /** The worker allows a build the network when its spec asks (BUILDFLEET_SANDBOX_NETWORK=allow). */
  allowNetwork: boolean;
  /**
   * Host directories and files a build must not see even where a bound
   * directory shows them: the data and workspace directories, and the
   * operator's secrets (WorkerConfig.sandboxHide).
   */
  hide: readonly string[];
}

export interface ContainedExecutorOptions {
  kind: ExecutorKind;
  /** `<dataDir>/worker`: pids/ lives here. */
  stateDir: string;
  /** Where attempt directories are made (outside the data directory). */
  workspaceDir: string;
  /** Grace periods and the limit watcher. */
  clock: Clock;
  /**
   * Paces the bounded waits for killed processes to be gone (default the
   * system clock): they wait on the kernel, not on the worker's logic, so a
   * test driving `clock` by hand does not stall them.
   */
  killClock?: Clock | undefined;
  logger: Logger;
  /** The worker's limits; a spec may lower them. */
  limits: Limits;
  sourceLimits?: SourceLimits | undefined;
  /** Required for `sandbox`. */
  sandbox?: SandboxSettings | undefined;
  /** Where build cgroups are made, when this process may (else rlimits alone hold). */
  cgroups?: CgroupHost | undefined;
  /** Set when the worker is root: builds run as this user. */
  runAs?: BuildUser | undefined;
  /** Lines at the top of every build log (the `shell` executor's "not isolated" warning). */
  notices?: readonly string[] | undefined;
}

/** Where a sandboxed build sees its secret files (a top-level name no root filesystem has). */
const SANDBOX_SECRETS = '/buildfleet-secrets';

/** The build's PATH in the sandbox (its environment is built from nothing). */
const SANDBOX_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** Variables of the worker's own environment never passed to shell builds (credentials, worker configuration). */
function inheritedEnv(): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('BUILDFLEET_') || k === 'DATABASE_URL' || k.startsWith('npm_')) continue;
    out[k] = v;
  }
  return out;
}

function safeName(id: string): string {
  return id.replace(/[^A-Za-z0-9._-]/g, '_');
}

/** Gives a tree the build user (symlinks themselves, never their targets). */
async function chownTree(dir: string, user: BuildUser): Promise<void> {
  await fs.lchown(dir, user.uid, user.gid);
  for (const e of await fs.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) await chownTree(p, user);
    else await fs.lchown(p, user.uid, user.gid);
  }
}

interface Attempt {
  root: string;
  tmp: string;
}

export class ContainedExecutor implements Executor {
  readonly kind: ExecutorKind;
  private readonly pids: PidDir;
  private readonly attempts = new Map<string, Attempt>();
  private readonly root: readonly RootEntry[];

  constructor(private readonly o: ContainedExecutorOptions) {
    if (o.kind === 'sandbox' && !o.sandbox) throw new Error('the sandbox executor needs its bubblewrap settings');
    this.kind = o.kind;
    this.pids = new PidDir(o.stateDir);
    this.root = o.sandbox ? rootEntries(o.sandbox.rootfs) : [];
  }

  private attemptOf(ws: Workspace): Attempt {
    const a = this.attempts.get(ws.dir);
    if (!a) throw new Error(`unknown workspace ${ws.dir}`);
    return a;
  }

  async prepare(build: { id: string; attempt: number }, sourceFile: string): Promise<Workspace> {
    const { runAs } = this.o;
    const root = path.join(this.o.workspaceDir, `bf-${safeName(build.id)}-${build.attempt}`);
    const dir = path.join(root, 'workspace');
    const tmp = path.join(root, 'tmp');
    await removeTree(root);
    await fs.mkdir(root, { recursive: true, mode: 0o700 });
    try {
      // 0711: the build user passes through to its own directories, lists nothing.
      if (runAs) await fs.chmod(root, 0o711);
      await fs.mkdir(dir, { mode: 0o700 });
      await fs.mkdir(tmp, { mode: 0o700 });
      await unpackSource(sourceFile, dir, this.o.sourceLimits);
      if (runAs) {
        await chownTree(dir, runAs);
        await fs.lchown(tmp, runAs.uid, runAs.gid);
      }
    } catch (err) {
      await removeTree(root).catch(() => undefined);
      throw err;
    }
    this.attempts.set(dir, { root, tmp });
    return { buildId: build.id, attempt: build.attempt, dir };
  }

  /** The build's whole environment. */
  private environment(ws: Workspace, tmp: string, env: Readonly<Record<string, string>>): NodeJS.ProcessEnv {
    if (this.kind === 'sandbox') {
      // Nothing of the worker's environment: spec.env, BUILDFLEET_* of the build, PATH, HOME, LANG.
      return {
        PATH: SANDBOX_PATH,
        LANG: process.env.LANG || 'C.UTF-8',
        ...env,
        HOME: SANDBOX_WORKSPACE,
        TMPDIR: '/tmp',
        BUILDFLEET_WORKSPACE: SANDBOX_WORKSPACE,
      };
    }
    const own = this.o.runAs ? { HOME: ws.dir, USER: this.o.runAs.name, LOGNAME: this.o.runAs.name } : {};
    return { ...inheritedEnv(), ...own, TMPDIR: tmp, ...env };
  }

  /**
   * The lines a build log starts with: the warning of a worker that fell back
   * to `shell`; in the sandbox, what isolates the build and its limits. An
   * explicitly chosen `shell` adds nothing to the build's own output.
   */
  private preamble(limits: Limits, network: boolean, cgroup: BuildCgroup | undefined): string {
    const lines = [...(this.o.notices ?? [])];
    const s = this.o.sandbox;
    if (this.kind === 'sandbox' && s) {
      lines.push(
        `executor sandbox (${s.version}): ${s.rootfs ? `root filesystem ${s.rootfs}` : "the host's system directories"} read-only, ` +
          `writable ${SANDBOX_WORKSPACE} and /tmp, network ${network ? 'shared' : 'none'}`,
      );
    }
    if (lines.length > 0) lines.push(`limits: ${describeLimits(limits)} (${cgroup ? 'cgroup' : 'rlimits'})`);
    return lines.map((l) => `[buildfleet] ${l}\n`).join('');
  }

  async run(
    ws: Workspace,
    script: string,
    env: Readonly<Record<string, string>>,
    onOutput: (chunk: Buffer) => void,
    options: RunOptions = {},
  ): Promise<RunningScript> {
    const { clock, logger, sandbox, runAs } = this.o;
    const { root, tmp } = this.attemptOf(ws);
    // Restored caches were unpacked by the worker since prepare(): the build user must own them too.
    if (runAs) await chownTree(ws.dir, runAs);
    const limits = effectiveLimits(this.o.limits, options.limits);
    const network = this.kind === 'sandbox' && options.network === true && sandbox?.allowNetwork === true;
    const hidden = sandbox && this.kind === 'sandbox' ? hiddenPaths(this.root, sandbox.hide) : undefined;

    let cgroup: BuildCgroup | undefined;
    if (this.o.cgroups) {
      try {
        cgroup = BuildCgroup.create(this.o.cgroups, path.basename(root), limits);
      } catch (err) {
        logger.warn({ buildId: ws.buildId, err: (err as Error).message }, 'could not create the build cgroup; rlimits alone hold');
      }
    }
    const preamble = this.preamble(limits, network, cgroup);
    if (preamble) onOutput(Buffer.from(preamble));
    if (this.kind === 'sandbox' && options.network && !network) {
      onOutput(Buffer.from('[buildfleet] the build asked for the network; this worker denies it (BUILDFLEET_SANDBOX_NETWORK=deny)\n'));
    }
    // Without a cgroup, a shell build's processes carry a cookie: how strays (setsid) are found.
    const cookie = this.kind === 'shell' && !cgroup ? randomBytes(16).toString('hex') : undefined;

    let launched: LaunchedBuild;
    try {
      launched = launchBuild({
        script,
        shell: options.shell,
        env: this.environment(ws, tmp, env),
        workspace: ws.dir,
        tmp,
        limits,
        ...(runAs ? { runAs } : {}),
        ...(cgroup ? { cgroup } : {}),
        ...(cookie ? { cookie } : {}),
        ...(sandbox && this.kind === 'sandbox'
          ? {
              sandbox: {
                bwrap: sandbox.bwrap,
                mounts: {
                  root: this.root,
                  hide: hidden?.dirs ?? [],
                  hideFiles: hidden?.files ?? [],
                  network,
                  disableUserns: sandbox.disableUserns,
                  // Secret files (spec secrets as files), read-only; skipped when the build has none.
                  extraBinds: [[this.secretFiles(ws).host, SANDBOX_SECRETS], ...(network ? resolvConfBinds(this.root, sandbox.rootfs) : [])],
                },
              },
            }
          : {}),
      });
    } catch (err) {
      cgroup?.remove();
      throw err;
    }
    const out = launched.child.stdout;
    out?.on('data', onOutput);
    if (launched.pid > 0) await this.pids.record(ws.buildId, launched.pid, cookie);

    let killing: Promise<number[]> | undefined;
    const killClock = this.o.killClock ?? systemClock;
    const killAll = () => (killing ??= launched.killAll(killClock));
    const watcher = new LimitWatcher({
      clock,
      limits,
      ...(cgroup ? { cgroup } : { countProcesses: () => launched.members().length }),
      diskDirs: [ws.dir, tmp],
      onBreach: (b) => {
        logger.warn({ buildId: ws.buildId, reason: b.reason }, b.message);
        void killAll();
      },
    });
    watcher.start();

    const exited: Promise<ScriptExit> = (async () => {
      const exit = await launched.exited;
      // Nothing of the build outlives its script (setsid, double fork, nohup).
      const left = await launched.killAll(killClock);
      if (left.length > 0) logger.error({ buildId: ws.buildId, pids: left }, 'build processes would not die');
      await launched.closed;
      watcher.stop();
      const hit: LimitBreach | undefined = watcher.breach ?? watcher.check() ?? limitOf(exit, limits);
      if (cgroup) {
        try {
          cgroup.remove();
        } catch (err) {
          logger.warn({ buildId: ws.buildId, err: (err as Error).message }, 'could not remove the build cgroup');
        }
      }
      await this.pids.remove(ws.buildId).catch(() => undefined);
      return hit ? { ...exit, limit: { reason: hit.reason, message: hit.message } } : exit;
    })();

    return {
      pgid: launched.pid,
      exited,
      stop: (graceMs) => {
        launched.terminate();
        const ac = new AbortController();
        void launched.exited.then(() => ac.abort());
        void clock.sleep(graceMs, ac.signal).then(
          () => void killAll(),
          () => undefined,
        );
      },
      kill: () => {
        void killAll();
        // The pipe may be paused for backpressure; nobody reads it any more.
        out?.destroy();
      },
      pauseOutput: () => out?.pause(),
      resumeOutput: () => out?.resume(),
    };
  }

  /**
   * `<attempt>/secrets`, beside the workspace (never in it: no artifact or
   * cache picks a secret up); the sandbox shows it read-only at
   * /buildfleet-secrets. A root worker gives the files to the build user.
   */
  secretFiles(ws: Workspace): SecretFilesLocation & { chown?: (file: string) => Promise<void> } {
    const host = path.join(path.dirname(ws.dir), 'secrets');
    const { runAs } = this.o;
    return {
      host,
      build: this.kind === 'sandbox' ? SANDBOX_SECRETS : host,
      ...(runAs ? { chown: (file: string) => fs.lchown(file, runAs.uid, runAs.gid) } : {}),
    };
  }

  collectArtifacts(ws: Workspace, patterns: readonly string[]): Promise<CollectedArtifacts> {
    return findArtifacts(ws.dir, patterns);
  }

  async cleanup(ws: Workspace): Promise<void> {
    const a = this.attempts.get(ws.dir);
    this.attempts.delete(ws.dir);
    await this.pids.remove(ws.buildId).catch(() => undefined);
    await removeTree(a?.root ?? path.dirname(ws.dir)).catch((err: unknown) =>
      this.o.logger.warn({ buildId: ws.buildId, err: (err as Error).message }, 'could not remove the workspace'),
    );
  }

  async close(): Promise<void> {
    if (!this.o.cgroups) return;
    const stayed = releaseCgroups(this.o.cgroups);
    if (stayed.length > 0) this.o.logger.warn({ cgroups: stayed }, 'build cgroups still hold processes; the next start kills them');
  }

  async cleanupLeftovers(): Promise<number[]> {
    const { logger, workspaceDir, runAs } = this.o;
    const clock = this.o.killClock ?? systemClock;
    const killed = await this.pids.killLeftovers(logger, clock);
    if (this.o.cgroups) {
      for (const cg of BuildCgroup.leftovers(this.o.cgroups)) {
        const before = cg.procs();
        await cg.killAll(clock);
        try {
          cg.remove();
        } catch {
          // Still busy: the next start tries again.
        }
        if (before.length > 0) {
          logger.warn({ cgroup: cg.paths[0], pids: before }, 'killed build processes left behind by a previous run');
          killed.push(...before);
        }
      }
    }
    await fs.mkdir(workspaceDir, { recursive: true, mode: 0o700 });
    // The build user must pass through to its workspace; it lists nothing here.
    await fs.chmod(workspaceDir, runAs ? 0o711 : 0o700);
    // Only our own attempt directories: the operator may have pointed this at a shared place.
    for (const name of await fs.readdir(workspaceDir)) {
      if (name.startsWith('bf-')) await removeTree(path.join(workspaceDir, name)).catch(() => undefined);
    }
    return killed;
  }
}

/** The rlimit the script's end shows (SIGXCPU, SIGXFSZ), as a breach. */
function limitOf(exit: { code: number | null; signal: NodeJS.Signals | null }, limits: Limits): LimitBreach | undefined {
  const name = limitFromExit(exit);
  return name && limits[name] !== null ? breach(name, limits) : undefined;
}
