/** The server's DMA map table: DMA_MAP/DMA_UNMAP bookkeeping, checked and mapped fds, and lookups for device DMA. */

import { SharedRegion } from '../../memory';
import { FILE_SEALS, isSystemCallError, native, type FileDescriptor } from '../../native';
import { VfioUserErrnoError } from '../connection-errors';
import type { DmaMapBody } from '../messages';
import { DMA_MAP_FLAGS } from '../protocol';

const U64_END = 1n << 64n;

/** One range the client made available for DMA. */
export interface DmaMapping {
  readonly address: bigint;
  readonly size: bigint;
  /** Offset of the range in the client's fd (0 without one). */
  readonly offset: bigint;
  readonly readable: boolean;
  readonly writable: boolean;
  /** Zero-copy view of the range when the client sent an fd; undefined means DMA by message. */
  readonly memory: Uint8Array | undefined;
  /**
   * Whether the fd was sealed against shrinking (F_SEAL_SHRINK). An unsealed file can be truncated by the client
   * after we mapped it, and a later access past its new end would raise SIGBUS in this process.
   */
  readonly sealed: boolean | undefined;
  /** What the fd was (/proc/self/fd), for logs. */
  readonly fdDescription: string | undefined;
}

interface Entry extends DmaMapping {
  readonly end: bigint;
  readonly region: SharedRegion | undefined;
}

export interface DmaMapTableOptions {
  /** Most mappings at once (max_dma_maps); the spec's default is 65535. */
  readonly maxMappings: number;
  /** Refuse (EPERM) fds not sealed against shrinking instead of accepting them with the residual SIGBUS risk. */
  readonly requireSealedFds?: boolean;
}

function hex(value: bigint): string {
  return `0x${value.toString(16)}`;
}

function describe(range: { address: bigint; size: bigint }): string {
  return `[${hex(range.address)}, ${hex(range.address + range.size)})`;
}

/** Sorted by address, never overlapping. */
export class DmaMapTable {
  private entries: Entry[] = [];
  private hint: Entry | undefined;

  constructor(private readonly options: DmaMapTableOptions) {}

  get size(): number {
    return this.entries.length;
  }

  get mappings(): readonly DmaMapping[] {
    return this.entries;
  }

  /**
   * Adds the mapping of one DMA_MAP; takes ownership of `fd` (closed on failure, kept open while mapped).
   * Errors: EINVAL for a malformed range or an fd that cannot back it (libvfio-user's answer), EEXIST for an
   * overlap (the spec's), EINVAL once max_dma_maps are in use (libvfio-user's), EPERM for an unsealed fd when
   * sealing is required.
   */
  add(body: DmaMapBody, fd: FileDescriptor | undefined): DmaMapping {
    try {
      return this.insert(body, fd);
    } catch (error) {
      fd?.close();
      throw error;
    }
  }

  private insert(body: DmaMapBody, fd: FileDescriptor | undefined): DmaMapping {
    const { address, size, offset } = body;
    if (size === 0n) throw new VfioUserErrnoError('EINVAL', 'DMA_MAP of size 0');
    if (address + size > U64_END) throw new VfioUserErrnoError('EINVAL', `DMA_MAP ${describe(body)} wraps past 2^64`);
    if (fd === undefined && offset !== 0n) throw new VfioUserErrnoError('EINVAL', `DMA_MAP without an fd has offset ${hex(offset)}; the spec says 0`);
    const clash = this.overlapping(address, address + size);
    if (clash !== undefined) throw new VfioUserErrnoError('EEXIST', `DMA_MAP ${describe(body)} overlaps the mapping ${describe(clash)}`);
    if (this.entries.length >= this.options.maxMappings) {
      throw new VfioUserErrnoError('EINVAL', `DMA_MAP ${describe(body)}: all ${this.options.maxMappings} mappings (max_dma_maps) are in use`);
    }
    const readable = (body.flags & DMA_MAP_FLAGS.bits.READ) !== 0;
    const writable = (body.flags & DMA_MAP_FLAGS.bits.WRITE) !== 0;
    let region: SharedRegion | undefined;
    let memory: Uint8Array | undefined;
    let sealed: boolean | undefined;
    let fdDescription: string | undefined;
    if (fd !== undefined) {
      fdDescription = fd.describe();
      ({ region, memory, sealed } = this.mapFd(body, fd, writable));
    }
    const entry: Entry = { address, size, offset, readable, writable, memory, sealed, fdDescription, end: address + size, region };
    this.entries.splice(this.insertionPoint(address), 0, entry);
    return entry;
  }

