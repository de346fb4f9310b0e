/**
 * Tokens are never logged (issue 4; docs/protocol.md "Credentials"): the
 * controller's own logger, at trace level, through a whole worker and build
 * lifecycle over real HTTP, writes no token of any kind; the older-worker
 * warning (a body without `activeBuildCount`) is there.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { paths, type PollResponse, type RegisterResponse } from '@buildfleet/protocol';
import { createLogger } from '../../src/app.js';
import { loadControllerConfig } from '../../src/config.js';
import { startController, type RunningController } from '../../src/server.js';

const API_TOKEN = 'bfa_logging-test-api-token-0123456789abcdef';
const ENROLLMENT_TOKEN = 'bfe_logging-test-enrollment-0123456789abcdef';
/** Any token of the protocol's kinds that was not censored. */
const LEAKED = /\bbf[aesbw]_[A-Za-z0-9_.-]{8,}/;

describe('controller logs', () => {
  const lines: string[] = [];
  let ctl: RunningController;
  let dataDir: string;
  const req = (method: string, p: string, token: string | undefined, json?: unknown, body?: FormData) =>
    fetch(ctl.url + p, {
      method,
      headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(json !== undefined ? { 'content-type': 'application/json' } : {}) },
      body: body ?? (json !== undefined ? JSON.stringify(json) : undefined),
    });

  beforeAll(async () => {
    dataDir = await mkdtemp(path.join(tmpdir(), 'bf-logs-'));
    const config = loadControllerConfig({}, { port: 0, dataDir, apiToken: API_TOKEN, enrollmentToken: ENROLLMENT_TOKEN, logLevel: 'trace' });
    ctl = await startController(config, { logger: createLogger('trace', { write: (s: string) => void lines.push(s) }) });
  });
  afterAll(async () => {
    await ctl.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  it('carry no token through registration, polls, a build, a refresh, refused calls and admin calls', async () => {
    const secrets: string[] = [API_TOKEN, ENROLLMENT_TOKEN];
    const bootId = randomUUID();
    // An older worker: no activeBuildCount.
    const reg = (await (await req('POST', paths.register(), ENROLLMENT_TOKEN, { name: 'w', labels: [], maxConcurrentBuilds: 1, version: 'old', bootId })).json()) as RegisterResponse;
    secrets.push(reg.workerSecret!, reg.accessToken);
    const form = new FormData();
    form.append('spec', JSON.stringify({ script: 'echo' }));
    form.append('source', new Blob([new Uint8Array([1, 2, 3])]), 's.tar.gz');
    const submitted = await req('POST', paths.builds(), API_TOKEN, undefined, form);
    expect(submitted.status).toBe(201);
    const poll = (await (await req('POST', paths.poll(reg.workerId, 0), reg.accessToken, { freeSlots: 1, activeBuildIds: [] })).json()) as PollResponse;
    const b = poll.builds[0]!;
    secrets.push(b.buildToken);
    expect((await req('POST', paths.start(b.id), b.buildToken, { attempt: 1 })).status).toBe(200);
    expect((await req('POST', paths.logs(b.id), b.buildToken, { attempt: 1, seq: 0, offset: 0, data: 'x\n' })).status).toBe(200);
    const art = await fetch(ctl.url + paths.artifact(b.id, 'a.txt'), {
      method: 'PUT',
      headers: { authorization: `Bearer ${b.buildToken}`, 'content-type': 'application/octet-stream', 'x-checksum-sha256': 'bf'.repeat(32) },
      body: 'not matching',
    });
    expect(art.status).toBe(422);
    expect((await req('POST', paths.finish(b.id), b.buildToken, { attempt: 1, outcome: 'succeeded', exitCode: 0, message: null })).status).toBe(200);
    // A refresh without activeBuildCount, then the rotated token refused.
    const fresh = (await (await req('POST', paths.register(), undefined, { name: 'w', labels: [], maxConcurrentBuilds: 1, version: 'old', bootId, workerId: reg.workerId, workerSecret: reg.workerSecret })).json()) as RegisterResponse;
    secrets.push(fresh.accessToken);
    expect((await req('POST', paths.heartbeat(reg.workerId), reg.accessToken, { activeBuildIds: [] })).status).toBe(401);
    expect((await req('POST', paths.register(), ENROLLMENT_TOKEN, { name: 'w', labels: [], maxConcurrentBuilds: 1, version: 'v', activeBuildCount: 0, workerId: reg.workerId, workerSecret: 'bfs_wrong-secret-0123456789' })).status).toBe(401);
    secrets.push('bfs_wrong-secret-0123456789');
    // Admin: a new enrollment token (shown once, in the answer only) used once.
    const created = (await (await req('POST', paths.enrollmentTokens(), API_TOKEN, { maxUses: 1 })).json()) as { token: string };
    secrets.push(created.token);
    expect((await req('POST', paths.register(), created.token, { name: 'w2', labels: [], maxConcurrentBuilds: 1, version: 'v', activeBuildCount: 0 })).status).toBe(201);
    expect((await req('POST', paths.register(), created.token, { name: 'w3', labels: [], maxConcurrentBuilds: 1, version: 'v', activeBuildCount: 0 })).status).toBe(401);
    expect((await req('GET', paths.builds(), 'bfa_unknown-token-0123456789')).status).toBe(401);
    secrets.push('bfa_unknown-token-0123456789');

    // Code that logs a credential by mistake, in a field, deep, in a message, in an error.
    const t = fresh.accessToken;
    const log = ctl.app.log;
    log.info({ accessToken: t, workerSecret: 'plain-secret-without-prefix' }, 'fields');
    log.info({ answer: { accessToken: t, builds: [{ buildToken: b.buildToken }] } }, 'nested');
    log.info({ req: { headers: { authorization: `Bearer ${t}` } } }, 'header');
    log.info({ a: { b: { c: { d: t } } } }, `message with ${t}`);
    log.error({ err: new Error(`failed with ${t}`) }, 'error');
    secrets.push('plain-secret-without-prefix');

    const text = lines.join('');
    expect(lines.length).toBeGreaterThan(20);
    expect(text).toContain('worker re-registered');
    for (const s of secrets) expect(text.includes(s), `a token was logged: ${s.slice(0, 6)}…`).toBe(false);
    expect(text).not.toMatch(LEAKED);
    expect(text).toContain('[redacted]');

    // docs/protocol.md "POST /api/v1/workers/register": a body without activeBuildCount counts as 0 and is logged as a warning.
    const warnings = lines.map((l) => JSON.parse(l) as { level: number; msg: string }).filter((l) => l.level === 40 && /activeBuildCount/.test(l.msg));
    expect(warnings).toHaveLength(2);
    const worker = (await (await req('GET', paths.worker(reg.workerId), API_TOKEN)).json()) as { worker: { activeBuildCount: number } };
    expect(worker.worker.activeBuildCount).toBe(0);
  });
});
