/** The iommufd and VFIO-cdev uAPI that VT-d nesting uses: each struct, flag set and ioctl number described once. */

import { ViommuError } from '../errors';
import {
  defineFlags,
  defineNumbers,
  defineStruct,
  readField,
  writeField,
  type FieldSpec,
  type IntegerKey,
  type StructLayout,
  type StructShape,
  type StructValue,
} from '../byte-layout';

// The byte-layout helper fits these structs exactly: packed little-endian fields at byte offsets, u64s as
// bigint, "__reserved" fields that must be zero. lib/vtd/bitfield.ts describes bit fields inside words instead.

/** `_IO(type, nr)`: iommufd and VFIO ioctls carry no direction or size bits, only the type and the number. */
export function ioctlNumber(type: number, nr: number): number {
  return ((type & 0xff) << 8) | (nr & 0xff);
}

/** ';' for both: iommufd's IOMMUFD_TYPE and VFIO's VFIO_TYPE. */
export const IOMMUFD_TYPE = 0x3b;
export const VFIO_TYPE = 0x3b;
/** VFIO numbers count from VFIO_BASE. */
export const VFIO_BASE = 100;

// ---- struct layouts (include/uapi/linux/iommufd.h, include/uapi/linux/vfio.h, Linux 6.17) ----

export const IOMMU_DESTROY_LAYOUT = defineStruct('iommu_destroy', [
  { key: 'size', spec: 'size', offset: 0, width: 4 },
  { key: 'id', spec: 'id', offset: 4, width: 4 },
] as const);

export const IOMMU_IOAS_ALLOC_LAYOUT = defineStruct('iommu_ioas_alloc', [
  { key: 'size', spec: 'size', offset: 0, width: 4 },
  { key: 'flags', spec: 'flags', offset: 4, width: 4 },
  { key: 'outIoasId', spec: 'out_ioas_id', offset: 8, width: 4 },
] as const);

export const IOMMU_IOAS_MAP_LAYOUT = defineStruct('iommu_ioas_map', [
  { key: 'size', spec: 'size', offset: 0, width: 4 },
  { key: 'flags', spec: 'flags', offset: 4, width: 4 },
  { key: 'ioasId', spec: 'ioas_id', offset: 8, width: 4 },
  { key: 'reserved', spec: '__reserved', offset: 12, width: 4, reserved: true },
  { key: 'userVa', spec: 'user_va', offset: 16, width: 8 },
  { key: 'length', spec: 'length', offset: 24, width: 8 },
  { key: 'iova', spec: 'iova', offset: 32, width: 8 },
] as const);

export const IOMMU_HWPT_ALLOC_LAYOUT = defineStruct('iommu_hwpt_alloc', [
  { key: 'size', spec: 'size', offset: 0, width: 4 },
  { key: 'flags', spec: 'flags', offset: 4, width: 4 },
  { key: 'devId', spec: 'dev_id', offset: 8, width: 4 },
  { key: 'ptId', spec: 'pt_id', offset: 12, width: 4 },
  { key: 'outHwptId', spec: 'out_hwpt_id', offset: 16, width: 4 },
  { key: 'reserved', spec: '__reserved', offset: 20, width: 4, reserved: true },
  { key: 'dataType', spec: 'data_type', offset: 24, width: 4 },
  { key: 'dataLen', spec: 'data_len', offset: 28, width: 4 },
  { key: 'dataUptr', spec: 'data_uptr', offset: 32, width: 8 },
  { key: 'faultId', spec: 'fault_id', offset: 40, width: 4 },
  { key: 'reserved2', spec: '__reserved2', offset: 44, width: 4, reserved: true },
] as const);

