/** A device's regions (BAR0..5, ROM, CONFIG, VGA): region info with sparse-mmap caps and fds, and checked access. */

import type { PciBarKind } from '../../devices/pci-config-space';
import { alignedAccesses, bytesToValue, isAccessSize, valueToBytes, type MmioHandler } from '../../devices/register-access';
import { ViommuError } from '../../errors';
import { SharedRegion } from '../../memory';
import { native, type FileDescriptor } from '../../native';
import { VfioUserErrnoError } from '../connection-errors';
import type { RegionCapability, RegionInfoReplyBody, SparseMmapArea } from '../messages';
import { CAP_HEADER_LAYOUT, REGION_INDEXES, REGION_INFO_FLAGS, REGION_INFO_LAYOUT, SPARSE_MMAP_AREA_LAYOUT, SPARSE_MMAP_LAYOUT } from '../protocol';

export type RegionName = keyof typeof REGION_INDEXES.values;
export const REGION_COUNT = Object.keys(REGION_INDEXES.values).length;
const CONFIG_INDEX = REGION_INDEXES.values.CONFIG;

/** Serves REGION_READ/REGION_WRITE at byte offsets; either may complete later. Throw VfioUserErrnoError to refuse. */
export interface RegionHandler {
  read(offset: number, into: Uint8Array): void | Promise<void>;
  write(offset: number, data: Uint8Array): void | Promise<void>;
}

export interface RegionDefinition {
  /** Bytes; BARs need a power of two (at least 16, or 4 for I/O). */
  size: number | bigint;
  /** Whether the client may read / write it (default both). */
  readable?: boolean;
  writable?: boolean;
  /** Serves accesses by message. A region with `mmap` and no handler is served from its shared memory. */
  handler?: RegionHandler;
  /**
   * Back the region with shared memory (a sealed memfd) that the client may mmap. `areas` lists the mappable parts
   * (the sparse-mmap capability); by default the whole region. The device reaches the memory via `memory(index)`.
   */
  mmap?: { areas?: readonly SparseMmapArea[] };
  /** How the BAR appears in config space (BAR0..5 only): default a 32-bit memory BAR, 64-bit above 2 GiB. */
  bar?: { kind?: PciBarKind; prefetchable?: boolean };
}

export type RegionDefinitions = Partial<Record<Exclude<RegionName, 'CONFIG'>, RegionDefinition>>;

interface Region {
  readonly index: number;
  readonly size: bigint;
  readonly flags: number;
  readonly handler: RegionHandler | undefined;
  readonly memory: SharedRegion | undefined;
  readonly areas: readonly SparseMmapArea[];
}

const SPARSE_CAP_FIXED = CAP_HEADER_LAYOUT.size + SPARSE_MMAP_LAYOUT.size;

function regionError(message: string): ViommuError {
  return new ViommuError('ERR_VFIO_USER_REGION', message);
}

/** A handler over a register window: REGION accesses become naturally aligned accesses of 1, 2, 4 or 8 bytes. */
export function registerRegion(registers: MmioHandler): RegionHandler {
  return {
    read(offset, into) {
      if (isAccessSize(into.length) && offset % into.length === 0) {
        valueToBytes(registers.read(offset, into.length), into);
        return;
      }
      for (const access of alignedAccesses(offset, into.length)) {
        valueToBytes(registers.read(access.offset, access.size), into.subarray(access.offset - offset, access.offset - offset + access.size));
      }
    },
    write(offset, data) {
      if (isAccessSize(data.length) && offset % data.length === 0) {
        registers.write(offset, data.length, bytesToValue(data));
        return;
      }
      for (const access of alignedAccesses(offset, data.length)) {
        registers.write(access.offset, access.size, bytesToValue(data.subarray(access.offset - offset, access.offset - offset + access.size)));
      }
    },
  };
}

/** Accesses up to this size are copied byte by byte: cheaper than the view that set(subarray(...)) needs. */
const SMALL_ACCESS = 8;

/** A handler over plain bytes (a buffer the device owns). */
export function bufferRegion(bytes: Uint8Array): RegionHandler {
  return {
    read(offset, into) {
      if (into.length <= SMALL_ACCESS) for (let i = 0; i < into.length; i++) into[i] = bytes[offset + i]!;
      else into.set(bytes.subarray(offset, offset + into.length));
    },
    write: (offset, data) => void bytes.set(data, offset),
  };
}

function roundUpToPage(size: bigint): number {
  const page = BigInt(native.pageSize);
  return Number(((size + page - 1n) / page) * page);
}

function checkAreas(name: string, size: bigint, areas: readonly SparseMmapArea[]): void {
  let previousEnd = 0n;
  const page = BigInt(native.pageSize);
  for (const area of [...areas].sort((a, b) => (a.offset < b.offset ? -1 : 1))) {
    if (area.size <= 0n || area.offset < previousEnd || area.offset + area.size > size) {
      throw regionError(`${name}: sparse area [${area.offset}, +${area.size}) must be non-empty, inside the region and not overlap another`);
    }
    if (area.offset % page !== 0n) throw regionError(`${name}: sparse area offset ${area.offset} must be page aligned`);
    previousEnd = area.offset + area.size;
  }
}

/** The nine regions of a PCI device, CONFIG served by `config`; unused ones have size 0 and no flags. */
export class DeviceRegions {
  private readonly regions: Region[] = [];

