/** Nested translation: a first-stage walk whose entry addresses and output all go through the shared second-stage walk. */

import type { CachedContext } from './caches';
import { faultCode } from './fault-reasons';
import { faultRecord, type FaultRecord } from './fault';
import type { FirstStageParams, FirstStageRequest, FirstStageTableAccess, FirstStageWalker } from './first-stage-walk';
import { FR, type LegacyWalker, type PageFound } from './legacy-walk';
import type { WalkTraceSink } from './walk-trace';

/** 2^n for every address width, computed once: ** with a variable exponent is a slow call on the walk path. */
const POWERS_OF_TWO = Array.from({ length: 65 }, (_, n) => 2 ** n);

/**
 * The offset of `address` inside its page. Page sizes are powers of two up to 1 GiB, so the mask sees only bits the
 * 32-bit & keeps exactly; % on a double above 2^31 would take V8's slow path.
 */
function offsetInPage(address: number, pageSize: number): number {
  return address & (pageSize - 1);
}

export const SS_FR = {
  ACCESS: faultCode('SM_SECOND_STAGE_ACCESS'),
  RESERVED: faultCode('SM_SECOND_STAGE_RESERVED'),
  POINTER_INVALID: faultCode('SM_SECOND_STAGE_POINTER_INVALID'),
  INPUT_BEYOND: faultCode('SM_BEYOND_HARDWARE_MAX'),
  OUTPUT_BEYOND: faultCode('SM_SECOND_STAGE_ADDRESS_BEYOND_MAX'),
  TABLE_BEYOND: faultCode('SM_FIRST_STAGE_BEYOND_MGAW_NESTED'),
  TOP_TABLE_READ: faultCode('SM_FIRST_STAGE_PML4_READ_NESTED'),
  TABLE_READ: faultCode('SM_FIRST_STAGE_READ_NESTED'),
  WRITE: faultCode('SM_WRITE'),
  READ: faultCode('SM_READ'),
} as const;

/**
 * What a second-stage translation is for, which decides the reason a refusal reports: reading the top
 * first-stage table (FSPTPTR), reading another first-stage table, or the access itself (the first stage's
 * output in nested mode, the request's address in second-stage-only mode).
 */
export type SecondStagePurpose = 'top-table' | 'table' | 'access';

/** What the second stage needs from the PASID entry (names as in PasidEntry). */
export interface SecondStageParams {
  readonly ssTable: number;
  readonly ssLevels: number;
  /** Inputs at or above 2^ssInputWidth are beyond the second stage. */
  readonly ssInputWidth: number;
  readonly fpd: boolean;
}

export type NestedParams = FirstStageParams & SecondStageParams;

export interface NestedPage {
  readonly ok: true;
  /** Host-physical base of the page and its size: the smaller of the two stages' pages. */
  readonly address: number;
  readonly pageSize: number;
  /** First-stage leaf level. */
  readonly level: number;
  /** The second stage allows reading the output (the first stage always does for a present page). */
  readonly readable: boolean;
  readonly writable: boolean;
  /** First-stage execute rights; second-stage X (SSEE) is not modelled. */
  readonly executable: boolean;
  /** The first-stage leaf's D flag is set. */
  readonly dirty: boolean;
  /** Guest-physical base of the first-stage page (what the first stage alone produced). */
  readonly guestAddress: number;
}

/**
 * The scalable-mode reason for a fault of the shared second-stage walk, which reports legacy reasons: structure
 * errors keep their meaning (access, reserved, unreadable top table), refusals name what was being translated.
 */
export function secondFaultRecordReason(walkFault: FaultRecord, purpose: SecondStagePurpose, topLevel: number): number {
  switch (walkFault.reason) {
    case FR.PAGING_ENTRY_RESERVED:
      return SS_FR.RESERVED;
    case FR.CONTEXT_ENTRY_INVALID:
      // The shared walk's compat reason for an unreadable top table (top-table-read-error-is-context-invalid).
      return SS_FR.POINTER_INVALID;
    case FR.READ:
    case FR.WRITE:
      if (purpose === 'access') return walkFault.reason === FR.WRITE ? SS_FR.WRITE : SS_FR.READ;
      return purpose === 'top-table' ? SS_FR.TOP_TABLE_READ : SS_FR.TABLE_READ;
    default:
      return walkFault.level === topLevel ? SS_FR.POINTER_INVALID : SS_FR.ACCESS;
  }
}

/**
 * Runs the first-stage walker with itself as the table access, so every first-stage entry address is
 * translated by the second stage before it is read or updated, then translates the first stage's output.
 * The second stage is the LegacyWalker the legacy path uses, through its exported walk().
 */
export class NestedWalker implements FirstStageTableAccess {
  entryWritable = false;
  /** The second-stage walk takes a context; this one is reused and refilled per walk from the PASID entry. */
  private readonly context: { -readonly [K in keyof CachedContext]: CachedContext[K] } = {
    sid: 0,
    did: 0,
    tt: 0,
    fpd: false,
    levels: 0,
    tableAddress: 0,
    limit: 0,
  };
  private lastPage: PageFound | undefined;
  private trace: WalkTraceSink | undefined;
  /** Nested walk (the access is the first stage's output) or second-stage-only walk (the access is the request's). */
  private nested = false;

