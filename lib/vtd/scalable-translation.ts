/** Scalable-mode translation of one request through the context, PASID and IOTLB caches: what VtdUnit runs when RTADDR.TTM = 01. */

import type { GuestMemory } from '../memory/guest-memory';
import { Iotlb, PasidCache, ScalableContextCache, TRANSLATION_KIND, type TranslationKind } from './caches';
import type { QuirkId } from './compat-quirks';
import { faultCode } from './fault-reasons';
import { FirstStageWalker, splitAddress, type FirstStageRequest, type StageFault } from './first-stage-walk';
import { isInterruptAddress, overlapsInterruptRange, type LegacyWalker } from './legacy-walk';
import { NestedWalker } from './nested-walk';
import { ScalableContextReader, SM_FR, pasidEntryRefusal, type LookupFault, type PasidEntry, type ScalableContext, type ScalableLookupOptions } from './scalable-context';
import { ScalableWalker } from './scalable-walk';
import { PASID_PGTT } from './structures';
import type { WalkTraceSink } from './walk-trace';
import { PAGE_BYTES } from '../memory/geometry';

export const SM_INTERRUPT_ADDRESS = faultCode('SM_INTERRUPT_ADDRESS');
const SM_FR_WRITE = faultCode('SM_WRITE');
const SM_FR_READ = faultCode('SM_READ');

export interface ScalableRequestInput {
  readonly sid: number;
  readonly iova: bigint;
  readonly write: boolean;
  readonly pasid?: number;
  /** Privilege-mode-requested (requests with PASID only; without PASID the context's RID_PRIV decides). */
  readonly supervisor?: boolean;
  /** Execute-requested (requests with PASID only). */
  readonly execute?: boolean;
}

export interface ScalableSuccess {
  readonly ok: true;
  readonly address: number;
  readonly pageSize: number;
  readonly readable: boolean;
  readonly writable: boolean;
}

/** A scalable-mode fault, before recording: the reason and what the recorder and the caller need to know. */
export interface ScalableFault {
  readonly ok: false;
  readonly reason: number;
  /** First-stage level (5..1), or the second-stage level for second-stage-only walks, when the fault has one. */
  readonly level?: number;
  readonly fpd: boolean;
  readonly notPresent: boolean;
  /** Found by the page walk or after it (address, paging entries, output), not in the root/context/PASID structures. */
  readonly pastContext: boolean;
  /** The PASID the request used (its own, or RID_PASID once the context entry was read). */
  readonly pasid?: number;
  /** Blocked by a cached translation without the right, unrecorded (quirk iotlb-hit-without-permission-not-recorded). */
  readonly unrecorded?: boolean;
  /** Found in a first-stage structure or by a first-stage permission check (not the second stage of a nested walk). */
  readonly firstStage?: boolean;
}

export interface ScalableTranslatorOptions {
  readonly lookup: ScalableLookupOptions;
  /** Host address width. */
  readonly addressWidth: number;
  /** CAP.FS1GP. */
  readonly fs1gp: boolean;
  /** QEMU: a request hitting a cached translation without the right is blocked unrecorded. */
  readonly hitWithoutPermissionUnrecorded: boolean;
  /** The compat quirks in effect; the first-stage walker acts on its own. */
  readonly quirks?: ReadonlySet<QuirkId>;
}

const PAGE = PAGE_BYTES;
/** Inputs whose upper 32 bits reach this are at or above 2^52: walked every time, never cached. */
const CACHEABLE_HI_LIMIT = 2 ** 20;
const WORD = 2 ** 32;

function kindOf(pgtt: number): TranslationKind {
  if (pgtt === PASID_PGTT.FIRST_STAGE) return TRANSLATION_KIND.FIRST;
  if (pgtt === PASID_PGTT.NESTED) return TRANSLATION_KIND.NESTED;
  return TRANSLATION_KIND.SECOND;
}

function usesFirstStage(pgtt: number): boolean {
  return pgtt === PASID_PGTT.FIRST_STAGE || pgtt === PASID_PGTT.NESTED;
}

export class ScalableTranslator {
  readonly contexts = new ScalableContextCache();
  readonly pasidEntries = new PasidCache();
  private readonly reader: ScalableContextReader;
  private readonly walker: ScalableWalker;
  private readonly hitWithoutPermissionUnrecorded: boolean;

  constructor(
    memory: GuestMemory,
    secondStage: LegacyWalker,
    options: ScalableTranslatorOptions,
    /** Shared with legacy mode: one IOTLB, whose entries carry the PASID and the kind of translation. */
    private readonly iotlb: Iotlb,
  ) {
    this.hitWithoutPermissionUnrecorded = options.hitWithoutPermissionUnrecorded;
    this.reader = new ScalableContextReader(memory, options.lookup);
    const first = new FirstStageWalker(memory, { addressWidth: options.addressWidth, fs1gp: options.fs1gp, quirks: options.quirks });
    this.walker = new ScalableWalker(first, new NestedWalker(secondStage, first), options.addressWidth);
  }

  /** Drops the scalable context and PASID caches (SRTP, reset). */
  invalidateAll(): void {
    this.contexts.invalidateAll();
    this.pasidEntries.invalidateAll();
  }

