/** First-stage differential scenarios (played into QEMU 10.0 with x-flts and into viommu): fixed cases and a seeded random script. */
import type { QuirkId } from '../../lib/vtd/compat-quirks';
import { PAGE, outcome, type DmaOutcome, type OracleGuest } from './harness';
import { FirstStageGuest, type EntryFlags, type MappedEntries } from './first-stage-guest';

/**
 * Quirks every first-stage fault record may show: requests without PASID carry RID_PASID in QEMU (PP, PV), its
 * rights are checked entry by entry (FR), and 7.2's legacy codes (FR; 10.0 keeps the first-stage codes). Each
 * excuses only the fields it names.
 */
export const FAULT_QUIRKS: readonly QuirkId[] = [
  'scalable-rid-pasid-recorded-as-pasid',
  'first-stage-rights-checked-per-level',
  'scalable-faults-use-legacy-reasons',
];
/** Quirks a first-stage entry read back may show: which A and D flags a walk wrote. */
export const ENTRY_QUIRKS: readonly QuirkId[] = ['first-stage-rights-checked-per-level', 'first-stage-flags-written-only-when-all-clear'];

const MiB = 0x100000;
/** Where faulting loads go in edu's buffer, away from the bytes the scenario writes out. */
const SCRATCH = 3072;

