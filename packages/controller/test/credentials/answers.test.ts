/**
 * Secrets in the open (issue 9; docs/protocol.md "Credentials"): after the answer
 * that created it, no token, worker secret, webhook secret or secret value
 * appears in any answer of the controller (bodies and headers of every read
 * route it registered, error messages of refused calls) nor in any line it
 * logs (trace level), through a whole worker and build lifecycle over real
 * HTTP. The secret's value is not asked for by the build, so no answer may
 * carry it at all.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { paths, type PollResponse, type RegisterResponse } from '@buildfleet/protocol';
import { createLogger } from '../../src/app.js';
import { API_TOKEN, ENROLLMENT_TOKEN, sha256, startHarness, type Harness } from '../http/harness.js';

let h: Harness;
const logLines: string[] = [];
beforeAll(async () => {
  h = await startHarness({}, { logger: createLogger('trace', { write: (s: string) => void logLines.push(s) }) });
});
afterAll(async () => {
  await h?.close();
});

/** What every answer not creating a credential said: status line, headers, body. */
const answers: string[] = [];

async function call(method: string, p: string, opts: { token?: string; json?: unknown; body?: RequestInit['body']; headers?: Record<string, string> } = {}, creates = false): Promise<Response> {
  const res = await h.req(method, p, opts);
  const text = await res.text();
  if (!creates) answers.push(`${method} ${p} ${res.status} ${JSON.stringify([...res.headers])}\n${text}`);
  return new Response([204, 304].includes(res.status) ? null : text, { status: res.status, headers: res.headers });
}

it('no credential or secret value in any answer after the one that created it, nor in the log', { timeout: 120_000 }, async () => {
  const secretValue = `secret-value-${randomUUID()}`;
  const bootId = randomUUID();
  const issued: string[] = [API_TOKEN, ENROLLMENT_TOKEN, secretValue];

  const reg = (await (await call('POST', paths.register(), { token: ENROLLMENT_TOKEN, json: { name: 'w', labels: ['sa'], maxConcurrentBuilds: 1, version: 't', bootId, activeBuildCount: 0 } }, true)).json()) as RegisterResponse;
  issued.push(reg.workerSecret!, reg.accessToken);
  const enrollment = (await (await call('POST', paths.enrollmentTokens(), { token: API_TOKEN, json: { maxUses: 5, description: 'second' } }, true)).json()) as { id: string; token: string };
  issued.push(enrollment.token);
  const hook = (await (await call('POST', '/api/v1/webhooks', { token: API_TOKEN, json: { url: 'http://127.0.0.1:1/hook', events: ['build.finished'] } }, true)).json()) as { webhook: { id: string }; secret: string };
  issued.push(hook.secret);
  const put = await call('PUT', paths.secret('DEPLOY_KEY'), { token: API_TOKEN, json: { value: secretValue } });
  expect(put.status).toBe(201);

  const build = await h.submitOk({ script: 'echo hi', labels: ['sa'], artifacts: ['out.txt'] });
  const poll = (await (await call('POST', paths.poll(reg.workerId, 0), { token: reg.accessToken, json: { freeSlots: 1, activeBuildIds: [] } }, true)).json()) as PollResponse;
  const b = poll.builds[0]!;
  issued.push(b.buildToken);
  expect((await call('POST', paths.start(b.id), { token: b.buildToken, json: { attempt: 1 } })).status).toBe(200);
  expect((await call('GET', paths.source(b.id), { token: b.buildToken })).status).toBe(200);
  expect((await call('GET', paths.buildSecrets(b.id), { token: b.buildToken })).status).toBe(200);
  // The log mentions a token the build was given: the controller stores what the worker sent, masked or not, but never adds one.
  expect((await call('POST', paths.logs(b.id), { token: b.buildToken, json: { attempt: 1, seq: 0, offset: 0, data: 'hello\n' } })).status).toBe(200);
  const artifact = 'artifact bytes';
  const up = await call('PUT', paths.artifact(b.id, 'out.txt'), { token: b.buildToken, body: artifact, headers: { 'content-type': 'application/octet-stream', 'x-checksum-sha256': sha256(artifact) } });
  expect(up.status).toBe(201);
  expect((await call('POST', paths.heartbeat(reg.workerId), { token: reg.accessToken, json: { activeBuildIds: [b.id] } })).status).toBe(200);
  // A refresh (same boot: the build goes on): the new access token is created by this answer, the old one refused afterwards.
  const fresh = (await (await call('POST', paths.register(), { json: { name: 'w', labels: ['sa'], maxConcurrentBuilds: 1, version: 't', bootId, activeBuildCount: 1, workerId: reg.workerId, workerSecret: reg.workerSecret } }, true)).json()) as RegisterResponse;
  issued.push(fresh.accessToken);
  expect((await call('POST', paths.heartbeat(reg.workerId), { token: reg.accessToken, json: { activeBuildIds: [b.id] } })).status).toBe(401);
  const finished = await call('POST', paths.finish(b.id), { token: b.buildToken, json: { attempt: 1, outcome: 'succeeded', exitCode: 0 } });
  expect(finished.status).toBe(200);
  expect(build.id).toBe(b.id);

  // Every read route the controller registered, with the credential it takes.
  const routes = h.ctl.app.buildfleet.routes.filter((r) => r.method === 'GET' && r.url !== paths.events());
  for (const r of routes) {
    const p = r.url
      .replace(/^(\/api\/v1)?\/workers\/:id/, (_m, api: string | undefined) => `${api ?? ''}/workers/${reg.workerId}`)
      .replace(/^\/api\/v1\/webhooks\/:id/, `/api/v1/webhooks/${hook.webhook.id}`)
      .replace(':id', b.id)
      .replace(':name', 'DEPLOY_KEY')
      .replace(':sha256', '0'.repeat(64))
      .replace('*', 'out.txt');
    const token = r.auth === 'public' ? undefined : r.auth.includes('api') ? API_TOKEN : r.auth.includes('build') ? b.buildToken : fresh.accessToken;
    await call('GET', p.includes('/logs') ? `${p}?offset=0` : p, token ? { token } : {});
  }
  // Every credential presented where it is refused: the error names the problem, not the token.
  for (const t of issued) {
    await call('GET', paths.builds(), { token: t.startsWith('bfa_') ? `${t}x` : t });
    await call('POST', paths.heartbeat(reg.workerId), { token: t, json: { activeBuildIds: [] } });
    await call('POST', paths.register(), { token: t, json: { name: 'x', labels: [], maxConcurrentBuilds: 1, version: 't', activeBuildCount: 0, workerId: reg.workerId, workerSecret: `${t}x` } });
  }

  expect(answers.length).toBeGreaterThan(routes.length);
  expect(answers.some((a) => a.includes('"DEPLOY_KEY"'))).toBe(true);
  for (const s of issued) {
    const leak = answers.find((a) => a.includes(s));
    expect(leak, `${s.slice(0, 6)}… appeared in an answer: ${leak?.slice(0, 300)}`).toBeUndefined();
    const logged = logLines.find((l) => l.includes(s));
    expect(logged, `${s.slice(0, 6)}… was logged: ${logged?.slice(0, 300)}`).toBeUndefined();
  }
});
