/** DEVICE_GET_REGION_INFO payloads, including the capability chain (sparse mmap areas, region type). */

import { invalid } from './errors';
import type { IndexedInfoRequestBody, RegionCapability, RegionInfoReplyBody, SparseMmapArea } from './messages';
import { encodeError, PayloadReader, PayloadWriter } from './payload-io';
import {
  CAP_HEADER_LAYOUT,
  REGION_CAP_IDS,
  REGION_CAP_VERSIONS,
  REGION_INFO_FLAGS,
  REGION_INFO_LAYOUT,
  REGION_TYPE_LAYOUT,
  SPARSE_MMAP_AREA_LAYOUT,
  SPARSE_MMAP_LAYOUT,
} from './protocol';

const STRUCT_SIZE = REGION_INFO_LAYOUT.size;
const CAPS = REGION_INFO_FLAGS.bits.CAPS;

/**
 * The request. Leniency: libvfio-user's sample client sends `argsz` bytes (zeros past the 32-byte struct) while
 * other clients send just the struct; the spec gives the padding no meaning, so bytes past the struct are ignored.
 * The spec says every field but argsz and index is zero; argsz below the struct is EINVAL (libvfio-user agrees).
 */
export function decodeRegionInfoRequest(payload: PayloadReader): IndexedInfoRequestBody {
  payload.requireAtLeast(STRUCT_SIZE);
  const info = payload.read(REGION_INFO_LAYOUT);
  payload.requireArgszAtLeast(info.argsz, STRUCT_SIZE);
  payload.requireZero(info.flags, 'flags');
  payload.requireZero(info.capOffset, 'cap_offset');
  payload.requireZero(info.size, 'size');
  payload.requireZero(info.offset, 'offset');
  return { argsz: info.argsz, index: info.index };
}

export function encodeRegionInfoRequest(body: IndexedInfoRequestBody): Uint8Array {
  return new PayloadWriter(STRUCT_SIZE).write(REGION_INFO_LAYOUT, {
    argsz: body.argsz,
    flags: 0,
    index: body.index,
    capOffset: 0,
    size: 0n,
    offset: 0n,
  }).bytes;
}

/** True for the (id, version) pairs this codec decodes into their own kind rather than 'unknown'. */
function isInterpreted(id: number, version: number): boolean {
  return (
    (id === REGION_CAP_IDS.values.SPARSE_MMAP && version === REGION_CAP_VERSIONS.SPARSE_MMAP) ||
    (id === REGION_CAP_IDS.values.TYPE && version === REGION_CAP_VERSIONS.TYPE)
  );
}

function decodeCapability(payload: PayloadReader, at: number, end: number): RegionCapability {
  const header = payload.read(CAP_HEADER_LAYOUT, at);
  const bodyAt = at + CAP_HEADER_LAYOUT.size;
  const needs = (size: number, name: string) => {
    if (bodyAt + size > end) {
      throw invalid(
        'ERR_VFIO_USER_BAD_CAPABILITY',
        `${payload.what}: ${name} capability at ${at} needs ${size} bytes after its header, has ${end - bodyAt}`,
      );
    }
  };
  if (header.id === REGION_CAP_IDS.values.SPARSE_MMAP && header.version === REGION_CAP_VERSIONS.SPARSE_MMAP) {
    needs(SPARSE_MMAP_LAYOUT.size, 'sparse mmap');
    const sparse = payload.read(SPARSE_MMAP_LAYOUT, bodyAt);
    needs(SPARSE_MMAP_LAYOUT.size + sparse.nrAreas * SPARSE_MMAP_AREA_LAYOUT.size, 'sparse mmap');
    const areas: SparseMmapArea[] = [];
    for (let i = 0; i < sparse.nrAreas; i++) {
      areas.push(payload.read(SPARSE_MMAP_AREA_LAYOUT, bodyAt + SPARSE_MMAP_LAYOUT.size + i * SPARSE_MMAP_AREA_LAYOUT.size));
    }
    return { kind: 'sparse-mmap', areas };
  }
  if (header.id === REGION_CAP_IDS.values.TYPE && header.version === REGION_CAP_VERSIONS.TYPE) {
    needs(REGION_TYPE_LAYOUT.size, 'region type');
    return { kind: 'type', ...payload.read(REGION_TYPE_LAYOUT, bodyAt) };
  }
  return { kind: 'unknown', id: header.id, version: header.version, body: payload.copy(bodyAt, end) };
}

/**
 * Walks the chain from cap_offset. Each `next` must point past the current header, so the walk always moves forward
 * and a hostile chain (a loop, a pointer back into the struct) costs at most payload/8 steps.
 */
function decodeCapabilityChain(payload: PayloadReader, capOffset: number): RegionCapability[] {
  const capabilities: RegionCapability[] = [];
  let at = capOffset;
  let earliest = STRUCT_SIZE;
  for (;;) {
    if (at < earliest) {
      throw invalid('ERR_VFIO_USER_BAD_CAPABILITY', `${payload.what}: capability at ${at} points back before ${earliest}`);
    }
    const { next } = payload.read(CAP_HEADER_LAYOUT, at);
    if (next !== 0 && next < at + CAP_HEADER_LAYOUT.size) {
      throw invalid('ERR_VFIO_USER_BAD_CAPABILITY', `${payload.what}: capability at ${at} has next ${next} inside or before itself`);
    }
    const end = next === 0 ? payload.length : Math.min(next, payload.length);
    capabilities.push(decodeCapability(payload, at, end));
    if (next === 0) return capabilities;
    earliest = at + CAP_HEADER_LAYOUT.size;
    at = next;
  }
}

