/** Interrupt remapping: decode an MSI, check and read its IRTE, and produce the remapped interrupt or a fault reason. */

import type { EntryWords, GuestMemory } from '../memory/guest-memory';
import { defineFields, getField, getField64, hasReservedBits, reservedWords } from './bitfield';
import { faultCode } from './fault-reasons';
import type { InterruptEntryCache } from './interrupt-entry-cache';
import { INTERRUPT_WINDOW_START, PAGE_BYTES } from '../memory/geometry';
import { IRTA_FIELDS } from './registers';
import { IRTE } from './structures';

/** MSI address in remappable format (spec 5.1.2.2). */
export const MSI_REMAPPABLE_ADDRESS = defineFields('MSI address (remappable)', 32, [
  { name: 'IGN', bit: 0, width: 2, description: 'ignored' },
  { name: 'HANDLE_HI', bit: 2, width: 1, description: 'handle bit 15' },
  { name: 'SHV', bit: 3, width: 1, description: 'subhandle valid: add data[15:0] to the handle' },
  { name: 'IF', bit: 4, width: 1, description: 'interrupt format: 1 remappable, 0 compatibility', values: { 0: 'compatibility', 1: 'remappable' } },
  { name: 'HANDLE_LO', bit: 5, width: 15, description: 'handle bits 14:0' },
  { name: 'BASE', bit: 20, width: 12, description: 'must be 0xfee' },
] as const);

/** MSI data in remappable format: only the subhandle is used. */
export const MSI_REMAPPABLE_DATA = defineFields('MSI data (remappable)', 32, [
  { name: 'SUBHANDLE', bit: 0, width: 16, description: 'subhandle (with SHV)' },
  { name: 'IGN', bit: 16, width: 16, description: 'ignored' },
] as const);

/** Compatibility-format MSI address and data, the form a remapped interrupt is delivered in. */
export const MSI_COMPAT_ADDRESS = defineFields('MSI address (compatibility)', 32, [
  { name: 'DM', bit: 2, width: 1, description: 'destination mode' },
  { name: 'RH', bit: 3, width: 1, description: 'redirection hint' },
  { name: 'DEST', bit: 12, width: 8, description: 'destination APIC id' },
  { name: 'BASE', bit: 20, width: 12, description: '0xfee' },
] as const);

export const MSI_COMPAT_DATA = defineFields('MSI data (compatibility)', 32, [
  { name: 'VECTOR', bit: 0, width: 8, description: 'vector' },
  { name: 'DLM', bit: 8, width: 3, description: 'delivery mode' },
  { name: 'LEVEL', bit: 14, width: 1, description: 'level: 1 assert (a remapped interrupt always asserts)' },
  { name: 'TM', bit: 15, width: 1, description: 'trigger mode' },
] as const);

export const IR_FAULT = {
  REQUEST_RESERVED: faultCode('IR_REQUEST_RESERVED'),
  INDEX_OVER: faultCode('IR_INDEX_OVER'),
  ENTRY_NOT_PRESENT: faultCode('IR_ENTRY_NOT_PRESENT'),
  TABLE_INVALID: faultCode('IR_TABLE_INVALID'),
  ENTRY_RESERVED: faultCode('IR_ENTRY_RESERVED'),
  COMPATIBILITY_BLOCKED: faultCode('IR_COMPATIBILITY_BLOCKED'),
  SOURCE_ID_MISMATCH: faultCode('IR_SOURCE_ID_MISMATCH'),
} as const;

export interface InterruptRequest {
  readonly sid: number;
  /** The MSI address the device wrote to (low 32 bits). */
  readonly address: number;
  readonly data: number;
}

export interface RemappedInterrupt {
  readonly ok: true;
  /** The interrupt as a compatibility-format MSI (xAPIC destinations; x2APIC ids above 255 are in `destination`). */
  readonly address: number;
  readonly data: number;
  readonly destination: number;
  readonly vector: number;
  readonly deliveryMode: number;
  readonly triggerMode: number;
  readonly destinationMode: number;
  /** False for a compatibility-format interrupt let through unchanged. */
  readonly remapped: boolean;
}

