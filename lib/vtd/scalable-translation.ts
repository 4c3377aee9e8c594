/** Scalable-mode translation of one request through the context, PASID and IOTLB caches: what VtdUnit runs when RTADDR.TTM = 01. */

import type { GuestMemory } from '../memory/guest-memory';
import { Iotlb, PasidCache, ScalableContextCache, TRANSLATION_KIND, type TranslationKind } from './caches';
import type { QuirkId } from './compat-quirks';
import { faultCode } from './fault-reasons';
import { faultRecord, withFault, type FaultRecord } from './fault';
import { FirstStageWalker, splitAddress, type FirstStageRequest } from './first-stage-walk';
import { isInterruptAddress, overlapsInterruptRange, type LegacyWalker } from './legacy-walk';
import { NestedWalker } from './nested-walk';
import type { DomainDescriptor } from './domains';
import { ScalableContextReader, pasidEntryRefusal, type PasidEntry, type ScalableLookupOptions } from './scalable-context';
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

  translate(rootTable: number, request: ScalableRequestInput, trace?: WalkTraceSink): ScalableSuccess | FaultRecord {
    const sid = request.sid;
    let context = trace === undefined ? this.contexts.get(sid) : undefined;
    if (context === undefined) {
      const found = this.reader.lookupContext(rootTable, sid, trace);
      if (!found.ok) return request.pasid === undefined ? found : withFault(found, { pasid: request.pasid });
      context = found.context;
      this.contexts.set(context);
    }
    const withPasid = request.pasid !== undefined;
    const refused = this.reader.contextRefusal(context, withPasid);
    if (refused !== 0) return faultRecord(refused, 'context', context.fpd, { pasid: withPasid ? request.pasid : context.ridPasid });
    const pasid = withPasid ? request.pasid! : context.ridPasid;
    const supervisor = withPasid ? (request.supervisor ?? false) : context.ridPrivileged;
    const execute = withPasid && (request.execute ?? false);
    let entry = trace === undefined ? this.pasidEntries.get(sid, pasid) : undefined;
    if (entry === undefined) {
      const looked = this.reader.lookupPasidEntry(context, pasid, !withPasid, trace);
      if (!looked.ok) return looked;
      entry = looked.entry;
      this.pasidEntries.set(sid, entry);
    }
    const entryRefused = pasidEntryRefusal(entry, supervisor, execute);
    if (entryRefused !== 0) return faultRecord(entryRefused, 'pasid-table', entry.fpd, { entryAddress: entry.address, pasid });
    return this.translatePage(entry, pasid, request, supervisor, execute, trace);
  }

  /**
   * The domain a device's requests (with `pasid`, or without PASID) translate through, from its context and PASID
   * entry read afresh, recording nothing: what the domain registry keys a domain by. Undefined when the lookup
   * would fault. `addressWidth` is a pass-through entry's input width.
   */
  resolveDomain(rootTable: number, sid: number, pasid: number | undefined, addressWidth: number): DomainDescriptor | undefined {
    const found = this.reader.lookupContext(rootTable, sid);
    if (!found.ok) return undefined;
    const context = found.context;
    if (this.reader.contextRefusal(context, pasid !== undefined) !== 0) return undefined;
    const looked = this.reader.lookupPasidEntry(context, pasid ?? context.ridPasid, pasid === undefined);
    if (!looked.ok) return undefined;
    const entry = looked.entry;
    const common = { did: entry.did, pasid: entry.pasid, withoutPasid: pasid === undefined };
    const secondStage = { table: entry.ssTable, levels: entry.ssLevels, inputWidth: entry.ssInputWidth };
    const firstStage = {
      table: entry.fsTable,
      levels: entry.fsLevels,
      wpe: entry.wpe,
      eafe: entry.eafe,
      supervisor: pasid === undefined && context.ridPrivileged,
    };
    switch (entry.pgtt) {
      case PASID_PGTT.FIRST_STAGE:
        return { ...common, kind: 'first-stage', firstStage };
      case PASID_PGTT.SECOND_STAGE:
        return { ...common, kind: 'second-stage', secondStage };
      case PASID_PGTT.NESTED:
        return { ...common, kind: 'nested', firstStage, secondStage };
      case PASID_PGTT.PASS_THROUGH:
        return { ...common, kind: 'identity', inputWidth: addressWidth };
      default:
        return undefined;
    }
  }

  private translatePage(
    entry: PasidEntry,
    pasid: number,
    request: ScalableRequestInput,
    supervisor: boolean,
    execute: boolean,
    trace: WalkTraceSink | undefined,
  ): ScalableSuccess | FaultRecord {
    const { hi, lo } = splitAddress(request.iova);
    const write = request.write;
    const cacheable = hi < CACHEABLE_HI_LIMIT && trace === undefined;
    const pfn = hi * (WORD / PAGE) + Math.floor(lo / PAGE);
    const firstStage = usesFirstStage(entry.pgtt);
    if (cacheable) {
      const hit = this.iotlb.find(entry.did, pfn, pasid);
      if (
        hit !== undefined &&
        (!firstStage || hit.supervisor === supervisor) &&
        (write ? hit.writable && hit.dirty : hit.readable) &&
        (!execute || hit.executable)
      ) {
        return {
          ok: true,
          address: hit.address + (lo % hit.pageSize),
          pageSize: hit.pageSize,
          readable: hit.readable,
          writable: hit.writable,
        };
      }
      if (hit !== undefined && this.hitWithoutPermissionUnrecorded && (write ? !hit.writable : !hit.readable)) {
        return faultRecord(write ? SM_FR_WRITE : SM_FR_READ, firstStage ? 'first-stage' : 'second-stage', entry.fpd, { pasid, unrecorded: true });
      }
      // A miss, or a hit without the right (or needing D set): walking again finds the fault or updates the entry.
    }
    const walkRequest: FirstStageRequest = { hi, lo, write, execute, supervisor };
    const page = this.walker.translate(entry, walkRequest, trace);
    if (!page.ok) return withFault(page, { pasid });
    const address = page.address + (lo % page.pageSize);
    if (isInterruptAddress(address)) return faultRecord(SM_INTERRUPT_ADDRESS, 'output', entry.fpd, { pasid });
    if (cacheable && !overlapsInterruptRange(page.address, page.pageSize)) {
      const pagesPerEntry = page.pageSize / PAGE;
      this.iotlb.insert({
        did: entry.did,
        pasid,
        kind: kindOf(entry.pgtt),
        pfn: Math.floor(pfn / pagesPerEntry) * pagesPerEntry,
        address: page.address,
        pageSize: page.pageSize,
        readable: page.readable,
        writable: page.writable,
        supervisor,
        executable: page.executable,
        dirty: page.dirty,
      });
    }
    return { ok: true, address, pageSize: page.pageSize, readable: page.readable, writable: page.writable };
  }
}
