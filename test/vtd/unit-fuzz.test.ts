/** Property test: random MMIO writes, random queue descriptors and random translations never break the unit's invariants. */
import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import { FSTS, GCMD, GSTS, OFFSET } from '../../lib/vtd/register-bits';
import { REGISTERS } from '../../lib/vtd/registers';
import { descriptor, FRCD, SID, TestGuest } from './unit-guest';

type Op =
  | { kind: 'mmio'; offset: number; size: 4 | 8; value: bigint }
  | { kind: 'gcmd'; value: number }
  | { kind: 'descriptor'; index: number; lo: bigint; hi: bigint }
  | { kind: 'tail'; index: number }
  | { kind: 'translate'; sid: number; iova: bigint; write: boolean }
  | { kind: 'read'; offset: number; size: 4 | 8 }
  | { kind: 'interrupt'; sid: number; address: number; data: number };

const offsets = REGISTERS.map((r) => r.offset);
const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
/** Mostly known types (bits 11:9 clear), random other bits. */
const descriptorLow = fc.tuple(fc.integer({ min: 0, max: 15 }), fc.bigInt({ min: 0n, max: (1n << 60n) - 1n }))
  .map(([type, rest]) => ((rest << 4n) & ~(7n << 9n)) | BigInt(type));

const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({
    kind: fc.constant('mmio' as const),
    offset: fc.oneof(fc.constantFrom(...offsets), fc.integer({ min: 0, max: 0xfff })),
    size: fc.constantFrom(4 as const, 8 as const),
    value: u64,
  }).map((o) => ({ ...o, offset: o.offset - (o.offset % o.size) })),
  fc.record({ kind: fc.constant('gcmd' as const), value: fc.integer({ min: 0, max: 0xffffffff }) }),
  fc.record({ kind: fc.constant('descriptor' as const), index: fc.nat(31), lo: descriptorLow, hi: u64 }),
  fc.record({ kind: fc.constant('tail' as const), index: fc.nat(40) }),
  fc.record({ kind: fc.constant('translate' as const), sid: fc.constantFrom(SID, 0x28, 0x100, 0xffff), iova: fc.bigInt({ min: 0n, max: (1n << 48n) - 1n }), write: fc.boolean() }),
  fc.record({ kind: fc.constant('read' as const), offset: fc.integer({ min: 0, max: 0xff8 }), size: fc.constantFrom(4 as const, 8 as const) })
    .map((o) => ({ ...o, offset: o.offset - (o.offset % o.size) })),
  fc.record({
    kind: fc.constant('interrupt' as const), sid: fc.integer({ min: 0, max: 0xffff }),
    address: fc.oneof(fc.integer({ min: 0xfee00000, max: 0xfeefffff }), fc.integer({ min: 0, max: 0xffffffff })),
    data: fc.integer({ min: 0, max: 0xffffffff }),
  }),
);

function gcmdValueOf(o: Op): number | undefined {
  if (o.kind === 'gcmd') return o.value;
  if (o.kind === 'mmio' && o.offset === OFFSET.GCMD) return Number(BigInt.asUintN(32, o.value));
  return undefined;
}

