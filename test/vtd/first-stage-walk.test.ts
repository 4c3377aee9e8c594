/** First-stage walks against the spec: hand-built IA-32e tables, and random tables against an independent model of CPU paging. */
import type { FaultRecord } from '../../lib/vtd/fault';
import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import { GuestMemory, type EntryWords } from '../../lib/memory/guest-memory';
import { faultReason } from '../../lib/vtd/fault-reasons';
import {
  FirstStageWalker,
  FS_FR,
  splitAddress,
  type FirstStagePage,
  type FirstStageParams,
  type FirstStageRequest,
} from '../../lib/vtd/first-stage-walk';
import { FIRST_STAGE_4K_LEAF, FIRST_STAGE_TABLE_ENTRY, FIRST_STAGE_TOP_ENTRY } from '../../lib/vtd/structures';
import { WalkTrace, type WalkStep } from '../../lib/vtd/walk-trace';
import { PAGE, TableMemory, indexOf } from './paging-builder';

const HAW = 48;
const A = 1n << 5n;
const D = 1n << 6n;
const EA = 1n << 10n;

/** Memory shared with another agent that rewrites one entry right after every read of it. */
class RacingMemory extends GuestMemory {
  rewrite: () => void = () => undefined;

  constructor(
    private readonly real: GuestMemory,
    private readonly watched: number,
  ) {
    super();
  }

  override readEntry(address: number, out: EntryWords): boolean {
    const found = this.real.readEntry(address, out);
    if (address === this.watched) this.rewrite();
    return found;
  }

  override writeEntry(address: number, lo: number, hi: number): boolean {
    return this.real.writeEntry(address, lo, hi);
  }
}

function req(va: bigint, o: { write?: boolean; execute?: boolean; supervisor?: boolean } = {}): FirstStageRequest {
  return { ...splitAddress(va), write: o.write ?? false, execute: o.execute ?? false, supervisor: o.supervisor ?? false };
}

function params(top: number, o: Partial<FirstStageParams> = {}): FirstStageParams {
  return { fsTable: top, fsLevels: 4, wpe: false, eafe: false, fpd: false, ...o };
}

function ok(result: FirstStagePage | FaultRecord): FirstStagePage {
  if (!result.ok)
    assert.fail(`expected a translation, got fault 0x${result.reason.toString(16)} (${faultReason(result.reason)?.name}) at level ${result.level}`);
  return result;
}

function faulted(result: FirstStagePage | FaultRecord, reason: number, level: number): FaultRecord {
  if (result.ok) assert.fail(`expected fault 0x${reason.toString(16)}, got a translation to 0x${result.address.toString(16)}`);
  assert.equal(result.reason, reason, `reason 0x${result.reason.toString(16)} (${faultReason(result.reason)?.name})`);
  assert.equal(result.level, level);
  assert.equal(result.stage, 'first-stage');
  return result;
}

