/** Legacy-mode translation structures: root entry -> context entry -> second-stage page walk, with fault reasons. */

import { ViommuError } from '../errors';
import { WORDS_PER_TABLE_PAGE, type EntryWords, type GuestMemory } from '../memory/guest-memory';
import { getField, hasReservedBits, reservedWords, wordsToBig, type Field, type FieldTable } from './bitfield';
import { PSC_RIGHTS, type CachedContext, type PagingStructureCache } from './caches';
import type { QuirkId } from './compat-quirks';
import { faultCode } from './fault-reasons';
import { entryValue, faultRecord, type FaultRecord } from './fault';
import { wordMask } from './register-bits';
import {
  LEGACY_CONTEXT_ENTRY,
  LEGACY_ROOT_ENTRY,
  SECOND_STAGE_1G_LEAF,
  SECOND_STAGE_2M_LEAF,
  SECOND_STAGE_4K_LEAF,
  SECOND_STAGE_TABLE_ENTRY,
  SECOND_STAGE_TOP_ENTRY,
} from './structures';
import type { WalkTraceSink } from './walk-trace';
import { INTERRUPT_WINDOW_END, INTERRUPT_WINDOW_START, PAGE_BYTES, PAGE_SHIFT } from '../memory/geometry';

export const FR = {
  ROOT_ENTRY_NOT_PRESENT: faultCode('ROOT_ENTRY_NOT_PRESENT'),
  CONTEXT_ENTRY_NOT_PRESENT: faultCode('CONTEXT_ENTRY_NOT_PRESENT'),
  CONTEXT_ENTRY_INVALID: faultCode('CONTEXT_ENTRY_INVALID'),
  ADDRESS_BEYOND_MGAW: faultCode('ADDRESS_BEYOND_MGAW'),
  WRITE: faultCode('WRITE'),
  READ: faultCode('READ'),
  PAGING_ENTRY_INVALID: faultCode('PAGING_ENTRY_INVALID'),
  ROOT_TABLE_INVALID: faultCode('ROOT_TABLE_INVALID'),
  CONTEXT_TABLE_INVALID: faultCode('CONTEXT_TABLE_INVALID'),
  ROOT_ENTRY_RESERVED: faultCode('ROOT_ENTRY_RESERVED'),
  CONTEXT_ENTRY_RESERVED: faultCode('CONTEXT_ENTRY_RESERVED'),
  PAGING_ENTRY_RESERVED: faultCode('PAGING_ENTRY_RESERVED'),
  INTERRUPT_ADDRESS: faultCode('INTERRUPT_ADDRESS'),
} as const;

/** Addresses in the interrupt window carry interrupt messages, never DMA (spec 3.15). */
export function isInterruptAddress(address: number): boolean {
  return address >= INTERRUPT_WINDOW_START && address < INTERRUPT_WINDOW_END;
}

/**
 * Whether a page's output [address, address + size) reaches the interrupt range: such leaves are never cached, so
 * that every access through them walks and meets the output check (the IOTLB hit path stays a lookup).
 */
export function overlapsInterruptRange(address: number, size: number): boolean {
  return address < INTERRUPT_WINDOW_END && address + size > INTERRUPT_WINDOW_START;
}

/** Translation types of a legacy context entry. */
export const TT = { TRANSLATED: 0, DEVICE_TLB: 1, PASS_THROUGH: 2 } as const;

export interface ContextFound {
  readonly ok: true;
  readonly context: CachedContext;
}

export interface PageFound {
  readonly ok: true;
  /** Guest-physical base of the page and its size. */
  readonly address: number;
  readonly pageSize: number;
  readonly readable: boolean;
  readonly writable: boolean;
}

