/** PCI configuration space as a probe sees it: the type-0 header table, BAR decoding and a loop-safe capability walk. */

import { defineFlags, defineNumbers, defineStruct } from '../layout';

export const PCI_HEADER_SIZE = 64;
/** Conventional configuration space; extended capabilities live from here to 4 KiB. */
export const PCI_CONFIG_SIZE = 256;
export const PCI_EXTENDED_CONFIG_SIZE = 4096;

export const PCI_TYPE0_HEADER = defineStruct(
  'PCI type 0 configuration header',
  [
    { key: 'vendorId', spec: 'Vendor ID', offset: 0x00, width: 2 },
    { key: 'deviceId', spec: 'Device ID', offset: 0x02, width: 2 },
    { key: 'command', spec: 'Command', offset: 0x04, width: 2 },
    { key: 'status', spec: 'Status', offset: 0x06, width: 2 },
    { key: 'revisionId', spec: 'Revision ID', offset: 0x08, width: 1 },
    { key: 'progIf', spec: 'Programming Interface', offset: 0x09, width: 1 },
    { key: 'subclass', spec: 'Sub Class Code', offset: 0x0a, width: 1 },
    { key: 'baseClass', spec: 'Base Class Code', offset: 0x0b, width: 1 },
    { key: 'cacheLineSize', spec: 'Cache Line Size', offset: 0x0c, width: 1 },
    { key: 'latencyTimer', spec: 'Latency Timer', offset: 0x0d, width: 1 },
    { key: 'headerType', spec: 'Header Type', offset: 0x0e, width: 1 },
    { key: 'bist', spec: 'BIST', offset: 0x0f, width: 1 },
    { key: 'bar0', spec: 'Base Address 0', offset: 0x10, width: 4 },
    { key: 'bar1', spec: 'Base Address 1', offset: 0x14, width: 4 },
    { key: 'bar2', spec: 'Base Address 2', offset: 0x18, width: 4 },
    { key: 'bar3', spec: 'Base Address 3', offset: 0x1c, width: 4 },
    { key: 'bar4', spec: 'Base Address 4', offset: 0x20, width: 4 },
    { key: 'bar5', spec: 'Base Address 5', offset: 0x24, width: 4 },
    { key: 'cardbusCis', spec: 'Cardbus CIS Pointer', offset: 0x28, width: 4 },
    { key: 'subsystemVendorId', spec: 'Subsystem Vendor ID', offset: 0x2c, width: 2 },
    { key: 'subsystemId', spec: 'Subsystem ID', offset: 0x2e, width: 2 },
    { key: 'romBase', spec: 'Expansion ROM Base Address', offset: 0x30, width: 4 },
    { key: 'capabilitiesPointer', spec: 'Capabilities Pointer', offset: 0x34, width: 1 },
    { key: 'interruptLine', spec: 'Interrupt Line', offset: 0x3c, width: 1 },
    { key: 'interruptPin', spec: 'Interrupt Pin', offset: 0x3d, width: 1 },
    { key: 'minGnt', spec: 'Min_Gnt', offset: 0x3e, width: 1 },
    { key: 'maxLat', spec: 'Max_Lat', offset: 0x3f, width: 1 },
  ],
  PCI_HEADER_SIZE,
);
export type PciHeader = ReturnType<typeof PCI_TYPE0_HEADER.decode>;
export const BAR_KEYS = ['bar0', 'bar1', 'bar2', 'bar3', 'bar4', 'bar5'] as const;

/** Command register bits, in lspci's order, keyed by lspci's labels. */
export const PCI_COMMAND = defineFlags('PCI command', {
  'I/O': 0x1,
  Mem: 0x2,
  BusMaster: 0x4,
  SpecCycle: 0x8,
  MemWINV: 0x10,
  VGASnoop: 0x20,
  ParErr: 0x40,
  Stepping: 0x80,
  SERR: 0x100,
  FastB2B: 0x200,
  DisINTx: 0x400,
});

/** Status register bits keyed by lspci's labels; DEVSEL is a 2-bit timing field, INTx comes last in lspci. */
export const PCI_STATUS = defineFlags('PCI status', {
  Cap: 0x10,
  '66MHz': 0x20,
  UDF: 0x40,
  FastB2B: 0x80,
  ParErr: 0x100,
  DEVSEL: 0x600,
  '>TAbort': 0x800,
  '<TAbort': 0x1000,
  '<MAbort': 0x2000,
  '>SERR': 0x4000,
  '<PERR': 0x8000,
  INTx: 0x8,
});
export const DEVSEL_TIMINGS = ['fast', 'medium', 'slow', 'unknown'] as const;

