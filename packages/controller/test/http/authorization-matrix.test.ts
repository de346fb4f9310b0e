/**
 * Walks every route the app registered against the authorization matrix
 * (src/http/authorization-matrix.ts) with every kind of credential: each
 * cell's status and error code, and nothing stored changed. A route without
 * a row fails. The probe of each route is harmless when it passes (an
 * unknown id, an invalid body or a read), so a credential that wrongly got
 * in shows as a 200/400/404 where the matrix says 401/403/409.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadDashboard } from '@buildfleet/dashboard';
import { CREDENTIAL_CASES, matrixRow, type Cell, type CredentialCase } from '../../src/http/authorization-matrix.js';
import { startWorld, type World } from './world.js';

let w: World;
beforeAll(async () => {
  w = await startWorld();
});
afterAll(async () => {
  await w?.close();
});

interface Probe {
  path: string;
  body?: unknown;
  /** Raw body with its content type (instead of JSON). */
  raw?: { type: string; data: string };
  headers?: Record<string, string>;
  /** The answer when the credential passes. */
  pass: { status: number; code?: string };
}

/** A request for `method url` that changes nothing even when it passes, and what it answers then. */
function probe(method: string, url: string, c: CredentialCase): Probe {
  const A = w.workerA.workerId;
  const P = w.buildP.id;
  const id = (kind: 'worker' | 'build' | 'other') => (kind === 'worker' ? A : kind === 'build' ? P : 'no-such-id');
  const key = `${method} ${url}`;
  // An older attempt writes as itself (a body naming another attempt is 403 before the lease is looked at).
  const attempt = c === 'buildOldAttempt' ? 1 : 2;
  switch (key) {
    case 'POST /api/v1/workers/register': {
      const bad = { name: 'probe', labels: [], maxConcurrentBuilds: 0, version: 't' };
      const secret = c === 'secretRight' || c === 'secretWrong';
      return { path: '/api/v1/workers/register', body: secret ? { ...bad, workerId: A, workerSecret: w.bearer[c] } : bad, pass: { status: 400, code: 'VALIDATION_FAILED' } };
    }
    case 'POST /api/v1/workers/:id/poll':
      return { path: `/api/v1/workers/${A}/poll?waitMs=0`, body: { freeSlots: -1, activeBuildIds: [] }, pass: { status: 400, code: 'VALIDATION_FAILED' } };
    case 'POST /api/v1/workers/:id/heartbeat':
      return { path: `/api/v1/workers/${A}/heartbeat`, body: { activeBuildIds: 'x' }, pass: { status: 400, code: 'VALIDATION_FAILED' } };
    case 'GET /api/v1/workers/:id':
      return { path: `/api/v1/workers/${A}`, pass: { status: 200 } };
    case 'POST /api/v1/workers/:id/drain':
    case 'POST /api/v1/workers/:id/resume':
    case 'DELETE /api/v1/workers/:id':
      return { path: url.replace(':id', id('other')), pass: { status: 404, code: 'WORKER_NOT_FOUND' } };
    case 'POST /api/v1/enrollment-tokens':
      return { path: url, body: { maxUses: 0 }, pass: { status: 400, code: 'VALIDATION_FAILED' } };
    case 'DELETE /api/v1/enrollment-tokens/:id':
      return { path: url.replace(':id', id('other')), pass: { status: 404, code: 'NOT_FOUND' } };
    case 'POST /api/v1/builds':
      return { path: url, body: { script: 'x' }, pass: { status: 400, code: 'VALIDATION_FAILED' } };
    case 'GET /api/v1/builds/:id':
    case 'GET /api/v1/builds/:id/logs':
    case 'GET /api/v1/builds/:id/artifacts':
      return { path: url.replace(':id', P), pass: { status: 200 } };
    case 'GET /api/v1/builds/:id/artifacts/*':
      return { path: `/api/v1/builds/${P}/artifacts/out.txt`, pass: { status: 200 } };
    case 'POST /api/v1/builds/:id/cancel':
    case 'POST /api/v1/builds/:id/retry':
      return { path: url.replace(':id', id('other')), pass: { status: 404, code: 'BUILD_NOT_FOUND' } };
    case 'POST /api/v1/builds/:id/keep':
      return { path: url.replace(':id', id('other')), body: { keep: true }, pass: { status: 404, code: 'BUILD_NOT_FOUND' } };
    case 'POST /api/v1/webhooks':
      return { path: url, body: { url: 1 }, pass: { status: 400, code: 'VALIDATION_FAILED' } };
    case 'DELETE /api/v1/webhooks/:id':
    case 'GET /api/v1/webhooks/:id/deliveries':
      return { path: url.replace(':id', id('other')), pass: { status: 404, code: 'NOT_FOUND' } };
    case 'GET /api/v1/builds/:id/source':
      return { path: `/api/v1/builds/${P}/source`, pass: { status: 200 } };
    case 'POST /api/v1/builds/:id/start':
      return { path: `/api/v1/builds/${P}/start`, body: { attempt: 'two' }, pass: { status: 400, code: 'VALIDATION_FAILED' } };
    case 'POST /api/v1/builds/:id/logs':
      return { path: `/api/v1/builds/${P}/logs`, body: { attempt, seq: -1, offset: 0, data: 'x' }, pass: { status: 400, code: 'VALIDATION_FAILED' } };
    case 'PUT /api/v1/builds/:id/artifacts/*':
      return {
        path: `/api/v1/builds/${P}/artifacts/probe.txt`,
        raw: { type: 'application/octet-stream', data: 'x' },
        headers: { 'x-checksum-sha256': 'not-a-checksum' },
        pass: { status: 400, code: 'VALIDATION_FAILED' },
      };
    case 'POST /api/v1/builds/:id/finish':
      return { path: `/api/v1/builds/${P}/finish`, body: { attempt, outcome: 'nope' }, pass: { status: 400, code: 'VALIDATION_FAILED' } };
    // Issue 13.
    case 'POST /api/v1/workers/:id/deregister':
      // Worker A holds build P: refused, nothing deleted.
      return { path: `/api/v1/workers/${A}/deregister`, pass: { status: 409, code: 'INVALID_TRANSITION' } };
    case 'PUT /api/v1/secrets/:name':
      return { path: '/api/v1/secrets/PROBE', body: { value: '' }, pass: { status: 400, code: 'VALIDATION_FAILED' } };
    case 'GET /api/v1/secrets/:name':
    case 'DELETE /api/v1/secrets/:name':
      return { path: '/api/v1/secrets/NO_SUCH_SECRET', pass: { status: 404, code: 'NOT_FOUND' } };
    case 'GET /api/v1/secrets/:name/handouts':
      return { path: '/api/v1/secrets/NO_SUCH_SECRET/handouts', pass: { status: 200 } };
    case 'DELETE /api/v1/caches/:id':
      return { path: url.replace(':id', id('other')), pass: { status: 404, code: 'NOT_FOUND' } };
    case 'GET /api/v1/builds/:id/secrets':
      // P asks for no secrets: an empty answer, no hand-out recorded.
      return { path: `/api/v1/builds/${P}/secrets`, pass: { status: 200 } };
    case 'GET /api/v1/builds/:id/cache':
      return { path: `/api/v1/builds/${P}/cache`, pass: { status: 400, code: 'VALIDATION_FAILED' } };
    case 'GET /api/v1/builds/:id/cache/:sha256':
      return { path: `/api/v1/builds/${P}/cache/${'0'.repeat(64)}`, pass: { status: 404, code: 'NOT_FOUND' } };
    case 'PUT /api/v1/builds/:id/cache':
      return {
        path: `/api/v1/builds/${P}/cache?key=probe`,
        raw: { type: 'application/octet-stream', data: 'x' },
        headers: { 'x-checksum-sha256': 'not-a-checksum' },
        pass: { status: 400, code: 'VALIDATION_FAILED' },
      };
    default:
      // Reads: the dashboard's pages and files, operations, lists.
      if (method === 'GET') return { path: url.replace(':id', A), pass: { status: url === '/favicon.ico' ? 204 : 200 } };
      throw new Error(`no probe for ${key}: add one (harmless when it passes) beside its matrix row`);
  }
}

