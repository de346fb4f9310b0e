import { describe, expect, it } from 'vitest';
import { FakeClock } from '@buildfleet/protocol';
import { WakeChannel } from '../../src/http/wakeups.js';

describe('WakeChannel', () => {
  it('a keyed wake-up wakes only waiters on that key; a keyless one wakes all', async () => {
    const clock = new FakeClock();
    const ch = new WakeChannel(clock);
    const results: string[] = [];
    const park = (key: string) => {
      const release = ch.retain(key);
      return ch.waitForChange(ch.snapshot(key), 10_000).then((r) => {
        release();
        results.push(`${key}:${r}`);
      });
    };
    const a = park('a');
    const b = park('b');
    expect(ch.size).toBe(2);
    ch.wake('a');
    await a;
    expect(results).toEqual(['a:woken']);
    expect(ch.size).toBe(1);
    ch.wake();
    await b;
    expect(results).toEqual(['a:woken', 'b:woken']);
    expect(ch.interested).toBe(0);
  });

  it('a wake-up between the snapshot and the wait is not lost', async () => {
    const ch = new WakeChannel(new FakeClock());
    const release = ch.retain('w1');
    const snap = ch.snapshot('w1');
    ch.wake('w1'); // lands while the waiter checks the database
    expect(await ch.waitForChange(snap, 10_000)).toBe('woken');
    release();
    const snap2 = ch.snapshot();
    ch.wake();
    expect(await ch.waitForChange(snap2, 10_000)).toBe('woken');
  });

  it('a keyed wake-up for a key nobody waits on is not remembered', async () => {
    const clock = new FakeClock();
    const ch = new WakeChannel(clock);
    ch.wake('gone');
    const release = ch.retain('gone');
    const p = ch.waitForChange(ch.snapshot('gone'), 1_000);
    await clock.advance(1_000);
    expect(await p).toBe('timeout');
    release();
  });

  it('times out on the clock, aborts on a signal, and closes for good', async () => {
    const clock = new FakeClock();
    const ch = new WakeChannel(clock);
    const t = ch.waitForChange(ch.snapshot(), 500);
    await clock.advance(499);
    expect(ch.size).toBe(1);
    await clock.advance(1);
    expect(await t).toBe('timeout');
    const abort = new AbortController();
    const p = ch.waitForChange(ch.snapshot(), 500, abort.signal);
    abort.abort();
    expect(await p).toBe('aborted');
    const c = ch.waitForChange(ch.snapshot(), 500);
    ch.close();
    expect(await c).toBe('closed');
    expect(await ch.waitForChange(ch.snapshot(), 500)).toBe('closed');
    expect(clock.pending()).toBe(0);
  });
});
