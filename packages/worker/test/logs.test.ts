import { describe, expect, it } from 'vitest';
import { FakeClock, flushMicrotasks } from '@buildfleet/protocol';
import { LogStreamer, type LogChunk } from '../src/logs.js';

const view = (cs: LogChunk[]) => cs.map((c) => [c.seq, c.offset, c.data.toString()]);

describe('LogStreamer', () => {
  it('sends after the flush interval, or at once when minChunkBytes are pending; seq and offsets consecutive', async () => {
    const clock = new FakeClock();
    const sent: LogChunk[] = [];
    const s = new LogStreamer({ clock, minChunkBytes: 10, maxChunkBytes: 16, flushIntervalMs: 250, send: async (c) => void sent.push(c) });
    s.write('abc');
    await flushMicrotasks();
    expect(sent).toEqual([]);
    await clock.advance(249);
    expect(sent).toEqual([]);
    await clock.advance(1);
    expect(view(sent)).toEqual([[0, 0, 'abc']]);
    s.write('0123456789ABCDEFGHIJxyz'); // 23 bytes: 16 now (max), the 7 left wait for the interval
    await flushMicrotasks();
    expect(view(sent)).toEqual([
      [0, 0, 'abc'],
      [1, 3, '0123456789ABCDEF'],
    ]);
    await clock.advance(250);
    expect(view(sent).at(-1)).toEqual([2, 19, 'GHIJxyz']);
    s.write('!');
    await s.flush();
    expect(view(sent).at(-1)).toEqual([3, 26, '!']);
    expect(Buffer.concat(sent.map((c) => c.data)).toString()).toBe('abc0123456789ABCDEFGHIJxyz!');
  });

  it('keeps one upload in flight and sends what piled up meanwhile as one larger chunk', async () => {
    const clock = new FakeClock();
    const sent: LogChunk[] = [];
    let inFlight = 0;
    let maxInFlight = 0;
    const gates: (() => void)[] = [];
    const s = new LogStreamer({
      clock,
      minChunkBytes: 4,
      maxChunkBytes: 100,
      send: async (c) => {
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        sent.push(c);
        await new Promise<void>((r) => gates.push(r));
        inFlight--;
      },
    });
    s.write('aaaa'); // sent at once
    for (let i = 0; i < 5; i++) s.write('bbbb'); // pile up behind it
    await flushMicrotasks();
    expect(view(sent)).toEqual([[0, 0, 'aaaa']]);
    gates.shift()!();
    await flushMicrotasks();
    expect(view(sent)).toEqual([
      [0, 0, 'aaaa'],
      [1, 4, 'bbbbbbbbbbbbbbbbbbbb'],
    ]);
    const done = s.flush();
    gates.shift()!();
    await done;
    expect(maxInFlight).toBe(1);
  });

  it('a send that throws stops the streamer and flush reports it (send owns retries)', async () => {
    const clock = new FakeClock();
    const calls: LogChunk[] = [];
    const s = new LogStreamer({
      clock,
      minChunkBytes: 4,
      send: async (c) => {
        calls.push(c);
        if (c.seq === 1) throw new Error('lease lost');
      },
    });
    s.write('aaaa');
    await flushMicrotasks();
    s.write('bbbb');
    await expect(s.flush()).rejects.toThrow('lease lost');
    s.write('cccc');
    await expect(s.flush()).rejects.toThrow('lease lost');
    expect(calls.map((c) => c.seq)).toEqual([0, 1]);
  });

  it('signals backpressure above the high-water mark, and releases it when uploading stops for good', async () => {
    const clock = new FakeClock();
    const signals: boolean[] = [];
    let fail!: () => void;
    const s = new LogStreamer({
      clock,
      minChunkBytes: 4,
      maxChunkBytes: 4,
      highWaterBytes: 8,
      backpressure: (high) => signals.push(high),
      send: () => new Promise<void>((_, reject) => (fail = () => reject(new Error('gone')))),
    });
    s.write('0123'); // in flight
    s.write('456789abc'); // 9 pending > 8
    await flushMicrotasks();
    expect(signals).toEqual([true]);
    fail();
    await flushMicrotasks();
    expect(signals).toEqual([true, false]);
  });
});
