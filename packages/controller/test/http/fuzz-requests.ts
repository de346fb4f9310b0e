/**
 * fast-check arbitraries for the fuzz suite (fuzz.test.ts): malformed and
 * arbitrary requests against every route a running controller registered,
 * with every credential kind of the authorization matrix.
 *
 * A request that could change stored data (any method but GET and HEAD) is
 * always given one defect that docs/protocol.md says must refuse it, so the suite
 * can demand "a 4xx and nothing stored changed" of every one of them:
 * - a credential that can never pass the route (none, garbage, revoked,
 *   expired, used up, rotated, forged, an older attempt, or a kind the route
 *   does not take);
 * - an id in the path that names nothing (`%00`, `..`, 5,000 characters, …);
 * - a body the route must refuse: unparsable JSON, NUL (U+0000), nesting past
 *   the depth limit, `__proto__`, a non-object, an empty body, the wrong
 *   content type, over the size limit; a multipart submission whose spec is
 *   one of those; an upload whose checksum is missing or wrong.
 * Everything else (query, headers, field types, bodies of reads, methods a
 * path does not have) is random. Arbitraries use fast-check's generator only
 * (no Math.random), so a failure replays from its printed seed.
 */
import fc from 'fast-check';
import type { TokenKind } from '@buildfleet/protocol';
import type { RegisteredRoute } from '../../src/http/access.js';
import { CREDENTIAL_CASES, type CredentialCase } from '../../src/http/authorization-matrix.js';

export interface FuzzRequest {
  method: string;
  path: string;
  headers: Record<string, string>;
  body: Buffer | undefined;
  /** Send the body with `Transfer-Encoding: chunked` instead of a Content-Length. */
  chunked: boolean;
  /** What makes a writing request refused (undefined for reads). */
  defect: 'credential' | 'path' | 'body' | 'no-route' | undefined;
  /** The route it was built from (`METHOD url`), for messages. */
  route: string;
  /** A short description for fast-check's report. */
  [fc.toStringMethod]: () => string;
}

export interface FuzzTargets {
  routes: readonly RegisteredRoute[];
  /** JSON body fields per `METHOD url` (from the OpenAPI description); absent: the route reads no JSON body. */
  jsonFields: ReadonlyMap<string, readonly string[]>;
  /** Fields of a build spec (the multipart `spec` part of `POST /api/v1/builds`). */
  specFields: readonly string[];
  /** Ids that exist (workers, builds) and an artifact name that exists. */
  workerIds: readonly string[];
  buildIds: readonly string[];
  artifactName: string;
  bearer: Readonly<Record<CredentialCase, string | undefined>>;
  /** The JSON depth limit the controller runs with, and a size over every JSON route's body limit. */
  maxJsonDepth: number;
  oversizeBytes: number;
}

const REGISTER = 'POST /api/v1/workers/register';
const BUILDS_SUBMIT = 'POST /api/v1/builds';
const RAW_UPLOADS = new Set(['PUT /api/v1/builds/:id/artifacts/*', 'PUT /api/v1/builds/:id/cache']);
/** Where a nonexistent name in the path would be created, not refused. */
const NO_PATH_DEFECT = new Set(['PUT /api/v1/secrets/:name']);
const WRITE_METHODS = ['POST', 'PUT', 'DELETE', 'PATCH'];
const ALL_METHODS = ['GET', 'HEAD', 'OPTIONS', ...WRITE_METHODS, 'TRACE', 'PROPFIND', 'M-SEARCH'];

const KIND: Record<CredentialCase, TokenKind | undefined> = {
  none: undefined,
  garbage: undefined,
  api: 'api',
  apiRevoked: 'api',
  enrollment: 'enrollment',
  enrollmentExpired: 'enrollment',
  enrollmentUsedUp: 'enrollment',
  enrollmentRevoked: 'enrollment',
  accessThis: 'access',
  accessOther: 'access',
  accessExpired: 'access',
  accessRotated: 'access',
  secretRight: 'workerSecret',
  secretWrong: 'workerSecret',
  buildThis: 'build',
  buildOther: 'build',
  buildOldAttempt: 'build',
  buildForged: 'build',
};
/** Cases refused by every route that takes credentials, whatever the path names. */
const NEVER_PASSES = new Set<CredentialCase>([
  'none',
  'garbage',
  'apiRevoked',
  'enrollmentExpired',
  'enrollmentUsedUp',
  'enrollmentRevoked',
  'accessExpired',
  'accessRotated',
  'secretWrong',
  'buildOldAttempt',
  'buildForged',
]);

