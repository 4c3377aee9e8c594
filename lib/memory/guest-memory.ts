/** GuestMemory: the guest-physical address space as a sorted, non-overlapping map of RAM regions. */
import * as os from 'node:os';
import { GuestMemoryError, ViommuError } from '../errors';
import { checkedEnd, hex, MAX_GUEST_ADDRESS } from './addresses';
import type { DmaSpace } from './dma-space';
import { DmaFault, EFAULT } from './dma-space';
import { PAGE_BYTES } from './geometry';
import type { SharedRegion } from './shared-region';

/** Where a region's bytes live in a shareable fd, so a peer can map the same guest RAM. */
export interface RegionBacking {
  region: SharedRegion;
  /** Offset inside region.buffer where this guest region starts. */
  offset: number;
}

export interface RegionSpec {
  name: string;
  /** Guest-physical start address. */
  start: number;
  /** The bytes; the region covers all of them unless `length` says less. */
  buffer: ArrayBuffer;
  byteOffset?: number;
  length?: number;
  readOnly?: boolean;
  backing?: RegionBacking;
}

/** The two 32-bit halves of a 64-bit little-endian table entry, read without BigInt. */
export interface EntryWords {
  lo: number;
  hi: number;
}

const littleEndianHost = os.endianness() === 'LE';
/** Page tables are platform pages of 8-byte entries. */
const TABLE_PAGE_BYTES = PAGE_BYTES;
const TABLE_ENTRY_BYTES = 8;
const TABLE_INDEX_MASK = TABLE_PAGE_BYTES / TABLE_ENTRY_BYTES - 1;
/** 32-bit words in a 4 KiB table page (see tableRegion). */
export const WORDS_PER_TABLE_PAGE = TABLE_PAGE_BYTES / 4;

export class GuestRegion {
  /** Exclusive end address. */
  readonly end: number;
  readonly bytes: Uint8Array;
  readonly view: DataView;
  /** 32-bit words, for aligned little-endian entry reads on little-endian hosts (the fast path). */
  readonly words: Uint32Array | undefined;
  /** The highest offset at which a whole 8-byte entry fits. */
  readonly lastEntryOffset: number;
  /** Guest page number of the region's first byte (meaningful when `wholePages` > 0). */
  readonly firstPage: number;
  /** 4 KiB pages wholly inside the region, for readTableEntry's fast path; 0 when the start is not page-aligned. */
  readonly wholePages: number;

  constructor(
    readonly name: string,
    readonly start: number,
    buffer: ArrayBuffer,
    byteOffset: number,
    readonly length: number,
    readonly readOnly: boolean,
    readonly backing: RegionBacking | undefined,
  ) {
    this.end = checkedEnd(start, length);
    this.bytes = new Uint8Array(buffer, byteOffset, length);
    this.view = new DataView(buffer, byteOffset, length);
    // A Uint32Array indexes at most 2^32 - 1 words; larger regions take the DataView path.
    const wordCount = Math.floor(length / 4);
    this.words = littleEndianHost && byteOffset % 4 === 0 && wordCount < 2 ** 32 ? new Uint32Array(buffer, byteOffset, wordCount) : undefined;
    this.lastEntryOffset = length - 8;
    const aligned = start % TABLE_PAGE_BYTES === 0;
    this.firstPage = aligned ? start / TABLE_PAGE_BYTES : 0;
    this.wholePages = aligned ? Math.floor(length / TABLE_PAGE_BYTES) : 0;
  }

  /** True once the memory under this region was unmapped (its views read as empty). */
  get detached(): boolean {
    return this.bytes.byteLength === 0;
  }
}

export class GuestMemory {
  private regionList: readonly GuestRegion[] = [];
  private hint: GuestRegion | undefined;
  private generationCounter = 0;
  private readonly unmapSubscriptions = new Map<GuestRegion, () => void>();
  /** A subclass that overrides readEntry (to record or check reads) sees table reads through it too. */
  private readonly tableReadsBypassReadEntry = this.readEntry === GuestMemory.prototype.readEntry;

  /** Changes whenever the set of regions changes; caches built on guest memory compare it to know they are stale. */
  get generation(): number {
    return this.generationCounter;
  }

