/** The context caches (by source id), the PASID cache and the IOTLB (by domain, PASID and page), with the invalidation scopes of the spec. */

import type { PasidEntry, ScalableContext } from './scalable-context';
import { PAGE_BYTES } from '../memory/geometry';

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

/**
 * Which invalidations reach an IOTLB entry (spec 6.5.2.3/6.5.2.4): IOTLB invalidation (type 2) reaches
 * second-stage and pass-through entries by address and nested entries of the domain whatever the address;
 * PASID-based IOTLB invalidation (type 6) reaches first-stage and nested entries. Legacy entries are SECOND.
 */
export const TRANSLATION_KIND = { SECOND: 0, FIRST: 1, NESTED: 2 } as const;
export type TranslationKind = (typeof TRANSLATION_KIND)[keyof typeof TRANSLATION_KIND];

/** One leaf translation: the page the IOVA falls in and the permissions along the walk. */
export interface IotlbEntry {
  readonly did: number;
  /** The PASID the translation was made for (requests without PASID: RID_PASID); 0 in legacy mode. */
  readonly pasid?: number;
  /** Defaults to SECOND. */
  readonly kind?: TranslationKind;
  /** First 4 KiB page number of the (possibly large) page on the IOVA side. */
  readonly pfn: number;
  /** Guest-physical base of the page. */
  readonly address: number;
  readonly pageSize: number;
  readonly readable: boolean;
  readonly writable: boolean;
  /** First-stage rights depend on the privilege of the request: an entry serves requests of the same privilege only. */
  readonly supervisor?: boolean;
  /** Execute allowed (first stage: XD clear along the walk); defaults to true. */
  readonly executable?: boolean;
  /** A write needs no walk to set D (first-stage D already set, or no D to set); defaults to true. */
  readonly dirty?: boolean;
}

const PAGE = PAGE_BYTES;
/** Page sizes the IOTLB holds, smallest first (4 KiB, 2 MiB, 1 GiB); lookups try each. */
export const PAGE_SIZES = [PAGE, 2 ** 21, 2 ** 30] as const;
/** Device-function masks selected by CCMD/descriptor FM (spec: mask none, bit 2, bits 2:1, bits 2:0). */
const FUNCTION_MASKS = [0b000, 0b100, 0b110, 0b111] as const;
/** The IOTLB holds inputs below 2^52 (page numbers are exact doubles); translations above it are walked each time. */
const PFN_SPAN = 2 ** 40;
/** Bounded like QEMU's (VTD_IOTLB_MAX_SIZE): a full cache is emptied rather than grown. */
export const IOTLB_CAPACITY = 1024;

/** Source ids are 16 bits (bus, device, function). */
const SOURCE_IDS = 2 ** 16;

/**
 * Legacy context entries by source id. Every translation looks here first, so the lookup is an array index;
 * the Map beside it keeps the invalidation scopes a walk over the cached entries only.
 */
export class ContextCache {
  private readonly entries = new Map<number, CachedContext>();
  private readonly bySid: (CachedContext | undefined)[] = new Array<CachedContext | undefined>(SOURCE_IDS).fill(undefined);

  get size(): number {
    return this.entries.size;
  }

  get(sid: number): CachedContext | undefined {
    const entry = this.bySid[sid & (SOURCE_IDS - 1)];
    return entry !== undefined && entry.sid === sid ? entry : undefined;
  }

  set(entry: CachedContext): void {
    // A source id outside 16 bits is never cached: each of its requests walks (and faults) again.
    if (!Number.isInteger(entry.sid) || entry.sid < 0 || entry.sid >= SOURCE_IDS) return;
    this.entries.set(entry.sid, entry);
    this.bySid[entry.sid] = entry;
  }

  invalidateAll(): void {
    for (const sid of this.entries.keys()) this.bySid[sid] = undefined;
    this.entries.clear();
  }

  invalidateDomain(did: number): void {
    for (const [sid, entry] of this.entries) if (entry.did === did) this.remove(sid);
  }

  /** Device-selective, with the function mask FM (0..3). */
  invalidateDevice(sid: number, fm: number): void {
    const keep = ~(FUNCTION_MASKS[fm & 3] ?? 0);
    for (const key of this.entries.keys()) if ((key & keep) === (sid & keep)) this.remove(key);
  }

  private remove(sid: number): void {
    this.entries.delete(sid);
    this.bySid[sid] = undefined;
  }
}

/** Whether `key` is among the source ids a device-selective invalidation of `sid` with function mask `fm` names. */
function sidMatches(key: number, sid: number, fm: number): boolean {
  const keep = ~(FUNCTION_MASKS[fm & 3] ?? 0);
  return (key & keep) === (sid & keep);
}

