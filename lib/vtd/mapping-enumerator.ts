/** Mapping enumeration: the present mappings of an IOVA page range, read table by table from the guest's paging structures with bounded work. */

import type { EntryWords, GuestMemory } from '../memory/guest-memory';
import { getField64, reservedWords, type Field } from './bitfield';
import { MAPPING_ACCESS, type MappedRun } from './address-space';
import { wordMask } from './register-bits';
import {
  FIRST_STAGE_1G_LEAF,
  FIRST_STAGE_2M_LEAF,
  FIRST_STAGE_4K_LEAF,
  FIRST_STAGE_TABLE_ENTRY,
  FIRST_STAGE_TOP_ENTRY,
  SECOND_STAGE_1G_LEAF,
  SECOND_STAGE_2M_LEAF,
  SECOND_STAGE_4K_LEAF,
  SECOND_STAGE_TABLE_ENTRY,
  SECOND_STAGE_TOP_ENTRY,
} from './structures';
import { INTERRUPT_WINDOW_END, INTERRUPT_WINDOW_START, PAGE_BYTES, PAGE_SHIFT } from '../memory/geometry';

/*
 * The rules are the walkers' (legacy-walk.ts, first-stage-walk.ts, nested-walk.ts), applied to whole tables
 * instead of one address: an entry the walker would stop at (not present, reserved bits, unreadable, a large page
 * the unit does not support) removes its whole span, so absent subtrees cost one read. What differs on purpose:
 * - no Accessed/Dirty flag is written (nothing is accessed yet); an entry whose flags a walk would have to set,
 *   in a table the walk could not write, counts as not mapped, as the walk would fault there;
 * - a table that is its own ancestor on the current path (a loop) is not entered, and an enumeration stops after
 *   `maxEntryReads` entry reads. Both leave pages out, never add any: a shadow built from the result maps a
 *   subset of what the guest allows, and the pages left out still work by message, translated one by one.
 */

const PAGE = PAGE_BYTES;
const BITS_PER_LEVEL = 9;
const ENTRIES = 512;
const ENTRY_BYTES = 8;
/** Page numbers: the whole 64-bit input space is 2^52 pages. */
export const INPUT_SPACE_PAGES = 2 ** 52;
/** Default work bound of one enumeration: about a second of reads, and 16 GiB of 4 KiB mappings. */
const DEFAULT_MAX_ENTRY_READS = 2 ** 22;

export const INTERRUPT_WINDOW_FIRST_PAGE = INTERRUPT_WINDOW_START / PAGE;
export const INTERRUPT_WINDOW_END_PAGE = INTERRUPT_WINDOW_END / PAGE;

/** Pages one entry at `level` covers. */
function spanPages(level: number): number {
  return 2 ** (BITS_PER_LEVEL * (level - 1));
}

/** Second-stage tables as a context or PASID entry names them. */
export interface SecondStageTables {
  readonly table: number;
  readonly levels: number;
  /** Inputs at or above 2^inputWidth are beyond the stage: min(AGAW, host address width). */
  readonly inputWidth: number;
}

/** First-stage tables as a PASID entry names them, with the privilege of the requests that use them. */
export interface FirstStageTables {
  readonly table: number;
  /** 4 or 5. */
  readonly levels: number;
  readonly wpe: boolean;
  readonly eafe: boolean;
  /** Requests are supervisor requests (RID_PRIV, or the PASID's privilege): U/S does not restrict them. */
  readonly supervisor: boolean;
}

export interface MappingEnumeratorOptions {
  /** Host address width (aw-bits): reserved address bits. */
  readonly addressWidth: number;
  /** CAP.SLLPS: bit 0 2 MiB, bit 1 1 GiB second-stage pages. */
  readonly sllps: number;
  /** ECAP features that make optional second-stage bits legal (config.enabledFeatures). */
  readonly features: ReadonlySet<string>;
  /** CAP.FS1GP: 1 GiB first-stage pages. */
  readonly fs1gp: boolean;
  readonly maxEntryReads?: number;
}

/** What the last enumeration cost. */
export interface EnumerationStats {
  entryReads: number;
  /** The work bound stopped it: pages after the stop were left out. */
  truncated: boolean;
  /** Loops were met and left out. */
  loops: number;
}