/** What the walker needs from the configuration, decided once. */
export interface WalkerOptions {
  /** Host/guest address width (aw-bits): reserved address bits and the MGAW limit. */
  readonly addressWidth: number;
  /** CAP.SAGAW: bit n set means AW = n is supported. */
  readonly sagaw: number;
  /** CAP.SLLPS: bit 0 2 MiB, bit 1 1 GiB. */
  readonly sllps: number;
  readonly deviceTlb: boolean;
  readonly passThrough: boolean;
  /** ECAP features that make optional entry bits legal. */
  readonly features: ReadonlySet<string>;
}

const PTE_R = wordMask(SECOND_STAGE_TABLE_ENTRY.f.R);
const PTE_W = wordMask(SECOND_STAGE_TABLE_ENTRY.f.W);
const PTE_PS = wordMask(SECOND_STAGE_TABLE_ENTRY.f.PS);
const ENTRIES_PER_TABLE = 512;
const ENTRY_BYTES = 8;
const BITS_PER_LEVEL = 9;
const ROOT_ENTRY_BYTES = LEGACY_ROOT_ENTRY.sizeBits / 8;
const CONTEXT_ENTRY_BYTES = LEGACY_CONTEXT_ENTRY.sizeBits / 8;
const DEVFNS_PER_BUS = 256;
const BUSES = 256;
/** AW encodes levels - 2. */
const AW_LEVEL_BIAS = 2;

/**
 * An address field kept in place (its addressShift equals its lowest bit) as two word masks, so the byte
 * address is (hi & masks.hi) * 2^32 + (lo & masks.lo) with no shifting or scaling.
 */
function inPlaceMasks(field: Field): { lo: number; hi: number } {
  if (field.addressShift !== field.lsb) throw new ViommuError('ERR_FIELD_TABLE', `${field.name} is not stored in place: decode it with getField64`);
  const bits = (from: number, to: number): number => (to < from ? 0 : (2 ** (to + 1) - 2 ** from) >>> 0);
  return { lo: bits(field.lsb, Math.min(field.msb, 31)), hi: bits(Math.max(field.lsb, 32) - 32, field.msb - 32) | 0 };
}

const TABLE_ADDRESS = inPlaceMasks(SECOND_STAGE_TABLE_ENTRY.f.ADDR);
/** Per leaf level (1..3) the address masks of its leaf format. Index 0 unused. */
const LEAF_ADDRESS = [SECOND_STAGE_4K_LEAF, SECOND_STAGE_4K_LEAF, SECOND_STAGE_2M_LEAF, SECOND_STAGE_1G_LEAF].map((table) =>
  inPlaceMasks(table.f.ADDR),
);
const SMALL_LEAF_ADDRESS = LEAF_ADDRESS[1]!;
/** Per-level shift: 2^(12 + 9 * (level - 1)). Index 0 unused. */
const LEVEL_SPAN = [0, 1, 2, 3, 4, 5].map((level) => 2 ** (PAGE_SHIFT + BITS_PER_LEVEL * (level - 1)));
/** 1 / LEVEL_SPAN: an IOVA times this is its index-bearing quotient at that level, exactly. */
const LEVEL_SCALE = LEVEL_SPAN.map((span) => (span === 0 ? 0 : 1 / span));
/** The IOVA span one leaf table maps (2 MiB): what a paging-structure cache entry covers. */
const REGION_BYTES = LEVEL_SPAN[2]!;
const TABLE_PAGE_BYTES = PAGE_BYTES;
/** Page numbers below 2^31 (tables below 2^43) are small integers to V8. */
const SMALL_PAGE_LIMIT = 2 ** 31;
/** An in-place address field's high-word bits sit this far up in a page number... */
const HIGH_WORD_SHIFT = 32 - PAGE_SHIFT;
/** ...so high-word bits below this keep the page number below SMALL_PAGE_LIMIT. */
const SMALL_HIGH_LIMIT = SMALL_PAGE_LIMIT / 2 ** HIGH_WORD_SHIFT;

/** walkSmallPages met a table it cannot name by a small page number. */
const TABLE_ABOVE_SMALL_PAGES = null;

