/** Domains: table enumeration against the page-by-page walkers on random tables, bounded work, and the registry's sharing and once-per-domain invalidation. */
import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import sinon from 'sinon';
import { GuestMemory, type EntryWords } from '../../lib/memory/guest-memory';
import { MAPPING_ACCESS, type DomainMappingListener, type MappedRun, type VtdDomain } from '../../lib/vtd/address-space';
import { DomainRegistry, type DomainDescriptor } from '../../lib/vtd/domains';
import { FirstStageWalker, splitAddress } from '../../lib/vtd/first-stage-walk';
import { LegacyWalker } from '../../lib/vtd/legacy-walk';
import { MappingEnumerator, type FirstStageTables, type SecondStageTables } from '../../lib/vtd/mapping-enumerator';
import { NestedWalker } from '../../lib/vtd/nested-walk';
import { PAGE, TableMemory, type PageSize } from './paging-builder';

const HAW = 48;
const { READ, WRITE } = MAPPING_ACCESS;
const LEVEL_OF: Record<PageSize, number> = { '4k': 1, '2m': 2, '1g': 3 };
const PAGES_OF: Record<PageSize, number> = { '4k': 1, '2m': 512, '1g': 512 * 512 };

class CountingMemory extends GuestMemory {
  reads = 0;
  override readEntry(address: number, out: EntryWords): boolean {
    this.reads++;
    return super.readEntry(address, out);
  }
}

function enumeratorFor(memory: GuestMemory, maxEntryReads?: number): MappingEnumerator {
  return new MappingEnumerator(memory, {
    addressWidth: HAW,
    sllps: 0b11,
    features: new Set(['SMTS']),
    fs1gp: true,
    ...(maxEntryReads ? { maxEntryReads } : {}),
  });
}

function legacyWalker(memory: GuestMemory): LegacyWalker {
  return new LegacyWalker(
    memory,
    { addressWidth: HAW, sagaw: 0b110, sllps: 0b11, deviceTlb: false, passThrough: true, features: new Set(['SMTS']) },
    new Set(),
  );
}

function runAt(runs: readonly MappedRun[], page: number): MappedRun | undefined {
  let lo = 0;
  let hi = runs.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const run = runs[mid]!;
    if (page < run.iovaPage) hi = mid - 1;
    else if (page >= run.iovaPage + run.pages) lo = mid + 1;
    else return run;
  }
  return undefined;
}

/** Sorted, non-overlapping, maximal (no two neighbours that one run could hold). */
function assertWellFormed(runs: readonly MappedRun[], from: number, to: number): void {
  let end = from;
  let previous: MappedRun | undefined;
  for (const run of runs) {
    assert.ok(run.pages > 0 && run.access !== 0);
    assert.ok(run.iovaPage >= end, 'sorted and disjoint');
    if (previous !== undefined && previous.iovaPage + previous.pages === run.iovaPage && previous.gpaPage + previous.pages === run.gpaPage) {
      assert.notEqual(previous.access, run.access, 'maximal');
    }
    end = run.iovaPage + run.pages;
    previous = run;
  }
  assert.ok(end <= to);
}

/** What the enumeration says of one page: [gpa page, access] or undefined. */
function enumerated(runs: readonly MappedRun[], page: number): [number, number] | undefined {
  const run = runAt(runs, page);
  return run === undefined ? undefined : [run.gpaPage + (page - run.iovaPage), run.access];
}

/** Runs of [from, to) taken from `runs` and merged as an enumeration of that range would give them. */
function clipped(runs: readonly MappedRun[], from: number, to: number): MappedRun[] {
  const out: MappedRun[] = [];
  for (const run of runs) {
    const start = Math.max(from, run.iovaPage);
    const end = Math.min(to, run.iovaPage + run.pages);
    if (start < end) out.push({ iovaPage: start, gpaPage: run.gpaPage + (start - run.iovaPage), pages: end - start, access: run.access });
  }
  return out;
}

// ---- random tables ----

/** Index choices per level that collide often, so leaves share tables and large pages meet small ones. */
const indexAt = fc.constantFrom(0, 1, 2, 255, 256, 511);

interface LeafPlan {
  indices: number[];
  size: PageSize;
  outPage: number;
  a: boolean;
  b: boolean;
}

const leafPlan = (levels: number): fc.Arbitrary<LeafPlan> =>
  fc.record({
    indices: fc.array(indexAt, { minLength: levels, maxLength: levels }),
    size: fc.constantFrom<PageSize>('4k', '4k', '2m', '1g'),
    outPage: fc.integer({ min: 0, max: 2 ** 26 - 1 }),
    a: fc.boolean(),
    b: fc.boolean(),
  });