describe('first-stage walk: hand-built tables', () => {
  let t: TableMemory;
  let walker: FirstStageWalker;
  let top: number;
  beforeEach(() => {
    t = new TableMemory();
    walker = new FirstStageWalker(t.memory, { addressWidth: HAW, fs1gp: true });
    top = t.page();
  });

  it('translates a 4 KiB page through PML4E, PDPE, PDE and PTE: bits 11:0 from the input, the rest from the PTE', () => {
    const va = 0x7f12_3456_7abcn;
    t.mapFirst(top, 4, va, 0x3000_0000);
    const page = ok(walker.walk(params(top), req(va)));
    assert.equal(page.address, 0x3000_0000);
    assert.equal(page.pageSize, PAGE);
    assert.equal(page.level, 1);
    assert.equal(page.address + Number(va & 0xfffn), 0x3000_0abc);
  });

  it('sets A in every entry it uses, and D only in the leaf of a write, in guest memory', () => {
    const va = 0x1234_5000n;
    t.mapFirst(top, 4, va, 0x80_0000);
    ok(walker.walk(params(top), req(va)));
    for (let level = 4; level >= 1; level--) {
      const entry = t.read64(t.firstEntryAddress(top, 4, va, level));
      assert.equal(entry & A, A, `A at level ${level}`);
      assert.equal(entry & D, 0n, `no D after a read at level ${level}`);
    }
    const written = ok(walker.walk(params(top), req(va, { write: true })));
    assert.equal(written.dirty, true);
    assert.equal(t.read64(t.firstEntryAddress(top, 4, va, 1)) & D, D);
    for (let level = 4; level >= 2; level--) assert.equal(t.read64(t.firstEntryAddress(top, 4, va, level)) & D, 0n);
  });

  it('sets EA together with A when the PASID entry has EAFE, and not otherwise', () => {
    const va = 0x4000n;
    t.mapFirst(top, 4, va, 0x9000);
    ok(walker.walk(params(top), req(va)));
    assert.equal(t.read64(t.firstEntryAddress(top, 4, va, 1)) & EA, 0n);
    const other = 0x20_0000n;
    t.mapFirst(top, 4, other, 0xa000);
    ok(walker.walk(params(top, { eafe: true }), req(other)));
    for (let level = 4; level >= 1; level--) assert.equal(t.read64(t.firstEntryAddress(top, 4, other, level)) & (A | EA), A | EA);
  });

  it('maps a 2 MiB page from a PDE with PS: bits 20:0 from the input', () => {
    const va = 0x4060_1234n;
    t.mapFirst(top, 4, va, 0x4000_0000, { size: '2m' });
    const page = ok(walker.walk(params(top), req(va)));
    assert.equal(page.pageSize, 2 ** 21);
    assert.equal(page.level, 2);
    assert.equal(page.address + Number(va % 2n ** 21n), 0x4000_1234);
  });

  it('maps a 1 GiB page from a PDPE with PS when FS1GP is reported, and calls that PS reserved otherwise', () => {
    const va = 0x8765_4321n;
    t.mapFirst(top, 4, va, 0xc000_0000, { size: '1g' });
    const page = ok(walker.walk(params(top), req(va)));
    assert.equal(page.pageSize, 2 ** 30);
    assert.equal(page.address + Number(va % 2n ** 30n), 0xc000_0000 + 0x0765_4321);
    const without = new FirstStageWalker(t.memory, { addressWidth: HAW, fs1gp: false });
    faulted(without.walk(params(top), req(va)), FS_FR.RESERVED, 3);
  });

  it('walks five levels with FSPM 1: bits 56:48 index the PML5 table', () => {
    const va = 0x00ab_cdef_1234_5678n;
    t.mapFirst(top, 5, va, 0x55_5000);
    const page = ok(walker.walk(params(top, { fsLevels: 5 }), req(va)));
    assert.equal(page.address, 0x55_5000);
    assert.equal(t.read64(top + indexOf(va, 5) * 8) & A, A);
    // The same address is not canonical for 4-level paging (bits 63:47 differ).
    faulted(walker.walk(params(top), req(va)), FS_FR.NON_CANONICAL, 4);
  });

  it('checks canonical form: bits 63:47 (4-level) or 63:56 (5-level) must copy the top bit', () => {
    const high = 0xffff_8000_0000_1000n;
    t.mapFirst(top, 4, high, 0x7000);
    assert.equal(indexOf(high, 4), 256);
    assert.equal(ok(walker.walk(params(top), req(high))).address, 0x7000);
    faulted(walker.walk(params(top), req(0x0000_8000_0000_0000n)), FS_FR.NON_CANONICAL, 4);
    faulted(walker.walk(params(top), req(0xfff7_8000_0000_0000n)), FS_FR.NON_CANONICAL, 4);
    faulted(walker.walk(params(top, { fsLevels: 5 }), req(0x0100_0000_0000_0000n)), FS_FR.NON_CANONICAL, 5);
    // Canonical for 5-level: the walk goes on and finds an empty PML5E.
    faulted(walker.walk(params(t.page(), { fsLevels: 5 }), req(0xff00_0000_0000_0000n)), FS_FR.NOT_PRESENT, 5);
  });

  it('reports a not-present entry with its level and guest address, and sets no flags below it', () => {
    const va = 0x3_0000_0000n;
    faulted(walker.walk(params(top), req(va)), FS_FR.NOT_PRESENT, 4);
    t.mapFirst(top, 4, va, 0x1000);
    const pde = t.firstEntryAddress(top, 4, va, 2);
    t.write64(pde, 0n);
    const fault = faulted(walker.walk(params(top), req(va)), FS_FR.NOT_PRESENT, 2);
    assert.equal(fault.entryAddress, pde);
    assert.equal(fault.notPresent, true);
    assert.equal(t.read64(t.firstEntryAddress(top, 4, va, 3)) & A, A, 'levels above were used');
    assert.equal(t.read64(pde), 0n, 'a not-present entry is not written');
  });

  it('treats reserved bits as the CPU does: PS in the PML4E, address bits at or above HAW, bits 20:13 of a 2 MiB leaf', () => {
    const va = 0x5000n;
    t.mapFirst(top, 4, va, 0x2000);
    const pml4e = top + indexOf(va, 4) * 8;
    const saved = t.read64(pml4e);
    t.write64(pml4e, saved | (1n << 7n));
    faulted(walker.walk(params(top), req(va)), FS_FR.RESERVED, 4);
    t.write64(pml4e, saved);
    const pte = t.firstEntryAddress(top, 4, va, 1);
    t.write64(pte, t.read64(pte) | (1n << BigInt(HAW)));
    faulted(walker.walk(params(top), req(va)), FS_FR.RESERVED, 1);
    const narrow = new FirstStageWalker(t.memory, { addressWidth: 39, fs1gp: true });
    t.write64(pte, (t.read64(pte) & ~(1n << BigInt(HAW))) | (1n << 40n));
    faulted(narrow.walk(params(top), req(va)), FS_FR.RESERVED, 1);
    const big = 0x80_0000n;
    t.mapFirst(top, 4, big, 0x60_0000, { size: '2m', extra: 1n << 13n });
    faulted(walker.walk(params(top), req(big)), FS_FR.RESERVED, 2);
  });

  it('does not reserve XD, EA or the ignored bits', () => {
    const va = 0x6000n;
    t.mapFirst(top, 4, va, 0x2000, { xd: true, extra: EA | (1n << 9n) | (1n << 11n) | (0x7ffn << 52n) });
    const pdpe = t.firstEntryAddress(top, 4, va, 3);
    t.write64(pdpe, t.read64(pdpe) | (1n << 6n) | (0x3n << 8n) | (1n << 11n) | (1n << 63n));
    const page = ok(walker.walk(params(top), req(va)));
    assert.equal(page.executable, false);
  });

  it('applies the access rights: U/S for user requests, R/W with WPE for supervisor writes, XD for execute requests', () => {
    const supervisorPage = 0x10_0000n;
    t.mapFirst(top, 4, supervisorPage, 0x1000, { us: false });
    faulted(walker.walk(params(top), req(supervisorPage)), FS_FR.USER_SUPERVISOR, 1);
    ok(walker.walk(params(top), req(supervisorPage, { supervisor: true })));

    const readOnly = 0x20_0000n;
    t.mapFirst(top, 4, readOnly, 0x2000, { rw: false });
    assert.equal(ok(walker.walk(params(top), req(readOnly))).writable, false);
    faulted(walker.walk(params(top), req(readOnly, { write: true })), FS_FR.WRITE, 1);
    const supervisorWrite = ok(walker.walk(params(top), req(readOnly, { write: true, supervisor: true })));
    assert.equal(supervisorWrite.writable, true, 'WPE = 0: supervisor writes ignore R/W');
    faulted(walker.walk(params(top, { wpe: true }), req(readOnly, { write: true, supervisor: true })), FS_FR.WRITE, 1);

    const noExecute = 0x30_0000n;
    t.mapFirst(top, 4, noExecute, 0x3000);
    const pde = t.firstEntryAddress(top, 4, noExecute, 2);
    assert.equal(ok(walker.walk(params(top), req(noExecute, { execute: true }))).executable, true);
    t.write64(pde, t.read64(pde) | (1n << 63n));
    faulted(walker.walk(params(top), req(noExecute, { execute: true })), FS_FR.EXECUTE, 1);
    faulted(walker.walk(params(top), req(supervisorPage, { execute: true })), FS_FR.USER_SUPERVISOR, 1);
  });

  it('collects U/S and R/W over every level: a table entry without them restricts the whole subtree', () => {
    const va = 0x40_0000n;
    t.mapFirst(top, 4, va, 0x4000);
    const pdpe = t.firstEntryAddress(top, 4, va, 3);
    t.write64(pdpe, t.read64(pdpe) & ~2n);
    faulted(walker.walk(params(top), req(va, { write: true })), FS_FR.WRITE, 1);
    t.write64(pdpe, t.read64(pdpe) & ~4n);
    faulted(walker.walk(params(top), req(va)), FS_FR.USER_SUPERVISOR, 1);
  });

  it('sets A (not D) on the leaf of a refused write, as the walk used it', () => {
    const va = 0x50_0000n;
    t.mapFirst(top, 4, va, 0x5000, { rw: false });
    faulted(walker.walk(params(top), req(va, { write: true })), FS_FR.WRITE, 1);
    assert.equal(t.read64(t.firstEntryAddress(top, 4, va, 1)) & (A | D), A);
  });

  it('reports an unreadable top table as the FL-PML4 access error and a lower one as the paging-entry access error', () => {
    faulted(walker.walk(params(0x4000_0000), req(0x1000n)), FS_FR.TOP_ACCESS, 4);
    const va = 0x1000n;
    t.writeStructure(top + indexOf(va, 4) * 8, FIRST_STAGE_TOP_ENTRY, { P: 1, RW: 1, US: 1, ADDR: 0x4000_0000 / PAGE });
    const fault = faulted(walker.walk(params(top), req(va)), FS_FR.ACCESS, 3);
    assert.equal(fault.entryAddress, 0x4000_0000 + indexOf(va, 3) * 8);
  });

  it('needs writable memory for flag updates: a PTE in read-only memory faults until A and D are already set', () => {
    const romBuffer = new ArrayBuffer(PAGE);
    const romStart = 0x200_0000;
    const va = 0x7000n;
    t.mapFirst(top, 4, va, 0x1000);
    const pde = t.firstEntryAddress(top, 4, va, 2);
    t.writeStructure(pde, FIRST_STAGE_TABLE_ENTRY, { P: 1, RW: 1, US: 1, A: 1, ADDR: romStart / PAGE });
    const rom = new DataView(romBuffer);
    const pte = (flags: bigint) => rom.setBigUint64(indexOf(va, 1) * 8, 0x1000n | 0x7n | flags, true);
    pte(0n);
    t.memory.addRegion({ name: 'rom', start: romStart, buffer: romBuffer, readOnly: true });
    faulted(walker.walk(params(top), req(va)), FS_FR.ACCESS, 1);
    pte(A);
    ok(walker.walk(params(top), req(va)));
    faulted(walker.walk(params(top), req(va, { write: true })), FS_FR.ACCESS, 1);
    pte(A | D);
    assert.equal(ok(walker.walk(params(top), req(va, { write: true }))).dirty, true);
  });

  it('updates flags only in an entry that still holds what the walk read, and walks again when another agent changed it', () => {
    const va = 0x8000n;
    t.mapFirst(top, 4, va, 0x1000);
    const pte = t.firstEntryAddress(top, 4, va, 1);
    // Another agent rewrites the PTE right after each read of it: clears it once, or keeps toggling a bit.
    const racing = new RacingMemory(t.memory, pte);
    const racingWalker = new FirstStageWalker(racing, { addressWidth: HAW, fs1gp: true });
    let cleared = false;
    racing.rewrite = () => {
      if (!cleared) t.write64(pte, 0n);
      cleared = true;
    };
    faulted(racingWalker.walk(params(top), req(va)), FS_FR.NOT_PRESENT, 1);
    assert.equal(t.read64(pte), 0n, 'no A written into the entry the agent cleared');
    t.mapFirst(top, 4, va, 0x1000);
    racing.rewrite = () => t.write64(pte, t.read64(pte) ^ (1n << 9n));
    faulted(racingWalker.walk(params(top), req(va)), FS_FR.ACCESS, 4);
    assert.equal(t.read64(pte) & A, 0n);
  });

  it('traces every entry it reads, with the layout that decodes it and the flags it set', () => {
    const va = 0x60_1000n;
    t.mapFirst(top, 4, va, 0x8000);
    const trace = new WalkTrace();
    ok(walker.walk(params(top), req(va, { write: true }), undefined, trace));
    const steps = trace.records as WalkStep[];
    assert.deepEqual(
      steps.map((s) => s.level),
      [4, 3, 2, 1],
    );
    assert.deepEqual(
      steps.map((s) => s.flagsSet),
      [['A'], ['A'], ['A'], ['A', 'D']],
    );
    assert.equal(steps[0]!.layout, FIRST_STAGE_TOP_ENTRY);
    assert.equal(steps[3]!.layout, FIRST_STAGE_4K_LEAF);
    assert.equal(steps[3]!.entryAddress, t.firstEntryAddress(top, 4, va, 1));
    assert.equal(steps[3]!.value & A, 0n, 'the value as read, before the update');
    const again = new WalkTrace();
    ok(walker.walk(params(top), req(va), undefined, again));
    assert.ok(
      (again.records as WalkStep[]).every((s) => s.flagsSet === undefined),
      'nothing left to set',
    );
  });
});

