/**
 * The one contract test suite of the store (design rule 5), run against
 * SQLite (sqlite.test.ts) and PostgreSQL (postgres.test.ts). Every rule of
 * docs/protocol.md "Workers" and "Builds" the store owns is checked here, one
 * slice per store module (`contract/<aggregate>.contract.ts` tests
 * `src/store/sql/<aggregate>.ts`), with times passed in explicitly.
 */
import { describe } from 'vitest';
import { artifactsContract } from './contract/artifacts.contract.js';
import { buildsContract } from './contract/builds.contract.js';
import { claimsContract } from './contract/claims.contract.js';
import { useStoreFixture, type ContractOptions, type OpenStore } from './contract/fixture.js';
import { leasesContract } from './contract/leases.contract.js';
import { logsContract } from './contract/logs.contract.js';
import { tokensContract } from './contract/tokens.contract.js';
import { workersContract } from './contract/workers.contract.js';
import { featuresContract } from './contract/features.contract.js';
import { batchContract } from './contract/batch.contract.js';

export type { ContractOptions, OpenStore } from './contract/fixture.js';

/** Registers the whole contract for one store implementation. */
export function describeStoreContract(name: string, open: OpenStore, options: ContractOptions): void {
  describe(`store contract: ${name}`, () => {
    const f = useStoreFixture(open, options);
    tokensContract(f);
    workersContract(f);
    claimsContract(f);
    leasesContract(f);
    buildsContract(f);
    logsContract(f);
    artifactsContract(f);
    featuresContract(f);
    batchContract(f);
  });
}
