/** PciConfigSpace: a type-0 function's configuration space with BAR sizing, command/status, capability and extended capability lists. */
import { readUnsigned } from '../byte-layout';
import { ViommuError } from '../errors';
import { readConfigField, writeConfigField, type ConfigField, type ConfigStructure } from './config-table';
import {
  BAR_KEYS,
  CAPABILITY_AREA,
  EXPRESS_CAPABILITIES,
  EXPRESS_DEVICE_CAPABILITIES_2,
  EXPRESS_ENDPOINT_STRUCTURE,
  EXPRESS_LINK,
  EXPRESS_LINK_CAPABILITIES_2,
  EXTENDED_CAPABILITY_AREA,
  EXTENDED_CAPABILITY_HEADER,
  MSI_CONTROL,
  MSIX_CONTROL,
  MSIX_LOCATION,
  MSIX_STRUCTURE,
  msiStructure,
  PCI_BAR,
  PCI_BAR_COUNT,
  PCI_BAR_FLAG_MASK,
  PCI_BAR_MEMORY_TYPES,
  PCI_CAPABILITY_IDS,
  PCI_COMMAND,
  PCI_CONFIG_SIZE,
  PCI_EXTENDED_CAPABILITIES,
  PCI_EXTENDED_CONFIG_SIZE,
  PCI_ROM_BITS,
  PASID_CAPABILITY,
  PASID_CONTROL,
  PASID_MAX_WIDTH,
  PASID_STRUCTURE,
  PCI_STATUS,
  SERIAL_NUMBER_STRUCTURE,
  readBar,
  TYPE0_HEADER,
} from './pci-layout';

export interface PciIdentity {
  vendorId: number;
  deviceId: number;
  revision?: number;
  /** 24 bits: base class << 16 | sub-class << 8 | programming interface. */
  classCode: number;
  subsystemVendorId?: number;
  subsystemId?: number;
  /** 0 for none, 1..4 for INTA#..INTD# (default INTA#). */
  interruptPin?: number;
}

export type PciBarKind = 'mem32' | 'mem64' | 'io';

export interface PciBarDefinition {
  /** A power of two: at least 16 bytes for memory, 4 for I/O. */
  size: number | bigint;
  kind?: PciBarKind;
  prefetchable?: boolean;
}

export type PciCapabilityDefinition =
  | {
      kind: 'msi';
      /** Vectors the function can use: a power of two up to 32. */
      vectors?: number;
      address64?: boolean;
      perVectorMasking?: boolean;
    }
  | {
      kind: 'msix';
      /** Number of table entries (1..2048). */
      tableSize: number;
      tableBar: number;
      tableOffset: number;
      pbaBar: number;
      pbaOffset: number;
    }
  | {
      /** The PCI Express capability of an endpoint (version 2, a x1 link at 2.5 GT/s). */
      kind: 'express';
      /** Device Capabilities 2 announces End-End TLP Prefixes (what a PASID travels in). */
      endEndTlpPrefix?: boolean;
    };

/** Capabilities of the PCI Express extended list (from 0x100; needs the 4 KiB space). */
export type PciExtendedCapabilityDefinition =
  | {
      /** Process Address Space ID, version 1: the function may tag its requests with a PASID. */
      kind: 'pasid';
      executeSupported?: boolean;
      privilegedSupported?: boolean;
      /** Max PASID Width in bits, 1..20 (default 20). */
      maxPasidWidth?: number;
    }
  | {
      /** Device Serial Number, version 1: a 64-bit EUI-64. */
      kind: 'serial-number';
      serial: bigint;
    };

export interface PciConfigOptions {
  identity: PciIdentity;
  /** BAR0..BAR5; a 64-bit BAR takes the slot after it too, which must stay undefined. */
  bars?: readonly (PciBarDefinition | undefined)[];
  /** Size of the expansion ROM (a power of two of at least 2 KiB), when the function has one. */
  romSize?: number;
  capabilities?: readonly PciCapabilityDefinition[];
  /** Linked from 0x100 in this order; needs `size: 4096`. */
  extendedCapabilities?: readonly PciExtendedCapabilityDefinition[];
  /** 256 (conventional PCI, the default) or 4096 (PCI Express: extended space, zeros where nothing is placed). */
  size?: 256 | 4096;
}