interface Mutation {
  leaf: number;
  level: number;
  op: number;
}
const mutation = fc.record({ leaf: fc.nat(), level: fc.integer({ min: 1, max: 5 }), op: fc.integer({ min: 0, max: 4 }) });

/** Input page of a leaf: indices from the top level down; `signExtendFrom` makes upper-half first-stage addresses canonical. */
function inputPage(indices: number[], levels: number, size: PageSize, signExtend: boolean): number {
  let address = 0n;
  for (let i = 0; i < levels; i++) {
    const level = levels - i;
    const index = level < LEVEL_OF[size] ? 0 : indices[i]!;
    address |= BigInt(index) << BigInt(12 + 9 * (level - 1));
  }
  const topBit = BigInt(12 + 9 * levels - 1);
  if (signExtend && (address >> topBit) & 1n) address = BigInt.asUintN(64, address | (~0n << topBit));
  return Number(address >> 12n);
}

/** Keeps leaves that fit together: none inside another's large page, none where a table already is. */
function placeLeaves(plans: LeafPlan[], levels: number, signExtend: boolean): Array<LeafPlan & { page: number }> {
  const leaves = new Set<string>();
  const tables = new Set<string>();
  const placed: Array<LeafPlan & { page: number }> = [];
  const prefix = (plan: LeafPlan, level: number): string => `${level}:${plan.indices.slice(0, levels - level + 1).join('.')}`;
  for (const plan of plans) {
    const leafLevel = LEVEL_OF[plan.size];
    let fits = !tables.has(prefix(plan, leafLevel));
    for (let level = leafLevel; level <= levels && fits; level++) if (leaves.has(prefix(plan, level))) fits = false;
    if (!fits) continue;
    leaves.add(prefix(plan, leafLevel));
    for (let level = leafLevel + 1; level <= levels; level++) tables.add(prefix(plan, level));
    placed.push({ ...plan, page: inputPage(plan.indices, levels, plan.size, signExtend) });
  }
  return placed;
}

/** Pages worth asking about: each leaf's edges, middle and neighbours. */
function candidates(leaves: Array<{ page: number; size: PageSize }>, limit: number): number[] {
  const pages = new Set<number>();
  for (const leaf of leaves) {
    const n = PAGES_OF[leaf.size];
    for (const p of [leaf.page - 1, leaf.page, leaf.page + (n >> 1), leaf.page + n - 1, leaf.page + n]) if (p >= 0 && p < limit) pages.add(p);
  }
  return [...pages];
}

function applyMutations(
  t: TableMemory,
  top: number,
  levels: number,
  leaves: Array<{ page: number; size: PageSize }>,
  mutations: Mutation[],
  bits: bigint[],
): void {
  if (leaves.length === 0) return;
  // Entries are located before any is changed: a changed address bit would send the search astray.
  const entries = mutations.map((m) => {
    const leaf = leaves[m.leaf % leaves.length]!;
    const level = Math.max(LEVEL_OF[leaf.size], Math.min(levels, m.level));
    return t.firstEntryAddress(top, levels, BigInt(leaf.page) * 4096n, level);
  });
  for (const [i, m] of mutations.entries()) {
    const entry = entries[i]!;
    const value = t.read64(entry);
    const bit = bits[m.op]!;
    t.write64(entry, m.op < 3 ? value & ~bit : value | bit);
  }
}

