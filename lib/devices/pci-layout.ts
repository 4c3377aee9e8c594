/** PCI configuration space described once: header, command/status bits, BARs, capabilities and their ids, class names. */
import { defineConfigBits, defineConfigStructure, defineIdTable, readConfigField } from './config-table';

/** The type-0 header; conventional configuration space; PCI Express extended space. */
export const PCI_HEADER_SIZE = 0x40;
export const PCI_CONFIG_SIZE = 0x100;
export const PCI_EXTENDED_CONFIG_SIZE = 0x1000;
export const PCI_BAR_COUNT = 6;

/** Where capabilities may live: after the header, inside the 256-byte PCI-compatible space, dword aligned. */
export const CAPABILITY_AREA = { start: PCI_HEADER_SIZE, end: PCI_CONFIG_SIZE } as const;
/** Capability pointers are dword aligned; their two low bits are reserved. */
export const CAPABILITY_POINTER_MASK = 0xfc;

/**
 * Command register bits (PCI Local Bus 3.0, 6.2.2), in lspci's order with its labels. The writable ones are those
 * QEMU 7.2's edu lets software set (0xffff written reads back 0x0507, docs/vfio-user-server.md); the rest read 0.
 */
export const PCI_COMMAND = defineConfigBits('PCI command', [
  { key: 'IO_SPACE', label: 'I/O', mask: 0x1, writable: true },
  { key: 'MEMORY_SPACE', label: 'Mem', mask: 0x2, writable: true },
  { key: 'BUS_MASTER', label: 'BusMaster', mask: 0x4, writable: true },
  { key: 'SPECIAL_CYCLES', label: 'SpecCycle', mask: 0x8 },
  { key: 'MEMORY_WRITE_AND_INVALIDATE', label: 'MemWINV', mask: 0x10 },
  { key: 'VGA_PALETTE_SNOOP', label: 'VGASnoop', mask: 0x20 },
  { key: 'PARITY_ERROR_RESPONSE', label: 'ParErr', mask: 0x40 },
  { key: 'STEPPING', label: 'Stepping', mask: 0x80 },
  { key: 'SERR_ENABLE', label: 'SERR', mask: 0x100, writable: true },
  { key: 'FAST_BACK_TO_BACK', label: 'FastB2B', mask: 0x200 },
  { key: 'INTX_DISABLE', label: 'DisINTx', mask: 0x400, writable: true },
]);

/** Status register bits in lspci's order (Interrupt Status last) with its labels; the error bits clear on a write of 1. */
export const PCI_STATUS = defineConfigBits('PCI status', [
  { key: 'CAPABILITIES_LIST', label: 'Cap', mask: 0x10 },
  { key: 'CAPABLE_66MHZ', label: '66MHz', mask: 0x20 },
  { key: 'USER_DEFINABLE_FEATURES', label: 'UDF', mask: 0x40 },
  { key: 'FAST_BACK_TO_BACK_CAPABLE', label: 'FastB2B', mask: 0x80 },
  { key: 'MASTER_DATA_PARITY_ERROR', label: 'ParErr', mask: 0x100, w1c: true },
  { key: 'DEVSEL_TIMING', label: 'DEVSEL', mask: 0x600 },
  { key: 'SIGNALED_TARGET_ABORT', label: '>TAbort', mask: 0x800, w1c: true },
  { key: 'RECEIVED_TARGET_ABORT', label: '<TAbort', mask: 0x1000, w1c: true },
  { key: 'RECEIVED_MASTER_ABORT', label: '<MAbort', mask: 0x2000, w1c: true },
  { key: 'SIGNALED_SYSTEM_ERROR', label: '>SERR', mask: 0x4000, w1c: true },
  { key: 'DETECTED_PARITY_ERROR', label: '<PERR', mask: 0x8000, w1c: true },
  { key: 'INTERRUPT', label: 'INTx', mask: 0x8 },
]);
/** The DEVSEL timing field's values, as lspci names them. */
export const DEVSEL_TIMINGS = ['fast', 'medium', 'slow', 'unknown'] as const;

