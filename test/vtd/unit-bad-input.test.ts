/**
 * A hostile guest: tables in loops, tables and queues outside RAM, tails past the end, absurd sizes. Each gets the
 * architectural answer with a bounded number of guest-memory reads (counted, not timed), and the unit keeps working.
 */
import { strict as assert } from 'node:assert';
import sinon from 'sinon';
import { encodeBig } from '../../lib/vtd/bitfield';
import { IR_FAULT, MSI_REMAPPABLE_ADDRESS } from '../../lib/vtd/interrupt-remap';
import { FR } from '../../lib/vtd/legacy-walk';
import { FSTS, GCMD, OFFSET } from '../../lib/vtd/register-bits';
import { IQA_FIELDS, IRTA_FIELDS } from '../../lib/vtd/registers';
import { LEGACY_CONTEXT_ENTRY, LEGACY_ROOT_ENTRY, SECOND_STAGE_TABLE_ENTRY } from '../../lib/vtd/structures';
import { FRCD, PAGE, RAM_SIZE, SID, TestGuest, descriptor } from './unit-guest';
import { ScalableGuest } from './scalable-guest';
import { VtdRequestError } from '../../lib/vtd/unit';

/** Guest-memory reads (8-byte entries and byte ranges) made while `action` runs. */
function readsDuring(guest: TestGuest, action: () => void): number {
  const entries = sinon.spy(guest.memory, 'readEntry');
  const ranges = sinon.spy(guest.memory, 'tryRead');
  try {
    action();
    return entries.callCount + ranges.callCount;
  } finally {
    entries.restore();
    ranges.restore();
  }
}

/** Root (2 qword reads) + context (2) + at most 5 levels. */
const WALK_READS = 2 + 2 + 5;

function clearFault(guest: TestGuest): void {
  guest.unit.write(FRCD + 0xc, 4, 0x80000000);
}