export const IOMMU_HW_INFO_LAYOUT = defineStruct('iommu_hw_info', [
  { key: 'size', spec: 'size', offset: 0, width: 4 },
  { key: 'flags', spec: 'flags', offset: 4, width: 4 },
  { key: 'devId', spec: 'dev_id', offset: 8, width: 4 },
  { key: 'dataLen', spec: 'data_len', offset: 12, width: 4 },
  { key: 'dataUptr', spec: 'data_uptr', offset: 16, width: 8 },
  // A union of in_data_type and out_data_type: one field, read in or out depending on the direction.
  { key: 'dataType', spec: 'out_data_type', offset: 24, width: 4 },
  { key: 'outMaxPasidLog2', spec: 'out_max_pasid_log2', offset: 28, width: 1 },
  // __u8 __reserved[3], as two integer fields: the layout helper writes reserved fields as integer zeros.
  { key: 'reserved', spec: '__reserved', offset: 29, width: 1, reserved: true },
  { key: 'reservedHigh', spec: '__reserved[1]', offset: 30, width: 2, reserved: true },
  { key: 'outCapabilities', spec: 'out_capabilities', offset: 32, width: 8 },
] as const);

export const IOMMU_HW_INFO_VTD_LAYOUT = defineStruct('iommu_hw_info_vtd', [
  { key: 'flags', spec: 'flags', offset: 0, width: 4 },
  { key: 'reserved', spec: '__reserved', offset: 4, width: 4, reserved: true },
  { key: 'capReg', spec: 'cap_reg', offset: 8, width: 8 },
  { key: 'ecapReg', spec: 'ecap_reg', offset: 16, width: 8 },
] as const);

export const IOMMU_HWPT_VTD_S1_LAYOUT = defineStruct('iommu_hwpt_vtd_s1', [
  { key: 'flags', spec: 'flags', offset: 0, width: 8 },
  { key: 'pgtblAddr', spec: 'pgtbl_addr', offset: 8, width: 8 },
  { key: 'addrWidth', spec: 'addr_width', offset: 16, width: 4 },
  { key: 'reserved', spec: '__reserved', offset: 20, width: 4, reserved: true },
] as const);

export const IOMMU_HWPT_INVALIDATE_LAYOUT = defineStruct('iommu_hwpt_invalidate', [
  { key: 'size', spec: 'size', offset: 0, width: 4 },
  { key: 'hwptId', spec: 'hwpt_id', offset: 4, width: 4 },
  { key: 'dataUptr', spec: 'data_uptr', offset: 8, width: 8 },
  { key: 'dataType', spec: 'data_type', offset: 16, width: 4 },
  { key: 'entryLen', spec: 'entry_len', offset: 20, width: 4 },
  { key: 'entryNum', spec: 'entry_num', offset: 24, width: 4 },
  { key: 'reserved', spec: '__reserved', offset: 28, width: 4, reserved: true },
] as const);

export const IOMMU_HWPT_VTD_S1_INVALIDATE_LAYOUT = defineStruct('iommu_hwpt_vtd_s1_invalidate', [
  { key: 'addr', spec: 'addr', offset: 0, width: 8 },
  { key: 'npages', spec: 'npages', offset: 8, width: 8 },
  { key: 'flags', spec: 'flags', offset: 16, width: 4 },
  { key: 'reserved', spec: '__reserved', offset: 20, width: 4, reserved: true },
] as const);

export const IOMMU_FAULT_ALLOC_LAYOUT = defineStruct('iommu_fault_alloc', [
  { key: 'size', spec: 'size', offset: 0, width: 4 },
  { key: 'flags', spec: 'flags', offset: 4, width: 4 },
  { key: 'outFaultId', spec: 'out_fault_id', offset: 8, width: 4 },
  { key: 'outFaultFd', spec: 'out_fault_fd', offset: 12, width: 4 },
] as const);