/** Fixed cases: each mapping fresh (A and D clear), one access, the fault record and every entry of the walk read back. */
export async function fixedFirstStage(guest: OracleGuest): Promise<void> {
  const fs = new FirstStageGuest(guest);
  await fs.setUp();
  await guest.observe('GSTS');
  await guest.observe('ECAP');
  const probe = (label: string, quirks: readonly QuirkId[] = FAULT_QUIRKS) => guest.observeFault(label, { quirks });
  const entries = (label: string, mapped: MappedEntries) => fs.observeEntries(label, mapped, ENTRY_QUIRKS);
  const fresh = async (
    label: string,
    iova: number,
    gpa: number,
    direction: 'to-device' | 'to-ram',
    want: DmaOutcome,
    options: { size?: '4k' | '2m'; leaf?: EntryFlags; tables?: Partial<Record<2 | 3 | 4, EntryFlags>> } = {},
    bufferOffset = 0,
  ) => {
    const mapped = await fs.map(iova, gpa, options);
    await fs.invalidate();
    // A failed load leaves the buffer bytes it covers unknown: those go to a part of the buffer nothing writes out.
    const offset = direction === 'to-device' && want.kind !== 'moved' ? SCRATCH : bufferOffset;
    await guest.dma(direction, iova, 64, want, offset);
    await probe(label);
    await entries(label, mapped);
    return mapped;
  };

  await guest.fill(0x300000, 4 * PAGE, 1);
  await guest.fill(0x600000, 2 * MiB, 2);
  // Reads and writes through 4 KiB pages: A on every level, D on the written leaf only.
  await fresh('read of a 4 KiB page', 0x10000000, 0x300000, 'to-device', outcome.moved(0x300000));
  await fresh('write of a 4 KiB page', 0x10001000, 0x301000, 'to-ram', outcome.moved(0x301000));
  await fresh('read of a 2 MiB page', 0x20000000, 0x600000, 'to-device', outcome.moved(0x600000), { size: '2m' }, 128);
  await fresh('write of a 2 MiB page', 0x20200000, 0x800000, 'to-ram', outcome.moved(0x800000), { size: '2m' }, 128);
  // Flags already set stay; D is set by a write even where A was set before.
  await fresh('write with A set', 0x10002000, 0x302000, 'to-ram', outcome.moved(0x302000), { leaf: { A: 1 } });
  await fresh('read with A and D set', 0x10003000, 0x303000, 'to-device', outcome.moved(0x303000), { leaf: { A: 1, D: 1 } }, 256);
  await fresh('write back what was read', 0x10004000, 0x304000, 'to-ram', outcome.moved(0x304000), {}, 256);
  // A write through a translation an earlier read left in the IOTLB, its D still clear.
  const readFirst = await fresh('read before a write', 0x10006000, 0x306000, 'to-device', outcome.moved(0x306000), {}, 320);
  await guest.dma('to-ram', 0x10006000, 64, outcome.moved(0x306000), 320);
  await probe('then a write through the cached translation');
  await entries('then a write through the cached translation', readFirst);

  // Permission faults: the accessed flag of the entry that refused the access is the open question. Cases that
  // change a table entry get a gigabyte (or 512 GiB) of their own.
  const GiB = 0x4000_0000;
  await fresh('write to a read-only 4 KiB page', 0x11000000, 0x310000, 'to-ram', outcome.fault(0x310000), { leaf: { RW: 0 } });
  await fresh('write to a read-only 2 MiB page', 0x21000000, 0xa00000, 'to-ram', outcome.fault(0xa00000), { size: '2m', leaf: { RW: 0 } });
  await fresh('write to a read-only page with A set', 0x11005000, 0x31a000, 'to-ram', outcome.fault(0x31a000), { leaf: { RW: 0, A: 1 } });
  await fresh('read of a supervisor 4 KiB page', 0x11001000, 0x312000, 'to-device', outcome.fault(), { leaf: { US: 0 } });
  await fresh('write to a supervisor read-only page', 0x11002000, 0x314000, 'to-ram', outcome.fault(0x314000), { leaf: { US: 0, RW: 0 } });
  await fresh('write under a read-only PDE', 1 * GiB, 0x311000, 'to-ram', outcome.fault(0x311000), { tables: { 2: { RW: 0 } } });
  await fresh('read under a supervisor PDPTE', 2 * GiB, 0x313000, 'to-device', outcome.fault(), { tables: { 3: { US: 0 } } });
  await fresh('write under a read-only PML4E', 512 * GiB, 0x31b000, 'to-ram', outcome.fault(0x31b000), { tables: { 4: { RW: 0 } } });
  // Structure faults.
  await fresh('read of a not-present PTE', 0x11003000, 0x315000, 'to-device', outcome.fault(), { leaf: { P: 0 } });
  await fresh('read under a not-present PDE', 3 * GiB, 0x316000, 'to-device', outcome.fault(), { tables: { 2: { P: 0 } } });
  await fresh('read of a PTE with reserved bit 51', 0x11004000, 0x317000, 'to-device', outcome.fault(), { leaf: { raw: 1n << 51n } });
  await fresh('read of a 2 MiB page with reserved bit 13', 0x21200000, 0xc00000, 'to-device', outcome.fault(), {
    size: '2m',
    leaf: { raw: 1n << 13n },
  });
  // Which condition wins when a walk meets two.
  await fresh('read under a supervisor PDE with a not-present PTE', 4 * GiB, 0x318000, 'to-device', outcome.fault(), {
    tables: { 2: { US: 0 } },
    leaf: { P: 0 },
  });
  await fresh('write under a read-only PDE to a not-present PTE', 5 * GiB, 0x319000, 'to-ram', outcome.fault(0x319000), {
    tables: { 2: { RW: 0 } },
    leaf: { P: 0 },
  });
  await fresh('write to a read-only PTE with reserved bit 51', 0x11006000, 0x31c000, 'to-ram', outcome.fault(0x31c000), {
    leaf: { RW: 0, raw: 1n << 51n },
  });
  await fresh('read of a supervisor PTE with reserved bit 51', 0x11007000, 0x31d000, 'to-device', outcome.fault(), {
    leaf: { US: 0, raw: 1n << 51n },
  });
  await fresh('read under a supervisor PDE with reserved bit 51', 6 * GiB, 0x31e000, 'to-device', outcome.fault(), {
    tables: { 2: { US: 0, raw: 1n << 51n } },
  });
  // D without A, and a read of a page with D set but A clear.
  await fresh('write to a page with D set and A clear', 0x10005000, 0x305000, 'to-ram', outcome.moved(0x305000), { leaf: { D: 1 } });
  await fresh(
    'read of a 2 MiB page with D set and A clear',
    0x20400000,
    0xe00000,
    'to-device',
    outcome.moved(0xe00000),
    { size: '2m', leaf: { D: 1 } },
    1536,
  );
  await guest.dma('to-ram', 0x10005000, 64, outcome.moved(0x305000), 1536);

  // A non-canonical input address (bit 47 set, 63:48 clear).
  await guest.dma('to-device', 0x0000_8000_0000_0000n, 64, outcome.fault());
  await probe('non-canonical IOVA');

  // A leaf changed behind the IOTLB, then invalidated: the new page is used.
  const moved = await fs.map(0x13000000, 0x330000);
  await fs.invalidate();
  await guest.fill(0x330000, PAGE, 3);
  await guest.fill(0x331000, PAGE, 4);
  await guest.dma('to-device', 0x13000000, 64, outcome.moved(0x330000), 1024);
  await guest.dma('to-ram', 0x10001000, 64, outcome.moved(0x301000), 1024);
  await fs.map(0x13000000, 0x331000);
  await fs.invalidate();
  await guest.dma('to-device', 0x13000000, 64, outcome.moved(0x331000), 2048);
  await guest.dma('to-ram', 0x10001000, 64, outcome.moved(0x301000), 2048);
  await probe('after remapping a page');
  await entries('after remapping a page', moved);

  // The PASID entry's AW (a second-stage field) with a first-stage address above 2^39.
  await fs.map(0x80_0000_0000, 0x340000);
  await fs.pasidEntry({ AW: 1 });
  await fs.invalidate();
  await guest.fill(0x340000, PAGE, 6);
  const awQuirk: QuirkId = 'first-stage-canonical-check-uses-pasid-aw';
  const awCheck = guest.quirks.has(awQuirk);
  await guest.dma('to-device', 0x80_0000_0000, 64, awCheck ? outcome.fault() : outcome.moved(0x340000), awCheck ? SCRATCH : 2560);
  await probe('AW 1 in the PASID entry, IOVA above 2^39', [...FAULT_QUIRKS, awQuirk]);
  await fs.pasidEntry();
  await fs.invalidate();
  // Only where the read moved data is there something to write out; the DMA adds no observation.
  if (!awCheck) await guest.dma('to-ram', 0x10001000, 64, outcome.moved(0x301000), 2560);

  // FPD in the PASID entry: a qualified first-stage fault is not recorded.
  await fs.pasidEntry({ FPD: 1 });
  await fs.invalidate();
  await guest.dma('to-device', 0x11003000, 64, outcome.unrecorded('FPD is set in the PASID entry'));
  await probe('not-present PTE under FPD');
  await fs.pasidEntry();
  await fs.invalidate();
}