/** A fault of the second-stage walk at `level`; `value` is the entry at `entryAddress` when it was read and decided. */
function pagingFault(reason: number, fpd: boolean, level: number, entryAddress: number, value?: bigint, notPresent = false): FaultRecord {
  return faultRecord(
    reason,
    'second-stage',
    fpd,
    value === undefined ? { level, entryAddress } : { level, entryAddress, entryValue: value, notPresent },
  );
}

export class LegacyWalker {
  private readonly rootReserved: Uint32Array;
  private readonly contextReserved: Uint32Array;
  private readonly topReserved: Uint32Array;
  private readonly tableReserved: Uint32Array;
  private readonly leafReserved: readonly Uint32Array[];
  /** Per level (index = level, 1..5) the reserved bits of a non-leaf entry there (level 1: a 4 KiB leaf), low and high word. */
  private readonly levelReservedLo = new Int32Array(6);
  private readonly levelReservedHi = new Int32Array(6);
  /** levelReserved*[1] as plain numbers, for walkLeafCached. */
  private readonly smallLeafReservedLo: number;
  private readonly smallLeafReservedHi: number;
  private readonly entry: EntryWords = { lo: 0, hi: 0 };
  private readonly words = new Uint32Array(4);
  /** The page the last successful walkLeaf() found (see there). */
  leafAddress = 0;
  leafPageSize = 0;
  leafReadable = false;
  leafWritable = false;

  constructor(
    private readonly memory: GuestMemory,
    private readonly options: WalkerOptions,
    private readonly quirks: ReadonlySet<QuirkId>,
  ) {
    const reserved = { addressWidth: options.addressWidth, features: options.features };
    this.rootReserved = reservedWords(LEGACY_ROOT_ENTRY, reserved);
    this.contextReserved = reservedWords(LEGACY_CONTEXT_ENTRY, reserved);
    this.topReserved = reservedWords(SECOND_STAGE_TOP_ENTRY, reserved);
    this.tableReserved = reservedWords(SECOND_STAGE_TABLE_ENTRY, reserved);
    this.leafReserved = [
      reservedWords(SECOND_STAGE_4K_LEAF, reserved),
      reservedWords(SECOND_STAGE_2M_LEAF, reserved),
      reservedWords(SECOND_STAGE_1G_LEAF, reserved),
    ];
    for (let level = 1; level < this.levelReservedLo.length; level++) {
      const words = level === 1 ? this.leafReserved[0]! : level >= 4 ? this.topReserved : this.tableReserved;
      this.levelReservedLo[level] = words[0]!;
      this.levelReservedHi[level] = words[1]!;
    }
    this.smallLeafReservedLo = this.levelReservedLo[1]!;
    this.smallLeafReservedHi = this.levelReservedHi[1]!;
  }

  /** Reads a 16-byte entry into this.words; false when RAM does not back it. */
  private read128(address: number): boolean {
    const e = this.entry;
    if (!this.memory.readEntry(address, e)) return false;
    this.words[0] = e.lo;
    this.words[1] = e.hi;
    if (!this.memory.readEntry(address + 8, e)) return false;
    this.words[2] = e.lo;
    this.words[3] = e.hi;
    return true;
  }

