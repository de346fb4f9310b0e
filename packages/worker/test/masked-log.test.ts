import { describe, expect, it } from 'vitest';
import { FakeClock } from '@buildfleet/protocol';
import { LogStreamer, type LogChunk } from '../src/logs.js';
import { MaskedLog } from '../src/masked-log.js';

describe('MaskedLog', () => {
  it('uploads no chunk that holds a secret, even when the script prints it in pieces around a chunk cut', async () => {
    const clock = new FakeClock();
    const chunks: LogChunk[] = [];
    const streamer = new LogStreamer({ clock, minChunkBytes: 8, flushIntervalMs: 10, send: async (c) => void chunks.push(c) });
    const log = new MaskedLog(streamer);
    log.write('starting\n');
    log.addSecrets(['tok_ABCDEF123456']);
    log.write('token=tok_ABC');
    await clock.advance(50); // the streamer's flush interval passes mid-secret
    log.write('DEF123456 and base64 ');
    log.write(Buffer.from('tok_ABCDEF123456').toString('base64'));
    log.write('\n[buildfleet] succeeded\n');
    await log.flush();
    const all = Buffer.concat(chunks.map((c) => c.data)).toString();
    expect(chunks.length).toBeGreaterThan(1);
    for (const c of chunks) expect(c.data.toString()).not.toMatch(/tok_|ABCDEF|dG9rX0FCQ0RFRjEyMzQ1Ng/);
    expect(all).toBe('starting\ntoken=*** and base64 ***\n[buildfleet] succeeded\n');
    // Offsets stay consecutive in the masked bytes.
    let offset = 0;
    for (const c of chunks) {
      expect(c.offset).toBe(offset);
      offset += c.data.length;
    }
  });
});
