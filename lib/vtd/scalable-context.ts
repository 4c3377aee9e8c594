/** Scalable-mode lookup: root entry halves, 32-byte context entries, PASID directory and table, with the SM fault reasons. */

import type { EntryWords, GuestMemory } from '../memory/guest-memory';
import { getField, hasReservedBits, reservedWords, wordsToBig, type FieldTable } from './bitfield';
import { faultRecord, type FaultRecord } from './fault';
import { faultCode } from './fault-reasons';
import { PASID_DIRECTORY_ENTRY, PASID_PGTT, SCALABLE_CONTEXT_ENTRY, SCALABLE_PASID_ENTRY, SCALABLE_ROOT_ENTRY } from './structures';
import type { WalkTraceSink } from './walk-trace';
import { PAGE_SHIFT } from '../memory/geometry';

export const SM_FR = {
  ROOT_ACCESS: faultCode('SM_ROOT_ENTRY_ACCESS'),
  ROOT_NOT_PRESENT: faultCode('SM_ROOT_ENTRY_NOT_PRESENT'),
  ROOT_RESERVED: faultCode('SM_ROOT_ENTRY_RESERVED'),
  CONTEXT_ACCESS: faultCode('SM_CONTEXT_ENTRY_ACCESS'),
  CONTEXT_NOT_PRESENT: faultCode('SM_CONTEXT_ENTRY_NOT_PRESENT'),
  CONTEXT_RESERVED: faultCode('SM_CONTEXT_ENTRY_RESERVED'),
  DTE_CLEAR: faultCode('SM_CONTEXT_DTE_CLEAR'),
  PASIDE_CLEAR: faultCode('SM_CONTEXT_PASIDE_CLEAR'),
  PASID_TOO_LARGE: faultCode('SM_CONTEXT_PASID_TOO_LARGE'),
  RID_PASID_ERROR: faultCode('SM_CONTEXT_RID_PASID_ERROR'),
  DIRECTORY_ACCESS: faultCode('SM_PASID_DIRECTORY_ACCESS'),
  DIRECTORY_NOT_PRESENT: faultCode('SM_PASID_DIRECTORY_NOT_PRESENT'),
  DIRECTORY_RESERVED: faultCode('SM_PASID_DIRECTORY_RESERVED'),
  PASID_ENTRY_ACCESS: faultCode('SM_PASID_ENTRY_ACCESS'),
  PASID_ENTRY_NOT_PRESENT: faultCode('SM_PASID_ENTRY_NOT_PRESENT'),
  PASID_ENTRY_RESERVED: faultCode('SM_PASID_ENTRY_RESERVED'),
  PASID_ENTRY_INVALID: faultCode('SM_PASID_ENTRY_INVALID'),
  ERE_CLEAR: faultCode('SM_PASID_ENTRY_ERE_CLEAR'),
  SRE_CLEAR: faultCode('SM_PASID_ENTRY_SRE_CLEAR'),
} as const;

export interface ScalableLookupOptions {
  /** Host address width: pointer bits at or above it are reserved. */
  readonly addressWidth: number;
  /** CAP.SAGAW: bit n set means second-stage AW = n is supported. */
  readonly sagaw: number;
  /** CAP.FS5LP: 5-level first-stage paging (FSPM = 1). */
  readonly fs5lp: boolean;
  /** ECAP.RPS: RID_PASID may be non-zero. */
  readonly ridPasid: boolean;
  /**
   * ECAP single-bit features by name (config.enabledFeatures): FSTS, SSTS, NEST and PT decide which PGTTs are
   * valid; SRS, ERS, EAFS, SLADS make PASID-entry bits legal; RPRIVS makes RID_PRIV count.
   */
  readonly features: ReadonlySet<string>;
}

/** What a present, valid scalable-mode context entry tells the translation path. */
export interface ScalableContext {
  readonly sid: number;
  readonly fpd: boolean;
  /** Device TLB (ATS translation requests) allowed. */
  readonly dte: boolean;
  /** Requests with PASID allowed. */
  readonly pasidEnabled: boolean;
  /** Page requests allowed. */
  readonly pageRequests: boolean;
  readonly pasidDirectory: number;
  /** Number of PASID directory entries: 2^(PDTS + 7). */
  readonly directoryEntries: number;
  /** PASID and privilege that requests without PASID use. */
  readonly ridPasid: number;
  readonly ridPrivileged: boolean;
}

