/** VtdUnit fault recording: FRCD contents (QEMU 7.2 values), the ring, PFO, W1C of F, PPF, FECTL IM/IP and the MSI. */
import { strict as assert } from 'node:assert';
import { FR } from '../../lib/vtd/legacy-walk';
import { OFFSET } from '../../lib/vtd/register-bits';
import { FRCD, SID, TestGuest } from './unit-guest';

/** A guest whose SIDs 0x20.. all map 0x202000 read-only, with TE on. */
function faultingGuest(config = '', sids = [SID]): TestGuest {
  const guest = new TestGuest(config);
  for (const sid of sids) {
    guest.setContext(sid);
    guest.map(sid, 0x202000, 0x202000, { write: false });
  }
  guest.enable();
  return guest;
}

describe('VtdUnit fault recording', () => {
  it('matches QEMU 7.2 for a write to a read-only page (compat=qemu-7.2: PV 0xffff)', () => {
    const guest = faultingGuest('compat=qemu-7.2');
    guest.translate(0x202000, true);
    assert.equal(guest.read32(OFFSET.FSTS), 0x2);
    assert.equal(guest.read32(OFFSET.FECTL), 0xc0000000);
    assert.equal(guest.read64(FRCD), 0x202000n);
    assert.equal(guest.read64(FRCD + 8), 0x80ffff0500000020n);
    assert.equal(guest.interrupts.callCount, 0, 'IM is set at reset');
  });

  it('the spec (default) and qemu-latest leave PV 0 for requests without PASID; PP/PV carry a PASID when given', () => {
    for (const config of ['', 'compat=qemu-latest,aw-bits=39']) {
      const guest = faultingGuest(config);
      guest.translate(0x202123, true);
      assert.equal(guest.read64(FRCD + 8), 0x8000000500000020n, config);
    }
    const guest = faultingGuest();
    guest.translate(0x202123, true);
    assert.equal(guest.read64(FRCD), 0x202000n, 'lo holds the page address');
    // Legacy tables have no PASIDs: a unit that offers scalable mode records 0x31 with PP/PV, one that does not cannot see a PASID.
    const other = faultingGuest('x-scalable-mode=on');
    const withPasid = other.unit.translate({ sid: SID, iova: 0x202000n, write: true, pasid: 5 });
    assert.ok(!withPasid.ok && withPasid.recording === 'recorded');
    assert.equal(other.read64(FRCD + 8), 0x8000053180000020n);
    const legacyOnly = faultingGuest();
    const unseen = legacyOnly.unit.translate({ sid: SID, iova: 0x202000n, write: true, pasid: 5 });
    assert.ok(!unseen.ok && unseen.recording === 'none');
    assert.equal(legacyOnly.read64(FRCD + 8), 0n);
  });

  it("checks an entry's access right before its reserved bits (QEMU's order; the spec gives none)", () => {
    const guest = new TestGuest();
    guest.setContext(SID);
    // A read-only leaf whose address has a bit above the host address width: a reserved bit.
    guest.map(SID, 0x202000, 0x202000, { write: false, extra: 1n << 51n });
    guest.enable();
    const write = guest.translate(0x202000, true);
    assert.ok(!write.ok && write.fault.reason === FR.WRITE, `write: ${write.ok ? 'ok' : write.fault.reason}`);
    const read = guest.translate(0x202000, false);
    assert.ok(!read.ok && read.fault.reason === FR.PAGING_ENTRY_RESERVED, `read: ${read.ok ? 'ok' : read.fault.reason}`);
  });

  it('T is 1 for reads: an unmapped read gives FR 6 with T = 1', () => {
    const guest = faultingGuest();
    guest.translate(0x900000, false);
    const hi = guest.read64(FRCD + 8);
    assert.equal((hi >> 32n) & 0xffn, 6n);
    assert.equal((hi >> 62n) & 1n, 1n);
  });

  it('writing 1 to F (bit 31 of the dword at +0xc) clears the record and PPF', () => {
    const guest = faultingGuest();
    guest.translate(0x202000, true);
    guest.unit.write(FRCD + 0xc, 4, 0x80000000);
    assert.equal(guest.read64(FRCD + 8) >> 63n, 0n);
    assert.equal(guest.read32(OFFSET.FSTS), 0);
    assert.equal(guest.read32(OFFSET.FECTL), 0x80000000, 'IP clears once nothing is pending');
  });

  it('sends the fault event MSI through onInterrupt when IM is clear', () => {
    const guest = faultingGuest();
    guest.unit.write(OFFSET.FEDATA, 4, 0x4041);
    guest.unit.write(OFFSET.FEADDR, 4, 0xfee01000);
    guest.unit.write(OFFSET.FECTL, 4, 0);
    guest.translate(0x202000, true);
    assert.ok(guest.interrupts.calledOnceWithExactly(0xfee01000, 0x4041));
    assert.equal(guest.read32(OFFSET.FECTL), 0, 'IP stays clear after delivery');
  });

  it('holds the event in IP while masked and delivers it when IM is cleared', () => {
    const guest = faultingGuest();
    guest.unit.write(OFFSET.FEADDR, 4, 0xfee00000);
    guest.unit.write(OFFSET.FEDATA, 4, 0x33);
    guest.translate(0x202000, true);
    assert.equal(guest.interrupts.callCount, 0);
    guest.unit.write(OFFSET.FECTL, 4, 0);
    assert.ok(guest.interrupts.calledOnceWithExactly(0xfee00000, 0x33));
    assert.equal(guest.read32(OFFSET.FECTL), 0);
  });

  it('raises no second event while PPF is pending', () => {
    const guest = faultingGuest('', [0x20, 0x28]);
    guest.unit.write(OFFSET.FECTL, 4, 0);
    guest.translate(0x202000, true, 0x20);
    guest.translate(0x202000, true, 0x28);
    assert.equal(guest.interrupts.callCount, 1);
  });

  it('sets PFO when the next record is still full and drops the fault; PFO is W1C', () => {
    const guest = faultingGuest('', [0x20, 0x28, 0x30]);
    assert.ok(!guest.translate(0x202000, true, 0x20).ok);
    const second = guest.translate(0x202000, true, 0x28);
    assert.ok(!second.ok && second.recording === 'overflow');
    assert.equal(guest.read32(OFFSET.FSTS), 0x3, 'PFO | PPF, FRI 0');
    assert.equal(guest.read64(FRCD + 8) & 0xffffn, 0x20n, 'the first record is kept');
    const third = guest.translate(0x202000, true, 0x30);
    assert.ok(!third.ok && third.recording === 'dropped-pfo');
    guest.unit.write(OFFSET.FSTS, 4, 0x1);
    assert.equal(guest.read32(OFFSET.FSTS), 0x2);
    guest.unit.write(FRCD + 0xc, 4, 0x80000000);
    assert.equal(guest.read32(OFFSET.FSTS), 0);
    const again = guest.translate(0x202000, true, 0x28);
    assert.ok(!again.ok && again.recording === 'recorded');
    assert.equal(guest.read64(FRCD + 8) & 0xffffn, 0x28n);
  });

  it('collapses a fault from a source whose earlier fault is still pending (no PFO)', () => {
    const guest = faultingGuest();
    guest.translate(0x202000, true);
    const second = guest.translate(0x900000, false);
    assert.ok(!second.ok && second.recording === 'collapsed');
    assert.equal(guest.read32(OFFSET.FSTS), 0x2);
    assert.equal((guest.read64(FRCD + 8) >> 32n) & 0xffn, BigInt(FR.WRITE));
  });

  it('does not record faults while TE is off', () => {
    const guest = new TestGuest();
    const result = guest.translate(2n ** 60n);
    assert.ok(!result.ok && result.recording === 'none');
    assert.equal(guest.read32(OFFSET.FSTS), 0);
  });

  it('reset() clears records, status and latched state', () => {
    const guest = faultingGuest();
    guest.translate(0x202000, true);
    guest.unit.reset();
    assert.equal(guest.read32(OFFSET.FSTS), 0);
    assert.equal(guest.read64(FRCD + 8), 0n);
    assert.equal(guest.read32(OFFSET.GSTS), 0);
    assert.equal(guest.read32(OFFSET.FECTL), 0x80000000);
    assert.ok(guest.translate(0x202000, true).ok, 'TE is off again');
  });
});
