import { describe, expect, it } from 'vitest';
import { LogBuffer } from '../web/log-buffer.js';

describe('LogBuffer', () => {
  it('joins text split anywhere into lines, the unterminated last one included', () => {
    const b = new LogBuffer();
    b.append('first li');
    b.append('ne\nsecond\nthi');
    expect(b.length).toBe(3);
    expect([0, 1, 2].map((i) => b.plainLine(i))).toEqual(['first line', 'second', 'thi']);
    b.append('rd\n');
    expect(b.length).toBe(3);
    expect(b.plainLine(2)).toBe('third');
  });

  it('shows what a terminal shows for carriage returns', () => {
    const b = new LogBuffer();
    b.append('windows line\r\nprogress 10%\rprogress 50%\rprogress 100%\n');
    expect([b.plainLine(0), b.plainLine(1)]).toEqual(['windows line', 'progress 100%']);
  });

  it('carries colours still in force into the next line, and drops them after a reset', () => {
    const b = new LogBuffer();
    b.append('\x1b[31mred starts\nstill red\x1b[0m plain\nplain\n\x1b[1m\x1b[32mbold green\nbold green too\x1b[0;34mblue\nblue again\n');
    expect(b.ansiLine(1)).toBe('\x1b[31mstill red\x1b[0m plain');
    expect(b.ansiLine(2)).toBe('plain');
    expect(b.ansiLine(4)).toBe('\x1b[1m\x1b[32mbold green too\x1b[0;34mblue');
    expect(b.ansiLine(5)).toBe('\x1b[34mblue again');
    expect(b.plainLine(4)).toBe('bold green tooblue');
  });

  it('finds lines case-insensitively, ignoring escape codes', () => {
    const b = new LogBuffer();
    b.append('ok\n\x1b[31mERR\x1b[0mOR here\nfine\nerror again');
    expect(b.search('error')).toEqual([1, 3]);
    expect(b.search('')).toEqual([]);
  });

  it('holds 200,000 lines', () => {
    const b = new LogBuffer();
    const chunk = Array.from({ length: 1000 }, (_, i) => `line ${i}`).join('\n') + '\n';
    for (let i = 0; i < 200; i++) b.append(chunk);
    expect(b.length).toBe(200_000);
    expect(b.plainLine(199_999)).toBe('line 999');
  });

  it('drops the cut first line of a log read from the middle, also when it spans several appends', () => {
    const b = new LogBuffer();
    b.append('old line\n');
    b.clear(true);
    expect(b.length).toBe(0);
    b.append('…of a cut li');
    expect(b.length).toBe(0);
    b.append('ne\nwhole one\nand');
    expect([0, 1].map((i) => b.plainLine(i))).toEqual(['whole one', 'and']);
    b.clear();
    b.append('from the start\n');
    expect(b.plainLine(0)).toBe('from the start');
  });
});
