/** nosniff on every answer; the dashboard's pages under a strict Content-Security-Policy. */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { loadDashboard } from '@buildfleet/dashboard';
import { CONTENT_SECURITY_POLICY } from '../../src/http/headers.js';
import { API_TOKEN, startHarness, type Harness } from './harness.js';

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => {
  await h?.close();
});

it('every answer says nosniff; HTML pages carry the CSP (no inline script, no other origin, no framing)', async () => {
  const asset = [...loadDashboard().files.values()].find((f) => f.urlPath.endsWith('.js'));
  for (const p of ['/', '/builds', '/healthz', '/api/v1/builds', '/api/v1/nothing', ...(asset ? [asset.urlPath] : [])]) {
    const res = await h.req('GET', p, p.startsWith('/api/v1/builds') ? { token: API_TOKEN } : {});
    await res.body?.cancel();
    expect({ p, nosniff: res.headers.get('x-content-type-options') }).toEqual({ p, nosniff: 'nosniff' });
    const html = (res.headers.get('content-type') ?? '').startsWith('text/html');
    expect({ p, csp: res.headers.get('content-security-policy') }).toEqual({ p, csp: html ? CONTENT_SECURITY_POLICY : null });
  }
  expect(CONTENT_SECURITY_POLICY).toContain("script-src 'self';");
  expect(CONTENT_SECURITY_POLICY).not.toContain('unsafe');
  expect(CONTENT_SECURITY_POLICY).toContain("frame-ancestors 'none'");
});