  /** Root and context entry for `sid` under the root table at `rootTable`; each entry read goes to `trace`, if given. */
  lookupContext(rootTable: number, sid: number, trace?: WalkTraceSink): ContextFound | FaultRecord {
    const bus = Math.floor(sid / DEVFNS_PER_BUS) % BUSES;
    const devfn = sid % DEVFNS_PER_BUS;
    const w = this.words;
    const rootAddress = rootTable + bus * ROOT_ENTRY_BYTES;
    if (!this.read128(rootAddress)) return faultRecord(FR.ROOT_TABLE_INVALID, 'root', false, { entryAddress: rootAddress });
    if (trace !== undefined) this.recordStructure(trace, 'root', rootTable, bus, ROOT_ENTRY_BYTES, LEGACY_ROOT_ENTRY);
    if (!getField(w, LEGACY_ROOT_ENTRY.f.P)) return this.structureFault(FR.ROOT_ENTRY_NOT_PRESENT, 'root', false, rootAddress, true);
    if (hasReservedBits(w, this.rootReserved)) return this.structureFault(FR.ROOT_ENTRY_RESERVED, 'root', false, rootAddress);
    const contextTable = getField(w, LEGACY_ROOT_ENTRY.f.CTP) * 2 ** PAGE_SHIFT;
    const contextAddress = contextTable + devfn * CONTEXT_ENTRY_BYTES;
    if (!this.read128(contextAddress)) return faultRecord(FR.CONTEXT_TABLE_INVALID, 'context', false, { entryAddress: contextAddress });
    if (trace !== undefined) this.recordStructure(trace, 'context', contextTable, devfn, CONTEXT_ENTRY_BYTES, LEGACY_CONTEXT_ENTRY);
    const c = LEGACY_CONTEXT_ENTRY.f;
    // FPD covers the qualified faults of the entry that carries it, P = 0 included (QEMU's qualified-fault table
    // agrees); reserved bits are not a qualified fault.
    const fpd = getField(w, c.FPD) === 1;
    if (!getField(w, c.P)) return this.structureFault(FR.CONTEXT_ENTRY_NOT_PRESENT, 'context', fpd, contextAddress, true);
    if (hasReservedBits(w, this.contextReserved)) return this.structureFault(FR.CONTEXT_ENTRY_RESERVED, 'context', false, contextAddress);
    const aw = getField(w, c.AW);
    if (((this.options.sagaw >>> aw) & 1) === 0) return this.structureFault(FR.CONTEXT_ENTRY_INVALID, 'context', fpd, contextAddress);
    const tt = getField(w, c.TT);
    const ttAllowed =
      tt === TT.TRANSLATED || (tt === TT.DEVICE_TLB && this.options.deviceTlb) || (tt === TT.PASS_THROUGH && this.options.passThrough);
    if (!ttAllowed) return this.structureFault(FR.CONTEXT_ENTRY_INVALID, 'context', fpd, contextAddress);
    const levels = aw + AW_LEVEL_BIAS;
    const inputWidth = Math.min(PAGE_SHIFT + BITS_PER_LEVEL * levels, this.options.addressWidth);
    return {
      ok: true,
      context: {
        sid,
        did: getField(w, c.DID),
        tt,
        fpd,
        levels,
        tableAddress: getField(w, c.SLPTPTR) * 2 ** PAGE_SHIFT,
        limit: tt === TT.PASS_THROUGH ? 2 ** this.options.addressWidth : 2 ** inputWidth,
      },
    };
  }

  /** A root or context entry (the one read128() just read, at `entryAddress`) that decided a fault. */
  private structureFault(reason: number, stage: 'root' | 'context', fpd: boolean, entryAddress: number, notPresent = false): FaultRecord {
    return faultRecord(reason, stage, fpd, { entryAddress, entryValue: wordsToBig(this.words), notPresent });
  }

  /** Entry `index` of the table at page `tablePage` (of `level`) is not backed by RAM; the entry's address is left out without a table. */
  private unreadable(context: CachedContext, level: number, tablePage?: number, index = 0): FaultRecord {
    const top = level === context.levels && this.quirks.has('top-table-read-error-is-context-invalid');
    const reason = top ? FR.CONTEXT_ENTRY_INVALID : FR.PAGING_ENTRY_INVALID;
    if (tablePage === undefined) return faultRecord(reason, 'second-stage', context.fpd, { level });
    return pagingFault(reason, context.fpd, level, tablePage * TABLE_PAGE_BYTES + index * ENTRY_BYTES);
  }

  /** The 128-bit entry read128() just read, as a trace step. */
  private recordStructure(
    trace: WalkTraceSink,
    structure: 'root' | 'context',
    tableAddress: number,
    index: number,
    entryBytes: number,
    layout: FieldTable,
  ): void {
    trace.step({ structure, level: 0, tableAddress, index, entryAddress: tableAddress + index * entryBytes, value: wordsToBig(this.words), layout });
  }

