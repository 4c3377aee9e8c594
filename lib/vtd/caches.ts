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

/** Pages of 4 KiB one entry of each IOTLB page size covers. */
const PAGES_PER_ENTRY = PAGE_SIZES.map((size) => size / PAGE);
/** Table slots: a power of two, four per entry the IOTLB can hold, so linear probes stay short. */
const SLOT_BITS = 12;
const SLOTS = 2 ** SLOT_BITS;
const SLOT_MASK = SLOTS - 1;
const EMPTY = -1;
/** Page-selective invalidations up to this many pages probe for each page; wider ones scan the table. */
const PROBE_LIMIT = 64;

/** A slot's entry, allocated once with the table and overwritten in place. */
interface SlotEntry {
  did: number;
  pfn: number;
  address: number;
  pageSize: number;
  readable: boolean;
  writable: boolean;
}

/**
 * The IOTLB as an open-addressed hash table (linear probing, backward-shift deletion) whose keys live in typed
 * arrays and whose entries are allocated once: a hit is one hash and a compare, and filling or flushing the
 * cache allocates nothing for the GC to chase.
 */
export class Iotlb {
  /** Domain of the entry in each slot, or EMPTY. */
  private readonly dids = new Int32Array(SLOTS).fill(EMPTY);
  /** First 4 KiB page of the entry, aligned to its size. */
  private readonly pfns = new Float64Array(SLOTS);
  /** Index into PAGE_SIZES. */
  private readonly orders = new Uint8Array(SLOTS);
  private readonly entries: SlotEntry[] = Array.from({ length: SLOTS }, () => ({ did: 0, pfn: 0, address: 0, pageSize: PAGE, readable: false, writable: false }));
  /** Entries per page size: lookups skip sizes that hold none. */
  private readonly perOrder = new Int32Array(PAGE_SIZES.length);
  private count = 0;

  get size(): number {
    return this.count;
  }

  private static home(did: number, pfn: number, order: number): number {
    const low = pfn >>> 0;
    const high = (pfn / 2 ** 32) >>> 0;
    const mixed = Math.imul(low ^ Math.imul(did + 1, 0x9e3779b1) ^ Math.imul(high + (order << 8), 0x85ebca6b), 0xc2b2ae35);
    return (mixed ^ (mixed >>> 15)) >>> (32 - SLOT_BITS);
  }

  /** The slot holding (did, aligned pfn, order), or -1. */
  private slotOf(did: number, pfn: number, order: number): number {
    const dids = this.dids;
    for (let slot = Iotlb.home(did, pfn, order); dids[slot] !== EMPTY; slot = (slot + 1) & SLOT_MASK) {
      if (dids[slot] === did && this.pfns[slot] === pfn && this.orders[slot] === order) return slot;
    }
    return -1;
  }

  /**
   * The entry covering 4 KiB page `pfn` of domain `did`. The object belongs to the IOTLB and changes with it:
   * read it at once, never keep it.
   */
  find(did: number, pfn: number): Readonly<IotlbEntry> | undefined {
    const perOrder = this.perOrder;
    let slot = -1;
    if (perOrder[0]! > 0) slot = this.slotOf(did, pfn, 0);
    if (slot < 0 && perOrder[1]! > 0) slot = this.slotOf(did, Math.floor(pfn / 512) * 512, 1);
    if (slot < 0 && perOrder[2]! > 0) slot = this.slotOf(did, Math.floor(pfn / 262144) * 262144, 2);
    return slot < 0 ? undefined : this.entries[slot];
  }

  /** Like find(), as a copy that stays as it is. */
  lookup(did: number, pfn: number): IotlbEntry | undefined {
    const entry = this.find(did, pfn);
    return entry === undefined ? undefined : { ...entry };
  }

  insert(entry: IotlbEntry): void {
    const order = PAGE_SIZES.indexOf(entry.pageSize as (typeof PAGE_SIZES)[number]);
    if (order < 0 || entry.pfn >= PFN_SPAN) return;
    if (this.count >= IOTLB_CAPACITY) this.invalidateAll();
    const { did, pfn } = entry;
    const dids = this.dids;
    let slot = Iotlb.home(did, pfn, order);
    while (dids[slot] !== EMPTY && !(dids[slot] === did && this.pfns[slot] === pfn && this.orders[slot] === order)) slot = (slot + 1) & SLOT_MASK;
    if (dids[slot] === EMPTY) {
      this.count++;
      this.perOrder[order]!++;
    }
    dids[slot] = did;
    this.pfns[slot] = pfn;
    this.orders[slot] = order;
    const target = this.entries[slot]!;
    target.did = did;
    target.pfn = pfn;
    target.address = entry.address;
    target.pageSize = entry.pageSize;
    target.readable = entry.readable;
    target.writable = entry.writable;
  }

  invalidateAll(): void {
    this.dids.fill(EMPTY);
    this.perOrder.fill(0);
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
    const first = Math.floor(pfn / span) * span;
    const end = first + span;
    if (span > PROBE_LIMIT) {
      this.removeWhere((entry) => entry.did === did && entry.pfn < end && entry.pfn + entry.pageSize / PAGE > first);
      return;
    }
    for (let order = 0; order < PAGE_SIZES.length; order++) {
      if (this.perOrder[order] === 0) continue;
      const pages = PAGES_PER_ENTRY[order]!;
      for (let page = Math.floor(first / pages) * pages; page < end; page += pages) {
        const slot = this.slotOf(did, page, order);
        if (slot >= 0) this.removeSlot(slot);
      }
    }
  }

  /** Empties `hole` and shifts later members of its probe run back, so no lookup stops early at a gap. */
  private removeSlot(hole: number): void {
    const dids = this.dids;
    this.perOrder[this.orders[hole]!]!--;
    this.count--;
    dids[hole] = EMPTY;
    for (let slot = (hole + 1) & SLOT_MASK; dids[slot] !== EMPTY; slot = (slot + 1) & SLOT_MASK) {
      const home = Iotlb.home(dids[slot]!, this.pfns[slot]!, this.orders[slot]!);
      // The entry must stay if its home lies cyclically in (hole, slot]: moving it would put it before its home.
      const stays = hole < slot ? home > hole && home <= slot : home > hole || home <= slot;
      if (stays) continue;
      dids[hole] = dids[slot]!;
      this.pfns[hole] = this.pfns[slot]!;
      this.orders[hole] = this.orders[slot]!;
      const moved = this.entries[slot]!;
      this.entries[slot] = this.entries[hole]!;
      this.entries[hole] = moved;
      dids[slot] = EMPTY;
      hole = slot;
    }
  }

  /** Removes every entry that matches; for wide scopes, so one pass over the table is affordable. */
  private removeWhere(matches: (entry: Readonly<IotlbEntry>) => boolean): void {
    for (let slot = 0; slot < SLOTS; slot++) {
      // removeSlot may shift a later entry into this slot: look at the slot again until it keeps its entry.
      while (this.dids[slot] !== EMPTY && matches(this.entries[slot]!)) this.removeSlot(slot);
    }
  }
}
