/** Limits: the worker's from its environment, lowered (never raised) by a spec, and set with ulimit in real shells. */
import { execFileSync, type ExecFileSyncOptionsWithStringEncoding } from 'node:child_process';
import { existsSync } from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DEFAULT_LIMITS, LIMIT_NAMES, LIMIT_REASONS } from '@buildfleet/protocol';
import { breach, effectiveLimits, limitFromExit, limitsFromEnv, rlimitPrelude } from '../../src/sandbox/index.js';

describe('limitsFromEnv', () => {
  it('defaults, a value per variable, 0 for none', () => {
    expect(limitsFromEnv({})).toEqual(DEFAULT_LIMITS);
    const l = limitsFromEnv({ BUILDFLEET_LIMIT_MEMORY_MB: '512', BUILDFLEET_LIMIT_CPU_SECONDS: '0' });
    expect(l.memoryMb).toBe(512);
    expect(l.cpuSeconds).toBeNull();
    expect(l.processes).toBe(DEFAULT_LIMITS.processes);
  });

  it('refuses anything but a non-negative integer, naming the variable', () => {
    for (const bad of ['-1', '1.5', 'lots', '1e400']) {
      expect(() => limitsFromEnv({ BUILDFLEET_LIMIT_PROCESSES: bad })).toThrow(/BUILDFLEET_LIMIT_PROCESSES/);
    }
  });
});

describe('effectiveLimits', () => {
  const limit = fc.oneof(fc.constant(null), fc.integer({ min: 1, max: 1_000_000 }));
  const worker = fc.record(Object.fromEntries(LIMIT_NAMES.map((n) => [n, limit])) as Record<(typeof LIMIT_NAMES)[number], typeof limit>);
  const spec = fc.record(Object.fromEntries(LIMIT_NAMES.map((n) => [n, fc.integer({ min: 1, max: 2_000_000 })])), { requiredKeys: [] });

  it('a spec lowers a limit and never raises it; a worker without a limit takes the spec', () => {
    fc.assert(
      fc.property(worker, spec, (w, s) => {
        const e = effectiveLimits(w, s as Partial<Record<(typeof LIMIT_NAMES)[number], number>>);
        for (const n of LIMIT_NAMES) {
          const asked = (s as Record<string, number | undefined>)[n];
          if (asked === undefined) expect(e[n]).toBe(w[n]);
          else if (w[n] === null) expect(e[n]).toBe(asked);
          else expect(e[n]).toBe(Math.min(w[n]!, asked));
        }
      }),
    );
  });
});

describe('rlimitPrelude in real shells', () => {
  const shells = ['/bin/sh', '/usr/bin/dash', '/usr/bin/bash', '/bin/busybox'].filter((s) => existsSync(s));
  const limits = limitsFromEnv({
    BUILDFLEET_LIMIT_CPU_SECONDS: '30',
    BUILDFLEET_LIMIT_FILE_SIZE_MB: '3',
    BUILDFLEET_LIMIT_MEMORY_MB: '700',
    BUILDFLEET_LIMIT_PROCESSES: '77',
  });
  for (const shell of shells) {
    it(`sets CPU (soft below hard), file size, address space and processes in ${shell}`, () => {
      const argv = ['-c'];
      const probe = `${rlimitPrelude(limits, { memory: true, processes: true })}
        echo "t $(ulimit -S -t) $(ulimit -H -t) f $(ulimit -f) v $(ulimit -v)"
        cat /proc/self/limits | grep -E '^Max (processes|file size)'`;
      // As the build runs it: /bin/sh (bash as `sh` is in POSIX mode, where -f counts 512-byte blocks).
      const out = execFileSync(shell, [...argv, probe], { encoding: 'utf8', argv0: 'sh' } as ExecFileSyncOptionsWithStringEncoding);
      expect(out).toContain('t 30 35 f 6144 v 716800');
      expect(out).toMatch(/Max file size\s+3145728\s+3145728/);
      expect(out).toMatch(/Max processes\s+77\s+77/);
      expect(out).not.toContain('warning');
    });
  }

  it('sets nothing for limits that are off, and no memory or process rlimit when a cgroup holds them', () => {
    expect(rlimitPrelude(limitsFromEnv({}, { cpuSeconds: null, memoryMb: null, processes: null, fileSizeMb: null, diskMb: null }), { memory: true, processes: true })).toBe('');
    const p = rlimitPrelude(limitsFromEnv({}), { memory: false, processes: false });
    expect(p).not.toMatch(/ulimit -v|ulimit -u|ulimit -p/);
    expect(p).toMatch(/ulimit -S -t/);
  });
});

describe('limitFromExit and breach', () => {
  it('names the rlimit behind SIGXCPU/SIGXFSZ and a shell reporting them, nothing else', () => {
    expect(limitFromExit({ code: null, signal: 'SIGXCPU' })).toBe('cpuSeconds');
    expect(limitFromExit({ code: null, signal: 'SIGXFSZ' })).toBe('fileSizeMb');
    expect(limitFromExit({ code: 152, signal: null })).toBe('cpuSeconds');
    expect(limitFromExit({ code: 153, signal: null })).toBe('fileSizeMb');
    expect(limitFromExit({ code: 1, signal: null })).toBeUndefined();
    expect(limitFromExit({ code: null, signal: 'SIGKILL' })).toBeUndefined();
  });

  it('gives each limit its reason and a message naming the value', () => {
    const l = limitsFromEnv({});
    for (const n of LIMIT_NAMES) {
      const b = breach(n, l, 'detail');
      expect(b.reason).toBe(LIMIT_REASONS[n]);
      expect(b.message).toContain(String(l[n]));
      expect(b.message).toContain('detail');
    }
  });
});