/** Base Address Register low bits. */
export const PCI_BAR_BITS = defineFlags('PCI BAR', { IO_SPACE: 0x1, MEMORY_TYPE: 0x6, PREFETCHABLE: 0x8 });
export const PCI_BAR_MEMORY_TYPES = defineNumbers('PCI BAR memory type', { BITS_32: 0, BELOW_1M: 1, BITS_64: 2 });
const IO_ADDRESS_MASK = 0xfffffffc;
const MEMORY_ADDRESS_MASK = 0xfffffff0;

export const PCI_CLASS_NAMES = defineNumbers('PCI base class', {
  'Unclassified device': 0x00,
  'Mass storage controller': 0x01,
  'Network controller': 0x02,
  'Display controller': 0x03,
  'Multimedia controller': 0x04,
  'Memory controller': 0x05,
  Bridge: 0x06,
  'Communication controller': 0x07,
  'Generic system peripheral': 0x08,
  'Input device controller': 0x09,
  'Docking station': 0x0a,
  Processor: 0x0b,
  'Serial bus controller': 0x0c,
  'Wireless controller': 0x0d,
  'Intelligent controller': 0x0e,
  'Satellite communications controller': 0x0f,
  'Encryption controller': 0x10,
  'Signal processing controller': 0x11,
  'Processing accelerators': 0x12,
  'Non-Essential Instrumentation': 0x13,
  'Unassigned class': 0xff,
});

export const PCI_CAPABILITY_IDS = defineNumbers('PCI capability', {
  'Power Management': 0x01,
  AGP: 0x02,
  'Vital Product Data': 0x03,
  'Slot Identification': 0x04,
  MSI: 0x05,
  'CompactPCI hot-swap': 0x06,
  'PCI-X': 0x07,
  HyperTransport: 0x08,
  'Vendor Specific Information': 0x09,
  'Debug port': 0x0a,
  'CompactPCI central resource control': 0x0b,
  'PCI Standard Hot-Plug Controller': 0x0c,
  'Subsystem vendor ID': 0x0d,
  'AGP 8x': 0x0e,
  'Secure device': 0x0f,
  Express: 0x10,
  'MSI-X': 0x11,
  'SATA HBA': 0x12,
  'PCI Advanced Features': 0x13,
  'Enhanced Allocation': 0x14,
  'Flattening Portal Bridge': 0x15,
});

export const PCI_EXTENDED_CAPABILITY_IDS = defineNumbers('PCI Express extended capability', {
  'Advanced Error Reporting': 0x0001,
  'Virtual Channel': 0x0002,
  'Device Serial Number': 0x0003,
  'Power Budgeting': 0x0004,
  'Vendor Specific Information': 0x000b,
  'Access Control Services': 0x000d,
  'Alternative Routing-ID Interpretation': 0x000e,
  'Address Translation Service': 0x000f,
  'Single Root I/O Virtualization': 0x0010,
  'Page Request Interface': 0x0013,
  'Resizable BAR': 0x0015,
  'Latency Tolerance Reporting': 0x0018,
  'Secondary PCI Express': 0x0019,
  'Process Address Space ID': 0x001b,
  'L1 PM Substates': 0x001e,
  'Designated Vendor-Specific': 0x0023,
  'Data Link Feature': 0x0025,
  'Physical Layer 16.0 GT/s': 0x0026,
});

