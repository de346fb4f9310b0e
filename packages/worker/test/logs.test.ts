import { describe, expect, it } from 'vitest';
import { FakeClock, flushMicrotasks } from '@buildfleet/protocol';
import { LogStreamer, type LogChunk } from '../src/logs.js';

describe('LogStreamer', () => {
  it('cuts by size and by time, with consecutive seq and byte offsets', async () => {
    const clock = new FakeClock();
    const sent: LogChunk[] = [];
    const s = new LogStreamer({ clock, maxChunkBytes: 10, flushIntervalMs: 250, send: async (c) => void sent.push(c) });
    s.write('abc');
    await flushMicrotasks();
    expect(sent).toEqual([]);
    await clock.advance(249);
    expect(sent).toEqual([]);
    await clock.advance(1);
    expect(sent.map((c) => [c.seq, c.offset, c.data.toString()])).toEqual([[0, 0, 'abc']]);
    s.write('0123456789ABCDEFGHIJxyz'); // 23 bytes: cut at once into chunks of at most 10
    await flushMicrotasks();
    expect(sent.map((c) => [c.seq, c.offset, c.data.toString()])).toEqual([
      [0, 0, 'abc'],
      [1, 3, '0123456789'],
      [2, 13, 'ABCDEFGHIJ'],
      [3, 23, 'xyz'],
    ]);
    s.write('!');
    await s.flush();
    expect(sent.at(-1)!).toMatchObject({ seq: 4, offset: 26 });
    expect(Buffer.concat(sent.map((c) => c.data)).toString()).toBe('abc0123456789ABCDEFGHIJxyz!');
  });

  it('keeps one upload in flight and never re-splits a chunk', async () => {
    const clock = new FakeClock();
    let inFlight = 0;
    let maxInFlight = 0;
    const calls: LogChunk[] = [];
    let failures = 2;
    const s = new LogStreamer({
      clock,
      maxChunkBytes: 4,
      send: async (c) => {
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        calls.push(c);
        await flushMicrotasks();
        inFlight--;
        if (c.seq === 1 && failures-- > 0) throw Object.assign(new Error('retry me'), { retry: true });
      },
    });
    // The streamer does not retry by itself: a send that throws stops it, so send owns retries.
    s.write('aaaabbbbcccc');
    await expect(s.flush()).rejects.toThrow('retry me');
    expect(maxInFlight).toBe(1);
    expect(calls.map((c) => c.seq)).toEqual([0, 1]);
    expect(s.error).toBeInstanceOf(Error);
  });

  it('signals backpressure above the high-water mark and releases it when uploading stops for good', async () => {
    const clock = new FakeClock();
    const signals: boolean[] = [];
    let release!: () => void;
    const s = new LogStreamer({
      clock,
      maxChunkBytes: 4,
      highWaterBytes: 8,
      backpressure: (high) => signals.push(high),
      send: () => new Promise<void>((_, reject) => (release = () => reject(new Error('gone')))),
    });
    s.write('0123456789abc');
    await flushMicrotasks();
    expect(signals).toEqual([true]);
    release();
    await flushMicrotasks();
    expect(signals).toEqual([true, false]);
  });
});
