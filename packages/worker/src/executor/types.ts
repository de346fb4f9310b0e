/**
 * The executor: where and how a build's script runs (issue 8: prepare the
 * workspace → run → collect artifacts → clean up). The build run
 * (`build-run.ts`) talks to the controller and decides outcomes; an executor
 * only touches this machine. `shell` (`shell.ts`) runs the script as a
 * process group of the worker's user; other executors (a sandbox) implement
 * the same interface.
 */

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
}

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
  /** Reported to the controller and shown to users, e.g. `shell`. */
  readonly kind: string;
  /**
   * Creates a fresh, empty workspace for the attempt and unpacks `sourceFile`
   * (a `.tar.gz`, maybe empty) into it. Throws UnsafeArchiveError for an
   * archive entry that would land outside, or the file system's error.
   */
  prepare(build: { id: string; attempt: number }, sourceFile: string): Promise<Workspace>;
  /**
   * Starts `script` (`sh -c`) in the workspace with `env` (the build's
   * variables; the executor decides what else the environment holds).
   */
  run(ws: Workspace, script: string, env: Readonly<Record<string, string>>, onOutput: (chunk: Buffer) => void): Promise<RunningScript>;
  /** The regular files inside the workspace that match `patterns` (globs). */
  collectArtifacts(ws: Workspace, patterns: readonly string[]): Promise<CollectedArtifacts>;
  /** Removes the workspace. Never throws. */
  cleanup(ws: Workspace): Promise<void>;
  /**
   * At worker start: kills what a previous run of this worker left running
   * and removes its workspaces. Returns the killed process group ids.
   */
  cleanupLeftovers(): Promise<number[]>;
}
