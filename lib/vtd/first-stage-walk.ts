/** First-stage translation: IA-32e 4- and 5-level walks with the CPU's access rules and A/EA/D updates in guest memory. */

import type { EntryWords, GuestMemory } from '../memory/guest-memory';
import { getField64, reservedWords, wordsToBig, type Field, type FieldTable } from './bitfield';
import type { QuirkId } from './compat-quirks';
import { faultCode } from './fault-reasons';
import { entryValue, faultRecord, type FaultRecord } from './fault';
import { wordMask } from './register-bits';
import { FIRST_STAGE_1G_LEAF, FIRST_STAGE_2M_LEAF, FIRST_STAGE_4K_LEAF, FIRST_STAGE_TABLE_ENTRY, FIRST_STAGE_TOP_ENTRY } from './structures';
import type { WalkTraceSink } from './walk-trace';
import { PAGE_BYTES, PAGE_SHIFT } from '../memory/geometry';

export const FS_FR = {
  ACCESS: faultCode('SM_FIRST_STAGE_ACCESS'),
  NOT_PRESENT: faultCode('SM_FIRST_STAGE_NOT_PRESENT'),
  RESERVED: faultCode('SM_FIRST_STAGE_RESERVED'),
  TOP_ACCESS: faultCode('SM_FIRST_STAGE_PML4_ACCESS'),
  TABLE_WRITE_NESTED: faultCode('SM_FIRST_STAGE_WRITE_NESTED'),
  NON_CANONICAL: faultCode('SM_NON_CANONICAL'),
  USER_SUPERVISOR: faultCode('SM_USER_SUPERVISOR'),
  EXECUTE: faultCode('SM_EXECUTE'),
  WRITE: faultCode('SM_WRITE'),
} as const;

/** What the walk needs from the PASID entry (the names match PasidEntry, so one is passed as is). */
export interface FirstStageParams {
  /** FSPTPTR: address of the top table (guest-physical when nested). */
  readonly fsTable: number;
  /** 4 (FSPM 0, 48-bit) or 5 (FSPM 1, 57-bit). */
  readonly fsLevels: number;
  readonly wpe: boolean;
  readonly eafe: boolean;
  readonly fpd: boolean;
  /** The PASID entry's second-stage input width (from AW); read only by the quirk first-stage-canonical-check-uses-pasid-aw. */
  readonly ssInputWidth?: number;
}

/** One request, the input address split once at the edge into 32-bit halves (see splitAddress). */
export interface FirstStageRequest {
  readonly hi: number;
  readonly lo: number;
  readonly write: boolean;
  readonly execute: boolean;
  /** Privilege-mode-requested (from the request's PASID prefix, or RID_PRIV). */
  readonly supervisor: boolean;
}

export interface FirstStagePage {
  readonly ok: true;
  /** Base of the output page (guest-physical when nested) and its size. */
  readonly address: number;
  readonly pageSize: number;
  /** Level of the leaf: 1 (4 KiB), 2 (2 MiB), 3 (1 GiB). */
  readonly level: number;
  /** What the request's privilege may do with the page, accumulated over every level: what an IOTLB may cache. */
  readonly writable: boolean;
  readonly executable: boolean;
  /** The leaf's D flag is set in memory, so a later write through a cached translation needs no walk. */
  readonly dirty: boolean;
}

/**
 * How the walker reaches first-stage tables. Without nesting the table addresses are host addresses; with
 * nesting every table is translated through the second stage first (see NestedWalker).
 */
export interface FirstStageTableAccess {
  /** Host address of the first-stage entry at `entry` (in the table of `level`), or the fault translating it met. */
  hostEntry(entry: number, level: number, top: boolean): number | FaultRecord;
  /** Whether the entry last returned by hostEntry may be written (A/EA/D updates). */
  readonly entryWritable: boolean;
}

export interface FirstStageOptions {
  /** Host address width: output and table address bits at or above it are reserved. */
  readonly addressWidth: number;
  /** CAP.FS1GP: 1 GiB pages; without it PS in a PDPE is reserved. */
  readonly fs1gp: boolean;
  /** The compat quirks in effect (lib/vtd/compat-quirks.ts); the walk acts on the first-stage ones. */
  readonly quirks?: ReadonlySet<QuirkId>;
}