/** A present, valid scalable-mode PASID entry, decoded once (what a PASID cache holds). */
export interface PasidEntry {
  readonly pasid: number;
  /** Where the entry lives (host-physical), for fault explanations. */
  readonly address: number;
  readonly did: number;
  /** PASID_PGTT: 1 first stage, 2 second stage, 3 nested, 4 pass-through. */
  readonly pgtt: number;
  /** FPD of this entry or of any entry on the way to it (context, directory). */
  readonly fpd: boolean;
  readonly ssTable: number;
  readonly ssLevels: number;
  /** 2^ssInputWidth bounds second-stage inputs: min(AGAW of AW, host address width). */
  readonly ssInputWidth: number;
  readonly ssee: boolean;
  readonly ssade: boolean;
  readonly fsTable: number;
  readonly fsLevels: number;
  readonly sre: boolean;
  readonly ere: boolean;
  readonly wpe: boolean;
  readonly eafe: boolean;
  readonly pwsnp: boolean;
  readonly pgsnp: boolean;
}

export interface ScalableRequest {
  readonly sid: number;
  /** The request's PASID; undefined for a request without PASID (it uses RID_PASID and RID_PRIV). */
  readonly pasid?: number;
  /** Privilege-mode-requested; meaningful only with a PASID. */
  readonly supervisor?: boolean;
  /** Execute-requested; meaningful only with a PASID. */
  readonly execute?: boolean;
  /** An ATS translation request (or a translated request), which needs DTE. */
  readonly translationRequest?: boolean;
}

export type LookupStructure = 'root' | 'context' | 'pasid-directory' | 'pasid-table';

export interface ContextFound {
  readonly ok: true;
  readonly context: ScalableContext;
}

export interface PasidEntryFound {
  readonly ok: true;
  readonly entry: PasidEntry;
}

/** Everything the walk needs for one request. */
export interface ScalableTarget {
  readonly ok: true;
  readonly context: ScalableContext;
  readonly entry: PasidEntry;
  /** The PASID used: the request's, or RID_PASID. */
  readonly pasid: number;
  readonly withPasid: boolean;
  readonly supervisor: boolean;
  readonly execute: boolean;
}

const BITS_PER_LEVEL = 9;
const DEVFNS_PER_BUS = 256;
const BUSES = 256;
/** Devfns 0..127 use the root entry's lower half, 128..255 the upper half. */
const DEVFNS_PER_HALF = 128;
const ROOT_ENTRY_BYTES = SCALABLE_ROOT_ENTRY.sizeBits / 8;
const CONTEXT_ENTRY_BYTES = SCALABLE_CONTEXT_ENTRY.sizeBits / 8;
const DIRECTORY_ENTRY_BYTES = PASID_DIRECTORY_ENTRY.sizeBits / 8;
const PASID_ENTRY_BYTES = SCALABLE_PASID_ENTRY.sizeBits / 8;
/** A PASID table holds 64 entries: PASID bits 5:0 index it, the rest index the directory. */
const PASID_TABLE_BITS = 6;
const PASID_TABLE_ENTRIES = 1 << PASID_TABLE_BITS;
const DIRECTORY_SIZE_BIAS = 7;
/** AW encodes levels - 2. */
const AW_LEVEL_BIAS = 2;
/** FSPM 0 is 4-level paging, 1 is 5-level. */
const FSPM_LEVEL_BIAS = 4;
const WORDS_PER_QWORD = 2;
const BYTES_PER_QWORD = 8;

const ROOT = SCALABLE_ROOT_ENTRY.f;
const CTX = SCALABLE_CONTEXT_ENTRY.f;
const DIR = PASID_DIRECTORY_ENTRY.f;
const PE = SCALABLE_PASID_ENTRY.f;

export class ScalableContextReader {
  private readonly rootReserved: Uint32Array;
  private readonly contextReserved: Uint32Array;
  private readonly directoryReserved: Uint32Array;
  /** Without the address width: the pointer the PGTT uses is checked against it separately. */
  private readonly pasidEntryReserved: Uint32Array;
  private readonly entry: EntryWords = { lo: 0, hi: 0 };
  private readonly words = new Uint32Array(SCALABLE_PASID_ENTRY.sizeWords);
  private readonly pointerLimit: number;

  constructor(
    private readonly memory: GuestMemory,
    private readonly options: ScalableLookupOptions,
  ) {
    const reserved = { addressWidth: options.addressWidth, features: options.features };
    this.rootReserved = reservedWords(SCALABLE_ROOT_ENTRY, reserved);
    this.contextReserved = reservedWords(SCALABLE_CONTEXT_ENTRY, reserved);
    this.directoryReserved = reservedWords(PASID_DIRECTORY_ENTRY, reserved);
    this.pasidEntryReserved = reservedWords(SCALABLE_PASID_ENTRY, { features: options.features });
    this.pointerLimit = 2 ** options.addressWidth;
  }

