/**
 * Issue 4, "Credential lifecycle: the re-registration race fix, done right".
 * Each numbered test is one line of the "Done when", run on SQLite
 * and on PostgreSQL, against a real controller over real HTTP, with real
 * workers (a separate process where a process matters: 7). Races are
 * ordered with barriers inside the store (see harness.ts), never sleeps.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import {
  FakeClock,
  flushMicrotasks,
  paths,
  systemClock,
  type HeartbeatResponse,
  type PollResponse,
  type RegisterResponse,
} from '@buildfleet/protocol';
import type { RegisteredEvent } from '../../src/session.js';
import type { Transport } from '../../src/client/connection.js';
import { IdentityStore } from '../../src/identity.js';
import { heartbeat, makeSession } from '../support/harness.js';
import { tarGz } from '../support/tarball.js';
import { once, waitFor } from '../support/wait.js';
import { describePg } from '../../../controller/test/support/pg.js';
import { ENROLLMENT_TOKEN, errorCode, startRig, type Rig, type StoreKind } from './harness.js';

const WORKER_MAIN = fileURLToPath(new URL('../integration/support/worker-main.ts', import.meta.url));
const sha256 = (data: string | Uint8Array) => createHash('sha256').update(data).digest('hex');

function nextRegistration(events: NodeJS.EventEmitter, pred: (e: RegisteredEvent) => boolean, timeoutMs = 15_000): Promise<RegisteredEvent> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      events.off('registered', on);
      reject(new Error('timed out waiting for a registration'));
    }, timeoutMs);
    const on = (e: RegisteredEvent) => {
      if (!pred(e)) return;
      clearTimeout(timer);
      events.off('registered', on);
      resolve(e);
    };
    events.on('registered', on);
  });
}

const STORES: StoreKind[] = ['sqlite', 'postgres'];

for (const kind of STORES) {
  const suite = kind === 'postgres' ? describePg : describe;
  suite(`credential lifecycle on ${kind}`, () => {
    let rig: Rig | undefined;
    const children: ChildProcess[] = [];
    const start = async (...args: Parameters<typeof startRig> extends [StoreKind, ...infer R] ? R : never) => {
      rig = await startRig(kind, ...args);
      return rig;
    };
    afterEach(async () => {
      for (const c of children.splice(0)) c.kill('SIGKILL');
      await rig?.close();
      rig = undefined;
    });

    it('1. token expiry: the token expires while a build runs; the worker re-registers with the same id and the build completes with its log and artifact', async () => {
      // The controller's clock decides expiry; the worker's (real) clock would refresh only at 75% of an hour.
      const clock = new FakeClock(Date.now());
      const r = await start({ clock, config: { accessTokenTtlMs: 60_000, leaseMs: 600_000, ackTimeoutMs: 600_000 } });
      const w = await r.worker();
      const id = w.workerId;
      const firstToken = w.session.accessToken!;
      const dir = await r.workerDir();
      const go = path.join(dir, 'go');
      const running = once(w.events, 'build:running', 15_000);
      const build = await r.submit(
        {
          script: 'echo before; while [ ! -f "$GO" ]; do sleep 0.02; done; echo after; mkdir -p out; printf "artifact-bytes\\n" > out/a.txt',
          env: { GO: go },
          artifacts: ['out/*.txt'],
        },
        tarGz([]),
      );
      await running;
      const refreshed = nextRegistration(w.events, (e) => /TOKEN_EXPIRED/.test(e.reason));
      await clock.advance(61_000); // every access token the controller issued has expired
      const ev = await refreshed;
      expect(ev).toMatchObject({ kind: 'reregistered', workerId: id });
      expect(w.workerId).toBe(id);
      expect(w.session.accessToken).not.toBe(firstToken);
      expect((await r.build(build.id)).state).toBe('running');
      await fs.writeFile(go, '');
      const done = await r.finished(build.id);
      expect(done).toMatchObject({ state: 'succeeded', attempt: 1, workerId: id });
      expect(done.attempts).toHaveLength(1);
      expect(await r.scriptLog(build.id)).toBe('before\nafter\n');
      const arts = (await (await r.api('GET', paths.artifacts(build.id))).json()) as { artifacts: unknown[] };
      expect(arts.artifacts).toEqual([{ name: 'out/a.txt', size: 15, sha256: sha256('artifact-bytes\n') }]);
      expect(await (await r.api('GET', paths.artifact(build.id, 'out/a.txt'))).text()).toBe('artifact-bytes\n');
    });

    it('2. fifty concurrent requests get 401 together: exactly one re-registration reaches the controller, and all fifty then succeed', async () => {
      const clock = new FakeClock(Date.now());
      const r = await start({ clock, config: { accessTokenTtlMs: 60_000 } });
      const dir = await r.workerDir();
      let rejected = 0;
      const rejections = new (await import('node:events')).EventEmitter();
      let registerRequests = 0;
      const transport: Transport = async (url, init) => {
        if (url.endsWith(paths.register())) registerRequests++;
        const res = await fetch(url, init);
        if (url.endsWith('/heartbeat') && res.status === 401) {
          rejected++;
          rejections.emit('401');
        }
        return res;
      };
      const s = makeSession({ url: r.url, enrollmentToken: ENROLLMENT_TOKEN } as never, dir, { clock: systemClock, transport });
      try {
        await s.session.start();
        const id = s.session.workerId;
        const firstToken = s.session.accessToken;
        const reregister = r.tap('reregister');
        // Hold the one re-registration until all fifty callers have had their 401.
        reregister.hold = () => waitFor(() => rejected >= 50, { what: 'fifty 401 answers', timeoutMs: 15_000, wakeOn: { emitter: rejections, event: '401' } });
        const hbOk = r.tap('heartbeat');
        await clock.advance(61_000);
        const results = await Promise.all(Array.from({ length: 50 }, () => heartbeat(s)));
        expect(rejected).toBe(50);
        expect(reregister.calls).toBe(1);
        expect(registerRequests).toBe(2); // the first registration and exactly one re-registration
        expect(results).toHaveLength(50);
        for (const res of results) expect(res).toMatchObject({ cancel: [], abandon: [] });
        expect(hbOk.calls).toBe(100); // 50 rejected + 50 retried with the new token
        expect(s.session.workerId).toBe(id);
        expect(s.session.accessToken).not.toBe(firstToken);
      } finally {
        s.session.close();
      }
    });

    it('3. a build uploading its log and artifacts while the access token rotates finishes succeeded with every byte stored once', async () => {
      const r = await start();
      const w = await r.worker({}, { logChunkBytes: 8_192, logFlushMs: 20 });
      const tokens = new Set<string>([w.session.accessToken!]);
      const rotate = async () => {
        const before = w.session.accessToken;
        await w.session.reregister('proactive refresh');
        expect(w.session.accessToken).not.toBe(before);
        tokens.add(w.session.accessToken!);
      };
      // Rotate while the second log chunk is in flight, and while the artifact's body is in flight.
      const appendLog = r.tap('appendLog');
      appendLog.hold = async () => {
        if (appendLog.calls === 2) await rotate();
      };
      const writable = r.tap('checkWritable');
      writable.hold = async () => {
        if (writable.calls === 1) await rotate();
      };
      const lines = 6_000;
      const build = await r.submit(
        {
          script: `i=0; while [ $i -lt ${lines} ]; do echo "line $i"; i=$((i+1)); done; mkdir -p out; yes 0123456789abcdef | head -c 3000000 > out/big.bin`,
          artifacts: ['out/*.bin'],
        },
        tarGz([]),
      );
      const done = await r.finished(build.id);
      expect(done).toMatchObject({ state: 'succeeded', attempt: 1, workerId: w.workerId });
      expect(tokens.size).toBe(3);
      expect(appendLog.calls).toBeGreaterThan(2);
      const expectedLog = Array.from({ length: lines }, (_, i) => `line ${i}\n`).join('');
      expect(await r.scriptLog(build.id)).toBe(expectedLog);
      const big = Buffer.from('0123456789abcdef\n'.repeat(Math.ceil(3_000_000 / 17))).subarray(0, 3_000_000);
      const arts = (await (await r.api('GET', paths.artifacts(build.id))).json()) as { artifacts: unknown[] };
      expect(arts.artifacts).toEqual([{ name: 'out/big.bin', size: 3_000_000, sha256: sha256(big) }]);
      const stored = await r.peek<{ n: number }>('SELECT count(*) AS n FROM artifacts WHERE build_id = $1', [build.id]);
      expect(Number(stored[0]!.n)).toBe(1);
      const got = Buffer.from(await (await r.api('GET', paths.artifact(build.id, 'out/big.bin'))).arrayBuffer());
      expect(got.equals(big)).toBe(true);
    });

    it('4. while a re-registration holds the worker lock, a poll for that worker assigns nothing until it commits; builds queued meanwhile are assigned afterwards, none lost', async () => {
      const r = await start();
      const bootId = crypto.randomUUID();
      const reg = await r.registerOk({ bootId, maxConcurrentBuilds: 3 });
      const W = reg.workerId;
      expect((await r.req('POST', paths.heartbeat(W), { token: reg.accessToken, json: { activeBuildIds: [] } })).status).toBe(200);

      const locked = r.barrier();
      const release = r.barrier();
      const lockOrder: string[] = [];
      r.onWorkerLock = async (op, workerId) => {
        if (workerId !== W) return;
        lockOrder.push(op);
        if (op === 'reregister' && !release.opened) {
          locked.open();
          await release.wait();
        }
      };
      const polls = r.tap('poll');
      const rereg = r.registerOk({ workerId: W, workerSecret: reg.workerSecret, bootId, maxConcurrentBuilds: 3 }, null);
      await locked.wait();

      // A poll for this worker and three submissions arrive while the lock is held.
      let pollSettled = false;
      const poll = r.req('POST', paths.poll(W, 0), { token: reg.accessToken, json: { freeSlots: 3, activeBuildIds: [] } }).finally(() => (pollSettled = true));
      const submits = [1, 2, 3].map((i) => r.submit({ script: `echo ${i}` }));
      await waitFor(() => polls.calls === 1, { what: 'the poll to reach the store', timeoutMs: 15_000 });
      if (kind === 'postgres') {
        // The poll's transaction is blocked on the worker's row lock (not merely slow).
        await waitFor(
          async () =>
            (await r.peek<{ n: number }>("SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"))[0]!.n >= 1,
          { what: 'the poll to wait on the row lock', timeoutMs: 15_000 },
        );
        await Promise.all(submits); // PostgreSQL: submissions do not need the worker's lock
        const queued = await r.peek<{ state: string; worker_id: string | null }>('SELECT state, worker_id FROM builds');
        expect(queued).toHaveLength(3);
        for (const b of queued) expect(b).toEqual({ state: 'queued', worker_id: null });
      } else {
        // SQLite: every write transaction waits for the held write lock, the submissions too.
        for (let i = 0; i < 20; i++) await flushMicrotasks();
        expect(await r.peek('SELECT id FROM builds')).toHaveLength(0);
      }
      expect(pollSettled).toBe(false);
      expect(lockOrder).toEqual(['reregister']);

      release.open();
      const fresh = await rereg;
      expect(fresh.workerId).toBe(W);
      const pollRes = await poll;
      // The poll ran after the commit, with the token the re-registration rotated: nothing assigned.
      expect(pollRes.status).toBe(401);
      expect(await errorCode(pollRes)).toBe('TOKEN_INVALID');
      expect(lockOrder.slice(0, 2)).toEqual(['reregister', 'poll']);
      const submitted = await Promise.all(submits);
      for (const b of submitted) expect((await r.build(b.id)).state).toBe('queued');

      const next = await r.req('POST', paths.poll(W, 0), { token: fresh.accessToken, json: { freeSlots: 3, activeBuildIds: [] } });
      expect(next.status).toBe(200);
      const got = ((await next.json()) as PollResponse).builds.map((b) => b.id).sort();
      expect(got).toEqual(submitted.map((b) => b.id).sort());
      for (const b of submitted) expect(await r.build(b.id)).toMatchObject({ state: 'assigned', attempt: 1, workerId: W });
    });

    it('5. after re-registration the status, labels and assigned builds are unchanged and only the token differs; the old token gets 401', async () => {
      const r = await start();
      const bootId = crypto.randomUUID();
      const reg = await r.registerOk({ name: 'five', labels: ['a', 'b'], maxConcurrentBuilds: 2, bootId });
      const W = reg.workerId;
      const b1 = await r.submit({ script: 'echo 1', labels: ['a'] });
      const b2 = await r.submit({ script: 'echo 2', labels: ['b'] });
      const polled = ((await (await r.req('POST', paths.poll(W, 0), { token: reg.accessToken, json: { freeSlots: 2, activeBuildIds: [] } })).json()) as PollResponse).builds;
      expect(polled.map((b) => b.id)).toEqual([b1.id, b2.id]);
      const t1 = polled[0]!.buildToken;
      expect((await r.req('POST', paths.start(b1.id), { token: t1, json: { attempt: 1 } })).status).toBe(200);
      expect((await r.api('POST', paths.drain(W))).status).toBe(200);
      const before = await r.getWorker(W);
      expect(before.status).toBe('draining');

      // A refresh (same bootId) that sends a different configuration changes nothing but the token.
      const fresh = await r.registerOk(
        { workerId: W, workerSecret: reg.workerSecret, bootId, name: 'renamed', labels: ['c'], maxConcurrentBuilds: 9, activeBuildCount: 1, activeBuildIds: [b1.id] },
        null,
      );
      expect(fresh.workerId).toBe(W);
      expect(fresh.workerSecret).toBeUndefined();
      expect(fresh.accessToken).not.toBe(reg.accessToken);
      expect(fresh.abandon).toEqual([]);
      expect(fresh.builds.map((b) => [b.id, b.state, b.attempt, b.buildToken])).toEqual([
        [b1.id, 'running', 1, t1],
        [b2.id, 'assigned', 1, polled[1]!.buildToken],
      ]);
      const after = await r.getWorker(W);
      const same = (x: typeof before) => ({ id: x.id, name: x.name, labels: x.labels, maxConcurrentBuilds: x.maxConcurrentBuilds, version: x.version, status: x.status, createdAt: x.createdAt });
      expect(same(after)).toEqual(same(before));
      expect(after).toMatchObject({ name: 'five', labels: ['a', 'b'], status: 'draining' });
      expect(await r.build(b1.id)).toMatchObject({ state: 'running', attempt: 1, workerId: W });
      expect(await r.build(b2.id)).toMatchObject({ state: 'assigned', attempt: 1, workerId: W });

      for (const p of [paths.poll(W, 0), paths.heartbeat(W)]) {
        const old = await r.req('POST', p, { token: reg.accessToken, json: { freeSlots: 1, activeBuildIds: [b1.id] } });
        expect(old.status).toBe(401);
        expect(await errorCode(old)).toBe('TOKEN_INVALID');
      }
      const hb = await r.req('POST', paths.heartbeat(W), { token: fresh.accessToken, json: { activeBuildIds: [b1.id] } });
      expect(hb.status).toBe(200);
      // The build in flight never depended on the access token.
      expect((await r.req('POST', paths.logs(b1.id), { token: t1, json: { attempt: 1, seq: 0, offset: 0, data: 'still mine\n' } })).status).toBe(200);
      expect((await r.req('POST', paths.finish(b1.id), { token: t1, json: { attempt: 1, outcome: 'succeeded', exitCode: 0, message: null } })).status).toBe(200);
    });

    it('6. a registration whose response is lost is retried with the same registrationId: one worker exists afterwards, not two', async () => {
      const r = await start();
      const sent: { registrationId?: string; status?: number }[] = [];
      let lostAnswer: RegisterResponse | undefined;
      const transport: Transport = async (url, init) => {
        const res = await fetch(url, init);
        if (url.endsWith(paths.register())) {
          const body = JSON.parse(String(init.body)) as { registrationId?: string };
          sent.push({ registrationId: body.registrationId, status: res.status });
          if (sent.length === 1) {
            lostAnswer = (await res.json()) as RegisterResponse; // the controller answered...
            throw new TypeError('fetch failed: connection reset'); // ...and the answer never arrived
          }
        }
        return res;
      };
      const dir = await r.workerDir();
      const w = await r.worker({}, { transport }, dir);
      expect(sent).toHaveLength(2);
      expect(sent[0]!.registrationId).toMatch(/^[0-9a-f-]{36}$/);
      expect(sent[1]!.registrationId).toBe(sent[0]!.registrationId);
      expect(sent.map((s) => s.status)).toEqual([201, 201]);
      expect(lostAnswer!.workerId).toBe(w.workerId);
      const workers = await r.listWorkers();
      expect(workers.map((x) => x.id)).toEqual([w.workerId]);
      expect((await new IdentityStore(path.join(dir, 'worker')).load()).workerId).toBe(w.workerId);
      // The lost credentials are void; the retried ones work.
      const stale = await r.req('POST', paths.heartbeat(w.workerId), { token: lostAnswer!.accessToken, json: { activeBuildIds: [] } });
      expect(stale.status).toBe(401);
      const b = await r.submit({ script: 'echo once' }, tarGz([]));
      expect(await r.finished(b.id)).toMatchObject({ state: 'succeeded', workerId: w.workerId });
      expect(await r.listWorkers()).toHaveLength(1);

      // A process that saved its registrationId, sent it, and died before the answer: the next
      // process on the same data dir sends the same registrationId and becomes that worker.
      const crashedDir = await r.workerDir();
      const savedId = crypto.randomUUID();
      await new IdentityStore(path.join(crashedDir, 'worker')).save({ registrationId: savedId });
      const reachedController = await r.registerOk({ registrationId: savedId, name: 'test-worker' });
      const restarted = await r.worker({}, {}, crashedDir);
      expect(restarted.workerId).toBe(reachedController.workerId);
      expect((await r.listWorkers()).map((x) => x.id).sort()).toEqual([w.workerId, reachedController.workerId].sort());
    });

    it('7. a worker killed with SIGKILL mid-build and restarted keeps its id; the lost build is resolved at once by the lost-build policy', async () => {
      // Leases and ack deadlines far longer than the test: only the restart can resolve the build.
      const r = await start({ config: { leaseMs: 120_000, ackTimeoutMs: 120_000, heartbeatIntervalMs: 200 } });
      const dir = await r.workerDir();
      const spawnWorker = () => {
        const child = spawn(process.execPath, ['--import', 'tsx', '--conditions=source', WORKER_MAIN], {
          env: { ...process.env, BUILDFLEET_CONTROLLER_URL: r.url, BUILDFLEET_ENROLLMENT_TOKEN: ENROLLMENT_TOKEN, BUILDFLEET_DATA_DIR: dir },
          stdio: ['ignore', 'pipe', 'inherit'],
        });
        children.push(child);
        const out = { text: '' };
        child.stdout!.on('data', (d: Buffer) => (out.text += d.toString()));
        const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
        return { child, out, exited };
      };
      const first = spawnWorker();
      const build = await r.submit(
        { script: 'echo "attempt $BUILDFLEET_BUILD_ATTEMPT"; if [ "$BUILDFLEET_BUILD_ATTEMPT" = 1 ]; then sleep 300; fi; echo done', maxAttempts: 2 },
        tarGz([]),
      );
      await waitFor(() => /RUNNING \S+ \d+/.test(first.out.text), { what: 'the worker process to run the build', timeoutMs: 20_000, intervalMs: 20 });
      const firstId = /REGISTERED (\S+)/.exec(first.out.text)![1]!;
      await waitFor(async () => (await r.logText(build.id)).includes('attempt 1'), { what: 'the first attempt to log', timeoutMs: 15_000 });
      first.child.kill('SIGKILL');
      await first.exited;
      expect(await r.build(build.id)).toMatchObject({ state: 'running', attempt: 1, workerId: firstId });

      const second = spawnWorker();
      await waitFor(() => /REGISTERED \S+/.test(second.out.text), { what: 'the restarted worker to register', timeoutMs: 20_000, intervalMs: 20 });
      expect(/REGISTERED (\S+)/.exec(second.out.text)![1]).toBe(firstId);
      // Right after the re-registration, attempt 1 is no longer running: the restart handed it to the policy.
      const resolved = await r.build(build.id);
      expect(resolved.attempt).toBe(2);
      expect(resolved.attempts[0]).toMatchObject({ attempt: 1, workerId: firstId, state: 'failed', reason: 'worker_restarted' });
      const done = await r.finished(build.id);
      expect(done).toMatchObject({ state: 'succeeded', attempt: 2, workerId: firstId });
      expect(await r.scriptLog(build.id, 2)).toBe('attempt 2\ndone\n');
      expect(await r.listWorkers()).toHaveLength(1);
      second.child.kill('SIGKILL');
      await second.exited;
    });

    it('8. a deleted worker gets 404, registers anew, and builds on', async () => {
      const r = await start();
      const dir = await r.workerDir();
      const w = await r.worker({}, {}, dir);
      const oldId = w.workerId;
      const oldToken = w.session.accessToken!;
      const anew = nextRegistration(w.events, (e) => e.kind === 'new' && e.workerId !== oldId);
      expect((await r.api('DELETE', paths.worker(oldId))).status).toBe(200);
      const gone = await r.req('POST', paths.heartbeat(oldId), { token: oldToken, json: { activeBuildIds: [] } });
      expect(gone.status).toBe(404);
      expect(await errorCode(gone)).toBe('WORKER_NOT_FOUND');
      const ev = await anew;
      expect(w.workerId).toBe(ev.workerId);
      expect((await new IdentityStore(path.join(dir, 'worker')).load()).workerId).toBe(ev.workerId);
      expect((await r.listWorkers()).map((x) => x.id)).toEqual([ev.workerId]);
      const b = await r.submit({ script: 'echo after delete' }, tarGz([]));
      expect(await r.finished(b.id)).toMatchObject({ state: 'succeeded', workerId: ev.workerId });
      expect(await r.scriptLog(b.id)).toBe('after delete\n');
    });

    it('9. someone holding the enrollment token but not the worker secret cannot take over an existing worker id', async () => {
      const r = await start();
      const registrationId = crypto.randomUUID();
      const bootId = crypto.randomUUID();
      const reg = await r.registerOk({ name: 'victim', labels: ['x'], registrationId, bootId });
      const W = reg.workerId;
      const hb = () => r.req('POST', paths.heartbeat(W), { token: reg.accessToken, json: { activeBuildIds: [] } });
      expect((await hb()).status).toBe(200); // the first authenticated call ends registrationId retries
      const b = await r.submit({ script: 'echo held', labels: ['x'] });
      await r.req('POST', paths.poll(W, 0), { token: reg.accessToken, json: { freeSlots: 1, activeBuildIds: [] } });
      const before = await r.getWorker(W);

      const attacker = { name: 'evil', labels: ['x'], bootId: crypto.randomUUID() };
      const tries: [Record<string, unknown>, string, number][] = [
        [{ ...attacker, workerId: W, workerSecret: 'bfs_guessed-secret-000000000000000000000000' }, 'TOKEN_INVALID', 401],
        [{ ...attacker, workerId: W, workerSecret: reg.accessToken }, 'TOKEN_INVALID', 401],
        [{ ...attacker, workerId: W, workerSecret: ENROLLMENT_TOKEN }, 'TOKEN_INVALID', 401],
        [{ ...attacker, workerId: W }, 'VALIDATION_FAILED', 400],
        [{ ...attacker, registrationId }, 'INVALID_TRANSITION', 409],
      ];
      for (const [body, code, status] of tries) {
        const res = await r.register(body, ENROLLMENT_TOKEN);
        expect({ body, status: res.status, code: await errorCode(res) }).toEqual({ body, status, code });
      }
      // The enrollment token is no worker credential either.
      const asBearer = await r.req('POST', paths.poll(W, 0), { token: ENROLLMENT_TOKEN, json: { freeSlots: 1, activeBuildIds: [] } });
      expect(asBearer.status).toBe(401);

      // Nothing about the worker changed: same token, name, labels, bootId (its builds were not lost).
      expect((await hb()).status).toBe(200);
      expect(await r.getWorker(W)).toMatchObject({ id: W, name: before.name, labels: before.labels, status: before.status });
      expect(await r.build(b.id)).toMatchObject({ state: 'assigned', attempt: 1, workerId: W });
      expect((await r.listWorkers()).map((x) => x.id)).toEqual([W]);
      // The real worker still re-registers with its secret.
      const mine = await r.registerOk({ workerId: W, workerSecret: reg.workerSecret, bootId }, null);
      expect(mine.builds.map((x) => x.id)).toEqual([b.id]);
    });

    it('10. a proactive refresh racing a build start never hands that running build to the lost-build policy (same bootId)', async () => {
      const r = await start();
      const w = await r.worker();
      const bootId = w.session.bootId;
      const registrations: RegisteredEvent[] = [];
      w.events.on('registered', (e: RegisteredEvent) => registrations.push(e));
      const reregister = r.tap('reregister');
      const sent: { bootId?: string; activeBuildIds?: string[] }[] = [];
      reregister.events.on('call', (args: unknown[]) => sent.push(args[0] as (typeof sent)[number]));
      const starts = r.tap('startBuild');
      // Interleaving A (the real worker): its proactive refresh runs and commits between the claim and the start.
      starts.hold = async () => {
        if (starts.calls === 1) await w.session.reregister('proactive refresh');
      };
      const go = path.join(await r.workerDir(), 'go');
      const build = await r.submit({ script: 'echo started; while [ ! -f "$GO" ]; do sleep 0.02; done; echo finished', env: { GO: go } }, tarGz([]));
      await once(w.events, 'build:running', 15_000);
      expect(sent).toHaveLength(1);
      expect(sent[0]!.bootId).toBe(bootId);
      // And another refresh while it runs.
      await w.session.reregister('proactive refresh');
      expect(await r.build(build.id)).toMatchObject({ state: 'running', attempt: 1 });
      await fs.writeFile(go, '');
      const done = await r.finished(build.id);
      expect(done).toMatchObject({ state: 'succeeded', attempt: 1, workerId: w.workerId });
      expect(done.attempts).toHaveLength(1);
      expect(done.attempts[0]!.reason).toBeNull();
      expect(await r.scriptLog(build.id)).toBe('started\nfinished\n');
      expect(registrations.length).toBeGreaterThanOrEqual(2);
      expect(registrations.every((e) => e.kind === 'reregistered' && e.workerId === w.workerId)).toBe(true);

      // Interleaving B (raw protocol): the refresh's transaction holds the worker lock while the
      // build's start arrives, and the refresh does not list the build (it had not started yet).
      starts.hold = undefined;
      const rawBoot = crypto.randomUUID();
      const reg = await r.registerOk({ labels: ['raw'], bootId: rawBoot });
      const b2 = await r.submit({ script: 'echo 2', labels: ['raw'] });
      const polled = ((await (await r.req('POST', paths.poll(reg.workerId, 0), { token: reg.accessToken, json: { freeSlots: 1, activeBuildIds: [] } })).json()) as PollResponse).builds;
      expect(polled.map((b) => b.id)).toEqual([b2.id]);
      const locked = r.barrier();
      const release = r.barrier();
      r.onWorkerLock = async (op, workerId) => {
        if (op === 'reregister' && workerId === reg.workerId && !release.opened) {
          locked.open();
          await release.wait();
        }
      };
      const refresh = r.registerOk({ workerId: reg.workerId, workerSecret: reg.workerSecret, bootId: rawBoot, labels: ['raw'], activeBuildIds: [] }, null);
      await locked.wait();
      let startSettled = false;
      const started = r.req('POST', paths.start(b2.id), { token: polled[0]!.buildToken, json: { attempt: 1 } }).finally(() => (startSettled = true));
      if (kind === 'postgres') {
        expect((await started).status).toBe(200); // a start does not need the worker's lock: it commits first
      } else {
        for (let i = 0; i < 20; i++) await flushMicrotasks();
        expect(startSettled).toBe(false); // SQLite: it waits for the refresh's write lock
      }
      release.open();
      const answer = await refresh;
      expect((await started).status).toBe(200);
      expect(answer.abandon).toEqual([]);
      expect(answer.builds.map((b) => b.id)).toEqual([b2.id]);
      expect(await r.build(b2.id)).toMatchObject({ state: 'running', attempt: 1, workerId: reg.workerId });
      // A later refresh that still does not list it changes nothing either; a restart would.
      const again = await r.registerOk({ workerId: reg.workerId, workerSecret: reg.workerSecret, bootId: rawBoot, labels: ['raw'], activeBuildIds: [] }, null);
      expect(again.builds.map((b) => [b.id, b.state])).toEqual([[b2.id, 'running']]);
      expect(await r.build(b2.id)).toMatchObject({ state: 'running', attempt: 1, workerId: reg.workerId });
      const restart = await r.registerOk({ workerId: reg.workerId, workerSecret: reg.workerSecret, bootId: crypto.randomUUID(), labels: ['raw'], activeBuildIds: [] }, null);
      expect(restart.builds).toEqual([]);
      expect((await r.build(b2.id)).attempts[0]).toMatchObject({ attempt: 1, reason: 'worker_restarted' });
    });
  });

  suite(`credential rules on ${kind}`, () => {
    let rig: Rig | undefined;
    afterEach(async () => {
      await rig?.close();
      rig = undefined;
    });

    it('BUILDFLEET_ACCESS_TOKEN_TTL_MS sets the access token lifetime; past it the token is 401 TOKEN_EXPIRED, a rotated one TOKEN_INVALID', async () => {
      const clock = new FakeClock(Date.now());
      const r = (rig = await startRig(kind, { clock, env: { BUILDFLEET_ACCESS_TOKEN_TTL_MS: '2000' } }));
      expect(r.config.accessTokenTtlMs).toBe(2_000);
      const reg = await r.registerOk();
      expect(reg.accessTokenExpiresInMs).toBe(2_000);
      expect(Date.parse(reg.accessTokenExpiresAt)).toBe(clock.now() + 2_000);
      const hb = (token: string) => r.req('POST', paths.heartbeat(reg.workerId), { token, json: { activeBuildIds: [] } });
      const ok = await hb(reg.accessToken);
      expect(ok.status).toBe(200);
      expect(((await ok.json()) as HeartbeatResponse).accessTokenExpiresInMs).toBe(2_000);
      await clock.advance(2_000);
      const expired = await hb(reg.accessToken);
      expect([expired.status, await errorCode(expired)]).toEqual([401, 'TOKEN_EXPIRED']);
      const fresh = await r.registerOk({ workerId: reg.workerId, workerSecret: reg.workerSecret }, null);
      expect((await hb(fresh.accessToken)).status).toBe(200);
      const rotated = await hb(reg.accessToken);
      expect([rotated.status, await errorCode(rotated)]).toEqual([401, 'TOKEN_INVALID']);
    });

    it('enrollment tokens: an expired one is 401 TOKEN_EXPIRED, a used-up or revoked one TOKEN_INVALID; a registrationId retry uses no extra use; a re-registration ignores the bearer', async () => {
      const clock = new FakeClock(Date.now());
      const r = (rig = await startRig(kind, { clock }));
      const create = async (json: Record<string, unknown>) => {
        const res = await r.api('POST', paths.enrollmentTokens(), json);
        expect(res.status).toBe(201);
        return (await res.json()) as { id: string; token: string };
      };
      const expiring = await create({ expiresAt: new Date(clock.now() + 1_000).toISOString() });
      const twice = await create({ maxUses: 2 });
      expect((await r.register({}, expiring.token)).status).toBe(201);
      await clock.advance(1_000);
      const late = await r.register({}, expiring.token);
      expect([late.status, await errorCode(late)]).toEqual([401, 'TOKEN_EXPIRED']);

      const registrationId = crypto.randomUUID();
      const a = await r.registerOk({ registrationId }, twice.token);
      const retried = await r.registerOk({ registrationId }, twice.token); // the first answer was "lost"
      expect(retried.workerId).toBe(a.workerId);
      const voided = await r.req('POST', paths.heartbeat(a.workerId), { token: a.accessToken, json: { activeBuildIds: [] } });
      expect(voided.status).toBe(401); // the lost credentials are void
      const b = await r.registerOk({}, twice.token); // second use
      const third = await r.register({}, twice.token);
      expect([third.status, await errorCode(third)]).toEqual([401, 'TOKEN_INVALID']);

      // Re-registration needs no bearer, and a used-up, revoked or expired one does not matter.
      expect((await r.api('DELETE', paths.enrollmentToken(twice.id))).status).toBe(204);
      for (const bearer of [twice.token, expiring.token, ENROLLMENT_TOKEN, null]) {
        const again = await r.registerOk({ workerId: b.workerId, workerSecret: b.workerSecret }, bearer);
        expect(again.workerId).toBe(b.workerId);
      }
      const revoked = await r.register({}, twice.token);
      expect([revoked.status, await errorCode(revoked)]).toEqual([401, 'TOKEN_INVALID']);
      expect(await r.listWorkers()).toHaveLength(3); // the expiring token's worker, a (once, despite the retry) and b
    });

    it('a deleted worker\'s own access token gets 404 WORKER_NOT_FOUND (it wins over 401), and so does its secret', async () => {
      const r = (rig = await startRig(kind));
      const reg = await r.registerOk();
      expect((await r.api('DELETE', paths.worker(reg.workerId))).status).toBe(200);
      for (const p of [paths.poll(reg.workerId, 0), paths.heartbeat(reg.workerId)]) {
        const res = await r.req('POST', p, { token: reg.accessToken, json: { freeSlots: 1, activeBuildIds: [] } });
        expect([res.status, await errorCode(res)]).toEqual([404, 'WORKER_NOT_FOUND']);
      }
      const rereg = await r.register({ workerId: reg.workerId, workerSecret: reg.workerSecret }, null);
      expect([rereg.status, await errorCode(rereg)]).toEqual([404, 'WORKER_NOT_FOUND']);
    });
  });
}
