/** Figure of the PASID allocator: allocation and free through the full quarantine, against a plain Set add/delete. */
import { PasidAllocator, type PasidSet } from '../../lib/vtd/pasid-allocator';
import { rate, type Figure } from '../harness';

const ROUND_MS = 400;
/** PASIDs live at once in each batch: all allocated, then all freed, invalidated one by one, and one fence. */
const BATCH = 1024;
/** The full 20-bit space, as a unit with PSS = 19 would offer. */
const PASID_MAX = 2 ** 20;

let sink = 0;

function check(condition: boolean, what: string): void {
  if (!condition) throw new Error(`pasid bench setup: ${what}`);
}

/** One batch: BATCH allocations, BATCH frees into quarantine, a PASID-selective invalidation each, one fence. */
function cycle(allocator: PasidAllocator, set: PasidSet<unknown>, pasids: Int32Array): number {
  for (let i = 0; i < BATCH; i++) {
    const result = set.allocate();
    if (result.ok) pasids[i] = result.pasid;
  }
  for (let i = 0; i < BATCH; i++) set.free(pasids[i]!);
  for (let i = 0; i < BATCH; i++) allocator.invalidated(pasids[i]!);
  sink ^= allocator.fenceCompleted();
  return BATCH;
}

/** pasid.a: a PASID's whole life with no device bound (allocate, free, invalidation, fence) against Set add + delete. */
function quarantineCycleFigure(): Figure {
  const allocator = new PasidAllocator({ min: 1, max: PASID_MAX });
  const set = allocator.createSet('bench-vm', BATCH);
  const pasids = new Int32Array(BATCH);

  cycle(allocator, set, pasids);
  check(allocator.heldCount === 0 && allocator.quarantinedCount === 0, 'a batch left PASIDs held or quarantined');
  const first = Array.from(pasids);
  check(new Set(first).size === BATCH && first.every((pasid) => pasid >= 1), 'a batch did not get distinct PASIDs');
  // Before its invalidation and fence a freed PASID stays out of reach: a second batch meanwhile gets other ones.
  const second = new Int32Array(BATCH);
  for (let i = 0; i < BATCH; i++) set.free(pasids[i] = (set.allocate() as { pasid: number }).pasid);
  for (let i = 0; i < BATCH; i++) set.free(second[i] = (set.allocate() as { pasid: number }).pasid);
  const quarantined = new Set(pasids);
  check(second.every((pasid) => !quarantined.has(pasid)), 'a quarantined PASID was handed out again');
  for (let i = 0; i < BATCH; i++) allocator.invalidated(pasids[i]!);
  for (let i = 0; i < BATCH; i++) allocator.invalidated(second[i]!);
  check(allocator.fenceCompleted() === 2 * BATCH && allocator.quarantinedCount === 0, 'the fence released the wrong count');

  const keys = Int32Array.from(first);
  const plain = new Set<number>();
  return {
    id: 'pasid.a',
    title: `PASID allocate + free under quarantine (batches of ${BATCH}: free, no device bound, invalidation each, one fence)`,
    subject: 'PasidSet.allocate, PasidSet.free, PasidAllocator.invalidated(pasid), fenceCompleted per batch',
    baseline: `Set.add then Set.delete of the same ${BATCH} PASID numbers`,
    direction: 'cost',
    target: 2,
    unit: 'PASIDs',
    async measure() {
      const subject = rate(() => cycle(allocator, set, pasids), ROUND_MS);
      const baseline = rate(() => {
        for (let i = 0; i < BATCH; i++) plain.add(keys[i]!);
        for (let i = 0; i < BATCH; i++) plain.delete(keys[i]!);
        sink ^= plain.size;
        return BATCH;
      }, ROUND_MS);
      if (sink === 0.5) console.log(sink); // keeps the loops from being optimised away
      return { subject, baseline };
    },
  };
}

export const PASID_FIGURES: Readonly<Record<string, () => Figure>> = {
  'pasid.a': quarantineCycleFigure,
};
