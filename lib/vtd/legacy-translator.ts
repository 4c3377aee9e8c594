/**
 * Legacy-mode translation of one request (RTADDR.TTM = 00) through the context cache, the IOTLB and the
 * paging-structure cache: what VtdUnit runs for requests without PASID, beside ScalableTranslator.
 */

import { INTERRUPT_WINDOW_END, INTERRUPT_WINDOW_START, PAGE_BYTES } from '../memory/geometry';
import { bigToNumber } from './bitfield';
import { ContextCache, PagingStructureCache, type CachedContext, type Iotlb } from './caches';
import type { DomainDescriptor } from './domains';
import { faultRecord, type FaultRecord } from './fault';
import { FR, LegacyWalker, TT, isInterruptAddress, overlapsInterruptRange } from './legacy-walk';
import {
  BEYOND_INPUT,
  UNTRANSLATED_LIMIT,
  interruptRangeRefusal,
  type TranslationFaults,
  type TranslationRequest,
  type TranslationResult,
  type TranslationSuccess,
} from './translation-result';
import type { WalkTraceSink } from './walk-trace';

const PAGE = PAGE_BYTES;
/** For the paging-structure cache's coordinates of an IOVA: its 2 MiB region and its page in the region (0..511). */
const INVERSE_PAGE = 1 / PAGE;
const INVERSE_REGION_BYTES = 1 / 2 ** 21;
const PAGE_INDEX_MASK = 511;

export interface LegacyTranslatorOptions {
  /** The unit's host address width (aw-bits): a pass-through context's input width. */
  readonly addressWidth: number;
  /** QEMU: a request hitting a cached translation without the right is blocked unrecorded. */
  readonly hitWithoutPermissionUnrecorded: boolean;
}

/** An input at or beyond the width the context entry's AW gives: the context decides, once the walk's input reaches it. */
function beyondWidth(fpd: boolean): FaultRecord {
  return faultRecord(FR.ADDRESS_BEYOND_MGAW, 'context', fpd, { pastContext: true });
}

export class LegacyTranslator {
  readonly contexts = new ContextCache();
  /** Leaf tables of the second-stage walk by domain and 2 MiB region; invalidated with the IOTLB. */
  readonly pagingStructures = new PagingStructureCache();
  /** The IOVA of the IOTLB miss translate() hands to walkPage(). */
  private readonly missInput = new Float64Array(1);
  private readonly addressWidth: number;
  private readonly hitWithoutPermissionUnrecorded: boolean;

  constructor(
    private readonly walker: LegacyWalker,
    /** Shared with scalable mode; legacy entries are second-stage entries without PASID. */
    private readonly iotlb: Iotlb,
    private readonly faults: TranslationFaults,
    options: LegacyTranslatorOptions,
  ) {
    this.addressWidth = options.addressWidth;
    this.hitWithoutPermissionUnrecorded = options.hitWithoutPermissionUnrecorded;
  }

  /** Drops the context and paging-structure caches (SRTP under a quirk, reset); the IOTLB is the unit's. */
  invalidateAll(): void {
    this.contexts.invalidateAll();
    this.pagingStructures.invalidateAll();
  }

  /**
   * Translates `request` (without PASID) under the root table at `rootTable`; a failure has been recorded (unless
   * FPD or a quirk says otherwise). The IOTLB hit is written out here, not in a helper: this function is larger
   * than V8 inlines (460 bytes of bytecode), so it compiles on its own and spends its whole inlining budget on the
   * context cache and the IOTLB probe; a miss goes to walkPage().
   */
  translate(rootTable: number, request: TranslationRequest): TranslationResult {
    const iova = request.iova;
    // requestInput() and the interrupt-range check written out: as calls they would spend the budget the IOTLB probe needs.
    const input = iova >= 0n && iova < UNTRANSLATED_LIMIT ? bigToNumber(iova) : BEYOND_INPUT;
    if (input >= INTERRUPT_WINDOW_START && input < INTERRUPT_WINDOW_END) return interruptRangeRefusal(request, input)!;
    let context = this.contexts.get(request.sid);
    if (context === undefined) {
      const found = this.walker.lookupContext(rootTable, request.sid);
      if (!found.ok) return this.faults.report(request, found);
      context = found.context;
      this.contexts.set(context);
    }
    // context.limit is at most 2^MGAW, so this is also the MGAW check.
    if (input < 0 || input >= context.limit) return this.faults.report(request, beyondWidth(context.fpd));
    if (context.tt === TT.PASS_THROUGH) return { ok: true, address: input, pageSize: PAGE, readable: true, writable: true };
    const pfn = Math.floor(input / PAGE);
    const iotlb = this.iotlb;
    const hit = iotlb.findSlot(context.did, pfn);
    if (hit >= 0 && (request.write ? iotlb.slotWritable(hit) : iotlb.slotReadable(hit))) {
      // The offset from the entry's first page, not input % pageSize: % on a double above 2^31 is slow.
      const address = iotlb.slotAddress(hit) + (input - iotlb.slotPfn(hit) * PAGE);
      return { ok: true, address, pageSize: iotlb.slotPageSize(hit), readable: iotlb.slotReadable(hit), writable: iotlb.slotWritable(hit) };
    }
    this.missInput[0] = input;
    return this.walkPage(request, context, hit >= 0);
  }

