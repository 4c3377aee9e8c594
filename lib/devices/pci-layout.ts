/** PCI configuration space described once: the type-0 header and the MSI and MSI-X capabilities, with their write masks. */
import { ViommuError } from '../errors';

export type ConfigWidth = 1 | 2 | 4;

/**
 * One register of a configuration structure, in the PCI spec's terms. `writable` holds the bits software may
 * change and `w1c` the bits a write of 1 clears; every other bit is read-only. Offsets count from the structure's
 * start (the header at 0, a capability wherever it is placed).
 */
export interface ConfigField {
  readonly key: string;
  readonly spec: string;
  readonly offset: number;
  readonly width: ConfigWidth;
  readonly writable?: number;
  readonly w1c?: number;
}

export interface ConfigStructure<K extends string = string> {
  readonly name: string;
  readonly size: number;
  readonly fields: readonly ConfigField[];
  field(key: K): ConfigField;
}

/** Declares a configuration structure; overlapping fields or fields past `size` fail at load time. */
export function defineConfigStructure<const F extends readonly ConfigField[]>(
  name: string,
  fields: F,
  size?: number,
): ConfigStructure<F[number]['key']> {
  const end = fields.reduce((max, field) => Math.max(max, field.offset + field.width), 0);
  const structureSize = size ?? end;
  if (end > structureSize) throw new ViommuError('ERR_PCI_LAYOUT', `${name}: fields end at ${end}, beyond its size ${structureSize}`);
  const sorted = [...fields].sort((a, b) => a.offset - b.offset);
  sorted.forEach((field, i) => {
    const next = sorted[i + 1];
    if (next !== undefined && field.offset + field.width > next.offset) {
      throw new ViommuError('ERR_PCI_LAYOUT', `${name}: ${field.key} overlaps ${next.key}`);
    }
  });
  const byKey = new Map(fields.map((field) => [field.key, field]));
  return {
    name,
    size: structureSize,
    fields,
    field(key) {
      const field = byKey.get(key);
      if (field === undefined) throw new ViommuError('ERR_PCI_LAYOUT', `${name} has no field ${key}`);
      return field;
    },
  };
}

/** Command register bits (PCI Local Bus 3.0, 6.2.2). */
export const PCI_COMMAND = {
  IO_SPACE: 0x1,
  MEMORY_SPACE: 0x2,
  BUS_MASTER: 0x4,
  PARITY_ERROR_RESPONSE: 0x40,
  SERR_ENABLE: 0x100,
  INTX_DISABLE: 0x400,
} as const;

/** Status register bits. */
export const PCI_STATUS = {
  INTERRUPT: 0x8,
  CAPABILITIES_LIST: 0x10,
  MASTER_DATA_PARITY_ERROR: 0x100,
  SIGNALED_TARGET_ABORT: 0x800,
  RECEIVED_TARGET_ABORT: 0x1000,
  RECEIVED_MASTER_ABORT: 0x2000,
  SIGNALED_SYSTEM_ERROR: 0x4000,
  DETECTED_PARITY_ERROR: 0x8000,
} as const;

const COMMAND_WRITABLE = Object.values(PCI_COMMAND).reduce((all, bit) => all | bit, 0);
const STATUS_W1C =
  PCI_STATUS.MASTER_DATA_PARITY_ERROR |
  PCI_STATUS.SIGNALED_TARGET_ABORT |
  PCI_STATUS.RECEIVED_TARGET_ABORT |
  PCI_STATUS.RECEIVED_MASTER_ABORT |
  PCI_STATUS.SIGNALED_SYSTEM_ERROR |
  PCI_STATUS.DETECTED_PARITY_ERROR;

export const PCI_BAR_COUNT = 6;

/**
 * The type-0 header (PCI Local Bus 3.0, figure 6-1). BAR and expansion ROM write masks depend on the sizes a
 * device declares, so the config-space builder computes them; the table gives their place.
 */
