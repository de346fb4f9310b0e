/**
 * What the dashboard reads (docs/protocol.md "Builds" filters and paging,
 * `waiting`, `workerName`, worker `state`, `GET /events`, `GET /stats`,
 * `POST /workers/{id}/resume`), over real HTTP on SQLite and PostgreSQL.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { paths, type Build, type BuildList, type Stats, type Worker } from '@buildfleet/protocol';
import { API_TOKEN, errorCode, startHarness, type Harness } from './harness.js';
import { createTestDatabase, describePg, type TestDatabase } from '../support/pg.js';

/** Reads `GET /events` as parsed events; `next(pred)` resolves with the first matching one. */
function openEvents(h: Harness) {
  const ac = new AbortController();
  const seen: Array<{ event: string; data: Record<string, unknown> }> = [];
  const waiters: Array<{ pred: (e: (typeof seen)[number]) => boolean; resolve: (e: (typeof seen)[number]) => void }> = [];
  const ready = (async () => {
    const res = await h.req('GET', paths.events(), { token: API_TOKEN, headers: { accept: 'text/event-stream' }, signal: ac.signal });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    return res.body!.pipeThrough(new TextDecoderStream()).getReader();
  })();
  const pump = (async () => {
    const reader = await ready;
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read().catch(() => ({ value: undefined, done: true as const }));
      if (done) return;
      buf += value;
      let i: number;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const event = /^event: (.*)$/m.exec(block)?.[1];
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (!event || data === undefined) continue;
        const e = { event, data: JSON.parse(data) as Record<string, unknown> };
        seen.push(e);
        for (const w of [...waiters]) {
          if (w.pred(e)) {
            waiters.splice(waiters.indexOf(w), 1);
            w.resolve(e);
          }
        }
      }
    }
  })();
  return {
    seen,
    next(pred: (e: (typeof seen)[number]) => boolean) {
      const hit = seen.find(pred);
      if (hit) return Promise.resolve(hit);
      return new Promise<(typeof seen)[number]>((resolve) => waiters.push({ pred, resolve }));
    },
    async close() {
      ac.abort();
      await pump.catch(() => {});
    },
  };
}

