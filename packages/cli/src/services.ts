/**
 * The controller and worker packages, loaded only by the commands that run
 * them (`up`, `controller`, `worker`, the benchmark), so client commands
 * (`status`, `submit`, ...) start without loading database drivers or the
 * HTTP server.
 */
export type { ControllerConfig, RunningController } from '@buildfleet/controller';
export type { BuildResult, RunningWorker, WorkerConfigOverrides } from '@buildfleet/worker';

export type ControllerModule = typeof import('@buildfleet/controller');
export type WorkerModule = typeof import('@buildfleet/worker');

/** Loads @buildfleet/controller (`startController`, `loadControllerConfig`). */
export function loadControllerModule(): Promise<ControllerModule> {
  return import('@buildfleet/controller');
}

/** Loads @buildfleet/worker (`startWorker`, `loadWorkerConfig`). */
export function loadWorkerModule(): Promise<WorkerModule> {
  return import('@buildfleet/worker');
}
