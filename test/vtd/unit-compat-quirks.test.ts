/** Each QEMU quirk: the spec behaviour by default, QEMU's with compat=qemu-7.2 or qemu-10.0 (the oracle tests show QEMU's side). */
import type { FaultRecord } from '../../lib/vtd/fault';
import { strict as assert } from 'node:assert';
import { encodeBig } from '../../lib/vtd/bitfield';
import { COMPAT_QUIRKS, quirkRegisterMask, quirksFor, type QuirkId, type QuirkRegisterChanges } from '../../lib/vtd/compat-quirks';
import { COMPAT_VALUES } from '../../lib/vtd/config';
import { FirstStageWalker, FS_FR, splitAddress, type FirstStagePage } from '../../lib/vtd/first-stage-walk';
import { IR_FAULT, MSI_REMAPPABLE_ADDRESS } from '../../lib/vtd/interrupt-remap';
import { FR } from '../../lib/vtd/legacy-walk';
import { GCMD, GSTS, OFFSET } from '../../lib/vtd/register-bits';
import { IRTA_FIELDS } from '../../lib/vtd/registers';
import { INTERRUPT_ENTRY_CACHE_INVALIDATE, IRTE } from '../../lib/vtd/structures';
import { TableMemory } from './paging-builder';
import { FRCD, PAGE, SID, TestGuest } from './unit-guest';

const QEMU = 'compat=qemu-7.2';

function irGuest(config: string): { guest: TestGuest; table: number } {
  const guest = new TestGuest(config);
  const table = guest.allocPage();
  guest.unit.write(OFFSET.IRTA, 8, encodeBig(IRTA_FIELDS, { IRTA: table / PAGE, S: 7 }));
  guest.command(GCMD.SIRTP);
  guest.command(GCMD.IRE);
  return { guest, table };
}

function remappable(handle: number): number {
  return Number(encodeBig(MSI_REMAPPABLE_ADDRESS, { BASE: 0xfee, IF: 1, HANDLE_LO: handle }));
}