  /**
   * Second-stage walk of `iova` (already checked against context.limit). With `trace`, every entry read goes to it
   * (walkTraced); without, the tuned walk runs untouched.
   */
  walk(context: CachedContext, iova: number, write: boolean, trace?: WalkTraceSink): PageFound | FaultRecord {
    if (trace !== undefined) return this.walkTraced(context, iova, write, trace);
    const failed = this.walkLeaf(context, iova, write);
    if (failed !== undefined) return failed;
    return { ok: true, address: this.leafAddress, pageSize: this.leafPageSize, readable: this.leafReadable, writable: this.leafWritable };
  }

  /**
   * walk() without a result object, for the IOTLB-miss path: undefined when a leaf was found, its page then in
   * leafAddress, leafPageSize, leafReadable and leafWritable (valid until the next walk).
   */
  walkLeaf(context: CachedContext, iova: number, write: boolean): FaultRecord | undefined {
    const top = context.tableAddress / TABLE_PAGE_BYTES;
    if (top < SMALL_PAGE_LIMIT) {
      const found = this.walkSmallPages(context, iova, write, top | 0);
      if (found !== TABLE_ABOVE_SMALL_PAGES) return found;
    }
    return this.walkAnyPages(context, iova, write, top);
  }

  /**
   * walkLeaf() of 4 KiB page `index` (0..511) of the 2 MiB IOVA region `region`, through a paging-structure
   * cache: when `cache` holds the region's leaf table (for this domain and context root) and the rights cached
   * with it allow the access, only the leaf entry is read, with the full walk's level-1 checks. Otherwise the
   * full walk runs, and one that ends at level 1 leaves its leaf table in the cache. Cached rights that deny the
   * access walk again, so the fault names the level the walk finds it at. The IOVA comes as region and index
   * (small integers below 2^51) so that a call left out of line passes no heap number. Its bytecode must stay
   * small (V8 inlines up to 460 bytes, 920 in all) for walkPage() to take it in with the IOTLB insert: the fault
   * paths hand over what they hold and leafFault() works out the entry's address.
   */
  walkLeafCached(context: CachedContext, region: number, index: number, write: boolean, cache: PagingStructureCache): FaultRecord | undefined {
    cache.useGeneration(this.memory.generation);
    const slot = cache.find(context.did, region, context.tableAddress + context.levels);
    const need = write ? PTE_W : PTE_R;
    // slotWord is below 2^31: | 0 keeps the index arithmetic in small integers.
    const word = slot < 0 ? 0 : cache.slotWord(slot) | 0;
    const upper = word & PSC_RIGHTS;
    if ((upper & need) === 0) return this.walkAndCache(context, region, index, write, cache);
    // The table's words when the entry holds them (bounds and alignment hold by construction), else a RAM read.
    const view = cache.slotView(slot);
    const at = word - upper + index * 2;
    let lo = view === undefined ? undefined : view[at];
    let hi = 0;
    if (lo !== undefined) hi = view![at + 1]!;
    else {
      const e = this.entry;
      // Unreachable while the memory generation holds (the table was read when cached): no address, to keep this small.
      if (!this.memory.readTableEntry(cache.slotTablePage(slot), index, e)) return this.unreadable(context, 1);
      lo = e.lo;
      hi = e.hi;
    }
    const rights = upper & lo;
    if ((rights & need) === 0 || (lo & this.smallLeafReservedLo) !== 0 || (hi & this.smallLeafReservedHi) !== 0) {
      return this.leafFault(context, lo, hi, write, rights, cache, slot, index);
    }
    // setLeaf(1, ...) written out: this path is hot enough that the call showed.
    this.leafAddress = (hi & SMALL_LEAF_ADDRESS.hi) * 2 ** 32 + ((lo & SMALL_LEAF_ADDRESS.lo) >>> 0);
    this.leafPageSize = TABLE_PAGE_BYTES;
    this.leafReadable = (rights & PTE_R) !== 0;
    this.leafWritable = (rights & PTE_W) !== 0;
    return undefined;
  }

