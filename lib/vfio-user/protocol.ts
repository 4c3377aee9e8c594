/** The vfio-user protocol described once, as data: command numbers, flag bits, indexes and payload struct layouts. */

import { defineFlags, defineNumbers, defineStruct } from '../byte-layout';
import { PAGE_BYTES } from '../memory/geometry';

/** The protocol version we speak (libvfio-user answers min(client minor, 2)). */
export const PROTOCOL_VERSION = { major: 0, minor: 2 } as const;

export const COMMANDS = defineNumbers('command', {
  VERSION: 1,
  DMA_MAP: 2,
  DMA_UNMAP: 3,
  DEVICE_GET_INFO: 4,
  DEVICE_GET_REGION_INFO: 5,
  DEVICE_GET_REGION_IO_FDS: 6,
  DEVICE_GET_IRQ_INFO: 7,
  DEVICE_SET_IRQS: 8,
  REGION_READ: 9,
  REGION_WRITE: 10,
  DMA_READ: 11,
  DMA_WRITE: 12,
  DEVICE_RESET: 13,
  // 14 was DIRTY_PAGES, removed from the spec with the migration v2 rework; it stays unassigned.
  REGION_WRITE_MULTI: 15,
  DEVICE_FEATURE: 16,
  MIG_DATA_READ: 17,
  MIG_DATA_WRITE: 18,
});
export type CommandName = keyof typeof COMMANDS.values;

// ---- header -------------------------------------------------------------------------------------------------

export const HEADER_LAYOUT = defineStruct('header', [
  { key: 'msgId', spec: 'msg_id', offset: 0, width: 2 },
  { key: 'command', spec: 'command', offset: 2, width: 2 },
  { key: 'messageSize', spec: 'msg_size', offset: 4, width: 4 },
  { key: 'flags', spec: 'flags', offset: 8, width: 4 },
  { key: 'error', spec: 'error', offset: 12, width: 4 },
]);
export const HEADER_SIZE = HEADER_LAYOUT.size;

/** Header flags: bits 3:0 hold the message type, the others are single flags. */
export const HEADER_FLAGS = defineFlags('header flags', {
  TYPE: 0xf,
  NO_REPLY: 0x10,
  ERROR: 0x20,
});
export const MESSAGE_TYPES = defineNumbers('message type', { COMMAND: 0, REPLY: 1 });

// ---- VERSION ------------------------------------------------------------------------------------------------

export const VERSION_LAYOUT = defineStruct('version', [
  { key: 'major', spec: 'version major', offset: 0, width: 2 },
  { key: 'minor', spec: 'version minor', offset: 2, width: 2 },
]);

/** Capability defaults that apply when a peer's VERSION JSON leaves a capability out. */
export const CAPABILITY_DEFAULTS = {
  maxMsgFds: 1,
  maxDataXferSize: 1048576,
  maxDmaMaps: 65535,
  pgsizes: PAGE_BYTES,
  twinSocket: { supported: false },
  writeMultiple: false,
  migration: undefined,
} as const;

/** JSON member names of the VERSION capabilities object, keyed by our property names. */
export const CAPABILITY_JSON_NAMES = {
  maxMsgFds: 'max_msg_fds',
  maxDataXferSize: 'max_data_xfer_size',
  maxDmaMaps: 'max_dma_maps',
  pgsizes: 'pgsizes',
  twinSocket: 'twin_socket',
  writeMultiple: 'write_multiple',
  migration: 'migration',
  twinSocketSupported: 'supported',
  twinSocketFdIndex: 'fd_index',
  migrationPgsize: 'pgsize',
  migrationMaxBitmapSize: 'max_bitmap_size',
} as const;

// ---- DMA_MAP / DMA_UNMAP ------------------------------------------------------------------------------------

export const DMA_MAP_LAYOUT = defineStruct('dma_map', [
  { key: 'argsz', spec: 'argsz', offset: 0, width: 4 },
  { key: 'flags', spec: 'flags', offset: 4, width: 4 },
  { key: 'offset', spec: 'offset', offset: 8, width: 8 },
  { key: 'address', spec: 'address', offset: 16, width: 8 },
  { key: 'size', spec: 'size', offset: 24, width: 8 },
]);
export const DMA_MAP_FLAGS = defineFlags('DMA_MAP flags', { READ: 0x1, WRITE: 0x2 });

