/**
 * Fail closed (design rule 20): a route that does not declare which
 * credentials it accepts stops the controller from starting, and the
 * declarations are what the OpenAPI description publishes.
 */
import { DASHBOARD_ROUTES, loadDashboard } from '@buildfleet/dashboard';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fastify, { type FastifyInstance } from 'fastify';
import { FakeClock, systemClock } from '@buildfleet/protocol';
import { UndeclaredRouteError, checkRouteAuth, installAccessCheck, schemeName } from '../../src/http/access.js';
import type { AppContext } from '../../src/http/context.js';
import { workerRoutes } from '../../src/http/routes-workers.js';
import { buildRoutes } from '../../src/http/routes-builds.js';
import { buildRunRoutes } from '../../src/http/routes-build-run.js';
import { opsRoutes } from '../../src/http/routes-ops.js';
import { dashboardApiRoutes } from '../../src/http/routes-dashboard.js';
import { loadControllerConfig } from '../../src/config.js';
import { API_TOKEN, startHarness, type Harness } from './harness.js';

describe('route declarations', () => {
  it('accepts public and known credential kinds; refuses a missing, empty or unknown declaration', () => {
    expect(checkRouteAuth('GET', '/x', 'public')).toBe('public');
    expect(checkRouteAuth('GET', '/x', ['api', 'build'])).toEqual(['api', 'build']);
    expect(() => checkRouteAuth('GET', '/x', undefined)).toThrow(UndeclaredRouteError);
    expect(() => checkRouteAuth('GET', '/x', [])).toThrow(/empty credential list/);
    expect(() => checkRouteAuth('GET', '/x', ['admin'])).toThrow(/unknown credential kind "admin"/);
    expect(() => checkRouteAuth('GET', '/x', 'none')).toThrow(UndeclaredRouteError);
  });

  it('a route added without a declaration is refused when it is registered', async () => {
    const app = fastify();
    installAccessCheck(app);
    app.get('/declared', { config: { auth: 'public' } }, async () => 'ok');
    expect(() => app.get('/open', async () => 'oops')).toThrow(/GET \/open declares no credentials/);
    await app.close();
  });

  /** Registers `routes` on a fresh checked app, removing the declaration of the `strip`-th route. */
  function register(routes: (app: FastifyInstance, ctx: AppContext) => void, strip: number): number {
    const app = fastify();
    const seen = installAccessCheck(app);
    const notifier = { subscribe: () => () => {}, notify: async () => {} };
    const ctx = { config: loadControllerConfig({}, { dataDir: '/nonexistent' }), store: {}, notifier, clock: systemClock } as unknown as AppContext;
    let n = 0;
    const proxy: FastifyInstance = new Proxy(app, {
      get(target, prop, receiver) {
        if (prop === 'withTypeProvider') return () => proxy;
        if (prop === 'get' || prop === 'post' || prop === 'put' || prop === 'delete') {
          return (url: string, opts: { config?: object }, handler: unknown) => {
            const o = n++ === strip ? { ...opts, config: { ...opts.config, auth: undefined } } : opts;
            return (target[prop] as (...a: unknown[]) => unknown).call(target, url, o, handler);
          };
        }
        const v = Reflect.get(target, prop, receiver) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
    routes(proxy, ctx);
    void app.close();
    return seen.filter((r) => r.method !== 'HEAD').length;
  }

  for (const [name, routes] of [
    ['worker routes', workerRoutes],
    ['build routes', buildRoutes],
    ['build-token routes', buildRunRoutes],
    ['webhook and keep routes', opsRoutes],
    ["dashboard's API routes", dashboardApiRoutes],
  ] as const) {
    it(`removing the declaration of any one of the ${name} refuses to start`, () => {
      const count = register(routes, -1);
      expect(count).toBeGreaterThanOrEqual(3);
      for (let i = 0; i < count; i++) expect(() => register(routes, i), `route #${i}`).toThrow(UndeclaredRouteError);
    });
  }
});

describe('the OpenAPI description', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => {
    await h?.close();
  });

  it('has a scheme per bearer kind and, per operation, exactly the declared credentials', async () => {
    const doc = (await (await h.req('GET', '/openapi.json')).json()) as {
      security?: unknown;
      components: { securitySchemes: Record<string, { type: string; scheme: string }> };
      paths: Record<string, Record<string, { security: Array<Record<string, string[]>>; 'x-credentials': string[] }>>;
    };
    expect(doc.security).toBeUndefined();
    expect(Object.keys(doc.components.securitySchemes).sort()).toEqual(['accessToken', 'apiToken', 'buildToken', 'enrollmentToken']);
    // The dashboard's pages and files are public and not API operations.
    const dashboard = new Set<string>([...DASHBOARD_ROUTES, ...loadDashboard().files.keys()]);
    const routes = h.ctl.app.buildfleet.routes.filter((r) => r.method !== 'HEAD' && r.url !== '/openapi.json' && !dashboard.has(r.url) && r.url !== '/favicon.ico');
    expect(routes.length).toBeGreaterThan(25);
    for (const r of routes) {
      const path = r.url.replace(/:(\w+)/g, '{$1}').replace(/\*$/, '{*}');
      const op = doc.paths[path]?.[r.method.toLowerCase()];
      expect(op, `${r.method} ${r.url} in openapi.json`).toBeDefined();
      if (r.auth === 'public') {
        expect(op!.security).toEqual([]);
        expect(op!['x-credentials']).toEqual(['public']);
      } else {
        expect(op!['x-credentials']).toEqual([...r.auth]);
        const bearer = r.auth.filter((k) => k !== 'workerSecret').map((k) => ({ [schemeName(k)]: [] }));
        expect(op!.security).toEqual(r.auth.includes('workerSecret') ? [...bearer, {}] : bearer);
      }
    }
    expect(doc.paths['/api/v1/workers/{id}/drain']!.post!['x-credentials']).toEqual(['api']);
    expect(doc.paths['/api/v1/workers/register']!.post!['x-credentials']).toEqual(['enrollment', 'workerSecret']);
    expect(doc.paths['/healthz']!.get!.security).toEqual([]);
  });
});

describe('access-token routes', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => {
    await h?.close();
  });

  it("a garbage token is 401 even for an unknown worker; a well-formed unknown one (a deleted worker's) is 404", async () => {
    const poll = (id: string, token: string) => h.req('POST', `/api/v1/workers/${id}/poll?waitMs=0`, { token, json: { freeSlots: 1, activeBuildIds: [] } });
    for (const token of ['garbage', 'bfw_short', `bfa_${'a'.repeat(43)}`, `bfw_${'a'.repeat(42)}!`]) {
      const res = await poll('no-such-worker', token);
      expect({ token, status: res.status, code: ((await res.json()) as { error: { code: string } }).error.code }).toEqual({ token, status: 401, code: 'TOKEN_INVALID' });
    }
    const res = await poll('no-such-worker', `bfw_${'a'.repeat(43)}`);
    expect(res.status).toBe(404);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('WORKER_NOT_FOUND');
  });
});