describe('VtdUnit fuzz', () => {
  it('keeps its invariants under random register writes, descriptors and translations', () => {
    fc.assert(fc.property(fc.array(op, { maxLength: 60 }), fc.constantFrom('', 'aw-bits=48', 'x-scalable-mode=on,compat=qemu-latest'), (ops, config) => {
      const guest = new TestGuest(config);
      guest.setContext(SID);
      guest.map(SID, 0x1000, 0x300000);
      guest.setupQueue(0);
      let srtpSeen = false;
      let sirtpSeen = false;
      let lastGcmd = GCMD.QIE;
      for (const o of ops) {
        switch (o.kind) {
          case 'mmio': guest.unit.write(o.offset, o.size, o.size === 4 ? Number(BigInt.asUintN(32, o.value)) : o.value); break;
          case 'gcmd': guest.unit.write(OFFSET.GCMD, 4, o.value); break;
          case 'descriptor': guest.write128(guest.queue + o.index * 16, (o.hi << 64n) | o.lo); break;
          case 'tail': guest.unit.write(OFFSET.IQT, 8, BigInt(o.index * 16)); break;
          case 'translate': {
            const result = guest.unit.translate({ sid: o.sid, iova: o.iova, write: o.write });
            if (result.ok) assert.ok(Number.isSafeInteger(result.address) && result.pageSize >= 4096);
            break;
          }
          case 'read': guest.unit.read(o.offset, o.size); break;
          case 'interrupt': {
            const result = guest.unit.remapInterrupt(o);
            if (!result.ok) assert.ok(result.reason >= 0x20 && result.reason <= 0x26);
            break;
          }
        }
        const command = gcmdValueOf(o);
        if (command !== undefined) {
          lastGcmd = command;
          srtpSeen ||= (command & GCMD.SRTP) !== 0;
          sirtpSeen ||= (command & GCMD.SIRTP) !== 0;
        }
        const gsts = guest.read32(OFFSET.GSTS);
        assert.equal((gsts & GSTS.TES) !== 0, (lastGcmd & GCMD.TE) !== 0, 'TES follows TE');
        assert.equal((gsts & GSTS.QIES) !== 0, (lastGcmd & GCMD.QIE) !== 0, 'QIES follows QIE');
        assert.equal((gsts & GSTS.IRES) !== 0, (lastGcmd & GCMD.IRE) !== 0, 'IRES follows IRE');
        assert.equal((gsts & GSTS.RTPS) !== 0, srtpSeen, 'RTPS after SRTP');
        assert.equal((gsts & GSTS.IRTPS) !== 0, sirtpSeen, 'IRTPS after SIRTP');
        assert.equal(gsts & GSTS.WBFS, 0);
        const iqh = Number(guest.read64(OFFSET.IQH));
        const queueBytes = 4096 * 2 ** Number(guest.read64(OFFSET.IQA) & 7n);
        assert.ok(iqh % 16 === 0, `IQH 0x${iqh.toString(16)} aligned`);
        assert.ok(iqh < queueBytes, `IQH 0x${iqh.toString(16)} within the ${queueBytes}-byte queue`);
        const fsts = guest.read32(OFFSET.FSTS);
        const anyF = guest.read64(FRCD + 8) >> 63n === 1n;
        assert.equal((fsts & FSTS.PPF) !== 0, anyF, 'PPF = any F');
        assert.equal(fsts & FSTS.ITE, 0);
        assert.equal(guest.read32(OFFSET.ICS) & ~1, 0);
      }
    }), { numRuns: 300 });
  });

  it('a full queue of valid descriptors is one bounded pass per IQT write', () => {
    const guest = new TestGuest();
    guest.setupQueue(7);
    const size = guest.unit.queueSize;
    assert.equal(size, 2 ** 15);
    for (let i = 0; i < size; i++) guest.write128(guest.queue + i * 16, descriptor.iotlbGlobal());
    const started = Date.now();
    guest.unit.write(OFFSET.IQT, 8, BigInt((size - 1) * 16));
    assert.equal(guest.read64(OFFSET.IQH), BigInt((size - 1) * 16));
    assert.equal(guest.read32(OFFSET.FSTS), 0);
    // Zeroed descriptors are invalid: the next pass stops at the first one.
    guest.write128(guest.queue + (size - 1) * 16, 0n);
    guest.unit.write(OFFSET.IQT, 8, 0x100n);
    assert.equal(guest.read32(OFFSET.FSTS), 0x10);
    assert.equal(guest.read64(OFFSET.IQH), BigInt((size - 1) * 16));
    assert.ok(Date.now() - started < 2000);
  });
});
