import { loadDashboard } from '@buildfleet/dashboard';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { paths, type AssignedBuild, type Build, type PollResponse } from '@buildfleet/protocol';
import { createTestDatabase, describePg, type TestDatabase } from '../support/pg.js';
import { API_TOKEN, errorCode, sha256, startHarness, type Harness } from './harness.js';

describe('a build from submit to download (SQLite)', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => {
    await h?.close();
  });
  flowTests(() => h);
});

describePg('a build from submit to download (PostgreSQL, blobs in PostgreSQL)', () => {
  let h: Harness;
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
    h = await startHarness({ databaseUrl: db.url });
  });
  afterAll(async () => {
    await h?.close();
    await db?.drop();
  });
  flowTests(() => h);
});

function flowTests(get: () => Harness): void {
  let h: Harness;
  beforeAll(() => {
    h = get();
  });

  it('submits, assigns, starts, logs, uploads, finishes and downloads with checksum', async () => {
    const source = new Uint8Array(300_000).map((_, i) => (i * 7) % 256);
    const submitted = await h.submitOk({ script: 'make', labels: ['linux'] }, source);
    expect(submitted.state).toBe('queued');
    expect(submitted.attempt).toBe(1);
    expect(submitted.spec).toMatchObject({ script: 'make', labels: ['linux'], timeoutSeconds: 3600, maxAttempts: 2, priority: 0 });
    expect(submitted.sourceSha256).toBe(sha256(source));
    expect(submitted.sourceSize).toBe(source.length);

    const reg = await h.registerOk({ labels: ['linux', 'x64'] });
    const poll = await h.req('POST', paths.poll(reg.workerId, 1000), { token: reg.accessToken, json: { freeSlots: 1, activeBuildIds: [] } });
    expect(poll.status).toBe(200);
    const { builds } = (await poll.json()) as PollResponse;
    expect(builds).toHaveLength(1);
    const a: AssignedBuild = builds[0]!;
    expect(a.id).toBe(submitted.id);
    expect(a.sourceUrl).toBe(`/api/v1/builds/${a.id}/source`);
    expect(a.buildToken.startsWith(`bfb_${a.id}.1.`)).toBe(true);
    expect(a.ackDeadline).not.toBeNull();

    const src = await h.req('GET', a.sourceUrl, { token: a.buildToken });
    expect(src.status).toBe(200);
    expect(sha256(new Uint8Array(await src.arrayBuffer()))).toBe(sha256(source));

    const start = await h.req('POST', paths.start(a.id), { token: a.buildToken, json: { attempt: 1 } });
    expect(start.status).toBe(200);
    expect(((await start.json()) as { build: Build }).build.state).toBe('running');

    const log1 = await h.req('POST', paths.logs(a.id), { token: a.buildToken, json: { attempt: 1, seq: 0, offset: 0, data: 'hello ' } });
    expect(log1.status).toBe(200);
    expect(await log1.json()).toEqual({ offset: 6 });
    const log2 = await h.req('POST', paths.logs(a.id), {
      token: a.buildToken,
      json: { attempt: 1, seq: 1, offset: 6, data: Buffer.from('wörld\n').toString('base64'), encoding: 'base64' },
    });
    expect(await log2.json()).toEqual({ offset: 6 + Buffer.byteLength('wörld\n') });

    const artifact = new Uint8Array(100_000).map((_, i) => i % 251);
    const name = 'out/lib hello.a';
    const put = await h.req('PUT', paths.artifact(a.id, name), {
      token: a.buildToken,
      body: artifact,
      headers: { 'content-type': 'application/octet-stream', 'x-checksum-sha256': sha256(artifact) },
    });
    expect(put.status).toBe(201);
    expect(await put.json()).toEqual({ name, size: artifact.length, sha256: sha256(artifact) });
    const again = await h.req('PUT', paths.artifact(a.id, name), {
      token: a.buildToken,
      body: artifact,
      headers: { 'content-type': 'application/octet-stream', 'x-checksum-sha256': sha256(artifact) },
    });
    expect(again.status).toBe(200);

    const finish = await h.req('POST', paths.finish(a.id), {
      token: a.buildToken,
      json: { attempt: 1, outcome: 'succeeded', exitCode: 0, message: null },
    });
    expect(finish.status).toBe(200);
    const done = ((await finish.json()) as { build: Build }).build;
    expect(done.state).toBe('succeeded');
    expect(done.exitCode).toBe(0);

    const logs = await h.req('GET', paths.logs(a.id), { token: API_TOKEN });
    expect(logs.status).toBe(200);
    expect(logs.headers.get('content-type')).toMatch(/^text\/plain/);
    expect(await logs.text()).toBe('hello wörld\n');
    const tail = await h.req('GET', `${paths.logs(a.id)}?offset=6`, { token: API_TOKEN });
    expect(await tail.text()).toBe('wörld\n');

    const list = await h.req('GET', paths.artifacts(a.id), { token: API_TOKEN });
    expect(await list.json()).toEqual({ artifacts: [{ name, size: artifact.length, sha256: sha256(artifact) }] });

    const dl = await h.req('GET', paths.artifact(a.id, name), { token: API_TOKEN });
    expect(dl.status).toBe(200);
    expect(dl.headers.get('x-checksum-sha256')).toBe(sha256(artifact));
    expect(dl.headers.get('content-length')).toBe(String(artifact.length));
    expect(sha256(new Uint8Array(await dl.arrayBuffer()))).toBe(sha256(artifact));

    const ranged = await h.req('GET', paths.artifact(a.id, name), { token: API_TOKEN, headers: { range: 'bytes=10-19' } });
    expect(ranged.status).toBe(206);
    expect(ranged.headers.get('content-range')).toBe(`bytes 10-19/${artifact.length}`);
    expect([...new Uint8Array(await ranged.arrayBuffer())]).toEqual([...artifact.slice(10, 20)]);
    const suffix = await h.req('GET', paths.artifact(a.id, name), { token: API_TOKEN, headers: { range: 'bytes=-5' } });
    expect([...new Uint8Array(await suffix.arrayBuffer())]).toEqual([...artifact.slice(-5)]);
    const outside = await h.req('GET', paths.artifact(a.id, name), { token: API_TOKEN, headers: { range: 'bytes=999999-' } });
    expect(outside.status).toBe(416);
    expect(await errorCode(outside)).toBe('VALIDATION_FAILED');
    // Last byte before the first: not a range, so the whole artifact (RFC 9110 14.1.1).
    const backwards = await h.req('GET', paths.artifact(a.id, name), { token: API_TOKEN, headers: { range: 'bytes=5-2' } });
    expect(backwards.status).toBe(200);
    expect((await backwards.arrayBuffer()).byteLength).toBe(artifact.length);

    const missing = await h.req('GET', paths.artifact(a.id, 'nope.txt'), { token: API_TOKEN });
    expect(missing.status).toBe(404);
    expect(await errorCode(missing)).toBe('ARTIFACT_NOT_FOUND');

    const got = await h.req('GET', paths.build(a.id), { token: API_TOKEN });
    const b = ((await got.json()) as { build: Build }).build;
    expect(b.state).toBe('succeeded');
    expect(b.attempts).toHaveLength(1);
    expect(b.attempts[0]).toMatchObject({ attempt: 1, workerId: reg.workerId, state: 'succeeded' });
  });

  it('accepts a spec part sent as an application/json field', async () => {
    const boundary = 'bf-boundary-7d1c';
    const body = Buffer.concat([
      Buffer.from(`--${boundary}\r\ncontent-disposition: form-data; name="spec"\r\ncontent-type: application/json\r\n\r\n`),
      Buffer.from(JSON.stringify({ script: 'make json', priority: 3 })),
      Buffer.from(`\r\n--${boundary}\r\ncontent-disposition: form-data; name="source"; filename="s.tar.gz"\r\ncontent-type: application/gzip\r\n\r\n`),
      Buffer.from('not really a tarball'),
      Buffer.from(`\r\n--${boundary}--\r\n`),
    ]);
    const res = await h.req('POST', paths.builds(), {
      token: API_TOKEN,
      body,
      headers: { 'content-type': `multipart/form-data; boundary=${boundary}` },
    });
    expect(res.status).toBe(201);
    const { build } = (await res.json()) as { build: Build };
    expect(build.spec).toMatchObject({ script: 'make json', priority: 3 });
  });

  it('lists builds by state and label with a cursor', async () => {
    const x = await h.submitOk({ script: 'a', labels: ['gpu'] });
    const y = await h.submitOk({ script: 'b', labels: ['gpu'] });
    await h.submitOk({ script: 'c' });
    const res = await h.req('GET', `${paths.builds()}?label=gpu&state=queued&limit=1`, { token: API_TOKEN });
    expect(res.status).toBe(200);
    const page1 = (await res.json()) as { builds: Build[]; nextCursor: string | null };
    expect(page1.builds).toHaveLength(1);
    expect(page1.nextCursor).not.toBeNull();
    const res2 = await h.req('GET', `${paths.builds()}?label=gpu&state=queued&limit=1&cursor=${encodeURIComponent(page1.nextCursor!)}`, {
      token: API_TOKEN,
    });
    const page2 = (await res2.json()) as { builds: Build[]; nextCursor: string | null };
    expect(page2.builds).toHaveLength(1);
    expect(new Set([page1.builds[0]!.id, page2.builds[0]!.id])).toEqual(new Set([x.id, y.id]));
    const bad = await h.req('GET', `${paths.builds()}?state=bogus`, { token: API_TOKEN });
    expect(bad.status).toBe(400);
    expect(await errorCode(bad)).toBe('VALIDATION_FAILED');
  });

  it('serves health, readiness, metrics, OpenAPI and the dashboard', async () => {
    expect((await h.req('GET', '/healthz')).status).toBe(200);
    expect((await h.req('GET', '/readyz')).status).toBe(200);
    const metrics = await (await h.req('GET', '/metrics')).text();
    expect(metrics).toMatch(/buildfleet_build_transitions_total\{to="queued"\} [1-9]/);
    expect(metrics).toMatch(/buildfleet_http_request_duration_seconds_bucket/);
    expect(metrics).toMatch(/buildfleet_claims_total/);
    const openapi = (await (await h.req('GET', '/openapi.json')).json()) as { openapi: string; paths: Record<string, unknown> };
    expect(openapi.openapi).toMatch(/^3\./);
    expect(Object.keys(openapi.paths)).toEqual(expect.arrayContaining(['/api/v1/workers/register', '/api/v1/builds/{id}/finish']));
    const page = await h.req('GET', '/');
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toMatch(/text\/html/);
    expect(page.headers.get('cache-control')).toBe('no-cache');
    const html = await page.text();
    expect(html).toMatch(/<title>buildfleet<\/title>/);
    // No external resources, no inline script.
    expect(html).not.toMatch(/<(script|link|img)[^>]+(src|href)=["']?https?:/i);
    expect(html).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/);
    // The app's own addresses answer the same page; the API's stay JSON.
    for (const p of ['/builds', '/builds/some-id', '/workers/w1', '/queue', '/tokens']) {
      const res = await h.req('GET', p);
      expect([p, res.status, await res.text()]).toEqual([p, 200, html]);
    }
    expect((await h.req('GET', '/api/v1/nope')).headers.get('content-type')).toMatch(/application\/json/);
    if (!loadDashboard().built) {
      expect(html).toContain('npm run build');
      return;
    }
    // Hashed assets: cacheable for a year, compressed when asked.
    const script = /<script[^>]*\bsrc="(\/assets\/[^"]+\.js)"/.exec(html)?.[1];
    expect(script).toBeDefined();
    const js = await h.req('GET', script!, { headers: { 'accept-encoding': 'gzip, br' } });
    expect(js.status).toBe(200);
    expect(js.headers.get('content-type')).toMatch(/^text\/javascript/);
    expect(js.headers.get('cache-control')).toBe('public, max-age=31536000, immutable');
    expect(js.headers.get('content-encoding')).toBe('br');
    expect((await js.text()).length).toBeGreaterThan(10_000);
    expect((await h.req('GET', '/assets/nope.js')).status).toBe(404);
  });
}
