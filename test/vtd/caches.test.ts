/** The IOTLB's page-selective invalidation: whatever path it takes, it removes exactly the entries the range touches. */
import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import { Iotlb, PAGE_SIZES, type IotlbEntry } from '../../lib/vtd/caches';

const PAGE = 4096;

const entry = fc
  .record({
    did: fc.integer({ min: 0, max: 3 }),
    size: fc.integer({ min: 0, max: 2 }),
    pfn: fc.integer({ min: 0, max: 2 ** 20 }),
  })
  .map(({ did, size, pfn }): IotlbEntry => {
    const pageSize = PAGE_SIZES[size]!;
    const pages = pageSize / PAGE;
    return { did, pfn: pfn - (pfn % pages), address: 0, pageSize, readable: true, writable: true };
  });

describe('Iotlb', () => {
  it('page-selective invalidation removes exactly the entries of that domain overlapping the aligned range', () => {
    fc.assert(
      fc.property(
        fc.array(entry, { maxLength: 80 }),
        fc.integer({ min: 0, max: 3 }),
        fc.integer({ min: 0, max: 2 ** 20 }),
        fc.integer({ min: 0, max: 20 }),
        (entries, did, pfn, am) => {
          const iotlb = new Iotlb();
          const kept = new Map<string, IotlbEntry>();
          for (const e of entries) {
            iotlb.insert(e);
            kept.set(`${e.did}/${e.pageSize}/${e.pfn}`, e);
          }
          iotlb.invalidatePages(did, pfn, am);
          const span = 2 ** am;
          const first = pfn - (pfn % span);
          const touched = (e: IotlbEntry) => e.did === did && e.pfn < first + span && e.pfn + e.pageSize / PAGE > first;
          const expected = [...kept.values()].filter((e) => !touched(e));
          assert.equal(iotlb.size, expected.length);
          for (const e of kept.values()) {
            if (touched(e)) assert.notEqual(iotlb.lookup(e.did, e.pfn), e, 'a touched entry is gone');
            else assert.ok(iotlb.lookup(e.did, e.pfn) !== undefined, 'a kept entry is still found');
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it('single-page invalidation of 4 KiB entries (the fast path) removes exactly that page, page numbers above 2^32 included', () => {
    const page = fc.oneof(fc.integer({ min: 0, max: 2 ** 20 }), fc.integer({ min: 2 ** 32, max: 2 ** 36 - 1 }));
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.tuple(fc.integer({ min: 0, max: 3 }), page), { maxLength: 60, selector: ([d, p]) => `${d}/${p}` }),
        fc.nat(59),
        (pages, pick) => {
          const iotlb = new Iotlb();
          for (const [did, pfn] of pages) iotlb.insert({ did, pfn, address: 0, pageSize: PAGE, readable: true, writable: true });
          const victim = pages[pick % Math.max(pages.length, 1)];
          const [did, pfn] = victim ?? [1, 2 ** 33];
          iotlb.invalidatePages(did, pfn, 0);
          for (const [d, p] of pages) {
            const gone = d === did && p === pfn;
            assert.equal(iotlb.lookup(d, p) === undefined, gone, `entry ${d}/${p} ${gone ? 'should be gone' : 'should stay'}`);
          }
          assert.equal(iotlb.size, pages.length - (victim === undefined ? 0 : 1));
        },
      ),
      { numRuns: 300 },
    );
  });
});