/** Fields of the capabilities we decode further, at their offsets from the capability's start. */
export const MSI_CAPABILITY = defineStruct('MSI capability', [
  { key: 'id', spec: 'Capability ID', offset: 0, width: 1 },
  { key: 'next', spec: 'Next Pointer', offset: 1, width: 1 },
  { key: 'control', spec: 'Message Control', offset: 2, width: 2 },
]);
export const MSI_CONTROL = defineFlags('MSI message control', {
  ENABLE: 0x1,
  MULTIPLE_CAPABLE: 0xe,
  MULTIPLE_ENABLE: 0x70,
  ADDRESS_64: 0x80,
  PER_VECTOR_MASK: 0x100,
});
export const MSIX_CAPABILITY = defineStruct('MSI-X capability', [
  { key: 'id', spec: 'Capability ID', offset: 0, width: 1 },
  { key: 'next', spec: 'Next Pointer', offset: 1, width: 1 },
  { key: 'control', spec: 'Message Control', offset: 2, width: 2 },
  { key: 'table', spec: 'Table Offset/Table BIR', offset: 4, width: 4 },
  { key: 'pba', spec: 'PBA Offset/PBA BIR', offset: 8, width: 4 },
]);
export const MSIX_CONTROL = defineFlags('MSI-X message control', { TABLE_SIZE: 0x7ff, FUNCTION_MASK: 0x4000, ENABLE: 0x8000 });
const BIR_MASK = 0x7;
export const PM_CAPABILITY = defineStruct('Power Management capability', [
  { key: 'id', spec: 'Capability ID', offset: 0, width: 1 },
  { key: 'next', spec: 'Next Pointer', offset: 1, width: 1 },
  { key: 'capabilities', spec: 'PMC', offset: 2, width: 2 },
]);
const PM_VERSION_MASK = 0x7;
export const EXPRESS_CAPABILITY = defineStruct('PCI Express capability', [
  { key: 'id', spec: 'Capability ID', offset: 0, width: 1 },
  { key: 'next', spec: 'Next Pointer', offset: 1, width: 1 },
  { key: 'capabilities', spec: 'PCI Express Capabilities Register', offset: 2, width: 2 },
]);
export const EXPRESS_CAPABILITIES = defineFlags('PCI Express capabilities', { VERSION: 0xf, PORT_TYPE: 0xf0, SLOT: 0x100, INTERRUPT_MESSAGE: 0x3e00 });
export const EXPRESS_PORT_TYPES = defineNumbers('PCI Express port type', {
  Endpoint: 0,
  'Legacy Endpoint': 1,
  'Root Port': 4,
  'Upstream Port': 5,
  'Downstream Port': 6,
  'PCI-Express to PCI/PCI-X Bridge': 7,
  'PCI/PCI-X to PCI-Express Bridge': 8,
  'Root Complex Integrated Endpoint': 9,
  'Root Complex Event Collector': 10,
});
export const VENDOR_CAPABILITY = defineStruct('Vendor Specific capability', [
  { key: 'id', spec: 'Capability ID', offset: 0, width: 1 },
  { key: 'next', spec: 'Next Pointer', offset: 1, width: 1 },
  { key: 'length', spec: 'Capability Length', offset: 2, width: 1 },
]);
/** Extended capability header: ID 15:0, version 19:16, next 31:20. */
export const EXTENDED_CAPABILITY_HEADER = defineFlags('PCI Express extended capability header', { ID: 0xffff, VERSION: 0xf0000, NEXT: 0xfff00000 });

const CAPABILITY_POINTER_MASK = 0xfc;

/** The value of a multi-bit field of `value` described by `mask`. */
export function field(value: number, mask: number): number {
  const shift = Math.log2(mask & -mask);
  return ((value & mask) >>> 0) / 2 ** shift;
}

export interface PciBar {
  readonly index: number;
  readonly raw: number;
  readonly kind: 'io' | 'memory';
  /** 32 or 64 for memory BARs; a 64-bit BAR takes the next register for its upper half. */
  readonly width: 32 | 64 | undefined;
  readonly prefetchable: boolean;
  readonly address: bigint;
  /** From the vfio-user region of the same index (the probe never sizes BARs by writing them). */
  readonly size: bigint | undefined;
}

export interface PciCapability {
  readonly offset: number;
  readonly id: number;
  readonly name: string | undefined;
  /** The decoded essentials, lspci-style (e.g. "Enable- Count=1/4 Maskable- 64bit+"), when we decode this kind. */
  readonly detail: string | undefined;
  /** Further lines (MSI-X table and PBA locations). */
  readonly extra: readonly string[];
}

export interface PciExtendedCapability {
  readonly offset: number;
  readonly id: number;
  readonly version: number;
  readonly name: string | undefined;
}

export interface PciDescription {
  readonly header: PciHeader;
  readonly bars: readonly PciBar[];
  readonly capabilities: readonly PciCapability[];
  readonly extendedCapabilities: readonly PciExtendedCapability[];
  /** Bytes of configuration space the description is based on. */
  readonly bytesRead: number;
  /** Malformations found (loops, pointers into the header): a hostile or broken device. */
  readonly problems: readonly string[];
  /** Things left undecoded for want of bytes (not a fault of the device). */
  readonly notes: readonly string[];
}

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function hex(value: number, digits = 2): string {
  return value.toString(16).padStart(digits, '0');
}

function onOff(value: boolean): string {
  return value ? '+' : '-';
}

