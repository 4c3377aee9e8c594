/** Property test: random MMIO writes, random queue descriptors, translations, DMA and interrupts never break the unit's invariants. */
import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import { DmaFault } from '../../lib/memory/dma-space';
import { EVENT_CONTROL, FSTS, GCMD, GSTS, OFFSET } from '../../lib/vtd/register-bits';
import { REGISTERS } from '../../lib/vtd/registers';
import { FRCD, SID, TestGuest } from './unit-guest';

type Op =
  | { kind: 'mmio'; offset: number; size: 4 | 8; value: bigint }
  | { kind: 'gcmd'; value: number }
  | { kind: 'descriptor'; index: number; lo: bigint; hi: bigint }
  | { kind: 'tail'; index: number }
  | { kind: 'translate'; sid: number; iova: bigint; write: boolean }
  | { kind: 'dma'; sid: number; address: bigint; length: number; write: boolean }
  | { kind: 'read'; offset: number; size: 4 | 8 }
  | { kind: 'interrupt'; sid: number; address: number; data: number }
  | { kind: 'memory'; address: number; value: bigint };

const offsets = REGISTERS.map((r) => r.offset);
const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
/** Mostly known types (bits 11:9 clear), random other bits. */
const descriptorLow = fc
  .tuple(fc.integer({ min: 0, max: 15 }), fc.bigInt({ min: 0n, max: (1n << 60n) - 1n }))
  .map(([type, rest]) => ((rest << 4n) & ~(7n << 9n)) | BigInt(type));
/** Guest-physical addresses the tables, the queue and the IRT of the test guest live at (and their neighbours). */
const structureAddress = fc.integer({ min: 0x100000 / 8, max: 0x110000 / 8 }).map((qword) => qword * 8);

const op: fc.Arbitrary<Op> = fc.oneof(
  fc
    .record({
      kind: fc.constant('mmio' as const),
      offset: fc.oneof(fc.constantFrom(...offsets), fc.integer({ min: 0, max: 0xfff })),
      size: fc.constantFrom(4 as const, 8 as const),
      value: u64,
    })
    .map((o) => ({ ...o, offset: o.offset - (o.offset % o.size) })),
  fc.record({ kind: fc.constant('gcmd' as const), value: fc.integer({ min: 0, max: 0xffffffff }) }),
  fc.record({ kind: fc.constant('descriptor' as const), index: fc.nat(31), lo: descriptorLow, hi: u64 }),
  fc.record({ kind: fc.constant('tail' as const), index: fc.nat(300) }),
  fc.record({
    kind: fc.constant('translate' as const),
    sid: fc.constantFrom(SID, 0x28, 0x100, 0xffff),
    iova: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
    write: fc.boolean(),
  }),
  fc.record({
    kind: fc.constant('dma' as const),
    sid: fc.constantFrom(SID, 0x28),
    write: fc.boolean(),
    length: fc.integer({ min: 0, max: 9000 }),
    address: fc.oneof(
      fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
      fc.bigInt({ min: 0xfedff000n, max: 0xfef00fffn }),
      fc.bigInt({ min: 0n, max: 0x400000n }),
    ),
  }),
  fc
    .record({ kind: fc.constant('read' as const), offset: fc.integer({ min: 0, max: 0xff8 }), size: fc.constantFrom(4 as const, 8 as const) })
    .map((o) => ({ ...o, offset: o.offset - (o.offset % o.size) })),
  fc.record({
    kind: fc.constant('interrupt' as const),
    sid: fc.integer({ min: 0, max: 0xffff }),
    address: fc.oneof(fc.integer({ min: 0xfee00000, max: 0xfeefffff }), fc.integer({ min: 0, max: 0xffffffff })),
    data: fc.integer({ min: 0, max: 0xffffffff }),
  }),
  // The guest rewrites its own structures under the unit: loops, reserved bits, pointers anywhere.
  fc.record({ kind: fc.constant('memory' as const), address: structureAddress, value: u64 }),
);

function gcmdValueOf(o: Op): number | undefined {
  if (o.kind === 'gcmd') return o.value;
  if (o.kind === 'mmio' && o.offset === OFFSET.GCMD) return Number(BigInt.asUintN(32, o.value));
  return undefined;
}