const EXPECTED: Record<Exclude<Cell, 'P'>, { status: number; code: string }> = {
  I: { status: 401, code: 'TOKEN_INVALID' },
  E: { status: 401, code: 'TOKEN_EXPIRED' },
  F: { status: 403, code: 'FORBIDDEN' },
  L: { status: 409, code: 'LEASE_LOST' },
};

async function send(method: string, p: Probe, c: CredentialCase): Promise<{ status: number; code?: string }> {
  const headers: Record<string, string> = { ...p.headers };
  // Outside registration a worker secret is shown as a bearer; inside, it is in the body.
  const secretInBody = p.path === '/api/v1/workers/register' && (c === 'secretRight' || c === 'secretWrong');
  const bearer = secretInBody ? undefined : w.bearer[c];
  if (bearer !== undefined) headers.authorization = `Bearer ${bearer}`;
  let body: string | undefined;
  if (p.raw) {
    headers['content-type'] = p.raw.type;
    body = p.raw.data;
  } else if (p.body !== undefined) {
    headers['content-type'] = 'application/json';
    body = JSON.stringify(p.body);
  }
  const res = await fetch(w.h.url + p.path, { method, headers, ...(body !== undefined && method !== 'GET' && method !== 'HEAD' ? { body } : {}) });
  if (method === 'HEAD' || res.status < 400) {
    await res.body?.cancel();
    return { status: res.status };
  }
  const text = await res.text();
  return { status: res.status, code: (JSON.parse(text) as { error: { code: string } }).error.code };
}

