/**
 * The iommufd nesting backend: follows the guest's PASID entries of each attached device through the unit's domains
 * and turns them into host requests (IommufdNesting): a first-stage entry is bound under the host's nest parent, a
 * pass-through entry attaches the parent, anything else detaches; the guest's invalidations of a bound domain are
 * forwarded once per domain; host page faults are walked again through the guest's tables, so a fault the guest's
 * tables explain lands in its fault records and any other goes to the VMM.
 */
import { EventEmitter } from 'node:events';
import { ViommuError } from '../errors';
import type { DeviceDomainListener, FirstStageTableRoot, VtdDomain } from '../vtd/address-space';
import type { VtdConfig } from '../vtd/config';
import type { TranslationRequest, TranslationResult } from '../vtd/translation-result';
import {
  INVALIDATE_ALL,
  NestingRefusal,
  type FirstStageTable,
  type HostCapabilities,
  type HostFault,
  type IommufdNesting,
  type InvalidateRange,
} from './iommufd-nesting';
import { PAGE_SHIFT } from '../memory/geometry';

/** The PASID the host attaches a device's requests without PASID to. */
const RID_PASID = 0;
/** First-stage paging: 4 levels cover 48 bits, each further level 9 more. */
const BITS_AT_FOUR_LEVELS = 48;
const BITS_PER_LEVEL = 9;

/** The unit as this backend uses it: which domain a (device, PASID) translates through. */
export interface NestingDomainSource {
  watchDevice(sid: number, listener: DeviceDomainListener, pasid?: number): () => void;
}

/**
 * A host fault walked again through the guest's tables (VtdUnit.translate): ok when the guest's tables allow the
 * access, else the fault record the unit recorded.
 */
export type GuestFaultWalk = (request: TranslationRequest) => TranslationResult;

/** Where the guest's PASIDs come from (a PasidAllocator: VtdUnit.virtualCommands.allocator), told which devices use each. */
export interface PasidUse {
  bind(pasid: number, device: number): boolean;
  unbind(pasid: number, device: number): boolean;
}

export interface NestingBackendOptions {
  /** Re-walks a host fault through the guest's tables (VtdUnit.translate: it records the fault the guest's tables give). */
  readonly walkGuest: GuestFaultWalk;
  /**
   * The allocator of the guest's PASIDs: a PASID attached on the host counts as bound to that device there, so a
   * PASID the guest frees is reused only after the host detach and an invalidation and a wait after it.
   */
  readonly pasidUse?: PasidUse;
}

/** What the backend did, for the VMM's log and for `viommu demo`. */
export interface NestingBackendEvents {
  /** The guest programmed something this host cannot back (second-stage or nested PASID entries, widths): the device is detached. */
  refused: [sid: number, pasid: number | undefined, reason: string];
  /** A host request failed; the device keeps its previous binding. */
  error: [sid: number, pasid: number | undefined, error: Error];
  /** A host fault the guest's tables allow: the host's own problem (its parent lacks the page, say). */
  hostFault: [fault: HostFault];
  /** A host fault the guest's tables refuse: recorded in the guest's fault records. */
  guestFault: [fault: HostFault, reason: number];
}

interface Watched {
  readonly sid: number;
  /** undefined: the device's requests without PASID (host PASID 0). */
  readonly pasid: number | undefined;
  domain: VtdDomain | undefined;
  bound: 'first-stage' | 'pass-through' | undefined;
  unwatch: () => void;
}

interface HeardDomain {
  readonly domain: VtdDomain;
  readonly users: Set<Watched>;
  readonly unlisten: () => void;
}

/** The host PASID of a watched request stream: RID_PASID for requests without PASID (guest PASID = host PASID otherwise). */
function hostPasid(pasid: number | undefined): number {
  return pasid ?? RID_PASID;
}

/** The first-stage table a nested HWPT needs, from the guest's PASID entry. */
export function firstStageTableOf(root: FirstStageTableRoot): FirstStageTable {
  return {
    table: root.table,
    addressWidth: BITS_AT_FOUR_LEVELS + BITS_PER_LEVEL * (root.levels - 4),
    sre: root.supervisor,
    wpe: root.wpe,
    eafe: root.eafe,
  };
}

