/** The server's DMA map table: DMA_MAP/DMA_UNMAP bookkeeping, checked fds (mapped or read by pread), lookups for device DMA. */

import { SharedRegion } from '../../memory';
import { FILE_SEALS, isSystemCallError, native, type FileDescriptor } from '../../native';
import { VfioUserErrnoError } from '../connection-errors';
import type { DmaMapBody } from '../messages';
import { DMA_MAP_FLAGS } from '../protocol';

const U64_END = 1n << 64n;

/**
 * How device DMA reaches a mapping: `mapped` (an fd sealed against shrinking, mapped into this process),
 * `file` (an fd the client could shrink: reached with pread/pwrite, never mapped, so a truncation cannot raise
 * SIGBUS here), `message` (no fd: DMA_READ/DMA_WRITE).
 */
export type DmaBacking = 'mapped' | 'file' | 'message';

/** One range the client made available for DMA. */
export interface DmaMapping {
  readonly address: bigint;
  readonly size: bigint;
  /** Offset of the range in the client's fd (0 without one). */
  readonly offset: bigint;
  readonly readable: boolean;
  readonly writable: boolean;
  readonly backing: DmaBacking;
  /**
   * Zero-copy view of the whole range, for `mapped` ranges that fit one window of the mapping (1 GiB, as Node
   * caps a single view); undefined otherwise. Device DMA (device.dma) reaches every range, whatever its size.
   */
  readonly memory: Uint8Array | undefined;
  /** Whether the fd was sealed against shrinking (F_SEAL_SHRINK); undefined without an fd. */
  readonly sealed: boolean | undefined;
  /** What the fd was (/proc/self/fd), for logs. */
  readonly fdDescription: string | undefined;
}

/** Moves bytes between device DMA and a mapping reached without messages; offsets are inside the mapping. */
export interface DirectDmaAccess {
  /** Copies [offset, offset + into.length) into `into`; returns why it could not (nothing copied), else undefined. */
  read(offset: number, into: Uint8Array): string | undefined;
  /** Copies `data` to [offset, offset + data.length); returns why it could not (nothing written), else undefined. */
  write(offset: number, data: Uint8Array): string | undefined;
}

/** A mapping as the device's DMA path sees it: with direct access for `mapped` and `file` backings. */
export interface TableMapping extends DmaMapping {
  readonly direct: DirectDmaAccess | undefined;
}

interface Entry extends TableMapping {
  readonly end: bigint;
  release(): void;
}

export interface DmaMapTableOptions {
  /** Most mappings at once (max_dma_maps); the spec's default is 65535. */
  readonly maxMappings: number;
  /**
   * Accept fds not sealed against shrinking (reached by pread/pwrite) instead of refusing them with EPERM.
   * Sealed fds are mapped either way.
   */
  readonly allowUnsealedFds?: boolean;
}

/** A sealed fd's range inside its mapping; the mapping starts at the page that holds the range's first byte. */
class MappedAccess implements DirectDmaAccess {
  constructor(
    readonly region: SharedRegion,
    private readonly start: number,
  ) {}

  read(offset: number, into: Uint8Array): string | undefined {
    return this.region.copyOut(this.start + offset, into) ? undefined : 'the mapping was unmapped';
  }

  write(offset: number, data: Uint8Array): string | undefined {
    return this.region.copyIn(this.start + offset, data) ? undefined : 'the mapping was unmapped';
  }
}

/** An unsealed fd: every access checks the file's size first and moves nothing past its end. */
class FileAccess implements DirectDmaAccess {
  private closed = false;

  constructor(
    private readonly fd: FileDescriptor,
    private readonly start: number,
  ) {}

  read(offset: number, into: Uint8Array): string | undefined {
    if (this.closed) return 'the mapping was unmapped';
    // A file that shrinks during the read leaves a short count: read aside, so a failed access moves nothing.
    const bytes = new Uint8Array(into.length);
    const failure = this.move(() => native.readFile(this.fd, this.start + offset, bytes), into.length);
    if (failure === undefined) into.set(bytes);
    return failure;
  }

  write(offset: number, data: Uint8Array): string | undefined {
    if (this.closed) return 'the mapping was unmapped';
    return this.move(() => native.writeFile(this.fd, this.start + offset, data), data.length);
  }

  close(): void {
    this.closed = true;
    this.fd.close();
  }

