/**
 * Live logs: the followers of one build share one database reader (300
 * followers used to re-read the build and log every second each), every
 * follower still gets every byte exactly once (late joiners and slow readers
 * included), and one client may hold only so many streams.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request as httpRequest } from 'node:http';
import { paths, type AssignedBuild, type PollResponse } from '@buildfleet/protocol';
import { waitFor } from '../support/wait.js';
import { API_TOKEN, startHarness, type Harness } from './harness.js';

let h: Harness;
beforeAll(async () => {
  h = await startHarness({ logFollowRecheckMs: 200, maxFollowersPerClient: 1000 });
});
afterAll(async () => {
  await h?.close();
});

async function runningBuild(): Promise<AssignedBuild> {
  const labels = [`lf-${Math.random().toString(36).slice(2)}`];
  await h.submitOk({ script: 'x', labels });
  const reg = await h.registerOk({ labels });
  const poll = (await (await h.req('POST', paths.poll(reg.workerId, 0), { token: reg.accessToken, json: { freeSlots: 1, activeBuildIds: [] } })).json()) as PollResponse;
  const a = poll.builds[0]!;
  expect((await h.req('POST', paths.start(a.id), { token: a.buildToken, json: { attempt: 1 } })).status).toBe(200);
  return a;
}

/** A follower over node:http; `paused` holds reading until `resume()`. Resolves with the log text it saw. */
function follow(id: string, opts: { offset?: number; paused?: boolean } = {}) {
  const u = new URL(h.url);
  let resume = () => {};
  let opened!: () => void;
  const ready = new Promise<void>((r) => (opened = r));
  const done = new Promise<{ text: string; events: string[] }>((resolve, reject) => {
    const req = httpRequest(
      { host: u.hostname, port: Number(u.port), path: `${paths.logs(id)}?follow=1&offset=${opts.offset ?? 0}`, agent: false, headers: { authorization: `Bearer ${API_TOKEN}` } },
      (res) => {
        if (res.statusCode !== 200) reject(new Error(`status ${res.statusCode}`));
        let raw = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (raw += c));
        res.on('end', () => {
          const events = raw.split('\n\n').filter((e) => e.startsWith('event: '));
          const text = events
            .filter((e) => e.startsWith('event: log'))
            .map((e) => (JSON.parse(e.slice(e.indexOf('data: ') + 6)) as { text: string }).text)
            .join('');
          resolve({ text, events: events.map((e) => e.split('\n')[0]!.slice(7)) });
        });
        if (opts.paused) {
          res.pause();
          resume = () => res.resume();
        }
        opened();
      },
    );
    req.on('error', reject);
    req.end();
  });
  return { done, ready, resume: () => resume() };
}

/** Counts calls of two store methods while `fn` runs. */
async function counting<T>(fn: () => Promise<T>): Promise<{ result: T; getBuild: number; readLog: number }> {
  const store = h.ctl.store;
  const getBuild = store.getBuild.bind(store);
  const readLog = store.readLog.bind(store);
  const n = { getBuild: 0, readLog: 0 };
  store.getBuild = (...a) => (n.getBuild++, getBuild(...a));
  store.readLog = (...a) => (n.readLog++, readLog(...a));
  try {
    return { result: await fn(), ...n };
  } finally {
    store.getBuild = getBuild;
    store.readLog = readLog;
  }
}

describe('one reader per followed build', () => {
  it('100 followers: every byte to each, with database reads that do not grow with the followers', async () => {
    const a = await runningBuild();
    let offset = 0;
    let seq = 0;
    let expected = '';
    const write = async (text: string) => {
      const res = await h.req('POST', paths.logs(a.id), { token: a.buildToken, json: { attempt: 1, seq: seq++, offset, data: text } });
      offset = ((await res.json()) as { offset: number }).offset;
      expected += text;
    };
    await write('before anyone followed\n');
    const followers = Array.from({ length: 100 }, () => follow(a.id));
    await Promise.all(followers.map((f) => f.ready));
    const { result, getBuild, readLog } = await counting(async () => {
      for (let i = 0; i < 10; i++) await write(`line ${i} ${'é'.repeat(i)}\n`);
      await h.req('POST', paths.finish(a.id), { token: a.buildToken, json: { attempt: 1, outcome: 'succeeded', exitCode: 0 } });
      return Promise.all(followers.map((f) => f.done));
    });
    for (const r of result) {
      expect(r.text).toBe(expected);
      expect(r.events.at(-1)).toBe('end');
    }
    // Old code: every follower read the build and the log on every wake-up (>= 100 x 11 each).
    expect(getBuild).toBeLessThan(80);
    expect(readLog).toBeLessThan(80);
  });

  it('a late joiner from offset 0 and a slow reader get every byte past the shared window', async () => {
    const a = await runningBuild();
    const chunk = (i: number) => String.fromCharCode(97 + i).repeat(700 * 1024);
    let offset = 0;
    const slow = follow(a.id, { paused: true });
    await slow.ready;
    for (let i = 0; i < 4; i++) {
      const res = await h.req('POST', paths.logs(a.id), { token: a.buildToken, json: { attempt: 1, seq: i, offset, data: chunk(i) } });
      offset = ((await res.json()) as { offset: number }).offset;
    }
    const late = follow(a.id, { offset: 0 });
    const mid = follow(a.id, { offset: 700 * 1024 + 5 });
    await h.req('POST', paths.finish(a.id), { token: a.buildToken, json: { attempt: 1, outcome: 'succeeded', exitCode: 0 } });
    slow.resume();
    const all = [0, 1, 2, 3].map(chunk).join('');
    expect((await late.done).text).toBe(all);
    expect((await mid.done).text).toBe(all.slice(700 * 1024 + 5));
    expect((await slow.done).text).toBe(all);
    expect(h.ctl.app.buildfleet.logFollows.size).toBe(0);
  });
});

describe('followers per client', () => {
  it('past the cap a client gets 429 RATE_LIMITED with Retry-After until it closes one', async () => {
    const capped = await startHarness({ maxFollowersPerClient: 2 });
    try {
      const labels = ['cap'];
      const b = await capped.submitOk({ script: 'x', labels });
      const open = [new AbortController(), new AbortController()];
      for (const c of open) {
        const res = await capped.req('GET', `${paths.logs(b.id)}?follow=1`, { token: API_TOKEN, signal: c.signal });
        expect(res.status).toBe(200);
      }
      const third = await capped.req('GET', `${paths.logs(b.id)}?follow=1`, { token: API_TOKEN });
      expect(third.status).toBe(429);
      expect(third.headers.get('retry-after')).toMatch(/^\d+$/);
      expect(((await third.json()) as { error: { code: string } }).error.code).toBe('RATE_LIMITED');
      // A plain (not followed) read is not a follower.
      expect((await capped.req('GET', paths.logs(b.id), { token: API_TOKEN })).status).toBe(200);
      open[0]!.abort();
      const hub = capped.ctl.app.buildfleet.logFollows;
      await waitFor(() => hub.following('127.0.0.1') < 2, { what: 'the server to notice the closed stream' });
      const again = await capped.req('GET', `${paths.logs(b.id)}?follow=1`, { token: API_TOKEN });
      expect(again.status).toBe(200);
      await again.body?.cancel();
      open[1]!.abort();
    } finally {
      await capped.close();
    }
  });
});
