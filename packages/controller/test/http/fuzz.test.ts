/**
 * Throws random methods, paths, headers and bodies at a real controller and
 * checks the protocol's promises: no answer is 5xx, and every error answer
 * is `{"error": {"code", "message"}}` with a known code.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import fc from 'fast-check';
import { ERROR_CODES, paths, type PollResponse } from '@buildfleet/protocol';
import { API_TOKEN, ENROLLMENT_TOKEN, rawRequest, startHarness, type Harness } from './harness.js';

let h: Harness;
let tokens: string[];
let ids: string[];
beforeAll(async () => {
  h = await startHarness({ pollWaitMs: 50, maxArtifactBytes: 10_000, maxSourceBytes: 10_000 });
  const reg = await h.registerOk({ labels: ['fz'] });
  await h.submitOk({ script: 'x', labels: ['fz'] });
  await h.submitOk({ script: 'y', labels: ['fz'] });
  const poll = (await (await h.req('POST', paths.poll(reg.workerId, 0), { token: reg.accessToken, json: { freeSlots: 1, activeBuildIds: [] } })).json()) as PollResponse;
  const a = poll.builds[0]!;
  await h.req('POST', paths.start(a.id), { token: a.buildToken, json: { attempt: 1 } });
  tokens = [API_TOKEN, ENROLLMENT_TOKEN, reg.accessToken, a.buildToken, reg.workerSecret!, 'bfb_x.1.y', 'garbage'];
  ids = [reg.workerId, a.id, 'nope', '', '%00', '..', 'a'.repeat(300)];
});
afterAll(async () => {
  await h?.close();
});

const known = new Set<string>(ERROR_CODES);

it('answers every random request without a 5xx and with a known error code', async () => {
  const id = fc.constantFrom(...ids);
  const segment = fc.oneof(id, fc.string({ maxLength: 12 }).map(encodeURIComponent), fc.constantFrom('..', '%2e%2e', '%2F', 'a%2Fb'));
  const pathArb = fc.oneof(
    fc.tuple(id).map(([i]) => `/api/v1/workers/${i}/poll?waitMs=${Math.floor(Math.random() * 100)}`),
    fc.tuple(id).map(([i]) => `/api/v1/workers/${i}/heartbeat`),
    fc.constant('/api/v1/workers/register'),
    fc.constant('/api/v1/workers'),
    fc.tuple(id).map(([i]) => `/api/v1/workers/${i}`),
    fc.tuple(id).map(([i]) => `/api/v1/workers/${i}/drain`),
    fc.constant('/api/v1/builds'),
    fc.tuple(fc.constantFrom('state=queued', 'state=x', 'limit=0', 'limit=abc', 'cursor=%%%', 'label=fz', 'limit=2&cursor=zz')).map(([q]) => `/api/v1/builds?${q}`),
    fc.tuple(id, fc.constantFrom('', '/source', '/start', '/logs', '/logs?offset=-1', '/logs?attempt=0', '/logs?offset=abc', '/finish', '/cancel', '/retry', '/artifacts')).map(
      ([i, s]) => `/api/v1/builds/${i}${s}`,
    ),
    fc.tuple(id, segment, segment).map(([i, a, b]) => `/api/v1/builds/${i}/artifacts/${a}/${b}`),
    fc.tuple(id).map(([i]) => `/api/v1/enrollment-tokens/${i}`),
    fc.constant('/api/v1/enrollment-tokens'),
    fc.constantFrom('/healthz', '/readyz', '/metrics', '/openapi.json', '/', '/api/v1', '/api/v2/builds', '//', '/api/v1/builds/%E0%A4%A'),
  );
  const json = fc.oneof(
    fc.jsonValue({ maxDepth: 3 }),
    fc.record({
      freeSlots: fc.oneof(fc.integer({ min: -2, max: 3 }), fc.string()),
      activeBuildIds: fc.array(fc.oneof(fc.constantFrom(...ids), fc.string()), { maxLength: 3 }),
    }),
    fc.record(
      {
        attempt: fc.oneof(fc.integer({ min: -1, max: 3 }), fc.constant('1')),
        seq: fc.integer({ min: -1, max: 3 }),
        offset: fc.integer({ min: -1, max: 10 }),
        data: fc.string(),
        encoding: fc.constantFrom('utf8', 'base64', 'hex'),
        outcome: fc.constantFrom('succeeded', 'failed', 'canceled', 'timed_out', 'queued', 'x'),
        exitCode: fc.oneof(fc.integer(), fc.constant(null), fc.string()),
      },
      { requiredKeys: [] },
    ),
    fc.record(
      {
        name: fc.string(),
        labels: fc.array(fc.string(), { maxLength: 3 }),
        maxConcurrentBuilds: fc.integer({ min: -1, max: 3 }),
        version: fc.string(),
        bootId: fc.string(),
        workerId: fc.constantFrom(...ids),
        workerSecret: fc.constantFrom(...tokens),
        registrationId: fc.string(),
        activeBuildCount: fc.integer({ min: -1, max: 3 }),
      },
      { requiredKeys: [] },
    ),
  );
  const bodyArb = fc.oneof(
    fc.constant(undefined),
    json.map((v) => ({ type: 'application/json', data: JSON.stringify(v) as string | Uint8Array })),
    fc.string().map((s) => ({ type: 'application/json', data: s as string | Uint8Array })),
    fc.uint8Array({ maxLength: 3000 }).map((b) => ({ type: 'application/octet-stream', data: b as string | Uint8Array })),
    fc.string().map((s) => ({ type: 'text/plain', data: s as string | Uint8Array })),
    fc.string().map((s) => ({ type: 'multipart/form-data; boundary=xyz', data: `--xyz\r\n${s}` as string | Uint8Array })),
    fc.string().map((s) => ({ type: 'application/x-www-form-urlencoded', data: s as string | Uint8Array })),
  );
  const headersArb = fc.record(
    {
      authorization: fc.oneof(fc.constantFrom(...tokens).map((t) => `Bearer ${t}`), fc.string().map((s) => s.replace(/[^\x20-\x7e]/g, ''))),
      'x-checksum-sha256': fc.oneof(fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => Buffer.from(b).toString('hex')), fc.string().map((s) => s.replace(/[^\x20-\x7e]/g, ''))),
      range: fc.constantFrom('bytes=0-0', 'bytes=-1', 'bytes=5-2', 'bytes=x', 'bytes=0-999999999'),
      accept: fc.constantFrom('text/event-stream', '*/*', 'application/json'),
    },
    { requiredKeys: [] },
  );
  await fc.assert(
    fc.asyncProperty(fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'PATCH'), pathArb, headersArb, bodyArb, async (method, p, headers, body) => {
      const hdrs: Record<string, string> = { ...headers };
      if (body) hdrs['content-type'] = body.type;
      // A live log stream of a running build would not end by itself.
      if (hdrs.accept === 'text/event-stream') delete hdrs.accept;
      const res = await rawRequest(h.url, method, p.replace(/follow=1/g, ''), hdrs, method === 'GET' ? undefined : body?.data);
      expect(res.status, `${method} ${p}`).toBeLessThan(500);
      if (res.status >= 400) {
        const parsed = JSON.parse(res.body.toString('utf8')) as { error?: { code?: string; message?: unknown } };
        expect(known.has(parsed.error?.code ?? ''), `${method} ${p} → ${res.status} ${res.body.toString('utf8').slice(0, 200)}`).toBe(true);
        expect(typeof parsed.error?.message).toBe('string');
      }
    }),
    { numRuns: 400 },
  );
  // Still healthy afterwards.
  expect((await h.req('GET', '/readyz')).status).toBe(200);
});
