import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { FakeClock } from '@buildfleet/protocol';
import { DatabaseClock, PG_NOW_SQL } from '../../src/db-clock.js';
import { createTestDatabase, describePg } from '../support/pg.js';

describe('DatabaseClock', () => {
  it('answers the database time although the local wall clock is an hour off', async () => {
    const base = new FakeClock(Date.UTC(2026, 5, 1));
    const dbTime = base.now() + 3_600_000;
    const clock = new DatabaseClock({ base, readDbNow: async () => dbTime });
    await clock.sync();
    expect(clock.offsetMs).toBe(3_600_000);
    await base.advance(1_000);
    expect(clock.now()).toBe(dbTime + 1_000);
  });

  it('re-syncs on its period and keeps the last offset when a sync fails', async () => {
    const base = new FakeClock();
    let skew = 500;
    let fail = false;
    const errors: unknown[] = [];
    const clock = new DatabaseClock({
      base,
      resyncMs: 10_000,
      readDbNow: async () => {
        if (fail) throw new Error('db down');
        return base.now() + skew;
      },
      onError: (e) => errors.push(e),
    });
    await clock.start();
    expect(clock.offsetMs).toBe(500);
    skew = 800;
    await base.advance(10_000);
    expect(clock.offsetMs).toBe(800);
    fail = true;
    await base.advance(10_000);
    expect(errors).toHaveLength(1);
    expect(clock.offsetMs).toBe(800);
    clock.stop();
    expect(base.pending()).toBe(0);
  });
});

describePg('DatabaseClock on PostgreSQL', () => {
  let db: Awaited<ReturnType<typeof createTestDatabase>>;
  let pool: pg.Pool;
  beforeAll(async () => {
    db = await createTestDatabase();
    pool = new pg.Pool({ connectionString: db.url, max: 1 });
  });
  afterAll(async () => {
    await pool?.end();
    await db?.drop();
  });

  it('agrees with now() of the server within the round trip', async () => {
    const base = new FakeClock(Date.UTC(2001, 0, 1)); // a wall clock 25 years off
    const clock = new DatabaseClock({
      base,
      readDbNow: async () => Number((await pool.query<{ now: number }>(PG_NOW_SQL)).rows[0]!.now),
    });
    await clock.sync();
    const server = Number((await pool.query<{ now: number }>(PG_NOW_SQL)).rows[0]!.now);
    // The fake base does not move between the two reads, so only real elapsed time separates them.
    expect(Math.abs(server - clock.now())).toBeLessThan(5_000);
    expect(clock.now()).toBeGreaterThan(Date.UTC(2026, 0, 1));
  });
});
