/**
 * The executor: where and how a build's script runs (issue 8: prepare the
 * workspace → run → collect artifacts → clean up). The build run
 * (`build-run.ts`) talks to the controller and decides outcomes; an executor
 * only touches this machine. `contained.ts` runs real builds, in bubblewrap
 * (`sandbox`) or not (`shell`), with limits and nothing left behind;
 * `shell.ts` runs them through an injectable runner (the simulation's).
 */
import type { BuildLimits, ExecutorKind, LimitReason } from '@buildfleet/protocol';

/** One attempt's workspace: `dir` is where the script runs and artifacts are looked up. */
export interface Workspace {
  readonly buildId: string;
  readonly attempt: number;
  /** Absolute path of the workspace directory on this machine. */
  readonly dir: string;
}

/** How the script's process ended: its exit code, or the signal that ended it. */
export interface ScriptExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /**
   * Set when the build exceeded a resource limit (it was ended for it, or the
   * kernel enforced it): the build ends `failed` with `reason`, and `message`
   * says what happened.
   */
  limit?: { reason: LimitReason; message: string };
}

/** What of the spec the executor needs besides the script (issue 8). */
/** A script that runs. Output goes to the `onOutput` given to `Executor.run`. */
export interface RunningScript {
  /** Process group id (a number ≤ 0 when the executor has no real group, as in the simulation). */
  readonly pgid: number;
  /**
   * Resolves once the script's process exited, everything left in its group
   * was killed and its output ended (no `onOutput` call follows).
   */
  readonly exited: Promise<ScriptExit>;
  /** Graceful stop: SIGTERM, then SIGKILL after `graceMs` (ms) unless it exited. */
  stop(graceMs: number): void;
  /** Kills the whole tree at once (SIGKILL) and stops reading its output. */
  kill(): void;
  /** Backpressure from the log upload: stop / go on reading the output. */
  pauseOutput(): void;
  resumeOutput(): void;
}

/** How to start a script (spec fields beyond the script itself). */
export interface RunOptions {
  /** Spec `shell`: `sh` (default), `bash`, or an interpreter's absolute path (see shell-command.ts). */
  shell?: string | undefined;
  /** Spec `limits`: lower the worker's limits for this build (never raise them; issue 8). */
  limits?: BuildLimits | undefined;
  /** Spec `network`: the build asks for the network (granted only where the worker allows it). */
  network?: boolean | undefined;
}

/** Where a build's secret files go (spec secrets `as: "file"`), on this machine and as the script sees it. */
export interface SecretFilesLocation {
  /** Directory the worker writes (created mode 0700, removed after the build). */
  host: string;
  /** The same directory as the script sees it (a sandbox binds it elsewhere). */
  build: string;
}

/** A file to upload as an artifact (its name is workspace-relative, `/`-separated). */
export interface ArtifactFile {
  name: string;
  path: string;
  size: number;
}

export interface CollectedArtifacts {
  files: ArtifactFile[];
  /** Lines for the build log (a pattern that matched nothing, a file skipped and why). */
  notes: string[];
}

export interface Executor {
  /** Reported to the controller and shown to users. */
  readonly kind: ExecutorKind;
  /**
   * Creates a fresh, empty workspace for the attempt and unpacks `sourceFile`
   * (a `.tar.gz`, maybe empty) into it. Throws UnsafeArchiveError for an
   * archive entry that would land outside, or the file system's error.
   */
  prepare(build: { id: string; attempt: number }, sourceFile: string): Promise<Workspace>;
  /**
   * Starts `script` with `opts.shell` (default `sh -c`; `scriptArgs` of
   * shell-command.ts) in the workspace with `env` (the build's variables,
   * secrets included; the executor decides what else the environment holds).
   */
  run(ws: Workspace, script: string, env: Readonly<Record<string, string>>, onOutput: (chunk: Buffer) => void, opts?: RunOptions): Promise<RunningScript>;
  /**
   * Where this attempt's secret files go, outside the workspace (so neither
   * artifacts nor caches can pick them up). The build run writes and removes
   * them; an executor that hides the host must make `host` visible at
   * `build` to the script (read-only).
   */
  secretFiles(ws: Workspace): SecretFilesLocation;
  /**
   * Optional: the worker itself wrote into the workspace after `prepare`
   * (caches restored, as the worker's user): an executor that runs builds as
   * another user gives what is there to that user, as it did with the source.
   */
  workspaceChanged?(ws: Workspace): Promise<void>;
  /** The regular files inside the workspace that match `patterns` (globs). */
  collectArtifacts(ws: Workspace, patterns: readonly string[]): Promise<CollectedArtifacts>;
  /** Removes the workspace. Never throws. */
  cleanup(ws: Workspace): Promise<void>;
  /**
   * At worker start: kills what a previous run of this worker left running
   * and removes its workspaces. Returns the killed process group ids.
   */
  cleanupLeftovers(): Promise<number[]>;
  /**
   * Optional: at a stop, once no build runs any more: gives back what the
   * executor made on the host for all its builds (the worker's cgroup
   * directories). Never throws.
   */
  close?(): Promise<void>;
}