const ENTRY_BYTES = 8;
const INDEX_MASK = 511;
const BITS_PER_LEVEL = 9;
const WORD_BITS = 32;
/** Input bits above these are the sign extension a canonical address carries (bit 47 or 56 copied upwards). */
const CANONICAL_TOP_BIT: Readonly<Record<number, number>> = { 4: 47, 5: 56 };
/**
 * Flag updates found the entry changed by another agent between the read and the update: like a CPU, the walk
 * starts again; a guest that keeps rewriting its tables gets an access fault after this many tries.
 */
const MAX_RESTARTS = 3;

const P = wordMask(FIRST_STAGE_TABLE_ENTRY.f.P);
const RW = wordMask(FIRST_STAGE_TABLE_ENTRY.f.RW);
const US = wordMask(FIRST_STAGE_TABLE_ENTRY.f.US);
const A = wordMask(FIRST_STAGE_TABLE_ENTRY.f.A);
const EA = wordMask(FIRST_STAGE_TABLE_ENTRY.f.EA);
const PS = wordMask(FIRST_STAGE_TABLE_ENTRY.f.PS);
const D = wordMask(FIRST_STAGE_4K_LEAF.f.D);
/** XD lives in the upper word. */
const XD = wordMask(FIRST_STAGE_TABLE_ENTRY.f.XD);

const LEAF_LAYOUTS: readonly FieldTable[] = [FIRST_STAGE_4K_LEAF, FIRST_STAGE_2M_LEAF, FIRST_STAGE_1G_LEAF];
const LEAF_ADDRESS: readonly Field[] = [FIRST_STAGE_4K_LEAF.f.ADDR, FIRST_STAGE_2M_LEAF.f.ADDR, FIRST_STAGE_1G_LEAF.f.ADDR];
const TABLE_ADDRESS: Field = FIRST_STAGE_TABLE_ENTRY.f.ADDR;

/** Bits of the input address that index the table at `level`. */
export function levelShift(level: number): number {
  return PAGE_SHIFT + BITS_PER_LEVEL * (level - 1);
}

/** Scales computed once at load: ** with a variable exponent is a slow call on the walk path. */
/** Bytes a leaf maps at each level (index = level; 0 unused). */
const PAGE_SIZE_AT_LEVEL = [0, 1, 2, 3, 4, 5].map((level) => 2 ** levelShift(level));
/** Multiplier from a leaf's address field to its guest-physical address, per leaf level - 1. */
const LEAF_ADDRESS_SCALE = LEAF_ADDRESS.map((field) => 2 ** field.addressShift!);

function levelIndex(hi: number, lo: number, level: number): number {
  const shift = levelShift(level);
  if (shift >= WORD_BITS) return (hi >>> (shift - WORD_BITS)) & INDEX_MASK;
  return ((lo >>> shift) | (hi << (WORD_BITS - shift))) & INDEX_MASK;
}

/** Bits 63:47 (4-level) or 63:56 (5-level) all equal. */
export function isCanonical(hi: number, levels: number): boolean {
  const topBit = CANONICAL_TOP_BIT[levels]!;
  const upper = hi >>> (topBit - WORD_BITS);
  return upper === 0 || upper === 2 ** (64 - topBit) - 1;
}

/** The public API's bigint address as the two halves the walkers use. */
export function splitAddress(address: bigint): { hi: number; lo: number } {
  const value = BigInt.asUintN(64, address);
  return { hi: Number(value >> 32n), lo: Number(value & 0xffffffffn) };
}

/** A first-stage fault at `level`; the entry at `entryAddress` (its guest address when nested) decided it when (lo, hi) is given. */
function firstFaultRecord(reason: number, level: number, fpd: boolean, entryAddress?: number, lo?: number, hi = 0, notPresent = false): FaultRecord {
  if (entryAddress === undefined) return faultRecord(reason, 'first-stage', fpd, { level });
  if (lo === undefined) return faultRecord(reason, 'first-stage', fpd, { level, entryAddress });
  return faultRecord(reason, 'first-stage', fpd, { level, entryAddress, entryValue: entryValue(lo, hi), notPresent });
}