describe('check order of registration (401 before 400, nothing used up)', () => {
  let h: Harness;
  // Moved on purpose only: an enrollment token is created unexpired (the controller refuses a past expiresAt), then expires.
  const clock = new FakeClock();
  beforeAll(async () => {
    h = await startHarness({}, { clock });
  });
  afterAll(async () => {
    await h?.close();
  });
  const code = async (res: Response) => ({ status: res.status, code: ((await res.json()) as { error: { code: string } }).error.code });
  const token = async (json: Record<string, unknown>) =>
    (await (await h.req('POST', '/api/v1/enrollment-tokens', { token: API_TOKEN, json })).json()) as { id: string; token: string };
  const uses = async (id: string) =>
    ((await (await h.req('GET', '/api/v1/enrollment-tokens', { token: API_TOKEN })).json()) as { enrollmentTokens: Array<{ id: string; uses: number }> }).enrollmentTokens.find((t) => t.id === id)!.uses;

  it('a new registration with a bad body and a bad enrollment token is 401; with a good token 400 and no use taken', async () => {
    const once = await token({ maxUses: 1 });
    const expired = await token({ expiresAt: new Date(clock.now() + 1000).toISOString() });
    await clock.advance(1001);
    const revoked = await token({});
    await h.req('DELETE', `/api/v1/enrollment-tokens/${revoked.id}`, { token: API_TOKEN });
    const usedUp = await token({ maxUses: 1 });
    expect((await h.register({}, usedUp.token)).status).toBe(201);
    const bad = { labels: 'not-an-array' };
    for (const [t, want] of [
      ['bfe_unknown-token-00000000000000000', 'TOKEN_INVALID'],
      [expired.token, 'TOKEN_EXPIRED'],
      [revoked.token, 'TOKEN_INVALID'],
      [usedUp.token, 'TOKEN_INVALID'],
      [API_TOKEN, 'TOKEN_INVALID'],
    ] as const) {
      expect({ t, ...(await code(await h.register(bad, t))) }).toEqual({ t, status: 401, code: want });
    }
    expect(await code(await h.req('POST', '/api/v1/workers/register', { body: '{broken', headers: { 'content-type': 'application/json' } }))).toEqual({ status: 401, code: 'TOKEN_INVALID' });
    expect(await code(await h.register(bad, once.token))).toEqual({ status: 400, code: 'VALIDATION_FAILED' });
    expect(await uses(once.id)).toBe(0);
    expect((await h.register({}, once.token)).status).toBe(201);
  });

  it('a re-registration with a bad body: unknown worker 404, wrong secret 401, right secret 400', async () => {
    const reg = await h.registerOk();
    const bad = { maxConcurrentBuilds: 0 };
    expect(await code(await h.register({ ...bad, workerId: 'no-such-worker', workerSecret: 'bfs_x' }, 'garbage'))).toEqual({ status: 404, code: 'WORKER_NOT_FOUND' });
    expect(await code(await h.register({ ...bad, workerId: reg.workerId, workerSecret: 'bfs_wrong' }, 'garbage'))).toEqual({ status: 401, code: 'TOKEN_INVALID' });
    expect(await code(await h.register({ ...bad, workerId: reg.workerId, workerSecret: reg.workerSecret }, 'garbage'))).toEqual({ status: 400, code: 'VALIDATION_FAILED' });
    // The access token did not rotate.
    expect((await h.req('POST', `/api/v1/workers/${reg.workerId}/heartbeat`, { token: reg.accessToken, json: { activeBuildIds: [] } })).status).toBe(200);
  });

  it('a registrationId is bound to its enrollment token; its own single-use token may retry it', async () => {
    const once = await token({ maxUses: 1 });
    const other = await token({});
    const registrationId = crypto.randomUUID();
    const first = (await (await h.register({ registrationId }, once.token)).json()) as { workerId: string; accessToken: string };
    expect(await code(await h.register({ registrationId }, other.token))).toEqual({ status: 403, code: 'FORBIDDEN' });
    expect(await uses(other.id)).toBe(0);
    // The pending registration was not taken over: its credentials still work once retried with its own token.
    const retry = await h.register({ registrationId }, once.token);
    expect(retry.status).toBe(201);
    expect(((await retry.json()) as { workerId: string }).workerId).toBe(first.workerId);
  });
});