  /**
   * Walks `request` afresh, as translate() would on a cache miss, handing every entry read to `trace`; nothing is
   * cached. `input` is the IOVA, Infinity at or beyond 2^52.
   */
  trace(rootTable: number, request: TranslationRequest, input: number, trace: WalkTraceSink): TranslationSuccess | FaultRecord {
    const found = this.walker.lookupContext(rootTable, request.sid, trace);
    if (!found.ok) return found;
    const context = found.context;
    if (input >= context.limit) return beyondWidth(context.fpd);
    if (context.tt === TT.PASS_THROUGH) return { ok: true, address: input, pageSize: PAGE, readable: true, writable: true };
    const page = this.walker.walk(context, input, request.write, trace);
    if (!page.ok) return page;
    const { pageSize, readable, writable } = page;
    return { ok: true, address: page.address + (input % pageSize), pageSize, readable, writable };
  }

  /** The domain `sid` translates through under the root table at `rootTable`, read afresh; undefined when its lookup faults. */
  resolveDomain(rootTable: number, sid: number): DomainDescriptor | undefined {
    const found = this.walker.lookupContext(rootTable, sid);
    if (!found.ok) return undefined;
    const context = found.context;
    if (context.tt === TT.PASS_THROUGH) return { kind: 'identity', did: context.did, inputWidth: this.addressWidth, withoutPasid: true };
    return {
      kind: 'second-stage',
      did: context.did,
      withoutPasid: true,
      secondStage: { table: context.tableAddress, levels: context.levels, inputWidth: Math.log2(context.limit) },
    };
  }

  /**
   * An IOTLB miss (or a hit without the right): walk, check, cache. V8 compiles it on its own too, with the walk
   * and the IOTLB insert inlined. Hence the IOVA comes through missInput: as an argument, a double would be a new
   * heap number on every call.
   */
  private walkPage(request: TranslationRequest, context: CachedContext, cached: boolean): TranslationResult {
    const input = this.missInput[0]!;
    const pfn = Math.floor(input / PAGE);
    const write = request.write;
    if (cached && this.hitWithoutPermissionUnrecorded) {
      return this.faults.report(request, faultRecord(write ? FR.WRITE : FR.READ, 'second-stage', context.fpd, { unrecorded: true }));
    }
    // The spec: a cached entry without the right is a fault like an uncached one; walking again reports it.
    const walker = this.walker;
    const failed = walker.walkLeafCached(
      context,
      Math.floor(input * INVERSE_REGION_BYTES),
      (input * INVERSE_PAGE) & PAGE_INDEX_MASK,
      write,
      this.pagingStructures,
    );
    if (failed !== undefined) return this.faults.report(request, failed);
    const pageAddress = walker.leafAddress;
    const pageSize = walker.leafPageSize;
    const readable = walker.leafReadable;
    const writable = walker.leafWritable;
    // A 4 KiB page needs no alignment: skip the divisions a large page's first page number costs.
    const pagesPerEntry = pageSize === PAGE ? 1 : pageSize / PAGE;
    const firstPfn = pagesPerEntry === 1 ? pfn : Math.floor(pfn / pagesPerEntry) * pagesPerEntry;
    const address = pageAddress + (input - firstPfn * PAGE);
    if (isInterruptAddress(address)) return this.faults.report(request, faultRecord(FR.INTERRUPT_ADDRESS, 'output', context.fpd));
    if (!overlapsInterruptRange(pageAddress, pageSize)) {
      this.iotlb.insertSecondStage(context.did, firstPfn, pageAddress, pageSize, readable, writable);
    }
    return { ok: true, address, pageSize, readable, writable };
  }
}
