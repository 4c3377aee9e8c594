/** Scalable-mode translation of one request once its PASID entry is known: by PGTT, pass-through, second stage, first stage or nested. */

import { faultRecord, type FaultRecord } from './fault';
import type { FirstStageRequest, FirstStageWalker } from './first-stage-walk';
import { SS_FR, type NestedWalker } from './nested-walk';
import type { PasidEntry } from './scalable-context';
import { PASID_PGTT } from './structures';
import type { WalkTraceSink } from './walk-trace';
import { PAGE_BYTES } from '../memory/geometry';

export interface ScalablePage {
  readonly ok: true;
  /** Host-physical base of the page and its size. */
  readonly address: number;
  readonly pageSize: number;
  readonly readable: boolean;
  readonly writable: boolean;
  readonly executable: boolean;
  /** A write through a cached copy of this translation needs no walk (first-stage D already set, or no D to set). */
  readonly dirty: boolean;
  /** The domain the PASID entry names, and how it translates: what an IOTLB entry is tagged with. */
  readonly did: number;
  readonly pgtt: number;
}

const PAGE = PAGE_BYTES;
const WORD = 2 ** 32;
/** Inputs whose upper half reaches this cannot be below any 2^width the unit supports (width <= 52 < 53). */
const UPPER_HALF_LIMIT = 2 ** 21;

export class ScalableWalker {
  constructor(
    private readonly firstStage: FirstStageWalker,
    private readonly nested: NestedWalker,
    /** Host address width: pass-through inputs at or above 2^addressWidth are beyond the hardware. */
    private readonly addressWidth: number,
  ) {}

  translate(entry: PasidEntry, request: FirstStageRequest, trace?: WalkTraceSink): ScalablePage | FaultRecord {
    const { did, pgtt } = entry;
    switch (pgtt) {
      case PASID_PGTT.FIRST_STAGE: {
        const page = this.firstStage.walk(entry, request, undefined, trace);
        return page.ok
          ? {
              ok: true,
              address: page.address,
              pageSize: page.pageSize,
              readable: true,
              writable: page.writable,
              executable: page.executable,
              dirty: page.dirty,
              did,
              pgtt,
            }
          : page;
      }
      case PASID_PGTT.NESTED: {
        const page = this.nested.walk(entry, request, trace);
        return page.ok
          ? {
              ok: true,
              address: page.address,
              pageSize: page.pageSize,
              readable: page.readable,
              writable: page.writable,
              executable: page.executable,
              dirty: page.dirty,
              did,
              pgtt,
            }
          : page;
      }
      case PASID_PGTT.SECOND_STAGE: {
        const page = this.nested.secondStageOnly(entry, inputAsNumber(request), request.write, trace);
        return page.ok
          ? {
              ok: true,
              address: page.address,
              pageSize: page.pageSize,
              readable: page.readable,
              writable: page.writable,
              executable: true,
              dirty: true,
              did,
              pgtt,
            }
          : page;
      }
      default: {
        // Pass-through (the lookup refuses any other PGTT).
        const input = inputAsNumber(request);
        if (input >= 2 ** this.addressWidth) {
          return faultRecord(SS_FR.INPUT_BEYOND, 'second-stage', entry.fpd);
        }
        return {
          ok: true,
          address: input - (input % PAGE),
          pageSize: PAGE,
          readable: true,
          writable: true,
          executable: true,
          dirty: true,
          did,
          pgtt,
        };
      }
    }
  }
}

/** The input as a number, or Infinity when it is beyond every width (so range checks refuse it). */
function inputAsNumber(request: FirstStageRequest): number {
  const hi = request.hi >>> 0;
  return hi >= UPPER_HALF_LIMIT ? Infinity : hi * WORD + (request.lo >>> 0);
}
