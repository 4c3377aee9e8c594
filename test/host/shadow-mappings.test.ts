/** ShadowMappings: maximal runs, and changes a vfio-user peer (exact unmaps, no overlapping maps) can apply. */
import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import { SHADOW_ACCESS, ShadowMappings, type ShadowChanges, type ShadowExtent } from '../../lib/host/shadow-mappings';

const RW = SHADOW_ACCESS.READ | SHADOW_ACCESS.WRITE;

/** A peer that enforces the vfio-user DMA table rules: an unmap names exactly a mapped range, maps never overlap. */
class RuleKeepingPeer {
  readonly table = new Map<number, ShadowExtent>();
  messages = 0;

  apply(changes: ShadowChanges): void {
    for (const run of changes.unmap) {
      const mapped = this.table.get(run.iovaPage);
      assert.ok(mapped !== undefined && mapped.pages === run.pages, `unmap of pages ${run.iovaPage}+${run.pages} names no mapped range`);
      this.table.delete(run.iovaPage);
      this.messages++;
    }
    for (const run of changes.map) {
      for (const other of this.table.values()) {
        assert.ok(
          run.iovaPage + run.pages <= other.iovaPage || other.iovaPage + other.pages <= run.iovaPage,
          `map of ${run.iovaPage}+${run.pages} overlaps`,
        );
      }
      this.table.set(run.iovaPage, run);
      this.messages++;
    }
  }

  pages(): Map<number, [number, number]> {
    const pages = new Map<number, [number, number]>();
    for (const run of this.table.values()) for (let i = 0; i < run.pages; i++) pages.set(run.iovaPage + i, [run.gpaPage + i, run.access]);
    return pages;
  }
}

function runsOf(pages: Map<number, [number, number]>, from: number, to: number): ShadowExtent[] {
  const runs: ShadowExtent[] = [];
  for (let page = from; page < to; page++) {
    const entry = pages.get(page);
    if (entry !== undefined) runs.push({ iovaPage: page, gpaPage: entry[0], pages: 1, access: entry[1] });
  }
  return runs;
}