  constructor(
    private readonly secondStage: LegacyWalker,
    private readonly firstStage: FirstStageWalker,
  ) {}

  private use(params: SecondStageParams, trace: WalkTraceSink | undefined, nested: boolean): void {
    const c = this.context;
    this.nested = nested;
    c.fpd = params.fpd;
    c.levels = params.ssLevels;
    c.tableAddress = params.ssTable;
    c.limit = POWERS_OF_TWO[params.ssInputWidth]!;
    this.trace = trace;
    this.entryWritable = false;
    this.lastPage = undefined;
  }

  walk(params: NestedParams, request: FirstStageRequest, trace?: WalkTraceSink): NestedPage | FaultRecord {
    this.use(params, trace, true);
    const first = this.firstStage.walk(params, request, this, trace);
    if (!first.ok) return this.finish(first);
    const guestAddress = first.address + offsetInPage(request.lo >>> 0, first.pageSize);
    const host = this.translate(guestAddress, 'access', 0, request.write);
    if (typeof host !== 'number') return this.finish(host);
    const second = this.lastPage!;
    const pageSize = Math.min(first.pageSize, second.pageSize);
    return this.finish({
      ok: true,
      address: host - offsetInPage(guestAddress, pageSize),
      pageSize,
      level: first.level,
      readable: second.readable,
      writable: first.writable && second.writable,
      executable: first.executable,
      dirty: first.dirty,
      guestAddress: first.address,
    });
  }

  /**
   * Second-stage-only translation (PGTT 2) of `address`, with the scalable-mode reasons: the page found (host
   * base, size, rights) or the fault.
   */
  secondStageOnly(params: SecondStageParams, address: number, write: boolean, trace?: WalkTraceSink): PageFound | FaultRecord {
    this.use(params, trace, false);
    const host = this.translate(address, 'access', 0, write);
    const page = this.lastPage;
    this.finish(undefined);
    if (typeof host !== 'number') return host;
    return page!;
  }

  hostEntry(entry: number, level: number, top: boolean): number | FaultRecord {
    return this.translate(entry, top ? 'top-table' : 'table', level, false);
  }

  private finish<T>(result: T): T {
    this.trace = undefined;
    return result;
  }

  /** One second-stage translation; `level` is the first-stage level whose entry is translated, 0 for the access. */
  private translate(input: number, purpose: SecondStagePurpose, level: number, write: boolean): number | FaultRecord {
    const c = this.context;
    const entryAddress = purpose === 'access' ? undefined : input;
    if (input >= c.limit) {
      const reason = purpose !== 'access' ? SS_FR.TABLE_BEYOND : this.nested ? SS_FR.OUTPUT_BEYOND : SS_FR.INPUT_BEYOND;
      this.note(purpose, level, input);
      return this.fault(reason, level, entryAddress, undefined);
    }
    const page = this.secondStage.walk(c, input, write, this.trace);
    if (!page.ok) {
      this.note(purpose, level, input);
      return this.fault(secondFaultRecordReason(page, purpose, c.levels), level, entryAddress, page);
    }
    this.lastPage = page;
    this.entryWritable = page.writable;
    const host = page.address + offsetInPage(input, page.pageSize);
    this.note(purpose, level, input, host, page);
    return host;
  }

  /**
   * A second-stage fault: inside a nested walk at first-stage `level` (0: the output), the second-stage level in
   * secondStageLevel; in a second-stage-only walk, the second-stage level as the level. `walked` is the fault of
   * the second-stage walk, when it got to walk: for a first-stage table the record names that entry's guest
   * address, otherwise the second-stage entry that decided.
   */
  private fault(reason: number, level: number, tableEntry: number | undefined, walked: FaultRecord | undefined): FaultRecord {
    const fpd = this.context.fpd;
    const notPresent = walked?.notPresent ?? false;
    const entry =
      tableEntry !== undefined
        ? { entryAddress: tableEntry }
        : walked === undefined
          ? {}
          : { entryAddress: walked.entryAddress, entryValue: walked.entryValue };
    if (!this.nested) return faultRecord(reason, 'second-stage', fpd, { level: walked?.level, notPresent, ...entry });
    return faultRecord(reason, 'second-stage', fpd, { level, secondStageLevel: walked?.level, notPresent, ...entry });
  }

  private note(purpose: SecondStagePurpose, level: number, input: number, output?: number, page?: PageFound): void {
    const trace = this.trace;
    if (trace === undefined) return;
    trace.step({
      structure: 'second-stage-translation',
      purpose: purpose === 'access' ? 'output' : 'table',
      level,
      input,
      ...(output !== undefined ? { output, readable: page!.readable, writable: page!.writable } : {}),
    });
  }
}
