/**
 * The server's DMA map table: DMA_MAP/DMA_UNMAP bookkeeping, checked fds (mapped or read by pread) with one fd and
 * one mapping kept per backing file, lookups for device DMA.
 */

import { FILE_SEALS, isSystemCallError, native, type FileDescriptor, type FileIdentity, type Mapping } from '../../native';
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
   * Zero-copy view of exactly the range, for `mapped` ranges that fit one window (1 GiB from the page holding their
   * first byte, as Node caps a single view); undefined otherwise. Made on first use (a small mapping of its own),
   * detached when the range is unmapped. Device DMA (device.dma) reaches every range, whatever its size.
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

export interface DmaMapTableOptions {
  /** Most mappings at once (max_dma_maps); the spec's default is 65535. */
  readonly maxMappings: number;
  /**
   * Accept fds not sealed against shrinking (reached by pread/pwrite) instead of refusing them with EPERM.
   * Sealed fds are mapped either way.
   */
  readonly allowUnsealedFds?: boolean;
}

/**
 * One mmap of a backing file (normally all of it: shared by every sealed DMA_MAP of the file with the same
 * access), reached through the addon's windows of at most 1 GiB. Unmapped when the last mapping using it goes.
 */
class FileMapping {
  private references = 0;
  /** One Uint8Array per window, made on first use. */
  private windows: (Uint8Array | undefined)[] = [];

  constructor(
    private readonly mapping: Mapping,
    /** Where the mapping starts in the file. */
    readonly fileOffset: number,
    private readonly onUnmapped: (mapping: FileMapping) => void = () => undefined,
  ) {}

  get length(): number {
    return this.mapping.length;
  }

  retain(): this {
    this.references++;
    return this;
  }

  release(): void {
    if (--this.references > 0) return;
    this.windows = [];
    this.mapping.unmap();
    this.onUnmapped(this);
  }

  /** Copies [offset, offset + into.length) into `into`; false once unmapped. */
  copyOut(offset: number, into: Uint8Array): boolean {
    return this.copy(offset, into.length, (window, at, position, length) => into.set(window.subarray(at, at + length), position));
  }

  /** Copies `data` to [offset, offset + data.length); false once unmapped. */
  copyIn(offset: number, data: Uint8Array): boolean {
    return this.copy(offset, data.length, (window, at, position, length) => window.set(data.subarray(position, position + length), at));
  }

  /** Walks the windows a range covers; false, with nothing moved, once unmapped or outside the mapping. */
  private copy(offset: number, length: number, move: (window: Uint8Array, at: number, position: number, length: number) => void): boolean {
    if (!this.mapping.mapped) return false;
    if (offset < 0 || offset + length > this.mapping.length) return false;
    if (length === 0) return true;
    const size = native.mappingWindowSize;
    const first = Math.floor(offset / size);
    const last = Math.floor((offset + length - 1) / size);
    const windows: Uint8Array[] = [];
    for (let index = first; index <= last; index++) windows.push((this.windows[index] ??= new Uint8Array(this.mapping.window(index))));
    for (let position = 0, index = first; position < length; index++) {
      const at = offset + position - index * size;
      const piece = Math.min(length - position, size - at);
      move(windows[index - first]!, at, position, piece);
      position += piece;
    }
    return true;
  }
}

/**
 * A file behind DMA_MAP fds, known by st_dev, st_ino and the open file description's flags: the one fd kept for
 * every mapping of it, and its current whole-file mappings (one read-write shared, one read-only private), all
 * reference-counted. The fd is closed when the last mapping of the file goes.
 */
class BackingFile {
  private references = 0;
  private readonly current: { writable?: FileMapping | undefined; readOnly?: FileMapping | undefined } = {};

  constructor(
    readonly fd: FileDescriptor,
    private readonly onClosed: (file: BackingFile) => void,
  ) {}

  retain(): this {
    this.references++;
    return this;
  }

  release(): void {
    if (--this.references > 0) return;
    this.fd.close();
    this.onClosed(this);
  }

