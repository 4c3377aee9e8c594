/** SharedRegion: a memfd (or a received fd) mapped into this process, shared with other processes by its fd. */
import { native, type FileDescriptor, type Mapping } from '../native';
import { ViommuError } from '../errors';

export interface MapOptions {
  offset?: number;
  length?: number;
  writable?: boolean;
}

/** Owns one mapping and, unless told otherwise, the fd behind it; close() releases both, exactly once. */
export class SharedRegion {
  private readonly unmapListeners = new Set<() => void>();

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

  /** Zero-copy view of the mapping; detached (length 0) once the region is closed. */
  get buffer(): ArrayBuffer {
    return this.mapping.buffer;
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
    }
    this.fd.close();
  }
}
