/**
 * A PCI Express DMA engine whose transfers may carry a PASID: the sample device behind PASID-tagged DMA. It has the
 * PCIe PASID extended capability, and tags a request only as far as software enabled it there.
 */
import { DmaFault, isPromiseLike, type AsyncDmaSpace } from '../memory';
import { defineConfigBits, defineConfigStructure, defineIdTable, readConfigField, type ConfigField } from './config-table';
import { PciConfigSpace, type PciCapabilityDefinition, type PciExtendedCapabilityDefinition } from './pci-config-space';
import type { AccessSize, MmioHandler } from './register-access';
import { ERRNO } from '../errno';

/**
 * The engine's PCI identity. 1af4:10f0 lies in the range QEMU's docs/specs/pci-ids.rst leaves "available for
 * experimental usage without registration" (1af4:10f0-10ff, Red Hat's donated vendor id): no shipped device and no
 * guest driver claims it (Linux's virtio-pci binds 1af4 device ids up to 0x107f only). Class 0x0880: system
 * peripheral, other.
 */
export const PASID_ENGINE_PCI_IDENTITY = {
  vendorId: 0x1af4,
  deviceId: 0x10f0,
  revision: 1,
  classCode: 0x088000,
  interruptPin: 1,
} as const;

/** A PCI Express endpoint announcing End-End TLP Prefixes (the PASID's carrier), and one 64-bit MSI vector. */
export const PASID_ENGINE_PCI_CAPABILITIES: readonly PciCapabilityDefinition[] = [
  { kind: 'express', endEndTlpPrefix: true },
  { kind: 'msi', vectors: 1, address64: true, perVectorMasking: false },
];
/** PASID version 1 with every optional mode: privileged and execute requests, the full 20-bit width. */
export const PASID_ENGINE_EXTENDED_CAPABILITIES: readonly PciExtendedCapabilityDefinition[] = [
  { kind: 'pasid', executeSupported: true, privilegedSupported: true, maxPasidWidth: 20 },
];

/** BAR0: the registers at 0, the engine's 4 KiB buffer at BUFFER_OFFSET. */
export const PASID_ENGINE_BAR_SIZE = 0x2000;
export const PASID_ENGINE_BUFFER_OFFSET = 0x1000;
export const PASID_ENGINE_BUFFER_SIZE = 0x1000;
/** What the identification register reads: device id, then the register interface's revision. */
export const PASID_ENGINE_IDENTIFICATION = ((PASID_ENGINE_PCI_IDENTITY.deviceId << 16) | 0x0001) >>> 0;

/**
 * The descriptor's PASID register: the PASID and the PASID TLP prefix's flags. Privileged and execute travel in
 * that prefix, so they mean nothing without PASID valid (such a descriptor is refused).
 */
export const ENGINE_PASID_TAG = defineConfigBits('PASID engine tag', [
  { key: 'PASID', mask: 0xfffff, writable: true },
  { key: 'EXECUTE', mask: 0x20000000, label: 'Exe', writable: true },
  { key: 'PRIVILEGED', mask: 0x40000000, label: 'Priv', writable: true },
  { key: 'VALID', mask: 0x80000000, label: 'PASID', writable: true },
]);

/** The control register: which way the transfer goes, and whether its end raises an interrupt. */
export const ENGINE_CONTROL = defineConfigBits('PASID engine control', [
  { key: 'DIRECTION', mask: 0x3, writable: true },
  { key: 'INTERRUPT', mask: 0x100, label: 'IRQ', writable: true },
]);
/**
 * FROM_MEMORY reads `length` bytes at IOVA `source` into the buffer at offset `destination`; TO_MEMORY writes the
 * buffer from offset `source` to IOVA `destination`; COPY reads at IOVA `source` and writes at IOVA `destination`,
 * both with the same tag.
 */
export const ENGINE_DIRECTIONS = defineIdTable('PASID engine direction', [
  { key: 'FROM_MEMORY', value: 0, name: 'memory to buffer' },
  { key: 'TO_MEMORY', value: 1, name: 'buffer to memory' },
  { key: 'COPY', value: 2, name: 'memory to memory' },
]);

