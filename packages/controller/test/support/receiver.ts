/**
 * A webhook receiver on 127.0.0.1 for tests: records every request, checks
 * its signature, de-duplicates by event id, and answers what `answer`
 * decides (e.g. 500 to the first tries).
 */
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { verifyWebhook } from '../../src/webhooks/signature.js';

export interface Received {
  eventId: string;
  type: string;
  body: string;
  headers: IncomingHttpHeaders;
  signatureValid: boolean;
  status: number;
}

export class WebhookReceiver {
  readonly requests: Received[] = [];
  /** First successful (2xx) request per event id. */
  readonly delivered = new Map<string, Received>();
  secret = '';
  url = '';
  private readonly server: Server;
  private waiters: Array<() => void> = [];

  constructor(private readonly answer: (req: { eventId: string; nth: number }) => number = () => 200) {
    this.server = createServer((req, res) => {
      const parts: Buffer[] = [];
      req.on('data', (c: Buffer) => parts.push(c));
      req.on('end', () => {
        const body = Buffer.concat(parts).toString('utf8');
        const eventId = String(req.headers['x-buildfleet-event-id'] ?? '');
        const nth = this.requests.filter((r) => r.eventId === eventId).length + 1;
        const status = this.answer({ eventId, nth });
        const r: Received = {
          eventId,
          type: String(req.headers['x-buildfleet-event'] ?? ''),
          body,
          headers: req.headers,
          status,
          signatureValid: verifyWebhook({
            secret: this.secret,
            body,
            timestamp: req.headers['x-buildfleet-timestamp'] as string | undefined,
            signature: req.headers['x-buildfleet-signature'] as string | undefined,
            nowSeconds: Math.floor(Date.now() / 1000),
          }),
        };
        this.requests.push(r);
        if (status >= 200 && status < 300 && !this.delivered.has(eventId)) this.delivered.set(eventId, r);
        res.statusCode = status;
        res.end();
        for (const w of this.waiters.splice(0)) w();
      });
    });
  }

  async listen(): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/hook`;
    return this.url;
  }

  /** Resolves when `cond()` holds, re-checked after every request; rejects after `timeoutMs`. */
  async until(cond: () => boolean, what: string, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!cond()) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}: ${this.requests.length} requests, ${this.delivered.size} delivered`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 1_000));
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}
