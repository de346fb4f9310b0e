/**
 * Headers on everything the controller serves. Every answer says
 * `X-Content-Type-Options: nosniff` (a browser never runs an artifact or a
 * log as a script or a page because it looks like one); HTML pages (the
 * dashboard) get a Content-Security-Policy that allows only the
 * controller's own files: no inline script or style, no other origin, no
 * framing. The dashboard is built to run under it (test/browser holds it to
 * this policy).
 */
import type { FastifyInstance } from 'fastify';

/** The policy of every HTML answer. */
export const CONTENT_SECURITY_POLICY =
  "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

export function installSecurityHeaders(app: FastifyInstance): void {
  app.addHook('onSend', async (_request, reply, payload) => {
    reply.header('x-content-type-options', 'nosniff');
    if (/^text\/html\b/i.test(String(reply.getHeader('content-type') ?? ''))) {
      reply.header('content-security-policy', CONTENT_SECURITY_POLICY);
      reply.header('x-frame-options', 'DENY');
      reply.header('referrer-policy', 'no-referrer');
    }
    return payload;
  });
}
