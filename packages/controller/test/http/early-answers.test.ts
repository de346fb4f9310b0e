/**
 * An upload refused before its body was read gets its answer in full: a
 * client sending a multipart submission with a wrong token or an invalid
 * spec receives the 401/400 and its message, not ECONNRESET/EPIPE; with
 * `Expect: 100-continue` it is refused before it sends a byte of the body.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import { paths } from '@buildfleet/protocol';
import { API_TOKEN, startHarness, type Harness } from './harness.js';

let h: Harness;
beforeAll(async () => {
  h = await startHarness({ maxDiscardBytes: 16 * 1024 * 1024 });
});
afterAll(async () => {
  await h?.close();
});

/** A multipart body: spec, then a source of `size` bytes. */
function form(spec: string, size: number): FormData {
  const f = new FormData();
  f.append('spec', spec);
  f.append('source', new Blob([new Uint8Array(size)]), 'source.tar.gz');
  return f;
}

/**
 * A client that sends its whole request before it reads the answer (as many
 * simple clients do): the socket is paused while writing, so an answer the
 * server sent stays in the kernel's buffer, where a reset would drop it.
 */
function sendAllThenRead(url: string, head: string, body: Buffer): Promise<{ ok: true; text: string } | { ok: false; error: string }> {
  const u = new URL(url);
  return new Promise((resolve) => {
    const socket = connect({ host: u.hostname, port: Number(u.port) });
    socket.pause();
    const chunks: Buffer[] = [];
    socket.on('error', (err: NodeJS.ErrnoException) => resolve({ ok: false, error: err.code ?? err.message }));
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('end', () => resolve({ ok: true, text: Buffer.concat(chunks).toString() }));
    socket.write(head);
    socket.write(body, () => {
      // Everything is written; now read, and stop writing.
      socket.end();
      socket.resume();
    });
  });
}

describe('refused uploads without Expect', () => {
  it('a client that reads only after sending its whole body still gets the 401', async () => {
    const body = Buffer.alloc(8 * 1024 * 1024);
    const head = `POST ${paths.builds()} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer bfa_wrong-token-00000000000000000\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`;
    for (let i = 0; i < 3; i++) {
      const got = await sendAllThenRead(h.url, head, body);
      expect(got.ok ? got.text.split('\r\n')[0] : got).toBe('HTTP/1.1 401 Unauthorized');
      if (got.ok) expect(got.text).toContain('"TOKEN_INVALID"');
    }
  });

  it('a submission with a wrong token gets 401 and its message, every time', async () => {
    for (let i = 0; i < 5; i++) {
      const res = await h.req('POST', paths.builds(), { token: 'bfa_wrong-token-00000000000000000', body: form('{"script":"x"}', 12 * 1024 * 1024) });
      expect(res.status).toBe(401);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe('TOKEN_INVALID');
    }
  });

  it('a submission with an invalid spec gets 400 naming the problem, and the connection stays usable', async () => {
    for (let i = 0; i < 5; i++) {
      const res = await h.req('POST', paths.builds(), { token: API_TOKEN, body: form('{"script":"x","labels":"not-an-array"}', 12 * 1024 * 1024) });
      expect(res.status).toBe(400);
      expect(((await res.json()) as { error: { message: string } }).error.message).toMatch(/labels/);
    }
    expect((await h.req('GET', paths.builds(), { token: API_TOKEN })).status).toBe(200);
  });

  it('an artifact over the limit gets 413, not a reset', async () => {
    const small = await startHarness({ maxArtifactBytes: 1000 });
    try {
      const labels = ['ea'];
      await small.submitOk({ script: 'x', labels });
      const reg = await small.registerOk({ labels });
      const poll = await small.req('POST', paths.poll(reg.workerId, 0), { token: reg.accessToken, json: { freeSlots: 1, activeBuildIds: [] } });
      const a = ((await poll.json()) as { builds: Array<{ id: string; buildToken: string }> }).builds[0]!;
      await small.req('POST', paths.start(a.id), { token: a.buildToken, json: { attempt: 1 } });
      // Streamed without a length, so only counting can find it too large.
      const body = new ReadableStream<Uint8Array>({
        start(c) {
          for (let i = 0; i < 64; i++) c.enqueue(new Uint8Array(64 * 1024));
          c.close();
        },
      });
      const res = await small.req('PUT', paths.artifact(a.id, 'big.bin'), {
        token: a.buildToken,
        body: body as unknown as RequestInit['body'],
        headers: { 'content-type': 'application/octet-stream', 'x-checksum-sha256': '0'.repeat(64) },
      });
      expect(res.status).toBe(413);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe('PAYLOAD_TOO_LARGE');
    } finally {
      await small.close();
    }
  });
});

describe('Expect: 100-continue', () => {
  /** Sends headers with Expect: 100-continue; sends the body only on 100 Continue. */
  function expectContinue(token: string, body: Buffer, contentType: string) {
    const u = new URL(h.url);
    return new Promise<{ status: number; continued: boolean; text: string }>((resolve, reject) => {
      let continued = false;
      const req = httpRequest(
        {
          host: u.hostname,
          port: Number(u.port),
          method: 'POST',
          path: paths.builds(),
          agent: false,
          headers: { authorization: `Bearer ${token}`, 'content-type': contentType, 'content-length': String(body.length), expect: '100-continue' },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, continued, text: Buffer.concat(chunks).toString() }));
        },
      );
      req.on('continue', () => {
        continued = true;
        req.end(body);
      });
      req.on('error', reject);
      req.flushHeaders();
    });
  }

  it('a wrong token is refused before 100 Continue; a good one gets it and the upload goes through', async () => {
    const boundary = 'xyzzy';
    const body = Buffer.from(
      `--${boundary}\r\nContent-Disposition: form-data; name="spec"\r\n\r\n{"script":"x"}\r\n` +
        `--${boundary}\r\nContent-Disposition: form-data; name="source"; filename="s.tar.gz"\r\nContent-Type: application/gzip\r\n\r\nabc\r\n--${boundary}--\r\n`,
    );
    const type = `multipart/form-data; boundary=${boundary}`;
    const refused = await expectContinue('bfa_wrong-token-00000000000000000', body, type);
    expect(refused).toMatchObject({ status: 401, continued: false });
    expect(JSON.parse(refused.text).error.code).toBe('TOKEN_INVALID');
    const accepted = await expectContinue(API_TOKEN, body, type);
    expect(accepted).toMatchObject({ status: 201, continued: true });
  });
});