/** A read caches a read-only first-stage translation; a write then hits the cached entry. */
export async function cachedReadOnlyWrite(guest: OracleGuest): Promise<void> {
  const fs = new FirstStageGuest(guest);
  await fs.setUp();
  await guest.fill(0x320000, PAGE, 5);
  const cached = await fs.map(0x12000000, 0x320000, { leaf: { RW: 0 } });
  await fs.map(0x12001000, 0x321000);
  await fs.invalidate();
  await guest.dma('to-device', 0x12000000, 64, outcome.moved(0x320000));
  await guest.observeFault('read of a read-only page', { quirks: FAULT_QUIRKS });
  await fs.observeEntries('read of a read-only page', cached, ENTRY_QUIRKS);
  await guest.dma(
    'to-ram',
    0x12000000,
    64,
    outcome.byQuirk(
      'iotlb-hit-without-permission-not-recorded',
      outcome.unrecorded('a permission miss on a cached translation', 0x320000),
      outcome.fault(0x320000),
    ),
  );
  await guest.observeFault('then a write to it', { quirks: [...FAULT_QUIRKS, 'iotlb-hit-without-permission-not-recorded'] });
  await fs.observeEntries('then a write to it', cached, ENTRY_QUIRKS);
  await guest.dma('to-ram', 0x12001000, 64, outcome.moved(0x321000));
}

// ---- randomized ----

/** mulberry32: small and seedable; the script is a function of the seed alone, so each peer replays it. */
export class FirstStageRandom {
  private state: number;
  constructor(readonly seed: number) {
    this.state = seed >>> 0;
  }

  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  }

  int(below: number): number {
    return Math.floor(this.next() * below);
  }

  chance(p: number): boolean {
    return this.next() < p;
  }
}