/** Scalable-mode context entries by source id. They carry no DID, so a domain-selective invalidation drops all. */
export class ScalableContextCache {
  private readonly entries = new Map<number, ScalableContext>();

  get size(): number {
    return this.entries.size;
  }

  get(sid: number): ScalableContext | undefined {
    return this.entries.get(sid);
  }

  set(entry: ScalableContext): void {
    this.entries.set(entry.sid, entry);
  }

  invalidateAll(): void {
    this.entries.clear();
  }

  invalidateDevice(sid: number, fm: number): void {
    for (const key of this.entries.keys()) if (sidMatches(key, sid, fm)) this.entries.delete(key);
  }
}

/** PASIDs are 20 bits: SID * 2^20 + PASID is one exact number key. */
const PASID_SPAN = 2 ** 20;

/**
 * PASID-table entries, found by (source id, PASID) -- the lookup knows no DID before it reads the entry -- and
 * tagged with the entry's DID, which the PASID-cache invalidation scopes (domain, PASID within domain) select by.
 */
export class PasidCache {
  private readonly entries = new Map<number, { readonly sid: number; readonly entry: PasidEntry }>();

  get size(): number {
    return this.entries.size;
  }

  get(sid: number, pasid: number): PasidEntry | undefined {
    return this.entries.get(sid * PASID_SPAN + pasid)?.entry;
  }

  set(sid: number, entry: PasidEntry): void {
    this.entries.set(sid * PASID_SPAN + entry.pasid, { sid, entry });
  }

  invalidateAll(): void {
    this.entries.clear();
  }

  invalidateDomain(did: number): void {
    for (const [key, value] of this.entries) if (value.entry.did === did) this.entries.delete(key);
  }

  invalidatePasid(did: number, pasid: number): void {
    for (const [key, value] of this.entries) if (value.entry.did === did && value.entry.pasid === pasid) this.entries.delete(key);
  }

  /** The entries reached through the context entries of these devices (a context-cache invalidation). */
  invalidateDevice(sid: number, fm: number): void {
    for (const [key, value] of this.entries) if (sidMatches(value.sid, sid, fm)) this.entries.delete(key);
  }
}

/** Paging-structure cache slots: direct-mapped by domain and 2 MiB region, so neighbouring regions never evict each other. */
const PSC_SLOT_BITS = 8;
const PSC_SLOTS = 1 << PSC_SLOT_BITS;
const PSC_SLOT_MASK = PSC_SLOTS - 1;
/** An odd multiplier that spreads domains over the slots. */
const PSC_DID_STRIDE = 97;
/** Buckets of the per-domain entry counts (PagingStructureCache.mayHold). */
const PSC_DID_BUCKETS = 256;
const PSC_DID_BUCKET_MASK = PSC_DID_BUCKETS - 1;
/** 4 KiB pages one leaf table maps (2^9): a paging-structure cache entry serves this many. */
const LEAF_TABLE_BITS = 9;
const PAGES_PER_LEAF_TABLE = 1 << LEAF_TABLE_BITS;
/** Regions above this many per invalidation are dropped by one pass over the slots instead of a probe each. */
const PSC_PROBE_LIMIT = PSC_SLOTS / 4;
/** The last word index a kept view may start at: base + 2 * 511 + 1 stays a 32-bit integer. */
const MAX_VIEW_BASE = 2 ** 31 - 2 ** 10;

/** One paging-structure cache entry, as tests and explain see it. */
export interface PagingStructureEntry {
  readonly did: number;
  /** First 4 KiB page (IOVA side) of the 2 MiB region the leaf table maps. */
  readonly pfn: number;
  /** The context's second-stage table address plus its level count: the walk the entry was made by. */
  readonly root: number;
  /** Guest page number of the leaf (level 1) table. */
  readonly tablePage: number;
  /** R and W along the non-leaf entries above it (their logical AND, as the spec's PDE cache keeps). */
  readonly readable: boolean;
  readonly writable: boolean;
}

/** R and W of a second-stage entry (bits 0 and 1), as the cache stores them. */
const PSC_READ = 1;
const PSC_WRITE = 2;
export const PSC_RIGHTS = PSC_READ | PSC_WRITE;
/** Numbers per paging-structure cache slot (see PagingStructureCache.slots). */
const PSC_FIELDS = 4;
/** Regions are below 2^31 (IOVAs below 2^52): DID * 2^31 + region is one exact key. */
const REGION_KEY_SPAN = 2 ** 31;
const EMPTY_KEY = -1;
/** 32-bit words per 4 KiB table: a view base (a table's first word) is a multiple of this. */
const WORDS_PER_PAGE = 1024;