/** The second stage refuses the write that would set A/D in the first-stage entry (lo, hi) at guest address `entryAddress`. */
function tableWriteFault(level: number, fpd: boolean, entryAddress: number, lo: number, hi: number): FaultRecord {
  return faultRecord(FS_FR.TABLE_WRITE_NESTED, 'second-stage', fpd, { level, entryAddress, entryValue: entryValue(lo, hi) });
}

/** First-stage tables are host-physical: used as they are. */
const DIRECT_TABLES: FirstStageTableAccess = { hostEntry: (entry) => entry, entryWritable: true };

type FlagUpdate = 'done' | 'changed' | 'failed';
const RESTART = 'restart';

export class FirstStageWalker {
  private readonly topReserved: Uint32Array;
  private readonly tableReserved: Uint32Array;
  private readonly leafReserved: readonly Uint32Array[];
  private readonly entry: EntryWords = { lo: 0, hi: 0 };
  private readonly reread: EntryWords = { lo: 0, hi: 0 };
  /** QEMU 10.0: U/S and R/W are checked entry by entry as the walk goes, before reserved bits and lower levels. */
  private readonly rightsPerLevel: boolean;
  /** QEMU 10.0: A and D are written back only when the entry has neither of the flags due set. */
  private readonly flagsOnlyWhenAllClear: boolean;
  /** QEMU 10.0: the canonical check uses the width of the PASID entry's AW. */
  private readonly canonicalFromAw: boolean;

  constructor(
    private readonly memory: GuestMemory,
    private readonly options: FirstStageOptions,
  ) {
    const quirks = options.quirks;
    this.rightsPerLevel = quirks?.has('first-stage-rights-checked-per-level') ?? false;
    this.flagsOnlyWhenAllClear = quirks?.has('first-stage-flags-written-only-when-all-clear') ?? false;
    this.canonicalFromAw = quirks?.has('first-stage-canonical-check-uses-pasid-aw') ?? false;
    const reserved = { addressWidth: options.addressWidth };
    this.topReserved = reservedWords(FIRST_STAGE_TOP_ENTRY, reserved);
    this.tableReserved = reservedWords(FIRST_STAGE_TABLE_ENTRY, reserved);
    this.leafReserved = LEAF_LAYOUTS.map((layout) => reservedWords(layout, reserved));
  }

  /**
   * Translates one request. Faults are results, never exceptions; the walk reads at most one entry per level
   * (plus one re-read per flag update) and restarts at most MAX_RESTARTS times, so a hostile table costs bounded time.
   */
  walk(
    params: FirstStageParams,
    request: FirstStageRequest,
    tables: FirstStageTableAccess = DIRECT_TABLES,
    trace?: WalkTraceSink,
  ): FirstStagePage | FaultRecord {
    const levels = params.fsLevels;
    if (!isCanonical(request.hi, levels)) return firstFaultRecord(FS_FR.NON_CANONICAL, levels, params.fpd);
    if (this.canonicalFromAw && params.ssInputWidth !== undefined && !isCanonicalWidth(request.hi, request.lo, params.ssInputWidth)) {
      return firstFaultRecord(FS_FR.NON_CANONICAL, levels, params.fpd);
    }
    for (let attempt = 0; ; attempt++) {
      const result = this.walkOnce(params, request, tables, trace);
      if (result !== RESTART) return result;
      if (attempt + 1 >= MAX_RESTARTS) return firstFaultRecord(FS_FR.ACCESS, levels, params.fpd);
    }
  }