/** Whether credential case `c` is refused by `route` whatever else the request holds. */
export function alwaysRefused(route: RegisteredRoute, c: CredentialCase): boolean {
  if (route.auth === 'public') return false;
  const kind = KIND[c];
  if (NEVER_PASSES.has(c) || !kind || !route.auth.includes(kind)) return true;
  // A worker secret is accepted in a registration body only, never as a bearer.
  return kind === 'workerSecret' && `${route.method} ${route.url}` !== REGISTER;
}

/** Path segments that name nothing: encodings, NUL, dots, overlong, numbers, prototype names. */
const oddSegment: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom(
    'nope',
    '%00',
    'a%00b',
    '..',
    '%2e%2e',
    '%2F',
    'a%2Fb',
    '%E0%A4%A',
    '%zz',
    '%',
    '%FF%FE',
    '%C0%80',
    '%E2%80%AE',
    '0',
    '-1',
    '1e300',
    'null',
    '__proto__',
    'constructor',
    '%20',
    '%0D%0Aset-cookie:x',
    'x'.repeat(5_000),
    'bfb_x.1.y',
  ),
  fc.string({ unit: 'binary', maxLength: 40 }).map((s) => encodeURIComponent(s) || 'e'),
  fc.string({ unit: fc.constantFrom(...'abcdef0123456789-'), minLength: 36, maxLength: 36 }),
);

/** One value of a JSON field: right-ish types, wrong types, extremes. */
function fieldValue(t: FuzzTargets): fc.Arbitrary<unknown> {
  const tokens = Object.values(t.bearer).filter((v): v is string => v !== undefined);
  return fc.oneof(
    fc.string({ maxLength: 30 }),
    fc.string({ unit: 'binary', maxLength: 30 }),
    fc.constantFrom('', ' ', '\u202e', 'a=b', '../x', 'x'.repeat(3_000), 'succeeded', 'failed', 'base64', 'utf8', '2026-01-01T00:00:00Z', 'https://127.0.0.1:1/'),
    fc.integer({ min: -3, max: 3 }),
    fc.integer(),
    fc.constantFrom(1e300, -0, 0.5, Number.MAX_SAFE_INTEGER + 2, 2 ** 31, -(2 ** 31) - 1),
    fc.constant(null),
    fc.boolean(),
    fc.array(fc.oneof(fc.string({ maxLength: 10 }), fc.integer(), fc.constantFrom(...t.buildIds, ...t.workerIds)), { maxLength: 4 }),
    fc.dictionary(fc.string({ maxLength: 8 }), fc.oneof(fc.string({ maxLength: 8 }), fc.integer()), { maxKeys: 3 }),
    fc.constantFrom(...t.buildIds, ...t.workerIds, ...tokens),
  );
}

/** An object with some of `fields` (and sometimes an unknown one), values of any type. */
function plausible(t: FuzzTargets, fields: readonly string[]): fc.Arbitrary<Record<string, unknown>> {
  const value = fieldValue(t);
  return fc
    .tuple(fc.subarray([...fields]), fc.array(value, { minLength: fields.length, maxLength: fields.length }), fc.option(fc.tuple(fc.string({ maxLength: 10 }), value)))
    .map(([keys, values, extra]) => {
      const o: Record<string, unknown> = {};
      keys.forEach((k, i) => (o[k] = values[i]));
      if (extra) o[extra[0]] = extra[1];
      return o;
    });
}

function nest(depth: number, inner: string): string {
  return '{"a":'.repeat(depth) + inner + '}'.repeat(depth);
}