/**
 * The reply. Its argsz is the size the full answer needs, which exceeds the bytes sent when the client's argsz was
 * too small: libvfio-user then sends the bare struct with CAPS cleared and cap_offset 0. So argsz may exceed the
 * payload, but never fall below it. CAPS and a non-empty chain go together both ways.
 */
export function decodeRegionInfoReply(payload: PayloadReader): RegionInfoReplyBody {
  payload.requireAtLeast(STRUCT_SIZE);
  const info = payload.read(REGION_INFO_LAYOUT);
  payload.requireArgszAtLeast(info.argsz, STRUCT_SIZE);
  if (info.argsz < payload.length) {
    throw invalid('ERR_VFIO_USER_ARGSZ', `${payload.what}: argsz ${info.argsz} is below the ${payload.length} bytes sent`);
  }
  payload.requireKnownFlags(info.flags, REGION_INFO_FLAGS);
  let capabilities: RegionCapability[] = [];
  if ((info.flags & CAPS) === 0) {
    payload.requireZero(info.capOffset, 'cap_offset without the CAPS flag');
    payload.requireExactly(STRUCT_SIZE, 'a region info without CAPS');
  } else {
    capabilities = decodeCapabilityChain(payload, info.capOffset);
  }
  return { argsz: info.argsz, flags: info.flags, index: info.index, size: info.size, offset: info.offset, capabilities };
}

function capabilitySize(capability: RegionCapability): number {
  switch (capability.kind) {
    case 'sparse-mmap':
      return CAP_HEADER_LAYOUT.size + SPARSE_MMAP_LAYOUT.size + capability.areas.length * SPARSE_MMAP_AREA_LAYOUT.size;
    case 'type':
      return CAP_HEADER_LAYOUT.size + REGION_TYPE_LAYOUT.size;
    case 'unknown':
      return CAP_HEADER_LAYOUT.size + capability.body.length;
  }
}

function writeCapability(writer: PayloadWriter, capability: RegionCapability, at: number, next: number): void {
  const bodyAt = at + CAP_HEADER_LAYOUT.size;
  switch (capability.kind) {
    case 'sparse-mmap': {
      const { SPARSE_MMAP: id } = REGION_CAP_IDS.values;
      writer.write(CAP_HEADER_LAYOUT, { id, version: REGION_CAP_VERSIONS.SPARSE_MMAP, next }, at);
      writer.write(SPARSE_MMAP_LAYOUT, { nrAreas: capability.areas.length }, bodyAt);
      capability.areas.forEach((area, i) => {
        writer.write(SPARSE_MMAP_AREA_LAYOUT, area, bodyAt + SPARSE_MMAP_LAYOUT.size + i * SPARSE_MMAP_AREA_LAYOUT.size);
      });
      return;
    }
    case 'type': {
      writer.write(CAP_HEADER_LAYOUT, { id: REGION_CAP_IDS.values.TYPE, version: REGION_CAP_VERSIONS.TYPE, next }, at);
      writer.write(REGION_TYPE_LAYOUT, { type: capability.type, subtype: capability.subtype }, bodyAt);
      return;
    }
    case 'unknown':
      if (isInterpreted(capability.id, capability.version)) {
        throw encodeError(
          'DEVICE_GET_REGION_INFO reply',
          `capability id ${capability.id} version ${capability.version} has its own kind; do not send it as unknown`,
        );
      }
      writer.write(CAP_HEADER_LAYOUT, { id: capability.id, version: capability.version, next }, at);
      writer.put(capability.body, bodyAt);
  }
}

/** Lays capabilities out back to back after the struct, as libvfio-user does. */
export function encodeRegionInfoReply(body: RegionInfoReplyBody): Uint8Array {
  const hasCaps = (body.flags & CAPS) !== 0;
  if (hasCaps !== body.capabilities.length > 0) {
    throw encodeError('DEVICE_GET_REGION_INFO reply', 'set the CAPS flag exactly when there are capabilities');
  }
  const sizes = body.capabilities.map(capabilitySize);
  const total = sizes.reduce((sum, size) => sum + size, STRUCT_SIZE);
  const writer = new PayloadWriter(total);
  writer.write(REGION_INFO_LAYOUT, {
    argsz: body.argsz,
    flags: body.flags,
    index: body.index,
    capOffset: hasCaps ? STRUCT_SIZE : 0,
    size: body.size,
    offset: body.offset,
  });
  let at = STRUCT_SIZE;
  body.capabilities.forEach((capability, i) => {
    const next = i + 1 < sizes.length ? at + sizes[i]! : 0;
    writeCapability(writer, capability, at, next);
    at += sizes[i]!;
  });
  return writer.bytes;
}