describe('mapping enumeration: second stage', () => {
  // Ops: clear R, clear W, clear R and W, set a reserved address bit (50), set PS (bit 7).
  const SS_BITS = [1n, 2n, 3n, 1n << 50n, 1n << 7n];

  it('agrees with LegacyWalker.walk page by page on random 3- and 4-level tables with 2 MiB and 1 GiB pages', () => {
    fc.assert(
      fc.property(
        fc
          .constantFrom(3, 4)
          .chain((levels) =>
            fc.tuple(
              fc.constant(levels),
              fc.array(leafPlan(levels), { maxLength: 24 }),
              fc.array(mutation, { maxLength: 6 }),
              fc.tuple(fc.nat(), fc.nat()),
            ),
          ),
        ([levels, plans, mutations, [cutA, cutB]]) => {
          const t = new TableMemory(4 * 1024 * 1024);
          const top = t.page();
          const leaves = placeLeaves(plans, levels, false);
          for (const leaf of leaves) {
            const aligned = leaf.outPage - (leaf.outPage % PAGES_OF[leaf.size]);
            t.mapSecond(top, levels, leaf.page * PAGE, aligned * PAGE, { size: leaf.size, read: leaf.a || !leaf.b, write: leaf.b });
          }
          applyMutations(t, top, levels, leaves, mutations, SS_BITS);
          const inputWidth = Math.min(12 + 9 * levels, HAW);
          const tables: SecondStageTables = { table: top, levels, inputWidth };
          const limit = 2 ** (inputWidth - 12);
          const runs = enumeratorFor(t.memory).secondStage(tables, 0, limit);
          assertWellFormed(runs, 0, limit);

          const walker = legacyWalker(t.memory);
          const context = { sid: 0, did: 1, tt: 0, fpd: false, levels, tableAddress: top, limit: 2 ** inputWidth };
          for (const page of candidates(leaves, limit)) {
            const read = walker.walk(context, page * PAGE, false);
            const write = walker.walk(context, page * PAGE, true);
            const access = (read.ok ? READ : 0) | (write.ok ? WRITE : 0);
            const found = enumerated(runs, page);
            assert.equal(found?.[1] ?? 0, access, `access of page 0x${page.toString(16)}`);
            const hit = read.ok ? read : write.ok ? write : undefined;
            if (hit !== undefined)
              assert.equal(found![0], hit.address / PAGE + (page % (hit.pageSize / PAGE)), `output of page 0x${page.toString(16)}`);
          }
          // Every page of every run is one the walker maps the same way (checked at its ends).
          for (const run of runs) {
            for (const page of [run.iovaPage, run.iovaPage + run.pages - 1]) {
              const walk = walker.walk(context, page * PAGE, (run.access & READ) === 0);
              assert.ok(walk.ok, `page 0x${page.toString(16)} enumerated but not walkable`);
            }
          }
          // A sub-range enumerates to the same runs as the whole, clipped.
          const from = cutA % limit;
          const to = Math.min(limit, from + 1 + (cutB % (4 * 512 * 512)));
          assert.deepEqual(enumeratorFor(t.memory).secondStage(tables, from, to - from), clipped(runs, from, to));
        },
      ),
      { numRuns: 60 },
    );
  });

  it('yields one run for a 1 GiB page and one for a 2 MiB page, clipped to the range asked', () => {
    const t = new TableMemory();
    const top = t.page();
    t.mapSecond(top, 4, 2 ** 30, 2 ** 31, { size: '1g' });
    t.mapSecond(top, 4, 2 ** 32, 2 ** 33, { size: '2m', write: false });
    const e = enumeratorFor(t.memory);
    const tables = { table: top, levels: 4, inputWidth: 48 };
    assert.deepEqual(e.secondStage(tables, 0, 2 ** 36), [
      { iovaPage: 2 ** 18, gpaPage: 2 ** 19, pages: 2 ** 18, access: READ | WRITE },
      { iovaPage: 2 ** 20, gpaPage: 2 ** 21, pages: 512, access: READ },
    ]);
    assert.deepEqual(e.secondStage(tables, 2 ** 18 + 5, 3), [{ iovaPage: 2 ** 18 + 5, gpaPage: 2 ** 19 + 5, pages: 3, access: READ | WRITE }]);
  });

  it('costs one read per entry of a table full of absent entries, and one read per level for one page', () => {
    const memory = new CountingMemory();
    const t = new TableMemory(4 * 1024 * 1024, 0x100000, memory);
    const top = t.page();
    const e = enumeratorFor(memory);
    assert.deepEqual(e.secondStage({ table: top, levels: 4, inputWidth: 48 }, 0, 2 ** 36), []);
    assert.equal(memory.reads, 512);
    t.mapSecond(top, 4, 0x1234_5000, 0x5000);
    memory.reads = 0;
    assert.equal(e.secondStage({ table: top, levels: 4, inputWidth: 48 }, 0, 2 ** 36).length, 1);
    assert.equal(memory.reads, 4 * 512);
    memory.reads = 0;
    assert.equal(e.secondStage({ table: top, levels: 4, inputWidth: 48 }, 0x12345, 1).length, 1);
    assert.equal(memory.reads, 4);
  });

  it('ends loops in bounded work, leaving out only pages the walker maps (a subset)', () => {
    const memory = new CountingMemory();
    const t = new TableMemory(4 * 1024 * 1024, 0x100000, memory);
    const self = t.page();
    for (let i = 0; i < 512; i++) t.write64(self + i * 8, BigInt(self) | 3n);
    const e = enumeratorFor(memory);
    assert.deepEqual(e.secondStage({ table: self, levels: 4, inputWidth: 48 }, 0, 2 ** 36), []);
    assert.equal(memory.reads, 512);
    assert.ok(e.stats.loops > 0);
    // The walker does map through the loop: the enumeration is a subset, never a superset.
    assert.ok(legacyWalker(memory).walk({ sid: 0, did: 1, tt: 0, fpd: false, levels: 4, tableAddress: self, limit: 2 ** 48 }, 0x1000, false).ok);

    // A two-table cycle: each level-3 visit finds the top again.
    const upper = t.page();
    const lower = t.page();
    for (let i = 0; i < 512; i++) {
      t.write64(upper + i * 8, BigInt(lower) | 3n);
      t.write64(lower + i * 8, BigInt(upper) | 3n);
    }
    memory.reads = 0;
    assert.deepEqual(e.secondStage({ table: upper, levels: 4, inputWidth: 48 }, 0, 2 ** 36), []);
    assert.ok(memory.reads <= 512 * 513);
  });

  it('stops a fan-out of shared tables at the work bound and reports it', () => {
    const memory = new CountingMemory();
    const t = new TableMemory(4 * 1024 * 1024, 0x100000, memory);
    const tables = [t.page(), t.page(), t.page(), t.page()];
    for (let level = 0; level < 4; level++) {
      for (let i = 0; i < 512; i++) t.write64(tables[level]! + i * 8, BigInt(level < 3 ? tables[level + 1]! : 0x200000 + i * PAGE) | 3n);
    }
    const e = enumeratorFor(memory, 10_000);
    const runs = e.secondStage({ table: tables[0]!, levels: 4, inputWidth: 48 }, 0, 2 ** 36);
    assert.ok(e.stats.truncated);
    assert.ok(memory.reads <= 10_000);
    assert.ok(runs.length > 0);
    const walker = legacyWalker(memory);
    for (const run of runs) {
      const walk = walker.walk({ sid: 0, did: 1, tt: 0, fpd: false, levels: 4, tableAddress: tables[0]!, limit: 2 ** 48 }, run.iovaPage * PAGE, true);
      assert.ok(walk.ok && walk.address / PAGE === run.gpaPage);
    }
  });
});

