import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { scriptArgs } from '../src/shell-command.js';

function run(script: string, shell?: string): { out: string; code: number | null } {
  const r = spawnSync('/bin/sh', scriptArgs(script, shell), { encoding: 'utf8' });
  return { out: r.stdout, code: r.status };
}

describe('spec shell', () => {
  it('sh by default, with stderr in the same stream', () => {
    expect(run('echo out; echo err >&2; exit 4')).toEqual({ out: 'out\nerr\n', code: 4 });
  });

  it('bash, where set -o pipefail makes a failing pipeline fail', () => {
    expect(run('set -o pipefail; false | cat; echo "status $?"', 'bash').out).toBe('status 1\n');
    expect(run('set -o pipefail\nfalse | cat', 'bash').code).toBe(1);
    // Under sh the same pipeline succeeds: the last command decides.
    expect(run('false | cat').code).toBe(0);
  });

  it('an interpreter by path gets the script as its program, and its exit status is the build\'s', () => {
    const py = run('import sys\nprint("from python", file=sys.stderr)\nsys.exit(7)', '/usr/bin/python3');
    expect(py).toEqual({ out: 'from python\n', code: 7 });
    expect(run('print "perl $]\\n"; exit 0', '/usr/bin/perl').out).toMatch(/^perl 5\./);
    expect(run('console.log("from node"); process.exit(3)', process.execPath)).toEqual({ out: 'from node\n', code: 3 });
  });

  it('passes the script as an argument, never as command text', () => {
    expect(run(`echo '$(echo injected)' "quote\\"s"`).out).toBe('$(echo injected) quote"s\n');
    expect(() => scriptArgs('true', 'python3')).toThrow(/absolute path/);
  });
});