/**
 * The paging-structure cache of the legacy second-stage walk (spec 6.2.4, the PDE cache): for a domain and a
 * 2 MiB IOVA region, the leaf table the non-leaf entries lead to and the rights they grant, so an IOTLB miss
 * reads one entry instead of walking every level. Direct-mapped and small, like hardware's. Entries are made
 * only by walks through present non-leaf entries without reserved bits, are tagged with the context's table
 * root, and go with the IOTLB's invalidations: global, domain-selective, and page-selective unless IH says that
 * only leaves changed. An entry may also hold the RAM view of its table (GuestMemory.tableRegion), valid for the
 * memory generation the cache was filled under; a new generation empties the cache.
 */
export class PagingStructureCache {
  /**
   * PSC_FIELDS numbers per slot, side by side so that a lookup reads one cache line: the key (DID * 2^31 +
   * region, EMPTY_KEY when free), the context's table root, the leaf table's page number, and the table's first
   * word in its view plus the R/W bits (a view base is a multiple of 1024, so the low bits are free).
   */
  private readonly slots = new Float64Array(PSC_SLOTS * PSC_FIELDS).fill(EMPTY_KEY);
  /** The leaf table's RAM as 32-bit words, when one region holds it (GuestMemory.tableRegion). */
  private readonly views: (Uint32Array | undefined)[] = new Array<Uint32Array | undefined>(PSC_SLOTS).fill(undefined);
  /** Entries per DID bucket (DID mod PSC_DID_BUCKETS): invalidations of a domain without entries skip the cache. */
  private readonly perBucket = new Int32Array(PSC_DID_BUCKETS);
  private count = 0;
  /** The guest memory generation the views belong to (see useGeneration). */
  private generation = -1;

  get size(): number {
    return this.count;
  }

  /**
   * Whether the cache may hold entries of `did` (false: it surely holds none). Tiny on purpose: invalidations
   * ask it before each page-selective drop, and V8 inlines it into the descriptor dispatch without cost.
   */
  mayHold(did: number): boolean {
    return this.perBucket[did & PSC_DID_BUCKET_MASK] !== 0;
  }

  /** Empties the cache when guest memory is no longer the one its views were taken from. */
  useGeneration(generation: number): void {
    if (generation === this.generation) return;
    this.invalidateAll();
    this.generation = generation;
  }

  /** Neighbouring regions of a domain take neighbouring slots. Kept tiny: V8 always inlines it. */
  private static home(did: number, region: number): number {
    return (region ^ (did * PSC_DID_STRIDE)) & PSC_SLOT_MASK;
  }

  /** The slot holding (did, region, root), or -1. `region` is IOVA / 2^21, below 2^31; `did` below 2^16. */
  find(did: number, region: number, root: number): number {
    const slot = PagingStructureCache.home(did, region);
    const at = slot * PSC_FIELDS;
    return this.slots[at] === did * REGION_KEY_SPAN + region && this.slots[at + 1] === root ? slot : -1;
  }

  slotTablePage(slot: number): number {
    return this.slots[slot * PSC_FIELDS + 2]!;
  }

  /**
   * The R/W bits (second-stage entry positions, PSC_RIGHTS) of the non-leaf entries above the table, plus the
   * index of the table's first word in slotView() (a multiple of 1024; 0 without a view): one number, one load.
   */
  slotWord(slot: number): number {
    return this.slots[slot * PSC_FIELDS + 3]!;
  }

  /** The leaf table's words (undefined: read it through GuestMemory). */
  slotView(slot: number): Uint32Array | undefined {
    return this.views[slot];
  }

  store(did: number, region: number, root: number, tablePage: number, rights: number, view: Uint32Array | undefined, viewBase: number): void {
    const slot = PagingStructureCache.home(did, region);
    const at = slot * PSC_FIELDS;
    const slots = this.slots;
    if (slots[at] === EMPTY_KEY) this.count++;
    else this.perBucket[Math.floor(slots[at]! / REGION_KEY_SPAN) & PSC_DID_BUCKET_MASK]!--;
    this.perBucket[did & PSC_DID_BUCKET_MASK]!++;
    const usable = view !== undefined && viewBase >= 0 && viewBase <= MAX_VIEW_BASE && viewBase % WORDS_PER_PAGE === 0;
    slots[at] = did * REGION_KEY_SPAN + region;
    slots[at + 1] = root;
    slots[at + 2] = tablePage;
    slots[at + 3] = (usable ? viewBase : 0) + (rights & PSC_RIGHTS);
    this.views[slot] = usable ? view : undefined;
  }

  /** The entries held, for tests and explain. */
  entries(): PagingStructureEntry[] {
    const out: PagingStructureEntry[] = [];
    const slots = this.slots;
    for (let slot = 0; slot < PSC_SLOTS; slot++) {
      const at = slot * PSC_FIELDS;
      const key = slots[at]!;
      if (key === EMPTY_KEY) continue;
      const did = Math.floor(key / REGION_KEY_SPAN);
      const rights = slots[at + 3]! & PSC_RIGHTS;
      out.push({
        did,
        pfn: (key - did * REGION_KEY_SPAN) * PAGES_PER_LEAF_TABLE,
        root: slots[at + 1]!,
        tablePage: slots[at + 2]!,
        readable: (rights & PSC_READ) !== 0,
        writable: (rights & PSC_WRITE) !== 0,
      });
    }
    return out;
  }