  get regions(): readonly GuestRegion[] {
    return this.regionList;
  }

  /** Adds a region. Overlaps are refused; the region list is replaced, never mutated in place. */
  addRegion(spec: RegionSpec): GuestRegion {
    const byteOffset = spec.byteOffset ?? 0;
    const length = spec.length ?? spec.buffer.byteLength - byteOffset;
    if (!Number.isSafeInteger(spec.start) || spec.start < 0 || spec.start > MAX_GUEST_ADDRESS) {
      throw new ViommuError('ERR_ADDRESS_RANGE', `region '${spec.name}' start ${spec.start} is not a guest-physical address`);
    }
    if (!Number.isSafeInteger(length) || length <= 0 || byteOffset < 0 || byteOffset + length > spec.buffer.byteLength) {
      throw new ViommuError(
        'ERR_REGION_SIZE',
        `region '${spec.name}' of ${length} bytes at buffer offset ${byteOffset} does not fit its ${spec.buffer.byteLength}-byte buffer`,
      );
    }
    const region = new GuestRegion(spec.name, spec.start, spec.buffer, byteOffset, length, spec.readOnly ?? false, spec.backing);
    const clash = this.regionList.find((r) => r.start < region.end && region.start < r.end);
    if (clash) {
      throw new ViommuError(
        'ERR_REGION_OVERLAP',
        `region '${spec.name}' [${hex(region.start)}, ${hex(region.end)}) overlaps '${clash.name}' [${hex(clash.start)}, ${hex(clash.end)})`,
      );
    }
    this.regionList = [...this.regionList, region].sort((a, b) => a.start - b.start);
    this.generationCounter++;
    if (spec.backing) {
      this.unmapSubscriptions.set(
        region,
        spec.backing.region.onUnmap(() => this.removeRegion(region)),
      );
    }
    return region;
  }

  /** Adds a whole SharedRegion (or a part of it) as guest RAM at `start`. */
  addSharedRegion(name: string, start: number, shared: SharedRegion, offset = 0, length = shared.length - offset): GuestRegion {
    return this.addRegion({
      name,
      start,
      buffer: shared.buffer,
      byteOffset: offset,
      length,
      readOnly: !shared.writable,
      backing: { region: shared, offset },
    });
  }

  removeRegion(region: GuestRegion): boolean {
    if (!this.regionList.includes(region)) return false;
    this.regionList = this.regionList.filter((r) => r !== region);
    this.unmapSubscriptions.get(region)?.();
    this.unmapSubscriptions.delete(region);
    if (this.hint === region) this.hint = undefined;
    this.generationCounter++;
    return true;
  }

  /** The region containing `address`, or undefined. */
  regionAt(address: number): GuestRegion | undefined {
    const hint = this.hint;
    if (hint !== undefined && address >= hint.start && address < hint.end) return hint;
    const list = this.regionList;
    let low = 0;
    let high = list.length - 1;
    while (low <= high) {
      const middle = (low + high) >>> 1;
      const region = list[middle]!;
      if (address < region.start) high = middle - 1;
      else if (address >= region.end) low = middle + 1;
      else {
        this.hint = region;
        return region;
      }
    }
    return undefined;
  }

  /**
   * Reads the 64-bit little-endian entry at `address` into `out` without BigInt. Returns false, touching nothing,
   * when no RAM backs all eight bytes: page walkers turn that into a fault reason, not an exception.
   */
  readEntry(address: number, out: EntryWords): boolean {
    // Fast path, kept small enough to inline into page walks: an aligned entry in the last region used.
    const hint = this.hint;
    if (hint !== undefined) {
      const offset = address - hint.start;
      const words = hint.words;
      if (offset >= 0 && offset <= hint.lastEntryOffset && words !== undefined && (offset & 7) === 0) {
        const index = offset / 4;
        const lo = words[index];
        if (lo !== undefined) {
          out.lo = lo;
          out.hi = words[index + 1]!;
          return true;
        }
      }
    }
    return this.readEntryAnywhere(address, out);
  }