export function decodeBars(header: PciHeader, regionSizes: readonly (bigint | undefined)[]): PciBar[] {
  const bars: PciBar[] = [];
  // Only a type 0 header has six BARs.
  const count = (header.headerType & 0x7f) === 0 ? 6 : 2;
  for (let index = 0; index < count; index++) {
    const raw = header[BAR_KEYS[index]!];
    const size = regionSizes[index];
    // The region's size is the authority (libvfio-user leaves the I/O bit set in BARs it does not implement).
    if (size === 0n || (size === undefined && raw === 0)) continue;
    if ((raw & PCI_BAR_BITS.bits.IO_SPACE) !== 0) {
      bars.push({ index, raw, kind: 'io', width: undefined, prefetchable: false, address: BigInt((raw & IO_ADDRESS_MASK) >>> 0), size });
      continue;
    }
    const is64 = field(raw, PCI_BAR_BITS.bits.MEMORY_TYPE) === PCI_BAR_MEMORY_TYPES.values.BITS_64 && index + 1 < count;
    let address = BigInt((raw & MEMORY_ADDRESS_MASK) >>> 0);
    if (is64) address |= BigInt(header[BAR_KEYS[index + 1]!]) << 32n;
    bars.push({ index, raw, kind: 'memory', width: is64 ? 64 : 32, prefetchable: (raw & PCI_BAR_BITS.bits.PREFETCHABLE) !== 0, address, size });
    if (is64) index++;
  }
  return bars;
}

function describeCapability(bytes: Uint8Array, offset: number, id: number): { detail: string | undefined; extra: string[]; missing: boolean } {
  const view = viewOf(bytes);
  const fits = (size: number) => offset + size <= bytes.length;
  const none = { detail: undefined, extra: [], missing: false };
  switch (id) {
    case PCI_CAPABILITY_IDS.values.MSI: {
      if (!fits(MSI_CAPABILITY.size)) return { ...none, missing: true };
      const { control } = MSI_CAPABILITY.decode(view, offset);
      const enabled = 1 << field(control, MSI_CONTROL.bits.MULTIPLE_ENABLE);
      const capable = 1 << field(control, MSI_CONTROL.bits.MULTIPLE_CAPABLE);
      const bits = MSI_CONTROL.bits;
      return { ...none, detail: `Enable${onOff((control & bits.ENABLE) !== 0)} Count=${enabled}/${capable} Maskable${onOff((control & bits.PER_VECTOR_MASK) !== 0)} 64bit${onOff((control & bits.ADDRESS_64) !== 0)}` };
    }
    case PCI_CAPABILITY_IDS.values['MSI-X']: {
      if (!fits(MSIX_CAPABILITY.size)) return { ...none, missing: true };
      const { control, table, pba } = MSIX_CAPABILITY.decode(view, offset);
      const bits = MSIX_CONTROL.bits;
      const location = (value: number) => `BAR=${value & BIR_MASK} offset=${hex((value & ~BIR_MASK) >>> 0, 8)}`;
      return {
        detail: `Enable${onOff((control & bits.ENABLE) !== 0)} Count=${field(control, bits.TABLE_SIZE) + 1} Masked${onOff((control & bits.FUNCTION_MASK) !== 0)}`,
        extra: [`Vector table: ${location(table)}`, `PBA: ${location(pba)}`],
        missing: false,
      };
    }
    case PCI_CAPABILITY_IDS.values['Power Management']: {
      if (!fits(PM_CAPABILITY.size)) return { ...none, missing: true };
      return { ...none, detail: `version ${PM_CAPABILITY.decode(view, offset).capabilities & PM_VERSION_MASK}` };
    }
    case PCI_CAPABILITY_IDS.values.Express: {
      if (!fits(EXPRESS_CAPABILITY.size)) return { ...none, missing: true };
      const { capabilities } = EXPRESS_CAPABILITY.decode(view, offset);
      const bits = EXPRESS_CAPABILITIES.bits;
      const portType = field(capabilities, bits.PORT_TYPE);
      const portName = EXPRESS_PORT_TYPES.nameOf(portType) ?? `port type ${portType}`;
      return { ...none, detail: `(v${field(capabilities, bits.VERSION)}) ${portName}, MSI ${hex(field(capabilities, bits.INTERRUPT_MESSAGE))}` };
    }
    case PCI_CAPABILITY_IDS.values['Vendor Specific Information']: {
      if (!fits(VENDOR_CAPABILITY.size)) return { ...none, missing: true };
      return { ...none, detail: `Len=${hex(VENDOR_CAPABILITY.decode(view, offset).length)}` };
    }
    default:
      return none;
  }
}