  invalidateAll(): void {
    if (this.count === 0) return;
    for (let slot = 0; slot < PSC_SLOTS; slot++) this.removeSlot(slot);
  }

  invalidateDomain(did: number): void {
    if (!this.mayHold(did)) return;
    const first = did * REGION_KEY_SPAN;
    for (let slot = 0; slot < PSC_SLOTS; slot++) {
      const key = this.slots[slot * PSC_FIELDS]!;
      if (key >= first && key < first + REGION_KEY_SPAN) this.removeSlot(slot);
    }
  }

  /**
   * Drops the entries of `did` whose 2 MiB region overlaps the 2^am pages from the first page of `region`
   * (IOVA / 2^21) on, aligned down to their size: a page-selective invalidation of the pages containing it. The
   * caller passes the region rather than the page number, which is a small integer for any IOVA below 2^51.
   */
  invalidatePages(did: number, region: number, am: number): void {
    if (!this.mayHold(did)) return;
    if (am <= LEAF_TABLE_BITS) {
      // Up to 2 MiB, aligned: within one region.
      const slot = PagingStructureCache.home(did, region);
      if (this.slots[slot * PSC_FIELDS] === did * REGION_KEY_SPAN + region) this.removeSlot(slot);
      return;
    }
    this.invalidateRegions(did, region, POWERS_OF_TWO[am - LEAF_TABLE_BITS] ?? 2 ** (am - LEAF_TABLE_BITS));
  }

  /** invalidatePages() of more than one region: `span` regions, aligned, from the one holding `region`. */
  private invalidateRegions(did: number, region: number, span: number): void {
    const first = alignDown(region, span);
    const end = first + span;
    const key = did * REGION_KEY_SPAN;
    if (span <= PSC_PROBE_LIMIT) {
      for (let r = first; r < end; r++) {
        const slot = PagingStructureCache.home(did, r);
        if (this.slots[slot * PSC_FIELDS] === key + r) this.removeSlot(slot);
      }
      return;
    }
    for (let slot = 0; slot < PSC_SLOTS; slot++) {
      const k = this.slots[slot * PSC_FIELDS]!;
      if (k >= key + first && k < key + Math.min(end, REGION_KEY_SPAN)) this.removeSlot(slot);
    }
  }

  private removeSlot(slot: number): void {
    const at = slot * PSC_FIELDS;
    const key = this.slots[at]!;
    if (key === EMPTY_KEY) return;
    this.perBucket[Math.floor(key / REGION_KEY_SPAN) & PSC_DID_BUCKET_MASK]!--;
    this.slots[at] = EMPTY_KEY;
    this.views[slot] = undefined;
    this.count--;
  }
}

/** Pages of 4 KiB one entry of each IOTLB page size covers. */
const PAGES_PER_ENTRY = PAGE_SIZES.map((size) => size / PAGE);
/** 2^0 .. 2^63, so that a 6-bit address mask costs no Math.pow per invalidation. */
export const POWERS_OF_TWO: readonly number[] = Array.from({ length: 64 }, (_, exponent) => 2 ** exponent);

/**
 * `value` rounded down to a multiple of the power of two `size`. Multiplying by 1/size is exact for powers of
 * two and cheaper than dividing; page-selective invalidations do this for every descriptor.
 */
export function alignDown(value: number, size: number): number {
  return size === 1 ? value : Math.floor(value * (1 / size)) * size;
}

/** Table slots: a power of two, four per entry the IOTLB can hold, so linear probes stay short. */
const SLOT_BITS = 12;
const SLOTS = 1 << SLOT_BITS;
const SLOT_MASK = SLOTS - 1;
const EMPTY = -1;
/** Page-selective invalidations up to this many pages probe for each page; wider ones scan the table. */
const PROBE_LIMIT = 64;

/** The entry find() hands out: one object per IOTLB, refilled from the slot arrays on each hit. */
interface FoundEntry {
  did: number;
  pasid: number;
  kind: TranslationKind;
  pfn: number;
  address: number;
  pageSize: number;
  readable: boolean;
  writable: boolean;
  supervisor: boolean;
  executable: boolean;
  dirty: boolean;
}

