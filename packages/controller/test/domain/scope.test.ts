import { describe, expect, it } from 'vitest';
import { describeScope } from '@buildfleet/protocol';
import { cacheScope, scopeProblem } from '../../src/domain/scope.js';

describe('scopes', () => {
  const build = { labels: ['linux', 'x64'], metadata: { repo: 'acme/app', pr: 12 } };

  it('an empty scope admits every build', () => {
    expect(scopeProblem({}, build)).toBeUndefined();
    expect(describeScope({})).toBe('any build');
  });

  it('admits a build with every label and metadata pair, and says what another one lacks', () => {
    expect(scopeProblem({ labels: ['linux'], metadata: { repo: 'acme/app', pr: '12' } }, build)).toBeUndefined();
    expect(scopeProblem({ metadata: { repo: 'acme/other' } }, build)).toBe('has repo=acme/app');
    expect(scopeProblem({ labels: ['arm64'], metadata: { team: 'ops' } }, build)).toBe('has no team, lacks label arm64');
    expect(describeScope({ labels: ['a', 'b'], metadata: { z: '1', repo: 'r' } })).toBe('labels a,b; repo=r; z=1');
  });

  it('a cache scope is made of the configured metadata keys only', () => {
    expect(cacheScope(build, ['repo'])).toBe('repo=acme/app');
    expect(cacheScope(build, ['repo', 'pr'])).toBe('pr=12,repo=acme/app');
    expect(cacheScope({ metadata: {} }, ['repo'])).toBe('');
  });
});