/**
 * The type-0 header (PCI Local Bus 3.0, figure 6-1). BAR and expansion ROM write masks depend on the sizes a
 * device declares, so the config-space builder computes them; the table gives their place. The latency timer is
 * read-only zero, as on QEMU 7.2 and on every PCI Express function.
 */
export const TYPE0_HEADER = defineConfigStructure(
  'type-0 header',
  [
    { key: 'vendorId', spec: 'Vendor ID', offset: 0x00, width: 2 },
    { key: 'deviceId', spec: 'Device ID', offset: 0x02, width: 2 },
    { key: 'command', spec: 'Command', offset: 0x04, width: 2, writable: PCI_COMMAND.writable },
    { key: 'status', spec: 'Status', offset: 0x06, width: 2, w1c: PCI_STATUS.w1c },
    { key: 'revisionId', spec: 'Revision ID', offset: 0x08, width: 1 },
    { key: 'programmingInterface', spec: 'Class Code (programming interface)', offset: 0x09, width: 1 },
    { key: 'subClass', spec: 'Class Code (sub-class)', offset: 0x0a, width: 1 },
    { key: 'baseClass', spec: 'Class Code (base class)', offset: 0x0b, width: 1 },
    { key: 'cacheLineSize', spec: 'Cache Line Size', offset: 0x0c, width: 1, writable: 0xff },
    { key: 'latencyTimer', spec: 'Latency Timer', offset: 0x0d, width: 1 },
    { key: 'headerType', spec: 'Header Type', offset: 0x0e, width: 1 },
    { key: 'bist', spec: 'BIST', offset: 0x0f, width: 1 },
    { key: 'bar0', spec: 'Base Address Register 0', offset: 0x10, width: 4 },
    { key: 'bar1', spec: 'Base Address Register 1', offset: 0x14, width: 4 },
    { key: 'bar2', spec: 'Base Address Register 2', offset: 0x18, width: 4 },
    { key: 'bar3', spec: 'Base Address Register 3', offset: 0x1c, width: 4 },
    { key: 'bar4', spec: 'Base Address Register 4', offset: 0x20, width: 4 },
    { key: 'bar5', spec: 'Base Address Register 5', offset: 0x24, width: 4 },
    { key: 'cardbusCisPointer', spec: 'Cardbus CIS Pointer', offset: 0x28, width: 4 },
    { key: 'subsystemVendorId', spec: 'Subsystem Vendor ID', offset: 0x2c, width: 2 },
    { key: 'subsystemId', spec: 'Subsystem ID', offset: 0x2e, width: 2 },
    { key: 'expansionRomBase', spec: 'Expansion ROM Base Address', offset: 0x30, width: 4 },
    { key: 'capabilitiesPointer', spec: 'Capabilities Pointer', offset: 0x34, width: 1 },
    { key: 'interruptLine', spec: 'Interrupt Line', offset: 0x3c, width: 1, writable: 0xff },
    { key: 'interruptPin', spec: 'Interrupt Pin', offset: 0x3d, width: 1 },
    { key: 'minGnt', spec: 'Min_Gnt', offset: 0x3e, width: 1 },
    { key: 'maxLat', spec: 'Max_Lat', offset: 0x3f, width: 1 },
  ],
  PCI_HEADER_SIZE,
);
export type PciHeader = ReturnType<typeof TYPE0_HEADER.decode>;
export const BAR_KEYS = ['bar0', 'bar1', 'bar2', 'bar3', 'bar4', 'bar5'] as const;
/** Header Type bit 7 says multi-function; the rest is the layout (0: the type-0 header with six BARs). */
export const HEADER_LAYOUT_MASK = 0x7f;

// ---- BARs and the expansion ROM -----------------------------------------------------------------------------