function apply(guest: TestGuest, o: Op): void {
  switch (o.kind) {
    case 'mmio':
      guest.unit.write(o.offset, o.size, o.size === 4 ? Number(BigInt.asUintN(32, o.value)) : o.value);
      break;
    case 'gcmd':
      guest.unit.write(OFFSET.GCMD, 4, o.value);
      break;
    case 'descriptor':
      guest.write128(guest.queue + o.index * 16, (o.hi << 64n) | o.lo);
      break;
    case 'tail':
      guest.unit.write(OFFSET.IQT, 8, BigInt(o.index * 16));
      break;
    case 'translate': {
      const result = guest.unit.translate({ sid: o.sid, iova: o.iova, write: o.write });
      if (result.ok) assert.ok(Number.isSafeInteger(result.address) && result.pageSize >= 4096);
      else assert.ok(result.fault.reason >= 1 && result.fault.reason <= 0xe, `legacy fault reason 0x${result.fault.reason.toString(16)}`);
      break;
    }
    case 'dma': {
      const dma = guest.unit.dmaSpace(o.sid);
      const end = o.address + BigInt(o.length);
      try {
        if (o.write) dma.write(o.address, new Uint8Array(o.length).fill(0x5a));
        else dma.read(o.address, new Uint8Array(o.length));
      } catch (error) {
        // The one answer a device may get besides success; anything else escaping is a bug.
        assert.ok(error instanceof DmaFault, `DMA of ${o.length} at 0x${o.address.toString(16)} (..0x${end.toString(16)}) threw ${String(error)}`);
      }
      break;
    }
    case 'read':
      guest.unit.read(o.offset, o.size);
      break;
    case 'interrupt': {
      const result = guest.unit.remapInterrupt(o);
      if (!result.ok) assert.ok(result.reason >= 0x20 && result.reason <= 0x26);
      break;
    }
    case 'memory':
      guest.memory.writeU64(o.address, o.value);
      break;
  }
}

describe('VtdUnit fuzz', () => {
  for (const config of ['', 'aw-bits=48', 'compat=qemu-7.2', 'x-scalable-mode=on,compat=qemu-latest']) {
    it(`keeps its invariants under random register writes, descriptors, DMA and interrupts (${config || 'default'})`, () => {
      const qemu = config.includes('qemu-7.2');
      fc.assert(
        fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
          const guest = new TestGuest(config);
          guest.setContext(SID);
          guest.map(SID, 0x1000, 0x300000);
          guest.setupQueue(0);
          let srtpSeen = false;
          let sirtpSeen = false;
          let lastGcmd = GCMD.QIE;
          for (const o of ops) {
            apply(guest, o);
            const command = gcmdValueOf(o);
            if (command !== undefined) {
              lastGcmd = command;
              srtpSeen ||= (command & GCMD.SRTP) !== 0;
              sirtpSeen ||= (command & GCMD.SIRTP) !== 0;
            }
            const gsts = guest.read32(OFFSET.GSTS);
            assert.equal((gsts & GSTS.TES) !== 0, (lastGcmd & GCMD.TE) !== 0, 'TES follows TE');
            if (qemu) assert.ok((gsts & GSTS.QIES) !== 0 || (lastGcmd & GCMD.QIE) === 0, 'QIES set while QIE is (QEMU may refuse to clear it)');
            else assert.equal((gsts & GSTS.QIES) !== 0, (lastGcmd & GCMD.QIE) !== 0, 'QIES follows QIE');
            assert.equal((gsts & GSTS.IRES) !== 0, (lastGcmd & GCMD.IRE) !== 0, 'IRES follows IRE');
            assert.equal((gsts & GSTS.CFIS) !== 0, !qemu && (lastGcmd & GCMD.CFI) !== 0, 'CFIS follows CFI (never in QEMU 7.2)');
            assert.equal((gsts & GSTS.RTPS) !== 0, srtpSeen, 'RTPS after SRTP');
            assert.equal((gsts & GSTS.IRTPS) !== 0, sirtpSeen, 'IRTPS after SIRTP');
            assert.equal(gsts & GSTS.WBFS, 0);
            const iqh = Number(guest.read64(OFFSET.IQH));
            const width = guest.unit.queueDescriptorBytes;
            assert.ok(iqh % width === 0, `IQH 0x${iqh.toString(16)} aligned to ${width}`);
            assert.ok(iqh < guest.unit.queueSize * width, `IQH 0x${iqh.toString(16)} within the ${guest.unit.queueSize}-entry queue`);
            const fsts = guest.read32(OFFSET.FSTS);
            const anyF = guest.read64(FRCD + 8) >> 63n === 1n;
            assert.equal((fsts & FSTS.PPF) !== 0, anyF, 'PPF = any F');
            assert.equal((fsts & FSTS.FRI) >> FSTS.FRI_SHIFT, 0, 'FRI names the only record');
            assert.equal(fsts & (FSTS.ITE | FSTS.ICE), 0, 'no device-TLB errors without device TLBs');
            assert.equal(guest.read32(OFFSET.ICS) & ~1, 0);
            for (const control of [OFFSET.FECTL, OFFSET.IECTL]) {
              const value = guest.read32(control);
              assert.ok(!(value & EVENT_CONTROL.IP) || value & EVENT_CONTROL.IM, 'an event is held (IP) only while masked');
            }
          }
        }),
        { numRuns: 200 },
      );
    });
  }
});
