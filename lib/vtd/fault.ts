/** The one description of a translation fault inside the unit: what the walkers produce and translate() hands out. */

import { wordsToBig } from './bitfield';

/**
 * Where the fault was found. 'request': the request itself was refused before any structure was read (an input in
 * the interrupt range, a PASID without scalable mode, an input beyond the address width with translation off);
 * the lookup structures in the order they are read; the two paging stages; 'output': the translated address
 * (in the interrupt range).
 */
export const FAULT_STAGES = ['request', 'root', 'context', 'pasid-directory', 'pasid-table', 'first-stage', 'second-stage', 'output'] as const;
export type FaultStage = (typeof FAULT_STAGES)[number];

export interface FaultRecord {
  readonly ok: false;
  /** The fault reason code (FRCD.FR). */
  readonly reason: number;
  readonly stage: FaultStage;
  /**
   * The paging level being processed: the first-stage level (5..1) for first-stage and nested walks, 0 when a
   * nested walk's output was being translated; the second-stage level for legacy and second-stage-only walks.
   * Absent for faults outside the paging structures.
   */
  readonly level?: number;
  /** Nested walks, stage 'second-stage': the second-stage level where that walk stopped, when it stopped inside one. */
  readonly secondStageLevel?: number;
  /**
   * Address of the entry that decided, when one was located: the structure entry for lookups and paging faults;
   * in a nested walk the first-stage entry's guest address whose translation (or A/D update) failed.
   */
  readonly entryAddress?: number;
  /** The entry as read, when the fault was decided by its contents (absent for an entry that could not be read). */
  readonly entryValue?: bigint;
  /** The PASID the walk used: the request's, or RID_PASID for a request without one (scalable mode, once known). */
  readonly pasid?: number;
  /** A qualified fault under an entry with FPD set: not recorded. */
  readonly fpd: boolean;
  /** The entry that stopped the walk was not present (rather than present and refusing the access, or malformed). */
  readonly notPresent: boolean;
  /** Found by the page walk or after it (paging entries, the output), not in the root, context or PASID structures. */
  readonly pastContext: boolean;
  /** Refused by a cached translation without the right and not recorded (quirk iotlb-hit-without-permission-not-recorded). */
  readonly unrecorded?: boolean;
}

/** The optional parts of a record; each is left off the object when absent, so records compare with deepEqual. */
export interface FaultDetail {
  readonly level?: number;
  readonly secondStageLevel?: number;
  readonly entryAddress?: number;
  readonly entryValue?: bigint;
  readonly pasid?: number;
  readonly notPresent?: boolean;
  readonly unrecorded?: boolean;
  /** Overrides the stage's own answer: a check at the context that only the page walk's input reaches. */
  readonly pastContext?: boolean;
}

const PAST_CONTEXT: ReadonlySet<FaultStage> = new Set(['first-stage', 'second-stage', 'output']);

/** A fault record; faults are rare, so building one may allocate freely. */
export function faultRecord(reason: number, stage: FaultStage, fpd: boolean, detail: FaultDetail = {}): FaultRecord {
  const record: { -readonly [K in keyof FaultRecord]: FaultRecord[K] } = {
    ok: false,
    reason,
    stage,
    fpd,
    notPresent: detail.notPresent ?? false,
    pastContext: detail.pastContext ?? PAST_CONTEXT.has(stage),
  };
  if (detail.level !== undefined) record.level = detail.level;
  if (detail.secondStageLevel !== undefined) record.secondStageLevel = detail.secondStageLevel;
  if (detail.entryAddress !== undefined) record.entryAddress = detail.entryAddress;
  if (detail.entryValue !== undefined) record.entryValue = detail.entryValue;
  if (detail.pasid !== undefined) record.pasid = detail.pasid;
  if (detail.unrecorded === true) record.unrecorded = true;
  return record;
}

/** `record` with other fields replaced (a quirk's reason, the PASID once the lookup knows it). */
export function withFault(record: FaultRecord, changes: Partial<Pick<FaultRecord, 'reason' | 'pasid'>>): FaultRecord {
  return { ...record, ...changes };
}

/** A 64-bit entry given as its two 32-bit halves, as the record's value. */
export function entryValue(lo: number, hi: number): bigint {
  return wordsToBig([lo >>> 0, hi >>> 0]);
}