// ---- an independent model of IA-32e paging, written from the CPU's rules: BigInt, recursive, its own memory ----

interface ModelConfig {
  readonly haw: number;
  readonly fs1gp: boolean;
  readonly levels: number;
  readonly wpe: boolean;
  readonly eafe: boolean;
  readonly top: bigint;
  readonly ramSize: bigint;
}

interface ModelRequest {
  readonly va: bigint;
  readonly write: boolean;
  readonly execute: boolean;
  readonly supervisor: boolean;
}

type ModelResult =
  | { kind: 'fault'; reason: number; level: number; entry?: bigint; reads: number }
  | { kind: 'page'; base: bigint; size: bigint; writable: boolean; executable: boolean; dirty: boolean; reads: number };

const ADDRESS_BITS = 0x000f_ffff_ffff_f000n;

function modelWalk(memory: Map<bigint, bigint>, cfg: ModelConfig, r: ModelRequest): ModelResult {
  const va = BigInt.asUintN(64, r.va);
  const signFrom = cfg.levels === 5 ? 56n : 47n;
  const upper = va >> signFrom;
  if (upper !== 0n && upper !== (1n << (64n - signFrom)) - 1n) return { kind: 'fault', reason: 0x80, level: cfg.levels, reads: 0 };

  const step = (level: number, table: bigint, rw: boolean, us: boolean, xd: boolean, reads: number): ModelResult => {
    const at = table + ((va >> BigInt(12 + 9 * (level - 1))) & 0x1ffn) * 8n;
    if (at + 8n > cfg.ramSize) return { kind: 'fault', reason: level === cfg.levels ? 0x73 : 0x70, level, entry: at, reads };
    const e = memory.get(at) ?? 0n;
    const has = (bit: number) => ((e >> BigInt(bit)) & 1n) === 1n;
    if (!has(0)) return { kind: 'fault', reason: 0x71, level, entry: at, reads: reads + 1 };
    const large = (level === 2 || level === 3) && has(7);
    const beyondWidth = (e & ((1n << 52n) - 1n)) >> BigInt(cfg.haw);
    const reserved =
      beyondWidth !== 0n ||
      (level >= 4 && has(7)) ||
      (level === 3 && large && (!cfg.fs1gp || ((e >> 13n) & 0x1ffffn) !== 0n)) ||
      (level === 2 && large && ((e >> 13n) & 0xffn) !== 0n);
    if (reserved) return { kind: 'fault', reason: 0x72, level, entry: at, reads: reads + 1 };
    const allRw = rw && has(1);
    const allUs = us && has(2);
    const anyXd = xd || has(63);
    let flags = cfg.eafe ? A | EA : A;
    if (level > 1 && !large) {
      memory.set(at, e | flags);
      return step(level - 1, e & ADDRESS_BITS, allRw, allUs, anyXd, reads + 1);
    }
    let refused = 0;
    if (!r.supervisor && !allUs) refused = 0x81;
    else if (r.execute && anyXd) refused = 0x82;
    else if (r.write && !allRw && (!r.supervisor || cfg.wpe)) refused = 0x85;
    if (refused === 0 && r.write) flags |= D;
    memory.set(at, e | flags);
    if (refused !== 0) return { kind: 'fault', reason: refused, level, entry: at, reads: reads + 1 };
    const size = 1n << BigInt(12 + 9 * (level - 1));
    return {
      kind: 'page',
      base: e & ADDRESS_BITS & ~(size - 1n),
      size,
      writable: r.supervisor ? !cfg.wpe || allRw : allUs && allRw,
      executable: !anyXd && (r.supervisor || allUs),
      dirty: ((e | flags) & D) !== 0n,
      reads: reads + 1,
    };
  };
  return step(cfg.levels, cfg.top, true, true, false, 0);
}