export const TYPE0_HEADER = defineConfigStructure(
  'type-0 header',
  [
    { key: 'vendorId', spec: 'Vendor ID', offset: 0x00, width: 2 },
    { key: 'deviceId', spec: 'Device ID', offset: 0x02, width: 2 },
    { key: 'command', spec: 'Command', offset: 0x04, width: 2, writable: COMMAND_WRITABLE },
    { key: 'status', spec: 'Status', offset: 0x06, width: 2, w1c: STATUS_W1C },
    { key: 'revisionId', spec: 'Revision ID', offset: 0x08, width: 1 },
    { key: 'programmingInterface', spec: 'Class Code (programming interface)', offset: 0x09, width: 1 },
    { key: 'subClass', spec: 'Class Code (sub-class)', offset: 0x0a, width: 1 },
    { key: 'baseClass', spec: 'Class Code (base class)', offset: 0x0b, width: 1 },
    { key: 'cacheLineSize', spec: 'Cache Line Size', offset: 0x0c, width: 1, writable: 0xff },
    { key: 'latencyTimer', spec: 'Latency Timer', offset: 0x0d, width: 1, writable: 0xff },
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
  0x40,
);

/** Where capabilities may live: after the header, inside the 256-byte PCI-compatible space, dword aligned. */
export const CAPABILITY_AREA = { start: 0x40, end: 0x100 } as const;

/** Low bits of a BAR that say what it is (read-only). */
export const PCI_BAR_BITS = { IO_SPACE: 0x1, MEMORY_TYPE_64: 0x4, PREFETCHABLE: 0x8 } as const;
/** The bits below the address in a memory BAR and an I/O BAR. */
export const PCI_BAR_FLAG_MASK = { memory: 0xf, io: 0x3 } as const;
export const PCI_ROM_BITS = { ENABLE: 0x1, ADDRESS_MASK: 0xfffff800 } as const;

export const PCI_CAPABILITY_IDS = { POWER_MANAGEMENT: 0x01, MSI: 0x05, VENDOR_SPECIFIC: 0x09, PCI_EXPRESS: 0x10, MSIX: 0x11 } as const;

/** Fields every capability starts with. */
export const CAPABILITY_HEADER = defineConfigStructure('capability header', [
  { key: 'id', spec: 'Capability ID', offset: 0, width: 1 },
  { key: 'next', spec: 'Next Capability Pointer', offset: 1, width: 1 },
]);

/** MSI Message Control bits (PCI Local Bus 3.0, 6.8.1.3). */
export const MSI_CONTROL = {
  ENABLE: 0x1,
  MULTIPLE_MESSAGE_CAPABLE: 0xe,
  MULTIPLE_MESSAGE_ENABLE: 0x70,
  ADDRESS_64: 0x80,
  PER_VECTOR_MASKING: 0x100,
} as const;
export const MSI_MULTIPLE_MESSAGE_CAPABLE_SHIFT = 1;
export const MSI_MULTIPLE_MESSAGE_ENABLE_SHIFT = 4;

const MSI_CONTROL_WRITABLE = MSI_CONTROL.ENABLE | MSI_CONTROL.MULTIPLE_MESSAGE_ENABLE;
/** The message address is dword aligned: its two low bits are read-only zero. */
const MSI_ADDRESS_WRITABLE = 0xfffffffc;

/**
 * The four MSI layouts (32- or 64-bit address, with or without per-vector masking). The mask register's writable
 * bits depend on the number of vectors, so the builder narrows it.
 */
export function msiStructure(address64: boolean, perVectorMasking: boolean) {
  const dataAt = address64 ? 0x0c : 0x08;
  const maskAt = address64 ? 0x10 : 0x0c;
  return defineConfigStructure(`MSI capability (${address64 ? '64' : '32'}-bit${perVectorMasking ? ', per-vector masking' : ''})`, [
    { key: 'id', spec: 'Capability ID', offset: 0, width: 1 },
    { key: 'next', spec: 'Next Capability Pointer', offset: 1, width: 1 },
    { key: 'control', spec: 'Message Control', offset: 2, width: 2, writable: MSI_CONTROL_WRITABLE },
    { key: 'address', spec: 'Message Address', offset: 4, width: 4, writable: MSI_ADDRESS_WRITABLE },
    ...(address64 ? [{ key: 'upperAddress', spec: 'Message Upper Address', offset: 8, width: 4, writable: 0xffffffff } as const] : []),
    { key: 'data', spec: 'Message Data', offset: dataAt, width: 2, writable: 0xffff },
    ...(perVectorMasking
      ? [
          { key: 'maskBits', spec: 'Mask Bits', offset: maskAt, width: 4, writable: 0xffffffff } as const,
          { key: 'pendingBits', spec: 'Pending Bits', offset: maskAt + 4, width: 4 } as const,
        ]
      : []),
  ], perVectorMasking ? maskAt + 8 : dataAt + 2);
}

/** MSI-X Message Control bits (PCI Local Bus 3.0, 6.8.2.3). */
export const MSIX_CONTROL = { TABLE_SIZE: 0x7ff, FUNCTION_MASK: 0x4000, ENABLE: 0x8000 } as const;
/** Table Offset/BIR and PBA Offset/BIR: BAR indicator in bits 2:0, a qword-aligned offset above. */
export const MSIX_BIR_MASK = 0x7;

export const MSIX_STRUCTURE = defineConfigStructure('MSI-X capability', [
  { key: 'id', spec: 'Capability ID', offset: 0, width: 1 },
  { key: 'next', spec: 'Next Capability Pointer', offset: 1, width: 1 },
  { key: 'control', spec: 'Message Control', offset: 2, width: 2, writable: MSIX_CONTROL.FUNCTION_MASK | MSIX_CONTROL.ENABLE },
  { key: 'tableOffsetBir', spec: 'Table Offset/Table BIR', offset: 4, width: 4 },
  { key: 'pbaOffsetBir', spec: 'PBA Offset/PBA BIR', offset: 8, width: 4 },
]);

/** One MSI-X table entry (16 bytes) and the vector control bit. */
export const MSIX_TABLE_ENTRY = defineConfigStructure('MSI-X table entry', [
  { key: 'addressLow', spec: 'Message Address', offset: 0, width: 4, writable: 0xfffffffc },
  { key: 'addressHigh', spec: 'Message Upper Address', offset: 4, width: 4, writable: 0xffffffff },
  { key: 'data', spec: 'Message Data', offset: 8, width: 4, writable: 0xffffffff },
  { key: 'vectorControl', spec: 'Vector Control', offset: 12, width: 4, writable: 0x1 },
]);
export const MSIX_VECTOR_MASKED = 0x1;

/** Reads one field of a structure placed at `base` in `bytes` (little-endian). */
export function readConfigField(bytes: Uint8Array, base: number, field: ConfigField): number {
  let value = 0;
  for (let i = field.width - 1; i >= 0; i--) value = value * 256 + (bytes[base + field.offset + i] ?? 0);
  return value;
}

/** Decodes every field of a structure placed at `base` (for probes and renderers). */
export function decodeConfigStructure(bytes: Uint8Array, base: number, structure: ConfigStructure): Record<string, number> {
  return Object.fromEntries(structure.fields.map((field) => [field.key, readConfigField(bytes, base, field)]));
}
