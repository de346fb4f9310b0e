/**
 * Bad input is a clear 4xx and loses nothing (issue 9's findings): NUL in
 * any string is 400 before it reaches the database (PostgreSQL text columns
 * refuse it), JSON nesting is bounded, types are strict (no coercion), names
 * and env keys are restricted to documented characters, and every size has
 * a configurable limit answered 413/431 with nothing half-stored.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { paths, type AssignedBuild, type Build, type PollResponse, type RegisterResponse } from '@buildfleet/protocol';
import { createTestDatabase, describePg, type TestDatabase } from '../support/pg.js';
import { API_TOKEN, errorCode, rawRequest, sha256, startHarness, type Harness } from './harness.js';

let h: Harness;
const LIMITS = { maxJsonBytes: 64 * 1024, maxLogChunkBytes: 4096, maxSpecBytes: 8192, maxHeaderBytes: 8192, maxJsonDepth: 32 };

describe('input (SQLite)', () => {
  beforeAll(async () => {
    h = await startHarness(LIMITS);
  });
  afterAll(async () => {
    await h?.close();
  });
  inputTests();
});

describePg('input (PostgreSQL)', () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
    h = await startHarness({ ...LIMITS, databaseUrl: db.url });
  });
  afterAll(async () => {
    await h?.close();
    await db?.drop();
  });
  inputTests();
});

async function expectError(res: Response | Promise<Response>, status: number, code: string): Promise<string> {
  const r = await res;
  const text = await r.clone().text();
  expect({ status: r.status, code: await errorCode(r) }, text).toEqual({ status, code });
  return (JSON.parse(text) as { error: { message: string } }).error.message;
}

async function raw(method: string, p: string, token: string | undefined, json?: unknown) {
  const res = await rawRequest(
    h.url,
    method,
    p,
    { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(json !== undefined ? { 'content-type': 'application/json' } : {}) },
    json === undefined ? undefined : JSON.stringify(json),
  );
  return { status: res.status, code: (JSON.parse(res.body.toString()) as { error: { code: string } }).error.code };
}

/** A running build of a fresh worker (labels unique to the test). */
async function running(): Promise<{ reg: RegisterResponse; a: AssignedBuild }> {
  const labels = [`in-${Math.random().toString(36).slice(2)}`];
  await h.submitOk({ script: 'true', labels });
  const reg = await h.registerOk({ labels });
  const poll = (await (await h.req('POST', paths.poll(reg.workerId, 0), { token: reg.accessToken, json: { freeSlots: 1, activeBuildIds: [] } })).json()) as PollResponse;
  const a = poll.builds[0]!;
  expect((await h.req('POST', paths.start(a.id), { token: a.buildToken, json: { attempt: 1 } })).status).toBe(200);
  return { reg, a };
}

/** A spec whose metadata nests `levels` objects, as text (JSON.stringify would overflow the test's own stack). */
const deepSpec = (levels: number): string => `{"script":"x","metadata":${'{"a":'.repeat(levels)}1${'}'.repeat(levels)}}`;

