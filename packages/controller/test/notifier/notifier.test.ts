import pg from 'pg';
import { FakeClock, systemClock } from '@buildfleet/protocol';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeWake, encodeWake, InProcessNotifier, openNotifier, PgNotifier, type WakeTopic } from '../../src/store/notifier.js';
import { createTestDatabase, describePg, TEST_PG_URL, type TestDatabase } from '../support/pg.js';
import { waitFor } from '../support/wait.js';

type Wake = [WakeTopic, string | undefined];

function recorder(): { wakes: Wake[]; listener: (t: WakeTopic, k?: string) => void } {
  const wakes: Wake[] = [];
  return { wakes, listener: (t, k) => wakes.push([t, k]) };
}

describe('InProcessNotifier', () => {
  it('delivers to every subscriber until unsubscribed or closed, containing listener errors', async () => {
    const errors: unknown[] = [];
    const n = new InProcessNotifier({ onError: (e) => errors.push(e) });
    const a = recorder();
    const b = recorder();
    n.subscribe(() => {
      throw new Error('bad listener');
    });
    n.subscribe(a.listener);
    const offB = n.subscribe(b.listener);
    await n.notify('builds', 'b1');
    offB();
    await n.notify('workers');
    expect(a.wakes).toEqual([
      ['builds', 'b1'],
      ['workers', undefined],
    ]);
    expect(b.wakes).toEqual([['builds', 'b1']]);
    expect(errors).toHaveLength(2);
    await n.close();
    await n.notify('logs', 'x');
    expect(a.wakes).toHaveLength(2);
  });
});

describe('openNotifier', () => {
  it('is in-process without a pool', async () => {
    const n = await openNotifier({ clock: systemClock });
    expect(n).toBeInstanceOf(InProcessNotifier);
    await n.close();
  });
});

describe('wake payloads', () => {
  it('round-trip topic and key, and ignore unknown topics', () => {
    expect(decodeWake(encodeWake('logs', 'b:1'))).toEqual({ topic: 'logs', key: 'b:1' });
    expect(decodeWake(encodeWake('builds'))).toEqual({ topic: 'builds', key: undefined });
    expect(decodeWake('workers')).toEqual({ topic: 'workers', key: undefined });
    expect(decodeWake('bogus:1')).toBeUndefined();
    expect(decodeWake(undefined)).toBeUndefined();
  });
});