/** JSON text a JSON route must refuse whatever the rest of the request says. */
function refusedJson(t: FuzzTargets, fields: readonly string[]): fc.Arbitrary<string> {
  const obj = plausible(t, fields);
  const key = fc.constantFrom(...fields, 'x');
  return fc.oneof(
    // Unparsable.
    fc.constantFrom('{', '{"a":', '[1,]', "{'a':1}", 'NaN', '{}x', '{"a":1,}', '\u0000', '{"a":"\u0000"}', '"\\ud800', '{"a":01}', 'nul'),
    obj.map((o) => JSON.stringify(o).slice(0, -1)),
    // NUL in a value or a key.
    fc.tuple(obj, key, fc.string({ maxLength: 5 })).map(([o, k, s]) => JSON.stringify({ ...o, [k]: `${s}\u0000${s}` })),
    fc.tuple(obj, fc.string({ maxLength: 5 })).map(([o, s]) => JSON.stringify({ ...o, [`${s}\u0000`]: 1 })),
    // Deeper than the limit: just past it, or thousands of levels.
    fc.tuple(obj, key, fc.integer({ min: t.maxJsonDepth + 1, max: 6_000 })).map(([o, k, d]) => {
      const text = JSON.stringify({ ...o, [k]: 0 });
      return text.replace(`${JSON.stringify(k)}:0`, `${JSON.stringify(k)}:${nest(d, '1')}`);
    }),
    fc.integer({ min: t.maxJsonDepth + 1, max: 200 }).map((d) => '['.repeat(d) + ']'.repeat(d)),
    obj.map((o) => JSON.stringify(o).replace(/^\{/, '{"__proto__":{"admin":true},')),
    // Not an object.
    fc.oneof(fc.jsonValue({ maxDepth: 2 }).filter((v) => typeof v !== 'object' || v === null || Array.isArray(v)), fc.constant([])).map((v) => JSON.stringify(v)),
    fc.constantFrom('', ' ', '\n'),
    // Over the size limit.
    obj.map((o) => JSON.stringify({ ...o, pad: 'x'.repeat(t.oversizeBytes) })),
  );
}

/** Any JSON-ish text: valid or not, any shape. */
function anyJson(t: FuzzTargets, fields: readonly string[]): fc.Arbitrary<string> {
  return fc.oneof(
    plausible(t, fields).map((o) => JSON.stringify(o)),
    fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v) ?? 'null'),
    fc.string({ maxLength: 50 }),
    refusedJson(t, fields),
  );
}

interface Body {
  type: string | undefined;
  data: Buffer;
}
const json = (text: string): Body => ({ type: 'application/json', data: Buffer.from(text) });

function multipart(parts: Array<{ name: string; filename?: string; data: string | Buffer }>, boundary: string, closed: boolean): Body {
  const chunks: Buffer[] = [];
  for (const p of parts) {
    const disposition = `form-data; name="${p.name}"${p.filename ? `; filename="${p.filename}"` : ''}`;
    chunks.push(Buffer.from(`--${boundary}\r\nContent-Disposition: ${disposition}\r\n\r\n`), Buffer.from(p.data), Buffer.from('\r\n'));
  }
  if (closed) chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return { type: `multipart/form-data; boundary=${boundary}`, data: Buffer.concat(chunks) };
}

/** A submission `POST /api/v1/builds` must refuse: its spec part is refused JSON, missing, or the form is broken. */
function refusedSubmission(t: FuzzTargets): fc.Arbitrary<Body> {
  const source = fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b));
  const boundary = fc.constantFrom('xyz', 'b0undary', '----fuzz', 'a'.repeat(70));
  return fc.oneof(
    fc.tuple(refusedJson(t, t.specFields), fc.option(source), fc.boolean(), boundary, fc.boolean()).map(([spec, src, sourceFirst, b, closed]) => {
      const parts: Array<{ name: string; filename?: string; data: string | Buffer }> = [{ name: 'spec', data: spec }];
      if (src) parts[sourceFirst ? 'unshift' : 'push']({ name: 'source', filename: 'source.tar.gz', data: src });
      return multipart(parts, b, closed);
    }),
    // No spec part at all, or a part with another name.
    fc.tuple(source, boundary, fc.constantFrom('source', 'Spec', 'spec ', '')).map(([src, b, name]) => multipart([{ name, filename: 's.tar.gz', data: src }], b, true)),
    // Broken forms.
    fc.tuple(fc.string({ maxLength: 200 }), boundary).map(([s, b]) => ({ type: `multipart/form-data; boundary=${b}`, data: Buffer.from(`--${b}\r\n${s}`) })),
    fc.string({ maxLength: 100 }).map((s) => ({ type: 'multipart/form-data', data: Buffer.from(s) })),
    anyJson(t, t.specFields).map(json),
  );
}