export const ENGINE_DOORBELL = defineConfigBits('PASID engine doorbell', [{ key: 'RUN', mask: 0x1 }]);

/** Status: busy while a transfer runs; done or error (write 1 to clear) once it ended; why, when it failed. */
export const ENGINE_STATUS = defineConfigBits('PASID engine status', [
  { key: 'BUSY', mask: 0x1 },
  { key: 'DONE', mask: 0x2, w1c: true },
  { key: 'ERROR', mask: 0x4, w1c: true },
  { key: 'ERROR_KIND', mask: 0xff00 },
  { key: 'ERRNO', mask: 0xff0000 },
]);
/** ERROR_KIND values. A refused descriptor issues no request at all; a DMA fault is the IOMMU's (ERRNO says which). */
export const ENGINE_ERRORS = defineIdTable('PASID engine error', [
  { key: 'NONE', value: 0, name: 'none' },
  { key: 'BUS_MASTER_DISABLED', value: 1, name: 'Bus Master Enable is clear in the command register' },
  { key: 'PASID_DISABLED', value: 2, name: 'PASID Enable is clear in the PASID Control register' },
  { key: 'PRIVILEGED_DISABLED', value: 3, name: 'Privileged Mode Enable is clear in the PASID Control register' },
  { key: 'EXECUTE_DISABLED', value: 4, name: 'Execute Permission Enable is clear in the PASID Control register' },
  { key: 'BAD_DESCRIPTOR', value: 5, name: 'the descriptor is malformed (length, buffer window, direction or flags)' },
  { key: 'DMA_FAULT', value: 6, name: 'the DMA request failed' },
]);
type EngineErrorKey = keyof typeof ENGINE_ERRORS.values;

/** The register window, in the same table shape as configuration space (write and write-1-to-clear masks). */
export const ENGINE_REGISTERS = defineConfigStructure('PASID engine registers', [
  { key: 'identification', spec: 'Identification', offset: 0x00, width: 4 },
  { key: 'sourceLow', spec: 'Source address [31:0]', offset: 0x08, width: 4, writable: 0xffffffff },
  { key: 'sourceHigh', spec: 'Source address [63:32]', offset: 0x0c, width: 4, writable: 0xffffffff },
  { key: 'destinationLow', spec: 'Destination address [31:0]', offset: 0x10, width: 4, writable: 0xffffffff },
  { key: 'destinationHigh', spec: 'Destination address [63:32]', offset: 0x14, width: 4, writable: 0xffffffff },
  { key: 'length', spec: 'Length in bytes', offset: 0x18, width: 4, writable: 0xffffffff },
  { key: 'pasidTag', spec: 'PASID and flags', offset: 0x1c, width: 4, writable: ENGINE_PASID_TAG.writable },
  { key: 'control', spec: 'Control', offset: 0x20, width: 4, writable: ENGINE_CONTROL.writable },
  { key: 'doorbell', spec: 'Doorbell (reads 0)', offset: 0x24, width: 4 },
  { key: 'status', spec: 'Status', offset: 0x28, width: 4, w1c: ENGINE_STATUS.w1c },
]);
type RegisterKey = Parameters<typeof ENGINE_REGISTERS.field>[0];
/** Register offsets, for drivers and tests that program the engine. */
export const PASID_ENGINE_REGISTERS = Object.fromEntries(ENGINE_REGISTERS.fields.map((field) => [field.key, field.offset])) as Record<
  RegisterKey,
  number
>;

/** The descriptor registers, frozen while a transfer runs. */
const DESCRIPTOR_START = ENGINE_REGISTERS.field('sourceLow').offset;
const DESCRIPTOR_END = ENGINE_REGISTERS.field('doorbell').offset;

/** What a request with PASID carries: the PASID, and privileged-mode and execute requested. */
export interface EngineTag {
  readonly pasid: number;
  readonly supervisor?: boolean;
  readonly execute?: boolean;
}