export const DMA_UNMAP_LAYOUT = defineStruct('dma_unmap', [
  { key: 'argsz', spec: 'argsz', offset: 0, width: 4 },
  { key: 'flags', spec: 'flags', offset: 4, width: 4 },
  { key: 'address', spec: 'addr', offset: 8, width: 8 },
  { key: 'size', spec: 'size', offset: 16, width: 8 },
]);
// Bit 0 (GET_DIRTY_BITMAP) went away with DIRTY_PAGES; libvfio-user still accepts bit 1, unmap all.
export const DMA_UNMAP_FLAGS = defineFlags('DMA_UNMAP flags', { ALL: 0x2 });

// ---- device, region and IRQ information --------------------------------------------------------------------

export const DEVICE_INFO_LAYOUT = defineStruct('device_info', [
  { key: 'argsz', spec: 'argsz', offset: 0, width: 4 },
  { key: 'flags', spec: 'flags', offset: 4, width: 4 },
  { key: 'numRegions', spec: 'num_regions', offset: 8, width: 4 },
  { key: 'numIrqs', spec: 'num_irqs', offset: 12, width: 4 },
]);
export const DEVICE_INFO_FLAGS = defineFlags('device info flags', { RESET: 0x1, PCI: 0x2 });

export const REGION_INFO_LAYOUT = defineStruct('region_info', [
  { key: 'argsz', spec: 'argsz', offset: 0, width: 4 },
  { key: 'flags', spec: 'flags', offset: 4, width: 4 },
  { key: 'index', spec: 'index', offset: 8, width: 4 },
  { key: 'capOffset', spec: 'cap_offset', offset: 12, width: 4 },
  { key: 'size', spec: 'size', offset: 16, width: 8 },
  { key: 'offset', spec: 'offset', offset: 24, width: 8 },
]);
export const REGION_INFO_FLAGS = defineFlags('region info flags', { READ: 0x1, WRITE: 0x2, MMAP: 0x4, CAPS: 0x8 });

/** Standard region indexes of a PCI device (linux/vfio.h VFIO_PCI_*_REGION_INDEX). */
export const REGION_INDEXES = defineNumbers('region index', {
  BAR0: 0,
  BAR1: 1,
  BAR2: 2,
  BAR3: 3,
  BAR4: 4,
  BAR5: 5,
  ROM: 6,
  CONFIG: 7,
  VGA: 8,
});

/** Common header of every region-info capability; `next` counts from the start of the region-info struct. */
export const CAP_HEADER_LAYOUT = defineStruct('vfio_info_cap_header', [
  { key: 'id', spec: 'id', offset: 0, width: 2 },
  { key: 'version', spec: 'version', offset: 2, width: 2 },
  { key: 'next', spec: 'next', offset: 4, width: 4 },
]);
export const REGION_CAP_IDS = defineNumbers('region capability id', { SPARSE_MMAP: 1, TYPE: 2 });
export const REGION_CAP_VERSIONS = { SPARSE_MMAP: 1, TYPE: 1 } as const;

/** Body of the sparse-mmap capability (after the cap header), followed by `nrAreas` areas. */
export const SPARSE_MMAP_LAYOUT = defineStruct('vfio_region_info_cap_sparse_mmap', [
  { key: 'nrAreas', spec: 'nr_areas', offset: 0, width: 4 },
  { key: 'reserved', spec: 'reserved', offset: 4, width: 4, reserved: true },
]);
export const SPARSE_MMAP_AREA_LAYOUT = defineStruct('vfio_region_sparse_mmap_area', [
  { key: 'offset', spec: 'offset', offset: 0, width: 8 },
  { key: 'size', spec: 'size', offset: 8, width: 8 },
]);

/** Body of the region-type capability (after the cap header), used by older migration regions. */
export const REGION_TYPE_LAYOUT = defineStruct('vfio_region_info_cap_type', [
  { key: 'type', spec: 'type', offset: 0, width: 4 },
  { key: 'subtype', spec: 'subtype', offset: 4, width: 4 },
]);

