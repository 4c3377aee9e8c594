/** Nested walks against the spec: hand-built two-stage tables, composition of the stages on random tables, bounded cycles. */
import type { FaultRecord } from '../../lib/vtd/fault';
import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import { GuestMemory, type EntryWords } from '../../lib/memory/guest-memory';
import { faultReason } from '../../lib/vtd/fault-reasons';
import { FirstStageWalker, FS_FR, splitAddress, type FirstStagePage, type FirstStageRequest } from '../../lib/vtd/first-stage-walk';
import { LegacyWalker, type PageFound } from '../../lib/vtd/legacy-walk';
import { NestedWalker, SS_FR, type NestedPage, type NestedParams } from '../../lib/vtd/nested-walk';
import { ScalableWalker, type ScalablePage } from '../../lib/vtd/scalable-walk';
import { FIRST_STAGE_TABLE_ENTRY, FIRST_STAGE_TOP_ENTRY, PASID_PGTT } from '../../lib/vtd/structures';
import { WalkTrace, type SecondStageStep, type WalkStep } from '../../lib/vtd/walk-trace';
import { PAGE, TableMemory, TableWriter, indexOf, type SecondStageLeaf } from './paging-builder';

const HAW = 48;
const A = 1n << 5n;
const D = 1n << 6n;

/** Guest RAM read by the walkers, counting entry reads so tests can bound the work a walk does. */
class CountingMemory extends GuestMemory {
  reads = 0;
  override readEntry(address: number, out: EntryWords): boolean {
    this.reads++;
    return super.readEntry(address, out);
  }
}

function legacyWalker(memory: GuestMemory): LegacyWalker {
  return new LegacyWalker(
    memory,
    { addressWidth: HAW, sagaw: 0b110, sllps: 0b11, deviceTlb: false, passThrough: true, features: new Set(['SMTS']) },
    new Set(),
  );
}

/**
 * A host with second-stage tables, and a guest-physical view in which the guest builds its first-stage tables:
 * each guest table page gets a host page, a 4 KiB second-stage mapping and an alias region in the view.
 */
class TwoStages {
  readonly host: TableMemory;
  readonly ssTop: number;
  readonly view = new GuestMemory();
  readonly guest: TableWriter;
  readonly hostOf = new Map<number, number>();

  constructor(
    readonly ssLevels = 4,
    memory = new GuestMemory(),
    ramSize = 16 * 1024 * 1024,
  ) {
    this.host = new TableMemory(ramSize, 0x10_0000, memory);
    this.ssTop = this.host.page();
    // eslint-disable-next-line @typescript-eslint/no-this-alias -- the writer subclass below calls back into this object
    const stages = this;
    this.guest = new (class extends TableWriter {
      override page(): number {
        const gpa = super.page();
        stages.backGuestPage(gpa, stages.host.page());
        return gpa;
      }
    })(this.view, 0x1000_0000);
  }

  /** Maps guest page `gpa` to host page `hpa` in the second stage and aliases it in the view. */
  backGuestPage(gpa: number, hpa: number, leaf: SecondStageLeaf = {}): void {
    this.host.mapSecond(this.ssTop, this.ssLevels, gpa, hpa, leaf);
    this.view.addRegion({
      name: `gpa 0x${gpa.toString(16)}`,
      start: gpa,
      buffer: this.host.ram,
      byteOffset: hpa,
      length: PAGE,
      readOnly: leaf.write === false,
    });
    this.hostOf.set(gpa, hpa);
  }

  walkers(memory = this.host.memory): { nested: NestedWalker; first: FirstStageWalker; second: LegacyWalker } {
    const first = new FirstStageWalker(memory, { addressWidth: HAW, fs1gp: true });
    const second = legacyWalker(memory);
    return { nested: new NestedWalker(second, first), first, second };
  }

  params(fsTable: number, o: Partial<NestedParams> = {}): NestedParams {
    return {
      fsTable,
      fsLevels: 4,
      wpe: false,
      eafe: false,
      fpd: false,
      ssTable: this.ssTop,
      ssLevels: this.ssLevels,
      ssInputWidth: 39 + 9 * (this.ssLevels - 3),
      ...o,
    };
  }
}