function inputTests(): void {
  describe('NUL and control characters', () => {
    it('paths and queries with NUL are 400 after authentication, never a database error', async () => {
      const reg = await h.registerOk();
      expect(await raw('POST', '/api/v1/workers/a%00b/poll?waitMs=0', 'garbage', { freeSlots: 1, activeBuildIds: [] })).toEqual({ status: 401, code: 'TOKEN_INVALID' });
      expect(await raw('POST', '/api/v1/workers/a%00b/poll?waitMs=0', reg.accessToken, { freeSlots: 1, activeBuildIds: [] })).toEqual({ status: 400, code: 'VALIDATION_FAILED' });
      expect(await raw('POST', '/api/v1/workers/a%00b/heartbeat', reg.accessToken, { activeBuildIds: [] })).toEqual({ status: 400, code: 'VALIDATION_FAILED' });
      for (const p of ['/api/v1/builds/a%00b', '/api/v1/builds/a%00b/logs', '/api/v1/workers/a%00b', '/api/v1/builds?label=a%00b', '/api/v1/builds?cursor=%00', '/api/v1/builds/a%01b/artifacts']) {
        expect({ p, ...(await raw('GET', p, API_TOKEN)) }).toEqual({ p, status: 400, code: 'VALIDATION_FAILED' });
      }
      expect(await raw('DELETE', '/api/v1/enrollment-tokens/a%00b', API_TOKEN)).toEqual({ status: 400, code: 'VALIDATION_FAILED' });
      expect(await raw('POST', '/api/v1/builds/a%00b/cancel', API_TOKEN)).toEqual({ status: 400, code: 'VALIDATION_FAILED' });
    });

    it('JSON strings with NUL are 400 (register, finish message, enrollment description, spec)', async () => {
      expect(await errorCode(await h.register({ name: 'a\u0000b' }))).toBe('VALIDATION_FAILED');
      expect(await errorCode(await h.register({ bootId: 'x\u0000' }))).toBe('VALIDATION_FAILED');
      expect(await errorCode(await h.register({ registrationId: 'r\u0000' }))).toBe('VALIDATION_FAILED');
      await expectError(h.req('POST', paths.enrollmentTokens(), { token: API_TOKEN, json: { description: 'a\u0000' } }), 400, 'VALIDATION_FAILED');
      await expectError(h.submit({ script: 'echo', env: { A: 'x\u0000y' } }), 400, 'VALIDATION_FAILED');
      await expectError(h.submit({ script: 'echo', metadata: { 'k\u0000': 1 } }), 400, 'VALIDATION_FAILED');
      const { a } = await running();
      const msg = await expectError(
        h.req('POST', paths.finish(a.id), { token: a.buildToken, json: { attempt: 1, outcome: 'failed', exitCode: 1, message: 'bad\u0000' } }),
        400,
        'VALIDATION_FAILED',
      );
      expect(msg).toMatch(/message contains NUL/);
      const b = (await (await h.req('GET', paths.build(a.id), { token: API_TOKEN })).json()) as { build: Build };
      expect(b.build.state).toBe('running');
      // A binary log travels as base64, NUL bytes included.
      const log = await h.req('POST', paths.logs(a.id), { token: a.buildToken, json: { attempt: 1, seq: 0, offset: 0, data: Buffer.from('a\u0000b').toString('base64'), encoding: 'base64' } });
      expect(log.status).toBe(200);
      expect(Buffer.from(await (await h.req('GET', paths.logs(a.id), { token: API_TOKEN })).arrayBuffer())).toEqual(Buffer.from('a\u0000b'));
    });
  });

  describe('JSON nesting', () => {
    it('a spec whose metadata nests 5,000 levels is 400, as a file part and as a JSON field', async () => {
      const big = await startHarness({ maxSpecBytes: 1024 * 1024 });
      try {
        await expectError(big.submit(deepSpec(5000)), 400, 'VALIDATION_FAILED');
        const form = new FormData();
        form.append('spec', new Blob([deepSpec(5000)], { type: 'application/json' }));
        form.append('source', new Blob([new Uint8Array([1])]), 's.tar.gz');
        await expectError(big.req('POST', paths.builds(), { token: API_TOKEN, body: form }), 400, 'VALIDATION_FAILED');
        expect((await big.submit(deepSpec(20))).status).toBe(201);
        expect(((await (await big.req('GET', paths.builds(), { token: API_TOKEN })).json()) as { builds: unknown[] }).builds).toHaveLength(1);
      } finally {
        await big.close();
      }
    });

    it('a JSON body nested past maxJsonDepth is 400 after authentication', async () => {
      const reg = await h.registerOk();
      // Unknown fields are allowed (newer workers may send more), nested ones only so deep.
      const body = `{"activeBuildIds": [], "extra": ${'['.repeat(1000)}${']'.repeat(1000)}}`;
      await expectError(
        h.req('POST', paths.heartbeat(reg.workerId), { token: reg.accessToken, body, headers: { 'content-type': 'application/json' } }),
        400,
        'VALIDATION_FAILED',
      );
      await expectError(h.req('POST', paths.heartbeat(reg.workerId), { token: 'garbage', body, headers: { 'content-type': 'application/json' } }), 401, 'TOKEN_INVALID');
      // Brackets inside strings do not count.
      const inString = JSON.stringify({ activeBuildIds: [], note: '['.repeat(1000) });
      expect((await h.req('POST', paths.heartbeat(reg.workerId), { token: reg.accessToken, body: inString, headers: { 'content-type': 'application/json' } })).status).toBe(200);
    });
  });

  describe('strict types', () => {
    it('bodies are not coerced: a string for an array, null or "1" for a number, a huge exit code', async () => {
      expect(await errorCode(await h.register({ labels: 'a' }))).toBe('VALIDATION_FAILED');
      expect(await errorCode(await h.register({ maxConcurrentBuilds: '2' }))).toBe('VALIDATION_FAILED');
      const { reg, a } = await running();
      await expectError(h.req('POST', paths.poll(reg.workerId, 0), { token: reg.accessToken, json: { freeSlots: '1', activeBuildIds: [] } }), 400, 'VALIDATION_FAILED');
      await expectError(h.req('POST', paths.start(a.id), { token: a.buildToken, json: { attempt: null } }), 400, 'VALIDATION_FAILED');
      await expectError(h.req('POST', paths.start(a.id), { token: a.buildToken, json: { attempt: '1' } }), 400, 'VALIDATION_FAILED');
      await expectError(h.req('POST', paths.finish(a.id), { token: a.buildToken, json: { attempt: 1, outcome: 'failed', exitCode: 1e300 } }), 400, 'VALIDATION_FAILED');
      await expectError(h.req('POST', paths.finish(a.id), { token: a.buildToken, json: { attempt: 1, outcome: 'failed', exitCode: true } }), 400, 'VALIDATION_FAILED');
      const b = (await (await h.req('GET', paths.build(a.id), { token: API_TOKEN })).json()) as { build: Build };
      expect(b.build).toMatchObject({ state: 'running', exitCode: null });
      // Query parameters arrive as text and are still read as numbers.
      expect((await h.req('GET', `${paths.builds()}?limit=2`, { token: API_TOKEN })).status).toBe(200);
      expect((await h.req('POST', paths.poll(reg.workerId, 0), { token: reg.accessToken, json: { freeSlots: 0, activeBuildIds: [a.id] } })).status).toBe(204);
    });
  });

  describe('enrollment tokens', () => {
    it('expiresAt must be a timestamp in the future: a token born expired is refused, not created', async () => {
      const create = (expiresAt: string) => h.req('POST', paths.enrollmentTokens(), { token: API_TOKEN, json: { description: 'expiry', expiresAt } });
      const before = (await (await h.req('GET', paths.enrollmentTokens(), { token: API_TOKEN })).json()) as { enrollmentTokens: unknown[] };
      expect(await expectError(create('2000-01-01T00:00:00Z'), 400, 'VALIDATION_FAILED')).toBe('expiresAt 2000-01-01T00:00:00Z is in the past: an enrollment token must expire later than now');
      expect(await expectError(create('next tuesday'), 400, 'VALIDATION_FAILED')).toMatch(/ISO-8601/);
      const after = (await (await h.req('GET', paths.enrollmentTokens(), { token: API_TOKEN })).json()) as { enrollmentTokens: unknown[] };
      expect(after.enrollmentTokens).toHaveLength(before.enrollmentTokens.length);
      expect((await create(new Date(Date.now() + 3_600_000).toISOString())).status).toBe(201);
    });
  });

  describe('names and env keys', () => {
    it('env keys must be POSIX names; labels and worker names must be visible text', async () => {
      for (const env of [{ 'A=B': 'x' }, { '1A': 'x' }, { 'A B': 'x' }, { '': 'x' }]) {
        await expectError(h.submit({ script: 'x', env }), 400, 'VALIDATION_FAILED');
      }
      expect((await h.submit({ script: 'x', env: { A_1: 'x=y' } })).status).toBe(201);
      await expectError(h.submit({ script: 'x', labels: ['gpu\u202e'] }), 400, 'VALIDATION_FAILED');
      await expectError(h.submit({ script: 'x', artifacts: ['out/\u202ecod.exe'] }), 400, 'VALIDATION_FAILED');
      expect(await errorCode(await h.register({ name: 'evil\u202eexe.txt' }))).toBe('VALIDATION_FAILED');
      expect(await errorCode(await h.register({ labels: ['a\u0007'] }))).toBe('VALIDATION_FAILED');
      expect((await h.register({ name: 'build-box ünïcode 1' })).status).toBe(201);
    });

    it('artifact names with control characters or U+202E are 400 and store nothing', async () => {
      const { a } = await running();
      const data = new TextEncoder().encode('x');
      for (const name of ['a\u0001b', 'evil\u202etxt.exe', 'tab\tname', 'zero\u200bwidth']) {
        await expectError(
          h.req('PUT', paths.artifact(a.id, name), { token: a.buildToken, body: data, headers: { 'content-type': 'application/octet-stream', 'x-checksum-sha256': sha256(data) } }),
          400,
          'VALIDATION_FAILED',
        );
      }
      const list = (await (await h.req('GET', paths.artifacts(a.id), { token: API_TOKEN })).json()) as { artifacts: unknown[] };
      expect(list.artifacts).toEqual([]);
    });
  });

  describe('size limits', () => {
    it('a log chunk over maxLogChunkBytes is 413 and stores nothing; at the limit it is stored', async () => {
      const { a } = await running();
      const over = Buffer.alloc(LIMITS.maxLogChunkBytes + 1, 0x61);
      await expectError(
        h.req('POST', paths.logs(a.id), { token: a.buildToken, json: { attempt: 1, seq: 0, offset: 0, data: over.toString('base64'), encoding: 'base64' } }),
        413,
        'PAYLOAD_TOO_LARGE',
      );
      await expectError(h.req('POST', paths.logs(a.id), { token: a.buildToken, json: { attempt: 1, seq: 0, offset: 0, data: over.toString() } }), 413, 'PAYLOAD_TOO_LARGE');
      expect((await (await h.req('GET', paths.logs(a.id), { token: API_TOKEN })).text()).length).toBe(0);
      const at = Buffer.alloc(LIMITS.maxLogChunkBytes, 0x62);
      const ok = await h.req('POST', paths.logs(a.id), { token: a.buildToken, json: { attempt: 1, seq: 0, offset: 0, data: at.toString('base64'), encoding: 'base64' } });
      expect(await ok.json()).toEqual({ offset: LIMITS.maxLogChunkBytes });
    });

    it('a JSON body over maxJsonBytes is 413; a spec over maxSpecBytes is 413 and leaves no build', async () => {
      const reg = await h.registerOk();
      await expectError(
        h.req('POST', paths.heartbeat(reg.workerId), { token: reg.accessToken, json: { activeBuildIds: [], pad: 'x'.repeat(LIMITS.maxJsonBytes) } }),
        413,
        'PAYLOAD_TOO_LARGE',
      );
      const before = ((await (await h.req('GET', `${paths.builds()}?limit=500`, { token: API_TOKEN })).json()) as { builds: Build[] }).builds.length;
      await expectError(h.submit({ script: 'x'.repeat(LIMITS.maxSpecBytes + 10) }), 413, 'PAYLOAD_TOO_LARGE');
      const after = ((await (await h.req('GET', `${paths.builds()}?limit=500`, { token: API_TOKEN })).json()) as { builds: Build[] }).builds.length;
      expect(after).toBe(before);
    });

    it('headers over maxHeaderBytes are 431 with a protocol error body', async () => {
      const res = await rawRequest(h.url, 'GET', '/healthz', { 'x-pad': 'x'.repeat(LIMITS.maxHeaderBytes + 100) });
      expect(res.status).toBe(431);
      expect(JSON.parse(res.body.toString()).error.code).toBe('PAYLOAD_TOO_LARGE');
      expect((await rawRequest(h.url, 'GET', '/healthz', { 'x-pad': 'x'.repeat(LIMITS.maxHeaderBytes / 2) })).status).toBe(200);
    });

    it('a HEAD request with headers over maxHeaderBytes is 431 without a body (found by the fuzz suite)', async () => {
      // A body after a HEAD answer is read as the start of another answer: node's client fails with a parse error.
      const res = await rawRequest(h.url, 'HEAD', '/healthz', { 'x-pad': 'x'.repeat(LIMITS.maxHeaderBytes + 100) });
      expect(res.status).toBe(431);
      expect(res.body.length).toBe(0);
    });
  });
}

describe('configuration', () => {
  it('reads the limits from the environment', async () => {
    const { loadControllerConfig } = await import('../../src/config.js');
    const c = loadControllerConfig({
      BUILDFLEET_MAX_JSON_BYTES: '2048',
      BUILDFLEET_MAX_JSON_DEPTH: '8',
      BUILDFLEET_MAX_LOG_CHUNK_BYTES: '4096',
      BUILDFLEET_MAX_SPEC_BYTES: '4096',
      BUILDFLEET_MAX_HEADER_BYTES: '4096',
      BUILDFLEET_MAX_DISCARD_BYTES: '0',
    });
    expect(c).toMatchObject({ maxJsonBytes: 2048, maxJsonDepth: 8, maxLogChunkBytes: 4096, maxSpecBytes: 4096, maxHeaderBytes: 4096, maxDiscardBytes: 0 });
    expect(() => loadControllerConfig({ BUILDFLEET_MAX_JSON_DEPTH: '1' })).toThrow(/BUILDFLEET_MAX_JSON_DEPTH/);
  });
});