describe('VtdUnit against a hostile guest', () => {
  it('page tables that point at themselves: one bounded walk, and the answer the entries give', () => {
    const guest = new TestGuest('aw-bits=48');
    const top = guest.setContext(SID, { aw: 2 });
    // Every entry of the table points back at the table itself, with R and W.
    for (let i = 0; i < 512; i++) guest.memory.writeU64(top + i * 8, encodeBig(SECOND_STAGE_TABLE_ENTRY, { R: 1, W: 1, ADDR: top / PAGE }));
    guest.enable();
    let result: ReturnType<TestGuest['translate']> | undefined;
    const reads = readsDuring(guest, () => {
      result = guest.translate(0x123456789000n, true);
    });
    assert.ok(reads <= WALK_READS, `${reads} reads`);
    // Four levels down the loop, the leaf is the table page itself: a valid translation, as hardware would find.
    assert.ok(result!.ok && result!.address === top && result!.pageSize === PAGE);
  });

  it('a root entry that points back at the root table, and a context table that is the root table', () => {
    const guest = new TestGuest();
    guest.write128(guest.root, encodeBig(LEGACY_ROOT_ENTRY, { P: 1, CTP: guest.root / PAGE }));
    guest.enable();
    const reads = readsDuring(guest, () => {
      // devfn 0 of bus 0 reads the root entry as its context entry: present, but AW 0 is not a supported width.
      const result = guest.translate(0x1000, false, 0);
      assert.ok(!result.ok && result.fault.reason === FR.CONTEXT_ENTRY_INVALID);
    });
    assert.ok(reads <= WALK_READS);
  });

  it('root, context and page tables outside RAM or beyond any address: faults 8, 9, 7, never an exception', () => {
    const guest = new TestGuest('aw-bits=48');
    guest.setContext(SID, {}, true, encodeBig(LEGACY_CONTEXT_ENTRY, { P: 1, AW: 2, DID: 1, SLPTPTR: 0xffff_ffff_f000 / PAGE }));
    guest.enable();
    const top = guest.translate(0x1000, false);
    assert.ok(!top.ok && top.fault.reason === FR.PAGING_ENTRY_INVALID);
    clearFault(guest);
    guest.write128(guest.root, encodeBig(LEGACY_ROOT_ENTRY, { P: 1, CTP: RAM_SIZE / PAGE }));
    guest.globalContextInvalidate();
    const context = guest.translate(0x1000, false);
    assert.ok(!context.ok && context.fault.reason === FR.CONTEXT_TABLE_INVALID);
    clearFault(guest);
    guest.unit.write(OFFSET.RTADDR, 8, 0xffff_ffff_ffff_f000n);
    guest.command(GCMD.SRTP);
    const root = guest.translate(0x1000, false);
    assert.ok(!root.ok && root.fault.reason === FR.ROOT_TABLE_INVALID);
  });

  it('a queue outside RAM: IQE with IQH on the first descriptor; the unit recovers once IQA is fixed', () => {
    const guest = new TestGuest();
    guest.unit.write(OFFSET.IQA, 8, encodeBig(IQA_FIELDS, { IQA: 0xfffff_fff_f000 / PAGE, QS: 7 }));
    guest.command(GCMD.QIE);
    const reads = readsDuring(guest, () => guest.unit.write(OFFSET.IQT, 8, 0x7fff0n));
    assert.ok(reads <= 4, `${reads} reads`);
    assert.equal(guest.read32(OFFSET.FSTS), FSTS.IQE);
    assert.equal(guest.read64(OFFSET.IQH), 0n);
    // Disable, point the queue at RAM, enable: processing resumes.
    guest.unit.write(OFFSET.FSTS, 4, FSTS.IQE);
    guest.command(0, GCMD.QIE);
    guest.unit.write(OFFSET.IQT, 8, 0n);
    guest.setupQueue(0);
    guest.submit([descriptor.iotlbGlobal(), descriptor.wait({})], 0);
    assert.equal(guest.read64(OFFSET.IQH), 0x20n);
    assert.equal(guest.read32(OFFSET.FSTS), 0);
  });

  it('the largest queue full of valid descriptors is one pass per IQT write; a tail past the end is an IQE', () => {
    const guest = new TestGuest();
    guest.setupQueue(7);
    const size = guest.unit.queueSize;
    assert.equal(size, 2 ** 15);
    for (let i = 0; i < size; i++) guest.write128(guest.queue + i * 16, descriptor.iotlbGlobal());
    const reads = readsDuring(guest, () => guest.unit.write(OFFSET.IQT, 8, BigInt((size - 1) * 16)));
    assert.ok(reads <= 2 * size, `${reads} reads for ${size} descriptors`);
    assert.equal(guest.read64(OFFSET.IQH), BigInt((size - 1) * 16));
    assert.equal(guest.read32(OFFSET.FSTS), 0);
    // Wrap around: the zeroed descriptor at the end is invalid, and processing stops there.
    guest.write128(guest.queue + (size - 1) * 16, 0n);
    guest.unit.write(OFFSET.IQT, 8, 0x100n);
    assert.equal(guest.read32(OFFSET.FSTS), FSTS.IQE);
    assert.equal(guest.read64(OFFSET.IQH), BigInt((size - 1) * 16));
    // IQT can only name offsets inside the 32768-entry queue (bits 18:4), so a smaller queue shows a tail past its end.
    const small = new TestGuest();
    small.setupQueue(0);
    small.unit.write(OFFSET.IQT, 8, 0x1000n);
    assert.equal(small.read32(OFFSET.FSTS), FSTS.IQE);
    assert.equal(small.read64(OFFSET.IQH), 0n);
  });

  it('a wait descriptor whose status write lands on the next descriptor: that descriptor is then processed as written', () => {
    const guest = new TestGuest();
    guest.setupQueue(0);
    // The status (0) overwrites the low dword of descriptor 1, which becomes type 0: IQE on it.
    guest.submit([descriptor.wait({ sw: true, data: 0, address: guest.queue + 16 }), descriptor.iotlbGlobal()], 0);
    assert.equal(guest.read32(OFFSET.FSTS), FSTS.IQE);
    assert.equal(guest.read64(OFFSET.IQH), 0x10n);
  });

  it('an interrupt table outside RAM, or 2^16 entries of which the end is outside RAM: fault 0x23', () => {
    const guest = new TestGuest();
    const address = (handle: number) =>
      Number(encodeBig(MSI_REMAPPABLE_ADDRESS, { BASE: 0xfee, IF: 1, HANDLE_LO: handle & 0x7fff, HANDLE_HI: handle >> 15 }));
    guest.unit.write(OFFSET.IRTA, 8, encodeBig(IRTA_FIELDS, { IRTA: (RAM_SIZE - PAGE) / PAGE, S: 15 }));
    guest.command(GCMD.SIRTP);
    guest.command(GCMD.IRE);
    const inside = guest.unit.remapInterrupt({ sid: SID, address: address(3), data: 0 });
    assert.ok(!inside.ok && inside.reason === IR_FAULT.ENTRY_NOT_PRESENT);
    const outside = guest.unit.remapInterrupt({ sid: SID, address: address(0xffff), data: 0 });
    assert.ok(!outside.ok && outside.reason === IR_FAULT.TABLE_INVALID && outside.index === 0xffff);
  });

  it('keeps translating correctly after all of the above', () => {
    const guest = new TestGuest();
    guest.setContext(SID);
    guest.map(SID, 0x4000, 0x500000);
    guest.unit.write(OFFSET.IQA, 8, 0xffff_ffff_f000n);
    guest.command(GCMD.QIE);
    guest.unit.write(OFFSET.IQT, 8, 0x10n);
    guest.enable();
    const result = guest.translate(0x4123, true);
    assert.ok(result.ok && result.address === 0x500123);
  });

  it("a source id outside 16 bits or a PASID outside 20 bits is the caller's mistake: VtdRequestError, before any cache is consulted", () => {
    const guest = new ScalableGuest('x-scalable-mode=on,x-flts=on,aw-bits=48,x-pasid-mode=on');
    // Device SID + 1 has PASID 0 cached; (SID, 2^20) would share its PASID-cache key SID * 2^20 + 2^20.
    for (const sid of [SID, SID + 1]) guest.scalableContext(sid);
    guest.writer.mapFirst(guest.firstStage(SID + 1, 0, 4), 4, 0x1000n, 0x400000);
    guest.enableScalable();
    assert.equal(guest.reach(0x1000, { sid: SID + 1, pasid: 0 }), '0x400000');
    const refused = (error: unknown) => error instanceof VtdRequestError && error.code === 'ERR_VTD_REQUEST';
    for (const pasid of [2 ** 20, -1, 1.5, Number.NaN]) assert.throws(() => guest.request(0x1000, { pasid }), refused, `PASID ${pasid}`);
    for (const sid of [0x10000, -1, 0.5]) assert.throws(() => guest.request(0x1000, { sid }), refused, `SID ${sid}`);
    assert.throws(() => guest.unit.dmaSpace(0x10000), refused);
    assert.throws(() => guest.unit.watchDevice(SID, { domainChanged: () => undefined }, 2 ** 20), refused);
    assert.equal(guest.read32(OFFSET.FSTS), 0, 'nothing recorded');
    assert.equal(guest.reach(0x1000, { pasid: 2 ** 20 - 1 }).startsWith('fault'), true, 'the largest PASID is a request like any other');
  });
});