/** The read-only low bits of a BAR that say what it is. */
export const PCI_BAR = defineConfigBits('PCI BAR', [
  { key: 'IO_SPACE', mask: 0x1 },
  { key: 'MEMORY_TYPE', mask: 0x6 },
  { key: 'PREFETCHABLE', mask: 0x8 },
]);
export const PCI_BAR_MEMORY_TYPES = defineIdTable('PCI BAR memory type', [
  { key: 'BITS_32', value: 0, name: '32-bit' },
  { key: 'BELOW_1M', value: 1, name: 'below 1M' },
  { key: 'BITS_64', value: 2, name: '64-bit' },
]);
/** The bits below the address in a memory BAR and in an I/O BAR (bit 1 of an I/O BAR is reserved). */
export const PCI_BAR_FLAG_MASK = { memory: 0xf, io: 0x3 } as const;
export const PCI_ROM_BITS = { ENABLE: 0x1, ADDRESS_MASK: 0xfffff800 } as const;

export interface DecodedBar {
  readonly kind: 'io' | 'memory';
  /** A 64-bit memory BAR takes the next register for its upper half. */
  readonly is64: boolean;
  readonly prefetchable: boolean;
  readonly address: bigint;
}

/** A BAR's meaning from its register and, for a 64-bit BAR, the next one (undefined when there is none). */
export function decodeBar(low: number, next: number | undefined): DecodedBar {
  if ((low & PCI_BAR.bits.IO_SPACE) !== 0) {
    return { kind: 'io', is64: false, prefetchable: false, address: BigInt((low & ~PCI_BAR_FLAG_MASK.io) >>> 0) };
  }
  const is64 = PCI_BAR.get(low, 'MEMORY_TYPE') === PCI_BAR_MEMORY_TYPES.values.BITS_64 && next !== undefined;
  const address = BigInt((low & ~PCI_BAR_FLAG_MASK.memory) >>> 0) | (is64 ? BigInt(next >>> 0) << 32n : 0n);
  return { kind: 'memory', is64, prefetchable: (low & PCI_BAR.bits.PREFETCHABLE) !== 0, address };
}

/** BAR `index` of a header in `bytes`, reading its upper half when it is a 64-bit BAR. */
export function readBar(bytes: Uint8Array, index: number): DecodedBar {
  const field = (i: number) => readConfigField(bytes, 0, TYPE0_HEADER.field(BAR_KEYS[i]!));
  return decodeBar(field(index), index + 1 < PCI_BAR_COUNT ? field(index + 1) : undefined);
}

// ---- capabilities -------------------------------------------------------------------------------------------

/** Capability ids (PCI Code and ID Assignment, ch. 2), with lspci's names. */
export const PCI_CAPABILITIES = defineIdTable('PCI capability', [
  { key: 'POWER_MANAGEMENT', value: 0x01, name: 'Power Management' },
  { value: 0x02, name: 'AGP' },
  { value: 0x03, name: 'Vital Product Data' },
  { value: 0x04, name: 'Slot Identification' },
  { key: 'MSI', value: 0x05, name: 'MSI' },
  { value: 0x06, name: 'CompactPCI hot-swap' },
  { value: 0x07, name: 'PCI-X' },
  { value: 0x08, name: 'HyperTransport' },
  { key: 'VENDOR_SPECIFIC', value: 0x09, name: 'Vendor Specific Information' },
  { value: 0x0a, name: 'Debug port' },
  { value: 0x0b, name: 'CompactPCI central resource control' },
  { value: 0x0c, name: 'PCI Standard Hot-Plug Controller' },
  { value: 0x0d, name: 'Subsystem vendor ID' },
  { value: 0x0e, name: 'AGP 8x' },
  { value: 0x0f, name: 'Secure device' },
  { key: 'PCI_EXPRESS', value: 0x10, name: 'Express' },
  { key: 'MSIX', value: 0x11, name: 'MSI-X' },
  { value: 0x12, name: 'SATA HBA' },
  { value: 0x13, name: 'PCI Advanced Features' },
  { value: 0x14, name: 'Enhanced Allocation' },
  { value: 0x15, name: 'Flattening Portal Bridge' },
]);
export const PCI_CAPABILITY_IDS = PCI_CAPABILITIES.values;