/** Receives mappings in increasing IOVA order. */
type Sink = (iovaPage: number, gpaPage: number, pages: number, access: number) => void;

/** Collects runs, merging each with the one before when both addresses continue it with the same access. */
class RunList {
  readonly runs: Array<{ iovaPage: number; gpaPage: number; pages: number; access: number }> = [];

  readonly add: Sink = (iovaPage, gpaPage, pages, access) => {
    if (access === 0 || pages <= 0) return;
    const last = this.runs[this.runs.length - 1];
    if (last !== undefined && last.access === access && last.iovaPage + last.pages === iovaPage && last.gpaPage + last.pages === gpaPage) {
      last.pages += pages;
      return;
    }
    this.runs.push({ iovaPage, gpaPage, pages, access });
  };
}

const SS_R = wordMask(SECOND_STAGE_TABLE_ENTRY.f.R);
const SS_W = wordMask(SECOND_STAGE_TABLE_ENTRY.f.W);
const SS_PS = wordMask(SECOND_STAGE_TABLE_ENTRY.f.PS);
const SS_LEAF_ADDRESS: readonly Field[] = [SECOND_STAGE_4K_LEAF.f.ADDR, SECOND_STAGE_2M_LEAF.f.ADDR, SECOND_STAGE_1G_LEAF.f.ADDR];
const SS_TABLE_ADDRESS = SECOND_STAGE_TABLE_ENTRY.f.ADDR;

const FS_P = wordMask(FIRST_STAGE_TABLE_ENTRY.f.P);
const FS_RW = wordMask(FIRST_STAGE_TABLE_ENTRY.f.RW);
const FS_US = wordMask(FIRST_STAGE_TABLE_ENTRY.f.US);
const FS_A = wordMask(FIRST_STAGE_TABLE_ENTRY.f.A);
const FS_EA = wordMask(FIRST_STAGE_TABLE_ENTRY.f.EA);
const FS_PS = wordMask(FIRST_STAGE_TABLE_ENTRY.f.PS);
const FS_D = wordMask(FIRST_STAGE_4K_LEAF.f.D);
const FS_LEAF_ADDRESS: readonly Field[] = [FIRST_STAGE_4K_LEAF.f.ADDR, FIRST_STAGE_2M_LEAF.f.ADDR, FIRST_STAGE_1G_LEAF.f.ADDR];
const FS_TABLE_ADDRESS = FIRST_STAGE_TABLE_ENTRY.f.ADDR;

const { READ, WRITE } = MAPPING_ACCESS;

/** Where first-stage tables are read: host address of a table page and whether flags may be written into it. */
interface TablePage {
  host: number;
  writable: boolean;
}

/** A stop signal thrown through the recursion when the work bound is reached (caught in this file only). */
class WorkBoundReached {}
const WORK_BOUND = new WorkBoundReached();

export class MappingEnumerator {
  readonly stats: EnumerationStats = { entryReads: 0, truncated: false, loops: 0 };
  private readonly maxEntryReads: number;
  private readonly ssTopReserved: Uint32Array;
  private readonly ssTableReserved: Uint32Array;
  private readonly ssLeafReserved: readonly Uint32Array[];
  private readonly fsTopReserved: Uint32Array;
  private readonly fsTableReserved: Uint32Array;
  private readonly fsLeafReserved: readonly Uint32Array[];
  private readonly entry: EntryWords = { lo: 0, hi: 0 };
  /** Tables on the current path of each stage, by depth (a loop re-enters one of them). */
  private readonly ssPath: number[] = [];
  private readonly fsPath: number[] = [];

  constructor(
    private readonly memory: GuestMemory,
    private readonly options: MappingEnumeratorOptions,
  ) {
    this.maxEntryReads = options.maxEntryReads ?? DEFAULT_MAX_ENTRY_READS;
    const ss = { addressWidth: options.addressWidth, features: options.features };
    this.ssTopReserved = reservedWords(SECOND_STAGE_TOP_ENTRY, ss);
    this.ssTableReserved = reservedWords(SECOND_STAGE_TABLE_ENTRY, ss);
    this.ssLeafReserved = [SECOND_STAGE_4K_LEAF, SECOND_STAGE_2M_LEAF, SECOND_STAGE_1G_LEAF].map((t) => reservedWords(t, ss));
    const fs = { addressWidth: options.addressWidth };
    this.fsTopReserved = reservedWords(FIRST_STAGE_TOP_ENTRY, fs);
    this.fsTableReserved = reservedWords(FIRST_STAGE_TABLE_ENTRY, fs);
    this.fsLeafReserved = [FIRST_STAGE_4K_LEAF, FIRST_STAGE_2M_LEAF, FIRST_STAGE_1G_LEAF].map((t) => reservedWords(t, fs));
  }