  private move(transfer: () => number, length: number): string | undefined {
    try {
      if (transfer() === length) return undefined;
      return "the client's file shrank during the access";
    } catch (error) {
      if (!isSystemCallError(error)) throw error;
      return error.code === 'ENXIO' ? "the client's file no longer covers the range (truncated after DMA_MAP)" : `${error.code} from ${error.syscall}`;
    }
  }
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
    const common = { address, size, offset, readable, writable, end: address + size };
    const entry: Entry =
      fd === undefined
        ? { ...common, backing: 'message', memory: undefined, sealed: undefined, fdDescription: undefined, direct: undefined, release: () => undefined }
        : { ...common, ...this.reach(body, fd, writable) };
    this.entries.splice(this.insertionPoint(address), 0, entry);
    return entry;
  }

  /**
   * Checks the fd before touching it: at least offset + size long, and sealed against shrinking unless unsealed
   * fds are allowed. A sealed fd is mapped (mmap needs a page-aligned offset, so the map starts at the page holding
   * offset); an unsealed one is only ever read and written with pread/pwrite, checked against its size each time.
   */
  private reach(body: DmaMapBody, fd: FileDescriptor, writable: boolean): Pick<Entry, 'backing' | 'memory' | 'sealed' | 'fdDescription' | 'direct' | 'release'> {
    const end = body.offset + body.size;
    const fdDescription = fd.describe();
    let fileSize: number;
    let seals: number;
    try {
      fileSize = fd.size();
      seals = fd.seals();
    } catch (error) {
      throw new VfioUserErrnoError('EINVAL', `DMA_MAP ${describe(body)}: cannot inspect the fd (${(error as Error).message})`);
    }
    if (BigInt(fileSize) < end) {
      throw new VfioUserErrnoError('EINVAL', `DMA_MAP ${describe(body)}: the fd (${fdDescription}) has ${fileSize} bytes, the mapping needs ${end}`);
    }
    if (end > BigInt(native.maxMappingLength)) {
      throw new VfioUserErrnoError('EINVAL', `DMA_MAP ${describe(body)}: ends at ${hex(end)} in the fd, past the ${hex(BigInt(native.maxMappingLength))} this server reaches`);
    }
    const sealed = (seals & FILE_SEALS.SHRINK) !== 0;
    if (sealed) return { ...this.mapSealed(body, fd, writable), sealed, fdDescription };
    if (!this.options.allowUnsealedFds) {
      throw new VfioUserErrnoError(
        'EPERM',
        `DMA_MAP ${describe(body)}: the fd (${fdDescription}) is not sealed against shrinking (F_SEAL_SHRINK); send a sealed memfd, or allow unsealed fds (allowUnsealedDmaFds, viommu serve --allow-unsealed-dma-fds)`,
      );
    }
    try {
      // A zero-length access: refuses anything but a regular file (ENODEV) without moving a byte.
      native.readFile(fd, Number(body.offset), new Uint8Array(0));
    } catch (error) {
      const why = isSystemCallError(error) ? `${error.code} from ${error.syscall}` : (error as Error).message;
      throw new VfioUserErrnoError('EINVAL', `DMA_MAP ${describe(body)}: the fd (${fdDescription}) cannot back DMA (${why})`);
    }
    const access = new FileAccess(fd, Number(body.offset));
    return { backing: 'file', memory: undefined, sealed, fdDescription, direct: access, release: () => access.close() };
  }

  private mapSealed(body: DmaMapBody, fd: FileDescriptor, writable: boolean): Pick<Entry, 'backing' | 'memory' | 'direct' | 'release'> {
    const page = BigInt(native.pageSize);
    const mapStart = (body.offset / page) * page;
    const start = Number(body.offset - mapStart);
    const size = Number(body.size);
    let region: SharedRegion;
    try {
      region = SharedRegion.fromFd(fd, { offset: Number(mapStart), length: start + size, writable }, `dma ${describe(body)}`);
    } catch (error) {
      const why = isSystemCallError(error) ? `${error.code} from ${error.syscall}` : (error as Error).message;
      throw new VfioUserErrnoError('EINVAL', `DMA_MAP ${describe(body)}: the fd cannot be mapped (${why})`);
    }
    return { backing: 'mapped', memory: region.view(start, size), direct: new MappedAccess(region, start), release: () => region.close() };
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
  lookup(address: bigint): TableMapping | undefined {
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
    entry.release();
  }
}
