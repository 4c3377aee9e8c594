/** Where the programs written elsewhere live: ../shared/peers beside the repository, or $VIOMMU_PEERS. Optional: the tests that need one skip, saying why. */
import * as path from 'node:path';

/** dist/test -> the repository's parent, where `shared/peers` sits beside the repository. */
export const PEERS = process.env.VIOMMU_PEERS ?? path.resolve(__dirname, '..', '..', '..', 'shared', 'peers');