describe('mapping enumeration: first stage', () => {
  // Ops: clear P, clear R/W, clear U/S, set a reserved address bit (50), set PS (bit 7).
  const FS_BITS = [1n, 2n, 4n, 1n << 50n, 1n << 7n];

  it('agrees with FirstStageWalker page by page on random 4- and 5-level tables, both canonical halves', () => {
    fc.assert(
      fc.property(
        fc
          .constantFrom(4, 5)
          .chain((levels) =>
            fc.tuple(
              fc.constant(levels),
              fc.array(leafPlan(levels), { maxLength: 24 }),
              fc.array(mutation, { maxLength: 6 }),
              fc.record({ supervisor: fc.boolean(), wpe: fc.boolean() }),
            ),
          ),
        ([levels, plans, mutations, rights]) => {
          const t = new TableMemory(4 * 1024 * 1024);
          const top = t.page();
          const leaves = placeLeaves(plans, levels, true);
          for (const leaf of leaves) {
            const aligned = leaf.outPage - (leaf.outPage % PAGES_OF[leaf.size]);
            t.mapFirst(top, levels, BigInt(leaf.page) * 4096n, aligned * PAGE, { size: leaf.size, rw: leaf.a, us: leaf.b || leaf.a });
          }
          applyMutations(t, top, levels, leaves, mutations, FS_BITS);
          const tables: FirstStageTables = { table: top, levels, wpe: rights.wpe, eafe: false, supervisor: rights.supervisor };
          const runs = enumeratorFor(t.memory).firstStage(tables, 0, 2 ** 52);
          assertWellFormed(runs, 0, 2 ** 52);
          const walker = new FirstStageWalker(t.memory, { addressWidth: HAW, fs1gp: true });
          const params = { fsTable: top, fsLevels: levels, wpe: rights.wpe, eafe: false, fpd: false };
          for (const page of candidates(leaves, 2 ** 52)) {
            const request = (write: boolean) => ({ ...splitAddress(BigInt(page) * 4096n), write, execute: false, supervisor: rights.supervisor });
            const read = walker.walk(params, request(false));
            const write = walker.walk(params, request(true));
            const access = (read.ok ? READ : 0) | (write.ok ? WRITE : 0);
            const found = enumerated(runs, page);
            assert.equal(found?.[1] ?? 0, access, `access of page 0x${page.toString(16)}`);
            const hit = read.ok ? read : write.ok ? write : undefined;
            if (hit !== undefined) assert.equal(found![0], hit.address / PAGE + (page % (hit.pageSize / PAGE)));
          }
        },
      ),
      { numRuns: 60 },
    );
  });

  it('leaves out entries whose Accessed flag a walk would have to set in a read-only table', () => {
    const memory = new GuestMemory();
    const t = new TableMemory(4 * 1024 * 1024, 0x100000, memory);
    const top = t.page();
    t.mapFirst(top, 4, 0x5000n, 0x9000);
    const rom = new ArrayBuffer(4 * 1024 * 1024);
    new Uint8Array(rom).set(new Uint8Array(t.ram));
    const readOnly = new GuestMemory();
    readOnly.addRegion({ name: 'rom', start: 0, buffer: rom, readOnly: true });
    const tables = { table: top, levels: 4, wpe: false, eafe: false, supervisor: false };
    assert.equal(enumeratorFor(memory).firstStage(tables, 0, 2 ** 52).length, 1);
    assert.deepEqual(enumeratorFor(readOnly).firstStage(tables, 0, 2 ** 52), []);
    const walk = new FirstStageWalker(readOnly, { addressWidth: HAW, fs1gp: true }).walk(
      { fsTable: top, fsLevels: 4, wpe: false, eafe: false, fpd: false },
      { ...splitAddress(0x5000n), write: false, execute: false, supervisor: false },
    );
    assert.equal(walk.ok, false);
  });
});