  /**
   * A retained mapping that covers [offset, offset + length) of the file: the file's current mapping for this
   * access, or a new one of the whole file (the file is sealed against shrinking, so all of its present size stays
   * backed) when there is none or the file grew past it; failing that (address space, overcommit), one of the range
   * alone. Returns the mapping and where the range starts in it.
   */
  map(offset: number, length: number, writable: boolean): { mapping: FileMapping; start: number } {
    const slot = writable ? 'writable' : 'readOnly';
    let mapping = this.current[slot];
    if (mapping === undefined || mapping.length < offset + length) {
      try {
        const whole = Math.min(this.fd.size(), native.maxMappingLength);
        if (whole < offset + length) throw new Error(`the file has ${whole} bytes`);
        mapping = new FileMapping(native.mapFd(this.fd, 0, whole, writable), 0, (gone) => {
          if (this.current[slot] === gone) this.current[slot] = undefined;
        });
        this.current[slot] = mapping;
      } catch {
        const mapStart = offset - (offset % native.pageSize);
        mapping = new FileMapping(native.mapFd(this.fd, mapStart, offset + length - mapStart, writable), mapStart);
      }
    }
    return { mapping: mapping.retain(), start: offset - mapping.fileOffset };
  }
}

/** A sealed fd's range inside a mapping of its file; bounds are this range's, whatever else the mapping holds. */
class MappedAccess implements DirectDmaAccess {
  private closed = false;

  constructor(
    private readonly file: BackingFile,
    private readonly mapping: FileMapping,
    private readonly start: number,
    private readonly size: number,
  ) {}

  read(offset: number, into: Uint8Array): string | undefined {
    const refused = this.refuse(offset, into.length);
    if (refused !== undefined) return refused;
    return this.mapping.copyOut(this.start + offset, into) ? undefined : 'the mapping was unmapped';
  }

  write(offset: number, data: Uint8Array): string | undefined {
    const refused = this.refuse(offset, data.length);
    if (refused !== undefined) return refused;
    return this.mapping.copyIn(this.start + offset, data) ? undefined : 'the mapping was unmapped';
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.mapping.release();
    this.file.release();
  }

  private refuse(offset: number, length: number): string | undefined {
    if (this.closed) return 'the mapping was unmapped';
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + length > this.size)
      return `[${offset}, ${offset + length}) is outside the mapping of ${this.size} bytes`;
    return undefined;
  }
}

/** An unsealed fd: every access checks the file's size first and moves nothing past its end. */
class FileAccess implements DirectDmaAccess {
  private closed = false;

  constructor(
    private readonly file: BackingFile,
    private readonly start: number,
    private readonly size: number,
  ) {}

  read(offset: number, into: Uint8Array): string | undefined {
    const refused = this.refuse(offset, into.length);
    if (refused !== undefined) return refused;
    // A file that shrinks during the read leaves a short count: read aside, so a failed access moves nothing.
    const bytes = new Uint8Array(into.length);
    const failure = this.move(() => native.readFile(this.file.fd, this.start + offset, bytes), into.length);
    if (failure === undefined) into.set(bytes);
    return failure;
  }

  write(offset: number, data: Uint8Array): string | undefined {
    const refused = this.refuse(offset, data.length);
    if (refused !== undefined) return refused;
    return this.move(() => native.writeFile(this.file.fd, this.start + offset, data), data.length);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.file.release();
  }

  private refuse(offset: number, length: number): string | undefined {
    if (this.closed) return 'the mapping was unmapped';
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + length > this.size)
      return `[${offset}, ${offset + length}) is outside the mapping of ${this.size} bytes`;
    return undefined;
  }

  private move(transfer: () => number, length: number): string | undefined {
    try {
      if (transfer() === length) return undefined;
      return "the client's file shrank during the access";
    } catch (error) {
      if (!isSystemCallError(error)) throw error;
      return error.code === 'ENXIO'
        ? "the client's file no longer covers the range (truncated after DMA_MAP)"
        : `${error.code} from ${error.syscall}`;
    }
  }
}

/**
 * The zero-copy view of one mapped range: its own small mmap of the file (through the file's one fd), made the
 * first time the device asks for `memory` and unmapped with the range, so a view held past DMA_UNMAP is detached
 * even while other ranges of the same file stay mapped. Ranges that do not fit one window have no view.
 */
class RangeView {
  private mapping: Mapping | undefined;
  private view: Uint8Array | undefined;
  private state: 'unmade' | 'made' | 'failed' | 'released' = 'unmade';

  constructor(
    private readonly file: BackingFile,
    private readonly offset: number,
    private readonly size: number,
    private readonly writable: boolean,
  ) {}

  get memory(): Uint8Array | undefined {
    if (this.state === 'unmade') this.make();
    if (this.state === 'failed') return undefined;
    // Released before anybody looked: an empty view, as a detached one reads.
    return this.view ?? new Uint8Array(0);
  }