/** Bits of a slot's permission byte. */
const ALLOWS = { READ: 1, WRITE: 2, SUPERVISOR: 4, EXECUTE: 8, DIRTY: 16 } as const;
/** Where a slot's meta word keeps its ALLOWS bits, kind and order: allows lowest, then kind, then order. */
const ALLOWS_BITS = 5;
const KIND_BITS = 2;
const KIND_SHIFT = ALLOWS_BITS;
const ORDER_SHIFT = KIND_SHIFT + KIND_BITS;
const ALLOWS_MASK = (1 << ALLOWS_BITS) - 1;
const KIND_MASK = (1 << KIND_BITS) - 1;

function packMeta(order: number, kind: number, allows: number): number {
  return (order << ORDER_SHIFT) | (kind << KIND_SHIFT) | allows;
}

/** ALLOWS bits as plain constants for the walk-miss insert; a second-stage translation is executable and needs no D update. */
const ALLOW_READ = ALLOWS.READ;
const ALLOW_WRITE = ALLOWS.WRITE;
const SECOND_STAGE_ALLOWS = ALLOWS.EXECUTE | ALLOWS.DIRTY;
/** The meta word of a 4 KiB second-stage entry, but for its READ and WRITE bits. */
const SECOND_STAGE_4K_META = packMeta(0, TRANSLATION_KIND.SECOND, SECOND_STAGE_ALLOWS);

/**
 * The IOTLB as an open-addressed hash table (linear probing, backward-shift deletion) held entirely in typed
 * arrays: a hit is one hash and a compare, and filling or flushing the cache allocates nothing. Probes read the
 * small `dids` array first (it stays in the L1 cache); one heap object per slot made a walk-miss insert mostly
 * a series of cache misses, and interleaving all fields of a slot in one array measured slower still.
 */
export class Iotlb {
  /** Domain of the entry in each slot, or EMPTY. */
  private readonly dids = new Int32Array(SLOTS).fill(EMPTY);
  /** PASID tag of the entry in each slot (0 in legacy mode). */
  private readonly pasids = new Int32Array(SLOTS);
  /** First 4 KiB page of the entry, aligned to its size. */
  private readonly pfns = new Float64Array(SLOTS);
  /** Guest-physical base of the page. */
  private readonly addresses = new Float64Array(SLOTS);
  /** Order (index into PAGE_SIZES), kind and ALLOWS bits of each slot, packed by META (one store per insert). */
  private readonly metas = new Uint16Array(SLOTS);
  private readonly found: FoundEntry = {
    did: 0,
    pasid: 0,
    kind: TRANSLATION_KIND.SECOND,
    pfn: 0,
    address: 0,
    pageSize: PAGE,
    readable: false,
    writable: false,
    supervisor: false,
    executable: true,
    dirty: true,
  };
  /** Entries per page size: lookups skip sizes that hold none. */
  private readonly perOrder = new Int32Array(PAGE_SIZES.length);
  private count = 0;
  /**
   * Entries with a non-zero PASID or a first-stage/nested kind: while there are none (legacy mode, or scalable
   * second stage with RID_PASID 0) page-selective invalidation may probe by (DID, PASID 0) instead of scanning.
   */
  private tagged = 0;

  get size(): number {
    return this.count;
  }

  private static home(did: number, pasid: number, pfn: number, order: number): number {
    const low = pfn >>> 0;
    const high = (pfn / 2 ** 32) >>> 0;
    const tag = Math.imul(did + 1, 0x9e3779b1) ^ Math.imul(pasid, 0x27d4eb2f);
    const mixed = Math.imul(low ^ tag ^ Math.imul(high + (order << 8), 0x85ebca6b), 0xc2b2ae35);
    return (mixed ^ (mixed >>> 15)) >>> (32 - SLOT_BITS);
  }

  /**
   * The page number slotOf() probes for. Passed through this array, not as an argument: wherever V8 leaves
   * slotOf() out of line (its caller's inlining budget spent), a page number above 2^31 would be boxed into a
   * new heap number on every call.
   */
  private readonly probePfn = new Float64Array(2);
  /**
   * The empty slot where the last probe that missed stopped: until the table next changes, that is where an
   * insert of the probed key goes (the walk-miss path inserts right after its lookup missed, so it skips a
   * second probe). -1 when unknown; the key it was probed for is in missDid and probePfn[1], order 0, PASID 0.
   */
  private missSlot = -1;
  private missDid = -1;

  /**
   * The slot holding (did, pasid, probePfn[0], order); the page number is aligned to the order's size. When
   * there is none, -1 - the empty slot where the probe stopped (negative either way).
   */
  private slotOf(did: number, pasid: number, order: number): number {
    const dids = this.dids;
    const pfn = this.probePfn[0]!;
    let slot = Iotlb.home(did, pasid, pfn, order);
    for (; dids[slot] !== EMPTY; slot = (slot + 1) & SLOT_MASK) {
      if (dids[slot] === did && this.pfns[slot] === pfn && this.metas[slot]! >>> ORDER_SHIFT === order && this.pasids[slot] === pasid) return slot;
    }
    return -1 - slot;
  }