export const REGION_IO_FDS_LAYOUT = defineStruct('region_io_fds', [
  { key: 'argsz', spec: 'argsz', offset: 0, width: 4 },
  { key: 'flags', spec: 'flags', offset: 4, width: 4 },
  { key: 'index', spec: 'index', offset: 8, width: 4 },
  { key: 'count', spec: 'count', offset: 12, width: 4 },
]);
/** No flags are defined for GET_REGION_IO_FDS: the spec says they must be zero. */
export const REGION_IO_FDS_FLAGS = defineFlags('region io fds flags', {});

/** One sub-region record; the last field is `datamatch` for an ioeventfd and `user_data` for an ioregionfd. */
export const SUB_REGION_IO_FD_LAYOUT = defineStruct('sub_region_io_fd', [
  { key: 'offset', spec: 'offset', offset: 0, width: 8 },
  { key: 'size', spec: 'size', offset: 8, width: 8 },
  { key: 'fdIndex', spec: 'fd_index', offset: 16, width: 4 },
  { key: 'type', spec: 'type', offset: 20, width: 4 },
  { key: 'flags', spec: 'flags', offset: 24, width: 4 },
  { key: 'padding', spec: 'padding', offset: 28, width: 4, reserved: true },
  { key: 'datamatchOrUserData', spec: 'datamatch / user_data', offset: 32, width: 8 },
]);
export const IO_FD_TYPES = defineNumbers('io fd type', { IOEVENTFD: 0, IOREGIONFD: 1 });

export const IRQ_INFO_LAYOUT = defineStruct('irq_info', [
  { key: 'argsz', spec: 'argsz', offset: 0, width: 4 },
  { key: 'flags', spec: 'flags', offset: 4, width: 4 },
  { key: 'index', spec: 'index', offset: 8, width: 4 },
  { key: 'count', spec: 'count', offset: 12, width: 4 },
]);
export const IRQ_INFO_FLAGS = defineFlags('IRQ info flags', { EVENTFD: 0x1, MASKABLE: 0x2, AUTOMASKED: 0x4, NORESIZE: 0x8 });

/** IRQ indexes of a PCI device (linux/vfio.h VFIO_PCI_*_IRQ_INDEX). */
export const IRQ_INDEXES = defineNumbers('IRQ index', { INTX: 0, MSI: 1, MSIX: 2, ERR: 3, REQ: 4 });

export const SET_IRQS_LAYOUT = defineStruct('irq_set', [
  { key: 'argsz', spec: 'argsz', offset: 0, width: 4 },
  { key: 'flags', spec: 'flags', offset: 4, width: 4 },
  { key: 'index', spec: 'index', offset: 8, width: 4 },
  { key: 'start', spec: 'start', offset: 12, width: 4 },
  { key: 'count', spec: 'count', offset: 16, width: 4 },
]);
export const SET_IRQS_FLAGS = defineFlags('SET_IRQS flags', {
  DATA_NONE: 0x1,
  DATA_BOOL: 0x2,
  DATA_EVENTFD: 0x4,
  ACTION_MASK: 0x8,
  ACTION_UNMASK: 0x10,
  ACTION_TRIGGER: 0x20,
});
/** Exactly one flag of each group must be set. */
export const SET_IRQS_FLAG_GROUPS = {
  data: ['DATA_NONE', 'DATA_BOOL', 'DATA_EVENTFD'],
  action: ['ACTION_MASK', 'ACTION_UNMASK', 'ACTION_TRIGGER'],
} as const;

// ---- region and DMA access --------------------------------------------------------------------------------

/** REGION_READ/REGION_WRITE access header; data (when present) follows it. */
export const REGION_ACCESS_LAYOUT = defineStruct('region_access', [
  { key: 'offset', spec: 'offset', offset: 0, width: 8 },
  { key: 'region', spec: 'region', offset: 8, width: 4 },
  { key: 'count', spec: 'count', offset: 12, width: 4 },
]);

/** DMA_READ/DMA_WRITE access header as the spec and libvfio-user lay it out; data follows at 16. */
export const DMA_ACCESS_LAYOUT = defineStruct('dma_access', [
  { key: 'address', spec: 'address', offset: 0, width: 8 },
  { key: 'count', spec: 'count', offset: 8, width: 8 },
]);

/**
 * The DMA_WRITE reply as the spec's table draws it (u32 count), and QEMU's VFIOUserDMARW access header
 * ({u64 offset, u32 count, data[]}, data at 12). Both are only ever accepted, never produced.
 */