/**
 * Walks the capability list from the header's pointer. Every pointer must lie in [0x40, 0x100) and each offset is
 * visited once, so a hostile list (a loop, a pointer into the header) ends the walk with a problem noted.
 */
function walkCapabilities(bytes: Uint8Array, header: PciHeader, problems: string[], notes: string[]): PciCapability[] {
  const capabilities: PciCapability[] = [];
  if ((header.status & PCI_STATUS.bits.Cap) === 0) return capabilities;
  const visited = new Set<number>();
  let pointer = header.capabilitiesPointer & CAPABILITY_POINTER_MASK;
  let from = 'the capabilities pointer';
  while (pointer !== 0) {
    if (pointer < PCI_HEADER_SIZE) {
      problems.push(`${from} points into the header at 0x${hex(pointer)}`);
      break;
    }
    if (visited.has(pointer)) {
      problems.push(`the capability list loops: ${from} points back to [${hex(pointer)}]`);
      break;
    }
    if (pointer + 2 > bytes.length) {
      notes.push(`capability at [${hex(pointer)}] lies beyond the ${bytes.length} bytes read`);
      break;
    }
    visited.add(pointer);
    const id = bytes[pointer]!;
    const described = describeCapability(bytes, pointer, id);
    if (described.missing) notes.push(`capability at [${hex(pointer)}] is cut short by the ${bytes.length} bytes read`);
    capabilities.push({ offset: pointer, id, name: PCI_CAPABILITY_IDS.nameOf(id), detail: described.detail, extra: described.extra });
    from = `the capability at [${hex(pointer)}]`;
    pointer = bytes[pointer + 1]! & CAPABILITY_POINTER_MASK;
  }
  return capabilities;
}

/** The extended list starts at 0x100; entries are dword-aligned and each offset is visited once. */
function walkExtendedCapabilities(bytes: Uint8Array, problems: string[]): PciExtendedCapability[] {
  const found: PciExtendedCapability[] = [];
  if (bytes.length < PCI_CONFIG_SIZE + 4) return found;
  const view = viewOf(bytes);
  const visited = new Set<number>();
  let offset = PCI_CONFIG_SIZE;
  for (;;) {
    const word = view.getUint32(offset, true);
    if (word === 0 || word === 0xffffffff) break;
    visited.add(offset);
    const id = field(word, EXTENDED_CAPABILITY_HEADER.bits.ID);
    found.push({ offset, id, version: field(word, EXTENDED_CAPABILITY_HEADER.bits.VERSION), name: PCI_EXTENDED_CAPABILITY_IDS.nameOf(id) });
    const next = field(word, EXTENDED_CAPABILITY_HEADER.bits.NEXT) & ~3;
    if (next === 0) break;
    if (next < PCI_CONFIG_SIZE || next + 4 > bytes.length) {
      problems.push(`the extended capability at [${hex(offset, 3)}] points to 0x${hex(next, 3)}, outside the extended space read`);
      break;
    }
    if (visited.has(next)) {
      problems.push(`the extended capability list loops: [${hex(offset, 3)}] points back to [${hex(next, 3)}]`);
      break;
    }
    offset = next;
  }
  return found;
}

/** Decodes as much of configuration space as `bytes` holds (at least the 64-byte header). */
export function describePciConfig(bytes: Uint8Array, regionSizes: readonly (bigint | undefined)[] = []): PciDescription {
  if (bytes.length < PCI_HEADER_SIZE) {
    throw new RangeError(`PCI configuration needs the ${PCI_HEADER_SIZE}-byte header, got ${bytes.length} bytes`);
  }
  const header = PCI_TYPE0_HEADER.decode(viewOf(bytes), 0);
  const problems: string[] = [];
  const notes: string[] = [];
  const capabilities = walkCapabilities(bytes.subarray(0, PCI_CONFIG_SIZE), header, problems, notes);
  const extendedCapabilities = walkExtendedCapabilities(bytes, problems);
  return { header, bars: decodeBars(header, regionSizes), capabilities, extendedCapabilities, bytesRead: bytes.length, problems, notes };
}

/** Whether the capabilities read so far call for the rest of conventional, or extended, configuration space. */
export function wantsMoreConfig(header: PciHeader): boolean {
  return (header.status & PCI_STATUS.bits.Cap) !== 0 && (header.capabilitiesPointer & CAPABILITY_POINTER_MASK) !== 0;
}