/**
 * What a unit configured as `config` would offer its guest that a host with `capabilities` cannot back through
 * nesting: each problem says which property to change. Empty when every offer can be honoured.
 */
export function nestingConfigProblems(config: VtdConfig, capabilities: HostCapabilities): string[] {
  const problems: string[] = [];
  if (!capabilities.nested) problems.push('the host IOMMU offers no nesting (ECAP.NEST): use caching-mode=on and the shadow backend');
  if (!config['x-flts']) problems.push('only first-stage tables can be bound under the host: set x-flts=on (and x-scalable-mode=on)');
  if (config['x-nested']) problems.push('x-nested offers the guest a second stage of its own, which the host cannot nest again: set x-nested=off');
  if (!capabilities.pageTableFormats.includes('vtd-s1')) problems.push('the host cannot take VT-d first-stage tables (IOMMU_HWPT_DATA_VTD_S1)');
  if (config['x-flts'] && !capabilities.firstStage1GiBPages) problems.push('the unit offers first-stage 1 GiB pages (CAP.FS1GP) that the host lacks');
  if (config['x-pasid-mode'] && capabilities.maxPasidLog2 === 0) problems.push('the host has no PASIDs: set x-pasid-mode=off');
  const guestBits = config['x-pasid-bits'] || 20;
  if (config['x-pasid-mode'] && capabilities.maxPasidLog2 > 0 && guestBits > capabilities.maxPasidLog2) {
    problems.push(`the guest may use ${guestBits}-bit PASIDs, the host ${capabilities.maxPasidLog2}: set x-pasid-bits=${capabilities.maxPasidLog2}`);
  }
  return problems;
}

export class NestingBackend extends EventEmitter<NestingBackendEvents> {
  private readonly watched = new Map<string, Watched>();
  private readonly heard = new Map<VtdDomain, HeardDomain>();

  constructor(
    private readonly nesting: IommufdNesting,
    private readonly unit: NestingDomainSource,
    private readonly options: NestingBackendOptions,
  ) {
    super();
  }

  /**
   * Follows device `sid` (added to the IommufdNesting under that key) for its requests without PASID and for each
   * of `pasids`: each is bound as the guest programs it, at once and from then on.
   */
  attach(sid: number, pasids: readonly number[] = []): void {
    this.watch(sid, undefined);
    for (const pasid of pasids) this.watch(sid, pasid);
  }

  /** Follows one more PASID of an attached device (e.g. one the guest allocated through VCMD). */
  watch(sid: number, pasid: number | undefined): void {
    const key = `${sid}/${pasid ?? '-'}`;
    if (this.watched.has(key)) return;
    const watched: Watched = { sid, pasid, domain: undefined, bound: undefined, unwatch: () => undefined };
    this.watched.set(key, watched);
    watched.unwatch = this.unit.watchDevice(sid, { domainChanged: (domain) => this.follow(watched, domain) }, pasid);
  }

  /** Stops following device `sid` (its requests without PASID and each PASID) and unbinds what is bound for it. */
  detach(sid: number): void {
    for (const [key, watched] of this.watched) {
      if (watched.sid !== sid) continue;
      watched.unwatch();
      this.follow(watched, undefined);
      this.watched.delete(key);
    }
  }

  /** Stops following every device and unbinds what is bound. */
  close(): void {
    for (const watched of this.watched.values()) {
      watched.unwatch();
      this.follow(watched, undefined);
    }
    this.watched.clear();
  }

  /** Nothing is ever outstanding: every host request completes before the guest's command that caused it does. */
  pending(): undefined {
    return undefined;
  }

  /**
   * Reads the host's fault queue and routes each fault: walked again through the guest's tables, a fault the guest's
   * tables give is recorded for the guest and answered 'invalid'; one they allow is the host's (event 'hostFault'),
   * answered 'success' so the device retries once the host is fixed. Returns how many faults were read.
   */
  pollFaults(): number {
    const faults = this.nesting.readFaults();
    for (const fault of faults) {
      let walked: ReturnType<GuestFaultWalk>;
      try {
        walked = this.options.walkGuest({
          sid: fault.device,
          iova: fault.address,
          write: fault.perm.write,
          ...(fault.pasid === undefined || fault.pasid === RID_PASID
            ? {}
            : { pasid: fault.pasid, supervisor: fault.perm.priv, execute: fault.perm.exec }),
        });
      } catch (error) {
        // A fault no request could carry (a PASID beyond 20 bits): the host's record is bad, not the guest's tables.
        this.emit('error', fault.device, fault.pasid, error instanceof Error ? error : new ViommuError('ERR_NESTING', String(error)));
        if (fault.lastPage) this.nesting.respond(fault, 'invalid');
        continue;
      }
      if (walked.ok) this.emit('hostFault', fault);
      else this.emit('guestFault', fault, walked.fault.reason);
      if (fault.lastPage) this.nesting.respond(fault, walked.ok ? 'success' : 'invalid');
    }
    return faults.length;
  }

