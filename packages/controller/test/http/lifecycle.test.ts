/**
 * Controller lifecycle: first-start credentials, restarts on the same data
 * directory, the reaper's restart grace (driven by a FakeClock), and the
 * live log stream (SSE).
 */
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pino from 'pino';
import { ApiError, FakeClock, paths, type Build, type PollResponse, type RegisterResponse } from '@buildfleet/protocol';
import { loadControllerConfig } from '../../src/config.js';
import { startController } from '../../src/server.js';
import { REDACT_PATHS } from '../../src/app.js';
import { API_TOKEN, ENROLLMENT_TOKEN, startHarness, type Harness } from './harness.js';

describe('first start', () => {
  let dataDir: string;
  beforeAll(async () => {
    dataDir = await mkdtemp(path.join(tmpdir(), 'bf-first-'));
  });
  afterAll(async () => {
    await rm(dataDir, { recursive: true, force: true });
  });

  it('generates both tokens once, writes credentials.json (0600) and keeps them across a restart', async () => {
    const config = loadControllerConfig({}, { port: 0, dataDir, logLevel: 'silent' });
    const first = await startController(config);
    let apiToken: string;
    try {
      expect(first.firstStart).toBeDefined();
      apiToken = first.firstStart!.apiToken;
      expect(apiToken).toMatch(/^bfa_/);
      expect(first.firstStart!.enrollmentToken).toMatch(/^bfe_/);
      const file = first.firstStart!.credentialsFile;
      expect(file).toBe(path.join(dataDir, 'credentials.json'));
      const saved = JSON.parse(await readFile(file, 'utf8')) as Record<string, string>;
      expect(saved).toEqual({ apiToken, enrollmentToken: first.firstStart!.enrollmentToken, url: first.url });
      expect((await stat(file)).mode & 0o777).toBe(0o600);
      const res = await fetch(first.url + paths.builds(), { headers: { authorization: `Bearer ${apiToken}` } });
      expect(res.status).toBe(200);
      const reg = await fetch(first.url + paths.register(), {
        method: 'POST',
        headers: { authorization: `Bearer ${first.firstStart!.enrollmentToken}`, 'content-type': 'application/json' },
        body: JSON.stringify({ name: 'w', labels: [], maxConcurrentBuilds: 1, version: 't' }),
      });
      expect(reg.status).toBe(201);
    } finally {
      await first.close();
    }
    const second = await startController(config);
    try {
      expect(second.firstStart).toBeUndefined();
      const res = await fetch(second.url + paths.builds(), { headers: { authorization: `Bearer ${apiToken}` } });
      expect(res.status).toBe(200);
    } finally {
      await second.close();
    }
  });
});