  /** ECAP.RPS (or its stand-in): RID_PASID may be non-zero. */
  get ridPasidOffered(): boolean {
    return this.options.ridPasid;
  }

  /** Reads `qwords` 64-bit words at `address` into this.words; false when RAM does not back them all. */
  private read(address: number, qwords: number): boolean {
    const e = this.entry;
    const w = this.words;
    for (let i = 0; i < qwords; i++) {
      if (!this.memory.readEntry(address + i * BYTES_PER_QWORD, e)) return false;
      w[i * WORDS_PER_QWORD] = e.lo;
      w[i * WORDS_PER_QWORD + 1] = e.hi;
    }
    return true;
  }

  private record(
    trace: WalkTraceSink,
    structure: 'root' | 'context' | 'pasid-directory' | 'pasid-table',
    tableAddress: number,
    index: number,
    entryBytes: number,
    layout: FieldTable,
  ): void {
    trace.step({
      structure,
      level: 0,
      tableAddress,
      index,
      entryAddress: tableAddress + index * entryBytes,
      value: wordsToBig(this.words, 0, layout.sizeWords),
      layout,
    });
  }

  /** A fault decided by the entry just read into this.words (laid out as `layout`) at `entryAddress`. */
  private decided(
    reason: number,
    stage: LookupStructure,
    fpd: boolean,
    entryAddress: number,
    layout: FieldTable,
    notPresent = false,
    pasid?: number,
  ): FaultRecord {
    return faultRecord(reason, stage, fpd, { entryAddress, entryValue: wordsToBig(this.words, 0, layout.sizeWords), notPresent, pasid });
  }

  /** The root entry half and the context entry for `sid` under the scalable-mode root table at `rootTable`. */
  lookupContext(rootTable: number, sid: number, trace?: WalkTraceSink): ContextFound | FaultRecord {
    const bus = Math.floor(sid / DEVFNS_PER_BUS) % BUSES;
    const devfn = sid % DEVFNS_PER_BUS;
    const upper = devfn >= DEVFNS_PER_HALF;
    const w = this.words;
    const rootAddress = rootTable + bus * ROOT_ENTRY_BYTES;
    if (!this.read(rootAddress, 2)) return faultRecord(SM_FR.ROOT_ACCESS, 'root', false, { entryAddress: rootAddress });
    if (trace) this.record(trace, 'root', rootTable, bus, ROOT_ENTRY_BYTES, SCALABLE_ROOT_ENTRY);
    if (!getField(w, upper ? ROOT.UP : ROOT.LP)) return this.decided(SM_FR.ROOT_NOT_PRESENT, 'root', false, rootAddress, SCALABLE_ROOT_ENTRY, true);
    // Only the half that serves this devfn is checked: the other half may be absent and hold anything.
    const half = upper ? WORDS_PER_QWORD : 0;
    if ((w[half]! & this.rootReserved[half]!) !== 0 || (w[half + 1]! & this.rootReserved[half + 1]!) !== 0) {
      return this.decided(SM_FR.ROOT_RESERVED, 'root', false, rootAddress, SCALABLE_ROOT_ENTRY);
    }
    const contextTable = getField(w, upper ? ROOT.UCTP : ROOT.LCTP) * 2 ** PAGE_SHIFT;
    const index = devfn % DEVFNS_PER_HALF;
    const contextAddress = contextTable + index * CONTEXT_ENTRY_BYTES;
    if (!this.read(contextAddress, 4)) return faultRecord(SM_FR.CONTEXT_ACCESS, 'context', false, { entryAddress: contextAddress });
    if (trace) this.record(trace, 'context', contextTable, index, CONTEXT_ENTRY_BYTES, SCALABLE_CONTEXT_ENTRY);
    // FPD counts whatever P says (as QEMU reads it); a malformed entry's FPD does not.
    const fpd = getField(w, CTX.FPD) === 1;
    if (!getField(w, CTX.P)) return this.decided(SM_FR.CONTEXT_NOT_PRESENT, 'context', fpd, contextAddress, SCALABLE_CONTEXT_ENTRY, true);
    if (hasReservedBits(w, this.contextReserved))
      return this.decided(SM_FR.CONTEXT_RESERVED, 'context', false, contextAddress, SCALABLE_CONTEXT_ENTRY);
    const ridPasid = getField(w, CTX.RID_PASID);
    return {
      ok: true,
      context: {
        sid,
        fpd,
        dte: getField(w, CTX.DTE) === 1,
        pasidEnabled: getField(w, CTX.PASIDE) === 1,
        pageRequests: getField(w, CTX.PRE) === 1,
        pasidDirectory: getField(w, CTX.PASIDDIRPTR) * 2 ** PAGE_SHIFT,
        directoryEntries: 2 ** (getField(w, CTX.PDTS) + DIRECTORY_SIZE_BIAS),
        ridPasid,
        ridPrivileged: this.options.features.has('RPRIVS') && getField(w, CTX.RID_PRIV) === 1,
      },
    };
  }