const CAPABILITY_ID = { key: 'id', spec: 'Capability ID', offset: 0, width: 1 } as const;
const NEXT_POINTER = { key: 'next', spec: 'Next Capability Pointer', offset: 1, width: 1 } as const;

/** Fields every capability starts with. */
export const CAPABILITY_HEADER = defineConfigStructure('capability header', [CAPABILITY_ID, NEXT_POINTER]);

/** MSI Message Control (PCI Local Bus 3.0, 6.8.1.3): the vector counts are log2 fields. */
export const MSI_CONTROL = defineConfigBits('MSI message control', [
  { key: 'ENABLE', mask: 0x1, writable: true },
  { key: 'MULTIPLE_MESSAGE_CAPABLE', mask: 0xe },
  { key: 'MULTIPLE_MESSAGE_ENABLE', mask: 0x70, writable: true },
  { key: 'ADDRESS_64', mask: 0x80 },
  { key: 'PER_VECTOR_MASKING', mask: 0x100 },
]);
/** The message address is dword aligned: its two low bits are read-only zero. */
const MSI_ADDRESS_WRITABLE = 0xfffffffc;

type MsiStructure = ReturnType<typeof buildMsiStructure>;
/** One table per variant, built once (a structure compiles its accessors on first use, and is asked for often). */
const MSI_STRUCTURES: (MsiStructure | undefined)[] = [];

/**
 * The four MSI layouts (32- or 64-bit address, with or without per-vector masking); Message Control says which
 * one a function has. The mask register's writable bits depend on the number of vectors, so the builder narrows it.
 */
export function msiStructure(address64: boolean, perVectorMasking: boolean): MsiStructure {
  const variant = (address64 ? 2 : 0) + (perVectorMasking ? 1 : 0);
  return (MSI_STRUCTURES[variant] ??= buildMsiStructure(address64, perVectorMasking));
}

function buildMsiStructure(address64: boolean, perVectorMasking: boolean) {
  const dataAt = address64 ? 0x0c : 0x08;
  const maskAt = address64 ? 0x10 : 0x0c;
  return defineConfigStructure(
    `MSI capability (${address64 ? '64' : '32'}-bit${perVectorMasking ? ', per-vector masking' : ''})`,
    [
      CAPABILITY_ID,
      NEXT_POINTER,
      { key: 'control', spec: 'Message Control', offset: 2, width: 2, writable: MSI_CONTROL.writable },
      { key: 'address', spec: 'Message Address', offset: 4, width: 4, writable: MSI_ADDRESS_WRITABLE },
      ...(address64 ? [{ key: 'upperAddress', spec: 'Message Upper Address', offset: 8, width: 4, writable: 0xffffffff } as const] : []),
      { key: 'data', spec: 'Message Data', offset: dataAt, width: 2, writable: 0xffff },
      ...(perVectorMasking
        ? [
            { key: 'maskBits', spec: 'Mask Bits', offset: maskAt, width: 4, writable: 0xffffffff } as const,
            { key: 'pendingBits', spec: 'Pending Bits', offset: maskAt + 4, width: 4 } as const,
          ]
        : []),
    ],
    perVectorMasking ? maskAt + 8 : dataAt + 2,
  );
}
/** The layout a Message Control value announces. */
export function msiStructureFor(control: number) {
  return msiStructure((control & MSI_CONTROL.bits.ADDRESS_64) !== 0, (control & MSI_CONTROL.bits.PER_VECTOR_MASKING) !== 0);
}

