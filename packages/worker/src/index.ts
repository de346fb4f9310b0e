/** @buildfleet/worker: the build worker (agent, session, typed controller client, executor). */
export { startWorker, type RunningWorker, type StartWorkerOptions } from './agent.js';
export { installSignalHandlers, onStopSignals, DUPLICATE_WINDOW_MS } from './signals.js';
export { loadWorkerConfig, forgetTokenEnvironment, ConfigError, WORKER_VERSION, EXECUTOR_MODES, type ExecutorMode, type WorkerConfig, type WorkerConfigOverrides } from './config.js';
export { Connection, TransportError, type Transport, type TransportErrorKind } from './client/connection.js';
export {
  BUDGETS,
  type ControllerClient,
  type ArtifactUpload,
  type BuildRef,
  type CallOptions,
  type LogChunkUpload,
  type PollAnswer,
  type WorkerCredentials,
} from './client/controller-client.js';
export { HttpControllerClient, createHttpClient, type HttpClientOptions } from './client/http-controller-client.js';
export { isRetryable, withRetry, backoffDelay, describeError, RetryBudgetExhausted, type Backoff, type RetryBudget, type RetryContext } from './client/retry.js';
export { IdentityStore, IdentityLock, IdentityLockedError, IdentityPermissionError, IdentityCorruptError, type Identity } from './identity.js';
export { Session, SessionFatalError, REFRESH_FRACTION, type RegisteredEvent } from './session.js';
export { ActiveBuilds } from './active-builds.js';
export { BuildRun, type BuildResult, type BuildPhase, type StopReason } from './build-run.js';
export type { Executor, Workspace, RunningScript, ScriptExit, RunOptions, ArtifactFile, CollectedArtifacts } from './executor/types.js';
export { ContainedExecutor, type ContainedExecutorOptions, type SandboxSettings } from './executor/contained.js';
export { createExecutor, ExecutorUnavailableError, notIsolatedWarning } from './executor/select.js';
export { BuildUserError } from './sandbox/users.js';
export { ShellExecutor, type ShellExecutorOptions } from './executor/shell.js';
export { findArtifacts, sha256File } from './executor/artifacts.js';
export { LogStreamer, type LogChunk } from './logs.js';
export type { LoopStatus, LoopState } from './loop.js';
export { ArchiveTooLargeError, DEFAULT_SOURCE_LIMITS, UnsafeArchiveError, checkArchive, unpackSource, type SourceLimits } from './source.js';
export { defaultLogger, silentLogger, type Logger } from './logger.js';
export { systemRunner, type ScriptRunner, type SpawnedBuild } from './process.js';