  /** A 4 KiB leaf read through the cache that is not plainly usable: the walk's level-1 checks decide. */
  private leafFault(
    context: CachedContext,
    lo: number,
    hi: number,
    write: boolean,
    rights: number,
    cache: PagingStructureCache,
    slot: number,
    index: number,
  ): FaultRecord | undefined {
    const failed = this.entryFault(context, 1, lo, hi, false, write, rights, cache.slotTablePage(slot), index * TABLE_PAGE_BYTES);
    if (failed === undefined) this.setLeaf(1, lo, hi, rights);
    return failed;
  }

  /** walkLeafCached() without a usable entry: the full walk; one that ends at a 4 KiB leaf caches its leaf table. */
  private walkAndCache(context: CachedContext, region: number, index: number, write: boolean, cache: PagingStructureCache): FaultRecord | undefined {
    const iova = region * REGION_BYTES + index * TABLE_PAGE_BYTES;
    const failed = this.walkLeaf(context, iova, write);
    if (failed === undefined && this.leafPageSize === TABLE_PAGE_BYTES) this.cacheLeafTable(context, region, iova, cache);
    return failed;
  }

  /**
   * Reads the non-leaf entries of the walk that just succeeded again, for the leaf table they lead to and the R/W
   * they grant, and caches both; an entry the walk would not pass plainly (not present, reserved bits, a large
   * page) caches nothing. Only IOTLB misses outside cached regions come here, so the walk loops stay as they are.
   */
  private cacheLeafTable(context: CachedContext, region: number, iova: number, cache: PagingStructureCache): void {
    const e = this.entry;
    let page = context.tableAddress / TABLE_PAGE_BYTES;
    let rights = PTE_R | PTE_W;
    for (let level = context.levels; level >= 2; level--) {
      if (!this.memory.readTableEntry(page, levelIndex(iova, level), e)) return;
      const lo = e.lo;
      const hi = e.hi;
      const large = (level === 2 || level === 3) && (lo & PTE_PS) !== 0;
      if ((lo & (PTE_R | PTE_W)) === 0 || large || (lo & this.levelReservedLo[level]!) !== 0 || (hi & this.levelReservedHi[level]!) !== 0) return;
      rights &= lo;
      page = (hi & TABLE_ADDRESS.hi) * 2 ** HIGH_WORD_SHIFT + ((lo & TABLE_ADDRESS.lo) >>> PAGE_SHIFT);
    }
    const ram = this.memory.tableRegion(page);
    const base = ram === undefined ? 0 : (page - ram.firstPage) * WORDS_PER_TABLE_PAGE;
    cache.store(context.did, region, context.tableAddress + context.levels, page, rights, ram?.words, base);
  }