describe('mapping enumeration: nested', () => {
  const CHUNK = 512;
  const OUT_BASE = 0x4000_0000 / PAGE;

  it('agrees with NestedWalker page by page: first-stage output and tables through a random second stage', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            va: fc.integer({ min: 0, max: 2 ** 20 - 1 }),
            large: fc.boolean(),
            out: fc.integer({ min: 0, max: 16 * CHUNK - 1 }),
            rw: fc.boolean(),
          }),
          { maxLength: 16 },
        ),
        fc.array(
          fc.record({
            kind: fc.constantFrom('absent', '2m', '4k'),
            read: fc.boolean(),
            write: fc.boolean(),
            host: fc.integer({ min: 1, max: 4000 }),
          }),
          { minLength: 16, maxLength: 16 },
        ),
        fc.array(fc.boolean(), { minLength: 2, maxLength: 2 }),
        fc.boolean(),
        (fsLeaves, chunks, tableChunkWritable, supervisor) => {
          const t = new TableMemory(4 * 1024 * 1024);
          const ssTop = t.page();
          const fsTop = t.page();
          // Guest tables live at GPA = HPA in the first 4 MiB; the second stage may make them read-only.
          tableChunkWritable.forEach((writable, i) => t.mapSecond(ssTop, 4, i * 2 ** 21, i * 2 ** 21, { size: '2m', write: writable }));
          chunks.forEach((chunk, i) => {
            const gpa = (OUT_BASE + i * CHUNK) * PAGE;
            const hpa = chunk.host * 2 ** 21;
            if (chunk.kind === '2m') t.mapSecond(ssTop, 4, gpa, hpa, { size: '2m', read: chunk.read, write: chunk.write });
            if (chunk.kind === '4k')
              for (const p of [0, 1, 2, 7, 511])
                t.mapSecond(ssTop, 4, gpa + p * PAGE, hpa + p * PAGE * 3, { read: chunk.read || p % 2 === 0, write: chunk.write });
          });
          const used = new Set<number>();
          const leaves: Array<{ page: number; size: PageSize }> = [];
          for (const leaf of fsLeaves) {
            const size: PageSize = leaf.large ? '2m' : '4k';
            const page = leaf.large ? leaf.va - (leaf.va % CHUNK) : leaf.va;
            const chunk = Math.floor(page / CHUNK);
            if (used.has(chunk)) continue;
            used.add(chunk);
            const out = leaf.large ? leaf.out - (leaf.out % CHUNK) : leaf.out;
            t.mapFirst(fsTop, 4, BigInt(page) * 4096n, (OUT_BASE + out) * PAGE, { size, rw: leaf.rw });
            leaves.push({ page, size });
          }
          const first: FirstStageTables = { table: fsTop, levels: 4, wpe: false, eafe: false, supervisor };
          const second: SecondStageTables = { table: ssTop, levels: 4, inputWidth: 48 };
          const runs = enumeratorFor(t.memory).nested(first, second, 0, 2 ** 52);
          assertWellFormed(runs, 0, 2 ** 52);
          const nested = new NestedWalker(legacyWalker(t.memory), new FirstStageWalker(t.memory, { addressWidth: HAW, fs1gp: true }));
          const params = { fsTable: fsTop, fsLevels: 4, wpe: false, eafe: false, fpd: false, ssTable: ssTop, ssLevels: 4, ssInputWidth: 48 };
          for (const page of candidates(leaves, 2 ** 52)) {
            const request = (write: boolean) => ({ ...splitAddress(BigInt(page) * 4096n), write, execute: false, supervisor });
            const read = nested.walk(params, request(false));
            const write = nested.walk(params, request(true));
            const access = (read.ok ? READ : 0) | (write.ok ? WRITE : 0);
            const found = enumerated(runs, page);
            assert.equal(found?.[1] ?? 0, access, `access of page 0x${page.toString(16)}`);
            const hit = read.ok ? read : write.ok ? write : undefined;
            if (hit !== undefined) assert.equal(found![0], hit.address / PAGE + (page % (hit.pageSize / PAGE)));
          }
        },
      ),
      { numRuns: 60 },
    );
  });
});