  /**
   * The PASID directory entry and PASID entry for `pasid`. `viaRidPasid` says the PASID came from the context's
   * RID_PASID, so a PASID beyond the directory is a RID_PASID error rather than a too-large request PASID.
   */
  lookupPasidEntry(context: ScalableContext, pasid: number, viaRidPasid = false, trace?: WalkTraceSink): PasidEntryFound | FaultRecord {
    const w = this.words;
    const directoryIndex = Math.floor(pasid / PASID_TABLE_ENTRIES);
    if (directoryIndex >= context.directoryEntries) {
      return faultRecord(viaRidPasid ? SM_FR.RID_PASID_ERROR : SM_FR.PASID_TOO_LARGE, 'context', context.fpd, { pasid });
    }
    const directoryAddress = context.pasidDirectory + directoryIndex * DIRECTORY_ENTRY_BYTES;
    if (!this.read(directoryAddress, 1))
      return faultRecord(SM_FR.DIRECTORY_ACCESS, 'pasid-directory', false, { entryAddress: directoryAddress, pasid });
    if (trace) this.record(trace, 'pasid-directory', context.pasidDirectory, directoryIndex, DIRECTORY_ENTRY_BYTES, PASID_DIRECTORY_ENTRY);
    const directoryFpd = context.fpd || getField(w, DIR.FPD) === 1;
    if (!getField(w, DIR.P))
      return this.decided(SM_FR.DIRECTORY_NOT_PRESENT, 'pasid-directory', directoryFpd, directoryAddress, PASID_DIRECTORY_ENTRY, true, pasid);
    if (hasReservedBits(w, this.directoryReserved)) {
      return this.decided(SM_FR.DIRECTORY_RESERVED, 'pasid-directory', context.fpd, directoryAddress, PASID_DIRECTORY_ENTRY, false, pasid);
    }
    const pasidTable = getField(w, DIR.PTP) * 2 ** PAGE_SHIFT;
    const index = pasid % PASID_TABLE_ENTRIES;
    const entryAddress = pasidTable + index * PASID_ENTRY_BYTES;
    if (!this.read(entryAddress, PASID_ENTRY_BYTES / BYTES_PER_QWORD)) {
      return faultRecord(SM_FR.PASID_ENTRY_ACCESS, 'pasid-table', false, { entryAddress, pasid });
    }
    if (trace) this.record(trace, 'pasid-table', pasidTable, index, PASID_ENTRY_BYTES, SCALABLE_PASID_ENTRY);
    const fpd = directoryFpd || getField(w, PE.FPD) === 1;
    if (!getField(w, PE.P)) return this.decided(SM_FR.PASID_ENTRY_NOT_PRESENT, 'pasid-table', fpd, entryAddress, SCALABLE_PASID_ENTRY, true, pasid);
    const pgtt = getField(w, PE.PGTT);
    const usesFirstStage = pgtt === PASID_PGTT.FIRST_STAGE || pgtt === PASID_PGTT.NESTED;
    const usesSecondStage = pgtt === PASID_PGTT.SECOND_STAGE || pgtt === PASID_PGTT.NESTED;
    const ssTable = getField(w, PE.SSPTPTR) * 2 ** PAGE_SHIFT;
    const fsTable = getField(w, PE.FSPTPTR) * 2 ** PAGE_SHIFT;
    // Pointer bits above the host width are reserved only in the pointer the PGTT uses; the other is ignored.
    if (
      hasReservedBits(w, this.pasidEntryReserved) ||
      (usesSecondStage && ssTable >= this.pointerLimit) ||
      (usesFirstStage && fsTable >= this.pointerLimit)
    ) {
      return this.decided(SM_FR.PASID_ENTRY_RESERVED, 'pasid-table', directoryFpd, entryAddress, SCALABLE_PASID_ENTRY, false, pasid);
    }
    const aw = getField(w, PE.AW);
    const fspm = getField(w, PE.FSPM);
    if (
      !this.pgttSupported(pgtt) ||
      (usesSecondStage && ((this.options.sagaw >>> aw) & 1) === 0) ||
      (usesFirstStage && !(fspm === 0 || (fspm === 1 && this.options.fs5lp)))
    ) {
      return this.decided(SM_FR.PASID_ENTRY_INVALID, 'pasid-table', fpd, entryAddress, SCALABLE_PASID_ENTRY, false, pasid);
    }
    const ssLevels = aw + AW_LEVEL_BIAS;
    return {
      ok: true,
      entry: {
        pasid,
        pgtt,
        fpd,
        address: entryAddress,
        did: getField(w, PE.DID),
        ssTable,
        ssLevels,
        ssInputWidth: Math.min(PAGE_SHIFT + BITS_PER_LEVEL * ssLevels, this.options.addressWidth),
        ssee: getField(w, PE.SSEE) === 1,
        ssade: getField(w, PE.SSADE) === 1,
        fsTable,
        fsLevels: fspm + FSPM_LEVEL_BIAS,
        sre: getField(w, PE.SRE) === 1,
        ere: getField(w, PE.ERE) === 1,
        wpe: getField(w, PE.WPE) === 1,
        eafe: getField(w, PE.EAFE) === 1,
        pwsnp: getField(w, PE.PWSNP) === 1,
        pgsnp: getField(w, PE.PGSNP) === 1,
      },
    };
  }

