/** DomainRegistry: the domains devices translate through, shared between devices, re-read once per domain on each invalidation. */

import type { DeviceDomainListener, DomainInvalidationListener, DomainMappingListener, MappedRun, VtdDomain } from './address-space';
import {
  INPUT_SPACE_PAGES,
  INTERRUPT_WINDOW_END_PAGE,
  INTERRUPT_WINDOW_FIRST_PAGE,
  MappingEnumerator,
  withoutInterruptOutput,
  type FirstStageTables,
  type SecondStageTables,
} from './mapping-enumerator';
import { PAGE_SHIFT } from '../memory/geometry';

/*
 * Caching mode is what makes a shadow of these domains correct. Without it a guest may create a mapping and use
 * it at once, with no invalidation (hardware does not cache not-present entries), so a shadow would miss new
 * mappings until some later invalidation happened to cover them. With CAP.CM set the guest invalidates after
 * creating mappings too, and every change of its tables reaches mappingsInvalidated. Removal is safe either way:
 * the guest must invalidate before reusing an unmapped page. Shadowing is therefore offered only with
 * caching-mode=on; the registry itself does not check, the attaching layer does.
 *
 * Re-reading a range the guest did not change is always allowed: the result is the tables' current state,
 * which is what hardware with an empty IOTLB would use. Invalidations are therefore matched generously (by DID,
 * and by PASID when one is given), never too narrowly.
 */

const FUNCTION_BITS = 3;

interface DescriptorCommon {
  readonly did: number;
  /**
   * The PASID whose entry selected the tables (scalable mode; RID_PASID for requests without PASID): PASID-based
   * invalidations reach the domain through it. Undefined in legacy mode.
   */
  readonly pasid?: number;
  /** The device's requests carry no PASID: its IOVAs in 0xfee00000-0xfeefffff are interrupt messages, never DMA. */
  readonly withoutPasid: boolean;
}

/** What a device's context (and PASID) entry resolves to: everything the domain's mappings depend on. */
export type DomainDescriptor = DescriptorCommon &
  /** Translation off (inputWidth 52) or pass-through (inputWidth = host address width): IOVA = GPA over RAM. */
  (
    | { readonly kind: 'identity'; readonly inputWidth: number }
    | { readonly kind: 'second-stage'; readonly secondStage: SecondStageTables }
    | { readonly kind: 'first-stage'; readonly firstStage: FirstStageTables }
    | { readonly kind: 'nested'; readonly firstStage: FirstStageTables; readonly secondStage: SecondStageTables }
  );

/** The unit's lookup of a device's domain, without recording faults; undefined when its DMA is blocked. */
export type DomainResolver = (sid: number, pasid: number | undefined) => DomainDescriptor | undefined;

/** Devices a context-cache or PASID-cache invalidation names: one source id, with the context-cache function mask. */
export interface DeviceScope {
  readonly sid: number;
  /** FM of a device-selective context-cache invalidation: 1..3 low function bits ignored, from bit 2 down. */
  readonly functionMask?: number;
}

function hex(value: number): string {
  return `0x${value.toString(16)}`;
}

function secondStageKey(tables: SecondStageTables): string {
  return `ss ${hex(tables.table)} ${tables.levels}-level ${tables.inputWidth}-bit`;
}

function firstStageKey(tables: FirstStageTables): string {
  const rights = `${tables.supervisor ? 'supervisor' : 'user'}${tables.wpe ? ' wpe' : ''}${tables.eafe ? ' eafe' : ''}`;
  return `fs ${hex(tables.table)} ${tables.levels}-level ${rights}`;
}

