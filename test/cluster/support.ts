/**
 * Cluster test support: controllers and workers as real, separate processes
 * (the CLI's `buildfleet controller` / `buildfleet worker`, started by
 * test/e2e/support.ts's `startService`), timings shortened through the
 * docs/protocol.md environment variables, and a small user-API client. Waiting is
 * always a condition with a deadline (`waitFor`), never a fixed sleep.
 */
import { createServer, connect, type AddressInfo, type Socket } from 'node:net';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { API_TOKEN, ENROLLMENT_TOKEN, startTestController } from '../support/controller.js';
import { childEnv, startService, waitFor, type Service } from '../support/process.js';
import { tarGz } from '../../packages/worker/test/support/tarball.js';

export { API_TOKEN, ENROLLMENT_TOKEN, waitFor, type Service };

/**
 * Short lease timings (ms) for the lease scenarios: a lost worker is noticed
 * in seconds. The ack deadline covers a worker process that takes its first
 * build while still warming up on a busy 2-core machine.
 */
export const TIMINGS = {
  leaseMs: 3_000,
  heartbeatIntervalMs: 300,
  ackTimeoutMs: 3_000,
} as const;

/** Controller environment for `TIMINGS` (docs/protocol.md "Configuration variables"). */
export function timingEnv(t: { leaseMs: number; heartbeatIntervalMs: number; ackTimeoutMs: number } = TIMINGS): Record<string, string> {
  return {
    BUILDFLEET_LEASE_MS: String(t.leaseMs),
    BUILDFLEET_HEARTBEAT_INTERVAL_MS: String(t.heartbeatIntervalMs),
    BUILDFLEET_ACK_TIMEOUT_MS: String(t.ackTimeoutMs),
  };
}

/** A free TCP port on 127.0.0.1 (for a controller that must come back on the same address). */
export async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

export async function tempDir(prefix: string): Promise<{ dir: string; remove(): Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  // Builds record into and wait on files here; a root worker runs them as nobody.
  await chmod(dir, 0o777);
  return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
}

export interface ControllerProc {
  url: string;
  service: Service;
}

/**
 * Starts `buildfleet controller` (the shared fixture, as a child process)
 * and resolves when `/readyz` answers 200. `port` 0 picks a free one.
 * `databaseUrl` selects PostgreSQL (else SQLite in `dataDir`). The caller
 * owns `dataDir` and the database.
 */
export async function startController(opts: {
  dataDir: string;
  port?: number;
  databaseUrl?: string;
  env?: Record<string, string>;
}): Promise<ControllerProc> {
  const ctl = await startTestController({
    process: true,
    dataDir: opts.dataDir,
    ...(opts.port !== undefined ? { port: opts.port } : {}),
    ...(opts.databaseUrl ? { databaseUrl: opts.databaseUrl } : {}),
    env: { ...timingEnv(), ...opts.env },
  });
  return { url: ctl.url, service: ctl.service! };
}

/** Starts `buildfleet worker` against `urls` (tried in order, docs/protocol.md: comma-separated). */
export function startWorker(opts: { urls: readonly string[]; dataDir: string; name: string; labels?: string[]; concurrency?: number; env?: Record<string, string> }): Service {
  return startService(
    ['worker', '--name', opts.name],
    childEnv({
      BUILDFLEET_CONTROLLER_URL: opts.urls.join(','),
      BUILDFLEET_ENROLLMENT_TOKEN: ENROLLMENT_TOKEN,
      BUILDFLEET_DATA_DIR: opts.dataDir,
      BUILDFLEET_CONCURRENCY: String(opts.concurrency ?? 1),
      // These tests are about the fleet, not isolation: builds write files the tests read.
      BUILDFLEET_EXECUTOR: 'shell',
      ...(opts.labels ? { BUILDFLEET_LABELS: opts.labels.join(',') } : {}),
      ...opts.env,
    }),
  );
}

/**
 * Shell that waits until `file` exists. It also gives up when the file's
 * directory is gone, so a build left behind by a failed test ends once the
 * test's temp dir is removed.
 */
export function waitForFileSh(file: string): string {
  const dir = file.slice(0, file.lastIndexOf('/'));
  return `while [ ! -e '${file}' ] && [ -d '${dir}' ]; do sleep 0.05; done`;
}