export interface InterruptFault {
  readonly ok: false;
  readonly reason: number;
  /** The interrupt index, when the request got that far (FRCD fault information carries it). */
  readonly index?: number;
  /** The IRTE had FPD set: the fault is not recorded. */
  readonly fpd: boolean;
}

export interface RemapState {
  /** IRTA as latched by SIRTP. */
  readonly irta: bigint;
  /** GSTS.CFIS. */
  readonly compatibilityAllowed: boolean;
  /** Check the requester against the IRTE's SID/SQ/SVT (QEMU 7.2 cannot for DMA writes: they carry no requester id). */
  readonly verifySource: boolean;
  /** Reject posted-format IRTEs and xAPIC-mode destinations with reserved bits (QEMU 7.2 takes both). */
  readonly strictEntries: boolean;
}

/** The top 12 bits of every MSI address (0xfee00000..0xfeefffff). */
const MSI_BASE = INTERRUPT_WINDOW_START / 2 ** MSI_REMAPPABLE_ADDRESS.f.BASE.lsb;
const IRTE_BYTES = IRTE.sizeBits / 8;
const HANDLE_LO_BITS = MSI_REMAPPABLE_ADDRESS.f.HANDLE_LO.width;
/** SVT values and SQ function-bit masks (spec table 25). */
const SVT = { NONE: 0, SID: 1, BUS_RANGE: 2 } as const;
const SQ_IGNORED_FUNCTION_BITS = [0b000, 0b100, 0b110, 0b111] as const;
/** xAPIC destinations are IRTE bits 47:40, i.e. DST bits 15:8: DST / 256. */
const XAPIC_IDS = 256;

function fault(reason: number, fpd = false, index?: number): InterruptFault {
  return index === undefined ? { ok: false, reason, fpd } : { ok: false, reason, fpd, index };
}

export class InterruptRemapper {
  private readonly reserved: Uint32Array;
  private readonly entry: EntryWords = { lo: 0, hi: 0 };
  private readonly words = new Uint32Array(4);

  constructor(
    private readonly memory: GuestMemory,
    addressWidth: number,
    features: ReadonlySet<string>,
    private readonly allowCompatibilityWithoutCfi: boolean,
    /** Present IRTEs are taken from here when cached and put here when read. */
    private readonly cache: InterruptEntryCache,
  ) {
    this.reserved = reservedWords(IRTE, { addressWidth, features });
  }

  remap(request: InterruptRequest, state: RemapState): RemappedInterrupt | InterruptFault {
    const a = MSI_REMAPPABLE_ADDRESS.f;
    const address = request.address >>> 0;
    const one = [address];
    if (getField(one, a.BASE) !== MSI_BASE) return fault(IR_FAULT.REQUEST_RESERVED);
    const [irtaLo, irtaHi] = [Number(BigInt.asUintN(32, state.irta)), Number(state.irta >> 32n)];
    const eime = getField64(irtaLo, irtaHi, IRTA_FIELDS.f.EIME) === 1;
    if (getField(one, a.IF) === 0) {
      // Compatibility format: blocked unless software allowed it (and never in x2APIC mode).
      if (!this.allowCompatibilityWithoutCfi && (!state.compatibilityAllowed || eime)) return fault(IR_FAULT.COMPATIBILITY_BLOCKED);
      return this.passThrough(request);
    }
    let index = getField(one, a.HANDLE_LO) + getField(one, a.HANDLE_HI) * 2 ** HANDLE_LO_BITS;
    if (getField(one, a.SHV)) index += getField([request.data >>> 0], MSI_REMAPPABLE_DATA.f.SUBHANDLE);
    const entries = 2 ** (getField64(irtaLo, irtaHi, IRTA_FIELDS.f.S) + 1);
    if (index >= entries) return fault(IR_FAULT.INDEX_OVER, false, index);
    const f = IRTE.f;
    let w: ArrayLike<number> | undefined = this.cache.get(index);
    if (w === undefined) {
      const table = getField64(irtaLo, irtaHi, IRTA_FIELDS.f.IRTA) * PAGE_BYTES;
      if (!this.readIrte(table + index * IRTE_BYTES)) return fault(IR_FAULT.TABLE_INVALID, false, index);
      w = this.words;
      // Like a context entry's, the IRTE's FPD covers its own P = 0 (a qualified fault).
      if (!getField(w, f.P)) return fault(IR_FAULT.ENTRY_NOT_PRESENT, getField(w, f.FPD) === 1, index);
      // Only present entries are cached; every request still checks the entry and its source id.
      this.cache.set(index, w);
    }
    const fpd = getField(w, f.FPD) === 1;
    const dst = getField(w, f.DST);
    // Posted format needs CAP.PI (not offered); xAPIC mode allows only DST bits 15:8.
    const badDestination = !eime && (dst % XAPIC_IDS !== 0 || dst >= XAPIC_IDS * XAPIC_IDS);
    const badMode = getField(w, f.IM) === 1 || badDestination;
    if (hasReservedBits(w, this.reserved) || (state.strictEntries && badMode) || (state.verifySource && getField(w, f.SVT) === 3)) {
      return fault(IR_FAULT.ENTRY_RESERVED, fpd, index);
    }
    if (state.verifySource && !this.sourceMatches(request.sid, getField(w, f.SVT), getField(w, f.SQ), getField(w, f.SID))) {
      return fault(IR_FAULT.SOURCE_ID_MISMATCH, fpd, index);
    }
    // xAPIC destinations are DST bits 15:8 (QEMU 7.2 takes those bits whatever the others hold).
    const destination = eime ? dst : Math.floor(dst / XAPIC_IDS) % XAPIC_IDS;
    const destinationMode = getField(w, f.DM);
    const vector = getField(w, f.V);
    const deliveryMode = getField(w, f.DLM);
    const triggerMode = getField(w, f.TM);
    return {
      ok: true,
      remapped: true,
      destination,
      vector,
      deliveryMode,
      triggerMode,
      destinationMode,
      address: this.compatAddress(destination % XAPIC_IDS, destinationMode, getField(w, f.RH)),
      data: this.compatData(vector, deliveryMode, triggerMode),
    };
  }