  /** Input pages of a second stage (legacy, or PGTT second-stage). */
  static secondStagePages(tables: SecondStageTables): number {
    return 2 ** (tables.inputWidth - PAGE_SHIFT);
  }

  /** Second-stage mappings of IOVA pages [firstPage, firstPage + pageCount): legacy and scalable second-stage. */
  secondStage(tables: SecondStageTables, firstPage: number, pageCount: number): MappedRun[] {
    const list = new RunList();
    this.run(() => this.visitSecondStage(tables, firstPage, firstPage + pageCount, list.add));
    return list.runs;
  }

  /** First-stage mappings (PGTT first-stage); page numbers of the upper canonical half are those of the 64-bit address. */
  firstStage(tables: FirstStageTables, firstPage: number, pageCount: number): MappedRun[] {
    const list = new RunList();
    this.run(() => this.visitFirstStage(tables, undefined, firstPage, firstPage + pageCount, list.add));
    return list.runs;
  }

  /** Nested mappings: first-stage tables and output translated through the second stage. */
  nested(first: FirstStageTables, second: SecondStageTables, firstPage: number, pageCount: number): MappedRun[] {
    const list = new RunList();
    this.run(() => this.visitFirstStage(first, second, firstPage, firstPage + pageCount, list.add));
    return list.runs;
  }

  /** IOVA = GPA over guest RAM (translation off, pass-through), below `pageLimit`; read-only regions map read-only. */
  identity(pageLimit: number, firstPage: number, pageCount: number): MappedRun[] {
    const list = new RunList();
    const from = Math.max(0, firstPage);
    const to = Math.min(pageLimit, firstPage + pageCount);
    this.stats.entryReads = 0;
    this.stats.truncated = false;
    this.stats.loops = 0;
    for (const region of this.memory.regions) {
      const start = Math.max(from, Math.ceil(region.start / PAGE));
      const end = Math.min(to, Math.floor(region.end / PAGE));
      if (start < end) list.add(start, start, end - start, region.readOnly ? READ : READ | WRITE);
    }
    return list.runs;
  }

  private run(visit: () => void): void {
    this.stats.entryReads = 0;
    this.stats.truncated = false;
    this.stats.loops = 0;
    try {
      visit();
    } catch (error) {
      if (error !== WORK_BOUND) throw error;
      this.stats.truncated = true;
    }
  }

  /** Reads one entry into this.entry, counting it against the work bound; false when RAM does not back it. */
  private read(address: number): boolean {
    if (this.stats.entryReads >= this.maxEntryReads) throw WORK_BOUND;
    this.stats.entryReads++;
    return this.memory.readEntry(address, this.entry);
  }

  private entersLoop(path: number[], table: number, depth: number): boolean {
    for (let i = 0; i < depth; i++) {
      if (path[i] === table) {
        this.stats.loops++;
        return true;
      }
    }
    return false;
  }

  // ---- second stage ----

  private visitSecondStage(tables: SecondStageTables, from: number, to: number, sink: Sink): void {
    const limit = MappingEnumerator.secondStagePages(tables);
    const end = Math.min(to, limit);
    if (from < 0) from = 0;
    if (from >= end) return;
    this.secondStageTable(tables.table, tables.levels, tables.levels, 0, from, end, true, true, sink);
  }

