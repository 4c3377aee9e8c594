/** The unit's face toward host backends: which domain a device translates through, and what that domain maps. */

/** Access bits of a mapping, in DMA_MAP's order (the host layer passes them on unchanged). */
export const MAPPING_ACCESS = { READ: 0x1, WRITE: 0x2 } as const;

/** IOVA pages [iovaPage, iovaPage + pages) map guest-physical pages [gpaPage, gpaPage + pages) with `access`. */
export interface MappedRun {
  readonly iovaPage: number;
  readonly gpaPage: number;
  readonly pages: number;
  readonly access: number;
}

export interface DomainMappingListener {
  /**
   * IOVA pages [firstPage, firstPage + pageCount) of the domain now hold exactly `runs` (sorted, inside the range;
   * uncovered pages are unmapped). Called once per domain for each invalidation that covers it, however many
   * devices translate through the domain.
   */
  mappingsChanged(firstPage: number, pageCount: number, runs: readonly MappedRun[]): void;
}

export interface DomainInvalidationListener {
  /**
   * The guest invalidated IOVA pages [firstPage, firstPage + pageCount) of the domain (a whole first-stage domain
   * when the invalidation named second-stage addresses). Once per domain and invalidation; nothing is read from
   * the guest's tables for it: for hosts that walk the guest's tables themselves (iommufd nesting).
   */
  invalidated(firstPage: number, pageCount: number): void;
}

/** The guest's first-stage tables of a domain, as a host that binds them needs them. */
export interface FirstStageTableRoot {
  /** Guest-physical address of the top table. */
  readonly table: number;
  /** 4 or 5. */
  readonly levels: number;
  readonly wpe: boolean;
  readonly eafe: boolean;
  /** Requests are supervisor requests (SRE's effect): U/S does not restrict them. */
  readonly supervisor: boolean;
}

/**
 * A domain: the address space that a DID selects (and, for first-stage translation, the PASID entry's table too).
 * Devices whose context (or PASID) entries resolve to the same tables share one domain object.
 */
export interface VtdDomain {
  /** Stable while the guest keeps the domain's tables; names the kind, DID and table root for people. */
  readonly key: string;
  readonly did: number;
  /** Identity domains (translation off, pass-through) map all guest RAM at IOVA = GPA. */
  readonly kind: 'identity' | 'second-stage' | 'first-stage' | 'nested';
  /** Pages below this bound are the domain's input space. */
  readonly pageLimit: number;
  /** The current mappings of a page range, read from the guest's tables (bounded time: at most one walk per present leaf). */
  mappings(firstPage: number, pageCount: number): MappedRun[];
  listen(listener: DomainMappingListener): () => void;
  /** Hears the domain's invalidations without its mappings being read (see DomainInvalidationListener). */
  listenInvalidations(listener: DomainInvalidationListener): () => void;
  /** The first-stage tables of a 'first-stage' or 'nested' domain. */
  readonly firstStage?: FirstStageTableRoot;
}

export interface DeviceDomainListener {
  /**
   * The device now translates through `domain` (undefined: its DMA is blocked, e.g. context entry not present).
   * Called at once with the current domain when watching starts, then whenever the guest moves the device
   * (context/PASID-cache invalidation, SRTP, TE toggled).
   */
  domainChanged(domain: VtdDomain | undefined): void;
}
