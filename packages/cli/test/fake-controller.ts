/**
 * A tiny real HTTP server standing in for the controller's user API in CLI
 * tests: each test installs the handlers it needs; unknown routes answer the
 * protocol's 404 error body.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export type Handler = (req: IncomingMessage, body: Buffer, res: ServerResponse, url: URL) => void | Promise<void>;

export interface FakeController {
  url: string;
  routes: Map<string, Handler>;
  requests: { method: string; path: string; auth: string | undefined }[];
  close(): Promise<void>;
}

/** Starts the server on 127.0.0.1, port 0. Routes are keyed `METHOD /path`. */
export async function startFakeController(): Promise<FakeController> {
  const routes = new Map<string, Handler>();
  const requests: FakeController['requests'] = [];
  const server: Server = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const url = new URL(req.url ?? '/', 'http://x');
    requests.push({ method: req.method ?? '', path: url.pathname, auth: req.headers.authorization });
    const h = routes.get(`${req.method} ${url.pathname}`);
    try {
      if (h) await h(req, Buffer.concat(chunks), res, url);
      else sendJson(res, 404, { error: { code: 'BUILD_NOT_FOUND', message: `no route ${url.pathname}` } });
    } catch (e) {
      sendJson(res, 500, { error: { code: 'UNAVAILABLE', message: String(e) } });
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    routes,
    requests,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}
