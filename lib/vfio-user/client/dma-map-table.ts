/** The client's copy of the DMA map table: overlap and limit checks before sending, and access checks for server DMA. */

import { VfioUserClientError } from './errors';

const U64_END = 1n << 64n;

/**
 * 'unknown': a DMA_MAP or DMA_UNMAP of it timed out, so the server may or may not have applied it; the entry stays
 * reserved (no overlapping DMA_MAP goes out) until the client closes, which it does at once.
 */
export type DmaMappingState = 'mapping' | 'mapped' | 'unmapping' | 'unknown';

export interface DmaMapping {
  readonly address: bigint;
  readonly size: bigint;
  /** The device may read this memory (DMA_MAP flag READ). */
  readonly readable: boolean;
  /** The device may write this memory (DMA_MAP flag WRITE). */
  readonly writable: boolean;
  /** The server received an fd for this range and reaches it directly; without one it sends DMA_READ/DMA_WRITE. */
  readonly withFd: boolean;
  /** Offset of the range inside the fd (0 without an fd). */
  readonly offset: bigint;
  /** 'mapping' until the server answered DMA_MAP, 'unmapping' while a DMA_UNMAP is in flight ('unknown': see the type). */
  state: DmaMappingState;
}

export type DmaMappingRequest = Omit<DmaMapping, 'state'>;

function hex(value: bigint): string {
  return `0x${value.toString(16)}`;
}

function describe(range: { address: bigint; size: bigint }): string {
  return `[${hex(range.address)}, ${hex(range.address + range.size)})`;
}

/**
 * Sorted by address, never overlapping. A mapping enters the table when its DMA_MAP is sent (so two concurrent maps
 * of one range cannot both go out) and leaves when the DMA_UNMAP is answered (the server may use it until then).
 */
export class DmaMapTable {
  private list: DmaMapping[] = [];

  constructor(private readonly limit: () => number) {}

  get entries(): readonly DmaMapping[] {
    return this.list;
  }

  get size(): number {
    return this.list.length;
  }

  /** Index of the first mapping that ends after `address`. */
  private firstEndingAfter(address: bigint): number {
    // Maps made in increasing order (a shadow replay) all land after the last one: no search.
    const last = this.list[this.list.length - 1];
    if (last === undefined || last.address + last.size <= address) return this.list.length;
    let low = 0;
    let high = this.list.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      const entry = this.list[middle]!;
      if (entry.address + entry.size <= address) low = middle + 1;
      else high = middle;
    }
    return low;
  }

  /** Adds a mapping in state 'mapping'; refuses an overlap or a table already at the server's max_dma_maps. */
  reserve(request: DmaMappingRequest): DmaMapping {
    if (request.size <= 0n || request.address < 0n || request.address + request.size > U64_END) {
      throw new VfioUserClientError(
        'ERR_VFIO_USER_DMA_RANGE',
        `DMA range at ${hex(request.address)} of ${request.size} bytes is empty or leaves the 64-bit IOVA space`,
      );
    }
    const at = this.firstEndingAfter(request.address);
    const next = this.list[at];
    if (next !== undefined && next.address < request.address + request.size) {
      throw new VfioUserClientError(
        'ERR_VFIO_USER_DMA_OVERLAP',
        `DMA_MAP ${describe(request)} overlaps the mapping ${describe(next)}${next.state === 'mapped' ? '' : ` (${next.state})`}; unmap it first`,
      );
    }
    const limit = this.limit();
    if (this.list.length >= limit) {
      throw new VfioUserClientError(
        'ERR_VFIO_USER_DMA_LIMIT',
        `DMA_MAP ${describe(request)}: the server allows at most ${limit} mappings (max_dma_maps) and all are in use`,
      );
    }
    // A plain literal: spreading the request costs more than the rest of the bookkeeping.
    const entry: DmaMapping = {
      address: request.address,
      size: request.size,
      readable: request.readable,
      writable: request.writable,
      withFd: request.withFd,
      offset: request.offset,
      state: 'mapping',
    };
    this.list.splice(at, 0, entry);
    return entry;
  }

  remove(entry: DmaMapping): void {
    const index = this.firstEndingAfter(entry.address);
    if (this.list[index] === entry) this.list.splice(index, 1);
  }

  /** The mapping that is exactly [address, address + size), as DMA_UNMAP requires. */
  exact(address: bigint, size: bigint): DmaMapping {
    const entry = this.list[this.firstEndingAfter(address)];
    if (entry === undefined || entry.address !== address || entry.size !== size) {
      const near = entry !== undefined && entry.address < address + size ? `; the nearest mapping is ${describe(entry)}` : '';
      throw new VfioUserClientError('ERR_VFIO_USER_DMA_NOT_MAPPED', `DMA_UNMAP ${describe({ address, size })} names no mapping exactly${near}`);
    }
    return entry;
  }

  /**
   * Why the device may not make this access, or undefined when contiguous mappings with the right permission cover
   * [address, address + length) (an access may span several mappings, as a vIOMMU maps page by page).
   */
  refuse(address: bigint, length: number, access: 'read' | 'write'): string | undefined {
    const end = address + BigInt(length);
    if (end > U64_END) return 'the range leaves the 64-bit IOVA space';
    let cursor = address;
    let index = this.firstEndingAfter(address);
    while (cursor < end) {
      const entry = this.list[index];
      if (entry === undefined || entry.address > cursor) return `nothing is mapped at ${hex(cursor)}`;
      if (access === 'read' ? !entry.readable : !entry.writable) {
        return `the mapping ${describe(entry)} does not allow the device to ${access}`;
      }
      cursor = entry.address + entry.size;
      index++;
    }
    return undefined;
  }

  clear(): void {
    this.list = [];
  }
}
