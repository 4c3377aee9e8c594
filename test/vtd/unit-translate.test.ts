/** VtdUnit translation in legacy mode: walks, large pages, permissions, pass-through, every legacy fault reason, FPD, DMA. */
import { strict as assert } from 'node:assert';
import { DmaFault, EFAULT, EPERM } from '../../lib/memory/dma-space';
import { encodeBig } from '../../lib/vtd/bitfield';
import { FR } from '../../lib/vtd/legacy-walk';
import { GCMD, OFFSET } from '../../lib/vtd/register-bits';
import { LEGACY_CONTEXT_ENTRY, LEGACY_ROOT_ENTRY, SECOND_STAGE_TABLE_ENTRY } from '../../lib/vtd/structures';
import { FRCD, PAGE, SID, TestGuest } from './unit-guest';

function frcdReason(guest: TestGuest, index = 0): number {
  return Number((guest.read64(FRCD + 16 * index + 8) >> 32n) & 0xffn);
}

function expectFault(guest: TestGuest, iova: number | bigint, write: boolean, reason: number, sid = SID): void {
  const result = guest.translate(iova, write, sid);
  assert.equal(result.ok, false, `expected fault 0x${reason.toString(16)}`);
  if (!result.ok) assert.equal(result.fault.reason, reason, `fault reason 0x${result.fault.reason.toString(16)}`);
}