function req(va: bigint, o: { write?: boolean; execute?: boolean; supervisor?: boolean } = {}): FirstStageRequest {
  return { ...splitAddress(va), write: o.write ?? false, execute: o.execute ?? false, supervisor: o.supervisor ?? false };
}

function ok(result: NestedPage | FaultRecord): NestedPage {
  if (!result.ok)
    assert.fail(
      `expected a translation, got fault 0x${result.reason.toString(16)} (${faultReason(result.reason)?.name}), ${result.stage} stage, level ${result.level}`,
    );
  return result;
}

function faulted(
  result: NestedPage | FirstStagePage | PageFound | ScalablePage | FaultRecord,
  reason: number,
  stage: 'first-stage' | 'second-stage',
  level: number | undefined,
): FaultRecord {
  if (result.ok) assert.fail(`expected fault 0x${reason.toString(16)} (${faultReason(reason)?.name}), got a translation`);
  const f = result as FaultRecord;
  assert.equal(f.reason, reason, `got 0x${f.reason.toString(16)} (${faultReason(f.reason)?.name})`);
  assert.equal(f.stage, stage);
  assert.equal(f.level, level);
  return f;
}

describe('nested walk: hand-built tables', () => {
  let s: TwoStages;
  let nested: NestedWalker;
  let fsTop: number;
  beforeEach(() => {
    s = new TwoStages();
    nested = s.walkers().nested;
    fsTop = s.guest.page();
  });

  it('reads every first-stage table through the second stage, then translates the output through it too', () => {
    const va = 0x7f00_1234_5678n;
    s.guest.mapFirst(fsTop, 4, va, 0x5000_0000);
    s.host.mapSecond(s.ssTop, 4, 0x5000_0000, 0x80_0000);
    const page = ok(nested.walk(s.params(fsTop), req(va)));
    assert.equal(page.guestAddress, 0x5000_0000);
    assert.equal(page.address, 0x80_0000);
    assert.equal(page.address + Number(va & 0xfffn), 0x80_0678);
    // A was set through the second stage: in the host pages behind the guest tables.
    for (let level = 4; level >= 1; level--) {
      const guestEntry = s.guest.firstEntryAddress(fsTop, 4, va, level);
      const hostEntry = s.hostOf.get(guestEntry - (guestEntry % PAGE))! + (guestEntry % PAGE);
      assert.equal(s.host.read64(hostEntry) & A, A, `A at level ${level}`);
    }
  });

  it('combines page sizes: the smaller of the two stages wins, and the output is the second stage of the first', () => {
    const sizes = { '4k': PAGE, '2m': 2 ** 21, '1g': 2 ** 30 } as const;
    const cases: Array<['4k' | '2m' | '1g', '4k' | '2m' | '1g']> = [
      ['2m', '4k'],
      ['4k', '2m'],
      ['2m', '1g'],
      ['1g', '2m'],
      ['1g', '1g'],
    ];
    const offset = 0x1234_5678;
    cases.forEach(([fsSize, ssSize], i) => {
      const va = (BigInt(i + 1) << 39n) | BigInt(offset);
      const gpa = 0x40_0000_0000 + i * 2 ** 30;
      const hpa = 0x100_0000_0000 + i * 2 ** 30;
      s.guest.mapFirst(fsTop, 4, va, gpa, { size: fsSize });
      const output = gpa + (offset % sizes[fsSize]);
      const ssBase = output - (output % sizes[ssSize]);
      s.host.mapSecond(s.ssTop, 4, ssBase, hpa + (ssBase - gpa), { size: ssSize });
      const page = ok(nested.walk(s.params(fsTop), req(va)));
      const size = Math.min(sizes[fsSize], sizes[ssSize]);
      assert.equal(page.pageSize, size, `${fsSize} over ${ssSize}`);
      assert.equal(page.address + (offset % size), hpa + (output - gpa), `${fsSize} over ${ssSize}`);
      assert.equal(page.address % size, 0);
    });
  });

  it('reports a second-stage refusal to read the first-stage top table (FSPTPTR) as 0x75 and a lower table as 0x76', () => {
    const va = 0x1000n;
    const unmapped = 0x2000_0000;
    const top = faulted(nested.walk(s.params(unmapped), req(va)), SS_FR.TOP_TABLE_READ, 'second-stage', 4);
    assert.equal(top.entryAddress, unmapped + indexOf(va, 4) * 8);
    assert.equal(top.notPresent, true);
    s.guest.writeStructure(fsTop + indexOf(va, 4) * 8, FIRST_STAGE_TOP_ENTRY, { P: 1, RW: 1, US: 1, ADDR: unmapped / PAGE });
    const lower = faulted(nested.walk(s.params(fsTop), req(va)), SS_FR.TABLE_READ, 'second-stage', 3);
    assert.equal(lower.entryAddress, unmapped + indexOf(va, 3) * 8);
    // 0x2000_0000 shares the second-stage PML4E and PDPE with the guest's tables at 0x1000_0000: the PDE is missing.
    assert.equal(lower.secondStageLevel, 2);
  });

  it('needs second-stage write permission to set A/D in a first-stage entry (0x77), and only when a flag must be set', () => {
    const va = 0x3000n;
    const pt = 0x3000_0000;
    s.backGuestPage(pt, s.host.page(), { write: false });
    s.guest.mapFirst(fsTop, 4, va, 0x9000);
    // Point the PDE (A already set) at a page table the second stage maps read-only.
    s.guest.writeStructure(s.guest.firstEntryAddress(fsTop, 4, va, 2), FIRST_STAGE_TABLE_ENTRY, { P: 1, RW: 1, US: 1, A: 1, ADDR: pt / PAGE });
    s.host.mapSecond(s.ssTop, 4, 0x9000, 0xa000);
    const hostPte = s.hostOf.get(pt)! + indexOf(va, 1) * 8;
    s.host.write64(hostPte, 0x9000n | 0x7n);
    const fault = faulted(nested.walk(s.params(fsTop), req(va)), FS_FR.TABLE_WRITE_NESTED, 'second-stage', 1);
    assert.equal(fault.entryAddress, pt + indexOf(va, 1) * 8);
    s.host.write64(hostPte, 0x9000n | 0x7n | A);
    ok(nested.walk(s.params(fsTop), req(va)));
    faulted(nested.walk(s.params(fsTop), req(va, { write: true })), FS_FR.TABLE_WRITE_NESTED, 'second-stage', 1);
    s.host.write64(hostPte, 0x9000n | 0x7n | A | D);
    ok(nested.walk(s.params(fsTop), req(va, { write: true })));
  });

  it('reports the second stage refusing the output as SM read (0x86) or write (0x85) at level 0', () => {
    const va = 0x4000n;
    s.guest.mapFirst(fsTop, 4, va, 0x6000_0000);
    faulted(nested.walk(s.params(fsTop), req(va)), SS_FR.READ, 'second-stage', 0);
    faulted(nested.walk(s.params(fsTop), req(va, { write: true })), SS_FR.WRITE, 'second-stage', 0);
    s.host.mapSecond(s.ssTop, 4, 0x6000_0000, 0xb000, { write: false });
    const page = ok(nested.walk(s.params(fsTop), req(va)));
    assert.equal(page.writable, false);
    faulted(nested.walk(s.params(fsTop), req(va, { write: true })), SS_FR.WRITE, 'second-stage', 0);
  });

  it('reports guest addresses beyond the second-stage width: a first-stage table (0x74) or the output (0x84)', () => {
    const three = new TwoStages(3);
    const walker = three.walkers().nested;
    const top = three.guest.page();
    const va = 0x5000n;
    faulted(walker.walk(three.params(2 ** 40), req(va)), SS_FR.TABLE_BEYOND, 'second-stage', 4);
    three.guest.mapFirst(top, 4, va, 2 ** 40);
    faulted(walker.walk(three.params(top), req(va)), SS_FR.OUTPUT_BEYOND, 'second-stage', 0);
  });

  it('maps second-stage structure errors: reserved bits (0x7A) and an unreadable second-stage table pointer (0x7B)', () => {
    const va = 0x6000n;
    s.guest.mapFirst(fsTop, 4, va, 0x7000);
    s.host.mapSecond(s.ssTop, 4, 0x7000, 0x8000);
    ok(nested.walk(s.params(fsTop), req(va)));
    const sspml4e = s.ssTop + indexOf(BigInt(fsTop), 4) * 8;
    s.host.write64(sspml4e, s.host.read64(sspml4e) | (1n << 7n));
    const reserved = faulted(nested.walk(s.params(fsTop), req(va)), SS_FR.RESERVED, 'second-stage', 4);
    assert.equal(reserved.secondStageLevel, 4);
    faulted(nested.walk(s.params(fsTop, { ssTable: 0x4000_0000 }), req(va)), SS_FR.POINTER_INVALID, 'second-stage', 4);
  });

  it('passes first-stage faults through with the first stage named', () => {
    const va = 0x8000n;
    s.guest.mapFirst(fsTop, 4, va, 0x9000, { us: false });
    faulted(nested.walk(s.params(fsTop), req(va)), FS_FR.USER_SUPERVISOR, 'first-stage', 1);
    faulted(nested.walk(s.params(fsTop), req(0x8000_0000_0000n)), FS_FR.NON_CANONICAL, 'first-stage', 4);
    const pde = s.guest.firstEntryAddress(fsTop, 4, va, 2);
    s.guest.write64(pde, 0n);
    const absent = faulted(nested.walk(s.params(fsTop), req(va)), FS_FR.NOT_PRESENT, 'first-stage', 2);
    assert.equal(absent.entryAddress, pde, 'the guest address of the entry');
  });

  it('traces the two-dimensional walk: each second-stage walk (its levels, then the translation) before the first-stage entry it found, then the output', () => {
    const va = 0x9000n;
    s.guest.mapFirst(fsTop, 4, va, 0x6100_0000);
    s.host.mapSecond(s.ssTop, 4, 0x6100_0000, 0xc000);
    const trace = new WalkTrace();
    ok(nested.walk(s.params(fsTop), req(va), trace));
    const shape = trace.records.map((r) => `${r.structure}:${r.level}`);
    const secondStageWalk = ['second-stage:4', 'second-stage:3', 'second-stage:2', 'second-stage:1'];
    assert.deepEqual(shape, [
      ...secondStageWalk,
      'second-stage-translation:4',
      'first-stage:4',
      ...secondStageWalk,
      'second-stage-translation:3',
      'first-stage:3',
      ...secondStageWalk,
      'second-stage-translation:2',
      'first-stage:2',
      ...secondStageWalk,
      'second-stage-translation:1',
      'first-stage:1',
      ...secondStageWalk,
      'second-stage-translation:0',
    ]);
    const translations = trace.records.filter((r): r is SecondStageStep => r.structure === 'second-stage-translation');
    const firstStage = trace.records.filter((r): r is WalkStep => r.structure === 'first-stage');
    const firstLeaf = firstStage[3]!;
    assert.equal(firstLeaf.guestEntryAddress, translations[3]!.input);
    assert.equal(firstLeaf.entryAddress, translations[3]!.output);
    assert.equal(translations[4]!.output, 0xc000 + 0);
  });

  it('dispatches by PGTT: first stage only, second stage only, nested and pass-through', () => {
    const { nested: n, first } = s.walkers();
    const scalable = new ScalableWalker(first, n, HAW);
    const va = 0xa000n;
    s.guest.mapFirst(fsTop, 4, va, 0x6200_0000);
    s.host.mapSecond(s.ssTop, 4, 0x6200_0000, 0xd000);
    s.host.mapSecond(s.ssTop, 4, 0xa000, 0xe000);
    const entry = {
      ...s.params(fsTop),
      pasid: 1,
      address: 0,
      did: 9,
      pgtt: 0,
      ssee: false,
      ssade: false,
      sre: false,
      ere: false,
      pwsnp: false,
      pgsnp: false,
    };
    const nestedPage = scalable.translate({ ...entry, pgtt: PASID_PGTT.NESTED }, req(va));
    assert.deepEqual(nestedPage.ok && [nestedPage.address, nestedPage.did], [0xd000, 9]);
    const secondOnly = scalable.translate({ ...entry, pgtt: PASID_PGTT.SECOND_STAGE }, req(va));
    assert.equal(secondOnly.ok && secondOnly.address, 0xe000);
    faulted(scalable.translate({ ...entry, pgtt: PASID_PGTT.SECOND_STAGE }, req(0xf000n)), SS_FR.READ, 'second-stage', 1);
    faulted(scalable.translate({ ...entry, pgtt: PASID_PGTT.SECOND_STAGE }, req(1n << 50n)), SS_FR.INPUT_BEYOND, 'second-stage', undefined);
    const hostTop = s.host.page();
    s.host.mapFirst(hostTop, 4, va, 0xf000);
    const firstOnly = scalable.translate({ ...entry, fsTable: hostTop, pgtt: PASID_PGTT.FIRST_STAGE }, req(va));
    assert.equal(firstOnly.ok && firstOnly.address, 0xf000);
    const through = scalable.translate({ ...entry, pgtt: PASID_PGTT.PASS_THROUGH }, req(0x1234_5678n));
    assert.equal(through.ok && through.address, 0x1234_5000);
    faulted(scalable.translate({ ...entry, pgtt: PASID_PGTT.PASS_THROUGH }, req(1n << 48n)), SS_FR.INPUT_BEYOND, 'second-stage', undefined);
  });
});