  translate(rootTable: number, request: ScalableRequestInput, trace?: WalkTraceSink): ScalableSuccess | ScalableFault {
    const sid = request.sid;
    let context = trace === undefined ? this.contexts.get(sid) : undefined;
    if (context === undefined) {
      const found = this.reader.lookupContext(rootTable, sid, trace);
      if (!found.ok) return lookupFault(found);
      context = found.context;
      this.contexts.set(context);
    }
    const withPasid = request.pasid !== undefined;
    const refused = this.reader.contextRefusal(context, withPasid);
    if (refused !== 0) return fault(refused, context.fpd, false, withPasid ? request.pasid : context.ridPasid);
    const pasid = withPasid ? request.pasid! : context.ridPasid;
    const supervisor = withPasid ? request.supervisor ?? false : context.ridPrivileged;
    const execute = withPasid && (request.execute ?? false);
    let entry = trace === undefined ? this.pasidEntries.get(sid, pasid) : undefined;
    if (entry === undefined) {
      const looked = this.reader.lookupPasidEntry(context, pasid, !withPasid, trace);
      if (!looked.ok) return lookupFault(looked, pasid);
      entry = looked.entry;
      this.pasidEntries.set(sid, entry);
    }
    const entryRefused = pasidEntryRefusal(entry, supervisor, execute);
    if (entryRefused !== 0) return fault(entryRefused, entry.fpd, false, pasid);
    return this.translatePage(entry, pasid, request, supervisor, execute, trace);
  }

  /**
   * The context and PASID entry a device's requests (with `pasid`, or without PASID) resolve to, read afresh and
   * recording nothing: what the domain registry keys a domain by. Undefined when the lookup would fault.
   */
  resolve(rootTable: number, sid: number, pasid: number | undefined): { context: ScalableContext; entry: PasidEntry } | undefined {
    const found = this.reader.lookupContext(rootTable, sid);
    if (!found.ok) return undefined;
    const context = found.context;
    if (this.reader.contextRefusal(context, pasid !== undefined) !== 0) return undefined;
    const looked = this.reader.lookupPasidEntry(context, pasid ?? context.ridPasid, pasid === undefined);
    return looked.ok ? { context, entry: looked.entry } : undefined;
  }

  private translatePage(
    entry: PasidEntry, pasid: number, request: ScalableRequestInput, supervisor: boolean, execute: boolean, trace: WalkTraceSink | undefined,
  ): ScalableSuccess | ScalableFault {
    const { hi, lo } = splitAddress(request.iova);
    const write = request.write;
    const cacheable = hi < CACHEABLE_HI_LIMIT && trace === undefined;
    const pfn = hi * (WORD / PAGE) + Math.floor(lo / PAGE);
    const firstStage = usesFirstStage(entry.pgtt);
    if (cacheable) {
      const hit = this.iotlb.find(entry.did, pfn, pasid);
      if (hit !== undefined && (!firstStage || hit.supervisor === supervisor)
        && (write ? hit.writable && hit.dirty : hit.readable) && (!execute || hit.executable)) {
        return {
          ok: true, address: hit.address + (lo % hit.pageSize), pageSize: hit.pageSize, readable: hit.readable, writable: hit.writable,
        };
      }
      if (hit !== undefined && this.hitWithoutPermissionUnrecorded && (write ? !hit.writable : !hit.readable)) {
        return { ...fault(write ? SM_FR_WRITE : SM_FR_READ, entry.fpd, false, pasid, true), unrecorded: true, firstStage };
      }
      // A miss, or a hit without the right (or needing D set): walking again finds the fault or updates the entry.
    }
    const walkRequest: FirstStageRequest = { hi, lo, write, execute, supervisor };
    const page = this.walker.translate(entry, walkRequest, trace);
    if (!page.ok) return stageFault(page, pasid);
    const address = page.address + (lo % page.pageSize);
    if (isInterruptAddress(address)) return fault(SM_INTERRUPT_ADDRESS, entry.fpd, false, pasid, true);
    if (cacheable && !overlapsInterruptRange(page.address, page.pageSize)) {
      const pagesPerEntry = page.pageSize / PAGE;
      this.iotlb.insert({
        did: entry.did, pasid, kind: kindOf(entry.pgtt), pfn: Math.floor(pfn / pagesPerEntry) * pagesPerEntry,
        address: page.address, pageSize: page.pageSize, readable: page.readable, writable: page.writable,
        supervisor, executable: page.executable, dirty: page.dirty,
      });
    }
    return { ok: true, address, pageSize: page.pageSize, readable: page.readable, writable: page.writable };
  }
}

function fault(reason: number, fpd: boolean, notPresent: boolean, pasid: number | undefined, pastContext = false): ScalableFault {
  return pasid === undefined
    ? { ok: false, reason, fpd, notPresent, pastContext }
    : { ok: false, reason, fpd, notPresent, pastContext, pasid };
}

function lookupFault(found: LookupFault, pasid?: number): ScalableFault {
  const notPresent = found.reason === SM_FR.ROOT_NOT_PRESENT || found.reason === SM_FR.CONTEXT_NOT_PRESENT
    || found.reason === SM_FR.DIRECTORY_NOT_PRESENT || found.reason === SM_FR.PASID_ENTRY_NOT_PRESENT;
  return fault(found.reason, found.fpd, notPresent, pasid);
}

function stageFault(page: StageFault, pasid: number): ScalableFault {
  return {
    ok: false, reason: page.reason, level: page.level || page.secondStageLevel, fpd: page.fpd, notPresent: page.notPresent, pastContext: true, pasid,
    firstStage: page.stage === 'first',
  };
}
