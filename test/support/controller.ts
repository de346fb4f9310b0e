/**
 * The one test fixture that starts a controller, for every suite (controller
 * HTTP tests, worker integration and credential tests, CLI tests, e2e and
 * cluster tests): in this process (`startController`, real HTTP on
 * 127.0.0.1 port 0) or as a child process (`buildfleet controller`), on
 * SQLite in a temp directory or on a fresh PostgreSQL database, with fixed
 * test tokens and a small user-API client (`UserApi`).
 *
 * Waiting is a condition with a deadline (`waitFor`), never a fixed sleep.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import type { FastifyBaseLogger } from 'fastify';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { loadControllerConfig, startController, type ControllerConfig, type ControllerConfigOverrides, type RunningController } from '@buildfleet/controller';
import { isTerminal, paths, type Build, type Clock, type RegisterResponse, type Worker } from '@buildfleet/protocol';
import { controllerFetch, type FetchLike } from '@buildfleet/protocol/node';
import type { WorkerLockDecorator } from '../../packages/controller/src/store/index.js';
import { createTestDatabase, type TestDatabase } from '../../packages/controller/test/support/pg.js';
import { waitFor } from '../../packages/controller/test/support/wait.js';
import { childEnv, startService, waitFor as waitForValue, type Service } from './process.js';

/** Test credentials with the protocol's prefixes (docs/protocol.md "Credentials"). */
export const API_TOKEN = 'bfa_test-api-token-0123456789abcdef';
export const ENROLLMENT_TOKEN = 'bfe_test-enrollment-token-0123456789';

/** A tiny gzip body: enough for a build whose script ignores its source. */
export const TINY_SOURCE = new Uint8Array([0x1f, 0x8b, 1, 2, 3]);

export interface TestControllerOptions {
  /** `postgres` creates a fresh database for this controller and drops it on close (default `sqlite`). */
  store?: 'sqlite' | 'postgres';
  /** Run `buildfleet controller` as a child process instead of in this process. */
  process?: boolean;
  /** Configuration overrides (in this process; a child process gets `env`). */
  config?: ControllerConfigOverrides;
  /** Environment with docs/protocol.md names (the child process's, or read by `loadControllerConfig`). */
  env?: Record<string, string>;
  /** In this process only: the controller's clock, barriers inside store transactions, a logger to read. */
  clock?: Clock;
  decorateWorkerLock?: WorkerLockDecorator;
  logger?: FastifyBaseLogger;
  /** Reuse a data directory / database / port (a controller restarted on the same state). */
  dataDir?: string;
  databaseUrl?: string;
  port?: number;
  /** A PEM CA the fixture's own requests trust (a controller serving HTTPS with a test certificate). */
  caFile?: string;
}

export interface TestController {
  url: string;
  dataDir: string;
  /** Set for `store: 'postgres'`. */
  databaseUrl: string | undefined;
  /** The controller and its configuration when it runs in this process. */
  ctl: RunningController | undefined;
  config: ControllerConfig | undefined;
  /** The child process when it runs as one. */
  service: Service | undefined;
  api: UserApi;
  /** Stops the controller and removes what the fixture created (not a `dataDir`/`databaseUrl` it was given). */
  close(): Promise<void>;
}

const FAST: ControllerConfigOverrides = { pollWaitMs: 2_000, pollRecheckMs: 200, logFollowRecheckMs: 200 };

/** Starts a controller (see TestControllerOptions); `close()` undoes everything. */
export async function startTestController(opts: TestControllerOptions = {}): Promise<TestController> {
  const cleanups: Array<() => Promise<unknown>> = [];
  const undo = async () => {
    for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
  };
  try {
    let dataDir = opts.dataDir;
    if (!dataDir) {
      const made = await mkdtemp(path.join(tmpdir(), 'bf-ctl-'));
      cleanups.push(() => rm(made, { recursive: true, force: true }));
      dataDir = made;
    }
    let databaseUrl = opts.databaseUrl;
    if (!databaseUrl && opts.store === 'postgres') {
      const db: TestDatabase = await createTestDatabase();
      cleanups.push(() => db.drop());
      databaseUrl = db.url;
    }
    let url: string;
    let ctl: RunningController | undefined;
    let config: ControllerConfig | undefined;
    let service: Service | undefined;
    if (opts.process) {
      const svc = startService(
        ['controller'],
        childEnv({
          BUILDFLEET_HOST: '127.0.0.1',
          BUILDFLEET_PORT: String(opts.port ?? 0),
          BUILDFLEET_DATA_DIR: dataDir,
          BUILDFLEET_API_TOKEN: API_TOKEN,
          BUILDFLEET_ENROLLMENT_TOKEN: ENROLLMENT_TOKEN,
          ...(databaseUrl ? { DATABASE_URL: databaseUrl } : {}),
          ...opts.env,
        }),
      );
      service = svc;
      cleanups.push(() => svc.stop());
      url = await waitForValue(
        () => {
          if (svc.proc.exitCode !== null) throw new Error(`controller exited ${svc.proc.exitCode}:\n${svc.output()}`);
          return /^listening (https?:\/\/\S+)/m.exec(svc.output())?.[1];
        },
        'the controller to print its URL',
        45_000,
      );
      const get = controllerFetch(opts.caFile);
      await waitForValue(async () => (await get(`${url}/readyz`)).ok, `${url}/readyz`, 20_000);
    } else {
      config = loadControllerConfig(opts.env ?? {}, {
        host: '127.0.0.1',
        port: opts.port ?? 0,
        dataDir,
        apiToken: API_TOKEN,
        enrollmentToken: ENROLLMENT_TOKEN,
        logLevel: 'silent',
        ...FAST,
        ...(databaseUrl ? { databaseUrl } : {}),
        ...opts.config,
      });
      const started = await startController(config, {
        ...(opts.clock ? { clock: opts.clock } : {}),
        ...(opts.decorateWorkerLock ? { decorateWorkerLock: opts.decorateWorkerLock } : {}),
        ...(opts.logger ? { logger: opts.logger } : {}),
      });
      ctl = started;
      cleanups.push(() => started.close());
      url = started.url;
    }
    return { url, dataDir, databaseUrl, ctl, config, service, api: new UserApi(url, controllerFetch(opts.caFile)), close: undo };
  } catch (err) {
    await undo();
    throw err;
  }
}