  /**
   * The region whose RAM holds all of the 4 KiB table at guest page `page`, when table reads may go straight to
   * its `words`: one region backs the whole page, the host is little-endian and no subclass watches readEntry.
   * Entry i of the table is then words[(page - firstPage) * 1024 + 2i] (low half) and the word after it: bounds
   * and alignment hold by construction, so a walker that reads many entries of one table (a paging-structure
   * cache) resolves the page once. Whoever keeps the answer must drop it when `generation` changes, and still
   * treat an undefined word as unreadable (an unmapped region's views read as empty).
   */
  tableRegion(page: number): GuestRegion | undefined {
    if (!this.tableReadsBypassReadEntry) return undefined;
    const region = this.regionAt(page * TABLE_PAGE_BYTES);
    if (region === undefined || region.words === undefined || region.detached) return undefined;
    const relative = page - region.firstPage;
    return relative >= 0 && relative < region.wholePages ? region : undefined;
  }

  /**
   * readEntry() of entry `index` (0..511) of the 4 KiB table at guest page `page`. Page walkers that carry
   * table locations as page numbers stay in small-integer arithmetic on the fast path (the last region used),
   * which keeps a walk's chain of dependent reads short.
   */
  readTableEntry(page: number, index: number, out: EntryWords): boolean {
    const hint = this.hint;
    const entry = index & TABLE_INDEX_MASK;
    if (hint !== undefined && this.tableReadsBypassReadEntry) {
      const relative = page - hint.firstPage;
      const words = hint.words;
      if (relative >= 0 && relative < hint.wholePages && words !== undefined) {
        const at = relative * WORDS_PER_TABLE_PAGE + entry * 2;
        const lo = words[at];
        if (lo !== undefined) {
          out.lo = lo;
          out.hi = words[at + 1]!;
          return true;
        }
      }
    }
    return this.readEntry(page * TABLE_PAGE_BYTES + entry * TABLE_ENTRY_BYTES, out);
  }

  private readEntryAnywhere(address: number, out: EntryWords): boolean {
    const region = this.regionAt(address);
    if (region === undefined || address + 8 > region.end || region.detached) return this.readEntrySlow(address, out);
    const offset = address - region.start;
    out.lo = region.view.getUint32(offset, true);
    out.hi = region.view.getUint32(offset + 4, true);
    return true;
  }

  private readEntrySlow(address: number, out: EntryWords): boolean {
    const bytes = new Uint8Array(8);
    if (!this.tryRead(address, bytes)) return false;
    const view = new DataView(bytes.buffer);
    out.lo = view.getUint32(0, true);
    out.hi = view.getUint32(4, true);
    return true;
  }

  /** Writes a 64-bit entry from two halves; false when no writable RAM backs all eight bytes. */
  writeEntry(address: number, lo: number, hi: number): boolean {
    const region = this.regionAt(address);
    if (region !== undefined && !region.readOnly && address + 8 <= region.end && !region.detached) {
      const offset = address - region.start;
      region.view.setUint32(offset, lo >>> 0, true);
      region.view.setUint32(offset + 4, hi >>> 0, true);
      return true;
    }
    const bytes = new Uint8Array(8);
    const view = new DataView(bytes.buffer);
    view.setUint32(0, lo >>> 0, true);
    view.setUint32(4, hi >>> 0, true);
    return this.tryWrite(address, bytes);
  }

  /** Copies guest bytes into `into`; false (and nothing copied) unless RAM backs the whole range. */
  tryRead(address: number, into: Uint8Array): boolean {
    return this.spans(address, into.length, false, (region, offset, position, count) => {
      into.set(region.bytes.subarray(offset, offset + count), position);
    });
  }

  /** Copies `data` into guest RAM; false (and nothing written) unless writable RAM backs the whole range. */
  tryWrite(address: number, data: Uint8Array): boolean {
    return this.spans(address, data.length, true, (region, offset, position, count) => {
      region.bytes.set(data.subarray(position, position + count), offset);
    });
  }

  read(address: number, length: number): Uint8Array;
  read(address: number, into: Uint8Array): Uint8Array;
  read(address: number, lengthOrInto: number | Uint8Array): Uint8Array {
    const into = typeof lengthOrInto === 'number' ? new Uint8Array(lengthOrInto) : lengthOrInto;
    if (!this.tryRead(address, into)) this.throwAccessError(address, into.length, false);
    return into;
  }