describe('first-stage walk: agrees with a model of CPU paging on random tables', () => {
  const RAM = 0x10_0000;
  const POOL = [0x1_0000, 0x1_1000, 0x1_2000, 0x1_3000, 0x1_4000, 0x1_5000];

  const target = (haw: number) =>
    fc.oneof(
      { weight: 30, arbitrary: fc.constantFrom(...POOL).map(BigInt) },
      { weight: 2, arbitrary: fc.constantFrom(0n, 0x20_0000n, 0x4000_0000n, 0x8_0000_0000n, 0x7_0000n) },
      { weight: 1, arbitrary: fc.constant(1n << BigInt(haw)) },
    );
  /** Large-page targets aligned to the page size of `level`, so PS leaves can translate rather than only fault. */
  const alignedTarget = (level: number) =>
    level === 3 ? fc.constantFrom(0n, 0x4000_0000n, 0x8_0000_0000n) : fc.constantFrom(0n, 0x20_0000n, 0x4000_0000n, 0x1_2340_0000n);
  /** True with the given percentage (unbiased: fast-check otherwise favours small integers). */
  const bit = (percent: number) => fc.noBias(fc.integer({ min: 0, max: 99 })).map((n) => n < percent);
  const entry = (haw: number, level: number) =>
    fc
      .record({
        target: target(haw),
        aligned: alignedTarget(level),
        useAligned: bit(70),
        p: bit(96),
        rw: bit(85),
        us: bit(90),
        ps: bit(level === 2 || level === 3 ? 25 : level === 1 ? 10 : 3),
        xd: bit(10),
        a: bit(30),
        d: bit(20),
        ignored: fc.constantFrom(0n, 1n << 9n, 1n << 11n, EA, 0x155n << 52n),
        reserved: fc.oneof({ weight: 30, arbitrary: fc.constant(0n) }, { weight: 1, arbitrary: fc.constantFrom(1n << 13n, 1n << 20n, 1n << 51n) }),
      })
      .map(
        (f) =>
          (f.ps && f.useAligned && (level === 2 || level === 3) ? f.aligned : f.target) |
          (f.p ? 1n : 0n) |
          (f.rw ? 2n : 0n) |
          (f.us ? 4n : 0n) |
          (f.ps ? 1n << 7n : 0n) |
          (f.xd ? 1n << 63n : 0n) |
          (f.a ? A : 0n) |
          (f.d ? D : 0n) |
          f.ignored |
          f.reserved,
      );
  const entriesPerPage = (haw: number) => fc.tuple(entry(haw, 1), entry(haw, 2), entry(haw, 3), entry(haw, 4), entry(haw, 5));

  const scenario = fc.constantFrom(39, 48).chain((haw) =>
    fc.record({
      haw: fc.constant(haw),
      levels: fc.constantFrom(4, 5),
      fs1gp: fc.boolean(),
      wpe: fc.boolean(),
      eafe: fc.boolean(),
      topIsPool: bit(95),
      indexes: fc.array(fc.nat(511), { minLength: 5, maxLength: 5 }),
      offset: fc.nat(0xfff),
      negative: fc.boolean(),
      breakCanonical: bit(8),
      write: fc.boolean(),
      execute: fc.boolean(),
      supervisor: fc.boolean(),
      walkEntries: fc.array(entriesPerPage(haw), { minLength: POOL.length, maxLength: POOL.length }),
      strayEntries: fc.array(fc.tuple(fc.nat(POOL.length - 1), fc.nat(511), entry(haw, 1)), { maxLength: 8 }),
    }),
  );

  function addressOf(s: { levels: number; indexes: number[]; offset: number; negative: boolean; breakCanonical: boolean }): bigint {
    let va = BigInt(s.offset);
    for (let level = 1; level <= s.levels; level++) va |= BigInt(s.indexes[level - 1]!) << BigInt(12 + 9 * (level - 1));
    const signBit = s.levels === 5 ? 56n : 47n;
    if (s.negative) va |= ((1n << 64n) - 1n) << signBit;
    else va &= (1n << signBit) - 1n;
    if (s.breakCanonical) va ^= 1n << 60n;
    return BigInt.asUintN(64, va);
  }

  it('gives the same translation or fault, and leaves the same A/EA/D flags in memory', () => {
    const seen = new Map<string, number>();
    fc.assert(
      fc.property(scenario, (s) => {
        const memory = new GuestMemory();
        const ram = new ArrayBuffer(RAM);
        memory.addRegion({ name: 'ram', start: 0, buffer: ram });
        const model = new Map<bigint, bigint>();
        const put = (address: number, value: bigint) => {
          memory.writeU64(address, value);
          model.set(BigInt(address), value);
        };
        const va = addressOf(s);
        // Every pool page gets an entry at each index the walk can use, so whichever page a level lands on, it
        // finds a random entry there (cycles included); a few stray entries land elsewhere.
        POOL.forEach((page, p) => {
          for (let level = 1; level <= 5; level++) put(page + indexOf(va, level) * 8, s.walkEntries[p]![level - 1]!);
        });
        for (const [p, index, value] of s.strayEntries) put(POOL[p]! + index * 8, value);
        const top = s.topIsPool ? POOL[0]! : 0x4000_0000;
        const cfg: ModelConfig = { haw: s.haw, fs1gp: s.fs1gp, levels: s.levels, wpe: s.wpe, eafe: s.eafe, top: BigInt(top), ramSize: BigInt(RAM) };
        const expected = modelWalk(model, cfg, { va, write: s.write, execute: s.execute, supervisor: s.supervisor });
        const outcome = expected.kind === 'fault' ? `0x${expected.reason.toString(16)}` : `page ${expected.size}`;
        seen.set(outcome, (seen.get(outcome) ?? 0) + 1);

        const walker = new FirstStageWalker(memory, { addressWidth: s.haw, fs1gp: s.fs1gp });
        const trace = new WalkTrace();
        const actual = walker.walk(
          { fsTable: top, fsLevels: s.levels, wpe: s.wpe, eafe: s.eafe, fpd: false },
          req(va, { write: s.write, execute: s.execute, supervisor: s.supervisor }),
          undefined,
          trace,
        );
        if (expected.kind === 'fault') {
          assert.equal(actual.ok, false, `model faults with 0x${expected.reason.toString(16)} at level ${expected.level}`);
          const f = actual as FaultRecord;
          assert.equal(f.reason, expected.reason);
          assert.equal(f.level, expected.level);
          if (expected.entry !== undefined) assert.equal(f.entryAddress, Number(expected.entry));
        } else {
          const page = ok(actual);
          assert.equal(page.address, Number(expected.base));
          assert.equal(page.pageSize, Number(expected.size));
          assert.equal(page.writable, expected.writable);
          assert.equal(page.executable, expected.executable);
          assert.equal(page.dirty, expected.dirty);
        }
        assert.equal(trace.records.length, expected.reads, 'one trace step per entry read');
        for (const [address, value] of model) assert.equal(memory.readU64(Number(address)), value, `entry at 0x${address.toString(16)}`);
      }),
      { numRuns: 1000 },
    );
    // The random tables must reach every outcome, or agreement would prove little.
    const wanted = ['page 4096', 'page 2097152', 'page 1073741824', '0x70', '0x71', '0x72', '0x73', '0x80', '0x81', '0x82', '0x85'];
    for (const outcome of wanted) assert.ok(seen.has(outcome), `no run ended in ${outcome}: ${JSON.stringify([...seen])}`);
  });
});