/** Bodies of any kind, for requests whose defect is elsewhere. */
function anyBody(t: FuzzTargets, fields: readonly string[]): fc.Arbitrary<Body | undefined> {
  return fc.oneof(
    fc.constant(undefined),
    anyJson(t, fields).map(json),
    fc.tuple(fc.uint8Array({ maxLength: 2_000 }), fc.constantFrom('application/octet-stream', 'text/plain', 'application/x-www-form-urlencoded', 'application/json; charset=utf-16', 'image/png', undefined)).map(
      ([b, type]) => ({ type, data: Buffer.from(b) }),
    ),
    refusedSubmission(t),
  );
}

/** Headers of an upload that must be refused: no checksum, a malformed one, or one of other bytes. */
const refusedChecksum: fc.Arbitrary<Record<string, string>> = fc.oneof(
  fc.constant({}),
  fc.constantFrom('', 'abc', 'g'.repeat(64), '0'.repeat(63), `sha256=${'0'.repeat(64)}`).map((v) => ({ 'x-checksum-sha256': v })),
  fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => ({ 'x-checksum-sha256': Buffer.from(b).toString('hex') })),
);

const someHeaders: fc.Arbitrary<Record<string, string>> = fc.record(
  {
    accept: fc.constantFrom('text/event-stream', '*/*', 'application/json', 'text/html', ''),
    range: fc.constantFrom('bytes=0-0', 'bytes=-1', 'bytes=5-2', 'bytes=x', 'bytes=0-999999999', 'bytes=0-1,3-4'),
    'x-checksum-sha256': fc.string({ unit: fc.constantFrom(...'0123456789abcdefg'), maxLength: 70 }),
    expect: fc.constant('100-continue'),
    'x-forwarded-for': fc.constantFrom('10.0.0.1', '::1', 'garbage'),
    'last-event-id': fc.string({ unit: fc.constantFrom(...'0123456789-x'), maxLength: 12 }),
    cookie: fc.constant('a=b'),
    'content-encoding': fc.constantFrom('gzip', 'br', 'identity'),
  },
  { requiredKeys: [] },
);

/** Extra headers; now and then one that takes the request line and headers past the limit (431). */
const extraHeaders: fc.Arbitrary<Record<string, string>> = fc.oneof(
  { arbitrary: someHeaders, weight: 20 },
  { arbitrary: fc.tuple(someHeaders, fc.integer({ min: 1, max: 40 })).map(([h, k]) => ({ ...h, 'x-big': 'h'.repeat(k * 1_000) })), weight: 1 },
);

/** How the bearer is written: as specified, or bent (lower-case scheme and extra blanks pass; the rest does not). */
const bearerForm = fc.oneof(
  { arbitrary: fc.constant((x: string) => `Bearer ${x}`), weight: 8 },
  {
    arbitrary: fc.constantFrom<(token: string) => string>(
      (x) => `bearer  ${x} `,
      (x) => `Basic ${x}`,
      (x) => x,
      (x) => `Bearer ${x}x`,
      (x) => `Bearer ${x} ${x}`,
    ),
    weight: 2,
  },
);

/** Half the time a query of known and unknown keys with odd values (a live `follow=1` stream is cut after its headers). */
const query: fc.Arbitrary<string> = (() => {
  const keys = ['waitMs', 'state', 'label', 'limit', 'cursor', 'before', 'worker', 'meta', 'q', 'offset', 'attempt', 'follow', 'minutes', 'key', 'restoreKeys', 'x', '__proto__'];
  const value = fc.oneof(
    fc.constantFrom('', '0', '-1', '1', '2', '1e300', 'abc', 'queued', 'true', '%00', '%zz', 'x'.repeat(3_000), 'a=b', '[]', 'branch=main'),
    fc.string({ maxLength: 12 }).map(encodeURIComponent),
  );
  return fc.option(fc.array(fc.tuple(fc.constantFrom(...keys), value), { minLength: 1, maxLength: 4 }).map((kv) => '?' + kv.map(([k, v]) => `${k}=${v}`).join('&')), {
    nil: '',
    freq: 2,
  });
})();

