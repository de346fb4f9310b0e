/** Path helpers: every path is under `/api/v1` (docs/protocol.md). */
import { hasUnsafeText } from './schemas.js';

export const API_PREFIX = '/api/v1';

export const paths = {
  register: () => `${API_PREFIX}/workers/register`,
  poll: (workerId: string, waitMs?: number) =>
    `${API_PREFIX}/workers/${enc(workerId)}/poll${waitMs === undefined ? '' : `?waitMs=${waitMs}`}`,
  heartbeat: (workerId: string) => `${API_PREFIX}/workers/${enc(workerId)}/heartbeat`,
  workers: () => `${API_PREFIX}/workers`,
  worker: (id: string) => `${API_PREFIX}/workers/${enc(id)}`,
  drain: (id: string) => `${API_PREFIX}/workers/${enc(id)}/drain`,
  resume: (id: string) => `${API_PREFIX}/workers/${enc(id)}/resume`,
  builds: () => `${API_PREFIX}/builds`,
  build: (id: string) => `${API_PREFIX}/builds/${enc(id)}`,
  cancel: (id: string) => `${API_PREFIX}/builds/${enc(id)}/cancel`,
  retry: (id: string) => `${API_PREFIX}/builds/${enc(id)}/retry`,
  source: (id: string) => `${API_PREFIX}/builds/${enc(id)}/source`,
  start: (id: string) => `${API_PREFIX}/builds/${enc(id)}/start`,
  logs: (id: string) => `${API_PREFIX}/builds/${enc(id)}/logs`,
  finish: (id: string) => `${API_PREFIX}/builds/${enc(id)}/finish`,
  artifacts: (id: string) => `${API_PREFIX}/builds/${enc(id)}/artifacts`,
  artifact: (id: string, name: string) => `${API_PREFIX}/builds/${enc(id)}/artifacts/${enc(name)}`,
  enrollmentTokens: () => `${API_PREFIX}/enrollment-tokens`,
  enrollmentToken: (id: string) => `${API_PREFIX}/enrollment-tokens/${enc(id)}`,
  events: () => `${API_PREFIX}/events`,
  stats: () => `${API_PREFIX}/stats`,
  // Issue 13.
  deregister: (workerId: string) => `${API_PREFIX}/workers/${enc(workerId)}/deregister`,
  secrets: () => `${API_PREFIX}/secrets`,
  secret: (name: string) => `${API_PREFIX}/secrets/${enc(name)}`,
  secretHandouts: (name: string) => `${API_PREFIX}/secrets/${enc(name)}/handouts`,
  buildSecrets: (id: string) => `${API_PREFIX}/builds/${enc(id)}/secrets`,
  buildCache: (id: string) => `${API_PREFIX}/builds/${enc(id)}/cache`,
  buildCacheArchive: (id: string, sha256: string) => `${API_PREFIX}/builds/${enc(id)}/cache/${enc(sha256)}`,
  caches: () => `${API_PREFIX}/caches`,
  cache: (id: string) => `${API_PREFIX}/caches/${enc(id)}`,
};

function enc(s: string): string {
  return encodeURIComponent(s);
}

/**
 * Checks an artifact name (a path relative to the workspace, `/`-separated):
 * returns a reason when it is empty, longer than 1000 characters, absolute,
 * or has an empty, `.` or `..` segment, a backslash, or a character of
 * `UNSAFE_TEXT_CHARS` (NUL and other control characters, U+202E and the
 * other invisible formatting characters); undefined when it is acceptable.
 */
export function artifactNameProblem(name: string): string | undefined {
  if (name.length === 0) return 'artifact name is empty';
  if (name.length > 1000) return 'artifact name is longer than 1000 characters';
  if (hasUnsafeText(name)) return 'artifact name contains a control or invisible formatting character (NUL, U+202E, …)';
  if (name.includes('\\')) return 'artifact name contains a backslash';
  if (name.startsWith('/') || /^[A-Za-z]:/.test(name)) return 'artifact name is absolute';
  for (const seg of name.split('/')) {
    if (seg === '..') return "artifact name has a '..' segment";
    if (seg === '' || seg === '.') return 'artifact name has an empty or "." segment';
  }
  return undefined;
}