/**
 * What the engine needs of its VMM: a plain DMA view, one per PASID tag, and MSI delivery. AttachedDevice
 * (lib/vtd/embedding.ts) is one.
 */
export interface PasidDmaPort {
  readonly dma: AsyncDmaSpace;
  pasidDma(tag: EngineTag): AsyncDmaSpace;
  interrupt(address: bigint, data: number): unknown;
}

export interface PasidDmaOutcome {
  readonly direction: number;
  readonly source: bigint;
  readonly destination: bigint;
  readonly length: number;
  /** The tag the requests carried; absent for requests without PASID. */
  readonly tag?: EngineTag;
  /** ERROR_KIND's key; 'NONE' when the transfer completed. */
  readonly error: EngineErrorKey;
  readonly errno?: number;
  /** The DMA failure itself (a DmaFault from the IOMMU), when there was one. */
  readonly fault?: Error;
}

export interface PasidDmaEngineOptions {
  /** The INTx line, used while MSI is off: true while a completion with IRQ set is unacknowledged. */
  onIntx?: (asserted: boolean) => void;
  onTransfer?: (outcome: PasidDmaOutcome) => void;
}

/** What a descriptor check found: the tag to send (none: a request without PASID), or why nothing is sent. */
type Checked = { readonly tag: EngineTag | undefined } | { readonly refused: EngineErrorKey };

export class PasidDmaEngine implements MmioHandler {
  /** Its 4 KiB PCI Express configuration space: the VMM routes config accesses here. */
  readonly config = new PciConfigSpace({
    identity: PASID_ENGINE_PCI_IDENTITY,
    bars: [{ size: PASID_ENGINE_BAR_SIZE }],
    capabilities: PASID_ENGINE_PCI_CAPABILITIES,
    extendedCapabilities: PASID_ENGINE_EXTENDED_CAPABILITIES,
    size: 4096,
  });
  private readonly registers = new Uint8Array(ENGINE_REGISTERS.size);
  private readonly writable = new Uint8Array(ENGINE_REGISTERS.size);
  private readonly w1c = new Uint8Array(ENGINE_REGISTERS.size);
  private readonly buffer = new Uint8Array(PASID_ENGINE_BUFFER_SIZE);
  private intxAsserted = false;
  /** Bumped by reset, so a transfer still in flight cannot complete into the new state. */
  private generation = 0;

  constructor(
    private readonly port: PasidDmaPort,
    private readonly options: PasidDmaEngineOptions = {},
  ) {
    for (const field of ENGINE_REGISTERS.fields) {
      spread(this.writable, field, field.writable ?? 0);
      spread(this.w1c, field, field.w1c ?? 0);
    }
    spread(this.registers, ENGINE_REGISTERS.field('identification'), PASID_ENGINE_IDENTIFICATION);
  }

  /** A register by its table key. */
  register(key: RegisterKey): number {
    return readConfigField(this.registers, 0, ENGINE_REGISTERS.field(key));
  }

  get busy(): boolean {
    return (this.register('status') & ENGINE_STATUS.bits.BUSY) !== 0;
  }

  /** Power-on state: registers, buffer and configuration space; a transfer in flight is forgotten. */
  reset(): void {
    this.generation++;
    this.registers.fill(0);
    spread(this.registers, ENGINE_REGISTERS.field('identification'), PASID_ENGINE_IDENTIFICATION);
    this.buffer.fill(0);
    this.config.reset();
    this.updateIntx();
  }

  /** Any width at any offset: registers byte by byte, the buffer as memory, the rest reads zero. */
  read(offset: number, size: AccessSize): bigint {
    let value = 0n;
    for (let i = size - 1; i >= 0; i--) value = (value << 8n) | BigInt(this.byteAt(offset + i));
    return value;
  }

