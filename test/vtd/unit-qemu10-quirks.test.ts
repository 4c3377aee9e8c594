/**
 * compat=qemu-10.0 in the unit, without QEMU: each quirk QEMU 10.0.2 showed in test/oracle acts here, and the spec
 * mode keeps the architectural answer. The oracle tests compare with QEMU itself when it is installed.
 */
import { strict as assert } from 'node:assert';
import { faultCode } from '../../lib/vtd/fault-reasons';
import { FR } from '../../lib/vtd/legacy-walk';
import { GCMD, OFFSET } from '../../lib/vtd/register-bits';
import { PASID_PGTT } from '../../lib/vtd/structures';
import { ScalableGuest } from './scalable-guest';
import { SID } from './unit-guest';

const A = 1n << 5n;
const D = 1n << 6n;

function firstStageUnit(compat: string, map: (guest: ScalableGuest, top: number) => void): ScalableGuest & { top: number } {
  const guest = new ScalableGuest(`x-scalable-mode=on,x-flts=on,aw-bits=48${compat}`);
  guest.scalableContext(SID, { PASIDE: 0 });
  const top = guest.writer.page();
  guest.pasidEntry(SID, 0, { PGTT: PASID_PGTT.FIRST_STAGE, AW: 2, FSPTPTR: top / 4096, DID: 3 });
  map(guest, top);
  guest.enableScalable();
  return Object.assign(guest, { top });
}

describe('vtd unit: compat=qemu-10.0 quirks', () => {
  it('a write through a first-stage leaf whose A is set leaves D clear (10.0); the spec sets D', () => {
    for (const [compat, dirty] of [
      [',compat=qemu-10.0', false],
      ['', true],
    ] as const) {
      let leaf = 0;
      const guest = firstStageUnit(compat, (g, top) => {
        g.writer.mapFirst(top, 4, 0x1000n, 0x400000, { extra: A });
        leaf = g.writer.firstEntryAddress(top, 4, 0x1000n, 1);
      });
      assert.ok(guest.request(0x1000, { write: true }).ok);
      assert.equal((guest.memory.readU64(leaf) & D) !== 0n, dirty, compat || 'spec');
    }
  });

  it('a write hitting a read-only first-stage translation cached by a read goes unrecorded (10.0); the spec records 0x85', () => {
    for (const [compat, recorded] of [
      [',compat=qemu-10.0', false],
      ['', true],
    ] as const) {
      const guest = firstStageUnit(compat, (g, top) => g.writer.mapFirst(top, 4, 0x2000n, 0x401000, { rw: false }));
      assert.ok(guest.request(0x2000).ok);
      const write = guest.request(0x2000, { write: true });
      assert.ok(!write.ok);
      assert.equal(write.recording !== 'none', recorded, compat || 'spec');
      if (recorded) assert.equal(write.fault.reason, faultCode('SM_WRITE'));
    }
  });

  it("records 10.0's codes: legacy ones for root, context and second-stage faults, scalable ones for PASID-structure and first-stage faults", () => {
    const pasidAbsent = new ScalableGuest('x-scalable-mode=on,compat=qemu-10.0');
    pasidAbsent.scalableContext(SID, { PASIDE: 0 });
    pasidAbsent.pasidEntry(SID, 0, { P: 0 });
    pasidAbsent.enableScalable();
    const absent = pasidAbsent.request(0x1000);
    assert.ok(!absent.ok && absent.fault.reason === faultCode('SM_PASID_ENTRY_NOT_PRESENT'), 'PASID entry not present: 0x59');

    const noContext = new ScalableGuest('x-scalable-mode=on,compat=qemu-10.0');
    noContext.enableScalable();
    // Bus 2 has no root entry.
    const missing = noContext.unit.translate({ sid: 0x200, iova: 0x1000n, write: false });
    assert.ok(!missing.ok && missing.fault.reason === FR.ROOT_ENTRY_NOT_PRESENT, 'root entry not present: 1');

    const readOnly = firstStageUnit(',compat=qemu-10.0', (g, top) => g.writer.mapFirst(top, 4, 0x3000n, 0x402000, { rw: false }));
    const write = readOnly.request(0x3000, { write: true });
    assert.ok(!write.ok && write.fault.reason === faultCode('SM_WRITE'), 'a first-stage write fault keeps 0x85');

    const sevenTwo = new ScalableGuest('x-scalable-mode=on,compat=qemu-7.2');
    sevenTwo.scalableContext(SID, { PASIDE: 0 });
    sevenTwo.pasidEntry(SID, 0, { P: 0 });
    sevenTwo.enableScalable();
    const old = sevenTwo.request(0x1000);
    assert.ok(!old.ok && old.fault.reason === faultCode('SM_PASID_ENTRY_ACCESS'), '7.2 records 0x58 for every PASID-entry fault');
  });

  it("records a plain DMA write's interrupt-remapping fault with SID 0xffff (10.0); the spec records the requester", () => {
    for (const [compat, sid] of [
      ['compat=qemu-10.0', 0xffffn],
      ['x-scalable-mode=on', BigInt(SID)],
    ] as const) {
      const guest = new ScalableGuest(compat);
      const table = guest.writer.page();
      guest.unit.write(OFFSET.IRTA, 8, BigInt(table) | 7n);
      guest.command(GCMD.SIRTP);
      guest.command(GCMD.IRE);
      const result = guest.unit.interruptRequest({ sid: SID, address: 0xfee0_0010, data: 0 }, 'dma-write');
      assert.ok(!result.ok);
      assert.equal(guest.frcdHi() & 0xffffn, sid, compat);
    }
  });

  it("a page-selective IOTLB invalidation of another page drops the domain's first-stage translations (spec and 10.0)", () => {
    for (const compat of ['', ',compat=qemu-10.0']) {
      const guest = firstStageUnit(compat, (g, top) => g.writer.mapFirst(top, 4, 0x1000n, 0x400000));
      assert.equal(guest.request(0x1000).ok, true);
      guest.writer.mapFirst(guest.top, 4, 0x1000n, 0x401000);
      guest.pageIotlbInvalidate(3, 0x200000);
      const again = guest.request(0x1000);
      assert.ok(again.ok && again.address === 0x401000, compat || 'spec');
    }
  });
});