/** Fills `:param` and `*` of `url`; `odd` puts a nonexistent id in the first of them. */
function pathFor(t: FuzzTargets, route: RegisteredRoute, odd: boolean): fc.Arbitrary<string> {
  const params = route.url.match(/:\w+|\*/g) ?? [];
  if (params.length === 0) return fc.constant(route.url);
  const real = (p: string): fc.Arbitrary<string> => {
    if (p === '*') return fc.oneof(fc.constant(t.artifactName), fc.constantFrom('a/b.txt', '..%2F..%2Fetc%2Fpasswd', '%E2%80%AEtxt.exe', 'a%01b', '.'), oddSegment);
    if (p === ':sha256') return fc.oneof(fc.constant('0'.repeat(64)), oddSegment);
    if (p === ':name') return fc.oneof(fc.constantFrom('NO_SUCH', 'A', 'a-b', ''), oddSegment);
    const ids = route.url.startsWith('/api/v1/workers') || route.url.startsWith('/workers') ? t.workerIds : t.buildIds;
    return fc.oneof(fc.constantFrom(...ids, ...t.workerIds, ...t.buildIds), oddSegment);
  };
  return fc.tuple(...params.map((p, i) => (odd && i === 0 ? oddSegment : real(p)))).map((values) => {
    let i = 0;
    return route.url.replace(/:\w+|\*/g, () => values[i++]!);
  });
}

/** Requests built from one registered route. */
function routeRequest(t: FuzzTargets, route: RegisteredRoute): fc.Arbitrary<FuzzRequest> {
  const key = `${route.method} ${route.url}`;
  const writes = route.method !== 'GET' && route.method !== 'HEAD';
  const fields = t.jsonFields.get(key);
  const refusedCases = CREDENTIAL_CASES.filter((c) => alwaysRefused(route, c));
  const acceptedCases = route.auth === 'public' ? [] : CREDENTIAL_CASES.filter((c) => !alwaysRefused(route, c));
  const params = /:\w+/.test(route.url) && !NO_PATH_DEFECT.has(key);
  const defects: Array<FuzzRequest['defect']> = writes ? ['credential', ...(params ? (['path'] as const) : []), ...(fields || key === BUILDS_SUBMIT || RAW_UPLOADS.has(key) ? (['body'] as const) : [])] : [undefined];
  return fc.constantFrom(...defects).chain((defect) => {
    // Past authentication most of the time, so that the route's own checks see the malformed parts.
    const credential =
      defect === 'credential'
        ? fc.constantFrom(...refusedCases)
        : acceptedCases.length > 0
          ? fc.oneof({ arbitrary: fc.constantFrom(...acceptedCases), weight: 3 }, { arbitrary: fc.constantFrom(...CREDENTIAL_CASES), weight: 1 })
          : fc.constantFrom(...CREDENTIAL_CASES);
    let body: fc.Arbitrary<Body | undefined>;
    if (defect === 'body' && fields) body = refusedJson(t, fields).map(json);
    else if (defect === 'body' && key === BUILDS_SUBMIT) body = refusedSubmission(t);
    else body = anyBody(t, fields ?? t.specFields);
    const uploadHeaders = defect === 'body' && RAW_UPLOADS.has(key) ? refusedChecksum : fc.constant({});
    return fc
      .record({
        credential,
        form: defect === 'credential' ? fc.constant((x: string) => `Bearer ${x}`) : bearerForm,
        path: pathFor(t, route, defect === 'path'),
        query,
        extra: extraHeaders,
        upload: uploadHeaders,
        body,
        chunked: fc.boolean(),
        bodyInRegistration: plausible(t, t.jsonFields.get(REGISTER) ?? ['name']),
      })
      .map(({ credential: c, form, path, query, extra, upload, body: b, chunked, bodyInRegistration }) => {
        const headers: Record<string, string> = { ...extra };
        // An upload's checksum defect must not be undone by a random header.
        if (defect === 'body' && RAW_UPLOADS.has(key)) delete headers['x-checksum-sha256'];
        Object.assign(headers, upload);
        let data = b;
        const token = t.bearer[c];
        if (key === REGISTER && KIND[c] === 'workerSecret') {
          // The worker secret travels in the registration body.
          if (!data || defect !== 'body') data = json(JSON.stringify({ ...bodyInRegistration, workerId: t.workerIds[0], workerSecret: token }));
        } else if (token !== undefined) {
          headers.authorization = form(token);
        }
        if (data?.type) headers['content-type'] = data.type;
        else delete headers['content-type'];
        return withSummary({ method: route.method, path: path + query, headers, body: route.method === 'HEAD' ? undefined : data?.data, chunked, defect, route: key });
      });
  });
}