/** `pg`: each test gets a database of its own. */
function suite(name: string, pg: boolean) {
  describe(name, () => {
    let h: Harness;
    let db: TestDatabase | undefined;
    beforeEach(async () => {
      db = pg ? await createTestDatabase() : undefined;
      h = await startHarness(db ? { databaseUrl: db.url, leaseMs: 60_000 } : { leaseMs: 60_000 });
    });
    afterEach(async () => {
      await h?.close();
      await db?.drop();
    });

    const api = async <T>(method: string, p: string, json?: unknown): Promise<T> => {
      const res = await h.req(method, p, { token: API_TOKEN, ...(json !== undefined ? { json } : {}) });
      expect(res.status, `${method} ${p}`).toBeLessThan(300);
      return (await res.json()) as T;
    };
    const list = (query: string) => api<BuildList>('GET', `${paths.builds()}?${query}`);

    it('filters by free text, metadata and worker, and pages both ways with cursor and before', async () => {
      const made: Build[] = [];
      for (let i = 0; i < 7; i++) {
        made.push(
          await h.submitOk({
            script: i === 3 ? 'make Needle-Test' : `echo ${i}`,
            name: i === 5 ? 'release build' : undefined,
            metadata: { branch: i % 2 ? 'main' : 'dev', n: i },
          }),
        );
      }
      const ids = (l: BuildList) => l.builds.map((b) => b.id);
      expect(ids(await list('q=needle-test'))).toEqual([made[3]!.id]);
      expect(ids(await list('q=RELEASE'))).toEqual([made[5]!.id]);
      expect(ids(await list(`q=${made[2]!.id.slice(-10)}`))).toEqual([made[2]!.id]);
      expect(ids(await list('q=50%25'))).toEqual([]);
      expect(ids(await list('meta=branch%3Dmain'))).toEqual([made[5]!.id, made[3]!.id, made[1]!.id]);
      expect(ids(await list('meta=branch%3Dmain&meta=n%3D3'))).toEqual([made[3]!.id]);
      expect(await errorCode(await h.req('GET', `${paths.builds()}?meta=bad%22key%3Dx`, { token: API_TOKEN }))).toBe('VALIDATION_FAILED');

      // Newest first, three a page: 6 5 4 | 3 2 1 | 0, then back up.
      const p1 = await list('limit=3');
      expect(ids(p1)).toEqual([6, 5, 4].map((i) => made[i]!.id));
      expect(p1.prevCursor).toBeNull();
      const p2 = await list(`limit=3&cursor=${p1.nextCursor}`);
      expect(ids(p2)).toEqual([3, 2, 1].map((i) => made[i]!.id));
      const p3 = await list(`limit=3&cursor=${p2.nextCursor}`);
      expect(ids(p3)).toEqual([made[0]!.id]);
      expect(p3.nextCursor).toBeNull();
      const back2 = await list(`limit=3&before=${p3.prevCursor}`);
      expect(ids(back2)).toEqual(ids(p2));
      expect(back2.nextCursor).not.toBeNull();
      const back1 = await list(`limit=3&before=${back2.prevCursor}`);
      expect(ids(back1)).toEqual(ids(p1));
      expect(back1.prevCursor).toBeNull();
      expect(await errorCode(await h.req('GET', `${paths.builds()}?cursor=${p1.nextCursor}&before=${p1.nextCursor}`, { token: API_TOKEN }))).toBe(
        'VALIDATION_FAILED',
      );
    });

    it("says why a queued build waits, names the build's worker, and resumes a drained worker", async () => {
      const gpu = await h.submitOk({ script: 'true', labels: ['gpu'] });
      expect(gpu.waiting).toEqual({ reason: 'no_matching_worker', position: 1 });
      const reg = await h.registerOk({ name: 'gpu-box', labels: ['gpu', 'linux'], maxConcurrentBuilds: 1 });
      const second = await h.submitOk({ script: 'true', labels: ['gpu'] });
      expect(second.waiting).toEqual({ reason: 'workers_busy', position: 2 });

      await api('POST', paths.drain(reg.workerId));
      expect((await api<{ build: Build }>('GET', paths.build(second.id))).build.waiting?.reason).toBe('workers_draining');
      const worker = (await api<{ worker: Worker }>('GET', paths.worker(reg.workerId))).worker;
      expect([worker.status, worker.state]).toEqual(['draining', 'draining']);

      const resumed = await api<{ worker: Worker }>('POST', paths.resume(reg.workerId));
      expect([resumed.worker.status, resumed.worker.state]).toEqual(['active', 'idle']);
      expect(await errorCode(await h.req('POST', paths.resume('no-such-worker'), { token: API_TOKEN }))).toBe('WORKER_NOT_FOUND');

      // Resumed for real: its poll claims the oldest build, which then names its worker.
      const poll = await h.req('POST', paths.poll(reg.workerId, 0), { token: reg.accessToken, json: { freeSlots: 1, activeBuildIds: [] } });
      expect(poll.status).toBe(200);
      const claimed = (await api<{ build: Build }>('GET', paths.build(gpu.id))).build;
      expect([claimed.state, claimed.workerName, claimed.waiting ?? null, claimed.attempts[0]?.workerName]).toEqual([
        'assigned',
        'gpu-box',
        null,
        'gpu-box',
      ]);
      expect((await api<{ workers: Worker[] }>('GET', paths.workers())).workers.map((w) => w.state)).toEqual(['building']);
      const listed = await list('state=queued');
      expect(listed.builds.map((b) => [b.id, b.waiting?.position])).toEqual([[second.id, 1]]);
    });

    it('streams build and worker changes on GET /events', async () => {
      const events = openEvents(h);
      await events.next((e) => e.event === 'hello');
      const reg = await h.registerOk({ name: 'evented', labels: [] });
      await events.next((e) => e.event === 'worker' && (e.data.worker as Worker).id === reg.workerId);
      const build = await h.submitOk({ script: 'true' });
      const queued = await events.next((e) => e.event === 'build' && (e.data.build as Build).id === build.id);
      expect((queued.data.build as Build).state).toBe('queued');
      await h.req('POST', paths.poll(reg.workerId, 0), { token: reg.accessToken, json: { freeSlots: 1, activeBuildIds: [] } });
      const assigned = await events.next((e) => e.event === 'build' && (e.data.build as Build).state === 'assigned');
      expect((assigned.data.build as Build).workerName).toBe('evented');
      await events.next((e) => e.event === 'worker' && (e.data.worker as Worker).state === 'building');
      await api('DELETE', paths.worker(reg.workerId));
      await events.next((e) => e.event === 'worker-deleted' && e.data.id === reg.workerId);
      // The lost build went back to the queue as attempt 2.
      await events.next((e) => e.event === 'build' && (e.data.build as Build).attempt === 2);
      await events.close();
    });

    it.runIf(pg)('streams changes made through another controller on the same database (LISTEN/NOTIFY)', async () => {
      const other = await startHarness({ databaseUrl: db!.url, leaseMs: 60_000 });
      try {
        const events = openEvents(h);
        await events.next((e) => e.event === 'hello');
        const reg = await other.registerOk({ name: 'elsewhere' });
        await events.next((e) => e.event === 'worker' && (e.data.worker as Worker).name === 'elsewhere');
        const build = await other.submitOk({ script: 'true' });
        await events.next((e) => e.event === 'build' && (e.data.build as Build).id === build.id);
        await other.req('POST', paths.poll(reg.workerId, 0), { token: reg.accessToken, json: { freeSlots: 1, activeBuildIds: [] } });
        await events.next((e) => e.event === 'build' && (e.data.build as Build).id === build.id && (e.data.build as Build).state === 'assigned');
        await events.close();
      } finally {
        await other.close();
      }
    });

    it('counts queued builds per label set and finished builds per minute', async () => {
      const reg = await h.registerOk({ labels: ['linux'] });
      const done = await h.submitOk({ script: 'true', labels: ['linux'] });
      await h.submitOk({ script: 'true', labels: ['arm'] });
      await h.submitOk({ script: 'true', labels: ['arm'] });
      const poll = (await (await h.req('POST', paths.poll(reg.workerId, 0), { token: reg.accessToken, json: { freeSlots: 1, activeBuildIds: [] } })).json()) as {
        builds: Array<{ id: string; buildToken: string }>;
      };
      const token = poll.builds[0]!.buildToken;
      expect(poll.builds[0]!.id).toBe(done.id);
      expect((await h.req('POST', paths.start(done.id), { token, json: { attempt: 1 } })).status).toBe(200);
      expect((await h.req('POST', paths.finish(done.id), { token, json: { attempt: 1, outcome: 'failed', exitCode: 2 } })).status).toBe(200);

      const stats = await api<Stats>('GET', `${paths.stats()}?minutes=5`);
      expect(stats.queue).toEqual([{ labels: ['arm'], count: 2, oldestCreatedAt: expect.any(String) }]);
      expect(stats.minutes).toHaveLength(5);
      const totals = stats.minutes.reduce((t, m) => ({ finished: t.finished + m.finished, failed: t.failed + m.failed, assigned: t.assigned + m.assigned }), {
        finished: 0,
        failed: 0,
        assigned: 0,
      });
      expect(totals).toEqual({ finished: 1, failed: 1, assigned: 1 });
      expect(stats.minutes.find((m) => m.assigned === 1)!.queueWaitMaxMs).toBeGreaterThanOrEqual(0);
      expect(await errorCode(await h.req('GET', `${paths.stats()}?minutes=0`, { token: API_TOKEN }))).toBe('VALIDATION_FAILED');
    });
  });
}

suite('dashboard API on SQLite', false);

describePg('dashboard API on PostgreSQL', () => suite('one controller', true));
