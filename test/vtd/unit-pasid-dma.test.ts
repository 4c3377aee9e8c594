/**
 * DMA with PASID through VtdUnit.dmaSpace(sid, tag): requests carrying a PASID other than RID_PASID reach
 * first-stage, second-stage and nested walks, their faults are recorded with PP/PV, the interrupt range is ordinary
 * input for them, and units that cannot resolve a PASID (translation off, legacy tables) answer as the spec says.
 */
import { strict as assert } from 'node:assert';
import { DmaFault, EFAULT, EPERM } from '../../lib/memory/dma-space';
import { faultCode } from '../../lib/vtd/fault-reasons';
import { PASID_PGTT } from '../../lib/vtd/structures';
import { ScalableGuest, frcdHi } from './scalable-guest';
import { RAM_SIZE, SID } from './unit-guest';

const FIRST = 'x-scalable-mode=on,x-pasid-mode=on,x-flts=on,aw-bits=48';
const NESTED = `${FIRST},x-nested=on`;

function bytes(count: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: count }, (_, i) => (seed + i * 7) & 0xff);
}

function ramBytes(guest: ScalableGuest, address: number, count: number): Uint8Array {
  const into = new Uint8Array(count);
  guest.memory.read(address, into);
  return into;
}

function faultOf(action: () => void): DmaFault {
  try {
    action();
  } catch (error) {
    if (error instanceof DmaFault) return error;
    throw error;
  }
  assert.fail('the DMA went through');
}

describe('vtd unit: DMA with PASID (dmaSpace(sid, tag))', () => {
  it('reads and writes through the first-stage tables of PASID 7, not those of RID_PASID', () => {
    const guest = new ScalableGuest(FIRST);
    guest.scalableContext(SID);
    const ridTop = guest.firstStage(SID, 0, 1);
    guest.writer.mapFirst(ridTop, 4, 0x10000n, 0x300000);
    const top = guest.firstStage(SID, 7, 2);
    guest.writer.mapFirst(top, 4, 0x10000n, 0x400000);
    guest.enableScalable();
    const data = bytes(64, 3);
    guest.unit.dmaSpace(SID, { pasid: 7 }).write(0x10010n, data);
    assert.deepEqual(ramBytes(guest, 0x400010, 64), data);
    assert.notDeepEqual(ramBytes(guest, 0x300010, 64), data, 'RID_PASID maps the same address elsewhere');
    const back = new Uint8Array(64);
    guest.unit.dmaSpace(SID, { pasid: 7 }).read(0x10010n, back);
    assert.deepEqual(back, data);
  });

  it('records a fault of a request with PASID with PP = 1 and PV = the PASID', () => {
    const guest = new ScalableGuest(FIRST);
    guest.scalableContext(SID);
    guest.firstStage(SID, 9, 2);
    guest.enableScalable();
    const fault = faultOf(() => guest.unit.dmaSpace(SID, { pasid: 9 }).read(0x5000n, new Uint8Array(8)));
    assert.equal(fault.errno, EFAULT);
    assert.equal(guest.frcdHi(), frcdHi(faultCode('SM_FIRST_STAGE_NOT_PRESENT'), { read: true, pasid: 9 }));
  });

  it('checks privilege and execute requests against the PASID entry (SRE, ERE) and the leaf (U/S)', () => {
    const guest = new ScalableGuest(NESTED);
    guest.scalableContext(SID);
    const top = guest.firstStage(SID, 3, 2);
    guest.writer.mapFirst(top, 4, 0x20000n, 0x500000, { us: false });
    guest.enableScalable();
    const user = faultOf(() => guest.unit.dmaSpace(SID, { pasid: 3 }).read(0x20000n, new Uint8Array(4)));
    assert.equal(user.errno, EPERM, 'a user request to a supervisor page');
    guest.clearFault();
    const supervisor = faultOf(() => guest.unit.dmaSpace(SID, { pasid: 3, supervisor: true }).read(0x20000n, new Uint8Array(4)));
    assert.match(supervisor.message, /SRE/, 'SRE is clear in the PASID entry');
  });

  it('reaches second-stage and nested PASID entries', () => {
    const guest = new ScalableGuest(NESTED);
    guest.scalableContext(SID);
    const second = guest.secondStage(SID, 4, 5);
    guest.writer.mapSecond(second, 4, 0x30000, 0x600000);
    // Nested PASID 6: first-stage tables live in guest-physical space that the second stage maps one to one.
    const parent = guest.writer.page();
    const firstTop = guest.writer.page();
    guest.pasidEntry(SID, 6, { PGTT: PASID_PGTT.NESTED, AW: 2, FSPTPTR: firstTop / 4096, SSPTPTR: parent / 4096, DID: 6 });
    guest.writer.mapFirst(firstTop, 4, 0x40000n, 0x700000);
    for (let at = 0; at < RAM_SIZE; at += 2 << 20) guest.writer.mapSecond(parent, 4, at, at, { size: '2m' });
    guest.enableScalable();
    const data = bytes(16, 9);
    guest.unit.dmaSpace(SID, { pasid: 4 }).write(0x30000n, data);
    assert.deepEqual(ramBytes(guest, 0x600000, 16), data);
    guest.unit.dmaSpace(SID, { pasid: 6 }).write(0x40000n, data);
    assert.deepEqual(ramBytes(guest, 0x700000, 16), data);
  });

  it('translates the interrupt range as ordinary input for requests with PASID', () => {
    const guest = new ScalableGuest(FIRST);
    guest.scalableContext(SID);
    const top = guest.firstStage(SID, 2, 2);
    guest.writer.mapFirst(top, 4, 0xfee00000n, 0x480000);
    guest.enableScalable();
    const data = bytes(8, 1);
    guest.unit.dmaSpace(SID, { pasid: 2 }).write(0xfee00000n, data);
    assert.deepEqual(ramBytes(guest, 0x480000, 8), data, 'memory, not an interrupt message');
  });

  it('refuses a request with PASID while translation is off, and records 0x31 under legacy tables', () => {
    const off = new ScalableGuest(FIRST);
    const unrecorded = faultOf(() => off.unit.dmaSpace(SID, { pasid: 1 }).read(0x1000n, new Uint8Array(4)));
    assert.equal(unrecorded.errno, EFAULT);
    assert.equal(off.frcdHi(), 0n, 'nothing recorded');
    off.unit.dmaSpace(SID).read(0x1000n, new Uint8Array(4));

    const legacy = new ScalableGuest(FIRST);
    legacy.enableScalable(0n);
    faultOf(() => legacy.unit.dmaSpace(SID, { pasid: 1 }).write(0x1000n, new Uint8Array(4)));
    assert.equal(legacy.frcdHi(), frcdHi(faultCode('SM_TTM0_PASID_REQUEST'), { pasid: 1 }));
  });

  it("refuses a PASID outside 20 bits as the caller's mistake", () => {
    const guest = new ScalableGuest(FIRST);
    assert.throws(() => guest.unit.dmaSpace(SID, { pasid: 1 << 20 }), /pasid/);
  });
});