  /** Entries of the table at `level` whose span starts at `base`, over pages [from, to) (inside that span). */
  private secondStageTable(
    table: number,
    level: number,
    top: number,
    base: number,
    from: number,
    to: number,
    readable: boolean,
    writable: boolean,
    sink: Sink,
  ): void {
    const depth = top - level;
    if (this.entersLoop(this.ssPath, table, depth)) return;
    this.ssPath[depth] = table;
    const span = spanPages(level);
    const first = Math.floor((from - base) / span);
    const last = Math.floor((to - 1 - base) / span);
    const e = this.entry;
    for (let index = first; index <= last; index++) {
      if (!this.read(table + index * ENTRY_BYTES)) continue;
      const lo = e.lo;
      const hi = e.hi;
      if ((lo & (SS_R | SS_W)) === 0) continue;
      const large = (level === 2 || level === 3) && (lo & SS_PS) !== 0;
      let reserved: Uint32Array;
      if (level === 1) reserved = this.ssLeafReserved[0]!;
      else if (large) {
        if (((this.options.sllps >>> (level - 2)) & 1) === 0) continue;
        reserved = this.ssLeafReserved[level - 1]!;
      } else reserved = level >= 4 ? this.ssTopReserved : this.ssTableReserved;
      if ((lo & reserved[0]!) !== 0 || (hi & reserved[1]!) !== 0) continue;
      const r = readable && (lo & SS_R) !== 0;
      const w = writable && (lo & SS_W) !== 0;
      if (!r && !w) continue;
      const entryBase = base + index * span;
      const start = Math.max(from, entryBase);
      const end = Math.min(to, entryBase + span);
      if (level === 1 || large) {
        const gpaBase = getField64(lo, hi, SS_LEAF_ADDRESS[level - 1]!) * 2 ** (SS_LEAF_ADDRESS[level - 1]!.addressShift! - PAGE_SHIFT);
        sink(start, gpaBase + (start - entryBase), end - start, (r ? READ : 0) | (w ? WRITE : 0));
        continue;
      }
      const next = getField64(lo, hi, SS_TABLE_ADDRESS) * PAGE;
      this.secondStageTable(next, level - 1, top, entryBase, start, end, r, w, sink);
    }
  }

  /** One second-stage translation of a guest page (nested table reads): host page and rights, or undefined. */
  private secondStagePage(tables: SecondStageTables, gpaPage: number): { hostPage: number; access: number } | undefined {
    let found: { hostPage: number; access: number } | undefined;
    this.visitSecondStage(tables, gpaPage, gpaPage + 1, (_iova, gpa, _pages, access) => {
      found = { hostPage: gpa, access };
    });
    return found;
  }

  // ---- first stage and nested ----

  private visitFirstStage(tables: FirstStageTables, second: SecondStageTables | undefined, from: number, to: number, sink: Sink): void {
    const levels = tables.levels;
    const top = this.firstStageTablePage(tables.table, second);
    if (top === undefined) return;
    // Index i of the top table covers pages i * span onwards for the lower half and, for i >= 256, the sign-extended
    // upper half: 2^52 - (512 - i) * span. Visit each half with its own base so the arithmetic stays linear.
    const halfEntries = ENTRIES / 2;
    const span = spanPages(levels);
    const halves: Array<[number, number]> = [
      [0, 0],
      [INPUT_SPACE_PAGES - ENTRIES * span, halfEntries],
    ];
    const output = second === undefined ? sink : this.throughSecondStage(second, sink);
    for (const [base, firstIndex] of halves) {
      const start = Math.max(from, base + firstIndex * span);
      const end = Math.min(to, base + (firstIndex + halfEntries) * span);
      if (start >= end) continue;
      this.firstStageTable(tables, second, top, levels, base, start, end, true, true, output);
    }
  }

  /** Where the first-stage table at `table` is read, or undefined when the walk could not read it. */
  private firstStageTablePage(table: number, second: SecondStageTables | undefined): TablePage | undefined {
    if (second === undefined) {
      const region = this.memory.regionAt(table);
      return { host: table, writable: region !== undefined && !region.readOnly };
    }
    const page = this.secondStagePage(second, table / PAGE);
    if (page === undefined || (page.access & READ) === 0) return undefined;
    const host = page.hostPage * PAGE;
    const region = this.memory.regionAt(host);
    return { host, writable: (page.access & WRITE) !== 0 && region !== undefined && !region.readOnly };
  }

  /** A sink that maps first-stage output (guest-physical) through the second stage, splitting at its pages. */
  private throughSecondStage(second: SecondStageTables, sink: Sink): Sink {
    return (iovaPage, gpaPage, pages, access) => {
      this.visitSecondStage(second, gpaPage, gpaPage + pages, (ssInput, hostPage, ssPages, ssAccess) => {
        sink(iovaPage + (ssInput - gpaPage), hostPage, ssPages, access & ssAccess);
      });
    };
  }

