/**
 * A real controller on 127.0.0.1 port 0 with a store in a temp directory
 * (SQLite) or a fresh PostgreSQL database, and small typed helpers that
 * speak PROTOCOL.md over real HTTP.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createHash, randomUUID } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import type { FastifyBaseLogger } from 'fastify';
import { paths, type Build, type Clock, type RegisterResponse } from '@buildfleet/protocol';
import { loadControllerConfig, type ControllerConfigOverrides } from '../../src/config.js';
import { startController, type RunningController } from '../../src/server.js';

export const API_TOKEN = 'bfa_test-api-token-0123456789abcdef';
export const ENROLLMENT_TOKEN = 'bfe_test-enrollment-token-0123456789';

export interface Harness {
  ctl: RunningController;
  url: string;
  dataDir: string;
  close(): Promise<void>;
  /** fetch against the controller; `token` becomes a bearer. */
  req(method: string, p: string, opts?: { token?: string; json?: unknown; body?: RequestInit['body']; headers?: Record<string, string>; signal?: AbortSignal }): Promise<Response>;
  submit(spec: unknown, source?: Uint8Array): Promise<Response>;
  submitOk(spec?: Record<string, unknown>, source?: Uint8Array): Promise<Build>;
  register(body?: Partial<Record<string, unknown>>, token?: string): Promise<Response>;
  registerOk(body?: Partial<Record<string, unknown>>): Promise<RegisterResponse>;
}

export async function startHarness(
  overrides: ControllerConfigOverrides = {},
  opts: { clock?: Clock; logger?: FastifyBaseLogger } = {},
): Promise<Harness> {
  const dataDir = await mkdtemp(path.join(tmpdir(), 'bf-http-'));
  const config = loadControllerConfig(
    {},
    {
      host: '127.0.0.1',
      port: 0,
      dataDir,
      apiToken: API_TOKEN,
      enrollmentToken: ENROLLMENT_TOKEN,
      logLevel: 'silent',
      pollWaitMs: 5_000,
      pollRecheckMs: 200,
      logFollowRecheckMs: 200,
      ...overrides,
    },
  );
  const ctl = await startController(config, { ...(opts.clock ? { clock: opts.clock } : {}), ...(opts.logger ? { logger: opts.logger } : {}) });
  const url = ctl.url;
  const req: Harness['req'] = (method, p, opts = {}) => {
    const headers: Record<string, string> = { ...(opts.headers ?? {}) };
    if (opts.token) headers.authorization = `Bearer ${opts.token}`;
    let body = opts.body;
    if (opts.json !== undefined) {
      headers['content-type'] ??= 'application/json';
      body = JSON.stringify(opts.json);
    }
    return fetch(url + p, { method, headers, body, signal: opts.signal, ...(body ? { duplex: 'half' } : {}) } as RequestInit);
  };
  const submit: Harness['submit'] = (spec, source = new Uint8Array([0x1f, 0x8b, 1, 2, 3])) => {
    const form = new FormData();
    form.append('spec', typeof spec === 'string' ? spec : JSON.stringify(spec));
    form.append('source', new Blob([source]), 'source.tar.gz');
    return req('POST', paths.builds(), { token: API_TOKEN, body: form });
  };
  const submitOk: Harness['submitOk'] = async (spec = { script: 'echo hi' }, source) => {
    const res = await submit(spec, source);
    const body = (await res.json()) as { build: Build };
    if (res.status !== 201) throw new Error(`submit answered ${res.status}: ${JSON.stringify(body)}`);
    return body.build;
  };
  const register: Harness['register'] = (body = {}, token = ENROLLMENT_TOKEN) =>
    req('POST', paths.register(), {
      token,
      json: { name: 'w', labels: [], maxConcurrentBuilds: 2, version: 'test', bootId: randomUUID(), activeBuildCount: 0, ...body },
    });
  const registerOk: Harness['registerOk'] = async (body = {}) => {
    const res = await register(body);
    const json = (await res.json()) as RegisterResponse;
    if (res.status !== 201 && res.status !== 200) throw new Error(`register answered ${res.status}: ${JSON.stringify(json)}`);
    return json;
  };
  return {
    ctl,
    url,
    dataDir,
    req,
    submit,
    submitOk,
    register,
    registerOk,
    async close() {
      await ctl.close();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

export function sha256(data: Uint8Array | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/** The error code of an error answer (and asserts its shape). */
export async function errorCode(res: Response): Promise<string> {
  const text = await res.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new Error(`status ${res.status}: not a JSON error body: ${text.slice(0, 200)}`);
  }
  const code = (body as { error?: { code?: unknown; message?: unknown } }).error?.code;
  const message = (body as { error?: { message?: unknown } }).error?.message;
  if (typeof code !== 'string' || typeof message !== 'string') throw new Error(`status ${res.status}: not an error body: ${text.slice(0, 200)}`);
  return code;
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
