/**
 * The 2019-2021 VFIO bind-guest-PASID uAPI (Linux include/uapi/linux/iommu.h, v5.10 layout, never merged into VFIO
 * and removed in 2022): iommu_gpasid_bind_data and iommu_cache_invalidate_info, encoded and decoded under the
 * review's extension rules.
 *
 * The earlier v5.8/v5.9 form had no argsz (version sat at offset 0). It is recognised only to be refused with a
 * rule of its own ('pre-argsz-layout'), never decoded: its version field reads as an argsz of 1, below every
 * minimum, so a user of that layout learns exactly why, and no second set of offsets has to be kept alive.
 */

import { defineFlags, defineNumbers, defineStruct, readField, readU32, type StructValue } from '../byte-layout';
import { ERRNO } from '../errno';
import { decodeStruct, encodeStruct, nonZeroReserved } from './iommufd-uapi';

export const GPASID_BIND_VERSION = 1;
export const CACHE_INVALIDATE_VERSION = 1;

export const PASID_FORMAT = defineNumbers('iommu_pasid_format', { INTEL_VTD: 1 });
/** Formats at or above this value did not exist in the v5.10 uAPI. */
export const PASID_FORMAT_LAST = 2;

export const GPASID_BIND_FLAGS = defineFlags('iommu_gpasid_bind_flags', { GPASID_VAL: 1 });
export const GPASID_VTD_FLAGS = defineFlags('iommu_gpasid_bind_data_vtd_flags', {
  SRE: 0x1,
  EAFE: 0x2,
  PCD: 0x4,
  PWT: 0x8,
  EMTE: 0x10,
  CD: 0x20,
  WPE: 0x40,
});

export const GPASID_BIND_LAYOUT = defineStruct('iommu_gpasid_bind_data', [
  { key: 'argsz', spec: 'argsz', offset: 0, width: 4 },
  { key: 'version', spec: 'version', offset: 4, width: 4 },
  { key: 'format', spec: 'format', offset: 8, width: 4 },
  { key: 'addrWidth', spec: 'addr_width', offset: 12, width: 4 },
  { key: 'flags', spec: 'flags', offset: 16, width: 8 },
  { key: 'gpgd', spec: 'gpgd', offset: 24, width: 8 },
  { key: 'hpasid', spec: 'hpasid', offset: 32, width: 8 },
  { key: 'gpasid', spec: 'gpasid', offset: 40, width: 8 },
  { key: 'padding', spec: 'padding', offset: 48, width: 8, reserved: true },
  // vendor.vtd, the only member of the vendor union (format INTEL_VTD).
  { key: 'vtdFlags', spec: 'vendor.vtd.flags', offset: 56, width: 8 },
  { key: 'vtdPat', spec: 'vendor.vtd.pat', offset: 64, width: 4 },
  { key: 'vtdEmt', spec: 'vendor.vtd.emt', offset: 68, width: 4 },
] as const);

/** Everything before the vendor union is mandatory: an argsz below it is EINVAL. */
export const GPASID_BIND_MINSZ = GPASID_BIND_LAYOUT.offsetOf('vtdFlags');
/** The vendor data each format needs after the mandatory part. */
const VENDOR_DATA_SIZE: Readonly<Record<number, number>> = { [PASID_FORMAT.values.INTEL_VTD]: 16 };

export type GpasidBindData = StructValue<typeof GPASID_BIND_LAYOUT.fields>;

export const CACHE_TYPE = defineFlags('iommu_cache_inv_type', { IOTLB: 1, DEV_IOTLB: 2, PASID: 4 });
export const INV_GRANULARITY = defineNumbers('iommu_inv_granularity', { DOMAIN: 0, PASID: 1, ADDR: 2 });
export const INV_GRANULARITY_COUNT = 3;
export const INV_PASID_FLAGS = defineFlags('iommu_inv_pasid_flags', { PASID: 1, ARCHID: 2 });
export const INV_ADDR_FLAGS = defineFlags('iommu_inv_addr_flags', { PASID: 1, ARCHID: 2, LEAF: 4 });

