import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { MASK, SecretMasker, maskPatterns } from '@buildfleet/protocol';

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);

/** Feeds `text` to a masker in the given pieces and returns the whole output. */
function stream(masker: SecretMasker, text: string, cuts: number[]): string {
  const bytes = enc(text);
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  const out: Uint8Array[] = [];
  let from = 0;
  for (const p of [...points, bytes.length]) {
    out.push(masker.write(bytes.subarray(from, p)));
    from = p;
  }
  out.push(masker.end());
  return out.map(dec).join('');
}

const secretArb = fc.stringMatching(/^[A-Za-z0-9_]{8,40}$/);
const noiseArb = fc.stringMatching(/^[a-z .\n]{0,60}$/);

describe('SecretMasker', () => {
  it('masks a value printed plainly, whole', () => {
    const m = new SecretMasker(['hunter2-secret']);
    expect(dec(m.mask(enc('token=hunter2-secret;')))).toBe(`token=${MASK};`);
  });

  it('never lets a value through, however the stream is cut (a secret split across log chunks)', () => {
    fc.assert(
      fc.property(secretArb, noiseArb, noiseArb, fc.array(fc.nat(200), { maxLength: 8 }), (secret, before, after, cuts) => {
        const m = new SecretMasker([secret]);
        const out = stream(m, `${before}${secret}${after}${secret}`, cuts);
        expect(out).not.toContain(secret);
        expect(out).toContain(MASK);
        expect(m.pending).toBe(0);
      }),
      { numRuns: 300 },
    );
  });

  it('passes text without secrets through unchanged, whatever the cuts', () => {
    fc.assert(
      fc.property(secretArb, noiseArb, fc.array(fc.nat(100), { maxLength: 6 }), (secret, text, cuts) => {
        fc.pre(!text.includes(secret.slice(0, 6)));
        expect(stream(new SecretMasker([secret]), text, cuts)).toBe(text);
      }),
      { numRuns: 300 },
    );
  });

  it('keeps back only what could still become a secret', () => {
    const m = new SecretMasker(['abcdef-123']);
    expect(dec(m.write(enc('hello abc')))).toBe('hello ');
    expect(m.pending).toBe(3);
    expect(dec(m.write(enc('xyz\n')))).toBe('abcxyz\n');
    expect(m.pending).toBe(0);
    expect(dec(m.write(enc('..abcdef-')))).toBe('..');
    expect(dec(m.write(enc('123 done')))).toBe(`${MASK} done`);
  });

  it('masks base64 of the value, alone and inside longer base64 text at every alignment', () => {
    fc.assert(
      fc.property(fc.stringMatching(/^[A-Za-z0-9_]{12,40}$/), fc.string({ maxLength: 5 }), fc.string({ maxLength: 5 }), (secret, pre, post) => {
        const m = new SecretMasker([secret]);
        const alone = Buffer.from(secret).toString('base64');
        expect(dec(m.mask(enc(`${alone}\n`)))).toBe(`${MASK}\n`);
        const inside = Buffer.from(pre + secret + post).toString('base64');
        const out = dec(m.mask(enc(inside)));
        // What is left may hold the surrounding text and up to two bytes of the
        // secret on each side (a base64 group is three bytes): the middle must
        // not be recoverable, unless that leftover text itself spells it
        // (e.g. pre "AAAAA" around a secret of As).
        const mid = secret.slice(3, -3);
        const leftovers = [0, 1, 2].flatMap((k) => [0, 1, 2].map((j) => pre + secret.slice(0, k) + secret.slice(secret.length - j) + post));
        if (!leftovers.some((t) => t.includes(mid))) {
          expect(Buffer.from(out.replace(/\*\*\*/g, ''), 'base64').toString('latin1')).not.toContain(mid);
        }
        const url = Buffer.from(pre + secret + post).toString('base64url');
        expect(dec(m.mask(enc(url)))).toContain(MASK);
      }),
      { numRuns: 200 },
    );
  });

  it('masks a base64 form split across writes', () => {
    const secret = 'npm_AbCdEf0123456789';
    const b64 = Buffer.from(secret).toString('base64');
    const m = new SecretMasker([secret]);
    const out = stream(m, `echo ${b64} done`, [10, 17]);
    expect(out).toBe(`echo ${MASK} done`);
  });

  it('masks a value that ends in a newline without it, each line of a multi-line value, and escaped forms', () => {
    const m = new SecretMasker(['line-one-key\nline-two-key\n', 'p@ss word/1', 'tok_from_a_file\n']);
    expect(dec(m.mask(enc('x line-one-key y')))).toBe(`x ${MASK} y`);
    expect(dec(m.mask(enc('token tok_from_a_file\nnext line\n')))).toBe(`token ${MASK}\nnext line\n`);
    expect(dec(m.mask(enc('[line-two-key]')))).toBe(`[${MASK}]`);
    expect(dec(m.mask(enc('url=p%40ss%20word%2F1')))).toBe(`url=${MASK}`);
    expect(dec(m.mask(enc('"p@ss word/1"')))).toBe(`"${MASK}"`);
  });

  it('does not mask derived forms too short to be told from ordinary text', () => {
    const patterns = maskPatterns(['ab\ncd']).map(dec);
    expect(patterns).toContain('ab\ncd');
    expect(patterns).not.toContain('ab');
  });

  it('can mask without changing the length (the controller keeps the worker\'s offsets)', () => {
    const m = new SecretMasker(['hunter2-secret']);
    const out = dec(m.maskKeepingLength(enc('a hunter2-secret b')));
    expect(out).toBe(`a ${'*'.repeat(14)} b`);
  });

  it('without secrets passes chunks through untouched', () => {
    const m = new SecretMasker();
    const chunk = enc('anything');
    expect(m.write(chunk)).toBe(chunk);
    expect(m.active).toBe(false);
  });

  it('learns values later (the worker receives secrets after the log has started)', () => {
    const m = new SecretMasker();
    expect(dec(m.write(enc('before ')))).toBe('before ');
    m.add(['late-secret-1']);
    expect(stream(m, 'x late-secret-1 y', [4])).toBe(`x ${MASK} y`);
  });
});