  /**
   * Checks the fd before touching it: a regular file (or memfd) at least offset + size long, so the client cannot
   * make us map pages past its end. mmap needs a page-aligned offset, so the map starts at the page holding offset.
   */
  private mapFd(body: DmaMapBody, fd: FileDescriptor, writable: boolean): { region: SharedRegion; memory: Uint8Array; sealed: boolean } {
    const end = body.offset + body.size;
    let fileSize: number;
    let seals: number;
    try {
      fileSize = fd.size();
      seals = fd.seals();
    } catch (error) {
      throw new VfioUserErrnoError('EINVAL', `DMA_MAP ${describe(body)}: cannot inspect the fd (${(error as Error).message})`);
    }
    if (BigInt(fileSize) < end) {
      throw new VfioUserErrnoError('EINVAL', `DMA_MAP ${describe(body)}: the fd (${fd.describe()}) has ${fileSize} bytes, the mapping needs ${end}`);
    }
    const sealed = (seals & FILE_SEALS.SHRINK) !== 0;
    if (!sealed && this.options.requireSealedFds) {
      throw new VfioUserErrnoError('EPERM', `DMA_MAP ${describe(body)}: the fd (${fd.describe()}) is not sealed against shrinking`);
    }
    const page = BigInt(native.pageSize);
    const mapStart = (body.offset / page) * page;
    const length = end - mapStart;
    if (length > BigInt(Number.MAX_SAFE_INTEGER)) throw new VfioUserErrnoError('EINVAL', `DMA_MAP ${describe(body)} is too large to map here`);
    let region: SharedRegion;
    try {
      region = SharedRegion.fromFd(fd, { offset: Number(mapStart), length: Number(length), writable }, `dma ${describe(body)}`);
    } catch (error) {
      const why = isSystemCallError(error) ? `${error.code} from ${error.syscall}` : (error as Error).message;
      throw new VfioUserErrnoError('EINVAL', `DMA_MAP ${describe(body)}: the fd cannot be mapped (${why})`);
    }
    const memory = new Uint8Array(region.buffer, Number(body.offset - mapStart), Number(body.size));
    return { region, memory, sealed };
  }

  /** The mapping of exactly [address, address + size); ENOENT when there is none (libvfio-user's answer). */
  exact(address: bigint, size: bigint): DmaMapping {
    const at = this.insertionPoint(address) - 1;
    const entry = this.entries[at];
    if (entry === undefined || entry.address !== address || entry.size !== size) {
      throw new VfioUserErrnoError('ENOENT', `DMA_UNMAP ${describe({ address, size })} does not name a mapping exactly`);
    }
    return entry;
  }

  /** Removes the mapping of exactly [address, address + size) and unmaps its memory; ENOENT when there is none. */
  remove(address: bigint, size: bigint): DmaMapping {
    const entry = this.exact(address, size) as Entry;
    this.entries.splice(this.entries.indexOf(entry, this.insertionPoint(address) - 1), 1);
    this.release(entry);
    return entry;
  }

  /** Removes every mapping; returns them in address order. */
  removeAll(): DmaMapping[] {
    const all = this.entries;
    this.entries = [];
    for (const entry of all) this.release(entry);
    return all;
  }

  /** The mapping containing `address`, or undefined. */
  lookup(address: bigint): DmaMapping | undefined {
    const hint = this.hint;
    if (hint !== undefined && address >= hint.address && address < hint.end) return hint;
    let low = 0;
    let high = this.entries.length - 1;
    while (low <= high) {
      const middle = (low + high) >>> 1;
      const entry = this.entries[middle]!;
      if (address < entry.address) high = middle - 1;
      else if (address >= entry.end) low = middle + 1;
      else {
        this.hint = entry;
        return entry;
      }
    }
    return undefined;
  }

  /** The index of the first entry starting above `address` (entries never overlap, so one comparison suffices). */
  private insertionPoint(address: bigint): number {
    let low = 0;
    let high = this.entries.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (this.entries[middle]!.address <= address) low = middle + 1;
      else high = middle;
    }
    return low;
  }

  /** Only the neighbours of the insertion point can overlap a new range. */
  private overlapping(start: bigint, end: bigint): Entry | undefined {
    const at = this.insertionPoint(start);
    const before = this.entries[at - 1];
    if (before !== undefined && before.end > start) return before;
    const after = this.entries[at];
    if (after !== undefined && after.address < end) return after;
    return undefined;
  }

  private release(entry: Entry): void {
    if (this.hint === entry) this.hint = undefined;
    entry.region?.close();
  }
}
