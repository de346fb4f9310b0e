/**
 * The fuzz suite (issue 9): arbitrary and malformed requests (fuzz-requests.ts)
 * at every route a running controller registered, with every credential
 * kind, over real HTTP on SQLite and on PostgreSQL. Each answer must be:
 * - never 5xx, and every error a JSON `{"error": {"code", "message"}}` whose
 *   code is one of docs/protocol.md's, with the status the protocol gives it;
 * - 4xx for every request that could write (each carries a defect that must
 *   refuse it), and nothing stored changed: every table and blob is compared
 *   after each batch of requests with before it;
 * - free of every token the controller handed out (errors and reads alike).
 * The controller must still answer `/readyz` afterwards.
 *
 * Requests: `BUILDFLEET_FUZZ_REQUESTS` (default 10,000 with CI=true, 2,000
 * otherwise; PostgreSQL runs half as many). Replay a failure with the
 * seed it prints: `BUILDFLEET_FUZZ_SEED=<seed> npx vitest run <this file>`.
 */
import { Agent, request as httpRequest } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { BuildSpecInputSchema, ERROR_CODES, ERROR_STATUS, type ErrorCode } from '@buildfleet/protocol';
import { CREDENTIAL_CASES, type CredentialCase } from '../../src/http/authorization-matrix.js';
import { describePg } from '../support/pg.js';
import { fuzzRequest, type FuzzRequest, type FuzzTargets } from './fuzz-requests.js';
import { startWorld, type World } from './world.js';

const CI = process.env.CI === 'true';
const TOTAL = Number(process.env.BUILDFLEET_FUZZ_REQUESTS ?? (CI ? 10_000 : 2_000));
const SEED = process.env.BUILDFLEET_FUZZ_SEED ? Number(process.env.BUILDFLEET_FUZZ_SEED) : Date.now() ^ (process.pid << 8);
/** Requests per property run; stored data is compared after each batch. */
const BATCH = 50;
/** Requests in flight at once (keep-alive connections). */
const PARALLEL = 5;

/** Limits small enough that "over the limit" costs little to send. */
const LIMITS = { maxJsonBytes: 16 * 1024, maxSpecBytes: 16 * 1024, maxLogChunkBytes: 1024, maxSourceBytes: 64 * 1024, maxArtifactBytes: 64 * 1024, maxJsonDepth: 32 };
const LOG_BODY_LIMIT = Math.ceil((LIMITS.maxLogChunkBytes * 4) / 3) + 64 * 1024;

/** Cases whose bearer is a real credential the controller issued (its text must never come back): all but made-up ones. */
const MADE_UP = new Set<CredentialCase>(['none', 'garbage', 'secretWrong', 'buildForged']);
const ISSUED = CREDENTIAL_CASES.filter((c) => !MADE_UP.has(c));

interface Answer {
  status: number;
  type: string;
  body: Buffer;
}

/** One request over a keep-alive agent; a live stream (text/event-stream) is cut after its headers. */
function send(agent: Agent, base: URL, r: FuzzRequest): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const headers = { ...r.headers };
    // Node's client frames a GET/DELETE body only when told to: unframed, its bytes would be a second (garbage) request.
    if (r.body !== undefined) Object.assign(headers, r.chunked ? { 'transfer-encoding': 'chunked' } : { 'content-length': String(r.body.length) });
    let done = false;
    const req = httpRequest({ host: base.hostname, port: Number(base.port), method: r.method, path: r.path, headers, agent }, (res) => {
      const type = String(res.headers['content-type'] ?? '');
      if (res.statusCode! < 300 && type.includes('text/event-stream')) {
        done = true;
        res.destroy();
        resolve({ status: res.statusCode!, type, body: Buffer.alloc(0) });
        return;
      }
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        done = true;
        resolve({ status: res.statusCode!, type, body: Buffer.concat(chunks) });
      });
      res.on('error', (err) => done || reject(err));
    });
    // An error after the whole answer arrived (the server closed while the client still wrote) is not a failure.
    req.on('error', (err) => done || reject(new Error(`${r.method} ${r.path.slice(0, 120)}: ${err.message} before a whole answer`)));
    req.setTimeout(15_000, () => req.destroy(new Error('no answer within 15 s')));
    if (r.body !== undefined) req.end(r.body);
    else req.end();
  });
}