  /** Never throws: a refused or faulted transfer ends in the status register. */
  write(offset: number, size: AccessSize, value: bigint): void {
    let ring = false;
    const doorbell = ENGINE_REGISTERS.field('doorbell').offset;
    for (let i = 0; i < size; i++) {
      const at = offset + i;
      const byte = Number((value >> BigInt(8 * i)) & 0xffn);
      if (at === doorbell) ring = (byte & ENGINE_DOORBELL.bits.RUN) !== 0;
      this.writeByte(at, byte);
    }
    if (this.overlaps(offset, size, ENGINE_REGISTERS.field('status')) || this.overlaps(offset, size, ENGINE_REGISTERS.field('control')))
      this.updateIntx();
    if (ring && !this.busy) this.start();
  }

  private byteAt(at: number): number {
    if (at >= 0 && at < this.registers.length) return this.registers[at]!;
    const inBuffer = at - PASID_ENGINE_BUFFER_OFFSET;
    return inBuffer >= 0 && inBuffer < PASID_ENGINE_BUFFER_SIZE ? this.buffer[inBuffer]! : 0;
  }

  private writeByte(at: number, byte: number): void {
    const inBuffer = at - PASID_ENGINE_BUFFER_OFFSET;
    if (inBuffer >= 0 && inBuffer < PASID_ENGINE_BUFFER_SIZE) {
      this.buffer[inBuffer] = byte;
      return;
    }
    if (at < 0 || at >= this.registers.length) return;
    if (at >= DESCRIPTOR_START && at < DESCRIPTOR_END && this.busy) return;
    const mask = this.writable[at]!;
    this.registers[at] = ((this.registers[at]! & ~mask) | (byte & mask)) & ~(byte & this.w1c[at]!) & 0xff;
  }

  private overlaps(offset: number, size: number, field: ConfigField): boolean {
    return offset < field.offset + field.width && field.offset < offset + size;
  }

  private setStatus(value: number): void {
    spread(this.registers, ENGINE_REGISTERS.field('status'), value);
  }

  private address(low: RegisterKey, high: RegisterKey): bigint {
    return (BigInt(this.register(high)) << 32n) | BigInt(this.register(low));
  }

  /** Checks the descriptor against what software enabled, then issues the requests. */
  private start(): void {
    const source = this.address('sourceLow', 'sourceHigh');
    const destination = this.address('destinationLow', 'destinationHigh');
    const length = this.register('length');
    const direction = ENGINE_CONTROL.get(this.register('control'), 'DIRECTION');
    const base = { direction, source, destination, length };
    const checked = this.checkTag();
    const refused = 'refused' in checked ? checked.refused : this.checkWindow(direction, source, destination, length);
    if (refused !== undefined) {
      this.finish({ ...base, error: refused });
      return;
    }
    const tag = 'tag' in checked ? checked.tag : undefined;
    const outcome = tag === undefined ? base : { ...base, tag };
    this.setStatus(ENGINE_STATUS.bits.BUSY);
    let pending: void | Promise<void>;
    try {
      const space = tag === undefined ? this.port.dma : this.port.pasidDma(tag);
      pending = this.transfer(space, direction, source, destination, length);
    } catch (error) {
      this.finish(failed(outcome, error));
      return;
    }
    if (!isPromiseLike(pending)) {
      this.finish({ ...outcome, error: 'NONE' });
      return;
    }
    const generation = this.generation;
    pending.then(
      () => {
        if (generation === this.generation) this.finish({ ...outcome, error: 'NONE' });
      },
      (error: unknown) => {
        if (generation === this.generation) this.finish(failed(outcome, error));
      },
    );
  }

  /**
   * The tag the requests carry, from the PASID register and the PASID Control register: no PASID, privileged or
   * execute flag leaves the device unless software enabled it (the PCIe rules for the PASID TLP prefix).
   */
  private checkTag(): Checked {
    if (!this.config.busMasterEnabled) return { refused: 'BUS_MASTER_DISABLED' };
    const register = this.register('pasidTag');
    const supervisor = (register & ENGINE_PASID_TAG.bits.PRIVILEGED) !== 0;
    const execute = (register & ENGINE_PASID_TAG.bits.EXECUTE) !== 0;
    if ((register & ENGINE_PASID_TAG.bits.VALID) === 0) return supervisor || execute ? { refused: 'BAD_DESCRIPTOR' } : { tag: undefined };
    const pasid = this.config.pasid;
    if (pasid?.enabled !== true) return { refused: 'PASID_DISABLED' };
    if (supervisor && !pasid.privilegedEnabled) return { refused: 'PRIVILEGED_DISABLED' };
    if (execute && !pasid.executeEnabled) return { refused: 'EXECUTE_DISABLED' };
    return { tag: { pasid: ENGINE_PASID_TAG.get(register, 'PASID'), supervisor, execute } };
  }