  constructor(definitions: RegionDefinitions, config: RegionHandler, configSize: number) {
    for (let index = 0; index < REGION_COUNT; index++) {
      const name = REGION_INDEXES.nameOf(index)!;
      if (index === CONFIG_INDEX) {
        const flags = REGION_INFO_FLAGS.bits.READ | REGION_INFO_FLAGS.bits.WRITE;
        this.regions.push({ index, size: BigInt(configSize), flags, handler: config, memory: undefined, areas: [] });
        continue;
      }
      const definition = definitions[name as Exclude<RegionName, 'CONFIG'>];
      this.regions.push(
        definition === undefined
          ? { index, size: 0n, flags: 0, handler: undefined, memory: undefined, areas: [] }
          : this.build(index, name, definition),
      );
    }
  }

  private build(index: number, name: string, definition: RegionDefinition): Region {
    const size = BigInt(definition.size);
    if (size <= 0n) throw regionError(`${name}: size ${size} must be positive`);
    let memory: SharedRegion | undefined;
    let areas: readonly SparseMmapArea[] = [];
    if (definition.mmap !== undefined) {
      if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw regionError(`${name}: ${size} bytes cannot be backed by shared memory here`);
      areas = definition.mmap.areas ?? [{ offset: 0n, size }];
      checkAreas(name, size, areas);
      memory = SharedRegion.create(`vfio-user-${name.toLowerCase()}`, roundUpToPage(size));
    }
    const handler = definition.handler ?? (memory === undefined ? undefined : bufferRegion(new Uint8Array(memory.buffer, 0, Number(size))));
    if (handler === undefined) throw regionError(`${name}: give a handler, or mmap to serve the region from shared memory`);
    const { READ, WRITE, MMAP } = REGION_INFO_FLAGS.bits;
    const flags = (definition.readable === false ? 0 : READ) | (definition.writable === false ? 0 : WRITE) | (memory === undefined ? 0 : MMAP);
    return { index, size, flags, handler, memory, areas };
  }

  /** The shared memory behind a region defined with `mmap`. */
  memory(index: number): SharedRegion | undefined {
    return this.regions[index]?.memory;
  }

  size(index: number): bigint {
    return this.regions[index]?.size ?? 0n;
  }

  /**
   * The GET_REGION_INFO answer for a client that accepts `argsz` bytes. When the capabilities do not fit, the reply
   * is the bare 32-byte struct with CAPS cleared, no fd, and argsz saying how much the whole answer needs (as
   * libvfio-user does); the MMAP flag stays, so the client knows to ask again.
   */
  info(index: number, argsz: number): { body: RegionInfoReplyBody; fd: FileDescriptor | undefined } {
    const region = this.regions[index];
    if (region === undefined) throw new VfioUserErrnoError('EINVAL', `region ${index} does not exist (the device has ${REGION_COUNT})`);
    const capabilities: RegionCapability[] = region.memory === undefined ? [] : [{ kind: 'sparse-mmap', areas: region.areas }];
    const capsSize = capabilities.length === 0 ? 0 : SPARSE_CAP_FIXED + region.areas.length * SPARSE_MMAP_AREA_LAYOUT.size;
    const needed = REGION_INFO_LAYOUT.size + capsSize;
    const fits = argsz >= needed;
    const flags = region.flags | (fits && capsSize > 0 ? REGION_INFO_FLAGS.bits.CAPS : 0);
    return {
      body: { argsz: needed, flags, index, size: region.size, offset: 0n, capabilities: fits ? capabilities : [] },
      fd: fits ? region.memory?.fd : undefined,
    };
  }

  /** The region of an access, checked (its offset is then Number(offset)); every refusal is EINVAL, as libvfio-user answers. */
  private target(index: number, offset: bigint, count: number, write: boolean): Region {
    const region = this.regions[index];
    if (region === undefined) throw new VfioUserErrnoError('EINVAL', `region ${index} does not exist (the device has ${REGION_COUNT})`);
    if (region.handler === undefined) throw new VfioUserErrnoError('EINVAL', `region ${index} is not implemented by this device`);
    if (offset + BigInt(count) > region.size) {
      throw new VfioUserErrnoError('EINVAL', `${count} bytes at offset ${offset} leave region ${index} of ${region.size} bytes`);
    }
    const allowed = write ? REGION_INFO_FLAGS.bits.WRITE : REGION_INFO_FLAGS.bits.READ;
    if ((region.flags & allowed) === 0) throw new VfioUserErrnoError('EINVAL', `region ${index} is not ${write ? 'writable' : 'readable'}`);
    return region;
  }

  read(index: number, offset: bigint, count: number): Uint8Array | Promise<Uint8Array> {
    const region = this.target(index, offset, count, false);
    const into = new Uint8Array(count);
    const pending = region.handler!.read(Number(offset), into);
    return pending === undefined ? into : pending.then(() => into);
  }

  write(index: number, offset: bigint, data: Uint8Array): void | Promise<void> {
    const region = this.target(index, offset, data.length, true);
    return region.handler!.write(Number(offset), data);
  }

  /** Releases the shared memory of every region (the device is going away). */
  close(): void {
    for (const region of this.regions) region.memory?.close();
  }
}
