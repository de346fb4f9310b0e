/**
 * Commands that run services: `up` (controller and one worker in this
 * process, then the bundled example), `controller` and `worker`.
 *
 * Signals (SIGINT = Ctrl-C, SIGTERM): the first one drains (the worker takes
 * no new builds and lets running ones finish, then the controller closes);
 * the second one stops running builds (the worker reports them canceled);
 * a third one exits at once. Copies of one signal that arrive within a
 * moment (npm forwarding the terminal's Ctrl-C) count once.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join, resolve } from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import { DEFAULTS, ENV, systemClock } from '@buildfleet/protocol';
import { ApiClient } from './client.js';
import { CliError, EXIT } from './errors.js';
import { followBuild } from './follow.js';
import { outcome } from './format.js';
import { readCredentials } from './settings.js';
import { lockControllerDataDir, lockWorkerDataDir } from './data-dir-lock.js';
import { StdinPipe } from './parent-pipe.js';
import { formatBytes, loadSpec, submitDirectory } from './submit.js';
import {
  loadControllerModule,
  loadWorkerModule,
  type ControllerConfig,
  type RunningController,
  type BuildResult,
  type RunningWorker,
  type WorkerConfigOverrides,
  type WorkerModule,
} from './services.js';

/** examples/hello-c of this checkout (src/ and dist/ sit at the same depth). */
export const EXAMPLE_DIR = fileURLToPath(new URL('../../../examples/hello-c', import.meta.url));

const say = (line = '') => process.stderr.write(`${line}\n`);

function port(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError('port must be an integer from 0 to 65535');
  return n;
}
function positive(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('must be a positive integer');
  return n;
}