export const IOMMU_HWPT_PGFAULT_LAYOUT = defineStruct('iommu_hwpt_pgfault', [
  { key: 'flags', spec: 'flags', offset: 0, width: 4 },
  { key: 'devId', spec: 'dev_id', offset: 4, width: 4 },
  { key: 'pasid', spec: 'pasid', offset: 8, width: 4 },
  { key: 'grpid', spec: 'grpid', offset: 12, width: 4 },
  { key: 'perm', spec: 'perm', offset: 16, width: 4 },
  { key: 'reserved', spec: '__reserved', offset: 20, width: 4, reserved: true },
  { key: 'addr', spec: 'addr', offset: 24, width: 8 },
  { key: 'length', spec: 'length', offset: 32, width: 4 },
  { key: 'cookie', spec: 'cookie', offset: 36, width: 4 },
] as const);

export const IOMMU_HWPT_PAGE_RESPONSE_LAYOUT = defineStruct('iommu_hwpt_page_response', [
  { key: 'cookie', spec: 'cookie', offset: 0, width: 4 },
  { key: 'code', spec: 'code', offset: 4, width: 4 },
] as const);

export const VFIO_DEVICE_BIND_IOMMUFD_LAYOUT = defineStruct('vfio_device_bind_iommufd', [
  { key: 'argsz', spec: 'argsz', offset: 0, width: 4 },
  { key: 'flags', spec: 'flags', offset: 4, width: 4 },
  // An s32 fd in C; fds are never negative here, so it is carried as a u32.
  { key: 'iommufd', spec: 'iommufd', offset: 8, width: 4 },
  { key: 'outDevid', spec: 'out_devid', offset: 12, width: 4 },
  { key: 'tokenUuidPtr', spec: 'token_uuid_ptr', offset: 16, width: 8 },
] as const);

export const VFIO_DEVICE_ATTACH_IOMMUFD_PT_LAYOUT = defineStruct('vfio_device_attach_iommufd_pt', [
  { key: 'argsz', spec: 'argsz', offset: 0, width: 4 },
  { key: 'flags', spec: 'flags', offset: 4, width: 4 },
  { key: 'ptId', spec: 'pt_id', offset: 8, width: 4 },
  { key: 'pasid', spec: 'pasid', offset: 12, width: 4 },
] as const);

export const VFIO_DEVICE_DETACH_IOMMUFD_PT_LAYOUT = defineStruct('vfio_device_detach_iommufd_pt', [
  { key: 'argsz', spec: 'argsz', offset: 0, width: 4 },
  { key: 'flags', spec: 'flags', offset: 4, width: 4 },
  { key: 'pasid', spec: 'pasid', offset: 8, width: 4 },
] as const);

/** Every layout of this module, for tests and tools that walk them all. */
export const IOMMUFD_LAYOUTS = [
  IOMMU_DESTROY_LAYOUT,
  IOMMU_IOAS_ALLOC_LAYOUT,
  IOMMU_IOAS_MAP_LAYOUT,
  IOMMU_HWPT_ALLOC_LAYOUT,
  IOMMU_HW_INFO_LAYOUT,
  IOMMU_HW_INFO_VTD_LAYOUT,
  IOMMU_HWPT_VTD_S1_LAYOUT,
  IOMMU_HWPT_INVALIDATE_LAYOUT,
  IOMMU_HWPT_VTD_S1_INVALIDATE_LAYOUT,
  IOMMU_FAULT_ALLOC_LAYOUT,
  IOMMU_HWPT_PGFAULT_LAYOUT,
  IOMMU_HWPT_PAGE_RESPONSE_LAYOUT,
  VFIO_DEVICE_BIND_IOMMUFD_LAYOUT,
  VFIO_DEVICE_ATTACH_IOMMUFD_PT_LAYOUT,
  VFIO_DEVICE_DETACH_IOMMUFD_PT_LAYOUT,
] as const;

// ---- flags and enumerations ----

