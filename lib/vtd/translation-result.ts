/**
 * What a translation hands its caller (a page, or a failure with its fault record and what became of the record),
 * and the one place a failed translation is recorded: shared by the legacy and the scalable translator.
 */

import { MAX_GUEST_ADDRESS } from '../memory/addresses';
import { INTERRUPT_WINDOW_END, INTERRUPT_WINDOW_START } from '../memory/geometry';
import { bigToNumber } from './bitfield';
import type { Compat } from './config';
import type { QuirkId } from './compat-quirks';
import { faultRecord, withFault, type FaultRecord } from './fault';
import { FR } from './legacy-walk';
import { faultCode } from './fault-reasons';
import type { FaultRecorder, RecordOutcome } from './fault-recorder';
import type { ScalableRequestInput } from './scalable-translation';

/** A DMA request: requester id, input address, direction, and (PCIe PASID prefix) PASID, privilege and execute. */
export type TranslationRequest = ScalableRequestInput;

export interface TranslationSuccess {
  readonly ok: true;
  /** Guest-physical address the IOVA maps to. */
  readonly address: number;
  /** Size of the page that maps it (the translation holds for the whole page). */
  readonly pageSize: number;
  readonly readable: boolean;
  readonly writable: boolean;
}

export interface TranslationFailure {
  readonly ok: false;
  readonly sid: number;
  readonly iova: bigint;
  readonly write: boolean;
  /**
   * What happened to the record: written, suppressed by FPD, or lost (collapse / overflow); 'none' when no record
   * is due (TE off, an input in the interrupt range, which is not DMA-remapped, or a QEMU 7.2 quirk).
   */
  readonly recording: RecordOutcome | 'suppressed-fpd' | 'none';
  /** Where and why, as recorded (compat quirks applied to the reason): stage, levels, the entry that decided, the PASID used. */
  readonly fault: FaultRecord;
}

export type TranslationResult = TranslationSuccess | TranslationFailure;

export const UNTRANSLATED_LIMIT = BigInt(MAX_GUEST_ADDRESS) + 1n;
/** requestInput() of an IOVA at or above 2^52 (or negative). */
export const BEYOND_INPUT = -1;

/** The one BigInt step of a translation: below 2^52 the IOVA is an exact number (any MGAW is smaller); BEYOND_INPUT stands for the rest. */
export function requestInput(iova: bigint): number {
  return iova >= 0n && iova < UNTRANSLATED_LIMIT ? bigToNumber(iova) : BEYOND_INPUT;
}

/** Requests without PASID to the interrupt range are interrupt requests, never DMA-remapped (spec 3.14); refused unrecorded. */
export function interruptRangeRefusal(request: TranslationRequest, input: number): TranslationFailure | undefined {
  if (input < INTERRUPT_WINDOW_START || input >= INTERRUPT_WINDOW_END || request.pasid !== undefined) return undefined;
  return failure(request, faultRecord(FR.INTERRUPT_ADDRESS, 'request', false), 'none');
}

/**
 * The codes QEMU 7.2 records for scalable-mode faults (quirk scalable-faults-use-legacy-reasons), as measured by
 * test/oracle/differential-scalable.test.ts: legacy codes for the root, context and paging faults, and 0x58
 * (its VTD_FR_PASID_TABLE_INV) for every PASID directory and PASID entry fault.
 */
const LEGACY_REASON_IN_QEMU_7_2: ReadonlyMap<number, number> = new Map([
  [faultCode('SM_ROOT_ENTRY_NOT_PRESENT'), FR.ROOT_ENTRY_NOT_PRESENT],
  [faultCode('SM_CONTEXT_ENTRY_NOT_PRESENT'), FR.CONTEXT_ENTRY_NOT_PRESENT],
  ...(
    [
      'SM_PASID_DIRECTORY_ACCESS',
      'SM_PASID_DIRECTORY_NOT_PRESENT',
      'SM_PASID_DIRECTORY_RESERVED',
      'SM_PASID_ENTRY_ACCESS',
      'SM_PASID_ENTRY_NOT_PRESENT',
      'SM_PASID_ENTRY_RESERVED',
      'SM_PASID_ENTRY_INVALID',
    ] as const
  ).map((name) => [faultCode(name), faultCode('SM_PASID_ENTRY_ACCESS')] as const),
  [faultCode('SM_WRITE'), FR.WRITE],
  [faultCode('SM_READ'), FR.READ],
]);