describe('authorization matrix', () => {
  it('every registered route has a row; every cell answers as written and changes nothing', { timeout: 300_000 }, async () => {
    const dashboardFiles = new Set([...loadDashboard().files.values()].map((f) => f.urlPath));
    const routes = w.h.ctl.app.buildfleet.routes;
    const missing: string[] = [];
    const wrong: string[] = [];
    let cells = 0;
    const before = await w.snapshot();
    for (const r of routes) {
      const method = r.method === 'HEAD' ? 'GET' : r.method;
      const key = `${method} ${dashboardFiles.has(r.url) ? '{dashboard file}' : r.url}`;
      const row = matrixRow(key);
      if (!row) {
        missing.push(key);
        continue;
      }
      // A live event stream never ends; its HEAD would wait for it.
      if (r.method === 'HEAD' && r.url === '/api/v1/events') continue;
      for (const c of CREDENTIAL_CASES) {
        const p = probe(method, r.url, c);
        const want = row[c] === 'P' ? p.pass : EXPECTED[row[c]];
        const got = await send(r.method, p, c);
        cells++;
        const expected = r.method === 'HEAD' ? { status: want.status } : want;
        const actual = r.method === 'HEAD' || expected.code === undefined ? { status: got.status } : got;
        if (JSON.stringify(actual) !== JSON.stringify(expected)) wrong.push(`${r.method} ${r.url} × ${c}: want ${JSON.stringify(expected)}, got ${JSON.stringify(got)}`);
        const after = await w.snapshot();
        if (after !== before) {
          wrong.push(`${r.method} ${r.url} × ${c} changed stored data`);
          throw new Error(wrong.join('\n'));
        }
      }
    }
    expect(missing, 'routes without a row in AUTHORIZATION_MATRIX').toEqual([]);
    expect(wrong).toEqual([]);
    console.log(`authorization matrix: ${routes.length} routes × ${CREDENTIAL_CASES.length} credential kinds, ${cells} cells checked`);
    expect(cells).toBeGreaterThan(500);
  });
});