export const IOAS_MAP_FLAGS = defineFlags('iommufd_ioas_map_flags', { FIXED_IOVA: 1, WRITEABLE: 2, READABLE: 4 });
export const HWPT_ALLOC_FLAGS = defineFlags('iommufd_hwpt_alloc_flags', {
  NEST_PARENT: 1,
  DIRTY_TRACKING: 2,
  FAULT_ID_VALID: 4,
  PASID: 8,
});
export const VTD_S1_FLAGS = defineFlags('iommu_hwpt_vtd_s1_flags', { SRE: 1, EAFE: 2, WPE: 4 });
export const HWPT_DATA_TYPE = defineNumbers('iommu_hwpt_data_type', { NONE: 0, VTD_S1: 1 });
export const HW_INFO_FLAGS = defineFlags('iommufd_hw_info_flags', { INPUT_TYPE: 1 });
export const HW_INFO_TYPE = defineNumbers('iommu_hw_info_type', { NONE: 0, INTEL_VTD: 1 });
export const HW_INFO_VTD_FLAGS = defineFlags('iommu_hw_info_vtd_flags', { ERRATA_772415_SPR17: 1 });
export const HW_CAPABILITIES = defineFlags('iommufd_hw_capabilities', {
  DIRTY_TRACKING: 1,
  PCI_PASID_EXEC: 2,
  PCI_PASID_PRIV: 4,
});
export const HWPT_INVALIDATE_DATA_TYPE = defineNumbers('iommu_hwpt_invalidate_data_type', { VTD_S1: 0 });
export const VTD_INVALIDATE_FLAGS = defineFlags('iommu_hwpt_vtd_s1_invalidate_flags', { LEAF: 1 });
export const PGFAULT_FLAGS = defineFlags('iommu_hwpt_pgfault_flags', { PASID_VALID: 1, LAST_PAGE: 2 });
export const PGFAULT_PERM = defineFlags('iommu_hwpt_pgfault_perm', { READ: 1, WRITE: 2, EXEC: 4, PRIV: 8 });
export const PAGE_RESPONSE_CODE = defineNumbers('iommufd_page_response_code', { SUCCESS: 0, INVALID: 1 });
export const VFIO_BIND_FLAGS = defineFlags('vfio_device_bind_iommufd_flags', { TOKEN: 1 });
export const VFIO_ATTACH_FLAGS = defineFlags('vfio_device_attach_iommufd_pt_flags', { PASID: 1 });
export const VFIO_DETACH_FLAGS = defineFlags('vfio_device_detach_iommufd_pt_flags', { PASID: 1 });

/** `npages` that, with addr 0, invalidates everything the nested table caches. */
export const INVALIDATE_ALL_PAGES = (1n << 64n) - 1n;

// ---- the ioctls ----

/** Which file an ioctl goes to: the iommufd itself, or a VFIO device cdev bound to it. */
export type IoctlTarget = 'iommufd' | 'vfio-device';

/** The keys of layout `L`'s fields (any string for a spec seen as plain IoctlSpec). */
type LayoutKey<L extends StructShape> = L['fields'][number]['key'];

/** One ioctl, its fields named by the keys of its own layout. */
export interface IoctlSpec<L extends StructShape = StructShape, N extends string = string> {
  readonly name: N;
  readonly request: number;
  readonly target: IoctlTarget;
  readonly layout: L;
  /** The u32 field holding the struct's size (`size` for iommufd, `argsz` for VFIO). */
  readonly sizeField: LayoutKey<L>;
  /** u64 fields that carry a user-space pointer: the channel fills them from the payload buffers it is given. */
  readonly pointerFields: readonly LayoutKey<L>[];
  /** u32 out fields in which the kernel returns a new fd that the caller then owns. */
  readonly fdFields: readonly LayoutKey<L>[];
}

/** A spec whose fields the compiler has checked to be the layout's, of the widths their roles need. */
type CheckedIoctlSpec<L extends StructShape, N extends string> = IoctlSpec<L, N> & {
  readonly sizeField: IntegerKey<L['fields'], 4>;
  readonly pointerFields: readonly IntegerKey<L['fields'], 8>[];
  readonly fdFields: readonly IntegerKey<L['fields'], 4>[];
};

function ioctl<L extends StructShape, const N extends string>(spec: CheckedIoctlSpec<L, N>): IoctlSpec<L, N> {
  for (const key of [spec.sizeField, ...spec.pointerFields, ...spec.fdFields]) spec.layout.offsetOf(key);
  return spec;
}

