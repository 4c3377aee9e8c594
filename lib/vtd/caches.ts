/** The context cache (by source id) and the IOTLB (by domain and page), with the invalidation scopes of the spec. */

/** What a present, valid legacy context entry tells the translation path. */
export interface CachedContext {
  readonly sid: number;
  readonly did: number;
  /** Translation type: 0 translated, 1 device TLB allowed, 2 pass-through. */
  readonly tt: number;
  readonly fpd: boolean;
  /** Page-table levels (AW + 2). */
  readonly levels: number;
  /** Guest-physical address of the top page table. */
  readonly tableAddress: number;
  /** 2^(input address width): IOVAs at or above it fault with reason 4. */
  readonly limit: number;
}

/** One leaf translation: the page the IOVA falls in and the permissions along the walk. */
export interface IotlbEntry {
  readonly did: number;
  /** First 4 KiB page number of the (possibly large) page on the IOVA side. */
  readonly pfn: number;
  /** Guest-physical base of the page. */
  readonly address: number;
  readonly pageSize: number;
  readonly readable: boolean;
  readonly writable: boolean;
}

const PAGE_SHIFT = 12;
const PAGE = 2 ** PAGE_SHIFT;
/** Page sizes the IOTLB holds, smallest first (4 KiB, 2 MiB, 1 GiB); lookups try each. */
export const PAGE_SIZES = [PAGE, 2 ** 21, 2 ** 30] as const;
/** Device-function masks selected by CCMD/descriptor FM (spec: mask none, bit 2, bits 2:1, bits 2:0). */
const FUNCTION_MASKS = [0b000, 0b100, 0b110, 0b111] as const;
/**
 * IOVAs the IOTLB holds are below 2^48, i.e. page numbers below 2^36, so DID * 2^36 + pfn stays a safe
 * integer: one number key, composed once, no BigInt.
 */
const PFN_SPAN = 2 ** 36;
/** Bounded like QEMU's (VTD_IOTLB_MAX_SIZE): a full cache is emptied rather than grown. */
export const IOTLB_CAPACITY = 1024;

export class ContextCache {
  private readonly entries = new Map<number, CachedContext>();

  get size(): number {
    return this.entries.size;
  }

  get(sid: number): CachedContext | undefined {
    return this.entries.get(sid);
  }

  set(entry: CachedContext): void {
    this.entries.set(entry.sid, entry);
  }

  invalidateAll(): void {
    this.entries.clear();
  }

  invalidateDomain(did: number): void {
    for (const [sid, entry] of this.entries) if (entry.did === did) this.entries.delete(sid);
  }

  /** Device-selective, with the function mask FM (0..3). */
  invalidateDevice(sid: number, fm: number): void {
    const keep = ~(FUNCTION_MASKS[fm & 3] ?? 0);
    for (const key of this.entries.keys()) if ((key & keep) === (sid & keep)) this.entries.delete(key);
  }
}

export class Iotlb {
  /** One map per page size, keyed by DID * 2^36 + page number aligned to that size. */
  private readonly maps = PAGE_SIZES.map(() => new Map<number, IotlbEntry>());
  private count = 0;

  get size(): number {
    return this.count;
  }

  static key(did: number, pfn: number): number {
    return did * PFN_SPAN + pfn;
  }

  /** The entry covering 4 KiB page `pfn` of domain `did`. */
  lookup(did: number, pfn: number): IotlbEntry | undefined {
    const maps = this.maps;
    let entry = maps[0]!.get(did * PFN_SPAN + pfn);
    if (entry !== undefined) return entry;
    entry = maps[1]!.get(did * PFN_SPAN + (pfn - (pfn % 512)));
    if (entry !== undefined) return entry;
    return maps[2]!.get(did * PFN_SPAN + (pfn - (pfn % 262144)));
  }

  insert(entry: IotlbEntry): void {
    const index = PAGE_SIZES.indexOf(entry.pageSize as (typeof PAGE_SIZES)[number]);
    if (index < 0 || entry.pfn >= PFN_SPAN) return;
    if (this.count >= IOTLB_CAPACITY) this.invalidateAll();
    const map = this.maps[index]!;
    const key = Iotlb.key(entry.did, entry.pfn);
    if (!map.has(key)) this.count++;
    map.set(key, entry);
  }

  invalidateAll(): void {
    for (const map of this.maps) map.clear();
    this.count = 0;
  }

  invalidateDomain(did: number): void {
    this.removeWhere((entry) => entry.did === did);
  }

  /**
   * Page-selective: the 2^am pages from `pfn` (aligned down to that size, as the spec requires software to
   * align). IH only promises that non-leaf entries did not change; the IOTLB holds leaves only, so it
   * removes the same entries either way.
   */
  invalidatePages(did: number, pfn: number, am: number): void {
    const span = 2 ** am;
    const first = pfn - (pfn % span);
    const end = first + span;
    if (span > this.count) {
      this.removeWhere((entry) => entry.did === did && entry.pfn < end && entry.pfn + entry.pageSize / PAGE > first);
      return;
    }
    // Fewer pages than entries: look up the keys the range can hold instead of scanning the whole IOTLB.
    const base = did * PFN_SPAN;
    PAGE_SIZES.forEach((size, index) => {
      const pages = size / PAGE;
      const map = this.maps[index]!;
      for (let key = first - (first % pages); key < end; key += pages) {
        if (map.delete(base + key)) this.count--;
      }
    });
  }

  private removeWhere(predicate: (entry: IotlbEntry) => boolean): void {
    for (const map of this.maps) {
      for (const [key, entry] of map) {
        if (predicate(entry)) {
          map.delete(key);
          this.count--;
        }
      }
    }
  }
}