/** What is wrong with an answer, or undefined. */
function problem(r: FuzzRequest, a: Answer, secrets: readonly string[]): string | undefined {
  if (a.status >= 500) return `answered ${a.status}`;
  if (r.defect && r.defect !== 'no-route' && a.status < 400) return `a request with a ${r.defect} defect answered ${a.status}`;
  if (r.defect === 'no-route' && r.method !== 'GET' && r.method !== 'HEAD' && a.status < 400) return `a request without a route answered ${a.status}`;
  const text = a.body.toString('utf8');
  for (const s of secrets) if (text.includes(s)) return `the answer contains an issued token (${s.slice(0, 6)}…)`;
  if (a.status < 400 || r.method === 'HEAD') return undefined;
  let code: unknown;
  try {
    const e = (JSON.parse(text) as { error?: { code?: unknown; message?: unknown } }).error;
    if (typeof e?.message !== 'string') return `error body without a message: ${text.slice(0, 200)}`;
    code = e.code;
  } catch {
    return `error body is not JSON (${a.type}): ${text.slice(0, 200)}`;
  }
  if (!(ERROR_CODES as readonly unknown[]).includes(code)) return `unknown error code ${String(code)}`;
  // docs/protocol.md "Limits and input rules": headers over the limit are 431 with PAYLOAD_TOO_LARGE.
  const headerLimit = code === 'PAYLOAD_TOO_LARGE' && a.status === 431;
  // The same section: a Range past the end of an artifact is 416 with VALIDATION_FAILED.
  const badRange = code === 'VALIDATION_FAILED' && a.status === 416;
  if (ERROR_STATUS[code as ErrorCode] !== a.status && !headerLimit && !badRange) return `${String(code)} answered with ${a.status}, docs/protocol.md says ${ERROR_STATUS[code as ErrorCode]}`;
  return undefined;
}

/** The stored lines one snapshot has and the other lacks (at most 20), each cut around where it first differs from its counterpart. */
function changes(before: string, after: string): string {
  const a = new Set(before.split('\n'));
  const b = new Set(after.split('\n'));
  const gone = [...a].filter((l) => !b.has(l));
  const added = [...b].filter((l) => !a.has(l));
  const cut = (line: string, other: string | undefined) => {
    let i = 0;
    while (other !== undefined && i < line.length && line[i] === other[i]) i++;
    return (i > 80 ? `…${line.slice(i - 80, i + 200)}` : line.slice(0, 280)) + (line.length > i + 200 ? '…' : '');
  };
  return [...gone.map((l, i) => `- ${cut(l, added[i])}`), ...added.map((l, i) => `+ ${cut(l, gone[i])}`)].slice(0, 20).join('\n');
}

