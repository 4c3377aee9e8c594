/** SharedRegion: a memfd (or a received fd) mapped into this process, shared with other processes by its fd. */
import { native, type FileDescriptor, type Mapping } from '../native';
import { ViommuError } from '../errors';

export interface MapOptions {
  offset?: number;
  length?: number;
  writable?: boolean;
}

/**
 * Owns one mapping and, unless told otherwise, the fd behind it; close() releases both, exactly once. A region of
 * any size is reached with copyOut/copyIn (or view() inside one window); `buffer` only exists up to 4 GiB.
 */
export class SharedRegion {
  private readonly unmapListeners = new Set<() => void>();
  /** One Uint8Array per window, made on first use: views are cheap to keep and costly to make per access. */
  private windowViews: (Uint8Array | undefined)[] = [];

  private constructor(
    /** The backing fd, kept so the region can be handed to another process (DMA_MAP, region mmap). */
    readonly fd: FileDescriptor,
    /** Where this mapping starts inside the fd. */
    readonly fdOffset: number,
    private readonly mapping: Mapping,
    readonly name: string,
  ) {}

  /** A new anonymous shared-memory region of `size` bytes (a multiple of the page size). */
  static create(name: string, size: number): SharedRegion {
    if (!Number.isSafeInteger(size) || size <= 0 || size % native.pageSize !== 0) {
      throw new ViommuError('ERR_REGION_SIZE', `shared region '${name}' size ${size} must be a positive multiple of ${native.pageSize}`);
    }
    const fd = native.memfdCreate(name, size);
    try {
      return new SharedRegion(fd, 0, native.mapFd(fd, 0, size, true), name);
    } catch (error) {
      fd.close();
      throw error;
    }
  }

  /** Maps an fd received from a peer; the region takes ownership of `fd` (closing it on failure too). */
  static fromFd(fd: FileDescriptor, options: MapOptions = {}, name = fd.describe()): SharedRegion {
    try {
      const offset = options.offset ?? 0;
      const length = options.length ?? fd.size() - offset;
      return new SharedRegion(fd, offset, native.mapFd(fd, offset, length, options.writable ?? true), name);
    } catch (error) {
      fd.close();
      throw error;
    }
  }

  /** Zero-copy view of the whole mapping; detached (length 0) once the region is closed. EFBIG over 4 GiB. */
  get buffer(): ArrayBuffer {
    return this.mapping.buffer;
  }

  /**
   * A zero-copy view of [offset, offset + length) when the range lies inside one window; undefined when it spans
   * two (use copyOut/copyIn) or the region is closed. A view reads as length 0 once the region is closed.
   */
  view(offset: number, length: number): Uint8Array | undefined {
    this.checkRange(offset, length);
    if (length === 0) return new Uint8Array(0);
    const size = native.mappingWindowSize;
    const index = Math.floor(offset / size);
    const at = offset - index * size;
    if (at + length > size) return undefined;
    return this.window(index)?.subarray(at, at + length);
  }

  /** Copies [offset, offset + into.length) of the region into `into`, across windows; false once unmapped. */
  copyOut(offset: number, into: Uint8Array): boolean {
    return this.copy(offset, into.length, (window, at, position, length) => into.set(window.subarray(at, at + length), position));
  }

  /** Copies `data` to [offset, offset + data.length) of the region, across windows; false once unmapped. */
  copyIn(offset: number, data: Uint8Array): boolean {
    if (!this.writable)
      throw new ViommuError('ERR_REGION_READ_ONLY', `shared region '${this.name}' is mapped read-only; map it writable to copy into it`);
    return this.copy(offset, data.length, (window, at, position, length) => window.set(data.subarray(position, position + length), at));
  }

  get length(): number {
    return this.mapping.length;
  }

  get writable(): boolean {
    return this.mapping.writable;
  }

  get mapped(): boolean {
    return this.mapping.mapped;
  }

  /** Calls `listener` once when the mapping goes away, so holders of views can drop them first. */
  onUnmap(listener: () => void): () => void {
    this.unmapListeners.add(listener);
    return () => this.unmapListeners.delete(listener);
  }

  /** Unmaps (detaching every view) and closes the fd. Idempotent. */
  close(): void {
    if (this.mapping.mapped) {
      const listeners = [...this.unmapListeners];
      this.unmapListeners.clear();
      for (const listener of listeners) listener();
      this.mapping.unmap();
      this.windowViews = [];
    }
    this.fd.close();
  }

  private checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.length) {
      throw new ViommuError('ERR_REGION_RANGE', `[${offset}, ${offset} + ${length}) is outside shared region '${this.name}' of ${this.length} bytes`);
    }
  }

  private window(index: number): Uint8Array | undefined {
    if (!this.mapping.mapped) return undefined;
    return (this.windowViews[index] ??= new Uint8Array(this.mapping.window(index)));
  }

  /** Walks the windows a range covers; `move` gets each window, the offset in it, the offset in the caller's bytes and the length. */
  private copy(offset: number, length: number, move: (window: Uint8Array, at: number, position: number, length: number) => void): boolean {
    this.checkRange(offset, length);
    const size = native.mappingWindowSize;
    if (length === 0) return this.mapping.mapped;
    const first = Math.floor(offset / size);
    const last = Math.floor((offset + length - 1) / size);
    if (first === last) {
      const window = this.window(first);
      if (window === undefined || window.byteLength === 0) return false;
      move(window, offset - first * size, 0, length);
      return true;
    }
    // Every window is checked before any byte moves, so an unmapped region transfers nothing.
    const windows: Uint8Array[] = [];
    for (let index = first; index <= last; index++) {
      const window = this.window(index);
      if (window === undefined || window.byteLength === 0) return false;
      windows.push(window);
    }
    for (let position = 0, index = first; position < length; index++) {
      const at = offset + position - index * size;
      const piece = Math.min(length - position, size - at);
      move(windows[index - first]!, at, position, piece);
      position += piece;
    }
    return true;
  }
}
