/** DmaMapTable against a naive model: overlaps refused, exact unmaps only, lookups, the mapping limit (property). */
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { VfioUserErrnoError } from '../../../lib/vfio-user/connection-errors';
import { ERRNO } from '../../../lib/errno';
import { DmaMapTable } from '../../../lib/vfio-user/server/dma-maps';

type Step = { op: 'map' | 'unmap' | 'lookup'; page: number; pages: number };

function errnoOf(run: () => unknown): number | undefined {
  try {
    run();
    return undefined;
  } catch (error) {
    assert.ok(error instanceof VfioUserErrnoError, String(error));
    return error.errno;
  }
}

describe('DmaMapTable', () => {
  it('agrees with a list model on every map, unmap and lookup', () => {
    const step: fc.Arbitrary<Step> = fc.record({
      op: fc.constantFrom('map', 'map', 'unmap', 'lookup'),
      page: fc.integer({ min: 0, max: 40 }),
      pages: fc.integer({ min: 1, max: 6 }),
    });
    fc.assert(
      fc.property(fc.array(step, { maxLength: 80 }), fc.integer({ min: 1, max: 12 }), (steps, maxMappings) => {
        const table = new DmaMapTable({ maxMappings });
        const model: { start: number; end: number }[] = [];
        for (const { op, page, pages } of steps) {
          const address = BigInt(page * 0x1000);
          const size = BigInt(pages * 0x1000);
          if (op === 'map') {
            const overlaps = model.some((m) => m.start < page + pages && page < m.end);
            const expected = overlaps ? ERRNO.EEXIST : model.length >= maxMappings ? ERRNO.EINVAL : undefined;
            assert.equal(
              errnoOf(() => table.add({ argsz: 32, flags: 3, offset: 0n, address, size }, undefined)),
              expected,
            );
            if (expected === undefined) model.push({ start: page, end: page + pages });
          } else if (op === 'unmap') {
            const at = model.findIndex((m) => m.start === page && m.end === page + pages);
            assert.equal(
              errnoOf(() => table.remove(address, size)),
              at < 0 ? ERRNO.ENOENT : undefined,
            );
            if (at >= 0) model.splice(at, 1);
          } else {
            const hit = model.find((m) => m.start <= page && page < m.end);
            assert.equal(table.lookup(address + 0x10n)?.address, hit === undefined ? undefined : BigInt(hit.start * 0x1000));
          }
          assert.equal(table.size, model.length);
          const addresses = table.mappings.map((m) => m.address);
          assert.deepEqual(
            addresses,
            [...addresses].sort((a, b) => (a < b ? -1 : 1)),
          );
        }
      }),
      { numRuns: 300 },
    );
  });
});