  /**
   * The walk while every table lies below 2^43: table locations are page numbers that V8 keeps as small
   * integers, which shortens the chain of dependent work from one entry read to the next. TABLE_ABOVE_SMALL_PAGES
   * when a table pointer leads higher; the caller then starts over with walkAnyPages (reads have no side effects).
   */
  private walkSmallPages(
    context: CachedContext,
    iova: number,
    write: boolean,
    topPage: number,
  ): FaultRecord | undefined | typeof TABLE_ABOVE_SMALL_PAGES {
    const e = this.entry;
    const need = write ? PTE_W : PTE_R;
    const reservedLo = this.levelReservedLo;
    const reservedHi = this.levelReservedHi;
    let page = topPage;
    let rights = PTE_R | PTE_W;
    for (let level = context.levels; level >= 1; level--) {
      if (!this.memory.readTableEntry(page, levelIndex(iova, level), e)) return this.unreadable(context, level, page, levelIndex(iova, level));
      const lo = e.lo;
      const hi = e.hi;
      const large = (level === 2 || level === 3) && (lo & PTE_PS) !== 0;
      rights &= lo;
      // The common entry (right granted, not a large page, no reserved bit) skips entryFault's case analysis.
      const plain = (rights & need) !== 0 && !large && (lo & reservedLo[level]!) === 0 && (hi & reservedHi[level]!) === 0;
      if (!plain) {
        const failed = this.entryFault(context, level, lo, hi, large, write, rights, page, iova);
        if (failed !== undefined) return failed;
      }
      if (level === 1 || large) {
        this.setLeaf(level, lo, hi, rights);
        return undefined;
      }
      const high = hi & TABLE_ADDRESS.hi;
      if (high >= SMALL_HIGH_LIMIT) return TABLE_ABOVE_SMALL_PAGES;
      page = (high << HIGH_WORD_SHIFT) | ((lo & TABLE_ADDRESS.lo) >>> PAGE_SHIFT);
    }
    return faultRecord(FR.CONTEXT_ENTRY_INVALID, 'context', context.fpd);
  }

  /** The same walk with table page numbers as doubles: any table a 52-bit address can name. */
  private walkAnyPages(context: CachedContext, iova: number, write: boolean, topPage: number): FaultRecord | undefined {
    const e = this.entry;
    const need = write ? PTE_W : PTE_R;
    const reservedLo = this.levelReservedLo;
    const reservedHi = this.levelReservedHi;
    let page = topPage;
    let rights = PTE_R | PTE_W;
    for (let level = context.levels; level >= 1; level--) {
      if (!this.memory.readTableEntry(page, levelIndex(iova, level), e)) return this.unreadable(context, level, page, levelIndex(iova, level));
      const lo = e.lo;
      const hi = e.hi;
      const large = (level === 2 || level === 3) && (lo & PTE_PS) !== 0;
      rights &= lo;
      const plain = (rights & need) !== 0 && !large && (lo & reservedLo[level]!) === 0 && (hi & reservedHi[level]!) === 0;
      if (!plain) {
        const failed = this.entryFault(context, level, lo, hi, large, write, rights, page, iova);
        if (failed !== undefined) return failed;
      }
      if (level === 1 || large) {
        this.setLeaf(level, lo, hi, rights);
        return undefined;
      }
      page = (hi & TABLE_ADDRESS.hi) * 2 ** HIGH_WORD_SHIFT + ((lo & TABLE_ADDRESS.lo) >>> PAGE_SHIFT);
    }
    // Unreachable for levels >= 1; a context with 0 levels cannot be built (AW is checked against SAGAW).
    return faultRecord(FR.CONTEXT_ENTRY_INVALID, 'context', context.fpd);
  }

  /**
   * walkAnyPages() for explaining: the same reads and the same checks (entryFault decides every entry, which the
   * fast walks skip only for entries it would pass), each entry handed to `trace` before it is judged.
   */
  private walkTraced(context: CachedContext, iova: number, write: boolean, trace: WalkTraceSink): PageFound | FaultRecord {
    const e = this.entry;
    let table = context.tableAddress;
    let rights = PTE_R | PTE_W;
    for (let level = context.levels; level >= 1; level--) {
      const index = levelIndex(iova, level);
      if (!this.memory.readTableEntry(table / TABLE_PAGE_BYTES, index, e)) return this.unreadable(context, level, table / TABLE_PAGE_BYTES, index);
      const lo = e.lo;
      const hi = e.hi;
      const large = (level === 2 || level === 3) && (lo & PTE_PS) !== 0;
      trace.step({
        structure: 'second-stage',
        level,
        tableAddress: table,
        index,
        entryAddress: table + index * ENTRY_BYTES,
        value: wordsToBig([lo, hi]),
        layout: secondStageLayout(level, large),
      });
      rights &= lo;
      const failed = this.entryFault(context, level, lo, hi, large, write, rights, table / TABLE_PAGE_BYTES, iova);
      if (failed !== undefined) return failed;
      if (level === 1 || large) {
        this.setLeaf(level, lo, hi, rights);
        return { ok: true, address: this.leafAddress, pageSize: this.leafPageSize, readable: this.leafReadable, writable: this.leafWritable };
      }
      table = (hi & TABLE_ADDRESS.hi) * 2 ** 32 + ((lo & TABLE_ADDRESS.lo) >>> 0);
    }
    return faultRecord(FR.CONTEXT_ENTRY_INVALID, 'context', context.fpd);
  }