/** The key devices share a domain by: equal keys mean equal mappings. Readable, for people. */
export function domainKey(descriptor: DomainDescriptor): string {
  const head = `${descriptor.kind} did ${descriptor.did}`;
  const tail = descriptor.withoutPasid ? ' rid' : ' pasid';
  switch (descriptor.kind) {
    case 'identity':
      return `${head} ${descriptor.inputWidth}-bit${tail}`;
    case 'second-stage':
      return `${head} ${secondStageKey(descriptor.secondStage)}${tail}`;
    case 'first-stage':
      return `${head} ${firstStageKey(descriptor.firstStage)}${tail}`;
    case 'nested':
      return `${head} ${firstStageKey(descriptor.firstStage)} ${secondStageKey(descriptor.secondStage)}${tail}`;
  }
}

function pageLimitOf(descriptor: DomainDescriptor): number {
  switch (descriptor.kind) {
    case 'identity':
      return 2 ** (descriptor.inputWidth - PAGE_SHIFT);
    case 'second-stage':
      return MappingEnumerator.secondStagePages(descriptor.secondStage);
    default:
      return INPUT_SPACE_PAGES;
  }
}

class RegisteredDomain implements VtdDomain {
  readonly did: number;
  readonly kind: VtdDomain['kind'];
  readonly pageLimit: number;
  readonly listeners = new Set<DomainMappingListener>();
  readonly rangeListeners = new Set<DomainInvalidationListener>();
  /** PASIDs the domain was found under: PASID-based invalidations of them reach it. */
  readonly pasids = new Set<number>();
  watchers = 0;

  constructor(
    readonly key: string,
    readonly descriptor: DomainDescriptor,
    private readonly registry: DomainRegistry,
  ) {
    this.did = descriptor.did;
    this.kind = descriptor.kind;
    this.pageLimit = pageLimitOf(descriptor);
  }

  mappings(firstPage: number, pageCount: number): MappedRun[] {
    return this.registry.readMappings(this, firstPage, pageCount);
  }

  get firstStage(): FirstStageTables | undefined {
    const descriptor = this.descriptor;
    return descriptor.kind === 'first-stage' || descriptor.kind === 'nested' ? descriptor.firstStage : undefined;
  }

  listen(listener: DomainMappingListener): () => void {
    this.listeners.add(listener);
    return () => {
      if (this.listeners.delete(listener)) this.registry.release(this);
    };
  }

  listenInvalidations(listener: DomainInvalidationListener): () => void {
    this.rangeListeners.add(listener);
    return () => {
      if (this.rangeListeners.delete(listener)) this.registry.release(this);
    };
  }

  /** Someone hears of this domain's invalidations (with or without its mappings). */
  get heard(): boolean {
    return this.listeners.size > 0 || this.rangeListeners.size > 0;
  }
}

interface Watch {
  readonly sid: number;
  readonly pasid: number | undefined;
  readonly listener: DeviceDomainListener;
  domain: RegisteredDomain | undefined;
  active: boolean;
}

export interface DomainRegistryOptions {
  readonly enumerator: MappingEnumerator;
  readonly resolve: DomainResolver;
  /**
   * A listener threw. It is a host backend's failure, not the guest's: the invalidation or command that
   * notified it still completes, and the other listeners still hear of it.
   */
  readonly onListenerError?: (error: Error) => void;
}

export class DomainRegistry {
  private readonly domains = new Map<string, RegisteredDomain>();
  private readonly byDid = new Map<number, Set<RegisteredDomain>>();
  private readonly watches = new Map<number, Set<Watch>>();
  private readonly enumerator: MappingEnumerator;
  private readonly resolve: DomainResolver;
  private readonly onListenerError: (error: Error) => void;

  constructor(options: DomainRegistryOptions) {
    this.enumerator = options.enumerator;
    this.resolve = options.resolve;
    this.onListenerError = options.onListenerError ?? (() => undefined);
  }

  /** Calls a listener; what it throws goes to onListenerError instead of into the guest's command. */
  private tell(call: () => void): void {
    try {
      call();
    } catch (error) {
      this.onListenerError(error instanceof Error ? error : new Error(String(error)));
    }
  }