  private follow(watched: Watched, domain: VtdDomain | undefined): void {
    if (watched.domain !== undefined && watched.domain !== domain) this.stopHearing(watched);
    watched.domain = domain;
    const pasid = hostPasid(watched.pasid);
    try {
      if (domain?.kind === 'first-stage' && domain.firstStage !== undefined) {
        this.nesting.bind(watched.sid, pasid, domain.did, firstStageTableOf(domain.firstStage));
        this.bound(watched, 'first-stage');
        this.hear(watched, domain);
      } else if (domain?.kind === 'identity') {
        this.nesting.bindPassThrough(watched.sid, pasid);
        this.bound(watched, 'pass-through');
      } else {
        if (domain !== undefined)
          this.emit(
            'refused',
            watched.sid,
            watched.pasid,
            `a ${domain.kind} domain (${domain.key}) cannot be nested under the host: only first-stage and pass-through entries can`,
          );
        this.unbind(watched);
      }
    } catch (error) {
      if (error instanceof NestingRefusal) {
        this.emit('refused', watched.sid, watched.pasid, error.message);
        this.unbind(watched);
      } else {
        this.emit('error', watched.sid, watched.pasid, error instanceof Error ? error : new ViommuError('ERR_NESTING', String(error)));
      }
    }
  }

  private bound(watched: Watched, kind: NonNullable<Watched['bound']>): void {
    watched.bound = kind;
    if (watched.pasid !== undefined) this.options.pasidUse?.bind(watched.pasid, watched.sid);
  }

  private unbind(watched: Watched): void {
    if (watched.bound === undefined) return;
    watched.bound = undefined;
    this.nesting.unbind(watched.sid, hostPasid(watched.pasid));
    if (watched.pasid !== undefined) this.options.pasidUse?.unbind(watched.pasid, watched.sid);
  }

  /** Listens to a bound domain's invalidations once, however many (device, PASID) pairs translate through it. */
  private hear(watched: Watched, domain: VtdDomain): void {
    let heard = this.heard.get(domain);
    if (heard === undefined) {
      const users = new Set<Watched>();
      const unlisten = domain.listenInvalidations({ invalidated: (firstPage, pageCount) => this.forward(domain, users, firstPage, pageCount) });
      heard = { domain, users, unlisten };
      this.heard.set(domain, heard);
    }
    heard.users.add(watched);
  }

  private stopHearing(watched: Watched): void {
    const domain = watched.domain;
    if (domain === undefined) return;
    const heard = this.heard.get(domain);
    if (heard === undefined || !heard.users.delete(watched)) return;
    if (heard.users.size > 0) return;
    heard.unlisten();
    this.heard.delete(domain);
  }

  /** One HWPT_INVALIDATE per nested HWPT the domain is bound as: selected by its DID and one of its bound PASIDs. */
  private forward(domain: VtdDomain, users: ReadonlySet<Watched>, firstPage: number, pageCount: number): void {
    const user = [...users].find((candidate) => candidate.bound === 'first-stage');
    if (user === undefined) return;
    const whole = firstPage === 0 && pageCount >= domain.pageLimit;
    const range: InvalidateRange = whole ? INVALIDATE_ALL : { addr: BigInt(firstPage) << BigInt(PAGE_SHIFT), npages: BigInt(pageCount), leaf: false };
    try {
      this.nesting.invalidate({ did: domain.did, pasid: hostPasid(user.pasid) }, range);
    } catch (error) {
      this.emit('error', user.sid, user.pasid, error instanceof Error ? error : new ViommuError('ERR_NESTING', String(error)));
    }
  }
}