describe('ShadowMappings', () => {
  it('coalesces contiguous pages into one run and maps it with one message', () => {
    const shadow = new ShadowMappings();
    const changes = shadow.update(
      16,
      8,
      [0, 1, 2, 3].map((i) => ({ iovaPage: 16 + i, gpaPage: 100 + i, pages: 1, access: RW })),
    );
    assert.deepEqual(changes, { unmap: [], map: [{ iovaPage: 16, gpaPage: 100, pages: 4, access: RW }] });
    assert.equal(shadow.count, 1);
    assert.deepEqual(shadow.lookup(19), { iovaPage: 16, gpaPage: 100, pages: 4, access: RW });
    assert.equal(shadow.lookup(20), undefined);
  });

  it('does not join pages of different access or across a backing boundary', () => {
    const shadow = new ShadowMappings({ sameBacking: (previous, next) => Math.floor(previous / 4) === Math.floor(next / 4) });
    const changes = shadow.update(0, 8, [
      { iovaPage: 0, gpaPage: 2, pages: 2, access: RW },
      { iovaPage: 2, gpaPage: 4, pages: 2, access: RW },
      { iovaPage: 4, gpaPage: 6, pages: 1, access: SHADOW_ACCESS.READ },
    ]);
    assert.equal(changes.map.length, 3);
  });

  it('splits a run when a page in its middle changes: one exact unmap, then the pieces', () => {
    const shadow = new ShadowMappings();
    shadow.update(0, 8, [{ iovaPage: 0, gpaPage: 0, pages: 8, access: RW }]);
    const changes = shadow.update(3, 1, []);
    assert.deepEqual(changes.unmap, [{ iovaPage: 0, gpaPage: 0, pages: 8, access: RW }]);
    assert.deepEqual(changes.map, [
      { iovaPage: 0, gpaPage: 0, pages: 3, access: RW },
      { iovaPage: 4, gpaPage: 4, pages: 4, access: RW },
    ]);
  });

  it('sends nothing when a range is synced again unchanged', () => {
    const shadow = new ShadowMappings();
    const runs = [{ iovaPage: 10, gpaPage: 50, pages: 5, access: RW }];
    shadow.update(0, 64, runs);
    assert.deepEqual(shadow.update(0, 64, runs), { unmap: [], map: [] });
    assert.deepEqual(shadow.update(12, 1, [{ iovaPage: 12, gpaPage: 52, pages: 1, access: RW }]), { unmap: [], map: [] });
  });

  it('refuses runs outside the range or out of order', () => {
    const shadow = new ShadowMappings();
    assert.throws(() => shadow.update(0, 4, [{ iovaPage: 3, gpaPage: 0, pages: 2, access: RW }]), { code: 'ERR_VIOMMU_SHADOW_RANGE' });
    assert.throws(
      () =>
        shadow.update(0, 8, [
          { iovaPage: 4, gpaPage: 0, pages: 1, access: RW },
          { iovaPage: 2, gpaPage: 0, pages: 1, access: RW },
        ]),
      { code: 'ERR_VIOMMU_SHADOW_RANGE' },
    );
  });

  it('keeps a rule-keeping peer equal to the guest page model over random update sequences, with maximal runs', () => {
    const pageEntry = fc.option(fc.tuple(fc.integer({ min: 0, max: 40 }), fc.constantFrom(SHADOW_ACCESS.READ, RW)), { nil: undefined });
    const step = fc.record({
      first: fc.integer({ min: 0, max: 40 }),
      count: fc.integer({ min: 0, max: 24 }),
      entries: fc.array(pageEntry, { minLength: 24, maxLength: 24 }),
    });
    fc.assert(
      fc.property(fc.array(step, { maxLength: 25 }), fc.boolean(), (steps, contiguousBias) => {
        const shadow = new ShadowMappings();
        const peer = new RuleKeepingPeer();
        const model = new Map<number, [number, number]>();
        for (const { first, count, entries } of steps) {
          for (let i = 0; i < count; i++) {
            const entry = entries[i];
            if (entry === undefined) model.delete(first + i);
            // With the bias, most pages are identity-offset so that runs form and must be joined and split.
            else model.set(first + i, [contiguousBias ? first + i + 7 : entry[0], entry[1]]);
          }
          peer.apply(shadow.update(first, count, runsOf(model, first, first + count)));
          assert.deepEqual(peer.pages(), model);
        }
        const runs = shadow.extents;
        for (let i = 1; i < runs.length; i++) {
          const a = runs[i - 1]!;
          const b = runs[i]!;
          assert.ok(a.iovaPage + a.pages <= b.iovaPage, 'runs are sorted and disjoint');
          const joinable = a.iovaPage + a.pages === b.iovaPage && a.gpaPage + a.pages === b.gpaPage && a.access === b.access;
          assert.ok(!joinable, `runs at ${a.iovaPage} and ${b.iovaPage} should be one`);
        }
        peer.apply(shadow.clear());
        assert.equal(peer.table.size, 0);
      }),
      { numRuns: 300 },
    );
  });
});

describe('ShadowMappings at scale', () => {
  it('takes 300,000 separate runs in one update and splits them again (no call takes the runs as arguments)', () => {
    const shadow = new ShadowMappings();
    const count = 300_000;
    const scattered = Array.from({ length: count }, (_, i) => ({ iovaPage: 2 * i, gpaPage: 7, pages: 1, access: RW }));
    const changes = shadow.update(0, 2 * count, scattered);
    assert.equal(changes.map.length, count);
    assert.equal(shadow.count, count);
    const dropped = shadow.update(count, count, []);
    assert.equal(dropped.unmap.length, count / 2);
    assert.equal(shadow.count, count / 2);
  });
});