/** MSI-X Message Control (PCI Local Bus 3.0, 6.8.2.3): the table size field holds N - 1. */
export const MSIX_CONTROL = defineConfigBits('MSI-X message control', [
  { key: 'TABLE_SIZE', mask: 0x7ff },
  { key: 'FUNCTION_MASK', mask: 0x4000, writable: true },
  { key: 'ENABLE', mask: 0x8000, writable: true },
]);
/** Table Offset/BIR and PBA Offset/BIR: the BAR indicator in bits 2:0, a qword-aligned offset above. */
export const MSIX_LOCATION = defineConfigBits('MSI-X table or PBA location', [
  { key: 'BIR', mask: 0x7 },
  { key: 'OFFSET', mask: 0xfffffff8 },
]);

export const MSIX_STRUCTURE = defineConfigStructure('MSI-X capability', [
  CAPABILITY_ID,
  NEXT_POINTER,
  { key: 'control', spec: 'Message Control', offset: 2, width: 2, writable: MSIX_CONTROL.writable },
  { key: 'tableOffsetBir', spec: 'Table Offset/Table BIR', offset: 4, width: 4 },
  { key: 'pbaOffsetBir', spec: 'PBA Offset/PBA BIR', offset: 8, width: 4 },
]);

/** One MSI-X table entry (16 bytes). */
export const MSIX_TABLE_ENTRY = defineConfigStructure('MSI-X table entry', [
  { key: 'addressLow', spec: 'Message Address', offset: 0, width: 4, writable: MSI_ADDRESS_WRITABLE },
  { key: 'addressHigh', spec: 'Message Upper Address', offset: 4, width: 4, writable: 0xffffffff },
  { key: 'data', spec: 'Message Data', offset: 8, width: 4, writable: 0xffffffff },
  { key: 'vectorControl', spec: 'Vector Control', offset: 12, width: 4, writable: 0x1 },
]);
export const MSIX_VECTOR_CONTROL = defineConfigBits('MSI-X vector control', [{ key: 'MASKED', mask: 0x1, writable: true }]);

/** Power Management (PCI Bus Power Management 1.2, 3.2): PMC's low bits give the spec version. */
export const PM_STRUCTURE = defineConfigStructure('Power Management capability', [
  CAPABILITY_ID,
  NEXT_POINTER,
  { key: 'capabilities', spec: 'Power Management Capabilities (PMC)', offset: 2, width: 2 },
]);
export const PM_CAPABILITIES = defineConfigBits('Power Management capabilities', [{ key: 'VERSION', mask: 0x7 }]);

/** The PCI Express capability's first register (PCIe Base 4.0, 7.5.3.2). */
export const EXPRESS_STRUCTURE = defineConfigStructure('PCI Express capability', [
  CAPABILITY_ID,
  NEXT_POINTER,
  { key: 'capabilities', spec: 'PCI Express Capabilities Register', offset: 2, width: 2 },
]);
export const EXPRESS_CAPABILITIES = defineConfigBits('PCI Express capabilities', [
  { key: 'VERSION', mask: 0xf },
  { key: 'PORT_TYPE', mask: 0xf0 },
  { key: 'SLOT', mask: 0x100 },
  { key: 'INTERRUPT_MESSAGE', mask: 0x3e00 },
]);
export const EXPRESS_PORT_TYPES = defineIdTable('PCI Express port type', [
  { value: 0, name: 'Endpoint' },
  { value: 1, name: 'Legacy Endpoint' },
  { value: 4, name: 'Root Port' },
  { value: 5, name: 'Upstream Port' },
  { value: 6, name: 'Downstream Port' },
  { value: 7, name: 'PCI-Express to PCI/PCI-X Bridge' },
  { value: 8, name: 'PCI/PCI-X to PCI-Express Bridge' },
  { value: 9, name: 'Root Complex Integrated Endpoint' },
  { value: 10, name: 'Root Complex Event Collector' },
]);