  /** The entry in `slot`, as the shared FoundEntry. */
  private entryAt(slot: number): FoundEntry {
    const found = this.found;
    const meta = this.metas[slot]!;
    const allows = meta & ALLOWS_MASK;
    found.did = this.dids[slot]!;
    found.pasid = this.pasids[slot]!;
    found.kind = ((meta >>> KIND_SHIFT) & KIND_MASK) as TranslationKind;
    found.pfn = this.pfns[slot]!;
    found.address = this.addresses[slot]!;
    found.pageSize = PAGE_SIZES[meta >>> ORDER_SHIFT]!;
    found.readable = (allows & ALLOWS.READ) !== 0;
    found.writable = (allows & ALLOWS.WRITE) !== 0;
    found.supervisor = (allows & ALLOWS.SUPERVISOR) !== 0;
    found.executable = (allows & ALLOWS.EXECUTE) !== 0;
    found.dirty = (allows & ALLOWS.DIRTY) !== 0;
    return found;
  }

  /**
   * The entry covering 4 KiB page `pfn` of domain `did` (and PASID `pasid` in scalable mode). The object belongs
   * to the IOTLB and changes with it: read it at once, never keep it.
   */
  find(did: number, pfn: number, pasid = 0): Readonly<IotlbEntry> | undefined {
    const slot = this.findSlot(did, pfn, pasid);
    return slot < 0 ? undefined : this.entryAt(slot);
  }

  /** Like find(), as a copy that stays as it is. */
  lookup(did: number, pfn: number, pasid = 0): IotlbEntry | undefined {
    const entry = this.find(did, pfn, pasid);
    return entry === undefined ? undefined : { ...entry };
  }

  /**
   * find() as a slot number, or -1: the translation hot path reads just the fields it needs through the slot
   * accessors below. A slot number is valid until the IOTLB next changes.
   */
  findSlot(did: number, pfn: number, pasid = 0): number {
    const perOrder = this.perOrder;
    this.missSlot = -1;
    if (perOrder[0]! > 0) {
      // The 4 KiB probe written out here rather than through slotOf(): the page number stays a local double.
      const dids = this.dids;
      let slot = Iotlb.home(did, pasid, pfn, 0);
      for (; dids[slot] !== EMPTY; slot = (slot + 1) & SLOT_MASK) {
        if (dids[slot] === did && this.pfns[slot] === pfn && this.metas[slot]! >>> ORDER_SHIFT === 0 && this.pasids[slot] === pasid) return slot;
      }
      // Where an insert of this page would go, for insertSecondStage (order 0, PASID 0, a page the IOTLB holds).
      if (pasid === 0 && pfn < PFN_SPAN) {
        this.missSlot = slot;
        this.missDid = did;
        this.probePfn[1] = pfn;
      }
    }
    return perOrder[1]! > 0 || perOrder[2]! > 0 ? this.findLarge(did, pfn, pasid) : -1;
  }

  /** findSlot() among the 2 MiB and 1 GiB entries. */
  private findLarge(did: number, pfn: number, pasid: number): number {
    const perOrder = this.perOrder;
    const probe = this.probePfn;
    let slot = -1;
    if (perOrder[1]! > 0) {
      probe[0] = alignDown(pfn, PAGES_PER_ENTRY[1]!);
      slot = this.slotOf(did, pasid, 1);
    }
    if (slot < 0 && perOrder[2]! > 0) {
      probe[0] = alignDown(pfn, PAGES_PER_ENTRY[2]!);
      slot = this.slotOf(did, pasid, 2);
    }
    return slot < 0 ? -1 : slot;
  }

  /** Guest-physical base of the page in `slot`. */
  slotAddress(slot: number): number {
    return this.addresses[slot]!;
  }

  /** First 4 KiB page number (IOVA side) of the page in `slot`. */
  slotPfn(slot: number): number {
    return this.pfns[slot]!;
  }

  slotPageSize(slot: number): number {
    return PAGE_SIZES[this.metas[slot]! >>> ORDER_SHIFT]!;
  }

  slotReadable(slot: number): boolean {
    return (this.metas[slot]! & ALLOWS.READ) !== 0;
  }

  slotWritable(slot: number): boolean {
    return (this.metas[slot]! & ALLOWS.WRITE) !== 0;
  }

  insert(entry: IotlbEntry): void {
    const allows =
      (entry.readable ? ALLOWS.READ : 0) |
      (entry.writable ? ALLOWS.WRITE : 0) |
      (entry.supervisor === true ? ALLOWS.SUPERVISOR : 0) |
      (entry.executable === false ? 0 : ALLOWS.EXECUTE) |
      (entry.dirty === false ? 0 : ALLOWS.DIRTY);
    this.store(entry.did, entry.pasid ?? 0, entry.kind ?? TRANSLATION_KIND.SECOND, entry.pfn, entry.address, orderOf(entry.pageSize), allows);
  }