/** A method the path does not have, or a path no route has: 404, whatever else. */
function noRouteRequest(t: FuzzTargets): fc.Arbitrary<FuzzRequest> {
  const methodsByUrl = new Map<string, Set<string>>();
  for (const r of t.routes) methodsByUrl.set(r.url, (methodsByUrl.get(r.url) ?? new Set()).add(r.method));
  const urls = [...methodsByUrl.keys()];
  const unrouted = fc.constantFrom(...urls).chain((url) => {
    const missing = ALL_METHODS.filter((m) => !methodsByUrl.get(url)!.has(m) && m !== 'OPTIONS');
    return fc.tuple(fc.constantFrom(...missing), pathFor(t, { method: 'GET', url, auth: 'public' }, false));
  });
  const garbagePath = fc.tuple(
    fc.constantFrom(...ALL_METHODS),
    fc.oneof(
      fc.constantFrom('/api/v2/builds', '/api', '/api/v1', '/api/v1/', '/.well-known/x', '/%00', '/api/v1/builds/a/b/c', '/api/v1/nope', '/api/v1/workers/a/poll/x', '/index.html'),
      fc.tuple(fc.constantFrom('/api/v1/zz', '/zz', '/api/v1/builds/x/zz'), fc.array(oddSegment, { maxLength: 3 })).map(([p, segs]) => [p, ...segs].join('/')),
    ),
  );
  return fc
    .tuple(fc.oneof(unrouted, garbagePath), fc.constantFrom(...CREDENTIAL_CASES), anyBody(t, t.specFields), extraHeaders, fc.boolean())
    .map(([[method, path], c, b, extra, chunked]) => {
      const headers: Record<string, string> = { ...extra };
      const token = t.bearer[c];
      if (token !== undefined) headers.authorization = `Bearer ${token}`;
      if (b?.type) headers['content-type'] = b.type;
      return withSummary({ method, path, headers, body: method === 'HEAD' ? undefined : b?.data, chunked, defect: 'no-route', route: `${method} (no route) ${path.slice(0, 80)}` });
    });
}

/** One line for fast-check's counterexample: long values shortened. */
function summary(r: Omit<FuzzRequest, typeof fc.toStringMethod>): string {
  const cut = (v: string) => (v.length > 120 ? `${v.slice(0, 100)}…(${v.length} chars)` : v);
  const headers = Object.entries(r.headers).map(([k, v]) => `${k}: ${cut(v)}`);
  const body = r.body === undefined ? 'no body' : `body ${cut(JSON.stringify(r.body.toString('latin1')))}${r.chunked ? ' chunked' : ''}`;
  return `${r.method} ${cut(r.path)} {${headers.join('; ')}} ${body} [${r.defect ?? 'read'}]`;
}

function withSummary(r: Omit<FuzzRequest, typeof fc.toStringMethod>): FuzzRequest {
  return Object.assign(r, { [fc.toStringMethod]: () => summary(r) });
}

/**
 * Any request of the suite: every registered route equally likely, plus
 * unrouted ones. Without fast-check's bias, which would favour the first
 * route, the first credential and the first odd id of every list.
 */
export function fuzzRequest(t: FuzzTargets): fc.Arbitrary<FuzzRequest> {
  const perRoute = t.routes.map((r) => ({ arbitrary: routeRequest(t, r), weight: 1 }));
  return fc.noBias(fc.oneof(...perRoute, { arbitrary: noRouteRequest(t), weight: Math.max(1, Math.round(t.routes.length / 10)) }));
}