/**
 * The PCI Express Capability structure of an endpoint (PCIe Base 4.0, 7.5.3): capability version 2 always has every
 * register up to Slot Status 2, an endpoint leaving the slot and root ones zero. Device Control's and Device
 * Status's masks come from their bit tables below.
 */
export const EXPRESS_DEVICE_CONTROL = defineConfigBits('PCI Express device control', [
  { key: 'CORRECTABLE_ERROR_REPORTING', mask: 0x1, writable: true },
  { key: 'NON_FATAL_ERROR_REPORTING', mask: 0x2, writable: true },
  { key: 'FATAL_ERROR_REPORTING', mask: 0x4, writable: true },
  { key: 'UNSUPPORTED_REQUEST_REPORTING', mask: 0x8, writable: true },
  { key: 'RELAXED_ORDERING', mask: 0x10, writable: true },
  { key: 'MAX_PAYLOAD_SIZE', mask: 0xe0, writable: true },
  { key: 'EXTENDED_TAG', mask: 0x100, writable: true },
  { key: 'NO_SNOOP', mask: 0x800, writable: true },
  { key: 'MAX_READ_REQUEST_SIZE', mask: 0x7000, writable: true },
]);
export const EXPRESS_DEVICE_STATUS = defineConfigBits('PCI Express device status', [
  { key: 'CORRECTABLE_ERROR', mask: 0x1, w1c: true },
  { key: 'NON_FATAL_ERROR', mask: 0x2, w1c: true },
  { key: 'FATAL_ERROR', mask: 0x4, w1c: true },
  { key: 'UNSUPPORTED_REQUEST', mask: 0x8, w1c: true },
  { key: 'TRANSACTIONS_PENDING', mask: 0x20 },
]);
/** Link Capabilities and Link Status share the speed and width fields' positions. */
export const EXPRESS_LINK = defineConfigBits('PCI Express link speed and width', [
  { key: 'SPEED', mask: 0xf },
  { key: 'WIDTH', mask: 0x3f0 },
]);
/** Link Capabilities 2: the Supported Link Speeds Vector, one bit per speed (Max Link Speed n names bit n). */
export const EXPRESS_LINK_CAPABILITIES_2 = defineConfigBits('PCI Express link capabilities 2', [
  { key: 'SPEED_2_5GT', mask: 0x2 },
  { key: 'SPEED_5GT', mask: 0x4 },
  { key: 'SPEED_8GT', mask: 0x8 },
  { key: 'SPEED_16GT', mask: 0x10 },
]);
/**
 * Device Capabilities 2: a PASID travels in an End-End TLP Prefix, so a function that sends one says it supports
 * them (Linux refuses to enable PASID on a function whose path lacks the bit).
 */
