/**
 * Secrets over real HTTP (issue 13, docs/protocol.md "Secrets"): values are
 * write-only, reach only the current running attempt of a build in scope,
 * are recorded per hand-out, sealed in the database, and masked by the
 * controller in stored logs (keeping the worker's offsets).
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { paths, type Build, type Secret } from '@buildfleet/protocol';
import { API_TOKEN, errorCode, startHarness, type Harness } from '../http/harness.js';
import { ProtocolWorker } from '../ops/protocol-worker.js';

const VALUE = 'npm_Sup3rSecretTokenValue_42';

describe('secrets over HTTP', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => {
    await h?.close();
  });

  const put = (name: string, body: unknown, token = API_TOKEN) => h.req('PUT', paths.secret(name), { token, json: body });
  const getBuild = async (id: string) => ((await (await h.req('GET', paths.build(id), { token: API_TOKEN })).json()) as { build: Build }).build;

  it('stores a value that no answer ever carries; lists, shows and deletes by name', async () => {
    const created = await put('NPM_TOKEN', { value: VALUE, scope: { metadata: { repo: 'acme/app' } } });
    expect(created.status).toBe(201);
    const createdText = await created.text();
    expect(createdText).not.toContain(VALUE);
    expect(JSON.parse(createdText)).toMatchObject({ secret: { name: 'NPM_TOKEN', scope: { metadata: { repo: 'acme/app' } } } });
    const replaced = await put('NPM_TOKEN', { value: VALUE, scope: { metadata: { repo: 'acme/app' } } });
    expect(replaced.status).toBe(200);
    for (const p of [paths.secrets(), paths.secret('NPM_TOKEN'), paths.secretHandouts('NPM_TOKEN')]) {
      const res = await h.req('GET', p, { token: API_TOKEN });
      expect(res.status).toBe(200);
      expect(await res.text()).not.toContain(VALUE);
    }
    const list = (await (await h.req('GET', paths.secrets(), { token: API_TOKEN })).json()) as { secrets: Secret[] };
    expect(list.secrets.map((s) => s.name)).toContain('NPM_TOKEN');

    await put('TO_DELETE', { value: 'x-value-1' });
    expect((await h.req('DELETE', paths.secret('TO_DELETE'), { token: API_TOKEN })).status).toBe(204);
    expect(await errorCode(await h.req('GET', paths.secret('TO_DELETE'), { token: API_TOKEN }))).toBe('NOT_FOUND');
    expect(await errorCode(await h.req('DELETE', paths.secret('TO_DELETE'), { token: API_TOKEN }))).toBe('NOT_FOUND');
  });

  it('refuses a bad name or body with 400, and anyone without an API token with 401', async () => {
    expect(await errorCode(await put('not-an-env-name', { value: 'v' }))).toBe('VALIDATION_FAILED');
    expect(await errorCode(await put('GOOD', { value: '' }))).toBe('VALIDATION_FAILED');
    expect(await errorCode(await put('GOOD', { value: 'v', extra: 1 }))).toBe('VALIDATION_FAILED');
    expect(await errorCode(await put('GOOD', { value: 'v' }, 'bfa_wrong_token_0123456789abcdef'))).toBe('TOKEN_INVALID');
    expect(await errorCode(await h.req('GET', paths.secrets()))).toBe('TOKEN_INVALID');
  });

  it('keeps only the sealed form in the database', async () => {
    await put('SEALED_ONE', { value: VALUE });
    const db = new Database(join(h.dataDir, 'buildfleet.db'), { readonly: true });
    try {
      const row = db.prepare('select sealed from secrets where name = ?').get('SEALED_ONE') as { sealed: string };
      expect(row.sealed).toMatch(/^v1\./);
      expect(row.sealed).not.toContain(VALUE);
      const everything = JSON.stringify(db.prepare('select * from secrets').all()) + JSON.stringify(db.prepare('select * from settings').all());
      expect(everything).not.toContain(VALUE);
    } finally {
      db.close();
    }
  });

  it('hands the values to the running attempt of a build in scope, records it, and to nothing else', async () => {
    await put('DEPLOY_KEY', { value: 'deploy-key-value-xyz', scope: { labels: ['deploy'], metadata: { repo: 'acme/app' } } });
    await put('NPM_TOKEN', { value: VALUE, scope: { metadata: { repo: 'acme/app' } } });
    const w = await ProtocolWorker.register(h, 10, ['deploy']);
    const build = await h.submitOk({ script: 'true', labels: ['deploy'], metadata: { repo: 'acme/app' }, secrets: ['NPM_TOKEN', { name: 'DEPLOY_KEY', as: 'file' }] });
    expect(build.state).toBe('queued');
    expect(build.spec.secrets).toEqual([
      { name: 'NPM_TOKEN', as: 'env', env: 'NPM_TOKEN' },
      { name: 'DEPLOY_KEY', as: 'file', env: 'DEPLOY_KEY' },
    ]);
    const [assigned] = await w.claim(1);
    const other = await h.submitOk({ script: 'true', labels: ['deploy'] });
    const [assignedOther] = await w.claim(1);
    const secretsOf = (id: string, token: string) => h.req('GET', paths.buildSecrets(id), { token });
    // Not yet running.
    expect(await errorCode(await secretsOf(build.id, assigned!.buildToken))).toBe('INVALID_TRANSITION');
    await w.start(build.id);
    // Another build's token: 403; no token: 401; an API token is not a build token.
    expect(await errorCode(await secretsOf(build.id, assignedOther!.buildToken))).toBe('FORBIDDEN');
    expect(await errorCode(await secretsOf(build.id, API_TOKEN))).toBe('TOKEN_INVALID');
    const res = await secretsOf(build.id, assigned!.buildToken);
    expect(res.status).toBe(200);
    expect(((await res.json()) as { secrets: unknown[] }).secrets).toEqual([
      { name: 'NPM_TOKEN', value: VALUE },
      { name: 'DEPLOY_KEY', value: 'deploy-key-value-xyz' },
    ]);
    // The other build asks for nothing and gets nothing.
    await w.start(other.id);
    expect(await (await secretsOf(other.id, assignedOther!.buildToken)).json()).toEqual({ secrets: [] });
    const handouts = (await (await h.req('GET', paths.secretHandouts('NPM_TOKEN'), { token: API_TOKEN })).json()) as {
      handouts: Array<{ buildId: string; attempt: number; name: string }>;
    };
    expect(handouts.handouts).toEqual([expect.objectContaining({ buildId: build.id, attempt: 1, name: 'NPM_TOKEN' })]);
    // After the finish, the attempt gets nothing more.
    await w.finish(build.id);
    expect(await errorCode(await secretsOf(build.id, assigned!.buildToken))).toBe('INVALID_TRANSITION');
  });

  it('fails a build that asks for a secret out of its scope, or one that does not exist, before any worker runs it', async () => {
    await put('PROD_TOKEN', { value: 'prod-token-value', scope: { metadata: { repo: 'acme/prod' } } });
    const outside = await h.submitOk({ script: 'echo should-never-run', metadata: { repo: 'acme/app' }, secrets: ['PROD_TOKEN'] });
    expect(outside).toMatchObject({ state: 'failed', reason: 'secret_unavailable' });
    expect(outside.message).toBe('secret PROD_TOKEN is limited to builds with repo=acme/prod; this build has repo=acme/app; the build failed before its script ran');
    const missing = await h.submitOk({ script: 'true', secrets: ['NOPE'] });
    expect(missing).toMatchObject({ state: 'failed', reason: 'secret_unavailable', message: expect.stringContaining('secret NOPE does not exist') });
    const w = await ProtocolWorker.register(h);
    expect(await w.claim(5, 0)).toEqual([]);
  });

  it('fails a build whose secret was deleted after it was submitted, at hand-out, and says why', async () => {
    await put('SHORT_LIVED', { value: 'short-lived-value' });
    const w = await ProtocolWorker.register(h);
    const build = await h.submitOk({ script: 'true', secrets: ['SHORT_LIVED'] });
    const [b] = await w.claim(1);
    await w.start(build.id);
    await h.req('DELETE', paths.secret('SHORT_LIVED'), { token: API_TOKEN });
    const res = await h.req('GET', paths.buildSecrets(build.id), { token: b!.buildToken });
    expect(res.status).toBe(409);
    expect(await res.text()).toContain('secret SHORT_LIVED does not exist');
    expect(await getBuild(build.id)).toMatchObject({ state: 'failed', reason: 'secret_unavailable' });
  });

  it('masks the values in each stored log chunk, keeping its length, as a second line behind the worker', async () => {
    await put('LOG_SECRET', { value: 'log-secret-value-77' });
    const w = await ProtocolWorker.register(h);
    const build = await h.submitOk({ script: 'true', secrets: ['LOG_SECRET'] });
    await w.claim(1);
    await w.start(build.id);
    const first = 'printed: log-secret-value-77\n';
    expect((await w.log(build.id, first)).offset).toBe(first.length);
    // The worker's next offset (counted in the bytes it sent) is accepted.
    expect((await w.log(build.id, 'b64: ' + Buffer.from('log-secret-value-77').toString('base64') + '\n')).offset).toBeGreaterThan(first.length);
    const log = await (await h.req('GET', paths.logs(build.id), { token: API_TOKEN })).text();
    expect(log).not.toContain('log-secret-value-77');
    expect(log).not.toContain(Buffer.from('log-secret-value-77').toString('base64'));
    expect(log.startsWith(`printed: ${'*'.repeat('log-secret-value-77'.length)}\n`)).toBe(true);
  });
});
