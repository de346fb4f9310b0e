/**
 * A small HTTP proxy in front of a real controller, for faults the real one
 * cannot make and for seeing what a client sent. It forwards every request
 * (bodies and answers streamed, so an event stream stays live), records each
 * one (`seen`), and lets a test answer a request itself (`intercept`), e.g.
 * with a `500 INTERNAL` the controller gives only for a bug.
 */
import { createServer, request as httpRequest, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface SeenRequest {
  method: string;
  path: string;
  accept: string | undefined;
}

/** A canned answer instead of the controller's. */
export interface Intercepted {
  status: number;
  body?: unknown;
}

export class RecordingProxy {
  readonly seen: SeenRequest[] = [];
  /** Return an answer to give it instead of forwarding the request. */
  intercept: ((req: SeenRequest) => Intercepted | undefined) | undefined;
  url = '';
  private readonly server: Server;

  private constructor(private readonly target: URL) {
    this.server = createServer((req, res) => {
      const seen: SeenRequest = { method: req.method ?? 'GET', path: req.url ?? '/', accept: req.headers.accept };
      this.seen.push(seen);
      const canned = this.intercept?.(seen);
      if (canned) {
        req.resume();
        res.writeHead(canned.status, { 'content-type': 'application/json' });
        res.end(canned.body === undefined ? '' : JSON.stringify(canned.body));
        return;
      }
      const up = httpRequest(
        { host: this.target.hostname, port: Number(this.target.port), method: req.method, path: req.url, headers: req.headers },
        (answer: IncomingMessage) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
        },
      );
      up.on('error', () => res.destroy());
      req.pipe(up);
    });
  }

  static async start(targetUrl: string): Promise<RecordingProxy> {
    const p = new RecordingProxy(new URL(targetUrl));
    await new Promise<void>((r) => p.server.listen(0, '127.0.0.1', r));
    p.url = `http://127.0.0.1:${(p.server.address() as AddressInfo).port}`;
    return p;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}
