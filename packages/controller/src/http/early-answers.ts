/**
 * Answers to uploads refused before their body was read (a wrong token, an
 * invalid spec, a size over the limit) must reach the client in full. If
 * the controller closes the connection while the client is still sending,
 * most clients report ECONNRESET/EPIPE instead of the 401/400/413 and its
 * message. So:
 * - `Expect: 100-continue` is honoured: `100 Continue` goes out only once
 *   the request passed authentication (fastify's preParsing stage), so a
 *   refused client never sends its body at all;
 * - otherwise the rest of the body is read and thrown away before the
 *   answer is sent, up to `maxDiscardBytes` and `DISCARD_TIMEOUT_MS`: closing
 *   a socket with unread bytes makes the kernel send a reset, which drops an
 *   answer the client has not read yet. A larger (declared or counted) or
 *   slower body gets the answer with `Connection: close`.
 */
import type { FastifyInstance, FastifyRequest, FastifyReply } from 'fastify';
import type { Clock } from '@buildfleet/protocol';

/** Longest wait for the rest of a refused body before answering anyway, ms. */
const DISCARD_TIMEOUT_MS = 10_000;

declare module 'fastify' {
  interface FastifyRequest {
    /** Set once `100 Continue` was sent (the client may now send its body). */
    continued?: boolean;
  }
}

export function installEarlyAnswers(app: FastifyInstance, maxDiscardBytes: number, clock: Clock): void {
  // Without a listener Node answers 100 Continue itself, before any check.
  app.server.on('checkContinue', (req, res) => app.server.emit('request', req, res));
  app.addHook('preParsing', async (request, reply, payload) => {
    if (expectsContinue(request) && !reply.raw.headersSent) {
      reply.raw.writeContinue();
      request.continued = true;
    }
    return payload;
  });
  app.addHook('onSend', async (request, reply, payload) => {
    await discardUnread(request, reply, maxDiscardBytes, clock);
    return payload;
  });
}

function expectsContinue(request: FastifyRequest): boolean {
  return /100-continue/i.test(String(request.headers.expect ?? ''));
}

/**
 * When `request`'s body has not fully arrived: reads and drops it (at most
 * `max` bytes, for at most DISCARD_TIMEOUT_MS) so the answer can follow on
 * an orderly connection; else, or when the client still waits for `100
 * Continue` and will not send it, the answer closes the connection.
 */
async function discardUnread(request: FastifyRequest, reply: FastifyReply, max: number, clock: Clock): Promise<void> {
  const req = request.raw;
  if (req.complete || req.readableEnded) return;
  const declared = Number(req.headers['content-length']);
  if ((expectsContinue(request) && !request.continued) || (Number.isFinite(declared) && declared > max)) {
    reply.header('connection', 'close');
    return;
  }
  const drained = await new Promise<boolean>((resolve) => {
    let seen = 0;
    const done = (ok: boolean) => {
      clock.clearTimeout(timer);
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      resolve(ok);
    };
    const onData = (chunk: Buffer) => {
      seen += chunk.length;
      if (seen > max) done(false);
    };
    const onEnd = () => done(true);
    const onError = () => done(false);
    const timer = clock.setTimeout(() => done(false), DISCARD_TIMEOUT_MS);
    // Whoever was reading (a multipart parser, a blob upload) has given up.
    req.unpipe();
    req.removeAllListeners('data');
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
    req.resume();
  });
  // fastify marks a body-limit error `Connection: close`; after a full read the connection is fine.
  if (drained) reply.removeHeader('connection');
  else reply.header('connection', 'close');
}