// ---- registry ----

class Tables {
  readonly t = new TableMemory(8 * 1024 * 1024);
  /** Second-stage tables per DID. */
  readonly tops = new Map<number, number>();

  top(did: number): number {
    let top = this.tops.get(did);
    if (top === undefined) this.tops.set(did, (top = this.t.page()));
    return top;
  }

  map(did: number, iovaPage: number, gpaPage: number): void {
    this.t.mapSecond(this.top(did), 4, iovaPage * PAGE, gpaPage * PAGE);
  }

  unmap(did: number, iovaPage: number): void {
    this.t.write64(this.t.firstEntryAddress(this.top(did), 4, BigInt(iovaPage) * 4096n, 1), 0n);
  }

  descriptor(did: number, pasid?: number): DomainDescriptor {
    return {
      kind: 'second-stage',
      did,
      withoutPasid: pasid === undefined,
      ...(pasid !== undefined ? { pasid } : {}),
      secondStage: { table: this.top(did), levels: 4, inputWidth: 48 },
    };
  }
}

class RecordingListener implements DomainMappingListener {
  readonly calls: Array<[number, number, readonly MappedRun[]]> = [];
  mappingsChanged(firstPage: number, pageCount: number, runs: readonly MappedRun[]): void {
    this.calls.push([firstPage, pageCount, runs]);
  }
}