  private walkOnce(
    params: FirstStageParams,
    request: FirstStageRequest,
    tables: FirstStageTableAccess,
    trace: WalkTraceSink | undefined,
  ): FirstStagePage | FaultRecord | typeof RESTART {
    const e = this.entry;
    const top = params.fsLevels;
    const fpd = params.fpd;
    let table = params.fsTable;
    let allWritable = true;
    let allUser = true;
    let anyExecuteDisable = false;
    for (let level = top; level >= 1; level--) {
      const index = levelIndex(request.hi, request.lo, level);
      const guestEntry = table + index * ENTRY_BYTES;
      const hostEntry = tables.hostEntry(guestEntry, level, level === top);
      if (typeof hostEntry !== 'number') return hostEntry;
      const host = hostEntry - index * ENTRY_BYTES;
      const unreadable = level === top ? FS_FR.TOP_ACCESS : FS_FR.ACCESS;
      if (!this.memory.readEntry(hostEntry, e)) return firstFaultRecord(unreadable, level, fpd, guestEntry);
      const lo = e.lo;
      const hi = e.hi;
      const large = (level === 2 || level === 3) && (lo & PS) !== 0;
      const leaf = level === 1 || large;
      const layout = leaf ? LEAF_LAYOUTS[level - 1]! : level >= 4 ? FIRST_STAGE_TOP_ENTRY : FIRST_STAGE_TABLE_ENTRY;
      if ((lo & P) === 0) {
        if (trace) this.record(trace, level, table, host, index, lo, hi, layout, tables !== DIRECT_TABLES, 0);
        return firstFaultRecord(FS_FR.NOT_PRESENT, level, fpd, guestEntry, lo, hi, true);
      }
      if (this.rightsPerLevel) {
        const refused = entryRightsFault(request, params.wpe, lo);
        if (refused !== 0) {
          if (trace) this.record(trace, level, table, host, index, lo, hi, layout, tables !== DIRECT_TABLES, 0);
          return firstFaultRecord(refused, level, fpd, guestEntry, lo, hi);
        }
      }
      let reserved: Uint32Array;
      if (level === 1) reserved = this.leafReserved[0]!;
      else if (large) reserved = this.leafReserved[level - 1]!;
      else reserved = level >= 4 ? this.topReserved : this.tableReserved;
      const pageSizeReserved = large && level === 3 && !this.options.fs1gp;
      if (pageSizeReserved || (lo & reserved[0]!) !== 0 || (hi & reserved[1]!) !== 0) {
        if (trace) this.record(trace, level, table, host, index, lo, hi, layout, tables !== DIRECT_TABLES, 0);
        return firstFaultRecord(FS_FR.RESERVED, level, fpd, guestEntry, lo, hi);
      }
      allWritable = allWritable && (lo & RW) !== 0;
      allUser = allUser && (lo & US) !== 0;
      anyExecuteDisable = anyExecuteDisable || (hi & XD) !== 0;

      let permissionFault = 0;
      let flags = params.eafe ? A | EA : A;
      if (leaf) {
        permissionFault = accessRightsFault(request, params.wpe, allUser, allWritable, anyExecuteDisable);
        if (permissionFault === 0 && request.write) flags |= D;
      }
      const update = this.flagsOnlyWhenAllClear && (flags & lo) !== 0 ? 0 : (flags & ~lo) >>> 0;
      if (update !== 0) {
        // Hardware needs write access to the entry to set flags: in nested mode the second stage must allow it.
        if (!tables.entryWritable) {
          if (trace) this.record(trace, level, table, host, index, lo, hi, layout, tables !== DIRECT_TABLES, 0);
          return tableWriteFault(level, fpd, guestEntry, lo, hi);
        }
        const outcome = this.setFlags(hostEntry, lo, hi, update);
        if (outcome === 'changed') return RESTART;
        if (outcome === 'failed') return firstFaultRecord(unreadable, level, fpd, guestEntry);
      }
      if (trace) this.record(trace, level, table, host, index, lo, hi, layout, tables !== DIRECT_TABLES, update);
      if (permissionFault !== 0) return firstFaultRecord(permissionFault, level, fpd, guestEntry, lo, hi);
      if (leaf) {
        const address = LEAF_ADDRESS[level - 1]!;
        const supervisor = request.supervisor;
        return {
          ok: true,
          address: getField64(lo, hi, address) * LEAF_ADDRESS_SCALE[level - 1]!,
          pageSize: PAGE_SIZE_AT_LEVEL[level]!,
          level,
          writable: supervisor ? !params.wpe || allWritable : allUser && allWritable,
          executable: !anyExecuteDisable && (supervisor || allUser),
          // QEMU 10.0 caches the translation as walked: a later write through it sets no D (a quirk).
          dirty: this.flagsOnlyWhenAllClear || ((lo | update) & D) !== 0,
        };
      }
      table = getField64(lo, hi, TABLE_ADDRESS) * PAGE_BYTES;
    }
    // Unreachable: level 1 is always a leaf.
    return firstFaultRecord(FS_FR.ACCESS, 1, fpd);
  }

