/**
 * The controller and worker packages, loaded only by the commands that run
 * them, so client commands (`status`, `submit`, ...) start without loading
 * database drivers or the HTTP server.
 *
 * The shapes below are the ones those packages export from their index
 * (`startController`, `loadControllerConfig`, `startWorker`,
 * `loadWorkerConfig`); they are checked at runtime when loaded.
 */
import { CliError } from './errors.js';

// Held in variables so the type checker does not need the packages' built
// declarations; the runtime checks below stand in for it.
const CONTROLLER_PKG: string = '@buildfleet/controller';
const WORKER_PKG: string = '@buildfleet/worker';

/** What `startController` resolves with. */
export interface RunningController {
  /** Base URL, e.g. `http://127.0.0.1:7700` (the real port when 0 was asked for). */
  url: string;
  port: number;
  close(): Promise<void>;
  /** Present only when this start generated the credentials. */
  firstStart?: { apiToken: string; enrollmentToken: string; credentialsFile: string } | undefined;
}

/** What `startWorker` resolves with. */
export interface RunningWorker {
  workerId?: string | undefined;
  /** `drain: true` lets running builds finish; false stops them (reported canceled). */
  stop(opts?: { drain?: boolean }): Promise<void>;
  /** Resolves when the worker has stopped. */
  done: Promise<unknown>;
  events?: unknown;
}

export interface ControllerModule {
  loadControllerConfig(env: Record<string, string | undefined>, overrides?: Record<string, unknown>): unknown;
  startController(config: unknown, opts?: unknown): Promise<RunningController>;
}

export interface WorkerModule {
  loadWorkerConfig(env: Record<string, string | undefined>, overrides?: Record<string, unknown>): unknown;
  startWorker(config: unknown, opts?: unknown): Promise<RunningWorker>;
}

/** Loads @buildfleet/controller; CliError when this build of it cannot run a controller. */
export async function loadControllerModule(): Promise<ControllerModule> {
  const mod = (await import(CONTROLLER_PKG)) as unknown as Partial<ControllerModule>;
  if (typeof mod.startController !== 'function' || typeof mod.loadControllerConfig !== 'function')
    throw new CliError('this build of @buildfleet/controller does not export startController/loadControllerConfig');
  return mod as ControllerModule;
}

/** Loads @buildfleet/worker; CliError when this build of it cannot run a worker. */
export async function loadWorkerModule(): Promise<WorkerModule> {
  const mod = (await import(WORKER_PKG)) as unknown as Partial<WorkerModule>;
  if (typeof mod.startWorker !== 'function' || typeof mod.loadWorkerConfig !== 'function')
    throw new CliError('this build of @buildfleet/worker does not export startWorker/loadWorkerConfig');
  return mod as WorkerModule;
}