export interface PlacedCapability {
  readonly id: number;
  readonly offset: number;
  readonly structure: ConfigStructure;
}

export interface PlacedExtendedCapability extends PlacedCapability {
  readonly version: number;
}

/** The version each extended capability this builder places has (its header's Capability Version). */
const EXTENDED_CAPABILITY_LAYOUTS = {
  pasid: { id: PCI_EXTENDED_CAPABILITIES.values.PASID, version: 1, structure: PASID_STRUCTURE },
  'serial-number': { id: PCI_EXTENDED_CAPABILITIES.values.SERIAL_NUMBER, version: 1, structure: SERIAL_NUMBER_STRUCTURE },
} as const;

/** What software has programmed into the MSI capability. */
export interface MsiState {
  readonly enabled: boolean;
  /** Vectors software enabled (Multiple Message Enable), at most the capable count. */
  readonly vectorsEnabled: number;
  readonly address: bigint;
  readonly data: number;
  /** With per-vector masking: is this vector masked? */
  masked(vector: number): boolean;
}

/** The PASID capability: what the function supports and what software has enabled. */
export interface PasidState {
  readonly enabled: boolean;
  readonly executeEnabled: boolean;
  readonly privilegedEnabled: boolean;
  readonly executeSupported: boolean;
  readonly privilegedSupported: boolean;
  readonly maxWidth: number;
}

export interface MsixState {
  readonly enabled: boolean;
  readonly functionMasked: boolean;
  readonly tableSize: number;
}

type WriteListener = (offset: number, length: number) => void;

/** PCI Express capability version 2 (PCIe 2.0 on); port type 0: a PCI Express endpoint. */
const EXPRESS_CAPABILITY_VERSION = 2;
const EXPRESS_ENDPOINT = 0;

function configError(message: string): ViommuError {
  return new ViommuError('ERR_PCI_CONFIG', message);
}

function isPowerOfTwo(value: bigint): boolean {
  return value > 0n && (value & (value - 1n)) === 0n;
}

export class PciConfigSpace {
  readonly size: number;
  private readonly bytes: Uint8Array;
  private readonly initial: Uint8Array;
  private readonly writable: Uint8Array;
  private readonly w1c: Uint8Array;
  private readonly placed: PlacedCapability[] = [];
  private readonly placedExtended: PlacedExtendedCapability[] = [];
  private readonly listeners = new Set<WriteListener>();
  private readonly barSizes: (bigint | undefined)[] = [];

  constructor(options: PciConfigOptions) {
    this.size = options.size ?? PCI_CONFIG_SIZE;
    if (this.size !== PCI_CONFIG_SIZE && this.size !== PCI_EXTENDED_CONFIG_SIZE) throw configError(`config space size ${this.size}: use 256 or 4096`);
    this.bytes = new Uint8Array(this.size);
    this.writable = new Uint8Array(this.size);
    this.w1c = new Uint8Array(this.size);
    this.writeIdentity(options.identity);
    this.applyMasks(0, TYPE0_HEADER);
    this.defineBars(options.bars ?? []);
    if (options.romSize !== undefined) this.defineRom(options.romSize);
    this.placeCapabilities(options.capabilities ?? []);
    this.placeExtendedCapabilities(options.extendedCapabilities ?? []);
    this.initial = this.bytes.slice();
  }

  // ---- generic access ---------------------------------------------------------------------------------------

  /** Copies config bytes [offset, offset + into.length) into `into`. */
  read(offset: number, into: Uint8Array): void {
    this.checkRange(offset, into.length);
    into.set(this.bytes.subarray(offset, offset + into.length));
  }

  /** Applies a write byte by byte: read-only bits keep their value, write-1-to-clear bits clear where 1 is written. */
  write(offset: number, data: Uint8Array): void {
    this.checkRange(offset, data.length);
    for (let i = 0; i < data.length; i++) {
      const at = offset + i;
      const value = data[i]!;
      const mask = this.writable[at]!;
      this.bytes[at] = ((this.bytes[at]! & ~mask) | (value & mask)) & ~(value & this.w1c[at]!) & 0xff;
    }
    for (const listener of [...this.listeners]) listener(offset, data.length);
  }

