/** PCI configuration space as a probe sees it: BARs sized from the regions and loop-safe capability walks. */

import {
  BAR_KEYS,
  CAPABILITY_AREA,
  CAPABILITY_POINTER_MASK,
  decodeBar,
  EXPRESS_CAPABILITIES,
  EXPRESS_PORT_TYPES,
  EXPRESS_STRUCTURE,
  EXTENDED_CAPABILITY_HEADER,
  HEADER_LAYOUT_MASK,
  MSI_CONTROL,
  MSIX_CONTROL,
  MSIX_LOCATION,
  MSIX_STRUCTURE,
  msiStructure,
  PCI_BAR_COUNT,
  PCI_CAPABILITIES,
  PCI_CAPABILITY_IDS,
  PCI_CONFIG_SIZE,
  PCI_EXTENDED_CAPABILITIES,
  PCI_HEADER_SIZE,
  PCI_STATUS,
  PM_CAPABILITIES,
  PM_STRUCTURE,
  TYPE0_HEADER,
  VENDOR_STRUCTURE,
  type PciHeader,
} from '../../devices/pci-layout';
import { readU32 } from '../../byte-layout';

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

function hex(value: number, digits = 2): string {
  return value.toString(16).padStart(digits, '0');
}

/** lspci's "Label+" or "Label-" for one bit of a register. */
function flag(label: string, register: number, mask: number): string {
  return `${label}${(register & mask) !== 0 ? '+' : '-'}`;
}

export function decodeBars(header: PciHeader, regionSizes: readonly (bigint | undefined)[]): PciBar[] {
  const bars: PciBar[] = [];
  // Only a type 0 header has six BARs.
  const count = (header.headerType & HEADER_LAYOUT_MASK) === 0 ? PCI_BAR_COUNT : 2;
  for (let index = 0; index < count; index++) {
    const raw = header[BAR_KEYS[index]!];
    const size = regionSizes[index];
    // The region's size is the authority (libvfio-user leaves the I/O bit set in BARs it does not implement).
    if (size === 0n || (size === undefined && raw === 0)) continue;
    const bar = decodeBar(raw, index + 1 < count ? header[BAR_KEYS[index + 1]!] : undefined);
    const width = bar.kind === 'io' ? undefined : bar.is64 ? 64 : 32;
    bars.push({ index, raw, kind: bar.kind, width, prefetchable: bar.prefetchable, address: bar.address, size });
    if (bar.is64) index++;
  }
  return bars;
}

interface CapabilityDetail {
  readonly detail: string | undefined;
  readonly extra: readonly string[];
  /** The capability's fields run past the bytes read. */
  readonly missing: boolean;
}