describePg('PgNotifier', () => {
  let db: TestDatabase;
  const pools: pg.Pool[] = [];
  const notifiers: PgNotifier[] = [];

  /** One controller: its own pool and notifier, as in production. */
  async function controller(): Promise<PgNotifier> {
    const pool = new pg.Pool({ connectionString: db.url, max: 2 });
    pool.on('error', () => {});
    pools.push(pool);
    const n = new PgNotifier({ pool, listen: db.url, clock: systemClock, initialBackoffMs: 20, maxBackoffMs: 200 });
    notifiers.push(n);
    await n.start();
    return n;
  }

  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await Promise.all(notifiers.map((n) => n.close()));
    await Promise.all(pools.map((p) => p.end()));
    await db?.drop();
  });

  it('a notify on one controller wakes subscribers on both', async () => {
    const a = await controller();
    const b = await controller();
    const ra = recorder();
    const rb = recorder();
    a.subscribe(ra.listener);
    b.subscribe(rb.listener);
    await a.notify('builds', 'b-1');
    await b.notify('workers');
    const has = (r: { wakes: Wake[] }, w: Wake) => r.wakes.some(([t, k]) => t === w[0] && k === w[1]);
    await waitFor(() => has(rb, ['builds', 'b-1']) && has(ra, ['workers', undefined]), { what: 'cross-controller wake-ups' });
    await waitFor(() => has(ra, ['builds', 'b-1']) && has(rb, ['workers', undefined]), { what: 'wake-ups echoed to the sender' });
  });

  it('openNotifier with a pool listens with the pool\'s connection settings', async () => {
    const pool = new pg.Pool({ connectionString: db.url, max: 1 });
    pools.push(pool);
    const n = await openNotifier({ pool, clock: systemClock });
    expect(n).toBeInstanceOf(PgNotifier);
    const r = recorder();
    n.subscribe(r.listener);
    await n.notify('workers', 'w-1');
    await waitFor(() => r.wakes.some(([t, k]) => t === 'workers' && k === 'w-1'), { what: 'a wake-up through openNotifier' });
    await n.close();
  });

  it('reconnects after its LISTEN connection is terminated, wakes everyone, and delivers again', async () => {
    const a = await controller();
    const states: boolean[] = [];
    const pool = new pg.Pool({ connectionString: db.url, max: 2 });
    pool.on('error', () => {});
    pools.push(pool);
    const b = new PgNotifier({
      pool,
      listen: { connectionString: db.url, application_name: 'notifier-b' },
      clock: systemClock,
      initialBackoffMs: 20,
      onState: (s) => states.push(s.listening),
    });
    notifiers.push(b);
    await b.start();
    const rb = recorder();
    b.subscribe(rb.listener);

    const admin = new pg.Client({ connectionString: db.url });
    await admin.connect();
    try {
      const killed = await admin.query<{ ok: boolean }>(
        `SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'notifier-b' AND query = 'LISTEN buildfleet'`,
      );
      expect(killed.rows).toEqual([{ ok: true }]);
    } finally {
      await admin.end();
    }
    await waitFor(() => states.includes(false) && b.listening, { what: 'b to notice the loss and listen again' });
    expect(states).toEqual([true, false, true]);
    // Notifications sent while it was down may be lost: it wakes everyone after reconnecting.
    await waitFor(() => rb.wakes.some(([t, k]) => t === 'builds' && k === undefined), { what: 'the synthetic builds wake-up' });
    await a.notify('logs', 'b-2');
    await waitFor(() => rb.wakes.some(([t, k]) => t === 'logs' && k === 'b-2'), { what: 'delivery after reconnect' });
  });

  it('retries a database that is not there yet with exponential backoff on the injected clock', async () => {
    const clock = new FakeClock();
    const name = `${db.name}_late`;
    const url = new URL(db.url);
    url.pathname = `/${name}`;
    const pool = new pg.Pool({ connectionString: url.toString(), max: 1 });
    pools.push(pool);
    const failures: number[] = [];
    const n = new PgNotifier({
      pool,
      listen: url.toString(),
      clock,
      initialBackoffMs: 100,
      maxBackoffMs: 400,
      onState: (s) => {
        if (!s.listening) failures.push(s.failures);
      },
    });
    notifiers.push(n);
    const r = recorder();
    n.subscribe(r.listener);
    let started = false;
    void n.start().then(() => (started = true));
    const admin = new pg.Client({ connectionString: TEST_PG_URL });
    await admin.connect();
    try {
      // Each failed attempt schedules one timer on the fake clock: 50-100 ms, then 100-200, then 200-400.
      for (const [i, [lo, hi]] of [[50, 100], [100, 200], [200, 400], [200, 400]].entries()) {
        await waitFor(() => failures.length === i + 1 && clock.pending() === 1, { what: `failed attempt ${i + 1} and its retry timer` });
        const delay = clock.nextTimerAt()! - clock.monotonic();
        expect(delay).toBeGreaterThanOrEqual(lo!);
        expect(delay).toBeLessThanOrEqual(hi!);
        if (i < 3) await clock.advance(delay);
      }
      expect(n.listening).toBe(false);
      await admin.query(`CREATE DATABASE ${name}`);
      await clock.advance(400);
      await waitFor(() => started && n.listening, { what: 'the notifier to listen once the database exists' });
      expect(r.wakes).toContainEqual(['builds', undefined]);
      await n.close();
    } finally {
      await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1', [name]);
      await pool.end();
      pools.splice(pools.indexOf(pool), 1);
      await admin.query(`DROP DATABASE IF EXISTS ${name}`);
      await admin.end();
    }
  });

  // Freezing the backend with SIGSTOP makes a connection that is open but
  // never answers (a vanished host): no error, no FIN. Needs a local server
  // and permission to signal its processes.
  const canFreeze = process.getuid?.() === 0 && /@(127\.0\.0\.1|localhost)[:/]/.test(TEST_PG_URL);
  it.skipIf(!canFreeze)('notices a LISTEN connection that stopped answering, by a ping on the injected clock', async () => {
    const clock = new FakeClock();
    const pool = new pg.Pool({ connectionString: db.url, max: 1 });
    pool.on('error', () => {});
    pools.push(pool);
    const states: boolean[] = [];
    const n = new PgNotifier({
      pool,
      listen: { connectionString: db.url, application_name: 'notifier-frozen' },
      clock,
      pingIntervalMs: 1_000,
      pingTimeoutMs: 500,
      onState: (st) => states.push(st.listening),
    });
    notifiers.push(n);
    await n.start();
    const r = recorder();
    n.subscribe(r.listener);
    const admin = new pg.Client({ connectionString: db.url });
    await admin.connect();
    const pidOf = async () =>
      (
        await admin.query<{ pid: number }>(
          `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'notifier-frozen'`,
        )
      ).rows.map((x) => x.pid);
    const [frozen] = await pidOf();
    expect(frozen).toBeTypeOf('number');
    process.kill(frozen!, 'SIGSTOP');
    try {
      // One ping answered late is fine; no answer by the deadline is a lost connection.
      await clock.advance(1_000);
      expect(n.listening).toBe(true);
      await clock.advance(500);
      await waitFor(() => states.includes(false) && n.listening, { what: 'a new LISTEN connection after the ping timed out' });
      expect(states).toEqual([true, false, true]);
      await waitFor(() => r.wakes.some(([t, k]) => t === 'builds' && k === undefined), { what: 'the synthetic wake-up' });
      const pids = await pidOf();
      expect(pids).toContain(frozen);
      expect(pids.length).toBe(2);
    } finally {
      process.kill(frozen!, 'SIGCONT');
      await admin.query('SELECT pg_terminate_backend($1)', [frozen]);
      await admin.end();
    }
    await pool.query(`SELECT pg_notify('buildfleet', 'logs:after-freeze')`);
    await waitFor(() => r.wakes.some(([t, k]) => t === 'logs' && k === 'after-freeze'), { what: 'delivery on the new connection' });
  });

  it.skipIf(!canFreeze)('close() does not hang on a LISTEN connection that stopped answering', async () => {
    const clock = new FakeClock();
    const pool = new pg.Pool({ connectionString: db.url, max: 1 });
    pool.on('error', () => {});
    pools.push(pool);
    const n = new PgNotifier({ pool, listen: { connectionString: db.url, application_name: 'notifier-closing' }, clock });
    await n.start();
    const admin = new pg.Client({ connectionString: db.url });
    await admin.connect();
    const { rows } = await admin.query<{ pid: number }>(
      `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'notifier-closing'`,
    );
    const pid = rows[0]!.pid;
    process.kill(pid, 'SIGSTOP');
    try {
      let closed = false;
      const closing = n.close().then(() => (closed = true));
      await clock.advance(1_000);
      expect(closed).toBe(false); // still waiting for the goodbye
      await clock.advance(1_000);
      await waitFor(() => closed, { what: 'close() to give up on the frozen connection' });
      await closing;
    } finally {
      process.kill(pid, 'SIGCONT');
      await admin.query('SELECT pg_terminate_backend($1)', [pid]);
      await admin.end();
    }
  });
});