export const EXPRESS_DEVICE_CAPABILITIES_2 = defineConfigBits('PCI Express device capabilities 2', [
  { key: 'END_END_TLP_PREFIX', mask: 0x200000 },
  { key: 'MAX_END_END_TLP_PREFIXES', mask: 0xc00000 },
]);
export const EXPRESS_ENDPOINT_STRUCTURE = defineConfigStructure('PCI Express capability (endpoint, version 2)', [
  CAPABILITY_ID,
  NEXT_POINTER,
  { key: 'capabilities', spec: 'PCI Express Capabilities Register', offset: 0x02, width: 2 },
  { key: 'deviceCapabilities', spec: 'Device Capabilities Register', offset: 0x04, width: 4 },
  { key: 'deviceControl', spec: 'Device Control Register', offset: 0x08, width: 2, writable: EXPRESS_DEVICE_CONTROL.writable },
  { key: 'deviceStatus', spec: 'Device Status Register', offset: 0x0a, width: 2, w1c: EXPRESS_DEVICE_STATUS.w1c },
  { key: 'linkCapabilities', spec: 'Link Capabilities Register', offset: 0x0c, width: 4 },
  { key: 'linkControl', spec: 'Link Control Register', offset: 0x10, width: 2 },
  { key: 'linkStatus', spec: 'Link Status Register', offset: 0x12, width: 2 },
  { key: 'slotCapabilities', spec: 'Slot Capabilities Register', offset: 0x14, width: 4 },
  { key: 'slotControl', spec: 'Slot Control Register', offset: 0x18, width: 2 },
  { key: 'slotStatus', spec: 'Slot Status Register', offset: 0x1a, width: 2 },
  { key: 'rootControl', spec: 'Root Control Register', offset: 0x1c, width: 2 },
  { key: 'rootCapabilities', spec: 'Root Capabilities Register', offset: 0x1e, width: 2 },
  { key: 'rootStatus', spec: 'Root Status Register', offset: 0x20, width: 4 },
  { key: 'deviceCapabilities2', spec: 'Device Capabilities 2 Register', offset: 0x24, width: 4 },
  { key: 'deviceControl2', spec: 'Device Control 2 Register', offset: 0x28, width: 2 },
  { key: 'deviceStatus2', spec: 'Device Status 2 Register', offset: 0x2a, width: 2 },
  { key: 'linkCapabilities2', spec: 'Link Capabilities 2 Register', offset: 0x2c, width: 4 },
  { key: 'linkControl2', spec: 'Link Control 2 Register', offset: 0x30, width: 2 },
  { key: 'linkStatus2', spec: 'Link Status 2 Register', offset: 0x32, width: 2 },
  { key: 'slotCapabilities2', spec: 'Slot Capabilities 2 Register', offset: 0x34, width: 4 },
  { key: 'slotControl2', spec: 'Slot Control 2 Register', offset: 0x38, width: 2 },
  { key: 'slotStatus2', spec: 'Slot Status 2 Register', offset: 0x3a, width: 2 },
]);

export const VENDOR_STRUCTURE = defineConfigStructure('Vendor Specific capability', [
  CAPABILITY_ID,
  NEXT_POINTER,
  { key: 'length', spec: 'Capability Length', offset: 2, width: 1 },
]);

// ---- extended capabilities (PCI Express, from 0x100) -----------------------------------------------------

export const EXTENDED_CAPABILITY_HEADER = defineConfigBits('PCI Express extended capability header', [
  { key: 'ID', mask: 0xffff },
  { key: 'VERSION', mask: 0xf0000 },
  { key: 'NEXT', mask: 0xfff00000 },
]);

/** Extended capabilities live from 0x100 to the end of the 4 KiB space, dword aligned, the first one at 0x100. */
export const EXTENDED_CAPABILITY_AREA = { start: PCI_CONFIG_SIZE, end: PCI_EXTENDED_CONFIG_SIZE } as const;

/** The header as a structure (one read-only dword), for capability tables; EXTENDED_CAPABILITY_HEADER splits it. */
const EXTENDED_HEADER = { key: 'header', spec: 'PCI Express Extended Capability Header', offset: 0, width: 4 } as const;

/** PASID Capability register (PCIe Base spec, PASID Extended Capability): what the function can tag its requests with. */
export const PASID_CAPABILITY = defineConfigBits('PASID capability', [
  { key: 'EXECUTE_SUPPORTED', mask: 0x2, label: 'Exec' },
  { key: 'PRIVILEGED_SUPPORTED', mask: 0x4, label: 'Priv' },
  { key: 'MAX_WIDTH', mask: 0x1f00 },
]);
/**
 * PASID Control register (same capability): software's enables. A function without the matching support bit keeps the
 * execute or privileged enable read-only zero, so the builder narrows the mask.
 */
