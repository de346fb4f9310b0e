/**
 * The dashboard's built files, for the controller to serve. The browser app
 * lives in `web/` and is bundled by Vite at `npm run build` time into
 * `dist/web/`: `index.html`, hashed (immutable) scripts and styles under
 * `assets/`, and a favicon. Nothing in it is fetched from another origin,
 * and it has no inline script or style (it runs under `default-src 'self'`).
 *
 * The controller answers the app's own addresses with `index.html` (the app
 * routes in the browser) and serves each file here by its exact name; there
 * is no path resolution, so no request can reach another file.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { brotliCompressSync, constants as zlib, gzipSync } from 'node:zlib';

/**
 * The addresses the app routes itself (find-my-way syntax); the controller
 * answers each with `index.html`. The API stays under `/api/v1`.
 */
export const DASHBOARD_ROUTES = ['/', '/builds', '/builds/:id', '/workers', '/workers/:id', '/queue', '/tokens', '/webhooks', '/webhooks/:id'] as const;

export interface DashboardFile {
  /** URL path, e.g. `/assets/index-Cpxl7Qwa.js`. */
  urlPath: string;
  contentType: string;
  /** Whether the name carries a content hash: cacheable for a year, immutable. */
  immutable: boolean;
  body: Buffer;
  /** Pre-compressed copies (for `Accept-Encoding`), when smaller. */
  gzip?: Buffer;
  br?: Buffer;
}

export interface DashboardBundle {
  /** false when `npm run build` has not built the app: `index` then says so. */
  built: boolean;
  index: DashboardFile;
  /** Every other file by URL path. */
  files: ReadonlyMap<string, DashboardFile>;
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
  '.json': 'application/json; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
};

/** Where Vite writes the app: `<package>/dist/web` (the same from src/ and dist/). */
export const DEFAULT_DASHBOARD_DIR = fileURLToPath(new URL('../dist/web/', import.meta.url));

const NOT_BUILT = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>buildfleet</title></head>
<body><h1>buildfleet</h1><p>The dashboard is not built. Run <code>npm run build</code> and restart the controller.
The API is under <a href="/api/v1/builds">/api/v1</a>, described at <a href="/openapi.json">/openapi.json</a>.</p></body></html>
`;

function file(urlPath: string, body: Buffer, immutable: boolean): DashboardFile {
  const contentType = TYPES[path.extname(urlPath)] ?? 'application/octet-stream';
  const f: DashboardFile = { urlPath, contentType, immutable, body };
  if (/^(text\/|image\/svg|application\/json)/.test(contentType) && body.length > 1024) {
    const gz = gzipSync(body, { level: 9 });
    const br = brotliCompressSync(body, { params: { [zlib.BROTLI_PARAM_QUALITY]: 9, [zlib.BROTLI_PARAM_SIZE_HINT]: body.length } });
    if (gz.length < body.length) f.gzip = gz;
    if (br.length < body.length) f.br = br;
  }
  return f;
}

function walk(dir: string, base = ''): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const rel = base ? `${base}/${name}` : name;
    if (statSync(path.join(dir, name)).isDirectory()) out.push(...walk(path.join(dir, name), rel));
    else out.push(rel);
  }
  return out;
}

const cache = new Map<string, DashboardBundle>();

/**
 * Reads (once per directory, then from memory) and pre-compresses the built
 * app. A missing build gives `built: false` and an index page that says how
 * to build it. Throws only on an unreadable file.
 */
export function loadDashboard(dir: string = DEFAULT_DASHBOARD_DIR): DashboardBundle {
  const hit = cache.get(dir);
  if (hit) return hit;
  let bundle: DashboardBundle;
  if (!existsSync(path.join(dir, 'index.html'))) {
    bundle = { built: false, index: file('/index.html', Buffer.from(NOT_BUILT), false), files: new Map() };
  } else {
    const files = new Map<string, DashboardFile>();
    let index: DashboardFile | undefined;
    for (const rel of walk(dir)) {
      if (rel.endsWith('.map')) continue;
      const f = file(`/${rel}`, readFileSync(path.join(dir, rel)), rel.startsWith('assets/'));
      if (rel === 'index.html') index = f;
      else files.set(f.urlPath, f);
    }
    bundle = { built: true, index: index!, files };
  }
  cache.set(dir, bundle);
  return bundle;
}

/** The body to send for an `Accept-Encoding` header (RFC 9110 §12.5.3), with its `Content-Encoding` (none: identity). */
export function negotiate(f: DashboardFile, acceptEncoding: string | undefined): { body: Buffer; encoding?: 'br' | 'gzip' } {
  const accepted = new Set<string>();
  for (const item of (acceptEncoding ?? '').toLowerCase().split(',')) {
    const [name, ...params] = item.split(';').map((p) => p.trim());
    const q = params.find((p) => p.startsWith('q='));
    if (name && !(q && Number(q.slice(2)) === 0)) accepted.add(name);
  }
  if (f.br && accepted.has('br')) return { body: f.br, encoding: 'br' };
  if (f.gzip && accepted.has('gzip')) return { body: f.gzip, encoding: 'gzip' };
  return { body: f.body };
}