export const IOCTLS = {
  IOMMU_DESTROY: ioctl({
    name: 'IOMMU_DESTROY',
    request: ioctlNumber(IOMMUFD_TYPE, 0x80),
    target: 'iommufd',
    layout: IOMMU_DESTROY_LAYOUT,
    sizeField: 'size',
    pointerFields: [],
    fdFields: [],
  }),
  IOMMU_IOAS_ALLOC: ioctl({
    name: 'IOMMU_IOAS_ALLOC',
    request: ioctlNumber(IOMMUFD_TYPE, 0x81),
    target: 'iommufd',
    layout: IOMMU_IOAS_ALLOC_LAYOUT,
    sizeField: 'size',
    pointerFields: [],
    fdFields: [],
  }),
  IOMMU_IOAS_MAP: ioctl({
    name: 'IOMMU_IOAS_MAP',
    request: ioctlNumber(IOMMUFD_TYPE, 0x85),
    target: 'iommufd',
    layout: IOMMU_IOAS_MAP_LAYOUT,
    sizeField: 'size',
    pointerFields: ['userVa'],
    fdFields: [],
  }),
  IOMMU_HWPT_ALLOC: ioctl({
    name: 'IOMMU_HWPT_ALLOC',
    request: ioctlNumber(IOMMUFD_TYPE, 0x89),
    target: 'iommufd',
    layout: IOMMU_HWPT_ALLOC_LAYOUT,
    sizeField: 'size',
    pointerFields: ['dataUptr'],
    fdFields: [],
  }),
  IOMMU_GET_HW_INFO: ioctl({
    name: 'IOMMU_GET_HW_INFO',
    request: ioctlNumber(IOMMUFD_TYPE, 0x8a),
    target: 'iommufd',
    layout: IOMMU_HW_INFO_LAYOUT,
    sizeField: 'size',
    pointerFields: ['dataUptr'],
    fdFields: [],
  }),
  IOMMU_HWPT_INVALIDATE: ioctl({
    name: 'IOMMU_HWPT_INVALIDATE',
    request: ioctlNumber(IOMMUFD_TYPE, 0x8d),
    target: 'iommufd',
    layout: IOMMU_HWPT_INVALIDATE_LAYOUT,
    sizeField: 'size',
    pointerFields: ['dataUptr'],
    fdFields: [],
  }),
  IOMMU_FAULT_QUEUE_ALLOC: ioctl({
    name: 'IOMMU_FAULT_QUEUE_ALLOC',
    request: ioctlNumber(IOMMUFD_TYPE, 0x8e),
    target: 'iommufd',
    layout: IOMMU_FAULT_ALLOC_LAYOUT,
    sizeField: 'size',
    pointerFields: [],
    fdFields: ['outFaultFd'],
  }),
  VFIO_DEVICE_BIND_IOMMUFD: ioctl({
    name: 'VFIO_DEVICE_BIND_IOMMUFD',
    request: ioctlNumber(VFIO_TYPE, VFIO_BASE + 18),
    target: 'vfio-device',
    layout: VFIO_DEVICE_BIND_IOMMUFD_LAYOUT,
    sizeField: 'argsz',
    pointerFields: ['tokenUuidPtr'],
    fdFields: [],
  }),
  VFIO_DEVICE_ATTACH_IOMMUFD_PT: ioctl({
    name: 'VFIO_DEVICE_ATTACH_IOMMUFD_PT',
    request: ioctlNumber(VFIO_TYPE, VFIO_BASE + 19),
    target: 'vfio-device',
    layout: VFIO_DEVICE_ATTACH_IOMMUFD_PT_LAYOUT,
    sizeField: 'argsz',
    pointerFields: [],
    fdFields: [],
  }),
  VFIO_DEVICE_DETACH_IOMMUFD_PT: ioctl({
    name: 'VFIO_DEVICE_DETACH_IOMMUFD_PT',
    request: ioctlNumber(VFIO_TYPE, VFIO_BASE + 20),
    target: 'vfio-device',
    layout: VFIO_DEVICE_DETACH_IOMMUFD_PT_LAYOUT,
    sizeField: 'argsz',
    pointerFields: [],
    fdFields: [],
  }),
} as const;