  release(): void {
    this.state = this.state === 'unmade' ? 'released' : this.state;
    this.mapping?.unmap();
  }

  private make(): void {
    const mapStart = this.offset - (this.offset % native.pageSize);
    const start = this.offset - mapStart;
    if (start + this.size > native.mappingWindowSize) {
      this.state = 'failed';
      return;
    }
    try {
      this.mapping = native.mapFd(this.file.fd, mapStart, start + this.size, this.writable);
      this.view = new Uint8Array(this.mapping.window(0), start, this.size);
      this.state = 'made';
    } catch {
      this.state = 'failed';
    }
  }
}

interface EntryFields {
  readonly address: bigint;
  readonly size: bigint;
  readonly offset: bigint;
  readonly readable: boolean;
  readonly writable: boolean;
  readonly backing: DmaBacking;
  readonly sealed: boolean | undefined;
  readonly fdDescription: string | undefined;
  readonly direct: (DirectDmaAccess & { close(): void }) | undefined;
  readonly view?: RangeView | undefined;
}

/** One mapping in the table; release() lets go of what it holds of its file. */
class Entry implements TableMapping {
  readonly address: bigint;
  readonly size: bigint;
  readonly offset: bigint;
  readonly readable: boolean;
  readonly writable: boolean;
  readonly backing: DmaBacking;
  readonly sealed: boolean | undefined;
  readonly fdDescription: string | undefined;
  readonly direct: (DirectDmaAccess & { close(): void }) | undefined;
  readonly end: bigint;
  private readonly view: RangeView | undefined;

  constructor(fields: EntryFields) {
    this.address = fields.address;
    this.size = fields.size;
    this.offset = fields.offset;
    this.readable = fields.readable;
    this.writable = fields.writable;
    this.backing = fields.backing;
    this.sealed = fields.sealed;
    this.fdDescription = fields.fdDescription;
    this.direct = fields.direct;
    this.view = fields.view;
    this.end = fields.address + fields.size;
  }

  get memory(): Uint8Array | undefined {
    return this.view?.memory;
  }

  release(): void {
    this.view?.release();
    this.direct?.close();
  }
}

function hex(value: bigint): string {
  return `0x${value.toString(16)}`;
}

function describe(range: { address: bigint; size: bigint }): string {
  return `[${hex(range.address)}, ${hex(range.address + range.size)})`;
}

/**
 * Sorted by address, never overlapping. Every fd a DMA_MAP brings is checked on its own (regular file, size, seals);
 * then, if the table already keeps an fd of the same file opened the same way, the new fd is closed at once and the
 * mapping shares the kept one (and its mapping of the file), so a client that sends the guest-RAM fd with each of
 * thousands of DMA_MAPs costs this process one fd, not one per DMA_MAP.
 */
export class DmaMapTable {
  private entries: Entry[] = [];
  private hint: Entry | undefined;
  /** Backing files by st_dev, st_ino and open flags; each holds one fd while any mapping uses it. */
  private readonly files = new Map<string, BackingFile>();

  constructor(private readonly options: DmaMapTableOptions) {}

  get size(): number {
    return this.entries.length;
  }

  get mappings(): readonly DmaMapping[] {
    return this.entries;
  }

  /** How many fds the table keeps open (one per backing file in use). */
  get openFiles(): number {
    return this.files.size;
  }

  /**
   * Adds the mapping of one DMA_MAP; takes ownership of `fd` (closed on failure, closed at once when the table
   * already keeps an fd of the same file, kept open while mapped otherwise).
   * Errors: EINVAL for a malformed range or an fd that cannot back it (libvfio-user's answer), EEXIST for an
   * overlap (the spec's), EINVAL once max_dma_maps are in use (libvfio-user's), EPERM for an unsealed fd when
   * sealing is required.
   */
  add(body: DmaMapBody, fd: FileDescriptor | undefined): DmaMapping {
    try {
      return this.insert(body, fd);
    } catch (error) {
      if (fd !== undefined && !this.keeps(fd)) fd.close();
      throw error;
    }
  }

  private insert(body: DmaMapBody, fd: FileDescriptor | undefined): Entry {
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
    const common = { address, size, offset, readable, writable };
    const entry =
      fd === undefined
        ? new Entry({ ...common, backing: 'message', sealed: undefined, fdDescription: undefined, direct: undefined })
        : new Entry({ ...common, ...this.reach(body, fd, writable) });
    this.entries.splice(this.insertionPoint(address), 0, entry);
    return entry;
  }