interface ServiceFlags {
  host?: string;
  port?: number;
  dataDir?: string;
  databaseUrl?: string;
  controllerUrl?: string;
  labels?: string;
  concurrency?: number;
  name?: string;
  enrollmentToken?: string;
  example?: boolean;
  once?: boolean;
  idleTimeout?: number;
  tlsCert?: string;
  tlsKey?: string;
  executor?: string;
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

function controllerOverrides(o: ServiceFlags, extra: Partial<ControllerConfig> = {}): Partial<ControllerConfig> {
  const r: Partial<Mutable<ControllerConfig>> = { ...extra };
  if (o.host !== undefined) r.host = o.host;
  if (o.port !== undefined) r.port = o.port;
  if (o.dataDir !== undefined) r.dataDir = o.dataDir;
  if (o.databaseUrl !== undefined) r.databaseUrl = o.databaseUrl;
  if (o.tlsCert !== undefined) r.tlsCertFile = resolve(o.tlsCert);
  if (o.tlsKey !== undefined) r.tlsKeyFile = resolve(o.tlsKey);
  return r;
}

function workerOverrides(o: ServiceFlags, extra: WorkerConfigOverrides = {}): WorkerConfigOverrides {
  const r: Mutable<WorkerConfigOverrides> = { ...extra };
  if (o.controllerUrl !== undefined) r.controllerUrls = o.controllerUrl;
  if (o.labels !== undefined) r.labels = o.labels;
  if (o.concurrency !== undefined) r.maxConcurrentBuilds = o.concurrency;
  if (o.dataDir !== undefined) r.dataDir = o.dataDir;
  if (o.name !== undefined) r.name = o.name;
  if (o.enrollmentToken !== undefined) r.enrollmentToken = o.enrollmentToken;
  if (o.once) r.once = true;
  if (o.idleTimeout !== undefined) r.idleTimeoutMs = o.idleTimeout * 1000;
  if (o.executor !== undefined) r.executor = o.executor;
  return r;
}

/**
 * The worker's one line per build, on stdout (for people and for an
 * autoscaler's log): id, attempt, outcome or why it was dropped, exit code,
 * duration, and the spec's name when it has one.
 */
export function buildSummaryLine(r: BuildResult): string {
  const took = `${(r.durationMs / 1000).toFixed(1)}s`;
  const name = r.name ? ` ${JSON.stringify(r.name)}` : '';
  if (!r.reported) return `build ${r.buildId} attempt ${r.attempt}: dropped (${r.dropReason ?? 'unknown'}) after ${took}${name}`;
  const exit = r.exitCode === null ? '' : ` (exit ${r.exitCode})`;
  return `build ${r.buildId} attempt ${r.attempt}: ${r.outcome}${exit} in ${took}${name}${r.message && r.outcome !== 'succeeded' ? `: ${r.message}` : ''}`;
}

/**
 * Stops the worker on signals: the first drains, the second stops running
 * builds, a third exits at once (130). One Ctrl-C that reaches this process
 * twice (npm forwards the terminal's SIGINT) counts once: the worker
 * package's `onStopSignals`. Resolves when the worker is done.
 */
async function runWorkerUntilStopped(worker: RunningWorker, label: string, onStopSignals: WorkerModule['onStopSignals']): Promise<void> {
  let stopping: Promise<void> | undefined;
  const summary = (r: BuildResult) => process.stdout.write(`${buildSummaryLine(r)}\n`);
  worker.events.on('build:finish', summary);
  worker.events.on('build:dropped', summary);
  worker.events.on('idle-timeout', () => say(`${label}: idle timeout reached; leaving`));
  worker.events.on('deregistered', () => say(`${label} deregistered`));
  const remove = onStopSignals((n, signal) => {
    if (n >= 3) {
      say(`${signal} again: exiting now`);
      process.exit(130);
    }
    if (n === 1) {
      say(`${signal}: ${label} draining: no new builds; running builds finish (${signal} again cancels them)`);
      stopping = worker.stop({ drain: true });
    } else {
      say(`${signal}: canceling running builds`);
      stopping = worker.stop({ drain: false });
    }
    stopping.catch((e: unknown) => say(`stopping the worker failed: ${(e as Error).message}`));
  });
  try {
    await worker.done;
    await stopping;
  } finally {
    remove();
  }
}

function dataDirOf(o: ServiceFlags): string {
  return resolve(o.dataDir ?? process.env[ENV.dataDir] ?? DEFAULTS.dataDir);
}

/** Prints where things are after a controller starts; the tokens only when they were just generated. */
function printControllerBanner(controller: RunningController, dataDir: string, bind: string | undefined): void {
  say('');
  say(`buildfleet controller listening on ${controller.url}`);
  say(`  dashboard:  ${controller.url}/`);
  say(`  API:        ${controller.url}/api/v1  (OpenAPI: ${controller.url}/openapi.json)`);
  const credFile = controller.firstStart?.credentialsFile ?? join(dataDir, 'credentials.json');
  if (controller.firstStart) {
    say('');
    say('First start: credentials were generated and saved (mode 0600) in');
    say(`  ${credFile}`);
    say(`  API token:         ${controller.firstStart.apiToken}`);
    say(`  enrollment token:  ${controller.firstStart.enrollmentToken}`);
    say('The CLI reads that file when BUILDFLEET_API_TOKEN is unset.');
  } else if (existsSync(credFile)) {
    say(`  credentials: ${credFile}`);
  } else {
    // Another controller on the same database generated the tokens; they live there, not in this data directory.
    say('  credentials: shared through the database; the controller that started first saved them in its');
    say('  credentials.json. New enrollment tokens: the dashboard\'s Tokens page or POST /api/v1/enrollment-tokens.');
  }
  say('');
  say('Add a worker on another machine (start this controller with BUILDFLEET_HOST=0.0.0.0 so it is reachable):');
  const host = bind && bind !== '127.0.0.1' && bind !== 'localhost' ? controller.url : controller.url.replace('127.0.0.1', '<this-host>');
  const token =
    controller.firstStart?.enrollmentToken ??
    (existsSync(credFile) ? `<enrollmentToken in ${credFile}>` : `<an enrollment token: ${controller.url}/tokens>`);
  say(`  BUILDFLEET_CONTROLLER_URL=${host} BUILDFLEET_ENROLLMENT_TOKEN=${token} BUILDFLEET_DATA_DIR=<a directory of its own> node packages/cli/bin/buildfleet.js worker`);
  say('  (every worker keeps its identity in its data directory: two workers must never share one)');
  say('');
}

/** Starts the controller; on SQLite it holds its data directory's lock until closed (see data-dir-lock.ts). */
async function startLocalController(o: ServiceFlags, extra: Partial<ControllerConfig>): Promise<RunningController> {
  const mod = await loadControllerModule();
  const config = mod.loadControllerConfig(process.env, controllerOverrides(o, extra));
  const lock = config.databaseUrl === undefined ? await lockControllerDataDir(await loadWorkerModule(), config.dataDir) : undefined;
  try {
    const controller = await mod.startController(config);
    if (!lock) return controller;
    const close = controller.close.bind(controller);
    return Object.assign(controller, { close: () => close().finally(() => lock.release()) });
  } catch (err) {
    await lock?.release();
    throw startupError(err, config);
  }
}

/** Startup failures a user can fix, as one line; anything else unchanged. */
function startupError(err: unknown, config: { host: string; port: number }): unknown {
  const code = (err as { code?: unknown }).code;
  if (code === 'EADDRINUSE')
    return new CliError(`${config.host}:${config.port} is already in use: is buildfleet already running? (set BUILDFLEET_PORT or --port)`);
  if (code === 'EACCES') return new CliError(`not allowed to listen on ${config.host}:${config.port} (${(err as Error).message})`);
  if (code === 'ECONNREFUSED' || code === 'ENOTFOUND' || code === '28P01' || code === '3D000')
    return new CliError(`cannot open the database: ${(err as Error).message} (check DATABASE_URL)`);
  return err;
}

/** Submits the bundled example through the public API and follows it to the end. */
async function runExample(controller: RunningController, apiToken: string | undefined, signal: AbortSignal): Promise<void> {
  if (!apiToken) {
    say('No API token known to this process (set BUILDFLEET_API_TOKEN); not submitting the example.');
    return;
  }
  const client = new ApiClient({ controllerUrl: controller.url, apiToken, tokenSource: 'the controller', caFile: process.env[ENV.caFile] });
  const spec = await loadSpec(EXAMPLE_DIR, {});
  say(`Submitting the bundled example (${EXAMPLE_DIR}): ${spec.script}`);
  const build = await submitDirectory(client, EXAMPLE_DIR, spec, {
    onPacked: (files, bytes) => say(`  packed ${files} files (${formatBytes(bytes)})`),
  });
  say(`  build ${build.id} ${build.state}; its log follows`);
  say('  ──────────────────────────────────────────────');
  const final = await followBuild(client, build.id, (c) => process.stdout.write(c), {
    clock: systemClock,
    signal,
    onAttempt: (a) => say(`  --- attempt ${a} ---`),
  });
  say('  ──────────────────────────────────────────────');
  say(`  build ${final.id} ${outcome(final)}`);
  say('');
  say('Look at it with:');
  say(`  npm run buildfleet -- status ${final.id}`);
  say(`  npm run buildfleet -- logs ${final.id}`);
  say(`  npm run buildfleet -- download ${final.id} --out ./out     (artifacts, SHA-256 checked)`);
  say(`  ${controller.url}/            (dashboard)`);
  say('Submit your own project: npm run buildfleet -- submit path/to/project --script "make test" --follow');
}

/** Starts the worker; a host that cannot run the executor asked for is a CliError saying how to fix it. */
async function startWorkerOrExplain(mod: WorkerModule, config: Parameters<WorkerModule['startWorker']>[0]): Promise<RunningWorker> {
  try {
    return await mod.startWorker(config);
  } catch (err) {
    if (err instanceof mod.ExecutorUnavailableError || err instanceof mod.BuildUserError || err instanceof mod.ConfigError) {
      throw new CliError(err.message);
    }
    throw err;
  }
}

/** The local worker of `up`, in a process of its own. */
interface LocalWorker {
  pid: number | undefined;
  /** Exit code (null when a signal ended it). */
  exited: Promise<number | null>;
  kill(signal: NodeJS.Signals): void;
}

/**
 * Starts `buildfleet worker` as a child process (the same CLI entry point,
 * the same Node flags), so a build never has the controller as its parent
 * process nor shares its memory. The enrollment token goes through a pipe
 * (`--enrollment-token-stdin`), never through an environment the build could
 * read in /proc; the child's environment carries no token at all.
 */
function startLocalWorker(o: ServiceFlags, controllerUrl: string, dataDir: string, enrollmentToken: string | undefined): LocalWorker {
  const env: NodeJS.ProcessEnv = { ...process.env, [ENV.controllerUrl]: controllerUrl, [ENV.dataDir]: dataDir };
  for (const k of [ENV.apiToken, ENV.enrollmentToken, ENV.databaseUrl]) delete env[k];
  // The worker hides the controller's TLS files from sandboxed builds (WorkerConfig.sandboxHide): it must know them.
  if (o.tlsCert !== undefined) env[ENV.tlsCert] = resolve(o.tlsCert);
  if (o.tlsKey !== undefined) env[ENV.tlsKey] = resolve(o.tlsKey);
  // The child stops when this pipe ends: if this process dies, even by SIGKILL, no orphan worker stays.
  const args = [...process.execArgv, process.argv[1]!, 'worker', '--stop-with-stdin'];
  if (o.labels !== undefined) args.push('--labels', o.labels);
  if (o.concurrency !== undefined) args.push('--concurrency', String(o.concurrency));
  if (o.executor !== undefined) args.push('--executor', o.executor);
  if (enrollmentToken) args.push('--enrollment-token-stdin');
  const child = spawn(process.execPath, args, { env, stdio: ['pipe', 'inherit', 'inherit'] });
  child.stdin?.on('error', () => undefined);
  // Written, never ended: the pipe stays open for as long as this process lives.
  if (enrollmentToken) child.stdin?.write(`${enrollmentToken}\n`);
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => {
      child.stdin?.destroy();
      resolve(code);
    });
    child.once('error', () => resolve(127));
  });
  return {
    pid: child.pid,
    exited,
    kill: (signal) => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
  };
}