  /** Reads the 16-byte IRTE at `address` into this.words; false when RAM does not back it. */
  private readIrte(address: number): boolean {
    const e = this.entry;
    const w = this.words;
    if (!this.memory.readEntry(address, e)) return false;
    w[0] = e.lo;
    w[1] = e.hi;
    if (!this.memory.readEntry(address + 8, e)) return false;
    w[2] = e.lo;
    w[3] = e.hi;
    return true;
  }

  private sourceMatches(sid: number, svt: number, sq: number, expected: number): boolean {
    if (svt === SVT.NONE) return true;
    if (svt === SVT.SID) {
      const keep = ~(SQ_IGNORED_FUNCTION_BITS[sq] ?? 0);
      return (sid & keep) === (expected & keep);
    }
    // Bus range: SID field holds start bus (15:8) and end bus (7:0).
    const bus = Math.floor(sid / 256);
    return bus >= Math.floor(expected / 256) && bus <= expected % 256;
  }

  /** The request as a compatibility-format interrupt, unchanged. */
  passThrough(request: InterruptRequest): RemappedInterrupt {
    const address = [request.address >>> 0];
    const data = [request.data >>> 0];
    return {
      ok: true,
      remapped: false,
      address: request.address >>> 0,
      data: request.data >>> 0,
      destination: getField(address, MSI_COMPAT_ADDRESS.f.DEST),
      destinationMode: getField(address, MSI_COMPAT_ADDRESS.f.DM),
      vector: getField(data, MSI_COMPAT_DATA.f.VECTOR),
      deliveryMode: getField(data, MSI_COMPAT_DATA.f.DLM),
      triggerMode: getField(data, MSI_COMPAT_DATA.f.TM),
    };
  }

  private compatAddress(destination: number, destinationMode: number, redirectionHint: number): number {
    const c = MSI_COMPAT_ADDRESS.f;
    return (MSI_BASE * 2 ** c.BASE.lsb + destination * 2 ** c.DEST.lsb + redirectionHint * 2 ** c.RH.lsb + destinationMode * 2 ** c.DM.lsb) >>> 0;
  }

  private compatData(vector: number, deliveryMode: number, triggerMode: number): number {
    const d = MSI_COMPAT_DATA.f;
    return vector + deliveryMode * 2 ** d.DLM.lsb + 2 ** d.LEVEL.lsb + triggerMode * 2 ** d.TM.lsb;
  }
}