function describeFuzz(store: 'sqlite' | 'postgres', total: number): void {
  let w: World;
  let targets: FuzzTargets;
  let agent: Agent;
  beforeAll(async () => {
    w = await startWorld(LIMITS, { store });
    // noDelay: a request written in two parts (headers, body) must not wait for a delayed ACK.
    agent = new Agent({ keepAlive: true, maxSockets: PARALLEL, noDelay: true } as ConstructorParameters<typeof Agent>[0]);
    const doc = (await (await fetch(`${w.h.url}/openapi.json`)).json()) as {
      paths: Record<string, Record<string, { requestBody?: { content?: Record<string, { schema?: { properties?: Record<string, unknown> } }> } }>>;
    };
    const jsonFields = new Map<string, string[]>();
    for (const [p, ops] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(ops)) {
        const props = op.requestBody?.content?.['application/json']?.schema?.properties;
        if (props) jsonFields.set(`${method.toUpperCase()} ${p.replace(/\{([^}*]+)\}/g, ':$1').replace('{*}', '*')}`, Object.keys(props));
      }
    }
    targets = {
      routes: w.h.ctl.app.buildfleet.routes,
      jsonFields,
      specFields: Object.keys(BuildSpecInputSchema.properties),
      workerIds: [w.workerA.workerId, w.workerB.workerId],
      buildIds: [w.buildP.id, w.buildQ.id],
      artifactName: 'out.txt',
      bearer: w.bearer,
      maxJsonDepth: LIMITS.maxJsonDepth,
      oversizeBytes: Math.max(LIMITS.maxJsonBytes, LIMITS.maxSpecBytes, LOG_BODY_LIMIT) + 1,
    };
  });
  afterAll(async () => {
    agent?.destroy();
    await w?.close();
  });

  it(`${total} arbitrary requests at every route with every credential: no 5xx, known error codes, nothing stored changed, no token in an answer`, { timeout: 600_000 }, async () => {
    expect(targets.jsonFields.size, 'JSON routes found in the OpenAPI description').toBeGreaterThan(5);
    const secrets = ISSUED.map((c) => w.bearer[c]!);
    const base = new URL(w.h.url);
    const statuses = new Map<number, number>();
    let sent = 0;
    let fiveXx = 0;
    let snapshotMs = 0;
    const started = performance.now();
    const cpuBefore = process.cpuUsage();
    const initial = await w.snapshot();
    console.log(`fuzz (${store}): ${targets.routes.length} routes, seed ${SEED} (replay: BUILDFLEET_FUZZ_SEED=${SEED})`);
    await fc.assert(
      fc.asyncProperty(fc.array(fuzzRequest(targets), { minLength: BATCH, maxLength: BATCH }), async (batch) => {
        let t0 = performance.now();
        const before = await w.snapshot();
        snapshotMs += performance.now() - t0;
        const failures: string[] = [];
        for (let i = 0; i < batch.length; i += PARALLEL) {
          await Promise.all(
            batch.slice(i, i + PARALLEL).map(async (r) => {
              sent++;
              const a = await send(agent, base, r);
              statuses.set(a.status, (statuses.get(a.status) ?? 0) + 1);
              if (a.status >= 500) fiveXx++;
              const p = problem(r, a, secrets);
              if (p) failures.push(`${r.route}: ${r.method} ${r.path.slice(0, 200)} [${r.defect ?? 'read'}] → ${p}`);
            }),
          );
        }
        t0 = performance.now();
        const after = await w.snapshot();
        snapshotMs += performance.now() - t0;
        if (after !== before) failures.push(`stored data changed during this batch:\n${changes(before, after)}`);
        if (failures.length > 0) throw new Error(failures.join('\n'));
      }),
      // No shrinking: each step would resend a batch, and the failure already names the request (or the stored rows) at fault.
      { numRuns: Math.ceil(total / BATCH), seed: SEED, endOnFailure: true },
    );
    const seconds = (performance.now() - started) / 1000;
    const cpu = process.cpuUsage(cpuBefore);
    expect(await w.snapshot()).toBe(initial);
    expect((await fetch(`${w.h.url}/readyz`)).status).toBe(200);
    const byStatus = [...statuses.entries()].sort(([a], [b]) => a - b).map(([s, n]) => `${s}×${n}`).join(' ');
    console.log(`fuzz (${store}): ${sent} requests in ${seconds.toFixed(1)} s (CPU ${((cpu.user + cpu.system) / 1e6).toFixed(1)} s for client and controller; ${(snapshotMs / 1000).toFixed(1)} s comparing stored data), ${fiveXx} answered 5xx; statuses ${byStatus}`);
    expect(fiveXx).toBe(0);
    expect(sent).toBeGreaterThanOrEqual(total);
  });
}

describe('fuzz: SQLite', () => describeFuzz('sqlite', TOTAL));
describePg('fuzz: PostgreSQL', () => describeFuzz('postgres', Math.ceil(TOTAL / 2)));
