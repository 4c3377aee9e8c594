/**
 * A DMA the unit refuses carries the fault record of the page that did not translate (TranslationDmaFault): still
 * a DmaFault with the errno a vfio-user peer is told, now with the stage, level and entry that decided.
 */
import { strict as assert } from 'node:assert';
import { DmaFault, EFAULT, EPERM } from '../../lib/memory/dma-space';
import { describeFaultReason, faultCode } from '../../lib/vtd/fault-reasons';
import { PASID_PGTT } from '../../lib/vtd/structures';
import { TranslationDmaFault } from '../../lib/vtd/unit-dma';
import { ScalableGuest } from './scalable-guest';
import { PAGE, SID, TestGuest } from './unit-guest';

function translationFaultOf(action: () => void): TranslationDmaFault {
  try {
    action();
  } catch (error) {
    assert.ok(error instanceof DmaFault, `expected a DmaFault, got ${String(error)}`);
    assert.ok(error instanceof TranslationDmaFault, `expected the translation's fault, got ${String(error)}`);
    return error;
  }
  return assert.fail('the DMA went through');
}

/** SID's legacy domain: 0x40_0000 read-write, 0x40_1000 read-only, 0x40_2000 not mapped (same leaf table). */
function legacyGuest(): TestGuest {
  const guest = new TestGuest('aw-bits=48');
  guest.setContext(SID, { aw: 2 });
  guest.map(SID, 0x40_0000, 0x80_0000);
  guest.map(SID, 0x40_1000, 0x80_1000, { write: false });
  guest.enable();
  return guest;
}

const NESTED = 'x-scalable-mode=on,x-flts=on,aw-bits=48,x-pasid-mode=on,x-nested=on';
/** Guest-physical base of the nested guest's four first-stage tables (levels 4..1, one page each). */
const TABLES_GPA = 0x1_0000_0000;

/** PASID 7 nested: the first stage maps IOVA 0x3000 to GPA 0x2_0000_0000, but the second stage leaves out its level-3 table. */
function nestedGuestWithoutLevel3Table(): ScalableGuest {
  const guest = new ScalableGuest(NESTED);
  guest.scalableContext();
  const ssTop = guest.writer.page();
  const hostPages: number[] = [];
  for (let i = 0; i < 4; i++) {
    hostPages.push(guest.writer.page());
    if (i !== 1) guest.writer.mapSecond(ssTop, 4, TABLES_GPA + i * PAGE, hostPages[i]!);
  }
  for (let i = 0; i < 3; i++) guest.memory.writeU64(hostPages[i]!, BigInt(TABLES_GPA + (i + 1) * PAGE) | 0x7n);
  guest.memory.writeU64(hostPages[3]! + 3 * 8, 0x2_0000_0000n | 0x7n);
  guest.pasidEntry(SID, 7, { PGTT: PASID_PGTT.NESTED, AW: 2, SSPTPTR: ssTop / PAGE, FSPTPTR: TABLES_GPA / PAGE, DID: 4 });
  guest.enableScalable();
  return guest;
}

describe('vtd unit: a refused DMA carries the fault record', () => {
  it('legacy, a write running into a read-only page: EPERM as before, the leaf that refused, nothing written', () => {
    const guest = legacyGuest();
    const before = new Uint8Array(16);
    guest.memory.read(0x80_0ff8, before);
    const error = translationFaultOf(() => guest.unit.dmaSpace(SID).write(0x40_0ff8n, new Uint8Array(16).fill(0xa5)));
    assert.equal(error.errno, EPERM);
    assert.equal(error.code, 'ERR_DMA_FAULT');
    assert.equal(error.reason, describeFaultReason(faultCode('WRITE')));
    const leaf = guest.leafAddress(SID, 0x40_1000);
    assert.deepEqual(error.fault, {
      ok: false,
      reason: faultCode('WRITE'),
      stage: 'second-stage',
      level: 1,
      entryAddress: leaf,
      entryValue: guest.memory.readU64(leaf),
      fpd: false,
      notPresent: false,
      pastContext: true,
    });
    const after = new Uint8Array(16);
    guest.memory.read(0x80_0ff8, after);
    assert.deepEqual(after, before, 'all or nothing');
  });

  it('legacy, a read of a page that is not mapped: EFAULT as before, the empty leaf slot named', () => {
    const guest = legacyGuest();
    const error = translationFaultOf(() => guest.unit.dmaSpace(SID).read(0x40_2010n, new Uint8Array(8)));
    assert.equal(error.errno, EFAULT);
    assert.equal(error.fault.reason, faultCode('READ'));
    assert.equal(error.fault.stage, 'second-stage');
    assert.equal(error.fault.level, 1);
    assert.equal(error.fault.entryAddress, guest.leafAddress(SID, 0x40_2000));
    assert.equal(error.fault.notPresent, true);
  });

  it('nested, a first-stage table the second stage does not map: the first-stage level and the entry whose GPA failed', () => {
    const guest = nestedGuestWithoutLevel3Table();
    const error = translationFaultOf(() => guest.unit.dmaSpace(SID, { pasid: 7 }).read(0x3abcn, new Uint8Array(4)));
    assert.equal(error.errno, EFAULT);
    const { fault } = error;
    assert.equal(fault.stage, 'second-stage');
    assert.equal(fault.level, 3, 'translating the level-3 table of the first stage');
    // IOVA 0x3abc indexes entry 0 of the level-3 table, at its guest-physical address.
    assert.equal(fault.entryAddress, TABLES_GPA + PAGE);
    assert.ok(fault.secondStageLevel !== undefined && fault.secondStageLevel >= 1 && fault.secondStageLevel <= 4, `${fault.secondStageLevel}`);
    assert.equal(fault.pasid, 7);
    assert.equal(error.reason, describeFaultReason(fault.reason));
  });

  it('a refusal that is not a translation fault stays a plain DmaFault', () => {
    const guest = legacyGuest();
    assert.throws(
      () => guest.unit.dmaSpace(SID).read(0xfee0_0000n, new Uint8Array(4)),
      (error: unknown) => error instanceof DmaFault && !(error instanceof TranslationDmaFault) && error.errno === EFAULT,
    );
  });
});