export const CACHE_INVALIDATE_HEADER_LAYOUT = defineStruct(
  'iommu_cache_invalidate_info',
  [
    { key: 'argsz', spec: 'argsz', offset: 0, width: 4 },
    { key: 'version', spec: 'version', offset: 4, width: 4 },
    { key: 'cache', spec: 'cache', offset: 8, width: 1 },
    { key: 'granularity', spec: 'granularity', offset: 9, width: 1 },
    // __u8 padding[6], as integer fields the helper can check and zero.
    { key: 'padding', spec: 'padding', offset: 10, width: 2, reserved: true },
    { key: 'paddingHigh', spec: 'padding[2]', offset: 12, width: 4, reserved: true },
  ] as const,
  56,
);

/** The granu union starts here; it is also the minimum argsz. */
export const CACHE_INVALIDATE_MINSZ = 16;

/** granu.pasid_info, at offset 0 of the union. */
export const INV_PASID_INFO_LAYOUT = defineStruct('iommu_inv_pasid_info', [
  { key: 'flags', spec: 'flags', offset: 0, width: 4 },
  { key: 'archid', spec: 'archid', offset: 4, width: 4 },
  { key: 'pasid', spec: 'pasid', offset: 8, width: 8 },
] as const);

/** granu.addr_info, at offset 0 of the union. */
export const INV_ADDR_INFO_LAYOUT = defineStruct('iommu_inv_addr_info', [
  { key: 'flags', spec: 'flags', offset: 0, width: 4 },
  { key: 'archid', spec: 'archid', offset: 4, width: 4 },
  { key: 'pasid', spec: 'pasid', offset: 8, width: 8 },
  { key: 'addr', spec: 'addr', offset: 16, width: 8 },
  { key: 'granuleSize', spec: 'granule_size', offset: 24, width: 8 },
  { key: 'nbGranules', spec: 'nb_granules', offset: 32, width: 8 },
] as const);

export type InvPasidInfo = StructValue<typeof INV_PASID_INFO_LAYOUT.fields>;
export type InvAddrInfo = StructValue<typeof INV_ADDR_INFO_LAYOUT.fields>;

interface CacheInvalidateCommon {
  readonly argsz: number;
  readonly version: number;
  /** CACHE_TYPE bits. */
  readonly cache: number;
}

/** iommu_cache_invalidate_info with the union member its granularity selects. */
export type CacheInvalidateInfo =
  | (CacheInvalidateCommon & { readonly granularity: 0 })
  | (CacheInvalidateCommon & { readonly granularity: 1; readonly pasidInfo: InvPasidInfo })
  | (CacheInvalidateCommon & { readonly granularity: 2; readonly addrInfo: InvAddrInfo });

/** The union member each granularity needs after the header. */
const GRANULARITY_DATA_SIZE: readonly number[] = [0, INV_PASID_INFO_LAYOUT.size, INV_ADDR_INFO_LAYOUT.size];

/** Which extension rule refused the bytes. */
export type GpasidRule =
  | 'unreadable'
  | 'pre-argsz-layout'
  | 'argsz-below-minimum'
  | 'version'
  | 'format'
  | 'argsz-below-format'
  | 'flags'
  | 'padding'
  | 'vendor-flags'
  | 'addr-width'
  | 'pasid-range'
  | 'cache-types'
  | 'cache-granularity';

/** A refusal, as the kernel would answer it: an errno, and which rule and why for the log. */
export interface GpasidRefusal {
  readonly errno: 'EINVAL' | 'EFAULT';
  readonly errnoValue: number;
  readonly rule: GpasidRule;
  readonly message: string;
}

export type GpasidDecodeResult<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly refusal: GpasidRefusal };

function refuse(errno: 'EINVAL' | 'EFAULT', rule: GpasidRule, message: string): { ok: false; refusal: GpasidRefusal } {
  return { ok: false, refusal: { errno, errnoValue: ERRNO[errno], rule, message } };
}