interface RandomMapping {
  readonly iova: number;
  readonly gpa: number;
  readonly size: '4k' | '2m';
  /** Flags of the PDPTE, PDE (4 KiB pages only) and leaf; the PML4E is always P, RW, US. */
  pdpte: EntryFlags;
  pde: EntryFlags;
  leaf: EntryFlags;
  entries: MappedEntries;
  /** A read left a translation without write permission in QEMU's IOTLB (cleared by each invalidation). */
  cachedReadOnly: boolean;
}

export const RANDOM_MAPPINGS = 10;
export const RANDOM_OPERATIONS = 28;
/** 64-byte buffer slots for the loads; all are written out through the sink before any is reused. */
const SLOTS = 2048 / 64;
const SINK_IOVA = 0x0800_0000;
const SINK_GPA = 0x0f00_0000;
const RESERVED_4K = 1n << 51n;
const RESERVED_2M = 1n << 13n;

function randomFlags(r: FirstStageRandom, leaf: boolean, size: '4k' | '2m'): EntryFlags {
  const flags: EntryFlags = {
    P: r.chance(leaf ? 0.9 : 0.95) ? 1 : 0,
    RW: r.chance(leaf ? 0.6 : 0.85) ? 1 : 0,
    US: r.chance(leaf ? 0.85 : 0.92) ? 1 : 0,
    A: r.chance(0.3) ? 1 : 0,
  };
  if (leaf) flags.D = r.chance(0.25) ? 1 : 0;
  if (r.chance(0.05)) flags.raw = leaf && size === '2m' ? RESERVED_2M : RESERVED_4K;
  return flags;
}

/** Whether a user request (as edu's are) gets through the mapping, by the IA-32e rules on the complete walk. */
function allows(m: RandomMapping, write: boolean): boolean {
  const walk = m.size === '4k' ? [m.pdpte, m.pde, m.leaf] : [m.pdpte, m.leaf];
  if (walk.some((e) => e.P === 0 || e.raw !== undefined)) return false;
  if (walk.some((e) => e.US === 0)) return false;
  return !write || walk.every((e) => e.RW !== 0);
}

/**
 * A random first-stage script: RANDOM_MAPPINGS mappings (4 KiB and 2 MiB), each in a gigabyte of its own, with
 * random P, R/W, U/S, A, D and the odd reserved bit at the PDPTE, PDE and leaf; then RANDOM_OPERATIONS reads,
 * writes and leaf rewrites (each followed by an invalidation). After every access: FSTS, the fault record and
 * every entry of the walk read back.
 */