export interface RequestInitLite {
  /** Bearer token; default the test API token, `null` for none. */
  token?: string | null;
  json?: unknown;
  body?: RequestInit['body'];
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

/** The user side of docs/protocol.md ("Builds", admin calls) against one controller, with the test API token. */
export class UserApi {
  /** `fetcher`: how requests are sent (default the global fetch; one trusting a test CA for HTTPS). */
  constructor(
    readonly url: string,
    private readonly fetcher: FetchLike = (u, i) => fetch(u, i),
  ) {}

  /** One request; the raw Response. */
  req(method: string, p: string, init: RequestInitLite = {}): Promise<Response> {
    const headers: Record<string, string> = { ...init.headers };
    const token = init.token === undefined ? API_TOKEN : init.token;
    if (token) headers.authorization = `Bearer ${token}`;
    let body = init.body;
    if (init.json !== undefined) {
      headers['content-type'] ??= 'application/json';
      body = JSON.stringify(init.json);
    }
    return this.fetcher(this.url + p, { method, headers, body, signal: init.signal, ...(body ? { duplex: 'half' } : {}) } as RequestInit);
  }

  /** A request that must answer 2xx; its JSON (or text) body. */
  async ok<T>(method: string, p: string, init: RequestInitLite = {}): Promise<T> {
    const res = await this.req(method, p, init);
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${text.slice(0, 500)}`);
    return ((res.headers.get('content-type') ?? '').includes('json') && text ? JSON.parse(text) : text) as T;
  }

  /** `POST /builds` (multipart: the spec part first, then the source). */
  submitRaw(spec: unknown, source: Uint8Array = TINY_SOURCE): Promise<Response> {
    const form = new FormData();
    form.append('spec', typeof spec === 'string' ? spec : JSON.stringify(spec));
    form.append('source', new Blob([source.slice()]), 'source.tar.gz');
    return this.req('POST', paths.builds(), { body: form });
  }

  async submit(spec: Record<string, unknown> = { script: 'echo hi' }, source?: Uint8Array): Promise<Build> {
    const res = await this.submitRaw(spec, source);
    const body = (await res.json()) as { build: Build };
    if (res.status !== 201) throw new Error(`submit answered ${res.status}: ${JSON.stringify(body)}`);
    return body.build;
  }

  async build(id: string): Promise<Build> {
    return (await this.ok<{ build: Build }>('GET', paths.build(id))).build;
  }

  async worker(id: string): Promise<Worker> {
    return (await this.ok<{ worker: Worker }>('GET', paths.worker(id))).worker;
  }

  async workers(): Promise<Worker[]> {
    return (await this.ok<{ workers: Worker[] }>('GET', paths.workers())).workers;
  }

  /** Log text of one attempt (default: the current one) from byte 0. */
  log(id: string, attempt?: number): Promise<string> {
    return this.ok<string>('GET', `${paths.logs(id)}?offset=0${attempt ? `&attempt=${attempt}` : ''}`);
  }

  /** The log without the worker's own `[buildfleet] …` lines: what the script wrote. */
  async scriptLog(id: string, attempt?: number): Promise<string> {
    return (await this.log(id, attempt))
      .split(/(?<=\n)/)
      .filter((l) => !l.startsWith('[buildfleet] '))
      .join('');
  }

  /** Waits until the build is terminal and returns it. */
  async finished(id: string, timeoutMs = 20_000): Promise<Build> {
    let b: Build | undefined;
    await waitFor(
      async () => {
        b = await this.build(id);
        return isTerminal(b.state);
      },
      { what: `build ${id} to finish`, timeoutMs, intervalMs: 25 },
    );
    return b!;
  }

  /** A raw worker registration (default: a new worker with the enrollment token). */
  register(body: Record<string, unknown> = {}, token: string | null = ENROLLMENT_TOKEN): Promise<Response> {
    return this.req('POST', paths.register(), {
      token,
      json: { name: 'w', labels: [], maxConcurrentBuilds: 2, version: 'test', bootId: crypto.randomUUID(), activeBuildCount: 0, ...body },
    });
  }

  async registerOk(body: Record<string, unknown> = {}, token: string | null = ENROLLMENT_TOKEN): Promise<RegisterResponse> {
    const res = await this.register(body, token);
    const json = (await res.json()) as RegisterResponse;
    if (res.status !== 200 && res.status !== 201) throw new Error(`register answered ${res.status}: ${JSON.stringify(json)}`);
    return json;
  }
}

/** The error code of a protocol error answer (asserts the shape). */
export async function errorCode(res: Response): Promise<string> {
  const text = await res.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new Error(`status ${res.status}: not a JSON error body: ${text.slice(0, 200)}`);
  }
  const e = (body as { error?: { code?: unknown; message?: unknown } }).error;
  if (typeof e?.code !== 'string' || typeof e.message !== 'string') throw new Error(`status ${res.status}: not an error body: ${text.slice(0, 200)}`);
  return e.code;
}