function describeCapability(bytes: Uint8Array, offset: number, id: number): CapabilityDetail {
  const fits = (size: number) => offset + size <= bytes.length;
  const none: CapabilityDetail = { detail: undefined, extra: [], missing: false };
  const cutShort: CapabilityDetail = { ...none, missing: true };
  switch (id) {
    case PCI_CAPABILITY_IDS.MSI: {
      // Every MSI layout starts with the 32-bit one's control word; that is all lspci's summary needs.
      const layout = msiStructure(false, false);
      if (!fits(layout.field('control').offset + 2)) return cutShort;
      const control = layout.decode(bytes, offset).control;
      const enabled = 1 << MSI_CONTROL.get(control, 'MULTIPLE_MESSAGE_ENABLE');
      const capable = 1 << MSI_CONTROL.get(control, 'MULTIPLE_MESSAGE_CAPABLE');
      const { bits } = MSI_CONTROL;
      return {
        ...none,
        detail: `${flag('Enable', control, bits.ENABLE)} Count=${enabled}/${capable} ${flag('Maskable', control, bits.PER_VECTOR_MASKING)} ${flag('64bit', control, bits.ADDRESS_64)}`,
      };
    }
    case PCI_CAPABILITY_IDS.MSIX: {
      if (!fits(MSIX_STRUCTURE.size)) return cutShort;
      const { control, tableOffsetBir, pbaOffsetBir } = MSIX_STRUCTURE.decode(bytes, offset);
      const location = (value: number) => `BAR=${MSIX_LOCATION.get(value, 'BIR')} offset=${hex((value & MSIX_LOCATION.bits.OFFSET) >>> 0, 8)}`;
      const { bits } = MSIX_CONTROL;
      return {
        detail: `${flag('Enable', control, bits.ENABLE)} Count=${MSIX_CONTROL.get(control, 'TABLE_SIZE') + 1} ${flag('Masked', control, bits.FUNCTION_MASK)}`,
        extra: [`Vector table: ${location(tableOffsetBir)}`, `PBA: ${location(pbaOffsetBir)}`],
        missing: false,
      };
    }
    case PCI_CAPABILITY_IDS.POWER_MANAGEMENT: {
      if (!fits(PM_STRUCTURE.size)) return cutShort;
      return { ...none, detail: `version ${PM_CAPABILITIES.get(PM_STRUCTURE.decode(bytes, offset).capabilities, 'VERSION')}` };
    }
    case PCI_CAPABILITY_IDS.PCI_EXPRESS: {
      if (!fits(EXPRESS_STRUCTURE.size)) return cutShort;
      const { capabilities } = EXPRESS_STRUCTURE.decode(bytes, offset);
      const portType = EXPRESS_CAPABILITIES.get(capabilities, 'PORT_TYPE');
      const portName = EXPRESS_PORT_TYPES.nameOf(portType) ?? `port type ${portType}`;
      return {
        ...none,
        detail: `(v${EXPRESS_CAPABILITIES.get(capabilities, 'VERSION')}) ${portName}, MSI ${hex(EXPRESS_CAPABILITIES.get(capabilities, 'INTERRUPT_MESSAGE'))}`,
      };
    }
    case PCI_CAPABILITY_IDS.VENDOR_SPECIFIC: {
      if (!fits(VENDOR_STRUCTURE.size)) return cutShort;
      return { ...none, detail: `Len=${hex(VENDOR_STRUCTURE.decode(bytes, offset).length)}` };
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
  if ((header.status & PCI_STATUS.bits.CAPABILITIES_LIST) === 0) return capabilities;
  const visited = new Set<number>();
  let pointer = header.capabilitiesPointer & CAPABILITY_POINTER_MASK;
  let from = 'the capabilities pointer';
  while (pointer !== 0) {
    if (pointer < CAPABILITY_AREA.start) {
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
    capabilities.push({ offset: pointer, id, name: PCI_CAPABILITIES.nameOf(id), detail: described.detail, extra: described.extra });
    from = `the capability at [${hex(pointer)}]`;
    pointer = bytes[pointer + 1]! & CAPABILITY_POINTER_MASK;
  }
  return capabilities;
}

/** The extended list starts at 0x100; entries are dword-aligned and each offset is visited once. */
function walkExtendedCapabilities(bytes: Uint8Array, problems: string[]): PciExtendedCapability[] {
  const found: PciExtendedCapability[] = [];
  if (bytes.length < PCI_CONFIG_SIZE + 4) return found;
  const visited = new Set<number>();
  let offset = PCI_CONFIG_SIZE;
  for (;;) {
    // readU32 would read bytes past the end as zero: the first offset is checked above, every next one below.
    const word = readU32(bytes, offset);
    if (word === 0 || word === 0xffffffff) break;
    visited.add(offset);
    const id = EXTENDED_CAPABILITY_HEADER.get(word, 'ID');
    found.push({ offset, id, version: EXTENDED_CAPABILITY_HEADER.get(word, 'VERSION'), name: PCI_EXTENDED_CAPABILITIES.nameOf(id) });
    const next = EXTENDED_CAPABILITY_HEADER.get(word, 'NEXT') & ~3;
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
  const header = TYPE0_HEADER.decode(bytes, 0);
  const problems: string[] = [];
  const notes: string[] = [];
  const capabilities = walkCapabilities(bytes.subarray(0, PCI_CONFIG_SIZE), header, problems, notes);
  const extendedCapabilities = walkExtendedCapabilities(bytes, problems);
  return { header, bars: decodeBars(header, regionSizes), capabilities, extendedCapabilities, bytesRead: bytes.length, problems, notes };
}

/** Whether the header announces a capability list, so the rest of conventional space is worth reading. */
export function wantsMoreConfig(header: PciHeader): boolean {
  return (header.status & PCI_STATUS.bits.CAPABILITIES_LIST) !== 0 && (header.capabilitiesPointer & CAPABILITY_POINTER_MASK) !== 0;
}