describe('DomainRegistry', () => {
  let tables: Tables;
  let placement: Map<number, DomainDescriptor | undefined>;
  let enumerator: MappingEnumerator;
  let registry: DomainRegistry;

  beforeEach(() => {
    tables = new Tables();
    placement = new Map();
    enumerator = enumeratorFor(tables.t.memory);
    registry = new DomainRegistry({ enumerator, resolve: (sid, pasid) => placement.get(pasid === undefined ? sid : sid * 2 ** 20 + pasid) });
  });

  function watch(sid: number, pasid?: number): { domains: Array<VtdDomain | undefined>; stop: () => void } {
    const domains: Array<VtdDomain | undefined> = [];
    const stop = registry.watchDevice(sid, { domainChanged: (domain) => domains.push(domain) }, pasid);
    return { domains, stop };
  }

  it('tells a watcher its domain at once, and shares one domain object between devices with the same DID and tables', () => {
    tables.map(1, 0x10, 0x80);
    placement.set(0x08, tables.descriptor(1));
    placement.set(0x10, tables.descriptor(1));
    placement.set(0x18, tables.descriptor(2));
    const a = watch(0x08);
    const b = watch(0x10);
    const c = watch(0x18);
    const blocked = watch(0x20);
    assert.equal(a.domains.length, 1);
    assert.equal(a.domains[0], b.domains[0]);
    assert.notEqual(a.domains[0], c.domains[0]);
    assert.deepEqual(blocked.domains, [undefined]);
    assert.equal(registry.domainCount, 2);
    const domain = a.domains[0]!;
    assert.equal(domain.did, 1);
    assert.equal(domain.kind, 'second-stage');
    assert.deepEqual(domain.mappings(0, domain.pageLimit), [{ iovaPage: 0x10, gpaPage: 0x80, pages: 1, access: READ | WRITE }]);
  });

  it('reads a domain once per invalidation, however many devices and listeners it has', () => {
    const watches = [];
    for (let sid = 0; sid < 64; sid++) {
      placement.set(sid, tables.descriptor(1));
      watches.push(watch(sid));
    }
    placement.set(100, tables.descriptor(2));
    const other = watch(100).domains[0]!;
    const domain = watches[0]!.domains[0]!;
    assert.ok(watches.every((w) => w.domains[0] === domain));
    const listeners = [new RecordingListener(), new RecordingListener(), new RecordingListener()];
    for (const listener of listeners) domain.listen(listener);
    const otherListener = new RecordingListener();
    other.listen(otherListener);
    const spy = sinon.spy(domain, 'mappings');
    const otherSpy = sinon.spy(other, 'mappings');

    tables.map(1, 0x42, 0x99);
    registry.mappingsInvalidated(1, 0x40, 4);
    assert.equal(spy.callCount, 1);
    for (const listener of listeners)
      assert.deepEqual(listener.calls, [[0x40, 4, [{ iovaPage: 0x42, gpaPage: 0x99, pages: 1, access: READ | WRITE }]]]);
    assert.equal(otherListener.calls.length, 0);

    tables.unmap(1, 0x42);
    registry.mappingsInvalidated(1);
    assert.equal(spy.callCount, 2);
    for (const listener of listeners) assert.deepEqual(listener.calls[1], [0, domain.pageLimit, []]);

    registry.mappingsInvalidated(undefined);
    assert.equal(spy.callCount, 3, 'global: each domain once');
    assert.equal(otherSpy.callCount, 1);
    assert.equal(otherListener.calls.length, 1);
  });

  it('moves a device on devicesChanged within the scope named, and keeps the old domain while others use it', () => {
    placement.set(0x10, tables.descriptor(1));
    placement.set(0x13, tables.descriptor(1));
    const a = watch(0x10);
    const b = watch(0x13);
    const first = a.domains[0]!;
    placement.set(0x10, tables.descriptor(2));
    placement.set(0x13, tables.descriptor(2));
    registry.devicesChanged({ sid: 0x10, functionMask: 2 });
    assert.equal(a.domains.length, 2);
    assert.equal(a.domains[1]!.did, 2);
    assert.equal(b.domains.length, 1, 'function 3 is outside 0x10 with FM 2 (bits 2:1 ignored, bit 0 compared)');
    assert.ok(registry.domain(first.key) === first, 'device 0x13 still uses it');
    registry.devicesChanged({ sid: 0x10, functionMask: 3 });
    assert.equal(b.domains.length, 2);
    assert.equal(b.domains[1], a.domains[1]);
    assert.equal(registry.domain(first.key), undefined, 'dropped once nobody watches or listens');
    placement.delete(0x10);
    registry.devicesChanged();
    assert.equal(a.domains[2], undefined);
    registry.devicesChanged();
    assert.equal(a.domains.length, 3, 'no call when nothing moved');
  });

  it('drops domains once neither devices nor listeners hold them, and makes a new object after', () => {
    placement.set(1, tables.descriptor(1));
    const a = watch(1);
    const domain = a.domains[0]!;
    const unlisten = domain.listen(new RecordingListener());
    a.stop();
    assert.equal(registry.domainCount, 1, 'a listener keeps it');
    unlisten();
    assert.equal(registry.domainCount, 0);
    a.stop();
    unlisten();
    const again = watch(1).domains[0]!;
    assert.notEqual(again, domain);
    assert.equal(again.key, domain.key);
    registry.mappingsInvalidated(1);
  });

  it('lets a watcher stop from inside its callback and a listener unlisten from inside mappingsChanged', () => {
    placement.set(1, tables.descriptor(1));
    let stop: () => void = () => undefined;
    stop = registry.watchDevice(1, { domainChanged: () => stop() });
    placement.set(1, tables.descriptor(2));
    registry.devicesChanged();
    assert.equal(registry.domainCount, 0);
    placement.set(2, tables.descriptor(1));
    const domain = watch(2).domains[0]!;
    const calls: number[] = [];
    const unlisten = domain.listen({
      mappingsChanged: () => {
        calls.push(1);
        unlisten();
      },
    });
    domain.listen({ mappingsChanged: () => calls.push(2) });
    registry.mappingsInvalidated(1);
    registry.mappingsInvalidated(1);
    assert.deepEqual(calls, [1, 2, 2]);
  });

  it('reaches domains by PASID for PASID-based invalidations', () => {
    placement.set(1 * 2 ** 20 + 7, tables.descriptor(1, 7));
    placement.set(2 * 2 ** 20 + 8, {
      kind: 'second-stage',
      did: 1,
      pasid: 8,
      withoutPasid: false,
      secondStage: { table: tables.t.page(), levels: 4, inputWidth: 48 },
    });
    const seven = watch(1, 7).domains[0]!;
    const eight = watch(2, 8).domains[0]!;
    assert.notEqual(seven, eight);
    const l7 = new RecordingListener();
    const l8 = new RecordingListener();
    seven.listen(l7);
    eight.listen(l8);
    registry.mappingsInvalidated(1, 0, 1, 7);
    assert.equal(l7.calls.length, 1);
    assert.equal(l8.calls.length, 0);
    registry.mappingsInvalidated(1, 0, 1);
    assert.equal(l8.calls.length, 1);
  });

  it('re-reads nested and first-stage domains of the DID whole on a page-selective IOTLB invalidation (its range is guest-physical)', () => {
    const t = tables.t;
    const ssTop = t.page();
    const fsTop = t.page();
    // The guest's tables sit at GPA = HPA in the first 8 MiB; IOVA page 0x10 -> GPA page 0x10000 -> HPA page 0x100.
    for (let chunk = 0; chunk < 4; chunk++) t.mapSecond(ssTop, 4, chunk * 2 ** 21, chunk * 2 ** 21, { size: '2m' });
    t.mapFirst(fsTop, 4, 0x10n * 4096n, 0x10000 * PAGE, { rw: true });
    t.mapSecond(ssTop, 4, 0x10000 * PAGE, 0x100 * PAGE);
    const firstStage: FirstStageTables = { table: fsTop, levels: 4, wpe: false, eafe: false, supervisor: false };
    placement.set(1 * 2 ** 20 + 5, {
      kind: 'nested',
      did: 3,
      pasid: 5,
      withoutPasid: false,
      firstStage,
      secondStage: { table: ssTop, levels: 4, inputWidth: 48 },
    });
    placement.set(2 * 2 ** 20 + 6, { kind: 'first-stage', did: 3, pasid: 6, withoutPasid: false, firstStage });
    placement.set(3, tables.descriptor(3));
    const nested = watch(1, 5).domains[0]!;
    const firstOnly = watch(2, 6).domains[0]!;
    const second = watch(3).domains[0]!;
    const [nestedListener, firstListener, secondListener] = [new RecordingListener(), new RecordingListener(), new RecordingListener()];
    nested.listen(nestedListener);
    firstOnly.listen(firstListener);
    second.listen(secondListener);
    // The guest moves GPA page 0x10000 to HPA page 0x200 and invalidates that guest-physical page (type 2, DID 3).
    t.mapSecond(ssTop, 4, 0x10000 * PAGE, 0x200 * PAGE);
    registry.mappingsInvalidated(3, 0x10000, 1);
    assert.deepEqual(nestedListener.calls, [[0, nested.pageLimit, [{ iovaPage: 0x10, gpaPage: 0x200, pages: 1, access: READ | WRITE }]]]);
    assert.equal(firstListener.calls.length, 1);
    assert.deepEqual(firstListener.calls[0]!.slice(0, 2), [0, firstOnly.pageLimit]);
    assert.deepEqual(secondListener.calls, [[0x10000, 1, []]], 'a second-stage domain: only the pages named');
  });

  it('never maps the interrupt window: IOVAs of requests without PASID, and outputs of any request', () => {
    tables.map(1, 0xfee00, 0x50);
    tables.map(1, 0x60, 0xfee01);
    tables.map(1, 0x61, 0x51);
    placement.set(1, tables.descriptor(1));
    placement.set(1 * 2 ** 20 + 3, tables.descriptor(1, 3));
    const rid = watch(1).domains[0]!;
    const pasid = watch(1, 3).domains[0]!;
    assert.deepEqual(rid.mappings(0, rid.pageLimit), [{ iovaPage: 0x61, gpaPage: 0x51, pages: 1, access: READ | WRITE }]);
    assert.deepEqual(pasid.mappings(0, pasid.pageLimit), [
      { iovaPage: 0x61, gpaPage: 0x51, pages: 1, access: READ | WRITE },
      { iovaPage: 0xfee00, gpaPage: 0x50, pages: 1, access: READ | WRITE },
    ]);
  });

  it('maps guest RAM at IOVA = GPA for identity domains, read-only regions read-only, and re-reads them when regions change', () => {
    const memory = new GuestMemory();
    memory.addRegion({ name: 'low', start: 0, buffer: new ArrayBuffer(16 * PAGE) });
    memory.addRegion({ name: 'rom', start: 0x10_0000, buffer: new ArrayBuffer(2 * PAGE), readOnly: true });
    const identity = new DomainRegistry({
      enumerator: enumeratorFor(memory),
      resolve: () => ({ kind: 'identity', did: 0, inputWidth: 52, withoutPasid: true }),
    });
    const domains: Array<VtdDomain | undefined> = [];
    identity.watchDevice(1, { domainChanged: (d) => domains.push(d) });
    const domain = domains[0]!;
    assert.equal(domain.kind, 'identity');
    assert.deepEqual(domain.mappings(0, domain.pageLimit), [
      { iovaPage: 0, gpaPage: 0, pages: 16, access: READ | WRITE },
      { iovaPage: 0x100, gpaPage: 0x100, pages: 2, access: READ },
    ]);
    const listener = new RecordingListener();
    domain.listen(listener);
    identity.mappingsInvalidated(0);
    assert.equal(listener.calls.length, 0, 'IOTLB invalidations do not change RAM');
    memory.addRegion({ name: 'high', start: 0x20_0000, buffer: new ArrayBuffer(PAGE) });
    identity.regionsChanged();
    assert.equal(listener.calls.length, 1);
    assert.equal(listener.calls[0]![2].length, 3);
  });
});