  /**
   * Sets flag bits the way hardware does: the entry is re-read and updated only if it still holds what the walk
   * used (a compare-and-exchange on the whole 64-bit entry), so a concurrent change restarts the walk instead
   * of writing flags into an entry the guest has just rewritten.
   */
  private setFlags(address: number, lo: number, hi: number, bits: number): FlagUpdate {
    const now = this.reread;
    if (!this.memory.readEntry(address, now)) return 'failed';
    if (now.lo !== lo || now.hi !== hi) return 'changed';
    return this.memory.writeEntry(address, (lo | bits) >>> 0, hi) ? 'done' : 'failed';
  }

  private record(
    trace: WalkTraceSink,
    level: number,
    table: number,
    host: number,
    index: number,
    lo: number,
    hi: number,
    layout: FieldTable,
    nested: boolean,
    flagsSet: number,
  ): void {
    const set: string[] = [];
    if (flagsSet & A) set.push('A');
    if (flagsSet & EA) set.push('EA');
    if (flagsSet & D) set.push('D');
    trace.step({
      structure: 'first-stage',
      level,
      tableAddress: table,
      index,
      entryAddress: host + index * ENTRY_BYTES,
      ...(nested ? { guestEntryAddress: table + index * ENTRY_BYTES } : {}),
      value: wordsToBig([lo, hi]),
      layout,
      ...(set.length > 0 ? { flagsSet: set } : {}),
    });
  }
}

/** Bits 63:width-1 all equal (the canonical form for an input width), the address given as two 32-bit halves. */
function isCanonicalWidth(hi: number, lo: number, width: number): boolean {
  if (width >= 64) return true;
  if (width > WORD_BITS) {
    const upper = hi >>> (width - 1 - WORD_BITS);
    return upper === 0 || upper === 2 ** (64 - (width - 1)) - 1;
  }
  const low = lo >>> (width - 1);
  const lowBits = 2 ** (WORD_BITS - (width - 1)) - 1;
  return (low === 0 && hi === 0) || (low === lowBits && hi === -1 >>> 0);
}

/** QEMU 10.0's rights check of one entry (quirk first-stage-rights-checked-per-level): U/S, then R/W. */
function entryRightsFault(request: FirstStageRequest, wpe: boolean, lo: number): number {
  if (!request.supervisor && (lo & US) === 0) return FS_FR.USER_SUPERVISOR;
  if (request.write && (lo & RW) === 0 && (!request.supervisor || wpe)) return FS_FR.WRITE;
  return 0;
}

/**
 * The first-stage access rights over the accumulated flags (the CPU's rules): user requests need U/S in every
 * entry; writes need R/W in every entry, except supervisor writes with WPE clear; execute requests need XD
 * clear in every entry. Checked in that order, so a user write to a supervisor page reports U/S.
 */
function accessRightsFault(request: FirstStageRequest, wpe: boolean, allUser: boolean, allWritable: boolean, anyExecuteDisable: boolean): number {
  if (!request.supervisor && !allUser) return FS_FR.USER_SUPERVISOR;
  if (request.execute && anyExecuteDisable) return FS_FR.EXECUTE;
  if (request.write && !allWritable && (!request.supervisor || wpe)) return FS_FR.WRITE;
  return 0;
}