/**
 * The earlier layout put version (1) where argsz now is, and a known format right after it. Its second word is
 * read as a plain u32: that layout is only recognised, never described.
 */
function looksPreArgsz(bytes: Uint8Array, argsz: number, secondWord: (value: number) => boolean): boolean {
  return argsz === 1 && bytes.length >= 8 && secondWord(readU32(bytes, 4));
}

// VT-d first-stage tables are 4- or 5-level; PASIDs are 20 bits, 0 being RID_PASID (never a bind target).
const VTD_ADDRESS_WIDTHS: readonly number[] = [48, 57];
const PASID_LIMIT = 1n << 20n;

// ---- iommu_gpasid_bind_data ----

/** Encodes a bind (or unbind) request; argsz, version and format are written as given. */
export function encodeGpasidBind(value: GpasidBindData): Uint8Array {
  return encodeStruct(GPASID_BIND_LAYOUT, value);
}

/** A VT-d bind request with the current argsz, version and format filled in. */
export function gpasidBindRequest(fields: Omit<GpasidBindData, 'argsz' | 'version' | 'format'>): GpasidBindData {
  return { argsz: GPASID_BIND_LAYOUT.size, version: GPASID_BIND_VERSION, format: PASID_FORMAT.values.INTEL_VTD, ...fields };
}

/**
 * Decodes the bytes a user passed for a bind or an unbind (validated alike), in the review's order: argsz against
 * the minimum, then version, then format, then argsz for that format; then unknown flags and non-zero padding.
 * `bytes` is the user's memory from the struct's start: reading beyond it is EFAULT, as copy_from_user would be.
 */
export function decodeGpasidBind(bytes: Uint8Array, operation: 'bind' | 'unbind' = 'bind'): GpasidDecodeResult<GpasidBindData> {
  const what = `${operation} ${GPASID_BIND_LAYOUT.name}`;
  if (bytes.length < 4) return refuse('EFAULT', 'unreadable', `${what}: argsz is not readable (${bytes.length} bytes)`);
  const argsz = readField(GPASID_BIND_LAYOUT, bytes, 'argsz');
  if (argsz < GPASID_BIND_MINSZ) {
    if (looksPreArgsz(bytes, argsz, (format) => format === PASID_FORMAT.values.INTEL_VTD)) {
      return refuse(
        'EINVAL',
        'pre-argsz-layout',
        `${what}: this is the v5.8/v5.9 layout without argsz (version 1 at offset 0); resend it in the v5.10 layout with argsz first`,
      );
    }
    return refuse('EINVAL', 'argsz-below-minimum', `${what}: argsz ${argsz} is below the ${GPASID_BIND_MINSZ} bytes before the vendor data`);
  }
  if (bytes.length < GPASID_BIND_MINSZ) {
    return refuse('EFAULT', 'unreadable', `${what}: only ${bytes.length} of the ${GPASID_BIND_MINSZ} mandatory bytes are readable`);
  }
  const version = readField(GPASID_BIND_LAYOUT, bytes, 'version');
  if (version !== GPASID_BIND_VERSION) {
    return refuse('EINVAL', 'version', `${what}: version ${version} is unknown (only ${GPASID_BIND_VERSION})`);
  }
  const format = readField(GPASID_BIND_LAYOUT, bytes, 'format');
  const vendorSize = VENDOR_DATA_SIZE[format];
  if (vendorSize === undefined) {
    return refuse(
      'EINVAL',
      'format',
      `${what}: format ${format} is unknown (only INTEL_VTD = ${PASID_FORMAT.values.INTEL_VTD}); ask the host which formats it supports`,
    );
  }
  const formatSize = GPASID_BIND_MINSZ + vendorSize;
  if (argsz < formatSize) {
    return refuse(
      'EINVAL',
      'argsz-below-format',
      `${what}: argsz ${argsz} is below the ${formatSize} bytes format ${PASID_FORMAT.nameOf(format)} needs`,
    );
  }
  // The kernel copies min(argsz, its own size): bytes past what it knows are never read.
  if (bytes.length < formatSize) {
    return refuse('EFAULT', 'unreadable', `${what}: argsz ${argsz} but only ${bytes.length} bytes are readable`);
  }
  const value = decodeStruct(GPASID_BIND_LAYOUT, bytes);
  const unknownFlags = value.flags & ~BigInt(GPASID_BIND_FLAGS.known);
  if (unknownFlags !== 0n) return refuse('EINVAL', 'flags', `${what}: unknown flags 0x${unknownFlags.toString(16)}`);
  if (nonZeroReserved(GPASID_BIND_LAYOUT, bytes)) return refuse('EINVAL', 'padding', `${what}: padding is not zero`);
  const unknownVendor = value.vtdFlags & ~BigInt(GPASID_VTD_FLAGS.known);
  if (unknownVendor !== 0n) {
    return refuse('EINVAL', 'vendor-flags', `${what}: unknown vendor.vtd flags 0x${unknownVendor.toString(16)}`);
  }
  if (!VTD_ADDRESS_WIDTHS.includes(value.addrWidth)) {
    return refuse('EINVAL', 'addr-width', `${what}: addr_width ${value.addrWidth} is neither 48 (4-level) nor 57 (5-level)`);
  }
  if (value.hpasid === 0n || value.hpasid >= PASID_LIMIT) {
    return refuse('EINVAL', 'pasid-range', `${what}: hpasid ${value.hpasid} is outside [1, 2^20)`);
  }
  if ((value.flags & BigInt(GPASID_BIND_FLAGS.bits.GPASID_VAL)) !== 0n && value.gpasid >= PASID_LIMIT) {
    return refuse('EINVAL', 'pasid-range', `${what}: gpasid ${value.gpasid} is outside [0, 2^20)`);
  }
  return { ok: true, value };
}