  /** Records the page a leaf entry at `level` maps, with the rights along the walk. */
  private setLeaf(level: number, lo: number, hi: number, rights: number): void {
    const masks = LEAF_ADDRESS[level]!;
    this.leafAddress = (hi & masks.hi) * 2 ** 32 + ((lo & masks.lo) >>> 0);
    this.leafPageSize = LEVEL_SPAN[level]!;
    this.leafReadable = (rights & PTE_R) !== 0;
    this.leafWritable = (rights & PTE_W) !== 0;
  }

  /**
   * The fault reason entry (lo, hi) at `level` raises for this access, `rights` being R/W along the walk including
   * it; 0 when it passes. A number, so the walk loops build no object unless the walk stops.
   */
  private entryRefusal(level: number, lo: number, hi: number, large: boolean, write: boolean, rights: number): number {
    if ((lo & (PTE_R | PTE_W)) === 0) return write ? FR.WRITE : FR.READ;
    // The spec does not order the checks of one entry; QEMU tests the access right before the reserved bits
    // (measured: test/oracle/differential-random.test.ts, seed 2425335163), so every mode does the same.
    if ((rights & (write ? PTE_W : PTE_R)) === 0) return write ? FR.WRITE : FR.READ;
    let reserved: Uint32Array;
    if (level === 1) reserved = this.leafReserved[0]!;
    else if (large) {
      if (((this.options.sllps >>> (level - 2)) & 1) === 0) return FR.PAGING_ENTRY_RESERVED;
      reserved = this.leafReserved[level - 1]!;
    } else reserved = level >= 4 ? this.topReserved : this.tableReserved;
    if ((lo & reserved[0]!) !== 0 || (hi & reserved[1]!) !== 0) return FR.PAGING_ENTRY_RESERVED;
    return 0;
  }

  /**
   * The fault entry (lo, hi) at `level` raises for this access, or undefined when it passes; the entry is the one
   * `iova` indexes in the table at page `tablePage`. Only entries the walks cannot pass plainly come here.
   */
  private entryFault(
    context: CachedContext,
    level: number,
    lo: number,
    hi: number,
    large: boolean,
    write: boolean,
    rights: number,
    tablePage: number,
    iova: number,
  ): FaultRecord | undefined {
    const reason = this.entryRefusal(level, lo, hi, large, write, rights);
    if (reason === 0) return undefined;
    const entryAddress = tablePage * TABLE_PAGE_BYTES + levelIndex(iova, level) * ENTRY_BYTES;
    return pagingFault(reason, context.fpd, level, entryAddress, entryValue(lo, hi), (lo & (PTE_R | PTE_W)) === 0);
  }
}

/** The layout of a second-stage entry at `level`: what the walk checks it against, and what explain decodes it with. */
function secondStageLayout(level: number, large: boolean): FieldTable {
  if (level === 1) return SECOND_STAGE_4K_LEAF;
  if (large) return level === 2 ? SECOND_STAGE_2M_LEAF : SECOND_STAGE_1G_LEAF;
  return level >= 4 ? SECOND_STAGE_TOP_ENTRY : SECOND_STAGE_TABLE_ENTRY;
}

/** The table index `iova` takes at `level`: & keeps the low bits of the quotient (% on a double above 2^31 is slow). */
function levelIndex(iova: number, level: number): number {
  return (iova * LEVEL_SCALE[level]!) & (ENTRIES_PER_TABLE - 1);
}
