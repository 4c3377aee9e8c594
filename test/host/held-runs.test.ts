/**
 * HeldRuns against a device's own table: whatever requests fail or are held back, the domain's table plus the
 * exceptions says exactly what the device holds, which unmaps it needs, and what leaving must unmap.
 */
import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import { HeldRuns } from '../../lib/host/held-runs';
import { SHADOW_ACCESS, ShadowMappings, type ShadowExtent } from '../../lib/host/shadow-mappings';

const RW = SHADOW_ACCESS.READ | SHADOW_ACCESS.WRITE;

/** One step of the guest and the device: an edit of pages then an invalidation, or the device leaving its domain. */
type Step =
  { kind: 'edit'; page: number; span: number; gpa: number | undefined; access: number; failures: boolean[] } | { kind: 'leave'; failures: boolean[] };

const step: fc.Arbitrary<Step> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({
      kind: fc.constant('edit' as const),
      page: fc.integer({ min: 0, max: 30 }),
      span: fc.integer({ min: 1, max: 6 }),
      gpa: fc.option(fc.integer({ min: 0, max: 200 }), { nil: undefined }),
      access: fc.constantFrom(SHADOW_ACCESS.READ, RW),
      failures: fc.array(fc.boolean(), { maxLength: 12 }),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('leave' as const), failures: fc.array(fc.boolean(), { maxLength: 12 }) }) },
);

describe('HeldRuns', () => {
  it('tells the same as a per-device table through refused maps and unmaps, the device limit, and leaving', () => {
    fc.assert(
      fc.property(fc.array(step, { maxLength: 30 }), fc.integer({ min: 1, max: 12 }), (steps, limit) => {
        const pages = new Map<number, [number, number]>();
        let table = new ShadowMappings();
        const held = new HeldRuns();
        // What the device really holds, by IOVA page, from each request's outcome as the device sees it.
        const device = { runs: new Map<number, ShadowExtent>() };
        let outcomes: boolean[] = [];
        const fails = (): boolean => outcomes.shift() ?? false;

        const unmap = (run: ShadowExtent): void => {
          const holds = device.runs.delete(run.iovaPage);
          assert.equal(held.released(run), holds, `an unmap at page ${run.iovaPage} is sent exactly when the device holds a run there`);
          if (holds && fails()) {
            device.runs.set(run.iovaPage, run);
            held.unmapFailed(run);
          }
        };
        const map = (run: ShadowExtent): void => {
          const inTheWay = device.runs.get(run.iovaPage);
          assert.equal(held.size, device.runs.size);
          if (device.runs.size >= limit) {
            held.withheld(run);
            return;
          }
          assert.equal(held.keptAt(run.iovaPage), inTheWay, `what stands at page ${run.iovaPage} before a map`);
          if (inTheWay !== undefined) {
            held.withheld(run);
            return;
          }
          device.runs.set(run.iovaPage, run);
          held.claimed();
          if (fails()) {
            device.runs.delete(run.iovaPage);
            held.mapFailed(run);
          }
        };
        const leave = (): void => {
          const everything = held.left(table.extents);
          assert.deepEqual(new Set(everything), new Set(device.runs.values()), 'leaving names exactly what the device holds');
          for (const run of everything) unmap(run);
        };

        for (const next of steps) {
          outcomes = [...next.failures];
          if (next.kind === 'leave') {
            leave();
            // The device joins a fresh domain with the same pages: a replay of the whole table.
            table = new ShadowMappings();
            for (const run of table.update(0, 64, runsOf(pages)).map) map(run);
          } else {
            for (let i = 0; i < next.span; i++) {
              if (next.gpa === undefined) pages.delete(next.page + i);
              else pages.set(next.page + i, [next.gpa + i, next.access]);
            }
            const changes = table.update(next.page, next.span, runsOf(pages, next.page, next.page + next.span));
            for (const run of changes.unmap) unmap(run);
            for (const run of changes.map) map(run);
          }
          assert.equal(held.size, device.runs.size, 'the count of runs held');
        }
        outcomes = [];
        leave();
        assert.equal(device.runs.size, 0);
        assert.equal(held.size, 0);
      }),
      { numRuns: 300 },
    );
  });

  it('keeps a run whose unmap failed and sends no unmap for a run the device never got', () => {
    const held = new HeldRuns();
    const a: ShadowExtent = { iovaPage: 4, gpaPage: 10, pages: 2, access: RW };
    const b: ShadowExtent = { iovaPage: 4, gpaPage: 20, pages: 1, access: RW };
    held.claimed();
    assert.equal(held.released(a), true);
    held.unmapFailed(a);
    assert.equal(held.keptAt(4), a, 'the refused unmap leaves the old run in the way');
    held.withheld(b);
    assert.deepEqual(held.left([b]), [a], 'leaving unmaps the kept run, not the one never sent');
    assert.equal(held.released(a), true);
    assert.equal(held.size, 0);
    assert.equal(held.keptAt(4), undefined);
  });
});

function runsOf(pages: Map<number, [number, number]>, from = 0, to = 64): ShadowExtent[] {
  const runs: ShadowExtent[] = [];
  for (let page = from; page < to; page++) {
    const entry = pages.get(page);
    if (entry !== undefined) runs.push({ iovaPage: page, gpaPage: entry[0], pages: 1, access: entry[1] });
  }
  return runs;
}