/**
 * The codes QEMU 10.0.2 records for scalable-mode faults (quirk scalable-faults-use-legacy-reasons), as measured by
 * test/oracle/differential-qemu10.test.ts and differential-first-stage.test.ts: legacy codes for root and context
 * entries not present and for the read and write faults of second-stage walks; PASID-structure faults and
 * first-stage faults keep their scalable-mode codes.
 */
const LEGACY_REASON_IN_QEMU_10_0: ReadonlyMap<number, number> = new Map([
  [faultCode('SM_ROOT_ENTRY_NOT_PRESENT'), FR.ROOT_ENTRY_NOT_PRESENT],
  [faultCode('SM_CONTEXT_ENTRY_NOT_PRESENT'), FR.CONTEXT_ENTRY_NOT_PRESENT],
  [faultCode('SM_WRITE'), FR.WRITE],
  [faultCode('SM_READ'), FR.READ],
]);

/** The reason QEMU records for scalable-mode fault `reason` under `compat` (quirk scalable-faults-use-legacy-reasons). */
function legacyReason(reason: number, compat: Compat, firstStage: boolean): number {
  if (compat !== 'qemu-10.0') return LEGACY_REASON_IN_QEMU_7_2.get(reason) ?? reason;
  if (firstStage) return reason;
  return LEGACY_REASON_IN_QEMU_10_0.get(reason) ?? reason;
}

/** Records failed translations in the fault recording registers, as the unit's compat quirks say. */
export class TranslationFaults {
  private readonly scalableReasonsRenamed: boolean;
  private readonly ridPasidRecorded: boolean;

  constructor(
    private readonly recorder: FaultRecorder,
    quirks: ReadonlySet<QuirkId>,
    private readonly compat: Compat,
  ) {
    this.scalableReasonsRenamed = quirks.has('scalable-faults-use-legacy-reasons');
    this.ridPasidRecorded = quirks.has('scalable-rid-pasid-recorded-as-pasid');
  }

  /** Records `fault` unless it is unrecorded or FPD suppresses it; the record carries the request's PASID. */
  report(request: TranslationRequest, fault: FaultRecord): TranslationFailure {
    if (fault.unrecorded === true) return failure(request, fault, 'none');
    if (fault.fpd) return failure(request, fault, 'suppressed-fpd');
    // PP and PV say which PASID a request carried; requests without PASID have none (QEMU 7.2 records RID_PASID).
    const pasid = request.pasid ?? (fault.pastContext && this.ridPasidRecorded ? fault.pasid : undefined);
    const outcome = this.recorder.record({
      sid: request.sid,
      reason: fault.reason,
      iova: request.iova,
      write: request.write,
      pasid,
      pastContext: fault.pastContext,
    });
    return failure(request, fault, outcome);
  }

  /** A scalable-mode walk's fault, under the code QEMU records for it where a quirk says so, then recorded as report() does. */
  reportScalable(request: TranslationRequest, fault: FaultRecord): TranslationFailure {
    if (!this.scalableReasonsRenamed) return this.report(request, fault);
    const reason = legacyReason(fault.reason, this.compat, fault.stage === 'first-stage');
    return this.report(request, reason === fault.reason ? fault : withFault(fault, { reason }));
  }
}

/** `request` refused with `fault`, whose record had `recording` as its fate. */
export function failure(request: TranslationRequest, fault: FaultRecord, recording: TranslationFailure['recording']): TranslationFailure {
  return { ok: false, sid: request.sid, iova: request.iova, write: request.write, recording, fault };
}
