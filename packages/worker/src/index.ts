/** @buildfleet/worker: the build worker (agent, session, client, executor). */
export { startWorker, installSignalHandlers, type RunningWorker, type StartWorkerOptions } from './agent.js';
export { loadWorkerConfig, ConfigError, WORKER_VERSION, type WorkerConfig, type WorkerConfigOverrides } from './config.js';
export { ControllerClient, TransportError, parseRetryAfter, type Transport, type TransportErrorKind } from './http.js';
export { isRetryable, withRetry, backoffDelay, type RetryOptions } from './retry.js';
export { IdentityStore, type Identity } from './identity.js';
export { Session, SessionFatalError, REFRESH_FRACTION, type RegisteredEvent } from './session.js';
export { Executor, BuildRun, sha256File, type BuildResult, type StopReason } from './executor.js';
export { LogStreamer, type LogChunk } from './logs.js';
export { UnsafeArchiveError, checkArchive, unpackSource } from './source.js';
export { defaultLogger, silentLogger, type Logger } from './logger.js';
export { systemRunner, type ScriptRunner, type SpawnedBuild } from './process.js';