  /** The length fits the buffer, and so does the buffer window a FROM_MEMORY or TO_MEMORY transfer names. */
  private checkWindow(direction: number, source: bigint, destination: bigint, length: number): EngineErrorKey | undefined {
    const { FROM_MEMORY, TO_MEMORY, COPY } = ENGINE_DIRECTIONS.values;
    if (length === 0 || length > PASID_ENGINE_BUFFER_SIZE) return 'BAD_DESCRIPTOR';
    const bufferOffset = direction === FROM_MEMORY ? destination : direction === TO_MEMORY ? source : direction === COPY ? 0n : undefined;
    if (bufferOffset === undefined || bufferOffset + BigInt(length) > BigInt(PASID_ENGINE_BUFFER_SIZE)) return 'BAD_DESCRIPTOR';
    return undefined;
  }

  private transfer(space: AsyncDmaSpace, direction: number, source: bigint, destination: bigint, length: number): void | Promise<void> {
    const { FROM_MEMORY, TO_MEMORY } = ENGINE_DIRECTIONS.values;
    if (direction === FROM_MEMORY) return space.read(source, this.buffer.subarray(Number(destination), Number(destination) + length));
    if (direction === TO_MEMORY) return space.write(destination, this.buffer.slice(Number(source), Number(source) + length));
    const staging = new Uint8Array(length);
    const read = space.read(source, staging);
    return isPromiseLike(read) ? read.then(() => space.write(destination, staging)) : space.write(destination, staging);
  }

  private finish(outcome: PasidDmaOutcome): void {
    const failedKind = outcome.error !== 'NONE';
    this.setStatus(
      failedKind
        ? ENGINE_STATUS.bits.ERROR |
            ENGINE_STATUS.place('ERROR_KIND', ENGINE_ERRORS.values[outcome.error]) |
            ENGINE_STATUS.place('ERRNO', outcome.errno ?? 0)
        : ENGINE_STATUS.bits.DONE,
    );
    if ((this.register('control') & ENGINE_CONTROL.bits.INTERRUPT) !== 0) {
      const msi = this.config.msi;
      if (msi?.enabled === true) {
        if (!msi.masked(0)) this.port.interrupt(msi.address, msi.data);
      } else {
        this.updateIntx();
      }
    }
    this.options.onTransfer?.(outcome);
  }

  /** INTx follows the unacknowledged completion while MSI is off and software has not disabled INTx. */
  private updateIntx(): void {
    const pending = (this.register('status') & (ENGINE_STATUS.bits.DONE | ENGINE_STATUS.bits.ERROR)) !== 0;
    const wanted = (this.register('control') & ENGINE_CONTROL.bits.INTERRUPT) !== 0;
    const level = pending && wanted && this.config.msi?.enabled !== true;
    this.config.setInterruptStatus(level);
    const asserted = level && !this.config.intxDisabled;
    if (asserted === this.intxAsserted) return;
    this.intxAsserted = asserted;
    this.options.onIntx?.(asserted);
  }
}

function failed(outcome: Omit<PasidDmaOutcome, 'error'>, error: unknown): PasidDmaOutcome {
  const fault = error instanceof Error ? error : new Error(String(error));
  return { ...outcome, error: 'DMA_FAULT', errno: fault instanceof DmaFault ? fault.errno : ERRNO.EIO, fault };
}

/** Writes `value` little-endian over a field's bytes (as a value, or as a mask). */
function spread(bytes: Uint8Array, field: ConfigField, value: number): void {
  for (let i = 0; i < field.width; i++) bytes[field.offset + i] = Math.floor((value >>> 0) / 256 ** i) & 0xff;
}