/**
 * Stops a worker the way an operator would when in a hurry: SIGTERM twice
 * (drain, then cancel running builds), SIGKILL after `graceMs`.
 */
export async function stopWorker(service: Service, graceMs = 5_000): Promise<void> {
  if (service.proc.exitCode !== null || service.proc.signalCode !== null) return;
  service.proc.kill('SIGCONT');
  service.proc.kill('SIGTERM');
  // Two signals sent back to back may arrive as one; the second comes a moment later.
  const again = setTimeout(() => service.proc.kill('SIGTERM'), 500);
  const t = setTimeout(() => service.proc.kill('SIGKILL'), graceMs);
  await service.exited;
  clearTimeout(again);
  clearTimeout(t);
}

/** Kills a service that may be stopped (SIGSTOP) or stuck, and waits for its exit. */
export async function kill(service: Service): Promise<void> {
  if (service.proc.exitCode !== null || service.proc.signalCode !== null) return;
  service.proc.kill('SIGCONT');
  service.proc.kill('SIGKILL');
  await service.exited;
}

export interface BuildAttempt {
  attempt: number;
  workerId: string | null;
  state: string;
  startedAt: string | null;
  finishedAt: string | null;
  reason: string | null;
}

export interface Build {
  id: string;
  state: string;
  attempt: number;
  workerId: string | null;
  cancelRequested: boolean;
  exitCode: number | null;
  reason: string | null;
  attempts: BuildAttempt[];
}

export interface WorkerInfo {
  id: string;
  name: string;
  status: string;
  lastSeenAt: string | null;
}

/** One tiny valid source archive for every build. */
export const SOURCE = tarGz([{ path: 'README', data: 'cluster test\n' }]);

/** An answer that is not 2xx. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly body: string,
    what: string,
  ) {
    super(`${what}: ${status} ${body}`);
  }
}

/** The user API of one controller, authenticated with the test API token. */
export class Api {
  constructor(readonly url: string) {}

  async request<T>(method: string, path: string, init: { json?: unknown; body?: RequestInit["body"]; headers?: Record<string, string>; token?: string } = {}): Promise<T> {
    const headers: Record<string, string> = { authorization: `Bearer ${init.token ?? API_TOKEN}`, ...init.headers };
    let body: RequestInit['body'] = init.body;
    if (init.json !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(init.json);
    }
    const res = await fetch(this.url + path, { method, headers, ...(body !== undefined ? { body } : {}) });
    const text = await res.text();
    if (!res.ok) throw new HttpError(res.status, text, `${method} ${path}`);
    const type = res.headers.get('content-type') ?? '';
    return (type.includes('json') && text ? JSON.parse(text) : text) as T;
  }

  get<T>(path: string): Promise<T> {
    return this.request<T>('GET', path);
  }

  async build(id: string): Promise<Build> {
    return (await this.get<{ build: Build }>(`/api/v1/builds/${id}`)).build;
  }

  async workers(): Promise<WorkerInfo[]> {
    return (await this.get<{ workers: WorkerInfo[] }>('/api/v1/workers')).workers;
  }

  /** Log text of one attempt (default: the current one). */
  log(id: string, attempt?: number): Promise<string> {
    return this.get<string>(`/api/v1/builds/${id}/logs${attempt ? `?attempt=${attempt}` : ''}`);
  }

  /** `POST /builds` (multipart: spec, then source). */
  async submit(spec: Record<string, unknown>): Promise<Build> {
    const form = new FormData();
    form.append('spec', JSON.stringify(spec));
    form.append('source', new Blob([SOURCE]), 'source.tar.gz');
    return (await this.request<{ build: Build }>('POST', '/api/v1/builds', { body: form })).build;
  }

  /** Waits until every build in `ids` is in a terminal state; returns them. */
  async waitFinished(ids: readonly string[], timeoutMs: number, what = 'builds to finish'): Promise<Build[]> {
    const terminal = new Set(['succeeded', 'failed', 'canceled', 'timed_out']);
    const done = new Map<string, Build>();
    await waitFor(
      async () => {
        // One listing per round instead of one GET per build.
        for (const state of terminal) {
          let cursor: string | null = null;
          do {
            const page: { builds: Build[]; nextCursor: string | null } = await this.get(
              `/api/v1/builds?state=${state}&limit=200${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`,
            );
            for (const b of page.builds) done.set(b.id, b);
            cursor = page.nextCursor;
          } while (cursor);
        }
        return ids.every((id) => done.has(id));
      },
      `${what} (${ids.filter((id) => !done.has(id)).length} of ${ids.length} not finished)`,
      timeoutMs,
      250,
    );
    return Promise.all(ids.map((id) => this.build(id)));
  }
}