  /** Domains alive: watched by a device or listened to. */
  get domainCount(): number {
    return this.domains.size;
  }

  /** The domain with `key`, if alive (diagnostics and tests). */
  domain(key: string): VtdDomain | undefined {
    return this.domains.get(key);
  }

  /**
   * Follows the domain of `sid` (requests with `pasid`, or without PASID): `listener` hears the current domain at
   * once, then every move. Returns the function that stops following.
   */
  watchDevice(sid: number, listener: DeviceDomainListener, pasid?: number): () => void {
    const watch: Watch = { sid, pasid, listener, domain: undefined, active: true };
    let forSid = this.watches.get(sid);
    if (forSid === undefined) this.watches.set(sid, (forSid = new Set()));
    forSid.add(watch);
    watch.domain = this.domainFor(watch);
    if (watch.domain !== undefined) watch.domain.watchers++;
    const current = watch.domain;
    this.tell(() => listener.domainChanged(current));
    return () => this.unwatch(watch);
  }

  /**
   * Hook: the guest may have moved devices (context-cache or PASID-cache invalidation, SRTP, TE toggled, reset).
   * Re-resolves the watched devices in `scope` (all without one) and tells those whose domain changed.
   */
  devicesChanged(scope?: DeviceScope): void {
    const keep = scope === undefined ? 0 : ~(((1 << (scope.functionMask ?? 0)) - 1) << (FUNCTION_BITS - (scope.functionMask ?? 0)));
    const affected: Watch[] = [];
    for (const [sid, forSid] of this.watches) {
      if (scope !== undefined && (sid & keep) !== (scope.sid & keep)) continue;
      affected.push(...forSid);
    }
    for (const watch of affected) {
      if (!watch.active) continue;
      const next = this.domainFor(watch);
      const previous = watch.domain;
      if (next === previous) continue;
      if (next !== undefined) next.watchers++;
      watch.domain = next;
      this.tell(() => watch.listener.domainChanged(next));
      if (previous !== undefined) {
        previous.watchers--;
        this.release(previous);
      }
    }
  }

  /**
   * Hook: an IOTLB (or PASID-based IOTLB) invalidation. `did` undefined: global; `firstPage`/`pageCount`
   * undefined: the whole domain; `pasid`: only domains found under that PASID. Each domain concerned is read
   * once, and all its listeners get that one result.
   */
  mappingsInvalidated(did?: number, firstPage?: number, pageCount?: number, pasid?: number): void {
    const registered = did === undefined ? this.domains.values() : this.byDid.get(did)?.values();
    if (registered === undefined) return;
    // A copy: listeners may release domains while hearing of them.
    const targets = [...registered];
    // A page-selective IOTLB invalidation (no PASID) names second-stage input addresses: guest-physical pages.
    const secondStageRange = pasid === undefined && firstPage !== undefined;
    for (const domain of targets) {
      // Identity domains map RAM, which no IOTLB invalidation changes (see regionsChanged).
      if (domain.kind === 'identity' || !domain.heard) continue;
      if (pasid !== undefined && !domain.pasids.has(pasid)) continue;
      if (secondStageRange && domain.kind !== 'second-stage') {
        // A nested domain's IOVAs are not the range's addresses, and any of them may run through the named
        // guest-physical pages: re-read it whole (the IOTLB drops all its nested entries of the DID). First-stage
        // domains have no second-stage input; QEMU reads the spec as dropping their entries of the DID too, and
        // re-reading is always allowed, so they are re-read whole as well.
        this.notify(domain, 0, domain.pageLimit);
        continue;
      }
      this.notify(domain, firstPage ?? 0, pageCount ?? domain.pageLimit);
    }
  }

  /** Hook: guest RAM regions were added or removed, which changes what identity domains map. */
  regionsChanged(): void {
    for (const domain of [...this.domains.values()]) {
      if (domain.kind === 'identity' && domain.heard) this.notify(domain, 0, domain.pageLimit);
    }
  }