describe('reaper', () => {
  it('leaves leases alone for leaseMs after start, then requeues an unacknowledged build as a new attempt', async () => {
    const clock = new FakeClock();
    const dataDir = await mkdtemp(path.join(tmpdir(), 'bf-reap-'));
    const config = loadControllerConfig(
      {},
      {
        port: 0,
        dataDir,
        logLevel: 'silent',
        apiToken: API_TOKEN,
        enrollmentToken: ENROLLMENT_TOKEN,
        ackTimeoutMs: 1_000,
        leaseMs: 10_000,
        heartbeatIntervalMs: 1_000,
      },
    );
    const ctl = await startController(config, { clock, reaper: false });
    try {
      const req = (method: string, p: string, token: string, json?: unknown, body?: FormData) =>
        fetch(ctl.url + p, {
          method,
          headers: { authorization: `Bearer ${token}`, ...(json !== undefined ? { 'content-type': 'application/json' } : {}) },
          body: body ?? (json !== undefined ? JSON.stringify(json) : undefined),
        });
      const form = new FormData();
      form.append('spec', JSON.stringify({ script: 'x' }));
      form.append('source', new Blob([new Uint8Array([1])]), 's.tar.gz');
      const build = ((await (await req('POST', paths.builds(), API_TOKEN, undefined, form)).json()) as { build: Build }).build;
      const reg = (await (await req('POST', paths.register(), ENROLLMENT_TOKEN, { name: 'w', labels: [], maxConcurrentBuilds: 1, version: 't' })).json()) as RegisterResponse;
      const poll = (await (await req('POST', paths.poll(reg.workerId, 0), reg.accessToken, { freeSlots: 1, activeBuildIds: [] })).json()) as PollResponse;
      expect(poll.builds[0]!.id).toBe(build.id);

      await clock.advance(5_000); // past the ack deadline, inside the restart grace
      expect(ctl.reaper.reapsLeases).toBe(false);
      expect((await ctl.reaper.reapOnce()).requeued).toEqual([]);
      const held = ((await (await req('GET', paths.build(build.id), API_TOKEN)).json()) as { build: Build }).build;
      expect(held).toMatchObject({ state: 'assigned', attempt: 1 });

      await clock.advance(6_000); // grace over
      expect(ctl.reaper.reapsLeases).toBe(true);
      expect((await ctl.reaper.reapOnce()).requeued).toEqual([build.id]);
      const requeued = ((await (await req('GET', paths.build(build.id), API_TOKEN)).json()) as { build: Build }).build;
      expect(requeued).toMatchObject({ state: 'queued', attempt: 2, workerId: null });
      const metrics = await (await fetch(ctl.url + '/metrics')).text();
      expect(metrics).toMatch(/buildfleet_build_transitions_total\{to="queued"\} 2/);
    } finally {
      await ctl.close();
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it('runs on its own every min(ackTimeoutMs, leaseMs)/4 on the injected clock', async () => {
    const clock = new FakeClock();
    const dataDir = await mkdtemp(path.join(tmpdir(), 'bf-reap2-'));
    const config = loadControllerConfig({}, { port: 0, dataDir, logLevel: 'silent', apiToken: API_TOKEN, ackTimeoutMs: 400, leaseMs: 2_000, heartbeatIntervalMs: 500 });
    const ctl = await startController(config, { clock });
    const rounds: number[] = [];
    const original = ctl.store.reap.bind(ctl.store);
    ctl.store.reap = async (o) => {
      rounds.push(clock.monotonic());
      return original(o);
    };
    try {
      await clock.advance(100);
      await clock.advance(100);
      await clock.advance(100);
      expect(rounds).toEqual([100, 200, 300]);
    } finally {
      await ctl.close();
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});

describe('log stream (SSE)', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ logFollowRecheckMs: 60_000 });
  });
  afterAll(async () => {
    await h?.close();
  });

  it('streams log text as it arrives and ends with the final state', async () => {
    await h.submitOk({ script: 'x', labels: ['sse'] });
    const reg = await h.registerOk({ labels: ['sse'] });
    const a = ((await (await h.req('POST', paths.poll(reg.workerId, 0), { token: reg.accessToken, json: { freeSlots: 1, activeBuildIds: [] } })).json()) as PollResponse).builds[0]!;
    await h.req('POST', paths.start(a.id), { token: a.buildToken, json: { attempt: 1 } });
    await h.req('POST', paths.logs(a.id), { token: a.buildToken, json: { attempt: 1, seq: 0, offset: 0, data: 'one\n' } });

    const res = await h.req('GET', paths.logs(a.id), { token: API_TOKEN, headers: { accept: 'text/event-stream' } });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    let buffered = '';
    const events: Array<{ event: string; data: Record<string, unknown> }> = [];
    const next = async (): Promise<{ event: string; data: Record<string, unknown> } | undefined> => {
      for (;;) {
        const end = buffered.indexOf('\n\n');
        if (end >= 0) {
          const block = buffered.slice(0, end);
          buffered = buffered.slice(end + 2);
          const event = /^event: (.*)$/m.exec(block)?.[1] ?? 'message';
          const data = JSON.parse(/^data: (.*)$/m.exec(block)?.[1] ?? '{}') as Record<string, unknown>;
          events.push({ event, data });
          return { event, data };
        }
        const { value, done } = await reader.read();
        if (done) return undefined;
        buffered += decoder.decode(value, { stream: true });
      }
    };
    const until = async (pred: (e: { event: string; data: Record<string, unknown> }) => boolean) => {
      for (;;) {
        const e = await next();
        if (!e) throw new Error(`stream ended before the expected event; got ${JSON.stringify(events)}`);
        if (pred(e)) return e;
      }
    };
    expect((await until((e) => e.event === 'log')).data).toEqual({ attempt: 1, offset: 0, text: 'one\n' });
    // New text arrives through the 'logs' wake-up (the re-check is a minute away).
    await h.req('POST', paths.logs(a.id), { token: a.buildToken, json: { attempt: 1, seq: 1, offset: 4, data: 'two\n' } });
    expect((await until((e) => e.event === 'log')).data).toEqual({ attempt: 1, offset: 4, text: 'two\n' });
    await h.req('POST', paths.finish(a.id), { token: a.buildToken, json: { attempt: 1, outcome: 'failed', exitCode: 2 } });
    const end = await until((e) => e.event === 'end');
    expect(end.data).toMatchObject({ state: 'failed', attempt: 1, exitCode: 2 });
    expect(await next()).toBeUndefined();
  });

  it('following the current attempt moves to the next attempt when the build is requeued', async () => {
    await h.submitOk({ script: 'x', labels: ['sse3'] });
    const reg = await h.registerOk({ labels: ['sse3'] });
    const a = ((await (await h.req('POST', paths.poll(reg.workerId, 0), { token: reg.accessToken, json: { freeSlots: 1, activeBuildIds: [] } })).json()) as PollResponse).builds[0]!;
    await h.req('POST', paths.start(a.id), { token: a.buildToken, json: { attempt: 1 } });
    await h.req('POST', paths.logs(a.id), { token: a.buildToken, json: { attempt: 1, seq: 0, offset: 0, data: 'first try\n' } });
    const res = await h.req('GET', `${paths.logs(a.id)}?follow=1`, { token: API_TOKEN });
    const stream = (async () => {
      let text = '';
      const decoder = new TextDecoder();
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) text += decoder.decode(chunk, { stream: true });
      return text;
    })();
    // The worker is deleted: attempt 1 is lost, attempt 2 runs on another worker.
    await h.req('DELETE', paths.worker(reg.workerId), { token: API_TOKEN });
    const reg2 = await h.registerOk({ labels: ['sse3'] });
    const a2 = ((await (await h.req('POST', paths.poll(reg2.workerId, 0), { token: reg2.accessToken, json: { freeSlots: 1, activeBuildIds: [] } })).json()) as PollResponse).builds[0]!;
    expect(a2.attempt).toBe(2);
    await h.req('POST', paths.start(a.id), { token: a2.buildToken, json: { attempt: 2 } });
    await h.req('POST', paths.logs(a.id), { token: a2.buildToken, json: { attempt: 2, seq: 0, offset: 0, data: 'second try\n' } });
    await h.req('POST', paths.finish(a.id), { token: a2.buildToken, json: { attempt: 2, outcome: 'succeeded', exitCode: 0 } });
    const text = await stream;
    const order = ['"text":"first try\\n"', 'event: attempt\ndata: {"attempt":2}', '"attempt":2,"offset":0,"text":"second try\\n"', 'event: end'];
    const positions = order.map((needle) => text.indexOf(needle));
    expect(positions.every((p) => p >= 0), text).toBe(true);
    expect([...positions].sort((x, y) => x - y)).toEqual(positions);
  });

  it('follow=1 on a finished build sends everything from the offset and ends', async () => {
    await h.submitOk({ script: 'x', labels: ['sse2'] });
    const reg = await h.registerOk({ labels: ['sse2'] });
    const a = ((await (await h.req('POST', paths.poll(reg.workerId, 0), { token: reg.accessToken, json: { freeSlots: 1, activeBuildIds: [] } })).json()) as PollResponse).builds[0]!;
    await h.req('POST', paths.start(a.id), { token: a.buildToken, json: { attempt: 1 } });
    await h.req('POST', paths.logs(a.id), { token: a.buildToken, json: { attempt: 1, seq: 0, offset: 0, data: 'héllo wörld' } });
    await h.req('POST', paths.finish(a.id), { token: a.buildToken, json: { attempt: 1, outcome: 'succeeded', exitCode: 0 } });
    const text = await (await h.req('GET', `${paths.logs(a.id)}?follow=1&offset=0`, { token: API_TOKEN })).text();
    expect(text).toContain('event: log\ndata: {"attempt":1,"offset":0,"text":"héllo wörld"}');
    expect(text).toMatch(/event: end\ndata: \{"state":"succeeded"/);
  });
});

describe('operations', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => {
    await h?.close();
  });

  it('a store that is unreachable answers 503 UNAVAILABLE with Retry-After, and /readyz says so', async () => {
    const store = h.ctl.store;
    const ping = store.ping.bind(store);
    const getBuild = store.getBuild.bind(store);
    const down = async (): Promise<never> => {
      throw new ApiError('UNAVAILABLE', 'database unreachable');
    };
    store.ping = down;
    store.getBuild = down;
    try {
      const ready = await h.req('GET', '/readyz');
      expect(ready.status).toBe(503);
      expect(ready.headers.get('retry-after')).toMatch(/^\d+$/);
      const res = await h.req('GET', paths.build('any'), { token: API_TOKEN });
      expect(res.status).toBe(503);
      expect(res.headers.get('retry-after')).toMatch(/^\d+$/);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe('UNAVAILABLE');
      expect((await h.req('GET', '/healthz')).status).toBe(200);
    } finally {
      store.ping = ping;
      store.getBuild = getBuild;
    }
    expect((await h.req('GET', '/readyz')).status).toBe(200);
  });
});