export const PASID_CONTROL = defineConfigBits('PASID control', [
  { key: 'ENABLE', mask: 0x1, label: 'Enable', writable: true },
  { key: 'EXECUTE_ENABLE', mask: 0x2, label: 'Exec', writable: true },
  { key: 'PRIVILEGED_ENABLE', mask: 0x4, label: 'Priv', writable: true },
]);
/** The largest Max PASID Width: a PASID is 20 bits. */
export const PASID_MAX_WIDTH = 20;
export const PASID_STRUCTURE = defineConfigStructure('PASID extended capability', [
  EXTENDED_HEADER,
  { key: 'capability', spec: 'PASID Capability Register', offset: 4, width: 2 },
  { key: 'control', spec: 'PASID Control Register', offset: 6, width: 2, writable: PASID_CONTROL.writable },
]);

/** Device Serial Number extended capability (PCIe Base spec): a read-only 64-bit EUI-64 in two dwords. */
export const SERIAL_NUMBER_STRUCTURE = defineConfigStructure('Device Serial Number extended capability', [
  EXTENDED_HEADER,
  { key: 'serialLow', spec: 'Serial Number Register (Lower DW)', offset: 4, width: 4 },
  { key: 'serialHigh', spec: 'Serial Number Register (Upper DW)', offset: 8, width: 4 },
]);

export const PCI_EXTENDED_CAPABILITIES = defineIdTable('PCI Express extended capability', [
  { value: 0x0001, name: 'Advanced Error Reporting' },
  { value: 0x0002, name: 'Virtual Channel' },
  { key: 'SERIAL_NUMBER', value: 0x0003, name: 'Device Serial Number' },
  { value: 0x0004, name: 'Power Budgeting' },
  { value: 0x000b, name: 'Vendor Specific Information' },
  { value: 0x000d, name: 'Access Control Services' },
  { value: 0x000e, name: 'Alternative Routing-ID Interpretation' },
  { value: 0x000f, name: 'Address Translation Service' },
  { value: 0x0010, name: 'Single Root I/O Virtualization' },
  { value: 0x0013, name: 'Page Request Interface' },
  { value: 0x0015, name: 'Resizable BAR' },
  { value: 0x0018, name: 'Latency Tolerance Reporting' },
  { value: 0x0019, name: 'Secondary PCI Express' },
  { key: 'PASID', value: 0x001b, name: 'Process Address Space ID' },
  { value: 0x001e, name: 'L1 PM Substates' },
  { value: 0x0023, name: 'Designated Vendor-Specific' },
  { value: 0x0025, name: 'Data Link Feature' },
  { value: 0x0026, name: 'Physical Layer 16.0 GT/s' },
]);

// ---- class codes ----------------------------------------------------------------------------------------------

/** Base class codes with lspci's names. */
export const PCI_BASE_CLASSES = defineIdTable('PCI base class', [
  { value: 0x00, name: 'Unclassified device' },
  { value: 0x01, name: 'Mass storage controller' },
  { value: 0x02, name: 'Network controller' },
  { value: 0x03, name: 'Display controller' },
  { value: 0x04, name: 'Multimedia controller' },
  { value: 0x05, name: 'Memory controller' },
  { value: 0x06, name: 'Bridge' },
  { value: 0x07, name: 'Communication controller' },
  { value: 0x08, name: 'Generic system peripheral' },
  { value: 0x09, name: 'Input device controller' },
  { value: 0x0a, name: 'Docking station' },
  { value: 0x0b, name: 'Processor' },
  { value: 0x0c, name: 'Serial bus controller' },
  { value: 0x0d, name: 'Wireless controller' },
  { value: 0x0e, name: 'Intelligent controller' },
  { value: 0x0f, name: 'Satellite communications controller' },
  { value: 0x10, name: 'Encryption controller' },
  { value: 0x11, name: 'Signal processing controller' },
  { value: 0x12, name: 'Processing accelerators' },
  { value: 0x13, name: 'Non-Essential Instrumentation' },
  { value: 0xff, name: 'Unassigned class' },
]);