describe('compat quirks', () => {
  it('every quirk is either always on or only with the QEMU compat values it names; spec and qemu-latest have only the permitted ones', () => {
    const sets = new Map(COMPAT_VALUES.map((compat) => [compat, quirksFor({ compat })]));
    for (const quirk of COMPAT_QUIRKS) {
      for (const [compat, set] of sets) {
        const wanted = quirk.compat === 'all' || quirk.compat.includes(compat);
        assert.equal(set.has(quirk.id), wanted, `${quirk.id} with compat=${compat}`);
      }
      if (quirk.compat !== 'all') {
        assert.ok(
          quirk.compat.length > 0 && !quirk.compat.includes('spec') && !quirk.compat.includes('qemu-latest'),
          `${quirk.id}: only QEMU versions`,
        );
      }
    }
  });

  it('every quirk says what it changes, in registers and fields that exist (the differential harness excuses only that)', () => {
    for (const quirk of COMPAT_QUIRKS) {
      const registers = Object.entries(quirk.changes.registers ?? {});
      assert.ok(registers.length > 0 || (quirk.changes.observations ?? []).length > 0, `${quirk.id} changes nothing`);
      for (const [register, fields] of registers) {
        assert.ok(fields.length > 0, `${quirk.id}: no fields for ${register}`);
        const name = register.replace(/^FRCD_/, 'FRCD0_');
        assert.notEqual(quirkRegisterMask(quirk.id, name), 0n, `${quirk.id}: ${register}`);
      }
    }
    assert.equal(quirkRegisterMask('frcd-pv-ffff-without-pasid', 'GSTS'), 0n, 'a register it does not name');
    assert.throws(() => quirkRegisterMask('no-such-quirk' as never, 'GSTS'), /no compat quirk/);
  });

  it('names registers, entries and fields in changes only as their tables define them (checked by tsc)', () => {
    // Each @ts-expect-error must meet a compile error, so a misspelt name in COMPAT_QUIRKS cannot compile.
    const valid: QuirkRegisterChanges = { GSTS: ['CFIS'], FRCD_HI: ['PV'], FS_4K_LEAF: ['A', 'D'] };
    // @ts-expect-error: the register is RTADDR.
    const misspeltRegister: QuirkRegisterChanges = { RTADR: ['RTA'] };
    // @ts-expect-error: CAIG is a field of CCMD, not of GSTS.
    const fieldOfAnother: QuirkRegisterChanges = { GSTS: ['CAIG'] };
    // @ts-expect-error: first-stage table entries have no D flag (only the leaves do).
    const entryField: QuirkRegisterChanges = { FS_TABLE_ENTRY: ['D'] };
    assert.deepEqual(
      [valid, misspeltRegister, fieldOfAnother, entryField].map((changes) => Object.keys(changes).length),
      [3, 1, 1, 1],
    );
  });

  it('frcd-pv-ffff-without-pasid: PV 0xffff only for faults past the context entry', () => {
    for (const [config, walkPv] of [
      ['', 0n],
      [QEMU, 0xffffn],
    ] as const) {
      const guest = new TestGuest(config);
      guest.setContext(SID);
      guest.enable();
      guest.translate(0x5000, false);
      assert.equal((guest.read64(FRCD + 8) >> 40n) & 0xfffffn, walkPv, `${config}: a walk fault`);
      guest.unit.write(FRCD + 0xc, 4, 0x80000000);
      guest.translate(0x5000, false, 0x300);
      assert.equal((guest.read64(FRCD + 8) >> 32n) & 0xffn, BigInt(FR.ROOT_ENTRY_NOT_PRESENT));
      assert.equal((guest.read64(FRCD + 8) >> 40n) & 0xfffffn, 0n, `${config}: a root fault`);
    }
  });

  it('iotlb-hit-without-permission-not-recorded: a write after a cached read of a read-only page', () => {
    for (const [config, recording] of [
      ['', 'recorded'],
      [QEMU, 'none'],
    ] as const) {
      const guest = new TestGuest(config);
      guest.setContext(SID);
      guest.map(SID, 0x1000, 0x300000, { write: false });
      guest.enable();
      assert.ok(guest.translate(0x1000, false).ok);
      const write = guest.translate(0x1000, true);
      assert.ok(!write.ok && write.fault.reason === FR.WRITE && write.recording === recording, config);
    }
  });

  it('gcmd-cfi-ignored: CFIS follows CFI unless QEMU', () => {
    for (const [config, cfis] of [
      ['', GSTS.CFIS],
      [QEMU, 0],
    ] as const) {
      const { guest } = irGuest(config);
      guest.command(GCMD.CFI);
      assert.equal(guest.read32(OFFSET.GSTS) & GSTS.CFIS, cfis, config);
    }
  });

  it('fectl-ip-kept-when-records-cleared: clearing F clears IP unless QEMU', () => {
    for (const [config, fectl] of [
      ['', 0x80000000],
      [QEMU, 0xc0000000],
    ] as const) {
      const guest = new TestGuest(config);
      guest.setContext(SID);
      guest.enable();
      guest.translate(0x9000, false);
      assert.equal(guest.read32(OFFSET.FECTL), 0xc0000000);
      guest.unit.write(FRCD + 0xc, 4, 0x80000000);
      assert.equal(guest.read32(OFFSET.FECTL), fectl, config);
      guest.unit.write(OFFSET.FSTS, 4, 0);
      assert.equal(guest.read32(OFFSET.FECTL), 0x80000000, `${config}: an FSTS write clears IP`);
    }
  });

  it('iec-descriptor-reserved-bits-ignored and pasid-descriptors-accepted-unchecked: IQE unless QEMU', () => {
    const bad = [encodeBig(INTERRUPT_ENTRY_CACHE_INVALIDATE, { TYPE_LO: 4 }) | (1n << 5n), 0x26n, 0x37n];
    for (const descriptor of bad) {
      for (const [config, fsts] of [
        ['', 0x10],
        [QEMU, 0],
      ] as const) {
        const guest = new TestGuest(config);
        guest.setupQueue(0);
        guest.submit([descriptor], 0);
        assert.equal(guest.read32(OFFSET.FSTS), fsts, `${config}: 0x${descriptor.toString(16)}`);
      }
    }
  });

  it('interrupt-remapping-faults-not-recorded: a not-present IRTE is recorded unless QEMU', () => {
    for (const [config, recording] of [
      ['', 'recorded'],
      [QEMU, 'none'],
    ] as const) {
      const { guest } = irGuest(config);
      const result = guest.unit.remapInterrupt({ sid: SID, address: remappable(9), data: 0 });
      assert.ok(!result.ok && result.reason === IR_FAULT.ENTRY_NOT_PRESENT && result.recording === recording, config);
    }
  });

  it('irte-posted-and-xapic-destination-unchecked: fault 0x24 unless QEMU', () => {
    for (const fields of [{ IM: 1 }, { DST: 0x101 }]) {
      for (const [config, ok] of [
        ['', false],
        [QEMU, true],
      ] as const) {
        const { guest, table } = irGuest(config);
        guest.write128(table + 4 * 16, encodeBig(IRTE, { P: 1, V: 0x30, DST: 0x100, ...fields }));
        const result = guest.unit.remapInterrupt({ sid: SID, address: remappable(4), data: 0 });
        assert.equal(result.ok, ok, `${config} ${JSON.stringify(fields)}`);
        if (!result.ok) assert.equal(result.reason, IR_FAULT.ENTRY_RESERVED);
        else assert.equal(result.destination, 1);
      }
    }
  });

  it('interrupt-dma-writes-skip-source-id-check: only plain DMA writes, only with QEMU', () => {
    for (const [config, dmaOk] of [
      ['', false],
      [QEMU, true],
    ] as const) {
      const { guest, table } = irGuest(config);
      guest.write128(table + 4 * 16, encodeBig(IRTE, { P: 1, V: 0x30, DST: 0x100, SVT: 1, SID: 0x28 }));
      const message = guest.unit.interruptRequest({ sid: SID, address: remappable(4), data: 0 });
      assert.ok(!message.ok && message.reason === IR_FAULT.SOURCE_ID_MISMATCH, `${config}: an MSI is checked`);
      const write = guest.unit.interruptRequest({ sid: SID, address: remappable(4), data: 0 }, 'dma-write');
      assert.equal(write.ok, dmaOk, config);
    }
  });

  describe('QEMU 10.0 first-stage quirks, in the walker (the unit hands the walker its quirks)', () => {
    const A = 1n << 5n;
    const D = 1n << 6n;
    const US = 1n << 2n;

    function setUp(quirks: readonly QuirkId[]): { t: TableMemory; walker: FirstStageWalker; top: number } {
      const t = new TableMemory();
      return { t, walker: new FirstStageWalker(t.memory, { addressWidth: 48, fs1gp: true, quirks: new Set(quirks) }), top: t.page() };
    }

    function walk(walker: FirstStageWalker, top: number, va: bigint, write: boolean, ssInputWidth?: number): FirstStagePage | FaultRecord {
      return walker.walk(
        { fsTable: top, fsLevels: 4, wpe: false, eafe: false, fpd: false, ...(ssInputWidth !== undefined ? { ssInputWidth } : {}) },
        { ...splitAddress(va), write, execute: false, supervisor: false },
      );
    }

    it('first-stage-rights-checked-per-level: a refusing entry faults at once, without A, before lower not-present entries', () => {
      for (const [quirks, reason, pdeA] of [
        [[], FS_FR.NOT_PRESENT, A],
        [['first-stage-rights-checked-per-level'], FS_FR.USER_SUPERVISOR, 0n],
      ] as const) {
        const { t, walker, top } = setUp(quirks);
        t.mapFirst(top, 4, 0x4000_0000n, 0x300000);
        const pde = t.firstEntryAddress(top, 4, 0x4000_0000n, 2);
        t.memory.writeU64(pde, t.memory.readU64(pde) & ~US);
        const pte = t.firstEntryAddress(top, 4, 0x4000_0000n, 1);
        t.memory.writeU64(pte, 0n);
        const result = walk(walker, top, 0x4000_0000n, false);
        assert.ok(!result.ok && result.reason === reason, `${quirks.join() || 'spec'}: reason`);
        assert.equal(t.memory.readU64(pde) & A, pdeA, `${quirks.join() || 'spec'}: A of the PDE`);
      }
      for (const [quirks, leafA] of [
        [[], A],
        [['first-stage-rights-checked-per-level'], 0n],
      ] as const) {
        const { t, walker, top } = setUp(quirks);
        t.mapFirst(top, 4, 0x1000n, 0x300000, { rw: false });
        const result = walk(walker, top, 0x1000n, true);
        assert.ok(!result.ok && result.reason === FS_FR.WRITE);
        assert.equal(
          t.memory.readU64(t.firstEntryAddress(top, 4, 0x1000n, 1)) & A,
          leafA,
          `${quirks.join() || 'spec'}: A of a read-only leaf a write refused`,
        );
      }
    });

    it('first-stage-flags-written-only-when-all-clear: a write through a leaf with A set leaves D clear, with D set leaves A clear', () => {
      for (const [preset, quirks, after] of [
        [A, [], A | D],
        [A, ['first-stage-flags-written-only-when-all-clear'], A],
        [D, [], A | D],
        [D, ['first-stage-flags-written-only-when-all-clear'], D],
        [0n, ['first-stage-flags-written-only-when-all-clear'], A | D],
      ] as const) {
        const { t, walker, top } = setUp(quirks);
        t.mapFirst(top, 4, 0x1000n, 0x300000, { extra: preset });
        const page = walk(walker, top, 0x1000n, true);
        assert.ok(page.ok);
        const leaf = t.memory.readU64(t.firstEntryAddress(top, 4, 0x1000n, 1));
        assert.equal(leaf & (A | D), after, `${quirks.join() || 'spec'}, leaf flags 0x${preset.toString(16)}`);
        // The walk reports the page as needing no further D update, as QEMU caches it: later writes hit.
        assert.equal(page.dirty, quirks.length > 0 || (after & D) !== 0n);
      }
    });

    it('first-stage-canonical-check-uses-pasid-aw: AW 1 (39 bits) makes a canonical 48-bit address above 2^38 fault', () => {
      for (const [quirks, ok] of [
        [[], true],
        [['first-stage-canonical-check-uses-pasid-aw'], false],
      ] as const) {
        const { t, walker, top } = setUp(quirks);
        t.mapFirst(top, 4, 0x80_0000_0000n, 0x300000);
        const result = walk(walker, top, 0x80_0000_0000n, false, 39);
        assert.equal(result.ok, ok, quirks.join() || 'spec');
        if (!result.ok) assert.equal(result.reason, FS_FR.NON_CANONICAL);
      }
      const { t, walker, top } = setUp(['first-stage-canonical-check-uses-pasid-aw']);
      t.mapFirst(top, 4, 0x40_0000_0000n, 0x300000);
      assert.ok(!walk(walker, top, 0x40_0000_0000n, false, 39).ok, 'bit 38 set, 47:39 clear: not canonical at 39 bits');
      t.mapFirst(top, 4, 0x3f_ffff_f000n, 0x301000);
      assert.ok(walk(walker, top, 0x3f_ffff_f000n, false, 39).ok, 'below 2^38');
      t.mapFirst(top, 4, 0x80_0000_0000n, 0x302000);
      assert.ok(walk(walker, top, 0x80_0000_0000n, false, 48).ok, 'AW 2: 48 bits');
    });
  });
});