describe('logging', () => {
  it('never writes a token or secret to the log', async () => {
    const lines: string[] = [];
    const logger = pino(
      { level: 'trace', redact: { paths: REDACT_PATHS, censor: '[redacted]' } },
      { write: (line: string) => void lines.push(line) },
    );
    const dataDir = await mkdtemp(path.join(tmpdir(), 'bf-log-'));
    const ctl = await startController(loadControllerConfig({}, { port: 0, dataDir, logLevel: 'trace' }), { logger: logger as never });
    try {
      const { apiToken, enrollmentToken } = ctl.firstStart!;
      const reg = await fetch(ctl.url + paths.register(), {
        method: 'POST',
        headers: { authorization: `Bearer ${enrollmentToken}`, 'content-type': 'application/json' },
        body: JSON.stringify({ name: 'w', labels: [], maxConcurrentBuilds: 1, version: 't' }),
      });
      const body = (await reg.json()) as RegisterResponse;
      await fetch(ctl.url + paths.heartbeat(body.workerId), {
        method: 'POST',
        headers: { authorization: `Bearer ${body.accessToken}`, 'content-type': 'application/json' },
        body: JSON.stringify({ activeBuildIds: [] }),
      });
      await fetch(ctl.url + paths.builds(), { headers: { authorization: `Bearer ${apiToken}` } });
      await fetch(ctl.url + paths.builds(), { headers: { authorization: `Bearer bfa_wrong-token-000000000000` } });
      expect(lines.length).toBeGreaterThan(5);
      const all = lines.join('\n');
      for (const secret of [apiToken, enrollmentToken, body.accessToken, body.workerSecret!]) expect(all).not.toContain(secret);
      expect(all).not.toContain('bfa_wrong-token');
    } finally {
      await ctl.close();
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