  /** The current mappings of a domain's page range, clipped to its input space. */
  readMappings(domain: RegisteredDomain, firstPage: number, pageCount: number): MappedRun[] {
    const from = Math.max(0, firstPage);
    const to = Math.min(domain.pageLimit, firstPage + pageCount);
    if (from >= to) return [];
    const descriptor = domain.descriptor;
    if (descriptor.withoutPasid && from < INTERRUPT_WINDOW_END_PAGE && to > INTERRUPT_WINDOW_FIRST_PAGE) {
      return [
        ...this.readRange(descriptor, from, Math.min(to, INTERRUPT_WINDOW_FIRST_PAGE)),
        ...this.readRange(descriptor, Math.max(from, INTERRUPT_WINDOW_END_PAGE), to),
      ];
    }
    return this.readRange(descriptor, from, to);
  }

  /** Drops `domain` once nothing watches or listens to it. */
  release(domain: RegisteredDomain): void {
    if (domain.watchers > 0 || domain.heard) return;
    if (this.domains.get(domain.key) !== domain) return;
    this.domains.delete(domain.key);
    const forDid = this.byDid.get(domain.did);
    forDid?.delete(domain);
    if (forDid?.size === 0) this.byDid.delete(domain.did);
  }

  private readRange(descriptor: DomainDescriptor, from: number, to: number): MappedRun[] {
    if (from >= to) return [];
    const enumerator = this.enumerator;
    let runs: MappedRun[];
    switch (descriptor.kind) {
      case 'identity':
        runs = enumerator.identity(pageLimitOf(descriptor), from, to - from);
        break;
      case 'second-stage':
        runs = enumerator.secondStage(descriptor.secondStage, from, to - from);
        break;
      case 'first-stage':
        runs = enumerator.firstStage(descriptor.firstStage, from, to - from);
        break;
      case 'nested':
        runs = enumerator.nested(descriptor.firstStage, descriptor.secondStage, from, to - from);
        break;
    }
    return withoutInterruptOutput(runs);
  }

  private notify(domain: RegisteredDomain, firstPage: number, pageCount: number): void {
    const from = Math.max(0, firstPage);
    const to = Math.min(domain.pageLimit, firstPage + pageCount);
    if (from >= to) return;
    for (const listener of [...domain.rangeListeners]) {
      if (domain.rangeListeners.has(listener)) this.tell(() => listener.invalidated(from, to - from));
    }
    // Read only for listeners that want the mappings: a host that binds the guest's tables needs just the range.
    if (domain.listeners.size === 0) return;
    const runs = domain.mappings(from, to - from);
    for (const listener of [...domain.listeners]) {
      if (domain.listeners.has(listener)) this.tell(() => listener.mappingsChanged(from, to - from, runs));
    }
  }

  private domainFor(watch: Watch): RegisteredDomain | undefined {
    const descriptor = this.resolve(watch.sid, watch.pasid);
    if (descriptor === undefined) return undefined;
    const key = domainKey(descriptor);
    let domain = this.domains.get(key);
    if (domain === undefined) {
      domain = new RegisteredDomain(key, descriptor, this);
      this.domains.set(key, domain);
      let forDid = this.byDid.get(descriptor.did);
      if (forDid === undefined) this.byDid.set(descriptor.did, (forDid = new Set()));
      forDid.add(domain);
    }
    const pasid = descriptor.pasid ?? watch.pasid;
    if (pasid !== undefined) domain.pasids.add(pasid);
    return domain;
  }

  private unwatch(watch: Watch): void {
    if (!watch.active) return;
    watch.active = false;
    const forSid = this.watches.get(watch.sid);
    forSid?.delete(watch);
    if (forSid?.size === 0) this.watches.delete(watch.sid);
    const domain = watch.domain;
    watch.domain = undefined;
    if (domain !== undefined) {
      domain.watchers--;
      this.release(domain);
    }
  }
}