  /** insert() of a legacy (second-stage, PASID 0) translation without an entry object: the walk-miss path. */
  insertSecondStage(did: number, pfn: number, address: number, pageSize: number, readable: boolean, writable: boolean): void {
    const allows = (readable ? ALLOW_READ : 0) | (writable ? ALLOW_WRITE : 0) | SECOND_STAGE_ALLOWS;
    const slot = this.missSlot;
    if (slot >= 0 && pageSize === PAGE && did === this.missDid && pfn === this.probePfn[1] && this.count < IOTLB_CAPACITY) {
      // The slot findSlot() just stopped at, nothing changed since: store() would probe its way to it again.
      this.missSlot = -1;
      this.dids[slot] = did;
      this.pasids[slot] = 0;
      this.pfns[slot] = pfn;
      this.addresses[slot] = address;
      this.metas[slot] = SECOND_STAGE_4K_META | allows;
      this.count++;
      this.perOrder[0]!++;
      return;
    }
    this.store(did, 0, TRANSLATION_KIND.SECOND, pfn, address, orderOf(pageSize), allows);
  }

  /** `order` indexes PAGE_SIZES (-1: a size the IOTLB does not hold); `allows` holds ALLOWS bits. */
  private store(did: number, pasid: number, kind: TranslationKind, pfn: number, address: number, order: number, allows: number): void {
    this.missSlot = -1;
    if (order < 0 || pfn >= PFN_SPAN) return;
    if (this.count >= IOTLB_CAPACITY) this.invalidateAll();
    const dids = this.dids;
    let slot = Iotlb.home(did, pasid, pfn, order);
    while (
      dids[slot] !== EMPTY &&
      !(dids[slot] === did && this.pfns[slot] === pfn && this.metas[slot]! >>> ORDER_SHIFT === order && this.pasids[slot] === pasid)
    )
      slot = (slot + 1) & SLOT_MASK;
    if (dids[slot] === EMPTY) {
      this.count++;
      this.perOrder[order]!++;
    } else if (this.isTagged(slot)) {
      this.tagged--;
    }
    dids[slot] = did;
    this.pasids[slot] = pasid;
    this.pfns[slot] = pfn;
    this.addresses[slot] = address;
    this.metas[slot] = packMeta(order, kind, allows);
    if (pasid !== 0 || kind !== TRANSLATION_KIND.SECOND) this.tagged++;
  }

  invalidateAll(): void {
    this.missSlot = -1;
    this.dids.fill(EMPTY);
    this.perOrder.fill(0);
    this.count = 0;
    this.tagged = 0;
  }

  /** Domain-selective IOTLB invalidation: second-stage, pass-through and nested entries of `did`, every PASID. */
  invalidateDomain(did: number): void {
    this.removeWhere((entry) => entry.did === did && entry.kind !== TRANSLATION_KIND.FIRST);
  }

  /**
   * Page-selective IOTLB invalidation: second-stage (and pass-through) entries of `did` in the 2^am pages from
   * `pfn` (aligned down to that size, as the spec requires software to align), every PASID, and every first-stage
   * and nested entry of `did`, whatever its address: the spec's page-selective-within-domain granularity names
   * the address range for PGTT 010b and 100b only (the address is a second-stage input, which first-stage and
   * combined translations are not tagged with).
   * IH only promises that non-leaf entries did not change; the IOTLB holds leaves only, so it removes the same
   * entries either way.
   */
  invalidatePages(did: number, pfn: number, am: number): void {
    const perOrder = this.perOrder;
    if (am === 0 && this.tagged === 0 && perOrder[1] === 0 && perOrder[2] === 0) {
      // One page, legacy entries of 4 KiB only: the case guests queue by the thousand, kept small enough for V8
      // to inline into the descriptor dispatch together with the probe.
      if (perOrder[0] === 0) return;
      this.probePfn[0] = pfn;
      const slot = this.slotOf(did, 0, 0);
      if (slot >= 0) this.removeSlot(slot);
      return;
    }
    this.invalidatePageRange(did, pfn, am);
  }

  /** invalidatePages() of any span, on a table that may hold large pages or tagged entries. */
  private invalidatePageRange(did: number, pfn: number, am: number): void {
    const span = POWERS_OF_TWO[am] ?? 2 ** am;
    const first = alignDown(pfn, span);
    const end = first + span;
    if (span > PROBE_LIMIT || this.tagged > 0) {
      this.scanOutPages(did, first, end);
      return;
    }
    for (let order = 0; order < PAGE_SIZES.length; order++) {
      if (this.perOrder[order] === 0) continue;
      const pages = PAGES_PER_ENTRY[order]!;
      for (let page = alignDown(first, pages); page < end; page += pages) {
        this.probePfn[0] = page;
        const slot = this.slotOf(did, 0, order);
        if (slot >= 0) this.removeSlot(slot);
      }
    }
  }