export const DMA_ACCESS_NARROW_LAYOUT = defineStruct('dma_access_u32_count', [
  { key: 'address', spec: 'address', offset: 0, width: 8 },
  { key: 'count', spec: 'count', offset: 8, width: 4 },
]);
/** QEMU's DMA header is an unpacked C struct: its sizeof rounds 12 up to 16, and QEMU sizes replies with it. */
export const QEMU_DMA_STRUCT_SIZE = 16;

export const REGION_WRITE_MULTI_LAYOUT = defineStruct('region_write_multi', [{ key: 'count', spec: 'wr_cnt', offset: 0, width: 8 }]);
export const REGION_WRITE_ONE_LAYOUT = defineStruct('region_write_one', [
  { key: 'offset', spec: 'offset', offset: 0, width: 8 },
  { key: 'region', spec: 'region', offset: 8, width: 4 },
  { key: 'count', spec: 'count', offset: 12, width: 4 },
  { key: 'data', spec: 'data', offset: 16, width: 8, kind: 'bytes' },
]);

// ---- DEVICE_FEATURE -----------------------------------------------------------------------------------------

export const DEVICE_FEATURE_LAYOUT = defineStruct('device_feature', [
  { key: 'argsz', spec: 'argsz', offset: 0, width: 4 },
  { key: 'flags', spec: 'flags', offset: 4, width: 4 },
]);
/** FEATURE is the 16-bit feature index field; GET, SET and PROBE are single bits above it. */
export const DEVICE_FEATURE_FLAGS = defineFlags('DEVICE_FEATURE flags', {
  FEATURE: 0xffff,
  GET: 0x10000,
  SET: 0x20000,
  PROBE: 0x40000,
});
export const DEVICE_FEATURES = defineNumbers('device feature', {
  MIGRATION: 1,
  MIG_DEVICE_STATE: 2,
  DMA_LOGGING_START: 6,
  DMA_LOGGING_STOP: 7,
  DMA_LOGGING_REPORT: 8,
});
export const MIGRATION_STATES = defineNumbers('migration state', {
  ERROR: 0,
  STOP: 1,
  RUNNING: 2,
  STOP_COPY: 3,
  RESUMING: 4,
  RUNNING_P2P: 5,
  PRE_COPY: 6,
  PRE_COPY_P2P: 7,
});
export const MIGRATION_FLAGS = defineFlags('migration flags', { STOP_COPY: 0x1, P2P: 0x2, PRE_COPY: 0x4 });

export const FEATURE_MIGRATION_LAYOUT = defineStruct('vfio_device_feature_migration', [{ key: 'flags', spec: 'flags', offset: 0, width: 8 }]);
export const FEATURE_MIG_STATE_LAYOUT = defineStruct('vfio_device_feature_mig_state', [
  { key: 'deviceState', spec: 'device_state', offset: 0, width: 4 },
  { key: 'dataFd', spec: 'data_fd', offset: 4, width: 4 },
]);
export const FEATURE_DMA_LOGGING_CONTROL_LAYOUT = defineStruct('vfio_device_feature_dma_logging_control', [
  { key: 'pageSize', spec: 'page_size', offset: 0, width: 8 },
  { key: 'numRanges', spec: 'num_ranges', offset: 8, width: 4 },
  { key: 'reserved', spec: 'reserved', offset: 12, width: 4, reserved: true },
]);
export const FEATURE_DMA_LOGGING_RANGE_LAYOUT = defineStruct('vfio_device_feature_dma_logging_range', [
  { key: 'iova', spec: 'iova', offset: 0, width: 8 },
  { key: 'length', spec: 'length', offset: 8, width: 8 },
]);
export const FEATURE_DMA_LOGGING_REPORT_LAYOUT = defineStruct('vfio_device_feature_dma_logging_report', [
  { key: 'iova', spec: 'iova', offset: 0, width: 8 },
  { key: 'length', spec: 'length', offset: 8, width: 8 },
  { key: 'pageSize', spec: 'page_size', offset: 16, width: 8 },
]);

// ---- migration data -----------------------------------------------------------------------------------------

export const MIG_DATA_LAYOUT = defineStruct('mig_data', [
  { key: 'argsz', spec: 'argsz', offset: 0, width: 4 },
  { key: 'size', spec: 'size', offset: 4, width: 4 },
]);