export async function randomFirstStage(guest: OracleGuest, r: FirstStageRandom): Promise<void> {
  const fs = new FirstStageGuest(guest);
  await fs.setUp();
  const GiB = 0x4000_0000;
  await fs.map(SINK_IOVA, SINK_GPA);
  const mappings: RandomMapping[] = [];
  for (let i = 0; i < RANDOM_MAPPINGS; i++) {
    const size = r.chance(0.35) ? '2m' : '4k';
    const iova = (i + 1) * GiB + r.int(512) * 0x20_0000 + (size === '4k' ? r.int(512) * PAGE : 0);
    const gpa = size === '2m' ? 0x0200_0000 + i * 0x20_0000 : 0x0100_0000 + i * PAGE;
    const m: RandomMapping = {
      iova,
      gpa,
      size,
      pdpte: randomFlags(r, false, size),
      pde: randomFlags(r, false, size),
      leaf: randomFlags(r, true, size),
      entries: { addresses: [], names: [] },
      cachedReadOnly: false,
    };
    m.entries = await fs.map(iova, gpa, { size, leaf: m.leaf, tables: size === '4k' ? { 3: m.pdpte, 2: m.pde } : { 3: m.pdpte } });
    mappings.push(m);
  }
  await fs.invalidate();
  // The buffer's first half, known: loaded from the sink page once.
  await guest.fill(SINK_GPA, PAGE, 9);
  await guest.dma('to-device', SINK_IOVA, 2048, outcome.moved(SINK_GPA));
  await guest.dma('to-ram', SINK_IOVA, 2048, outcome.moved(SINK_GPA));
  const iotlbQuirk: QuirkId = 'iotlb-hit-without-permission-not-recorded';
  let slot = 0;
  for (let op = 0; op < RANDOM_OPERATIONS; op++) {
    const m = mappings[r.int(mappings.length)]!;
    const label = `op ${op}`;
    if (r.chance(0.15)) {
      // Rewrite the leaf with new flags, then invalidate: the next access walks the new entry.
      m.leaf = randomFlags(r, true, m.size);
      await fs.map(m.iova, m.gpa, { size: m.size, leaf: m.leaf });
      await fs.invalidate();
      for (const each of mappings) each.cachedReadOnly = false;
      continue;
    }
    const write = r.chance(0.5);
    const count = 1 + r.int(64);
    const pageBytes = m.size === '2m' ? 0x20_0000 : PAGE;
    const offset = r.int(pageBytes - count + 1);
    const iova = m.iova + offset;
    const gpa = m.gpa + offset;
    const allowed = allows(m, write);
    let want: DmaOutcome = allowed ? outcome.moved(gpa) : write ? outcome.fault(gpa) : outcome.fault();
    if (write && m.cachedReadOnly && !allowed) {
      want = outcome.byQuirk(iotlbQuirk, outcome.unrecorded('a write hitting a cached read-only translation', gpa), want);
    }
    if (slot === SLOTS) {
      slot = 0;
    }
    const bufferOffset = !write && !allowed ? SCRATCH : slot * 64;
    await guest.dma(write ? 'to-ram' : 'to-device', iova, count, want, bufferOffset);
    if (!write && allowed) {
      // What the load moved goes out through the sink at once, so no load is left unchecked.
      await guest.dma('to-ram', SINK_IOVA, count, outcome.moved(SINK_GPA), bufferOffset);
      slot++;
      if (allows(m, false) && !allows(m, true)) m.cachedReadOnly = true;
    }
    if (write && allowed) m.cachedReadOnly = false;
    await guest.observeFault(`${label}: ${write ? 'write' : 'read'} of ${count} at 0x${iova.toString(16)}`, {
      quirks: write && m.cachedReadOnly ? [...FAULT_QUIRKS, iotlbQuirk] : FAULT_QUIRKS,
    });
    await fs.observeEntries(label, m.entries, ENTRY_QUIRKS);
  }
}

/**
 * A page-selective IOTLB invalidation (register) of another page of the domain: the spec drops every first-stage
 * translation of the domain (the IOTLB invalidation's page-selective-within-domain granularity: "IOTLB entries
 * caching first-stage (PGTT=001b) or nested (PGTT=011b) mappings associated with the specified domain-id are
 * invalidated"), so a page moved behind the IOTLB shows at once.
 */
export async function pageSelectiveInvalidation(guest: OracleGuest): Promise<void> {
  const fs = new FirstStageGuest(guest);
  await fs.setUp();
  const sink = await fs.map(0x10001000, 0x301000);
  const psi = await fs.map(0x14000000, 0x350000);
  await fs.map(0x14100000, 0x352000);
  await fs.invalidate();
  await guest.fill(0x350000, PAGE, 7);
  await guest.fill(0x351000, PAGE, 8);
  await guest.dma('to-device', 0x14000000, 64, outcome.moved(0x350000));
  await guest.dma('to-ram', 0x10001000, 64, outcome.moved(0x301000));
  await fs.map(0x14000000, 0x351000);
  await guest.setReg('IVA', 0x14100000n);
  await guest.setReg('IOTLB', 0xf000000000000000n | (3n << 32n));
  await guest.observe('IOTLB', 'IOTLB after a page-selective invalidation');
  await guest.dma('to-device', 0x14000000, 64, outcome.moved(0x351000), 64);
  await guest.dma('to-ram', 0x10001000, 64, outcome.moved(0x301000), 64);
  await fs.observeEntries('after a page-selective invalidation of another page', psi, ENTRY_QUIRKS);
  await fs.observeEntries('the sink', sink, ENTRY_QUIRKS);
}
