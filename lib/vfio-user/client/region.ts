/** ClientRegion: one region as the server described it, holding its mmap fd and mapping its areas on demand. */

import { SharedRegion } from '../../memory';
import type { FileDescriptor } from '../../native';
import type { RegionCapability, RegionInfoReplyBody, SparseMmapArea } from '../messages';
import { REGION_INDEXES, REGION_INFO_FLAGS } from '../protocol';
import { VfioUserClientError } from './errors';

/** What the server said about one region, as plain data (what `viommu probe` prints). */
export interface RegionDescription {
  readonly index: number;
  /** BAR0..BAR5, ROM, CONFIG, VGA for the standard PCI indexes; undefined for device-specific ones. */
  readonly name: string | undefined;
  readonly flags: number;
  readonly size: bigint;
  /** Where the region starts inside its mmap fd. */
  readonly offset: bigint;
  /** The argsz the whole answer needed. */
  readonly argsz: number;
  /** The areas that may be mmapped: the sparse-mmap areas, or the whole region when MMAP is set without them. */
  readonly mmapAreas: readonly SparseMmapArea[];
  /** True when the reply carried the sparse-mmap capability. */
  readonly sparse: boolean;
  /** The region-type capability, when present. */
  readonly type: { readonly type: number; readonly subtype: number } | undefined;
  /** Capabilities we do not interpret, by id and version. */
  readonly otherCapabilities: readonly { readonly id: number; readonly version: number }[];
  /** True when the server sent an fd to mmap the region with. */
  readonly hasFd: boolean;
}

export interface MappedArea {
  /** Offset of the area inside the region. */
  readonly offset: bigint;
  readonly size: bigint;
  /** The region's bytes, shared with the server; detached (length 0) once the area is unmapped. */
  readonly bytes: Uint8Array;
}

interface LiveArea extends MappedArea {
  readonly shared: SharedRegion;
}

export function describeRegion(info: RegionInfoReplyBody, hasFd: boolean): RegionDescription {
  const sparseCap = info.capabilities.find((cap): cap is Extract<RegionCapability, { kind: 'sparse-mmap' }> => cap.kind === 'sparse-mmap');
  const typeCap = info.capabilities.find((cap): cap is Extract<RegionCapability, { kind: 'type' }> => cap.kind === 'type');
  const mmap = (info.flags & REGION_INFO_FLAGS.bits.MMAP) !== 0;
  let mmapAreas: readonly SparseMmapArea[] = [];
  if (sparseCap !== undefined) mmapAreas = sparseCap.areas.map((area) => ({ offset: area.offset, size: area.size }));
  else if (mmap && info.size > 0n) mmapAreas = [{ offset: 0n, size: info.size }];
  return {
    index: info.index,
    name: REGION_INDEXES.nameOf(info.index),
    flags: info.flags,
    size: info.size,
    offset: info.offset,
    argsz: info.argsz,
    mmapAreas,
    sparse: sparseCap !== undefined,
    type: typeCap === undefined ? undefined : { type: typeCap.type, subtype: typeCap.subtype },
    otherCapabilities: info.capabilities.flatMap((cap) => (cap.kind === 'unknown' ? [{ id: cap.id, version: cap.version }] : [])),
    hasFd,
  };
}

export class ClientRegion {
  private areas: LiveArea[] | undefined;

  /** Takes ownership of `fd` (closed by close()). */
  constructor(
    readonly description: RegionDescription,
    private fd: FileDescriptor | undefined,
  ) {}

  get index(): number {
    return this.description.index;
  }

  get size(): bigint {
    return this.description.size;
  }

  get readable(): boolean {
    return (this.description.flags & REGION_INFO_FLAGS.bits.READ) !== 0;
  }

  get writable(): boolean {
    return (this.description.flags & REGION_INFO_FLAGS.bits.WRITE) !== 0;
  }

  /** True when the server allows mmap and sent the fd to do it with. */
  get mappable(): boolean {
    return (this.description.flags & REGION_INFO_FLAGS.bits.MMAP) !== 0 && this.fd !== undefined && this.description.mmapAreas.length > 0;
  }

  get mapped(): boolean {
    return this.areas !== undefined;
  }

  /** What the region fd is, for diagnostics ("/memfd:bar1 (deleted)"); undefined without one. */
  describeFd(): string | undefined {
    return this.fd === undefined || this.fd.closed ? undefined : this.fd.describe();
  }

  /**
   * Maps every mmap area of the region (idempotent) and returns them. Writable regions are mapped shared, so stores
   * reach the server; read-only ones are mapped private.
   */
  map(): readonly MappedArea[] {
    if (this.areas !== undefined) return this.areas;
    const fd = this.fd;
    if (fd === undefined || !this.mappable) {
      throw new VfioUserClientError(
        'ERR_VFIO_USER_REGION_ACCESS',
        `region ${this.index} cannot be mmapped: ${fd === undefined ? 'the server sent no fd' : 'it has no MMAP flag or no area'}`,
      );
    }
    const areas: LiveArea[] = [];
    try {
      for (const area of this.description.mmapAreas) {
        const shared = SharedRegion.fromFd(
          fd.dup(),
          { offset: Number(this.description.offset + area.offset), length: Number(area.size), writable: this.writable },
          `region ${this.index} +0x${area.offset.toString(16)}`,
        );
        areas.push({ offset: area.offset, size: area.size, bytes: new Uint8Array(shared.buffer), shared });
      }
    } catch (error) {
      for (const area of areas) area.shared.close();
      throw error;
    }
    this.areas = areas;
    return areas;
  }

  /** The mapped bytes of [offset, offset + length) when one mapped area holds all of them. */
  directView(offset: bigint, length: number): Uint8Array | undefined {
    if (this.areas === undefined) return undefined;
    const end = offset + BigInt(length);
    for (const area of this.areas) {
      if (offset >= area.offset && end <= area.offset + area.size) {
        const start = Number(offset - area.offset);
        return area.bytes.subarray(start, start + length);
      }
    }
    return undefined;
  }

  /** Unmaps the areas (their views detach); the fd stays, so map() works again. */
  unmap(): void {
    for (const area of this.areas ?? []) area.shared.close();
    this.areas = undefined;
  }

  close(): void {
    this.unmap();
    this.fd?.close();
    this.fd = undefined;
  }
}