describe('VtdUnit translation (legacy)', () => {
  it('passes DMA through untranslated while TE is off', () => {
    const guest = new TestGuest();
    const result = guest.translate(0x123456, true);
    assert.deepEqual(result, { ok: true, address: 0x123456, pageSize: PAGE, readable: true, writable: true });
    assert.equal(guest.read32(OFFSET.GSTS), 0);
  });

  it('GSTS shows RTPS and TES after SRTP then TE (QEMU 0xc0000000)', () => {
    const guest = new TestGuest();
    guest.enable();
    assert.equal(guest.read32(OFFSET.GSTS), 0xc0000000);
    assert.equal(guest.read32(OFFSET.GCMD), 0, 'GCMD reads 0');
  });

  it('walks a 3-level table', () => {
    const guest = new TestGuest();
    guest.setContext(SID, { aw: 1 });
    guest.map(SID, 0x7f_4020_1000, 0x300000);
    guest.enable();
    assert.deepEqual(guest.translate(0x7f_4020_1abc), { ok: true, address: 0x300abc, pageSize: PAGE, readable: true, writable: true });
  });

  it('walks a 4-level table with aw-bits=48', () => {
    const guest = new TestGuest('aw-bits=48');
    guest.setContext(SID, { aw: 2 });
    guest.map(SID, 0xabcd_1234_5000, 0x400000);
    guest.enable();
    const result = guest.translate(0xabcd_1234_5008n, true);
    assert.deepEqual(result, { ok: true, address: 0x400008, pageSize: PAGE, readable: true, writable: true });
  });

  it('refuses a 4-level context when SAGAW offers only 39 bits (fault 3)', () => {
    const guest = new TestGuest();
    guest.setContext(SID, { aw: 2 });
    guest.enable();
    expectFault(guest, 0x1000, false, FR.CONTEXT_ENTRY_INVALID);
  });

  it('maps 2 MiB and 1 GiB pages', () => {
    const guest = new TestGuest();
    guest.setContext(SID);
    guest.map(SID, 0x4000_0000, 0x600000, { size: '2m' });
    guest.map(SID, 0x80_0000_0000 - 0x4000_0000, 0x4000_0000, { size: '1g' });
    guest.enable();
    assert.deepEqual(guest.translate(0x4001_2345), { ok: true, address: 0x612345, pageSize: 2 ** 21, readable: true, writable: true });
    assert.deepEqual(guest.translate(0x7f_c123_4567), { ok: true, address: 0x4123_4567, pageSize: 2 ** 30, readable: true, writable: true });
  });

  it('applies R/W permissions: fault 5 for a write to a read-only page, fault 6 for a read of a write-only page', () => {
    const guest = new TestGuest();
    guest.setContext(SID);
    guest.map(SID, 0x1000, 0x200000, { write: false });
    guest.map(SID, 0x2000, 0x201000, { read: false });
    guest.enable();
    const ro = guest.translate(0x1000);
    assert.ok(ro.ok && !ro.writable && ro.readable);
    expectFault(guest, 0x1000, true, FR.WRITE);
    expectFault(guest, 0x2000, false, FR.READ);
  });

  it('treats R = W = 0 as not present: fault 6 or 5 (QEMU; listed quirk)', () => {
    const guest = new TestGuest();
    guest.setContext(SID);
    guest.enable();
    const result = guest.translate(0x5000);
    assert.ok(!result.ok && result.fault.reason === FR.READ && result.fault.notPresent && result.fault.level === 3);
  });

  it('pass-through context (TT 2) maps IOVA to the same address', () => {
    const guest = new TestGuest();
    guest.setContext(SID, { tt: 2 });
    guest.enable();
    assert.deepEqual(guest.translate(0x345678, true), { ok: true, address: 0x345678, pageSize: PAGE, readable: true, writable: true });
  });

  it('TT 2 without ECAP.PT and TT 1 without ECAP.DT are invalid contexts (fault 3)', () => {
    const guest = new TestGuest('pt=off');
    guest.setContext(SID, { tt: 2 });
    guest.setContext(SID + 1, { tt: 1 });
    guest.enable();
    expectFault(guest, 0x1000, false, FR.CONTEXT_ENTRY_INVALID);
    expectFault(guest, 0x1000, false, FR.CONTEXT_ENTRY_INVALID, SID + 1);
    const withDt = new TestGuest('device-iotlb=on');
    withDt.setContext(SID, { tt: 1 });
    withDt.map(SID, 0x1000, 0x9000);
    withDt.enable();
    assert.ok(withDt.translate(0x1000).ok);
  });

  it('faults 1 and 2: root and context entries not present', () => {
    const guest = new TestGuest();
    guest.setContext(SID, {}, false);
    guest.enable();
    expectFault(guest, 0x1000, false, FR.ROOT_ENTRY_NOT_PRESENT, 0x0120);
    expectFault(guest, 0x1000, false, FR.CONTEXT_ENTRY_NOT_PRESENT);
  });

  it('fault 4: beyond MGAW and beyond the context width', () => {
    const guest = new TestGuest();
    guest.setContext(SID);
    guest.enable();
    expectFault(guest, 2n ** 39n, false, FR.ADDRESS_BEYOND_MGAW);
    expectFault(guest, 2n ** 63n, true, FR.ADDRESS_BEYOND_MGAW);
  });

  it('fault 7: a page-table pointer outside RAM below the top level', () => {
    const guest = new TestGuest();
    const top = guest.setContext(SID);
    guest.memory.writeU64(top, encodeBig(SECOND_STAGE_TABLE_ENTRY, { R: 1, W: 1, ADDR: 0x40000000 / PAGE }));
    guest.enable();
    expectFault(guest, 0x1000, false, FR.PAGING_ENTRY_INVALID);
  });

  it('an unreadable top-level table: fault 7 (spec, qemu-latest), fault 3 with compat qemu-7.2', () => {
    const cases = [
      ['', FR.PAGING_ENTRY_INVALID],
      ['compat=qemu-7.2', FR.CONTEXT_ENTRY_INVALID],
      ['compat=qemu-latest,aw-bits=39', FR.PAGING_ENTRY_INVALID],
    ] as const;
    for (const [config, reason] of cases) {
      const guest = new TestGuest(config);
      guest.setContext(SID, {}, true, encodeBig(LEGACY_CONTEXT_ENTRY, { P: 1, SLPTPTR: 0x40000000 / PAGE, AW: 1, DID: 1 }));
      guest.enable();
      expectFault(guest, 0x1000, false, reason);
    }
  });

  it('fault 8: root table outside RAM; fault 9: context table outside RAM', () => {
    const guest = new TestGuest();
    guest.unit.write(OFFSET.RTADDR, 8, 0x4000_0000n);
    guest.command(GCMD.SRTP | GCMD.TE);
    expectFault(guest, 0x1000, false, FR.ROOT_TABLE_INVALID);
    const other = new TestGuest();
    other.write128(other.root, encodeBig(LEGACY_ROOT_ENTRY, { P: 1, CTP: 0x4000_0000 / PAGE }));
    other.enable();
    expectFault(other, 0x1000, false, FR.CONTEXT_TABLE_INVALID);
  });

  it('faults A, B, C: reserved bits in root, context and paging entries', () => {
    const guest = new TestGuest();
    guest.setContext(SID);
    guest.map(SID, 0x1000, 0x200000, { extra: 1n << 11n }); // SNP without snoop control
    guest.write128(guest.root + 16 * 2, encodeBig(LEGACY_ROOT_ENTRY, { P: 1, CTP: 0x8000 / PAGE }) | (1n << 5n));
    guest.setContext(0x0308, {}, true, encodeBig(LEGACY_CONTEXT_ENTRY, { P: 1, AW: 1, DID: 3 }) | (1n << 100n));
    guest.enable();
    expectFault(guest, 0x1000, false, FR.ROOT_ENTRY_RESERVED, 0x0200);
    expectFault(guest, 0x1000, false, FR.CONTEXT_ENTRY_RESERVED, 0x0308);
    expectFault(guest, 0x1000, false, FR.PAGING_ENTRY_RESERVED);
  });

  it('fault C: address bits above the address width in a PTE', () => {
    const guest = new TestGuest();
    guest.setContext(SID);
    guest.map(SID, 0x1000, 0x200000, { extra: 1n << 40n });
    guest.enable();
    expectFault(guest, 0x1000, false, FR.PAGING_ENTRY_RESERVED);
  });

  it('fault E for an output address in the interrupt range; an input there is no DMA and is not recorded', () => {
    const guest = new TestGuest();
    guest.setContext(SID);
    guest.map(SID, 0x1000, 0xfee00000);
    guest.map(SID, 0xfee01000, 0x300000);
    guest.enable();
    const input = guest.translate(0xfee01000, true);
    assert.ok(!input.ok && input.fault.reason === FR.INTERRUPT_ADDRESS && input.recording === 'none');
    assert.equal(guest.read32(OFFSET.FSTS), 0);
    const output = guest.translate(0x1000, true);
    assert.ok(!output.ok && output.fault.reason === FR.INTERRUPT_ADDRESS && output.recording === 'recorded');
  });

  it('FPD suppresses the qualified faults at and after the context entry (P = 0 included), never reserved bits or earlier faults', () => {
    const guest = new TestGuest();
    guest.setContext(SID, { fpd: true });
    guest.setContext(SID + 1, { fpd: true }, false);
    guest.setContext(SID + 2, {}, false);
    guest.setContext(SID + 3, {}, true, encodeBig(LEGACY_CONTEXT_ENTRY, { P: 1, FPD: 1, AW: 1, DID: 1 }) | (1n << 5n));
    guest.enable();
    const suppressed = guest.translate(0x1000, true);
    assert.ok(!suppressed.ok && suppressed.recording === 'suppressed-fpd' && suppressed.fault.reason === FR.WRITE);
    const notPresent = guest.translate(0x1000, true, SID + 1);
    assert.ok(!notPresent.ok && notPresent.recording === 'suppressed-fpd' && notPresent.fault.reason === FR.CONTEXT_ENTRY_NOT_PRESENT);
    assert.equal(guest.read32(OFFSET.FSTS), 0);
    const recorded = guest.translate(0x1000, true, SID + 2);
    assert.ok(!recorded.ok && recorded.recording === 'recorded' && recorded.fault.reason === FR.CONTEXT_ENTRY_NOT_PRESENT);
    guest.unit.write(FRCD + 0xc, 4, 0x80000000);
    const reserved = guest.translate(0x1000, true, SID + 3);
    assert.ok(!reserved.ok && reserved.recording === 'recorded' && reserved.fault.reason === FR.CONTEXT_ENTRY_RESERVED);
    guest.unit.write(FRCD + 0xc, 4, 0x80000000);
    const noRoot = guest.translate(0x1000, true, 0x520);
    assert.ok(!noRoot.ok && noRoot.recording === 'recorded' && noRoot.fault.reason === FR.ROOT_ENTRY_NOT_PRESENT);
  });

  it('a cached translation equals a fresh walk', () => {
    const guest = new TestGuest();
    guest.setContext(SID);
    guest.map(SID, 0x1000, 0x200000, { write: false });
    guest.map(SID, 0x20_0000, 0x800000, { size: '2m' });
    guest.enable();
    for (const iova of [0x1010, 0x20_1234, 0x3f_ffff]) {
      const first = guest.translate(iova);
      const cached = guest.translate(iova);
      guest.globalIotlbInvalidate();
      const fresh = guest.translate(iova);
      assert.deepEqual(cached, first);
      assert.deepEqual(fresh, first);
    }
    assert.ok(guest.unit.iotlb.size > 0);
  });

  describe('dmaSpace', () => {
    it('reads and writes across pages that map to scattered guest pages', () => {
      const guest = new TestGuest();
      guest.setContext(SID);
      guest.map(SID, 0x10000, 0x500000);
      guest.map(SID, 0x11000, 0x300000);
      guest.enable();
      const dma = guest.unit.dmaSpace(SID);
      const data = Uint8Array.from({ length: 100 }, (_, i) => i + 1);
      dma.write(0x10fd0n, data);
      assert.deepEqual(guest.memory.read(0x500fd0, 48), data.subarray(0, 48));
      assert.deepEqual(guest.memory.read(0x300000, 52), data.subarray(48));
      const back = new Uint8Array(100);
      dma.read(0x10fd0n, back);
      assert.deepEqual(back, data);
    });

    it('transfers nothing and throws EFAULT when a later page is unmapped', () => {
      const guest = new TestGuest();
      guest.setContext(SID);
      guest.map(SID, 0x10000, 0x500000);
      guest.enable();
      const dma = guest.unit.dmaSpace(SID);
      assert.throws(
        () => dma.write(0x10ff0n, new Uint8Array(32).fill(7)),
        (error: unknown) => error instanceof DmaFault && error.errno === EFAULT,
      );
      assert.deepEqual(guest.memory.read(0x500ff0, 16), new Uint8Array(16));
      assert.equal(frcdReason(guest), FR.WRITE);
    });

    it('throws EPERM for a write to a read-only page, and records the fault', () => {
      const guest = new TestGuest();
      guest.setContext(SID);
      guest.map(SID, 0x202000, 0x202000, { write: false });
      guest.enable();
      const dma = guest.unit.dmaSpace(SID);
      assert.throws(
        () => dma.write(0x202000n, new Uint8Array(4)),
        (error: unknown) => error instanceof DmaFault && error.errno === EPERM,
      );
      assert.equal(guest.read32(OFFSET.FSTS), 0x2);
    });

    it('rolls back a write when guest RAM ends under a mapped page', () => {
      const guest = new TestGuest();
      guest.setContext(SID);
      guest.map(SID, 0x10000, 0x1fff000);
      guest.map(SID, 0x11000, 0x2000000); // mapped, but beyond RAM
      guest.enable();
      assert.throws(
        () => guest.unit.dmaSpace(SID).write(0x10ff0n, new Uint8Array(32).fill(9)),
        (error: unknown) => error instanceof DmaFault && error.errno === EFAULT,
      );
      assert.deepEqual(guest.memory.read(0x1fffff0, 16), new Uint8Array(16));
    });

    it('is guest memory itself while TE is off', () => {
      const guest = new TestGuest();
      guest.unit.dmaSpace(SID).write(0x7000n, Uint8Array.of(1, 2, 3));
      assert.deepEqual(guest.memory.read(0x7000, 3), Uint8Array.of(1, 2, 3));
    });
  });

  describe('tables above 2^44 (the walk with table page numbers as doubles)', () => {
    const HIGH = 2 ** 45;

    /** A 4-level walk to 0x5000 for IOVA `iova`, with table i (top = 3) in high RAM when `high[i]`. */
    function guestWithTables(high: readonly boolean[]): TestGuest {
      const guest = new TestGuest('aw-bits=48');
      guest.memory.addRegion({ name: 'high', start: HIGH, buffer: new ArrayBuffer(4 * PAGE) });
      const tables = high.map((isHigh, level) => (isHigh ? HIGH + level * PAGE : guest.allocPage()));
      const iova = 0x7f_8040_3000;
      const index = (level: number) => Math.floor(iova / 2 ** (12 + 9 * level)) % 512;
      for (let level = 3; level >= 1; level--) {
        guest.memory.writeU64(
          tables[level]! + index(level) * 8,
          encodeBig(SECOND_STAGE_TABLE_ENTRY, { R: 1, W: 1, ADDR: tables[level - 1]! / PAGE }),
        );
      }
      guest.memory.writeU64(tables[0]! + index(0) * 8, 0x5000n | 3n);
      guest.setContext(SID, {}, true, encodeBig(LEGACY_CONTEXT_ENTRY, { P: 1, SLPTPTR: tables[3]! / PAGE, AW: 2, DID: 1 }));
      guest.enable();
      return guest;
    }

    it('translates through every combination of low and high tables; an unmapped neighbour still faults', () => {
      for (let mask = 0; mask < 16; mask++) {
        const high = [0, 1, 2, 3].map((bit) => ((mask >> bit) & 1) === 1);
        const guest = guestWithTables(high);
        const result = guest.translate(0x7f_8040_3abc, true);
        assert.ok(
          result.ok && result.address === 0x5abc,
          `tables high: ${high.join(',')}: ${result.ok ? result.address.toString(16) : result.fault.reason}`,
        );
        const unmapped = guest.translate(0x7f_8040_4000, false);
        assert.ok(!unmapped.ok && unmapped.fault.reason === FR.READ, 'a neighbour entry of the same (zeroed) table');
      }
    });
  });
});
