/**
 * Fail closed (design rule 20): every route declares which credentials
 * it accepts, as `config: { auth: [...] }` (or `auth: 'public'`), and the
 * controller refuses to start when a route declares none. The same
 * declaration is what the OpenAPI description publishes: one security scheme
 * per credential kind, and per operation the kinds it takes.
 *
 * Credential kinds are docs/protocol.md's ("Credentials"): `api` (bfa_, users),
 * `enrollment` (bfe_, new workers), `workerSecret` (bfs_, in the
 * registration body), `access` (bfw_, a worker's poll and heartbeat),
 * `build` (bfb_, one attempt of one build).
 */
import type { FastifyInstance } from 'fastify';
import { TOKEN_PREFIX, type TokenKind } from '@buildfleet/protocol';

/** What a route accepts: `'public'` (no credential at all) or one or more credential kinds. */
export type RouteAuth = 'public' | readonly TokenKind[];

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Required on every route (checked at registration): who may call it. */
    auth?: RouteAuth;
  }
}

const KINDS = Object.keys(TOKEN_PREFIX) as TokenKind[];

/** Thrown at registration for a route without a valid `config.auth`: the controller does not start. */
export class UndeclaredRouteError extends Error {
  constructor(method: string, url: string, why: string) {
    super(`route ${method} ${url} ${why}: every route must declare config.auth ('public' or credential kinds ${KINDS.join(', ')}); refusing to start`);
    this.name = 'UndeclaredRouteError';
  }
}

/**
 * The route's declaration, validated. Throws `UndeclaredRouteError` when
 * `auth` is missing, empty, or names an unknown kind.
 */
export function checkRouteAuth(method: string | string[], url: string, auth: unknown): RouteAuth {
  const m = Array.isArray(method) ? method.join(',') : method;
  if (auth === 'public') return auth;
  if (auth === undefined) throw new UndeclaredRouteError(m, url, 'declares no credentials');
  if (!Array.isArray(auth) || auth.length === 0) throw new UndeclaredRouteError(m, url, 'declares an empty credential list');
  for (const k of auth) {
    if (!KINDS.includes(k as TokenKind)) throw new UndeclaredRouteError(m, url, `declares an unknown credential kind ${JSON.stringify(k)}`);
  }
  return auth as TokenKind[];
}

/** Kinds presented as `Authorization: Bearer`; the worker secret travels in the registration body instead. */
const BEARER_KINDS = KINDS.filter((k) => k !== 'workerSecret');

const DESCRIPTIONS: Record<TokenKind, string> = {
  api: `API token (${TOKEN_PREFIX.api}…): users, the CLI and the dashboard`,
  enrollment: `Enrollment token (${TOKEN_PREFIX.enrollment}…): registers a new worker`,
  workerSecret: `Worker secret (${TOKEN_PREFIX.workerSecret}…): sent as workerSecret with workerId in the registration body`,
  access: `Worker access token (${TOKEN_PREFIX.access}…): one worker's poll and heartbeat`,
  build: `Build token (${TOKEN_PREFIX.build}<build>.<attempt>.<mac>): one attempt of one build`,
};

/** Name of a kind's scheme in `components.securitySchemes`. */
export function schemeName(kind: TokenKind): string {
  return `${kind}Token`;
}

/**
 * `components.securitySchemes`: one bearer scheme per header-borne kind.
 * OpenAPI 3.0 has no scheme for a credential in the body, so the worker
 * secret has none; operations name every kind in `x-credentials`.
 */
export function securitySchemes(): Record<string, { type: 'http'; scheme: 'bearer'; description: string }> {
  return Object.fromEntries(BEARER_KINDS.map((k) => [schemeName(k), { type: 'http', scheme: 'bearer', description: DESCRIPTIONS[k] }]));
}

/**
 * An operation's OpenAPI `security` (any one of its bearer kinds; `{}`
 * when the worker secret in the body is an alternative; `[]` for a public
 * route) and `x-credentials` (every kind it accepts, or `['public']`).
 */
export function operationSecurity(auth: RouteAuth): { security: Array<Record<string, string[]>>; 'x-credentials': string[] } {
  if (auth === 'public') return { security: [], 'x-credentials': ['public'] };
  const security: Array<Record<string, string[]>> = auth.filter((k) => k !== 'workerSecret').map((k) => ({ [schemeName(k)]: [] }));
  if (auth.includes('workerSecret')) security.push({});
  return { security, 'x-credentials': [...auth] };
}

/** A route as registered (one per method; fastify adds HEAD for each GET). */
export interface RegisteredRoute {
  method: string;
  url: string;
  auth: RouteAuth;
}

/**
 * Adds the onRoute check to `app` (call it before any route is added):
 * a route without a valid `config.auth` throws `UndeclaredRouteError` when it
 * is registered, so the app never starts; a declared one gets its OpenAPI
 * `security` and `x-credentials`. Returns the list it fills with every
 * registered route.
 */
export function installAccessCheck(app: FastifyInstance): RegisteredRoute[] {
  const routes: RegisteredRoute[] = [];
  app.addHook('onRoute', (route) => {
    const url = route.url ?? route.path;
    const auth = checkRouteAuth(route.method, url, route.config?.auth);
    route.schema = { ...(route.schema ?? {}), ...operationSecurity(auth) };
    for (const method of [route.method].flat()) routes.push({ method, url, auth });
  });
  return routes;
}
