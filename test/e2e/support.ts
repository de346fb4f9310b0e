/**
 * End-to-end support: the controller, workers and the CLI run as real,
 * separate processes (`node --conditions=source --import tsx
 * packages/cli/src/main.ts …`), so these tests see exactly what a user sees.
 * Waiting is always a condition with a deadline, never a fixed sleep.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const MAIN = join(ROOT, 'packages/cli/src/main.ts');
const NODE_ARGS = ['--conditions=source', '--import', 'tsx', MAIN];

/** Fixed credentials with the protocol's prefixes (PROTOCOL.md "Credentials"). */
export const API_TOKEN = 'bfa_e2e_api_token_0123456789abcdef0123456789';
export const ENROLLMENT_TOKEN = 'bfe_e2e_enrollment_token_0123456789abcdef012';

/**
 * Environment for a child: the parent's, minus anything that would point it
 * at another controller or database, plus `extra`.
 */
export function childEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith('BUILDFLEET_') || k === 'DATABASE_URL') delete env[k];
  // vitest sets NODE_OPTIONS/VITEST variables that do not belong in a CLI process.
  delete env.NODE_OPTIONS;
  delete env.VITEST;
  delete env.VITEST_POOL_ID;
  delete env.VITEST_WORKER_ID;
  return { ...env, BUILDFLEET_LOG_LEVEL: 'warn', ...extra };
}

/** Resolves when `cond` returns a truthy value (which it returns); throws at the deadline naming `what`. */
export async function waitFor<T>(cond: () => T | Promise<T>, what: string, timeoutMs = 30_000, intervalMs = 50): Promise<NonNullable<T>> {
  const deadline = performance.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const v = await cond();
      if (v) return v as NonNullable<T>;
    } catch (e) {
      lastError = e;
    }
    if (performance.now() > deadline)
      throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}${lastError ? ` (last error: ${String(lastError)})` : ''}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** A long-running child (controller or worker) with its output collected. */
export interface Service {
  proc: ChildProcess;
  output(): string;
  exited: Promise<number | null>;
  /** SIGTERM, then SIGKILL if it has not exited within `graceMs`. Resolves with the exit code. */
  stop(graceMs?: number): Promise<number | null>;
}

export function startService(args: string[], env: NodeJS.ProcessEnv, cwd = ROOT): Service {
  const proc = spawn(process.execPath, [...NODE_ARGS, ...args], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  proc.stderr!.on('data', (c: Buffer) => (out += c.toString()));
  const exited = new Promise<number | null>((r) => proc.on('exit', (code) => r(code)));
  return {
    proc,
    output: () => out,
    exited,
    async stop(graceMs = 15_000) {
      if (proc.exitCode !== null || proc.signalCode !== null) return proc.exitCode;
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), graceMs);
      try {
        return await exited;
      } finally {
        clearTimeout(t);
      }
    },
  };
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs one `buildfleet` command to completion (killed after `timeoutMs`). */
export function runCli(args: string[], env: NodeJS.ProcessEnv, timeoutMs = 60_000): Promise<CliResult> {
  return new Promise((resolveRun, reject) => {
    const proc = spawn(process.execPath, [...NODE_ARGS, ...args], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    proc.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const t = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
    proc.on('error', reject);
    proc.on('close', (code) => {
      clearTimeout(t);
      resolveRun({ code, stdout, stderr });
    });
  });
}

/** A controller process on a free port (BUILDFLEET_PORT=0) with SQLite in a temp dir, ready (`/readyz` 200). */
export interface E2eFleet {
  url: string;
  dir: string;
  controller: Service;
  worker: Service;
  /** Env for CLI processes talking to this controller. */
  cliEnv: NodeJS.ProcessEnv;
  /** Authenticated JSON GET against the user API. */
  api<T>(path: string): Promise<T>;
  /** A build's log (current attempt) over HTTP: cheaper than a CLI process inside a wait loop. */
  log(id: string): Promise<string>;
  close(): Promise<void>;
}

export async function startFleet(opts: { workerEnv?: Record<string, string> } = {}): Promise<E2eFleet> {
  const dir = await mkdtemp(join(tmpdir(), 'bf-e2e-'));
  const controller = startService(
    ['controller'],
    childEnv({
      BUILDFLEET_HOST: '127.0.0.1',
      BUILDFLEET_PORT: '0',
      BUILDFLEET_DATA_DIR: join(dir, 'controller'),
      BUILDFLEET_API_TOKEN: API_TOKEN,
      BUILDFLEET_ENROLLMENT_TOKEN: ENROLLMENT_TOKEN,
      // Short intervals so cancellation (announced with heartbeats) arrives quickly.
      BUILDFLEET_HEARTBEAT_INTERVAL_MS: '300',
      BUILDFLEET_LEASE_MS: '10000',
    }),
  );
  let worker: Service | undefined;
  try {
    const url = await waitFor(
      () => {
        if (controller.proc.exitCode !== null) throw new Error(`controller exited ${controller.proc.exitCode}:\n${controller.output()}`);
        return /listening (http:\/\/\S+)/.exec(controller.output())?.[1];
      },
      'the controller to print its URL',
      30_000,
    );
    await waitFor(async () => (await fetch(`${url}/readyz`)).ok, `${url}/readyz`, 20_000);
    worker = startService(
      ['worker'],
      childEnv({
        BUILDFLEET_CONTROLLER_URL: url,
        BUILDFLEET_ENROLLMENT_TOKEN: ENROLLMENT_TOKEN,
        BUILDFLEET_DATA_DIR: join(dir, 'worker'),
        BUILDFLEET_CONCURRENCY: '2',
        ...opts.workerEnv,
      }),
    );
    const api = async <T>(path: string): Promise<T> => {
      const res = await fetch(url + path, { headers: { authorization: `Bearer ${API_TOKEN}` } });
      if (!res.ok) throw new Error(`GET ${path}: ${res.status} ${await res.text()}`);
      return (await res.json()) as T;
    };
    const log = async (id: string): Promise<string> => {
      const res = await fetch(`${url}/api/v1/builds/${encodeURIComponent(id)}/logs`, { headers: { authorization: `Bearer ${API_TOKEN}` } });
      if (!res.ok) throw new Error(`logs of ${id}: ${res.status} ${await res.text()}`);
      return res.text();
    };
    const w = worker;
    await waitFor(
      async () => {
        if (w.proc.exitCode !== null) throw new Error(`worker exited ${w.proc.exitCode}:\n${w.output()}`);
        return (await api<{ workers: unknown[] }>('/api/v1/workers')).workers.length > 0;
      },
      'the worker to register',
      30_000,
    );
    return {
      url,
      dir,
      controller,
      worker: w,
      cliEnv: childEnv({ BUILDFLEET_CONTROLLER_URL: url, BUILDFLEET_API_TOKEN: API_TOKEN }),
      api,
      log,
      async close() {
        await w.stop();
        await controller.stop();
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (e) {
    await worker?.stop();
    await controller.stop();
    await rm(dir, { recursive: true, force: true });
    throw e;
  }
}

