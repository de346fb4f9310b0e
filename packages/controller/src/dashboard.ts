/**
 * Serves the dashboard (`@buildfleet/dashboard`): `index.html` for each of
 * the app's own addresses (the browser routes them; reload, back/forward
 * and shared links work), and the built files by exact name. Hashed assets
 * are cacheable for a year (`immutable`); `index.html` is revalidated every
 * time, so a new build reaches browsers at once. Public: the page holds no
 * data, it asks for the API token and sends it with each API call.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { DASHBOARD_ROUTES, loadDashboard, negotiate, type DashboardFile } from '@buildfleet/dashboard';

const YEAR_SECONDS = 365 * 24 * 3600;

function send(request: FastifyRequest, reply: FastifyReply, f: DashboardFile): FastifyReply {
  const { body, encoding } = negotiate(f, request.headers['accept-encoding']);
  reply
    .type(f.contentType)
    .header('cache-control', f.immutable ? `public, max-age=${YEAR_SECONDS}, immutable` : 'no-cache')
    .header('x-content-type-options', 'nosniff')
    .header('vary', 'accept-encoding');
  if (f.contentType.startsWith('text/html')) reply.header('x-frame-options', 'DENY');
  if (encoding) reply.header('content-encoding', encoding);
  return reply.send(body);
}

/** Registers the dashboard's routes on `app` (outside `/api/v1`). `dir`: the built app (tests). */
export function dashboardRoutes(app: FastifyInstance, dir?: string): void {
  const bundle = loadDashboard(dir);
  const hide = { hide: true };
  for (const url of DASHBOARD_ROUTES) {
    app.get(url, { config: { auth: 'public' }, schema: hide }, async (request, reply) => send(request, reply, bundle.index));
  }
  for (const f of bundle.files.values()) {
    app.get(f.urlPath, { config: { auth: 'public' }, schema: hide }, async (request, reply) => send(request, reply, f));
  }
}
