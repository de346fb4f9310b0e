import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { formatDuration, parseDuration } from '../src/duration.js';

describe('parseDuration', () => {
  it('reads one integer and one unit', () => {
    expect(parseDuration('X', '7d')).toBe(7 * 86_400_000);
    expect(parseDuration('X', '10s')).toBe(10_000);
    expect(parseDuration('X', '5m')).toBe(300_000);
    expect(parseDuration('X', '250ms')).toBe(250);
    expect(parseDuration('X', ' 2H ')).toBe(7_200_000);
    expect(parseDuration('X', '1w')).toBe(604_800_000);
    expect(parseDuration('X', '0s')).toBe(0);
  });
  it('refuses a bare number, fractions, negatives and unknown units, naming the variable', () => {
    for (const bad of ['100', '1.5h', '-1d', '3 months', '', 'd', '1y', 'never']) {
      expect(() => parseDuration('BUILDFLEET_RETAIN_LOGS', bad), bad).toThrow(/BUILDFLEET_RETAIN_LOGS must be a duration/);
    }
  });
  it('reads never/off as Infinity only where allowed', () => {
    expect(parseDuration('X', 'never', { allowNever: true })).toBe(Infinity);
    expect(parseDuration('X', 'OFF', { allowNever: true })).toBe(Infinity);
  });
  it('formats what it parses back to the same value', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 10_000 }), fc.constantFrom('ms', 's', 'm', 'h', 'd', 'w'), (n, u) => {
        const ms = parseDuration('X', `${n}${u}`);
        expect(parseDuration('X', formatDuration(ms))).toBe(ms);
      }),
    );
    expect(formatDuration(7 * 86_400_000)).toBe('1w');
    expect(formatDuration(90_000)).toBe('90s');
    expect(formatDuration(Infinity)).toBe('never');
  });
});