  write(address: number, data: Uint8Array): void {
    if (!this.tryWrite(address, data)) this.throwAccessError(address, data.length, true);
  }

  readU8(address: number): number {
    return this.read(address, 1)[0]!;
  }
  readU16(address: number): number {
    return this.scalarView(address, 2).getUint16(0, true);
  }
  readU32(address: number): number {
    return this.scalarView(address, 4).getUint32(0, true);
  }
  readU64(address: number): bigint {
    return this.scalarView(address, 8).getBigUint64(0, true);
  }
  writeU8(address: number, value: number): void {
    this.write(address, Uint8Array.of(value & 0xff));
  }
  writeU16(address: number, value: number): void {
    this.writeScalar(address, 2, (view) => view.setUint16(0, value, true));
  }
  writeU32(address: number, value: number): void {
    this.writeScalar(address, 4, (view) => view.setUint32(0, value >>> 0, true));
  }
  writeU64(address: number, value: bigint): void {
    this.writeScalar(address, 8, (view) => view.setBigUint64(0, BigInt.asUintN(64, value), true));
  }

  /** Untranslated DMA (no IOMMU): a device sees guest-physical memory as it is; EFAULT outside RAM. */
  readonly dma: DmaSpace = {
    read: (address, into) => {
      const gpa = this.dmaAddress(address, into.length, 'read');
      if (!this.tryRead(gpa, into)) throw new DmaFault(address, into.length, 'read', 'no guest RAM there', EFAULT);
    },
    write: (address, data) => {
      const gpa = this.dmaAddress(address, data.length, 'write');
      if (!this.tryWrite(gpa, data)) throw new DmaFault(address, data.length, 'write', 'no writable guest RAM there', EFAULT);
    },
  };

  private dmaAddress(address: bigint, length: number, access: 'read' | 'write'): number {
    if (address < 0n || address + BigInt(length) > BigInt(MAX_GUEST_ADDRESS) + 1n) {
      throw new DmaFault(address, length, access, 'beyond the guest-physical address space', EFAULT);
    }
    return Number(address);
  }

  private scalarView(address: number, size: number): DataView {
    const bytes = this.read(address, size);
    return new DataView(bytes.buffer, bytes.byteOffset, size);
  }

  private writeScalar(address: number, size: number, fill: (view: DataView) => void): void {
    const bytes = new Uint8Array(size);
    fill(new DataView(bytes.buffer));
    this.write(address, bytes);
  }

  /**
   * Walks [address, address + length) across contiguous regions; calls `visit` for each piece only after the
   * whole range was found backed, so a failed access transfers nothing.
   */
  private spans(
    address: number,
    length: number,
    forWrite: boolean,
    visit: (region: GuestRegion, offset: number, position: number, count: number) => void,
  ): boolean {
    if (!Number.isSafeInteger(address) || address < 0 || address + length > MAX_GUEST_ADDRESS + 1) return false;
    const first = this.regionAt(address);
    if (first === undefined || first.detached || (forWrite && first.readOnly)) return false;
    if (address + length <= first.end) {
      visit(first, address - first.start, 0, length);
      return true;
    }
    const pieces: GuestRegion[] = [first];
    let cursor = first.end;
    while (cursor < address + length) {
      const next = this.regionAt(cursor);
      if (next === undefined || next.detached || (forWrite && next.readOnly)) return false;
      pieces.push(next);
      cursor = next.end;
    }
    let position = 0;
    for (const region of pieces) {
      const from = Math.max(address, region.start);
      const count = Math.min(address + length, region.end) - from;
      visit(region, from - region.start, position, count);
      position += count;
    }
    return true;
  }

  private throwAccessError(address: number, length: number, forWrite: boolean): never {
    const range = `[${hex(address)}, ${hex(address + length)})`;
    if (Number.isSafeInteger(address) && address >= 0 && forWrite && this.tryRead(address, new Uint8Array(length))) {
      throw new GuestMemoryError('ERR_GUEST_MEMORY_READ_ONLY', `guest range ${range} is read-only`, address, length);
    }
    throw new GuestMemoryError('ERR_GUEST_MEMORY_UNMAPPED', `guest range ${range} is not entirely backed by RAM`, address, length);
  }
}