  private pgttSupported(pgtt: number): boolean {
    const f = this.options.features;
    switch (pgtt) {
      case PASID_PGTT.FIRST_STAGE:
        return f.has('FSTS');
      case PASID_PGTT.SECOND_STAGE:
        return f.has('SSTS');
      case PASID_PGTT.NESTED:
        return f.has('NEST') && f.has('FSTS') && f.has('SSTS');
      case PASID_PGTT.PASS_THROUGH:
        return f.has('PT');
      default:
        return false;
    }
  }

  /**
   * The check between a request's context entry and its PASID entry: PASIDE for requests with PASID, a usable
   * RID_PASID for requests without. 0 when the request may go on; otherwise the fault reason. The one copy of
   * this rule: ScalableTranslator (production) and resolve() both use it.
   */
  contextRefusal(context: ScalableContext, withPasid: boolean): number {
    if (withPasid) return context.pasidEnabled ? 0 : SM_FR.PASIDE_CLEAR;
    return context.ridPasid === 0 || this.options.ridPasid ? 0 : SM_FR.RID_PASID_ERROR;
  }

  /**
   * Root entry, context entry, PASID directory and PASID entry for one request, with the request-level checks
   * between them (DTE, then contextRefusal) and after them (pasidEntryRefusal), uncached: for tools and tests;
   * translation goes through ScalableTranslator, which applies the same two checks to its cached entries.
   */
  resolve(rootTable: number, request: ScalableRequest, trace?: WalkTraceSink): ScalableTarget | FaultRecord {
    const found = this.lookupContext(rootTable, request.sid, trace);
    if (!found.ok) return found;
    const context = found.context;
    if (request.translationRequest && !context.dte) return faultRecord(SM_FR.DTE_CLEAR, 'context', context.fpd);
    const withPasid = request.pasid !== undefined;
    const refused = this.contextRefusal(context, withPasid);
    if (refused !== 0) return faultRecord(refused, 'context', context.fpd, withPasid ? { pasid: request.pasid } : {});
    const pasid = withPasid ? request.pasid! : context.ridPasid;
    const supervisor = withPasid ? (request.supervisor ?? false) : context.ridPrivileged;
    const execute = withPasid && (request.execute ?? false);
    const looked = this.lookupPasidEntry(context, pasid, !withPasid, trace);
    if (!looked.ok) return looked;
    const entry = looked.entry;
    const entryRefused = pasidEntryRefusal(entry, supervisor, execute);
    if (entryRefused !== 0) return faultRecord(entryRefused, 'pasid-table', entry.fpd, { entryAddress: entry.address, pasid });
    return { ok: true, context, entry, pasid, withPasid, supervisor, execute };
  }
}

/**
 * The check after a PASID entry: walks that use the first stage need SRE for supervisor requests and ERE for
 * execute requests. 0 when allowed; otherwise the fault reason.
 */
export function pasidEntryRefusal(entry: PasidEntry, supervisor: boolean, execute: boolean): number {
  if (entry.pgtt !== PASID_PGTT.FIRST_STAGE && entry.pgtt !== PASID_PGTT.NESTED) return 0;
  if (supervisor && !entry.sre) return SM_FR.SRE_CLEAR;
  if (execute && !entry.ere) return SM_FR.ERE_CLEAR;
  return 0;
}