  private firstStageTable(
    tables: FirstStageTables,
    second: SecondStageTables | undefined,
    table: TablePage,
    level: number,
    base: number,
    from: number,
    to: number,
    allWritable: boolean,
    allUser: boolean,
    sink: Sink,
  ): void {
    const depth = tables.levels - level;
    if (this.entersLoop(this.fsPath, table.host, depth)) return;
    this.fsPath[depth] = table.host;
    const span = spanPages(level);
    const first = Math.floor((from - base) / span);
    const last = Math.floor((to - 1 - base) / span);
    const accessedFlags = tables.eafe ? FS_A | FS_EA : FS_A;
    const e = this.entry;
    for (let index = first; index <= last; index++) {
      if (!this.read(table.host + index * ENTRY_BYTES)) continue;
      const lo = e.lo;
      const hi = e.hi;
      if ((lo & FS_P) === 0) continue;
      const large = (level === 2 || level === 3) && (lo & FS_PS) !== 0;
      const leaf = level === 1 || large;
      let reserved: Uint32Array;
      if (level === 1) reserved = this.fsLeafReserved[0]!;
      else if (large) reserved = this.fsLeafReserved[level - 1]!;
      else reserved = level >= 4 ? this.fsTopReserved : this.fsTableReserved;
      if (large && level === 3 && !this.options.fs1gp) continue;
      if ((lo & reserved[0]!) !== 0 || (hi & reserved[1]!) !== 0) continue;
      // A walk sets A (and EA) here; where it cannot write the table that is a fault for every access.
      if ((lo & accessedFlags) !== accessedFlags && !table.writable) continue;
      const w = allWritable && (lo & FS_RW) !== 0;
      const u = allUser && (lo & FS_US) !== 0;
      const entryBase = base + index * span;
      const start = Math.max(from, entryBase);
      const end = Math.min(to, entryBase + span);
      if (leaf) {
        const access = this.firstStageAccess(tables, w, u, (lo & FS_D) !== 0 || table.writable);
        if (access === 0) continue;
        const address = FS_LEAF_ADDRESS[level - 1]!;
        const gpaBase = getField64(lo, hi, address) * 2 ** (address.addressShift! - PAGE_SHIFT);
        sink(start, gpaBase + (start - entryBase), end - start, access);
        continue;
      }
      const next = this.firstStageTablePage(getField64(lo, hi, FS_TABLE_ADDRESS) * PAGE, second);
      if (next === undefined) continue;
      this.firstStageTable(tables, second, next, level - 1, entryBase, start, end, w, u, sink);
    }
  }

  /** The CPU's rights for the request privilege; a write also needs D set already or a table the walk can write. */
  private firstStageAccess(tables: FirstStageTables, allWritable: boolean, allUser: boolean, dirtyPossible: boolean): number {
    if (tables.supervisor) {
      const writable = (!tables.wpe || allWritable) && dirtyPossible;
      return READ | (writable ? WRITE : 0);
    }
    if (!allUser) return 0;
    return READ | (allWritable && dirtyPossible ? WRITE : 0);
  }
}

/**
 * `runs` without the guest-physical pages of the interrupt window 0xfee00000-0xfeefffff, which DMA never reaches
 * (the unit refuses translations that land there).
 */
export function withoutInterruptOutput(runs: readonly MappedRun[]): MappedRun[] {
  const out: MappedRun[] = [];
  for (const run of runs) {
    const end = run.gpaPage + run.pages;
    if (end <= INTERRUPT_WINDOW_FIRST_PAGE || run.gpaPage >= INTERRUPT_WINDOW_END_PAGE) {
      out.push(run);
      continue;
    }
    const before = INTERRUPT_WINDOW_FIRST_PAGE - run.gpaPage;
    if (before > 0) out.push({ ...run, pages: before });
    const after = end - INTERRUPT_WINDOW_END_PAGE;
    if (after > 0) {
      const skip = run.pages - after;
      out.push({ iovaPage: run.iovaPage + skip, gpaPage: run.gpaPage + skip, pages: after, access: run.access });
    }
  }
  return out;
}