// ---- iommu_cache_invalidate_info ----

export function encodeCacheInvalidate(info: CacheInvalidateInfo): Uint8Array {
  const bytes = encodeStruct(CACHE_INVALIDATE_HEADER_LAYOUT, {
    argsz: info.argsz,
    version: info.version,
    cache: info.cache,
    granularity: info.granularity,
  });
  if (info.granularity === 1) INV_PASID_INFO_LAYOUT.encode(info.pasidInfo, bytes, CACHE_INVALIDATE_MINSZ);
  if (info.granularity === 2) INV_ADDR_INFO_LAYOUT.encode(info.addrInfo, bytes, CACHE_INVALIDATE_MINSZ);
  return bytes;
}

/**
 * Decodes a cache invalidation in the same order as a bind: argsz against the header, version, granularity (which
 * picks the union member, as format picks the vendor data), argsz for that member; then unknown cache types,
 * flags and non-zero padding, and the combinations the uAPI forbids.
 */
export function decodeCacheInvalidate(bytes: Uint8Array): GpasidDecodeResult<CacheInvalidateInfo> {
  const what = CACHE_INVALIDATE_HEADER_LAYOUT.name;
  if (bytes.length < 4) return refuse('EFAULT', 'unreadable', `${what}: argsz is not readable (${bytes.length} bytes)`);
  const argsz = readField(CACHE_INVALIDATE_HEADER_LAYOUT, bytes, 'argsz');
  if (argsz < CACHE_INVALIDATE_MINSZ) {
    // The earlier layout: version (1) at 0, then cache and granularity bytes at 4 and 5.
    if (
      looksPreArgsz(bytes, argsz, (word) => (word & 0xff) !== 0 && (word & 0xff) <= CACHE_TYPE.known && ((word >>> 8) & 0xff) < INV_GRANULARITY_COUNT)
    ) {
      return refuse(
        'EINVAL',
        'pre-argsz-layout',
        `${what}: this is the v5.8/v5.9 layout without argsz (48 bytes, version 1 at offset 0); resend it in the v5.10 layout`,
      );
    }
    return refuse('EINVAL', 'argsz-below-minimum', `${what}: argsz ${argsz} is below the ${CACHE_INVALIDATE_MINSZ}-byte header`);
  }
  if (bytes.length < CACHE_INVALIDATE_MINSZ) {
    return refuse('EFAULT', 'unreadable', `${what}: only ${bytes.length} of the ${CACHE_INVALIDATE_MINSZ} header bytes are readable`);
  }
  const header = decodeStruct(CACHE_INVALIDATE_HEADER_LAYOUT, bytes.length >= CACHE_INVALIDATE_HEADER_LAYOUT.size ? bytes : padded(bytes));
  if (header.version !== CACHE_INVALIDATE_VERSION) {
    return refuse('EINVAL', 'version', `${what}: version ${header.version} is unknown (only ${CACHE_INVALIDATE_VERSION})`);
  }
  const granularity = header.granularity;
  const memberSize = GRANULARITY_DATA_SIZE[granularity];
  if (memberSize === undefined) {
    return refuse('EINVAL', 'format', `${what}: granularity ${granularity} is unknown (DOMAIN, PASID or ADDR)`);
  }
  const needed = CACHE_INVALIDATE_MINSZ + memberSize;
  if (argsz < needed) {
    return refuse(
      'EINVAL',
      'argsz-below-format',
      `${what}: argsz ${argsz} is below the ${needed} bytes granularity ${INV_GRANULARITY.nameOf(granularity)} needs`,
    );
  }
  if (bytes.length < needed) return refuse('EFAULT', 'unreadable', `${what}: argsz ${argsz} but only ${bytes.length} bytes are readable`);
  const unknownCache = CACHE_TYPE.unknownBits(header.cache);
  if (unknownCache !== 0) return refuse('EINVAL', 'cache-types', `${what}: unknown cache types 0x${unknownCache.toString(16)}`);
  if (nonZeroReserved(CACHE_INVALIDATE_HEADER_LAYOUT, padded(bytes))) return refuse('EINVAL', 'padding', `${what}: padding is not zero`);
  const common = { argsz, version: header.version, cache: header.cache };
  if (granularity === INV_GRANULARITY.values.DOMAIN) {
    if ((header.cache & CACHE_TYPE.bits.DEV_IOTLB) !== 0) {
      return refuse('EINVAL', 'cache-granularity', `${what}: the device TLB has no domain-selective invalidation`);
    }
    return { ok: true, value: { ...common, granularity: 0 } };
  }
  if (granularity === INV_GRANULARITY.values.PASID) {
    const pasidInfo = decodeStruct(INV_PASID_INFO_LAYOUT, bytes, CACHE_INVALIDATE_MINSZ);
    const unknown = INV_PASID_FLAGS.unknownBits(pasidInfo.flags);
    if (unknown !== 0) return refuse('EINVAL', 'flags', `${what}: unknown pasid_info flags 0x${unknown.toString(16)}`);
    return { ok: true, value: { ...common, granularity: 1, pasidInfo } };
  }
  if ((header.cache & CACHE_TYPE.bits.PASID) !== 0) {
    return refuse('EINVAL', 'cache-granularity', `${what}: the PASID cache has no address-selective invalidation`);
  }
  const addrInfo = decodeStruct(INV_ADDR_INFO_LAYOUT, bytes, CACHE_INVALIDATE_MINSZ);
  const unknown = INV_ADDR_FLAGS.unknownBits(addrInfo.flags);
  if (unknown !== 0) return refuse('EINVAL', 'flags', `${what}: unknown addr_info flags 0x${unknown.toString(16)}`);
  return { ok: true, value: { ...common, granularity: 2, addrInfo } };
}

/** The bytes zero-extended to the full struct, as the kernel's zeroed copy is when argsz is short. */
function padded(bytes: Uint8Array): Uint8Array {
  const size = CACHE_INVALIDATE_HEADER_LAYOUT.size;
  if (bytes.length >= size) return bytes;
  const copy = new Uint8Array(size);
  copy.set(bytes);
  return copy;
}