  readU8(offset: number): number {
    return this.readValue(offset, 1);
  }
  readU16(offset: number): number {
    return this.readValue(offset, 2);
  }
  readU32(offset: number): number {
    return this.readValue(offset, 4);
  }

  /** A header field by its table key (e.g. 'command'). */
  header(key: Parameters<typeof TYPE0_HEADER.field>[0]): number {
    return readConfigField(this.bytes, 0, TYPE0_HEADER.field(key));
  }

  /** Called after every software write, with the range written, so the device can react (enables, masks). */
  onWrite(listener: WriteListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Back to the power-on values (a function-level reset). */
  reset(): void {
    this.bytes.set(this.initial);
  }

  /** A copy of the whole space, for snapshots and tests. */
  snapshot(): Uint8Array {
    return this.bytes.slice();
  }

  // ---- header state -----------------------------------------------------------------------------------------

  get command(): number {
    return this.header('command');
  }

  get memoryEnabled(): boolean {
    return (this.command & PCI_COMMAND.bits.MEMORY_SPACE) !== 0;
  }

  get busMasterEnabled(): boolean {
    return (this.command & PCI_COMMAND.bits.BUS_MASTER) !== 0;
  }

  get intxDisabled(): boolean {
    return (this.command & PCI_COMMAND.bits.INTX_DISABLE) !== 0;
  }

  /** Hardware sets the status register's Interrupt Status bit while INTx is asserted. */
  setInterruptStatus(asserted: boolean): void {
    const at = TYPE0_HEADER.field('status').offset;
    this.bytes[at] = asserted ? this.bytes[at]! | PCI_STATUS.bits.INTERRUPT : this.bytes[at]! & ~PCI_STATUS.bits.INTERRUPT;
  }

  /** The size of BAR `index` as declared (undefined for an unused BAR or the upper half of a 64-bit one). */
  barSize(index: number): bigint | undefined {
    return this.barSizes[index];
  }

  /** The address software has programmed into BAR `index` (both halves for a 64-bit BAR). */
  barAddress(index: number): bigint {
    return readBar(this.bytes, index).address;
  }

  // ---- capabilities -----------------------------------------------------------------------------------------

  get capabilities(): readonly PlacedCapability[] {
    return this.placed;
  }

  capability(id: number): PlacedCapability | undefined {
    return this.placed.find((capability) => capability.id === id);
  }

  /** MSI as software has programmed it; undefined when the function has no MSI capability. */
  get msi(): MsiState | undefined {
    const capability = this.capability(PCI_CAPABILITY_IDS.MSI);
    if (capability === undefined) return undefined;
    const fields = capability.structure.decode(this.bytes, capability.offset) as Partial<Record<string, number>>;
    const control = fields.control!;
    const capable = 1 << MSI_CONTROL.get(control, 'MULTIPLE_MESSAGE_CAPABLE');
    const enabledLog2 = MSI_CONTROL.get(control, 'MULTIPLE_MESSAGE_ENABLE');
    const upper = BigInt(fields.upperAddress ?? 0) << 32n;
    const maskBits = fields.maskBits ?? 0;
    return {
      enabled: (control & MSI_CONTROL.bits.ENABLE) !== 0,
      vectorsEnabled: Math.min(capable, 1 << enabledLog2),
      address: upper | BigInt(fields.address!),
      data: fields.data!,
      masked: (vector) => vector < 32 && ((maskBits >>> vector) & 1) === 1,
    };
  }

  /** Records MSI pending bits (with per-vector masking), which software reads and hardware alone changes. */
  setMsiPending(vector: number, pending: boolean): void {
    const capability = this.capability(PCI_CAPABILITY_IDS.MSI);
    if (capability === undefined || !capability.structure.has('pendingBits') || vector < 0 || vector >= 32) return;
    const at = capability.offset + capability.structure.field('pendingBits').offset + (vector >> 3);
    const bit = 1 << (vector & 7);
    this.bytes[at] = pending ? this.bytes[at]! | bit : this.bytes[at]! & ~bit;
  }

  /** The extended capabilities in chain order (the first at 0x100). */
  get extendedCapabilities(): readonly PlacedExtendedCapability[] {
    return this.placedExtended;
  }

  extendedCapability(id: number): PlacedExtendedCapability | undefined {
    return this.placedExtended.find((capability) => capability.id === id);
  }

  /** The PASID capability's state; undefined when the function has none. */
  get pasid(): PasidState | undefined {
    const capability = this.extendedCapability(PCI_EXTENDED_CAPABILITIES.values.PASID);
    if (capability === undefined) return undefined;
    const { capability: supported, control } = PASID_STRUCTURE.decode(this.bytes, capability.offset);
    return {
      enabled: (control & PASID_CONTROL.bits.ENABLE) !== 0,
      executeEnabled: (control & PASID_CONTROL.bits.EXECUTE_ENABLE) !== 0,
      privilegedEnabled: (control & PASID_CONTROL.bits.PRIVILEGED_ENABLE) !== 0,
      executeSupported: (supported & PASID_CAPABILITY.bits.EXECUTE_SUPPORTED) !== 0,
      privilegedSupported: (supported & PASID_CAPABILITY.bits.PRIVILEGED_SUPPORTED) !== 0,
      maxWidth: PASID_CAPABILITY.get(supported, 'MAX_WIDTH'),
    };
  }

  get msix(): MsixState | undefined {
    const capability = this.capability(PCI_CAPABILITY_IDS.MSIX);
    if (capability === undefined) return undefined;
    const control = readConfigField(this.bytes, capability.offset, MSIX_STRUCTURE.field('control'));
    return {
      enabled: (control & MSIX_CONTROL.bits.ENABLE) !== 0,
      functionMasked: (control & MSIX_CONTROL.bits.FUNCTION_MASK) !== 0,
      tableSize: MSIX_CONTROL.get(control, 'TABLE_SIZE') + 1,
    };
  }

  // ---- construction -----------------------------------------------------------------------------------------

  private readValue(offset: number, width: 1 | 2 | 4): number {
    this.checkRange(offset, width);
    return readUnsigned(this.bytes, offset, width);
  }

  private checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || length < 0 || offset + length > this.size) {
      throw configError(`config access of ${length} bytes at ${offset} leaves the ${this.size}-byte space`);
    }
  }

  private put(base: number, field: ConfigField, value: number): void {
    writeConfigField(this.bytes, base, field, value);
  }

  private applyMasks(base: number, structure: ConfigStructure): void {
    for (const field of structure.fields) {
      if (field.writable !== undefined) writeConfigField(this.writable, base, field, field.writable);
      if (field.w1c !== undefined) writeConfigField(this.w1c, base, field, field.w1c);
    }
  }

  private writeIdentity(identity: PciIdentity): void {
    const header = (key: Parameters<typeof TYPE0_HEADER.field>[0], value: number) => this.put(0, TYPE0_HEADER.field(key), value);
    const pin = identity.interruptPin ?? 1;
    if (!Number.isInteger(identity.classCode) || identity.classCode < 0 || identity.classCode > 0xffffff) {
      throw configError(`class code ${identity.classCode} is not a 24-bit number`);
    }
    if (!Number.isInteger(pin) || pin < 0 || pin > 4) throw configError(`interrupt pin ${pin}: use 0 (none) or 1..4 (INTA#..INTD#)`);
    header('vendorId', identity.vendorId);
    header('deviceId', identity.deviceId);
    header('revisionId', identity.revision ?? 0);
    header('programmingInterface', identity.classCode & 0xff);
    header('subClass', (identity.classCode >> 8) & 0xff);
    header('baseClass', (identity.classCode >> 16) & 0xff);
    header('subsystemVendorId', identity.subsystemVendorId ?? 0);
    header('subsystemId', identity.subsystemId ?? 0);
    header('interruptPin', pin);
  }

  /** BAR sizing falls out of the write masks: the address bits below the size are read-only zero. */
  private defineBars(bars: readonly (PciBarDefinition | undefined)[]): void {
    if (bars.length > PCI_BAR_COUNT) throw configError(`a type-0 function has ${PCI_BAR_COUNT} BARs, got ${bars.length}`);
    for (let index = 0; index < PCI_BAR_COUNT; index++) {
      const bar = bars[index];
      if (bar === undefined) continue;
      const field = TYPE0_HEADER.field(BAR_KEYS[index]!);
      const at = field.offset;
      const size = BigInt(bar.size);
      const kind = bar.kind ?? 'mem32';
      if (this.barSizes[index] !== undefined || (index > 0 && bars[index - 1]?.kind === 'mem64')) {
        throw configError(`BAR${index} is the upper half of the 64-bit BAR${index - 1}; leave it undefined`);
      }
      if (!isPowerOfTwo(size) || size < (kind === 'io' ? 4n : 16n))
        throw configError(`BAR${index} size ${size} must be a power of two of at least ${kind === 'io' ? 4 : 16}`);
      if (kind === 'io') {
        if (size > 1n << 16n) throw configError(`I/O BAR${index} of ${size} bytes exceeds the 64 KiB I/O space`);
        this.bytes[at] = PCI_BAR.bits.IO_SPACE;
        writeConfigField(this.writable, 0, field, Number(~(size - 1n) & 0xffffffffn) & ~PCI_BAR_FLAG_MASK.io);
      } else if (kind === 'mem32') {
        if (size > 1n << 31n) throw configError(`32-bit BAR${index} of ${size} bytes: use kind 'mem64'`);
        this.bytes[at] = bar.prefetchable ? PCI_BAR.bits.PREFETCHABLE : 0;
        writeConfigField(this.writable, 0, field, Number(~(size - 1n) & 0xffffffffn) & ~PCI_BAR_FLAG_MASK.memory);
      } else {
        if (index === PCI_BAR_COUNT - 1) throw configError('BAR5 cannot hold a 64-bit BAR: it has no upper half');
        this.bytes[at] = PCI_BAR.place('MEMORY_TYPE', PCI_BAR_MEMORY_TYPES.values.BITS_64) | (bar.prefetchable ? PCI_BAR.bits.PREFETCHABLE : 0);
        const mask = ~(size - 1n) & ((1n << 64n) - 1n);
        writeConfigField(this.writable, 0, field, Number(mask & 0xffffffffn) & ~PCI_BAR_FLAG_MASK.memory);
        writeConfigField(this.writable, 0, TYPE0_HEADER.field(BAR_KEYS[index + 1]!), Number(mask >> 32n));
      }
      this.barSizes[index] = size;
    }
  }

  private defineRom(size: number): void {
    if (!isPowerOfTwo(BigInt(size)) || size < 2048 || size > 2 ** 31) throw configError(`ROM size ${size} must be a power of two from 2 KiB`);
    const mask = ((~(size - 1) & PCI_ROM_BITS.ADDRESS_MASK) | PCI_ROM_BITS.ENABLE) >>> 0;
    writeConfigField(this.writable, 0, TYPE0_HEADER.field('expansionRomBase'), mask);
  }

  /** Lays capabilities out from 0x40, dword aligned, linked through their next pointers from 0x34. */
  private placeCapabilities(capabilities: readonly PciCapabilityDefinition[]): void {
    let at = CAPABILITY_AREA.start;
    let previousNext = TYPE0_HEADER.field('capabilitiesPointer').offset;
    for (const definition of capabilities) {
      const { id, structure } = this.buildCapability(definition);
      if (at + structure.size > CAPABILITY_AREA.end) throw configError(`capabilities do not fit below 0x${CAPABILITY_AREA.end.toString(16)}`);
      if (this.capability(id) !== undefined) throw configError(`capability 0x${id.toString(16)} is listed twice`);
      this.bytes[previousNext] = at;
      this.bytes[at] = id;
      this.applyMasks(at, structure);
      this.fillCapability(definition, at, structure);
      this.placed.push({ id, offset: at, structure });
      previousNext = at + 1;
      at += (structure.size + 3) & ~3;
    }
    if (this.placed.length > 0) this.bytes[TYPE0_HEADER.field('status').offset] |= PCI_STATUS.bits.CAPABILITIES_LIST;
  }

  private buildCapability(definition: PciCapabilityDefinition): { id: number; structure: ConfigStructure } {
    if (definition.kind === 'msi') {
      return { id: PCI_CAPABILITY_IDS.MSI, structure: msiStructure(definition.address64 ?? true, definition.perVectorMasking ?? false) };
    }
    if (definition.kind === 'express') return { id: PCI_CAPABILITY_IDS.PCI_EXPRESS, structure: EXPRESS_ENDPOINT_STRUCTURE };
    return { id: PCI_CAPABILITY_IDS.MSIX, structure: MSIX_STRUCTURE };
  }

  /**
   * Lays extended capabilities out from 0x100, dword aligned. Each header (ID, version, next offset) is read-only;
   * the last one's next offset is 0, which ends the chain.
   */
  private placeExtendedCapabilities(capabilities: readonly PciExtendedCapabilityDefinition[]): void {
    if (capabilities.length === 0) return;
    if (this.size !== PCI_EXTENDED_CONFIG_SIZE)
      throw configError('extended capabilities need the 4096-byte PCI Express configuration space (size: 4096)');
    let at = EXTENDED_CAPABILITY_AREA.start;
    for (const definition of capabilities) {
      const { id, version, structure } = EXTENDED_CAPABILITY_LAYOUTS[definition.kind];
      if (at + structure.size > EXTENDED_CAPABILITY_AREA.end) throw configError('extended capabilities do not fit in the 4 KiB space');
      if (this.extendedCapability(id) !== undefined) throw configError(`extended capability 0x${id.toString(16)} is listed twice`);
      const previous = this.placedExtended[this.placedExtended.length - 1];
      if (previous !== undefined) this.writeExtendedHeader(previous.offset, previous.id, previous.version, at);
      this.writeExtendedHeader(at, id, version, 0);
      this.applyMasks(at, structure);
      if (definition.kind === 'pasid') this.fillPasid(definition, at);
      else this.fillSerialNumber(definition.serial, at);
      this.placedExtended.push({ id, offset: at, structure, version });
      at += (structure.size + 3) & ~3;
    }
  }

  private fillSerialNumber(serial: bigint, at: number): void {
    if (serial < 0n || serial >= 1n << 64n) throw configError(`device serial number ${serial} is not a 64-bit number`);
    this.put(at, SERIAL_NUMBER_STRUCTURE.field('serialLow'), Number(serial & 0xffffffffn));
    this.put(at, SERIAL_NUMBER_STRUCTURE.field('serialHigh'), Number(serial >> 32n));
  }

  private writeExtendedHeader(at: number, id: number, version: number, next: number): void {
    const header =
      (EXTENDED_CAPABILITY_HEADER.place('ID', id) |
        EXTENDED_CAPABILITY_HEADER.place('VERSION', version) |
        EXTENDED_CAPABILITY_HEADER.place('NEXT', next)) >>>
      0;
    this.put(at, PASID_STRUCTURE.field('header'), header);
  }

  private fillPasid(definition: Extract<PciExtendedCapabilityDefinition, { kind: 'pasid' }>, at: number): void {
    const width = definition.maxPasidWidth ?? PASID_MAX_WIDTH;
    if (!Number.isInteger(width) || width < 1 || width > PASID_MAX_WIDTH) throw configError(`Max PASID Width ${width}: use 1..${PASID_MAX_WIDTH}`);
    const execute = definition.executeSupported ?? false;
    const privileged = definition.privilegedSupported ?? false;
    const supported =
      PASID_CAPABILITY.place('MAX_WIDTH', width) |
      (execute ? PASID_CAPABILITY.bits.EXECUTE_SUPPORTED : 0) |
      (privileged ? PASID_CAPABILITY.bits.PRIVILEGED_SUPPORTED : 0);
    this.put(at, PASID_STRUCTURE.field('capability'), supported);
    const control = PASID_STRUCTURE.field('control');
    const writable =
      PASID_CONTROL.bits.ENABLE | (execute ? PASID_CONTROL.bits.EXECUTE_ENABLE : 0) | (privileged ? PASID_CONTROL.bits.PRIVILEGED_ENABLE : 0);
    writeConfigField(this.writable, at, control, writable);
  }

  private fillCapability(definition: PciCapabilityDefinition, at: number, structure: ConfigStructure): void {
    if (definition.kind === 'msi') {
      const vectors = definition.vectors ?? 1;
      const log2 = Math.log2(vectors);
      if (!Number.isInteger(log2) || log2 < 0 || log2 > 5) throw configError(`MSI vectors ${vectors}: use 1, 2, 4, 8, 16 or 32`);
      const control =
        MSI_CONTROL.place('MULTIPLE_MESSAGE_CAPABLE', log2) |
        ((definition.address64 ?? true) ? MSI_CONTROL.bits.ADDRESS_64 : 0) |
        ((definition.perVectorMasking ?? false) ? MSI_CONTROL.bits.PER_VECTOR_MASKING : 0);
      this.put(at, structure.field('control'), control);
      if (structure.has('maskBits'))
        writeConfigField(this.writable, at, structure.field('maskBits'), vectors === 32 ? 0xffffffff : (1 << vectors) - 1);
      return;
    }
    if (definition.kind === 'express') {
      this.fillExpress(definition.endEndTlpPrefix ?? false, at);
      return;
    }
    const { tableSize, tableBar, tableOffset, pbaBar, pbaOffset } = definition;
    if (!Number.isInteger(tableSize) || tableSize < 1 || tableSize > MSIX_CONTROL.bits.TABLE_SIZE + 1)
      throw configError(`MSI-X table size ${tableSize}: use 1..2048`);
    for (const [name, bar, offset] of [
      ['table', tableBar, tableOffset],
      ['PBA', pbaBar, pbaOffset],
    ] as const) {
      if (!Number.isInteger(bar) || bar < 0 || bar >= PCI_BAR_COUNT || this.barSizes[bar] === undefined)
        throw configError(`MSI-X ${name} BAR ${bar} is not a defined BAR`);
      if (!Number.isInteger(offset) || offset < 0 || offset % 8 !== 0 || offset > MSIX_LOCATION.bits.OFFSET)
        throw configError(`MSI-X ${name} offset ${offset} must be qword aligned`);
    }
    this.put(at, structure.field('control'), MSIX_CONTROL.place('TABLE_SIZE', tableSize - 1));
    this.put(at, structure.field('tableOffsetBir'), (tableOffset | MSIX_LOCATION.place('BIR', tableBar)) >>> 0);
    this.put(at, structure.field('pbaOffsetBir'), (pbaOffset | MSIX_LOCATION.place('BIR', pbaBar)) >>> 0);
  }

  /** An endpoint's registers: version 2, one x1 link at 2.5 GT/s; what a port or slot would add stays zero. */
  private fillExpress(endEndTlpPrefix: boolean, at: number): void {
    const field = (key: Parameters<typeof EXPRESS_ENDPOINT_STRUCTURE.field>[0]) => EXPRESS_ENDPOINT_STRUCTURE.field(key);
    this.put(
      at,
      field('capabilities'),
      EXPRESS_CAPABILITIES.place('VERSION', EXPRESS_CAPABILITY_VERSION) | EXPRESS_CAPABILITIES.place('PORT_TYPE', EXPRESS_ENDPOINT),
    );
    const link = EXPRESS_LINK.place('SPEED', 1) | EXPRESS_LINK.place('WIDTH', 1);
    this.put(at, field('linkCapabilities'), link);
    this.put(at, field('linkStatus'), link);
    this.put(at, field('linkCapabilities2'), EXPRESS_LINK_CAPABILITIES_2.bits.SPEED_2_5GT);
    if (endEndTlpPrefix) this.put(at, field('deviceCapabilities2'), EXPRESS_DEVICE_CAPABILITIES_2.bits.END_END_TLP_PREFIX);
  }
}
