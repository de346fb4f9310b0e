import { defineConfig } from 'vitest/config';

// Workspace packages resolve to their TypeScript sources via the `source`
// export condition, so tests need no build step.
export default defineConfig({
  resolve: { conditions: ['source'] },
  ssr: { resolve: { conditions: ['source'], externalConditions: ['source'] } },
  test: {
    include: ['packages/*/src/**/*.test.ts', 'packages/*/test/**/*.test.ts', 'test/**/*.test.ts', 'bench/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // Vitest's default leaves one core idle; on a 2-core runner that is one
    // file at a time (12 min). Two keep the suite near 6 min; the cluster
    // tests' leases allow for the shared CPU.
    maxWorkers: 2,
  },
});
