/**
 * The controller HTTP tests' view of the shared fixture
 * (test/support/controller.ts): a real controller on 127.0.0.1 port 0 on
 * SQLite in a temp directory (or the database `databaseUrl` names), and
 * small typed helpers that speak docs/protocol.md over real HTTP.
 */
import { createHash } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import type { FastifyBaseLogger } from 'fastify';
import type { Build, Clock, RegisterResponse } from '@buildfleet/protocol';
import type { ControllerConfigOverrides } from '../../src/config.js';
import type { RunningController } from '../../src/server.js';
import { API_TOKEN, ENROLLMENT_TOKEN, errorCode, startTestController } from '../../../../test/support/controller.js';

export { API_TOKEN, ENROLLMENT_TOKEN, errorCode };

export interface Harness {
  ctl: RunningController;
  url: string;
  dataDir: string;
  /** Set when the controller runs on PostgreSQL (`store: 'postgres'`). */
  databaseUrl: string | undefined;
  close(): Promise<void>;
  /** fetch against the controller; `token` becomes a bearer (none without it). */
  req(method: string, p: string, opts?: { token?: string; json?: unknown; body?: RequestInit['body']; headers?: Record<string, string>; signal?: AbortSignal }): Promise<Response>;
  submit(spec: unknown, source?: Uint8Array): Promise<Response>;
  submitOk(spec?: Record<string, unknown>, source?: Uint8Array): Promise<Build>;
  register(body?: Partial<Record<string, unknown>>, token?: string): Promise<Response>;
  registerOk(body?: Partial<Record<string, unknown>>): Promise<RegisterResponse>;
}

export async function startHarness(
  overrides: ControllerConfigOverrides = {},
  opts: { clock?: Clock; logger?: FastifyBaseLogger; store?: 'sqlite' | 'postgres' } = {},
): Promise<Harness> {
  const t = await startTestController({
    ...(opts.store ? { store: opts.store } : {}),
    // Tests make many registrations and failed authentications from one address; rate-limit.test.ts sets its own limits.
    config: { pollWaitMs: 5_000, maxAuthFailuresPerMinute: 0, maxRegistrationsPerMinute: 0, ...overrides },
    ...(opts.clock ? { clock: opts.clock } : {}),
    ...(opts.logger ? { logger: opts.logger } : {}),
  });
  const { api } = t;
  return {
    ctl: t.ctl!,
    url: t.url,
    dataDir: t.dataDir,
    databaseUrl: t.databaseUrl,
    req: (method, p, o = {}) => api.req(method, p, { ...o, token: o.token ?? null }),
    submit: (spec, source) => api.submitRaw(spec, source),
    submitOk: (spec, source) => api.submit(spec, source),
    register: (body = {}, token = ENROLLMENT_TOKEN) => api.register(body, token),
    registerOk: (body = {}) => api.registerOk(body),
    close: () => t.close(),
  };
}

export function sha256(data: Uint8Array | string): string {
  return createHash('sha256').update(data).digest('hex');
}


/** A raw HTTP request (node:http, no URL normalisation: `..` segments reach the server as sent). */
export function rawRequest(
  baseUrl: string,
  method: string,
  rawPath: string,
  headers: Record<string, string> = {},
  body?: Uint8Array | string,
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: Buffer }> {
  const u = new URL(baseUrl);
  if (body !== undefined) headers = { ...headers, 'content-length': String(Buffer.byteLength(body)) };
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { host: u.hostname, port: Number(u.port), method, path: rawPath, headers, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    if (body !== undefined) req.end(body);
    else req.end();
  });
}