/** Whether a process id is still alive (signal 0). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** One HTTP request seen by the proxy: request line and bearer token. */
export interface SeenRequest {
  method: string;
  path: string;
  token: string | undefined;
}

/**
 * A TCP proxy in front of a controller that records the request lines it
 * forwards and the `200` answers to polls, and, when armed with
 * `dropNextPollAnswer`, swallows the next such answer (the controller has
 * assigned builds; the worker never hears of them) by closing both sockets. HTTP/1.1 without pipelining sends
 * one request at a time per connection, so the last request line seen on a
 * connection is the one being answered.
 */
export class DroppingProxy {
  readonly seen: SeenRequest[] = [];
  /** The first bytes of every `200` poll answer, the dropped ones included (in order). */
  readonly pollAnswers: string[] = [];
  droppedPollAnswers = 0;
  /** After the drop, refuse every connection (the worker never reaches the controller again). */
  cutOffAfterDrop = false;
  private cutOff = false;
  private dropArmed = false;
  private readonly server = createServer((client) => this.onConnection(client));
  private readonly sockets = new Set<Socket>();
  url = '';

  constructor(private readonly target: { host: string; port: number }) {}

  static forUrl(url: string): DroppingProxy {
    const u = new URL(url);
    return new DroppingProxy({ host: u.hostname, port: Number(u.port) });
  }

  async listen(): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this.url;
  }

  dropNextPollAnswer(): void {
    this.dropArmed = true;
  }

  private onConnection(client: Socket): void {
    if (this.cutOff) {
      client.destroy();
      return;
    }
    const upstream = connect(this.target.port, this.target.host);
    this.sockets.add(client).add(upstream);
    let lastWasPoll = false;
    let head = '';
    client.on('data', (chunk: Buffer) => {
      // Request heads are small; scan the start of each chunk for a request line.
      head = chunk.subarray(0, 4096).toString('latin1');
      const m = /^(GET|POST|PUT|DELETE|HEAD) (\S+) HTTP\/1\.1\r\n/.exec(head);
      if (m) {
        const token = /\r\nauthorization: Bearer (\S+)\r\n/i.exec(head)?.[1];
        this.seen.push({ method: m[1]!, path: m[2]!, token });
        lastWasPoll = m[1] === 'POST' && /\/workers\/[^/]+\/poll/.test(m[2]!);
      }
      upstream.write(chunk);
    });
    // A 200 answer to a poll is held until it is complete (headers and
    // Content-Length bytes of body), then recorded and forwarded or dropped.
    let held: Buffer | undefined;
    upstream.on('data', (chunk: Buffer) => {
      if (!held && !(lastWasPoll && chunk.subarray(0, 12).toString('latin1') === 'HTTP/1.1 200')) {
        client.write(chunk);
        return;
      }
      held = held ? Buffer.concat([held, chunk]) : chunk;
      const headEnd = held.indexOf('\r\n\r\n');
      if (headEnd < 0) return;
      const length = Number(/\r\ncontent-length: *(\d+)/i.exec(held.subarray(0, headEnd).toString('latin1'))?.[1] ?? 0);
      if (held.length < headEnd + 4 + length) return;
      const answer = held;
      held = undefined;
      this.pollAnswers.push(answer.toString('utf8'));
      if (this.dropArmed) {
        this.dropArmed = false;
        this.droppedPollAnswers++;
        if (this.cutOffAfterDrop) {
          this.cutOff = true;
          for (const s of this.sockets) s.destroy();
        }
        client.destroy();
        upstream.destroy();
        return;
      }
      client.write(answer);
    });
    const close = () => {
      client.destroy();
      upstream.destroy();
      this.sockets.delete(client);
      this.sockets.delete(upstream);
    };
    client.on('close', close).on('error', close);
    upstream.on('close', close).on('error', close);
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}