/**
 * The process that started this worker (`up`, whose controller runs in that
 * same process) is gone: stop at once rather than drain. With the controller
 * gone no result can be reported, so letting builds run on would only hold
 * the machine; the controller's next start expires their leases and retries
 * them as its policy says.
 */
function stopWhenPipeEnds(worker: RunningWorker, pipe: StdinPipe): void {
  let stopped = false;
  void worker.done.finally(() => (stopped = true)).catch(() => undefined);
  void pipe.ended.then(() => {
    if (stopped) return;
    say('standard input ended (the process that started this worker is gone): stopping, running builds are canceled');
    worker.stop({ drain: false }).catch((e: unknown) => say(`stopping the worker failed: ${(e as Error).message}`));
  });
}

function leaveBeforeStart(): void {
  say('standard input ended (the process that started this worker is gone) before the worker started: exiting');
  process.exit(EXIT.succeeded);
}

/** Reads the enrollment token from standard input (`--enrollment-token-stdin`): its first line. */
async function readTokenFromStdin(pipe: StdinPipe): Promise<string> {
  const token = await pipe.firstLine;
  if (!token) throw new CliError('--enrollment-token-stdin: nothing was read from standard input');
  return token;
}

export function addServiceCommands(program: Command): void {
  program
    .command('up')
    .description('run a controller and one local worker in this process; on first start, build the bundled example')
    .option('--host <host>', 'listen address (env BUILDFLEET_HOST, default 127.0.0.1)')
    .option('--port <port>', 'listen port (env BUILDFLEET_PORT, default 7700)', port)
    .option('--data-dir <dir>', 'data directory (env BUILDFLEET_DATA_DIR, default ./.buildfleet)')
    .option('--database-url <url>', 'postgres://… (env DATABASE_URL; default SQLite in the data dir)')
    .option('--tls-cert <file>', 'serve HTTPS with this PEM certificate chain (env BUILDFLEET_TLS_CERT; needs --tls-key)')
    .option('--tls-key <file>', 'the PEM private key of --tls-cert (env BUILDFLEET_TLS_KEY)')
    .option('--labels <list>', "the local worker's labels, comma-separated (env BUILDFLEET_LABELS)")
    .option('--concurrency <n>', 'builds the local worker runs at once (env BUILDFLEET_CONCURRENCY)', positive)
    .option('--example', 'submit the bundled example even when this is not the first start')
    .option('--executor <kind>', "the local worker's executor: auto, sandbox or shell (env BUILDFLEET_EXECUTOR, default auto)")
    .action(async (o: ServiceFlags) => {
      const dataDir = dataDirOf(o);
      // Request logs of both services would drown the example's output.
      const quiet = process.env[ENV.logLevel] === undefined;
      if (quiet) process.env[ENV.logLevel] = 'warn';
      // A worker already running on this data directory: refused before a controller starts.
      let workerLock: Awaited<ReturnType<typeof lockWorkerDataDir>> | undefined = await lockWorkerDataDir(await loadWorkerModule(), dataDir);
      let controller: RunningController;
      try {
        controller = await startLocalController(o, quiet ? { logLevel: 'warn' } : {});
      } catch (err) {
        await workerLock.release();
        throw err;
      }
      let worker: LocalWorker | undefined;
      try {
        printControllerBanner(controller, dataDir, o.host ?? process.env[ENV.host]);
        const creds = readCredentials(join(dataDir, 'credentials.json'));
        const enrollmentToken =
          process.env[ENV.enrollmentToken] || controller.firstStart?.enrollmentToken || creds?.enrollmentToken || undefined;
        const wmod = await loadWorkerModule();
        await workerLock.release();
        workerLock = undefined;
        worker = startLocalWorker(o, controller.url, dataDir, enrollmentToken);
        say(`Local worker started in a process of its own (pid ${worker.pid}); add more with "buildfleet worker", each with its own BUILDFLEET_DATA_DIR.`);
        const apiToken = process.env[ENV.apiToken] || controller.firstStart?.apiToken || creds?.apiToken;

        const exampleAbort = new AbortController();
        let stopping = false;
        // Signals go on to the worker (a terminal's Ctrl-C reaches it too: copies within a moment count once there).
        const removeSignals = wmod.onStopSignals((n, signal) => {
          exampleAbort.abort(new CliError('stopped following the example'));
          stopping = true;
          if (n >= 3) {
            say(`${signal} again: exiting now`);
            worker?.kill('SIGKILL');
            process.exit(130);
          }
          if (n === 1) say(`${signal}: local worker draining: no new builds; running builds finish (${signal} again cancels them)`);
          else say(`${signal}: canceling running builds`);
          worker?.kill(signal);
        });
        try {
          if (controller.firstStart || o.example) {
            try {
              await runExample(controller, apiToken, exampleAbort.signal);
            } catch (e) {
              if (!exampleAbort.signal.aborted) say(`The example could not run: ${(e as Error).message}`);
            }
          }
          if (!exampleAbort.signal.aborted) say(`\nbuildfleet is running at ${controller.url} — Ctrl-C to stop (drains the worker first).`);
          const code = await worker.exited;
          if (!stopping) {
            // A fatal worker error (its identity taken, its executor refused) must not take the controller down.
            say(`The local worker stopped (exit code ${code ?? 'by signal'}); its messages are above.`);
            say(`The controller keeps running at ${controller.url}; Ctrl-C to stop it.`);
            await new Promise<void>((resolve) => {
              process.once('SIGINT', () => resolve());
              process.once('SIGTERM', () => resolve());
            });
          }
        } finally {
          removeSignals();
        }
        worker = undefined;
      } finally {
        await workerLock?.release();
        if (worker) {
          worker.kill('SIGTERM');
          worker.kill('SIGTERM');
          await worker.exited;
        }
        say('closing the controller');
        await controller.close();
      }
    });

  program
    .command('controller')
    .description('run only the controller (HTTP API, dashboard, scheduler)')
    .option('--host <host>', 'listen address (env BUILDFLEET_HOST, default 127.0.0.1)')
    .option('--port <port>', 'listen port (env BUILDFLEET_PORT, default 7700; 0 picks a free one)', port)
    .option('--data-dir <dir>', 'data directory (env BUILDFLEET_DATA_DIR, default ./.buildfleet)')
    .option('--database-url <url>', 'postgres://… (env DATABASE_URL; default SQLite in the data dir)')
    .option('--tls-cert <file>', 'serve HTTPS with this PEM certificate chain (env BUILDFLEET_TLS_CERT; needs --tls-key; SIGHUP reloads both)')
    .option('--tls-key <file>', 'the PEM private key of --tls-cert (env BUILDFLEET_TLS_KEY)')
    .action(async (o: ServiceFlags) => {
      const controller = await startLocalController(o, {});
      // A renewed certificate (certbot, a private CA) without a restart.
      const reload = () =>
        void controller.reloadTls().then(
          () => say('SIGHUP: TLS certificate reloaded'),
          (e: unknown) => say(`SIGHUP: keeping the old TLS certificate: ${(e as Error).message}`),
        );
      process.on('SIGHUP', reload);
      printControllerBanner(controller, dataDirOf(o), o.host ?? process.env[ENV.host]);
      // Machine-readable line for scripts and tests that start it with port 0.
      process.stdout.write(`listening ${controller.url}\n`);
      await new Promise<void>((resolveStop) => {
        const on = (signal: NodeJS.Signals) => {
          process.off('SIGINT', on);
          process.off('SIGTERM', on);
          say(`${signal}: closing the controller`);
          resolveStop();
        };
        process.on('SIGINT', on);
        process.on('SIGTERM', on);
      });
      process.off('SIGHUP', reload);
      await controller.close();
    });

  program
    .command('worker')
    .description('run only a worker; SIGTERM drains it, a second SIGTERM cancels its running builds')
    .option('--controller-url <urls>', 'controller URL(s), comma-separated (env BUILDFLEET_CONTROLLER_URL)')
    .option('--enrollment-token <token>', 'bfe_ token to register with (env BUILDFLEET_ENROLLMENT_TOKEN)')
    .option('--labels <list>', 'labels, comma-separated (env BUILDFLEET_LABELS)')
    .option('--concurrency <n>', 'builds run at once (env BUILDFLEET_CONCURRENCY, default 1)', positive)
    .option('--data-dir <dir>', 'identity and workspaces (env BUILDFLEET_DATA_DIR, default ./.buildfleet)')
    .option('--name <name>', 'worker name (env BUILDFLEET_WORKER_NAME; default: the host name and 4 hex digits of the data directory)')
    .option('--once', 'take one build, report it, deregister and exit 0 (for autoscalers)')
    .option('--idle-timeout <seconds>', 'deregister and exit 0 after this many seconds without a build', positive)
    .option('--executor <kind>', 'auto, sandbox or shell (env BUILDFLEET_EXECUTOR, default auto: sandbox where bubblewrap works)')
    .option('--enrollment-token-stdin', 'read the enrollment token from the first line of standard input')
    .option('--stop-with-stdin', 'stop (canceling running builds) when standard input ends: how `up` ends its worker if it dies')
    .action(async (o: ServiceFlags & { enrollmentTokenStdin?: boolean; stopWithStdin?: boolean }) => {
      const mod = await loadWorkerModule();
      const pipe = o.enrollmentTokenStdin || o.stopWithStdin ? new StdinPipe(process.stdin) : undefined;
      try {
        if (o.enrollmentTokenStdin) o.enrollmentToken = await readTokenFromStdin(pipe!);
        if (!o.stopWithStdin) pipe?.release();
        const config = mod.loadWorkerConfig(process.env, workerOverrides(o));
        // Read once: no token stays in this process's environment for a build to find.
        mod.forgetTokenEnvironment();
        // Gone while still registering (its controller may have died with it): nothing runs yet, leave now.
        let started = false;
        if (o.stopWithStdin) void pipe!.ended.then(() => started || leaveBeforeStart());
        const worker = await startWorkerOrExplain(mod, config);
        started = true;
        say(`worker ${worker.workerId} started`);
        if (o.stopWithStdin) stopWhenPipeEnds(worker, pipe!);
        await runWorkerUntilStopped(worker, 'worker', mod.onStopSignals);
      } finally {
        pipe?.release();
      }
      say('worker stopped');
      process.exitCode = EXIT.succeeded;
    });
}
