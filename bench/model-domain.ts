/** A bench-local domain: a page map with the VtdDomain contract (runs in IOVA order, one listener call per change). */
import type { DomainSource } from '../lib/host/shadow-backend';
import type { DeviceDomainListener, DomainInvalidationListener, DomainMappingListener, MappedRun, VtdDomain } from '../lib/vtd/address-space';

/** Single pages sorted by IOVA page, as runs. */
export function pageRuns(pages: readonly { iovaPage: number; gpaPage: number; access: number }[]): MappedRun[] {
  return pages
    .map((page) => ({ iovaPage: page.iovaPage, gpaPage: page.gpaPage, pages: 1, access: page.access }))
    .sort((a, b) => a.iovaPage - b.iovaPage);
}

/**
 * Runs kept sorted by IOVA page, so a walk of the whole domain is one pass; edits are rare in the figures. It stands
 * for the unit's domain so that the figures weigh the host side (the unit's own walk has its figures in vtd.*).
 */
export class ModelDomain implements VtdDomain {
  readonly kind = 'second-stage' as const;
  readonly pageLimit = 2 ** 36;
  private runs: MappedRun[] = [];
  private readonly listeners = new Set<DomainMappingListener>();
  private readonly rangeListeners = new Set<DomainInvalidationListener>();

  constructor(
    readonly key: string,
    readonly did: number,
  ) {}

  /** Replaces the domain's mappings without telling anyone (what the guest writes); `runs` is kept as given. */
  setRuns(runs: MappedRun[]): void {
    this.runs = runs;
  }

  mappings(firstPage: number, pageCount: number): MappedRun[] {
    const end = firstPage + pageCount;
    return this.runs.filter((run) => run.iovaPage >= firstPage && run.iovaPage + run.pages <= end);
  }

  listen(listener: DomainMappingListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  listenInvalidations(listener: DomainInvalidationListener): () => void {
    this.rangeListeners.add(listener);
    return () => this.rangeListeners.delete(listener);
  }

  /** What the unit does on an invalidation of [firstPage, +pageCount): one walk, every listener told once. */
  invalidate(firstPage = 0, pageCount = this.pageLimit): void {
    for (const listener of this.rangeListeners) listener.invalidated(firstPage, pageCount);
    const runs = this.mappings(firstPage, pageCount);
    for (const listener of this.listeners) listener.mappingsChanged(firstPage, pageCount, runs);
  }
}

/** Which domain each SID is in, as the unit's context entries would say. */
export class ModelDirectory implements DomainSource {
  private readonly watchers = new Map<number, DeviceDomainListener>();
  private readonly placement = new Map<number, VtdDomain | undefined>();

  watchDevice(sid: number, listener: DeviceDomainListener): () => void {
    this.watchers.set(sid, listener);
    listener.domainChanged(this.placement.get(sid));
    return () => this.watchers.delete(sid);
  }

  place(sid: number, domain: VtdDomain | undefined): void {
    this.placement.set(sid, domain);
    this.watchers.get(sid)?.domainChanged(domain);
  }
}