  /**
   * invalidatePages() by one pass over the table. Out of line: a closure in invalidatePages() itself made V8 box
   * `first` and `end` into a context on every call, probe path included (one allocation per descriptor).
   */
  private scanOutPages(did: number, first: number, end: number): void {
    this.removeWhere(
      (entry) => entry.did === did && (entry.kind !== TRANSLATION_KIND.SECOND || (entry.pfn < end && entry.pfn + entry.pageSize / PAGE > first)),
    );
  }

  /**
   * What QEMU 7.2's page-selective invalidation drops besides invalidatePages() (quirk
   * iotlb-page-invalidation-mask-truncated): second-stage entries of `did`, every PASID, whose page number agrees
   * with `pfn` in bits am..7; from AM 8 on no bit is compared.
   */
  invalidatePagesAgreeingInBitsAmTo7(did: number, pfn: number, am: number): void {
    const compared = am >= 8 ? 0 : (0xff >> am) << am;
    const wanted = (pfn % 256) & compared;
    this.removeWhere((entry) => entry.did === did && entry.kind === TRANSLATION_KIND.SECOND && ((entry.pfn % 256) & compared) === wanted);
  }

  /** PASID-based IOTLB invalidation, all of a PASID: first-stage and nested entries of (did, pasid). */
  invalidatePasid(did: number, pasid: number): void {
    this.removeWhere((entry) => entry.did === did && entry.pasid === pasid && entry.kind !== TRANSLATION_KIND.SECOND);
  }

  /** PASID-based IOTLB invalidation of the 2^am pages from `pfn` (first-stage inputs): first-stage and nested entries. */
  invalidatePasidPages(did: number, pasid: number, pfn: number, am: number): void {
    const span = POWERS_OF_TWO[am] ?? 2 ** am;
    const first = alignDown(pfn, span);
    const end = first + span;
    this.removeWhere(
      (entry) =>
        entry.did === did &&
        entry.pasid === pasid &&
        entry.kind !== TRANSLATION_KIND.SECOND &&
        entry.pfn < end &&
        entry.pfn + entry.pageSize / PAGE > first,
    );
  }

  /** A non-zero PASID or a kind other than SECOND (see `tagged`). */
  private isTagged(slot: number): boolean {
    return this.pasids[slot] !== 0 || ((this.metas[slot]! >>> KIND_SHIFT) & KIND_MASK) !== TRANSLATION_KIND.SECOND;
  }

  /** Empties `hole` and shifts later members of its probe run back, so no lookup stops early at a gap. */
  private removeSlot(hole: number): void {
    this.missSlot = -1;
    const dids = this.dids;
    this.perOrder[this.metas[hole]! >>> ORDER_SHIFT]!--;
    this.count--;
    if (this.isTagged(hole)) this.tagged--;
    dids[hole] = EMPTY;
    for (let slot = (hole + 1) & SLOT_MASK; dids[slot] !== EMPTY; slot = (slot + 1) & SLOT_MASK) {
      const home = Iotlb.home(dids[slot]!, this.pasids[slot]!, this.pfns[slot]!, this.metas[slot]! >>> ORDER_SHIFT);
      // The entry must stay if its home lies cyclically in (hole, slot]: moving it would put it before its home.
      const stays = hole < slot ? home > hole && home <= slot : home > hole || home <= slot;
      if (stays) continue;
      dids[hole] = dids[slot]!;
      this.pasids[hole] = this.pasids[slot]!;
      this.pfns[hole] = this.pfns[slot]!;
      this.addresses[hole] = this.addresses[slot]!;
      this.metas[hole] = this.metas[slot]!;
      dids[slot] = EMPTY;
      hole = slot;
    }
  }

  /** Removes every entry that matches; for wide scopes, so one pass over the table is affordable. */
  private removeWhere(matches: (entry: Readonly<IotlbEntry>) => boolean): void {
    for (let slot = 0; slot < SLOTS; slot++) {
      // removeSlot may shift a later entry into this slot: look at the slot again until it keeps its entry.
      while (this.dids[slot] !== EMPTY && matches(this.entryAt(slot))) this.removeSlot(slot);
    }
  }
}
/** The index of `pageSize` in PAGE_SIZES, or -1. */
function orderOf(pageSize: number): number {
  return pageSize === PAGE_SIZES[0] ? 0 : pageSize === PAGE_SIZES[1] ? 1 : pageSize === PAGE_SIZES[2] ? 2 : -1;
}
