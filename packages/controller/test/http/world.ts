/**
 * A controller (SQLite, or PostgreSQL with `store: 'postgres'`; fake clock) holding one of every credential of the
 * authorization matrix (src/http/authorization-matrix.ts), for the matrix
 * and fuzz tests, plus a snapshot of everything stored (every table, every
 * blob) to prove that a refused request changed nothing.
 *
 * - worker A (labels mx): access token `accessThis`, and `accessRotated`
 *   from before its re-registration; worker B: `accessOther`; worker C's
 *   token is `accessExpired` (registered before the clock moved past the TTL);
 * - build P: attempt 1 was lost with its worker, attempt 2 runs on A with a
 *   log chunk and an artifact (`buildThis`; `buildOldAttempt` is attempt
 *   1's token); build Q runs on B (`buildOther`);
 * - enrollment tokens: valid, expired, used up, revoked; API tokens: valid
 *   and revoked (written straight into the database: no route revokes one).
 */
import { createHash, randomUUID } from 'node:crypto';
import { FakeClock, paths, type AssignedBuild, type PollResponse, type RegisterResponse } from '@buildfleet/protocol';
import type { CredentialCase } from '../../src/http/authorization-matrix.js';
import { API_TOKEN, ENROLLMENT_TOKEN, sha256, startHarness, type Harness } from './harness.js';
import { openStoredData } from './stored-data.js';

export interface World {
  h: Harness;
  clock: FakeClock;
  workerA: RegisterResponse;
  workerB: RegisterResponse;
  /** Build P (attempt 2 running on A) and Q (running on B). */
  buildP: AssignedBuild;
  buildQ: AssignedBuild;
  /** The bearer each case presents (undefined: no header). Secrets as bearers outside registration. */
  bearer: Record<CredentialCase, string | undefined>;
  /** Everything stored, as text: equal before and after means nothing changed. */
  snapshot(): Promise<string>;
  close(): Promise<void>;
}

const TTL = 60_000;

export async function startWorld(overrides: Parameters<typeof startHarness>[0] = {}, opts: { store?: 'sqlite' | 'postgres' } = {}): Promise<World> {
  const clock = new FakeClock();
  const h = await startHarness({ accessTokenTtlMs: TTL, pollWaitMs: 0, ...overrides }, { clock, ...opts });
  const json = async <T>(res: Promise<Response>, want: number): Promise<T> => {
    const r = await res;
    const text = await r.text();
    if (r.status !== want) throw new Error(`world setup: ${r.status} ${text}`);
    return (text ? JSON.parse(text) : undefined) as T;
  };
  const token = (body: Record<string, unknown>) => json<{ id: string; token: string }>(h.req('POST', paths.enrollmentTokens(), { token: API_TOKEN, json: body }), 201);
  const poll = async (w: RegisterResponse) =>
    (await json<PollResponse>(h.req('POST', paths.poll(w.workerId, 0), { token: w.accessToken, json: { freeSlots: 1, activeBuildIds: [] } }), 200)).builds[0]!;
  const start = (b: AssignedBuild) => json(h.req('POST', paths.start(b.id), { token: b.buildToken, json: { attempt: b.attempt } }), 200);

  const expired = await token({ expiresAt: new Date(clock.now() + 1000).toISOString() });
  const usedUp = await token({ maxUses: 1 });
  await json(h.register({ name: 'x' }, usedUp.token), 201);
  const revoked = await token({});
  await json(h.req('DELETE', paths.enrollmentToken(revoked.id), { token: API_TOKEN }), 204);
  const workerC = await h.registerOk({ name: 'c' });
  await clock.advance(TTL + 1000);

  const rotated = await h.registerOk({ name: 'a', labels: ['mx'], bootId: 'boot-a' });
  const workerA = await json<RegisterResponse>(
    h.req('POST', paths.register(), {
      json: { name: 'a', labels: ['mx'], maxConcurrentBuilds: 2, version: 't', bootId: 'boot-a', workerId: rotated.workerId, workerSecret: rotated.workerSecret, activeBuildCount: 0 },
    }),
    200,
  );
  workerA.workerSecret = rotated.workerSecret;
  const workerB = await h.registerOk({ name: 'b', labels: ['mq'] });
  const workerD = await h.registerOk({ name: 'd', labels: ['mx'] });

  const p = await h.submitOk({ script: 'p', labels: ['mx'] });
  const p1 = await poll(workerD);
  await start(p1);
  await json(h.req('DELETE', paths.worker(workerD.workerId), { token: API_TOKEN }), 200);
  const buildP = await poll(workerA);
  if (buildP.id !== p.id || buildP.attempt !== 2) throw new Error('world setup: build P should be on attempt 2');
  await start(buildP);
  await json(h.req('POST', paths.logs(p.id), { token: buildP.buildToken, json: { attempt: 2, seq: 0, offset: 0, data: 'hello\n' } }), 200);
  const artifact = new TextEncoder().encode('artifact bytes');
  await json(
    h.req('PUT', paths.artifact(p.id, 'out.txt'), { token: buildP.buildToken, body: artifact, headers: { 'content-type': 'application/octet-stream', 'x-checksum-sha256': sha256(artifact) } }),
    201,
  );
  await h.submitOk({ script: 'q', labels: ['mq'] });
  const buildQ = await poll(workerB);
  await start(buildQ);

  const apiRevoked = `bfa_revoked-${randomUUID()}`;
  const stored = await openStoredData(h.dataDir, h.databaseUrl);
  await stored.run('INSERT INTO api_tokens (hash, description, created_at, revoked_at) VALUES (?, ?, ?, ?)', [
    createHash('sha256').update(apiRevoked).digest('hex'),
    'revoked for the matrix',
    clock.now(),
    clock.now(),
  ]);

  const forgedMac = buildP.buildToken.slice(0, buildP.buildToken.lastIndexOf('.') + 1) + 'A'.repeat(43);
  const bearer: Record<CredentialCase, string | undefined> = {
    none: undefined,
    garbage: 'garbage-not-a-token',
    api: API_TOKEN,
    apiRevoked,
    enrollment: ENROLLMENT_TOKEN,
    enrollmentExpired: expired.token,
    enrollmentUsedUp: usedUp.token,
    enrollmentRevoked: revoked.token,
    accessThis: workerA.accessToken,
    accessOther: workerB.accessToken,
    accessExpired: workerC.accessToken,
    accessRotated: rotated.accessToken,
    secretRight: workerA.workerSecret,
    secretWrong: `bfs_${'w'.repeat(43)}`,
    buildThis: buildP.buildToken,
    buildOther: buildQ.buildToken,
    buildOldAttempt: p1.buildToken,
    buildForged: forgedMac,
  };

  return {
    h,
    clock,
    workerA,
    workerB,
    buildP,
    buildQ,
    bearer,
    snapshot: () => stored.snapshot(),
    close: async () => {
      await stored.close();
      await h.close();
    },
  };
}