  /**
   * Checks the fd before touching it: at least offset + size long, and sealed against shrinking unless unsealed
   * fds are allowed. Then the fd joins its backing file (kept, or closed as a duplicate). A sealed range is
   * reached through the file's mapping (bounds and rights are the range's own); an unsealed one only ever with
   * pread/pwrite, checked against the file's size each time.
   */
  private reach(
    body: DmaMapBody,
    fd: FileDescriptor,
    writable: boolean,
  ): Pick<EntryFields, 'backing' | 'sealed' | 'fdDescription' | 'direct' | 'view'> {
    const end = body.offset + body.size;
    const fdDescription = fd.describe();
    let fileSize: number;
    let seals: number;
    let identity: FileIdentity;
    try {
      fileSize = fd.size();
      seals = fd.seals();
      identity = fd.identity();
    } catch (error) {
      throw new VfioUserErrnoError('EINVAL', `DMA_MAP ${describe(body)}: cannot inspect the fd (${(error as Error).message})`);
    }
    if (BigInt(fileSize) < end) {
      throw new VfioUserErrnoError('EINVAL', `DMA_MAP ${describe(body)}: the fd (${fdDescription}) has ${fileSize} bytes, the mapping needs ${end}`);
    }
    if (end > BigInt(native.maxMappingLength)) {
      throw new VfioUserErrnoError(
        'EINVAL',
        `DMA_MAP ${describe(body)}: ends at ${hex(end)} in the fd, past the ${hex(BigInt(native.maxMappingLength))} this server reaches`,
      );
    }
    // Seals belong to the file, not to the fd, and can only be added: every fd of a file sealed once says so.
    // Checking each fd that arrives costs one fcntl and needs no such argument.
    const sealed = (seals & FILE_SEALS.SHRINK) !== 0;
    if (!sealed && !this.options.allowUnsealedFds) {
      throw new VfioUserErrnoError(
        'EPERM',
        `DMA_MAP ${describe(body)}: the fd (${fdDescription}) is not sealed against shrinking (F_SEAL_SHRINK); send a sealed memfd, or allow unsealed fds (allowUnsealedDmaFds, viommu serve --allow-unsealed-dma-fds)`,
      );
    }
    if (!sealed) {
      try {
        // A zero-length access: refuses anything but a regular file (ENODEV) without moving a byte.
        native.readFile(fd, Number(body.offset), new Uint8Array(0));
      } catch (error) {
        const why = isSystemCallError(error) ? `${error.code} from ${error.syscall}` : (error as Error).message;
        throw new VfioUserErrnoError('EINVAL', `DMA_MAP ${describe(body)}: the fd (${fdDescription}) cannot back DMA (${why})`);
      }
    }
    const file = this.join(fd, identity);
    const offset = Number(body.offset);
    const size = Number(body.size);
    if (!sealed) return { backing: 'file', sealed, fdDescription, direct: new FileAccess(file, offset, size) };
    try {
      const { mapping, start } = file.map(offset, size, writable);
      return {
        backing: 'mapped',
        sealed,
        fdDescription,
        direct: new MappedAccess(file, mapping, start, size),
        view: new RangeView(file, offset, size, writable),
      };
    } catch (error) {
      file.release();
      const why = isSystemCallError(error) ? `${error.code} from ${error.syscall}` : (error as Error).message;
      throw new VfioUserErrnoError('EINVAL', `DMA_MAP ${describe(body)}: the fd cannot be mapped (${why})`);
    }
  }

  /**
   * The backing file of a checked fd, retained for one more mapping. An fd of a file the table keeps, opened the
   * same way (SCM_RIGHTS hands over the client's open file description each time), is closed at once; the kept fd
   * pins the inode, so its (st_dev, st_ino) cannot name another file meanwhile. Another open of the same file with
   * other flags (read-only, say) gets its own entry: a kept fd never lends rights the received one lacks.
   */
  private join(fd: FileDescriptor, identity: FileIdentity): BackingFile {
    const key = `${identity.device}:${identity.inode}:${identity.flags}`;
    const known = this.files.get(key);
    if (known !== undefined) {
      if (known.fd !== fd) fd.close();
      return known.retain();
    }
    const file = new BackingFile(fd, () => this.files.delete(key));
    this.files.set(key, file);
    return file.retain();
  }

  private keeps(fd: FileDescriptor): boolean {
    for (const file of this.files.values()) if (file.fd === fd) return true;
    return false;
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