export type IoctlName = keyof typeof IOCTLS;

const BY_REQUEST = new Map<number, IoctlSpec<StructShape, IoctlName>>(Object.values(IOCTLS).map((spec) => [spec.request, spec]));

/** The spec of a request number, or undefined for numbers this module does not describe. */
export function ioctlByRequest(request: number): IoctlSpec<StructShape, IoctlName> | undefined {
  return BY_REQUEST.get(request);
}

// ---- encoding and decoding ----

/** A struct as fresh bytes: every field written, reserved ones zero. */
export function encodeStruct<F extends readonly FieldSpec[]>(layout: StructLayout<F>, value: StructValue<F>): Uint8Array {
  const bytes = new Uint8Array(layout.size);
  layout.encode(value, bytes);
  return bytes;
}

/** Reads a struct from the start of `bytes` (at `at`); throws when fewer than its size are there. */
export function decodeStruct<F extends readonly FieldSpec[]>(layout: StructLayout<F>, bytes: Uint8Array, at = 0): StructValue<F> {
  if (at < 0 || bytes.length - at < layout.size) {
    throw new ViommuError('ERR_IOMMUFD_SHORT', `${layout.name} needs ${layout.size} bytes at ${at}, only ${bytes.length - at} there`);
  }
  return layout.decode(bytes, at);
}

/** The first reserved field of a struct in `bytes` that is not zero, or undefined. */
export function nonZeroReserved(
  layout: Pick<StructLayout<readonly FieldSpec[]>, 'findNonZeroReserved'>,
  bytes: Uint8Array,
  at = 0,
): FieldSpec | undefined {
  return layout.findNonZeroReserved(bytes, at);
}

/**
 * Reads or writes a u32 or u64 field of an encoded struct in place (out fields the kernel fills, size fields), by
 * the layout's key and checked against its width; writes wrap the value to the field, as the C assignment does.
 */
export function readU32<F extends readonly FieldSpec[]>(layout: StructShape<F>, bytes: Uint8Array, key: IntegerKey<F, 4>): number {
  return readField(ofWidth(layout, key, 4), bytes, key) as number;
}

export function writeU32<F extends readonly FieldSpec[]>(layout: StructShape<F>, bytes: Uint8Array, key: IntegerKey<F, 4>, value: number): void {
  writeField(ofWidth(layout, key, 4), bytes, key, value >>> 0);
}

export function writeU64<F extends readonly FieldSpec[]>(layout: StructShape<F>, bytes: Uint8Array, key: IntegerKey<F, 8>, value: bigint): void {
  writeField(ofWidth(layout, key, 8), bytes, key, BigInt.asUintN(64, value));
}

export function readU64<F extends readonly FieldSpec[]>(layout: StructShape<F>, bytes: Uint8Array, key: IntegerKey<F, 8>): bigint {
  return readField(ofWidth(layout, key, 8), bytes, key) as bigint;
}

/**
 * `layout`, once its field `key` is known to be `width` bytes wide: the compiler knows it for a typed layout, a
 * layout seen as plain StructShape (a spec found by request number) is checked here.
 */
function ofWidth(layout: StructShape, key: string, width: 4 | 8): StructShape {
  const actual = layout.field(key).width;
  if (actual !== width) throw new ViommuError('ERR_BYTE_LAYOUT', `${layout.name}.${key} is ${actual} bytes wide, not ${width}`);
  return layout;
}

// ---- errno ----

/** These ioctls answer with Linux errnos (lib/errno.ts); their names, re-exported for code that reads results from here. */
export { errnoName } from '../errno';
