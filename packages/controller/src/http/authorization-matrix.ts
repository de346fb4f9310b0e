/**
 * The authorization matrix (issue 9, design rule 20): for every route
 * the controller registers, what each kind of credential gets. It is
 * written out by hand, apart from the routes' own declarations (`config.auth`,
 * checked by access.ts), and `test/http/authorization-matrix.test.ts` walks
 * every route the app actually registered against it: a route without a
 * row, or a cell that behaves otherwise, fails the test. HEAD routes follow
 * their GET row.
 *
 * Columns, in order (`CREDENTIAL_CASES`):
 *
 * | # | case | what is presented |
 * |---|---|---|
 * | 0 | none | no Authorization header |
 * | 1 | garbage | `Bearer` and a random string |
 * | 2 | api | a valid API token |
 * | 3 | apiRevoked | a revoked API token |
 * | 4 | enrollment | a valid enrollment token |
 * | 5 | enrollmentExpired | an expired enrollment token |
 * | 6 | enrollmentUsedUp | an enrollment token with no uses left |
 * | 7 | enrollmentRevoked | a revoked enrollment token |
 * | 8 | accessThis | the access token of the worker in the path |
 * | 9 | accessOther | another worker's access token |
 * | 10 | accessExpired | an expired access token |
 * | 11 | accessRotated | an access token replaced by a re-registration |
 * | 12 | secretRight | the worker's secret (in a registration body; as a bearer elsewhere) |
 * | 13 | secretWrong | a wrong worker secret |
 * | 14 | buildThis | the build token of the path's build and its current attempt |
 * | 15 | buildOther | another build's token |
 * | 16 | buildOldAttempt | the path's build, an earlier attempt |
 * | 17 | buildForged | the path's build and attempt with a forged MAC |
 *
 * Cells: `P` passes authentication and authorization (the route's own
 * answer follows: 200, or 400/404 for the test's harmless probe), `I` 401
 * TOKEN_INVALID, `E` 401 TOKEN_EXPIRED, `F` 403 FORBIDDEN, `L` 409
 * LEASE_LOST (a build token of an attempt that is no longer current).
 */

export const CREDENTIAL_CASES = [
  'none',
  'garbage',
  'api',
  'apiRevoked',
  'enrollment',
  'enrollmentExpired',
  'enrollmentUsedUp',
  'enrollmentRevoked',
  'accessThis',
  'accessOther',
  'accessExpired',
  'accessRotated',
  'secretRight',
  'secretWrong',
  'buildThis',
  'buildOther',
  'buildOldAttempt',
  'buildForged',
] as const;
export type CredentialCase = (typeof CREDENTIAL_CASES)[number];

/** A cell: P pass, I 401 TOKEN_INVALID, E 401 TOKEN_EXPIRED, F 403 FORBIDDEN, L 409 LEASE_LOST. */
export type Cell = 'P' | 'I' | 'E' | 'F' | 'L';

//                        cases: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17
const PUBLIC /*             */ = 'P P P P P P P P P P P  P  P  P  P  P  P  P';
const API /*                */ = 'I I P I I I I I I I I  I  I  I  I  I  I  I';
const ACCESS /*             */ = 'I I I I I I I I P F E  I  I  I  I  I  I  I';
const REGISTER /*           */ = 'I I I I P E I I I I I  I  P  I  I  I  I  I';
const BUILD /*              */ = 'I I I I I I I I I I I  I  I  I  P  F  L  I';

/**
 * One row per registered route (`METHOD url` as registered, `:param` and
 * `*` included). `GET {dashboard file}` stands for each built file of the
 * dashboard, whose names carry content hashes.
 */
export const AUTHORIZATION_MATRIX: Readonly<Record<string, string>> = {
  'GET /healthz': PUBLIC,
  'GET /readyz': PUBLIC,
  'GET /metrics': PUBLIC,
  'GET /openapi.json': PUBLIC,
  'GET /favicon.ico': PUBLIC,
  'GET /': PUBLIC,
  'GET /builds': PUBLIC,
  'GET /builds/:id': PUBLIC,
  'GET /workers': PUBLIC,
  'GET /workers/:id': PUBLIC,
  'GET /queue': PUBLIC,
  'GET /tokens': PUBLIC,
  'GET /webhooks': PUBLIC,
  'GET /webhooks/:id': PUBLIC,
  'GET {dashboard file}': PUBLIC,

  'POST /api/v1/workers/register': REGISTER,
  'POST /api/v1/workers/:id/poll': ACCESS,
  'POST /api/v1/workers/:id/heartbeat': ACCESS,

  'GET /api/v1/workers': API,
  'GET /api/v1/workers/:id': API,
  'POST /api/v1/workers/:id/drain': API,
  'DELETE /api/v1/workers/:id': API,
  'POST /api/v1/enrollment-tokens': API,
  'POST /api/v1/workers/:id/resume': API,
  'GET /api/v1/enrollment-tokens': API,
  'DELETE /api/v1/enrollment-tokens/:id': API,

  'POST /api/v1/builds': API,
  'GET /api/v1/builds': API,
  'GET /api/v1/builds/:id': API,
  'GET /api/v1/builds/:id/logs': API,
  'GET /api/v1/builds/:id/artifacts': API,
  'GET /api/v1/builds/:id/artifacts/*': API,
  'POST /api/v1/builds/:id/cancel': API,
  'POST /api/v1/builds/:id/retry': API,
  'POST /api/v1/builds/:id/keep': API,

  'GET /api/v1/events': API,
  'GET /api/v1/stats': API,

  'POST /api/v1/webhooks': API,
  'GET /api/v1/webhooks': API,
  'DELETE /api/v1/webhooks/:id': API,
  'GET /api/v1/webhooks/:id/deliveries': API,

  'GET /api/v1/builds/:id/source': BUILD,
  'POST /api/v1/builds/:id/start': BUILD,
  'POST /api/v1/builds/:id/logs': BUILD,
  'PUT /api/v1/builds/:id/artifacts/*': BUILD,
  'POST /api/v1/builds/:id/finish': BUILD,
  // Issue 13.
  'POST /api/v1/workers/:id/deregister': ACCESS,
  'PUT /api/v1/secrets/:name': API,
  'GET /api/v1/secrets': API,
  'GET /api/v1/secrets/:name': API,
  'DELETE /api/v1/secrets/:name': API,
  'GET /api/v1/secrets/:name/handouts': API,
  'GET /api/v1/caches': API,
  'DELETE /api/v1/caches/:id': API,
  'GET /api/v1/builds/:id/secrets': BUILD,
  'GET /api/v1/builds/:id/cache': BUILD,
  'GET /api/v1/builds/:id/cache/:sha256': BUILD,
  'PUT /api/v1/builds/:id/cache': BUILD,
};

/** The row of `route` as cells by case; undefined when the matrix has no row. */
export function matrixRow(route: string): Record<CredentialCase, Cell> | undefined {
  const row = AUTHORIZATION_MATRIX[route];
  if (row === undefined) return undefined;
  const cells = row.split(/\s+/) as Cell[];
  if (cells.length !== CREDENTIAL_CASES.length) throw new Error(`matrix row ${route} has ${cells.length} cells, not ${CREDENTIAL_CASES.length}`);
  return Object.fromEntries(CREDENTIAL_CASES.map((c, i) => [c, cells[i]!])) as Record<CredentialCase, Cell>;
}
