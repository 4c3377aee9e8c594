/** --snapshot-on-fault's hook: each failed translation of a watched unit snapshotted as it happens, up to a limit, the results untouched. */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FaultSnapshots } from '../../lib/explain/fault-snapshots';
import { readSnapshot } from '../../lib/explain/snapshot-file';
import { TranslationDmaFault } from '../../lib/vtd/unit-dma';
import { SID } from '../vtd/unit-guest';
import { SECOND_STAGE_FAR_IOVA, SECOND_STAGE_IOVA, secondStageGuest } from './fault-guests';

function thrownBy(action: () => void): unknown {
  try {
    action();
  } catch (error) {
    return error;
  }
  return assert.fail('expected an exception');
}

describe('explain: fault snapshots on fault', () => {
  let directory: string;
  beforeEach(() => (directory = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-on-fault-'))));
  afterEach(() => fs.rmSync(directory, { recursive: true, force: true }));

  it('snapshots faults through the DMA space, at most `limit`, and counts the rest', () => {
    const guest = secondStageGuest();
    const snapshots = new FaultSnapshots(path.join(directory, 'out'), 2);
    snapshots.watch(guest.unit, guest.memory, 'viommu test');
    const dma = guest.unit.dmaSpace(SID);
    dma.read(BigInt(SECOND_STAGE_FAR_IOVA), new Uint8Array(8));
    const thrown = [0, 1, 2].map((i) => thrownBy(() => dma.write(BigInt(SECOND_STAGE_IOVA) + BigInt(i * 8), new Uint8Array(8))));
    for (const error of thrown) assert.match(String(error), /SM_WRITE/);
    const firstFault = thrown[0];
    assert.ok(firstFault instanceof TranslationDmaFault);
    assert.equal(snapshots.written.length, 2);
    assert.equal(snapshots.skipped, 1);
    assert.equal(snapshots.summary(), `2 fault snapshot(s) in ${path.join(directory, 'out')}; 1 later fault(s) not snapshotted (limit 2)`);
    assert.match(path.basename(snapshots.written[0]!), /^fault-001-test-00-04-0-iova-200000-sm_write\.json$/);
    const first = readSnapshot(snapshots.written[0]!);
    assert.deepEqual(first.request, { sid: SID, iova: BigInt(SECOND_STAGE_IOVA), write: true });
    assert.deepEqual(first.observed, { fault: firstFault.fault, recording: 'recorded' });
    assert.equal(firstFault.fault.reason, 0x85);
    assert.equal(firstFault.fault.level, 1);
    assert.equal(first.source, 'viommu test');
    assert.equal(readSnapshot(snapshots.written[1]!).request.iova, BigInt(SECOND_STAGE_IOVA + 8));
  });

  it('returns what the unit returned, and the unhook restores the unit', () => {
    const guest = secondStageGuest();
    const snapshots = new FaultSnapshots(directory);
    const request = { sid: SID, iova: BigInt(SECOND_STAGE_IOVA), write: true };
    const before = guest.unit.translate(request);
    const unhook = snapshots.watch(guest.unit, guest.memory, 'viommu test');
    assert.deepEqual({ ...guest.unit.translate(request), recording: 'x' }, { ...before, recording: 'x' });
    assert.equal(snapshots.written.length, 1);
    unhook();
    guest.unit.translate(request);
    assert.equal(snapshots.written.length, 1);
    assert.equal(Object.hasOwn(guest.unit, 'translate'), false);
  });
});
