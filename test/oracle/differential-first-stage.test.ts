/**
 * Differential: first-stage translation (PGTT 1, x-flts), QEMU 10.0 vs viommu with compat=qemu-10.0 (every value
 * equal) and in spec mode (differences only where a listed quirk names the value, within its fields). Fixed cases,
 * then random scripts whose seed is printed; VIOMMU_ORACLE_SEED=<n> replays one. Needs QEMU 10.0
 * (.ci/install-qemu10, or $VIOMMU_QEMU10); skips, saying why, without it.
 *
 * Quirks named here (lib/vtd/compat-quirks.ts): 'scalable-rid-pasid-recorded-as-pasid',
 * 'first-stage-rights-checked-per-level', 'first-stage-flags-written-only-when-all-clear',
 * 'first-stage-canonical-check-uses-pasid-aw', 'iotlb-hit-without-permission-not-recorded',
 * 'scalable-faults-use-legacy-reasons' (first-stage scenarios in first-stage-scenarios.ts tag each value with them).
 */
import { strict as assert } from 'node:assert';
import { assertAgreement, playBoth, type DifferentialRun } from './harness';
import { FIRST_STAGE_PROPS } from './first-stage-guest';
import {
  FirstStageRandom,
  RANDOM_OPERATIONS,
  cachedReadOnlyWrite,
  fixedFirstStage,
  pageSelectiveInvalidation,
  randomFirstStage,
} from './first-stage-scenarios';
import { skipWithoutQemu10 } from './qemu10';

function seeds(): number[] {
  const fixed = process.env.VIOMMU_ORACLE_SEED;
  if (fixed !== undefined && fixed !== '') return [Number(fixed) >>> 0];
  return [Math.floor(Math.random() * 2 ** 32), Math.floor(Math.random() * 2 ** 32)];
}

async function compare(run: Promise<DifferentialRun>): Promise<DifferentialRun> {
  const result = await run;
  assertAgreement(result, FIRST_STAGE_PROPS);
  return result;
}

describe('differential: first-stage translation (x-flts), QEMU 10.0 vs viommu', function () {
  this.timeout(180_000);
  before(function () {
    skipWithoutQemu10(this);
  });

  const options = { props: FIRST_STAGE_PROPS, oracle: 'qemu-10.0', checkSpecMode: true } as const;

  it('agrees on A and D in every entry of 4 KiB and 2 MiB walks, reads and writes, U/S and R/W faults at each level, structure faults, canonical checks and FPD', async () => {
    await compare(playBoth(fixedFirstStage, options));
  });

  it('agrees on a write that hits a read-only translation cached by an earlier read', async () => {
    await compare(playBoth(cachedReadOnlyWrite, options));
  });

  it('agrees on a page-selective IOTLB invalidation, which drops every first-stage translation of the domain', async () => {
    await compare(playBoth(pageSelectiveInvalidation, options));
  });

  for (const seed of seeds()) {
    it(`agrees on ${RANDOM_OPERATIONS} random reads, writes and leaf rewrites over random first-stage tables (seed ${seed})`, async () => {
      console.log(`      seed ${seed} (VIOMMU_ORACLE_SEED=${seed} replays it)`);
      try {
        // Each side gets its own generator from the same seed: the script is a function of the seed alone.
        const run = await compare(playBoth((guest) => randomFirstStage(guest, new FirstStageRandom(seed)), options));
        assert.ok(run.qemu.length > RANDOM_OPERATIONS, 'the script ran');
      } catch (error) {
        (error as Error).message = `seed ${seed} (VIOMMU_ORACLE_SEED=${seed}): ${(error as Error).message}`;
        throw error;
      }
    });
  }
});