describe('nested walk: equals the composition of its two stages on random tables', () => {
  /** Guest pages that may hold first-stage tables, and the host pages behind them. */
  const GUEST_TABLES = [0x1000_0000, 0x1000_1000, 0x1000_2000, 0x1000_3000, 0x1000_4000];
  const HOST_TABLES = [0x8_0000, 0x8_3000, 0x8_1000, 0x8_4000, 0x8_2000];
  /** Guest data regions the first stage may map to: a 4 KiB page, a 2 MiB region, a 1 GiB region, and beyond 2^39. */
  const DATA = [
    { gpa: 0x2000_0000, size: '4k' as const, hpa: 0x1_0000_0000 },
    { gpa: 0x2020_0000, size: '2m' as const, hpa: 0x1_4000_0000 },
    { gpa: 0x4000_0000, size: '1g' as const, hpa: 0x2_0000_0000 },
  ];
  type Access = 'rw' | 'ro' | 'none';
  const access = fc.constantFrom<Access>('rw', 'rw', 'rw', 'ro', 'none');
  const bit = (percent: number) => fc.noBias(fc.integer({ min: 0, max: 99 })).map((n) => n < percent);
  const target = fc.oneof(
    { weight: 10, arbitrary: fc.constantFrom(...GUEST_TABLES) },
    { weight: 3, arbitrary: fc.constantFrom(0x2000_0000, 0x2020_0000, 0x4000_0000, 0x2_0000_0000) },
    { weight: 1, arbitrary: fc.constantFrom(0x3000_0000, 2 ** 40) },
  );
  /** Large leaves mostly point at data regions aligned for them, so they can translate rather than only fault. */
  const aligned = (level: number) => (level === 3 ? fc.constant(0x4000_0000) : fc.constantFrom(0x2020_0000, 0x4000_0000, 0x2000_0000));
  const entry = (level: number) =>
    fc
      .record({
        target,
        aligned: aligned(level),
        useAligned: bit(75),
        p: bit(95),
        rw: bit(85),
        us: bit(92),
        ps: bit(level === 2 ? 30 : level === 3 ? 10 : 4),
        xd: bit(8),
        a: bit(40),
        d: bit(30),
      })
      .map(
        (f) =>
          BigInt(f.ps && f.useAligned && (level === 2 || level === 3) ? f.aligned : f.target) |
          (f.p ? 1n : 0n) |
          (f.rw ? 2n : 0n) |
          (f.us ? 4n : 0n) |
          (f.ps ? 1n << 7n : 0n) |
          (f.xd ? 1n << 63n : 0n) |
          (f.a ? A : 0n) |
          (f.d ? D : 0n),
      );
  const scenario = fc.record({
    tableAccess: fc.array(access, { minLength: GUEST_TABLES.length, maxLength: GUEST_TABLES.length }),
    dataAccess: fc.array(access, { minLength: DATA.length, maxLength: DATA.length }),
    entries: fc.array(fc.tuple(entry(1), entry(2), entry(3), entry(4)), { minLength: GUEST_TABLES.length, maxLength: GUEST_TABLES.length }),
    topIndex: fc.nat(GUEST_TABLES.length - 1),
    // The PML4 index stays below 256: bit 47 clear keeps the input canonical (canonical checks have their own tests).
    indexes: fc.tuple(fc.nat(511), fc.nat(511), fc.nat(511), fc.nat(255)),
    offset: fc.nat(0xfff),
    write: fc.boolean(),
    supervisor: fc.boolean(),
    ssLevels: fc.constantFrom(3, 4),
  });
  type Scenario = typeof scenario extends fc.Arbitrary<infer T> ? T : never;

  /** Builds the same world every time from a scenario: host RAM, second-stage tables, and a flat guest view. */
  function build(sc: Scenario): { stages: TwoStages; va: bigint } {
    const stages = new TwoStages(sc.ssLevels, new CountingMemory(), 2 * 1024 * 1024);
    let va = BigInt(sc.offset);
    for (let level = 1; level <= 4; level++) va |= BigInt(sc.indexes[level - 1]!) << BigInt(12 + 9 * (level - 1));
    GUEST_TABLES.forEach((gpa, i) => {
      const hpa = HOST_TABLES[i]!;
      for (let level = 1; level <= 4; level++) stages.host.write64(hpa + indexOf(va, level) * 8, sc.entries[i]![level - 1]!);
      if (sc.tableAccess[i] !== 'none') stages.backGuestPage(gpa, hpa, { write: sc.tableAccess[i] === 'rw' });
    });
    DATA.forEach((d, i) => {
      if (sc.dataAccess[i] !== 'none')
        stages.host.mapSecond(stages.ssTop, sc.ssLevels, d.gpa, d.hpa, { size: d.size, write: sc.dataAccess[i] === 'rw' });
    });
    return { stages, va };
  }

  /**
   * The composition: the first stage alone over the flat guest view (where a page the second stage refuses is
   * missing or read-only), then the second stage alone on its output. Returns what nesting must report.
   */
  function composed(
    sc: Scenario,
    stages: TwoStages,
    va: bigint,
  ): { fault: { reason: number; stage: string; level: number | undefined } } | { address: number; pageSize: number; writable: boolean } {
    const params = stages.params(GUEST_TABLES[sc.topIndex]!);
    const width = params.ssInputWidth;
    const flat = new FirstStageWalker(stages.view, { addressWidth: HAW, fs1gp: true }).walk(params, req(va, sc));
    if (!flat.ok) {
      if (flat.reason !== FS_FR.ACCESS && flat.reason !== FS_FR.TOP_ACCESS)
        return { fault: { reason: flat.reason, stage: 'first-stage', level: flat.level } };
      // The flat view could not read or update the entry: ask the second stage alone why.
      const entry = flat.entryAddress!;
      if (entry >= 2 ** width) return { fault: { reason: SS_FR.TABLE_BEYOND, stage: 'second-stage', level: flat.level } };
      const context = { sid: 0, did: 0, tt: 0, fpd: false, levels: params.ssLevels, tableAddress: params.ssTable, limit: 2 ** width };
      const table = legacyWalker(stages.host.memory).walk(context, entry, false);
      if (!table.ok) {
        const reason = flat.reason === FS_FR.TOP_ACCESS ? SS_FR.TOP_TABLE_READ : SS_FR.TABLE_READ;
        return { fault: { reason, stage: 'second-stage', level: flat.level } };
      }
      const host = table.address + (entry % table.pageSize);
      // Mapped, but to no RAM: the first stage cannot read its entry. Mapped to RAM: only a refused flag update remains.
      if (host + 8 > stages.host.size) return { fault: { reason: flat.reason, stage: 'first-stage', level: flat.level } };
      assert.equal(table.writable, false);
      return { fault: { reason: FS_FR.TABLE_WRITE_NESTED, stage: 'second-stage', level: flat.level } };
    }
    const output = flat.address + Number(va % BigInt(flat.pageSize));
    if (output >= 2 ** width) return { fault: { reason: SS_FR.OUTPUT_BEYOND, stage: 'second-stage', level: 0 } };
    const context = { sid: 0, did: 0, tt: 0, fpd: false, levels: params.ssLevels, tableAddress: params.ssTable, limit: 2 ** width };
    const second = legacyWalker(stages.host.memory).walk(context, output, sc.write);
    if (!second.ok) return { fault: { reason: sc.write ? SS_FR.WRITE : SS_FR.READ, stage: 'second-stage', level: 0 } };
    const pageSize = Math.min(flat.pageSize, second.pageSize);
    const host = second.address + (output % second.pageSize);
    return { address: host - (output % pageSize), pageSize, writable: flat.writable && second.writable };
  }

  it('gives the second stage of the first stage, the fault the spec names, and the same flags in memory', () => {
    const seen = new Set<string>();
    fc.assert(
      fc.property(scenario, (sc) => {
        const world1 = build(sc);
        const world2 = build(sc);
        const memory = world1.stages.host.memory as CountingMemory;
        const actual = world1.stages.walkers().nested.walk(world1.stages.params(GUEST_TABLES[sc.topIndex]!), req(world1.va, sc));
        const reads = memory.reads;
        const expected = composed(sc, world2.stages, world2.va);
        if ('fault' in expected) {
          seen.add(`0x${expected.fault.reason.toString(16)}`);
          assert.equal(actual.ok, false, `expected fault 0x${expected.fault.reason.toString(16)}`);
          const f = actual as FaultRecord;
          assert.deepEqual({ reason: f.reason, stage: f.stage, level: f.level }, expected.fault);
        } else {
          seen.add(`page ${expected.pageSize}`);
          const page = ok(actual);
          assert.deepEqual({ address: page.address, pageSize: page.pageSize, writable: page.writable }, expected);
        }
        assert.ok(Buffer.from(world1.stages.host.ram).equals(Buffer.from(world2.stages.host.ram)), 'same A/D flags in memory');
        // 4 first-stage levels, each behind a second-stage walk, plus the output's: bounded whatever the tables hold.
        assert.ok(reads <= 5 * sc.ssLevels + 4 * 2, `${reads} entry reads`);
      }),
      { numRuns: 500 },
    );
    for (const outcome of ['page 4096', 'page 2097152', '0x71', '0x72', '0x75', '0x76', '0x77', '0x85', '0x86', '0x74', '0x81']) {
      assert.ok(seen.has(outcome), `no run ended in ${outcome}: ${[...seen].join(' ')}`);
    }
  });

  it('ends a cycle across the stages in a fault, in bounded time', () => {
    // The second stage maps the guest's first-stage top table onto the second stage's own top table, so the first
    // stage reads second-stage entries as its own: R/W read as P and R/W, X (clear) as U/S, host table addresses
    // as guest ones, which the second stage does not map.
    const memory = new CountingMemory();
    const s = new TwoStages(4, memory);
    const guestTop = 0x3000_0000;
    s.host.mapSecond(s.ssTop, 4, guestTop, s.ssTop);
    const { nested } = s.walkers();
    const va = BigInt(indexOf(BigInt(guestTop), 4)) << 39n;
    const result = nested.walk(s.params(guestTop), req(va));
    assert.equal(result.ok, false);
    assert.ok(memory.reads <= 4 * 4 + 4 + 8, `${memory.reads} entry reads`);
    const f = result as FaultRecord;
    assert.equal(f.stage, 'second-stage');
    assert.equal(f.level, 3);
  });
});
