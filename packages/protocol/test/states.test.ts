import { describe, expect, it } from 'vitest';
import { ALLOWED_TRANSITIONS, BUILD_STATES, canTransition, isTerminal, TERMINAL_STATES } from '@buildfleet/protocol';

describe('build states', () => {
  it('terminal states never change', () => {
    for (const s of TERMINAL_STATES) {
      for (const to of BUILD_STATES) expect(canTransition(s, to)).toBe(false);
      expect(isTerminal(s)).toBe(true);
    }
  });
  it('every edge names a known state', () => {
    for (const [from, tos] of Object.entries(ALLOWED_TRANSITIONS)) {
      expect(BUILD_STATES).toContain(from);
      for (const to of tos) expect(BUILD_STATES).toContain(to);
    }
  });
  it('a queued build cannot jump to running', () => {
    expect(canTransition('queued', 'running')).toBe(false);
  });
});
