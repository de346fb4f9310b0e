import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { fromNextLine } from '../src/line-start.js';

async function through(chunks: string[]): Promise<string> {
  let out = '';
  for await (const c of Readable.from(chunks.map((s) => Buffer.from(s))).pipe(fromNextLine())) out += String(c);
  return out;
}

describe('the tail of a huge log starts at a line', () => {
  it('drops the partial line before the first newline, across chunks', async () => {
    expect(await through(['ial line', ' still partial\nfirst whole', ' line\nsecond\n'])).toBe('first whole line\nsecond\n');
  });
  it('keeps the line at the offset when the byte before it is a newline', async () => {
    expect(await through(['\nwhole line\n'])).toBe('whole line\n');
  });
  it('prints nothing of a tail without any newline', async () => {
    expect(await through(['no newline ', 'at all'])).toBe('');
  });
});
