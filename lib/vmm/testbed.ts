/** The testbed machine: guest RAM, PCI config ports, an MMIO bus with the DMAR unit, and DMA devices (edu, the PASID engine, vfio-user). */
import { GuestMemory, SharedRegion, isPromiseLike } from '../memory';
import type { HostIommuBackend } from '../host/host-backend';
import type { QtestMachine, QtestNarrowSize } from './qtest/machine';
import type { QtestPortSize } from './qtest/protocol';
import { DeviceRegistry, IOMMU_WINDOW_SIZE, registerWindow, type DeviceInterrupt, type EmbeddedIommu } from '../vtd/embedding';
import { shadowBackendFor } from './host-backends';
import { MmioBus, type AccessSize } from './mmio-bus';
import { CONFIG_ADDRESS_PORT, PciFunction, PciHost, touchesDecoding, type PciEndpoint } from './pci';
import { PortBus } from './port-bus';
import { VfioUserAttachment, type AttachOptions } from './vfio-user-attachment';
import { EduDevice, EDU_BAR_SIZE, EDU_PCI_CAPABILITIES, EDU_PCI_IDENTITY, type EduDmaOutcome } from '../devices/edu';
import { PasidDmaEngine, PASID_ENGINE_BAR_SIZE, type PasidDmaOutcome } from '../devices/pasid-dma-engine';
import type { PciConfigSpace } from '../devices/pci-config-space';
import { PCI_EXTENDED_CONFIG_SIZE } from '../devices/pci-layout';
import type { AccessSize as DeviceAccessSize } from '../devices/register-access';
import { ViommuError } from '../errors';

/** Where q35 puts the DMAR unit's registers. */
export const DMAR_BASE = 0xfed90000;
export const DMAR_WINDOW_SIZE = IOMMU_WINDOW_SIZE;
/** 00:04.0, where the oracle scripts expect the edu device (SID 0x20). */
export const EDU_DEVFN = 4 << 3;
/**
 * q35's MMCONFIG base (QEMU's default PCIEXBAR): each function's 4 KiB of configuration space at base + (bus << 20 |
 * devfn << 12). The port mechanism reaches only the first 256 bytes, so PCI Express extended space needs this.
 */
export const ECAM_BASE = 0xb0000000;

/** What the testbed needs of an IOMMU: the embedding contract's (lib/vtd/embedding.ts), which VtdUnit implements. */
export type TestbedIommu = EmbeddedIommu;

export type { DeviceInterrupt } from '../vtd/embedding';

export interface TestbedOptions {
  /** Guest RAM size in bytes (default 256 MiB, as the oracle's QEMU runs with -m 256M). */
  ramBytes?: number;
  /** Builds the IOMMU over the machine's guest memory; without one, devices DMA to guest-physical addresses. */
  iommu?: (memory: GuestMemory) => TestbedIommu;
  onDma?: (outcome: EduDmaOutcome) => void;
  /** The edu device's DMA mask in bits (QEMU's `-device edu,dma_mask=2^n-1`; default 28). */
  eduDmaMaskBits?: number;
  /** Slots on bus 0 for further edu devices (QEMU's `-device edu,addr=SLOT`), e.g. to fault from a second requester id. */
  extraEduSlots?: readonly number[];
  /** Put the in-process edu at 00:04.0 (default true); false leaves the slot for a vfio-user device. */
  builtInEdu?: boolean;
  /** Every MSI a device raises (after the IOMMU's interrupt path, when it has one). */
  onDeviceInterrupt?: (interrupt: DeviceInterrupt) => void;
  /**
   * A device's INTx line changed (edu with MSI off, as QEMU's edu). A vfio-user device's INTx eventfd carries no
   * level: each signal arrives as a rise and a fall.
   */
  onIntx?: (sourceId: number, asserted: boolean) => void;
  /**
   * A slot on bus 0 for the PASID DMA engine (lib/devices/pasid-dma-engine.ts), whose requests may carry a PASID.
   * Its whole 4 KiB configuration space (the PASID capability at 0x100) is also in ECAM at ECAM_BASE.
   */
  pasidEngineSlot?: number;
  onPasidTransfer?: (outcome: PasidDmaOutcome) => void;
}

/** The host bridge's ports: CONFIG_ADDRESS at 0xcf8 and CONFIG_DATA's four bytes from 0xcfc. */
const PCI_HOST_PORTS = 8;
/** Device interrupts kept in `deviceInterrupts`; older ones are dropped. */
const INTERRUPT_LOG_LIMIT = 256;

export class TestbedMachine implements QtestMachine {
  readonly memory = new GuestMemory();
  readonly ram: SharedRegion;
  readonly mmio = new MmioBus();
  /** x86 port I/O: the PCI host bridge's config ports and the I/O BARs of attached devices (and, on the KVM machine, its ISA devices). */
  readonly ports = new PortBus();
  readonly pci: PciHost;
  /** The in-process edu at 00:04.0 (undefined with `builtInEdu: false`). */
  readonly edu: EduDevice | undefined;
  /** The devices of `extraEduSlots`, in that order. */
  readonly extraEdus: EduDevice[] = [];
  /** The PASID DMA engine at `pasidEngineSlot` (undefined without one). */
  readonly pasidEngine: PasidDmaEngine | undefined;
  readonly iommu: TestbedIommu | undefined;
  /**
   * The host backend vfio-user devices attach to: the shadow one, which keeps their DMA tables equal to the guest's
   * mappings (caching mode with a unit that tells domains); undefined otherwise.
   */
  readonly hostBackend: HostIommuBackend | undefined;
  /** The last device MSIs, oldest first. */
  readonly deviceInterrupts: DeviceInterrupt[] = [];
  readonly attachments: VfioUserAttachment[] = [];
  /**
   * Every device behind the IOMMU by full requester id: edu and vfio-user functions on bus 0 (this PCI host has
   * one bus), and any DMA device a test puts on another bus with `devices.attachDevice(sid)`.
   */
  readonly devices: DeviceRegistry;
  private readonly ramBytes: number;
  private readonly onDeviceInterrupt: ((interrupt: DeviceInterrupt) => void) | undefined;
  private readonly onIntx: ((sourceId: number, asserted: boolean) => void) | undefined;

  constructor(options: TestbedOptions = {}) {
    this.ramBytes = options.ramBytes ?? 256 << 20;
    this.ram = SharedRegion.create('guest-ram', this.ramBytes);
    this.memory.addSharedRegion('ram', 0, this.ram);
    this.onDeviceInterrupt = options.onDeviceInterrupt;
    this.onIntx = options.onIntx;
    this.iommu = options.iommu?.(this.memory);
    const iommu = this.iommu;
    this.devices = new DeviceRegistry({ memory: this.memory, iommu, onInterrupt: (interrupt) => this.logInterrupt(interrupt) });
    this.hostBackend = iommu ? shadowBackendFor(iommu, this.memory) : undefined;
    // QEMU's DMAR window: 4- and 8-byte accesses, narrower ones read 0 and are dropped. Writes complete at once:
    // what shadowing costs shows in the unit's completions (held wait descriptors, ICC/IVT, RTPS/TES).
    if (iommu) this.mmio.map('dmar', DMAR_BASE, DMAR_WINDOW_SIZE, registerWindow(iommu));
    this.pci = new PciHost(this.mmio, this.ports);
    this.ports.map('pci-host', CONFIG_ADDRESS_PORT, PCI_HOST_PORTS, {
      readPort: (port, size) => this.pci.readPort(port, size) ?? (size === 4 ? 0xffffffff : (1 << (8 * size)) - 1),
      writePort: (port, size, value) => {
        const done = this.pci.writePort(port, size, value);
        if (isPromiseLike(done)) return done.then(() => undefined);
      },
    });
    this.edu = options.builtInEdu === false ? undefined : this.addEdu('edu', EDU_DEVFN, options);
    for (const slot of options.extraEduSlots ?? []) this.extraEdus.push(this.addEdu(`edu@${slot}`, slot << 3, options));
    try {
      this.pasidEngine = options.pasidEngineSlot === undefined ? undefined : this.addPasidEngine(options.pasidEngineSlot, options);
    } catch (error) {
      // A machine that was never handed out frees its guest RAM itself.
      this.ram.close();
      throw error;
    }
  }

  /**
   * Puts the vfio-user device served at `socketPath` on bus 0 at `devfn` (default 00:04.0): its config space and
   * BARs forward to the server, its DMA by message goes through the IOMMU for its requester id, its MSIs through
   * the IOMMU's interrupt path, and with caching mode its DMA table follows the guest's mappings. Bus 0 because
   * the testbed's PCI host has one bus; the contract itself (`devices`) takes any requester id.
   */
  async attachVfioUser(socketPath: string, options: Partial<AttachOptions> = {}): Promise<VfioUserAttachment> {
    const devfn = options.devfn ?? EDU_DEVFN;
    if (this.devices.has(devfn)) {
      throw new ViommuError(
        'ERR_TESTBED_SLOT_TAKEN',
        `00:${(devfn >> 3).toString(16).padStart(2, '0')}.${devfn & 7} already holds a device; pick another devfn (or start the testbed with builtInEdu: false)`,
      );
    }
    const device = this.devices.attachDevice(devfn, options.name ?? 'vfio-user');
    try {
      const attachment = await VfioUserAttachment.connect(
        socketPath,
        {
          memory: this.memory,
          mmio: this.mmio,
          pci: this.pci,
          hostBackend: this.hostBackend,
          dmaSpace: () => device.dma,
          deviceInterrupt: (sid, address, data) => this.deviceInterrupt(sid, address, data),
          ...(this.onIntx !== undefined ? { deviceIntx: (sid: number) => this.pulseIntx(sid) } : {}),
        },
        { ...options, devfn },
      );
      this.attachments.push(attachment);
      return attachment;
    } catch (error) {
      this.devices.detachDevice(devfn);
      throw error;
    }
  }

  private pulseIntx(sid: number): void {
    this.onIntx?.(sid, true);
    this.onIntx?.(sid, false);
  }

  /** A device's MSI: through the IOMMU's interrupt path when it has one (remapping, fault records), then logged. */
  deviceInterrupt(sid: number, address: bigint, data: number): void {
    this.devices.interrupt(sid, address, data);
  }

  private logInterrupt(interrupt: DeviceInterrupt): void {
    this.deviceInterrupts.push(interrupt);
    if (this.deviceInterrupts.length > INTERRUPT_LOG_LIMIT) this.deviceInterrupts.shift();
    this.onDeviceInterrupt?.(interrupt);
  }

  /** An edu as QEMU's: MSI when software enabled it (a message per raise), else the INTx line. */
  private addEdu(name: string, devfn: number, options: TestbedOptions): EduDevice {
    const { dma } = this.devices.attachDevice(devfn, name);
    let fn: PciFunction | undefined;
    const edu = new EduDevice(dma, {
      ...(options.onDma ? { onDma: options.onDma } : {}),
      ...(options.eduDmaMaskBits !== undefined ? { dmaMaskBits: options.eduDmaMaskBits } : {}),
      onInterrupt: (raised) => {
        if (fn === undefined) return;
        const msi = fn.config.msi;
        if (msi?.enabled === true) {
          if (raised && !msi.masked(0)) this.deviceInterrupt(fn.sourceId, msi.address, msi.data);
          return;
        }
        fn.config.setInterruptStatus(raised);
        if (!fn.config.intxDisabled || !raised) this.onIntx?.(fn.sourceId, raised);
      },
    });
    fn = new PciFunction(name, 0, devfn, EDU_PCI_IDENTITY, [{ size: EDU_BAR_SIZE, handler: edu }], EDU_PCI_CAPABILITIES);
    this.pci.add(fn);
    return edu;
  }

  /**
   * The PASID engine as a function on bus 0: config space through the ports (its first 256 bytes) and through its
   * ECAM window (all 4 KiB), BAR0 decoded while memory space is on; its DMA and MSIs through the contract's device.
   */
  private addPasidEngine(slot: number, options: TestbedOptions): PasidDmaEngine {
    if (!Number.isInteger(slot) || slot < 0 || slot > 31) throw new ViommuError('ERR_TESTBED_SLOT', `PASID engine slot ${slot}: use 0..31`);
    const devfn = slot << 3;
    if (this.devices.has(devfn)) {
      throw new ViommuError('ERR_TESTBED_SLOT_TAKEN', `slot ${slot} already holds '${this.devices.get(devfn)!.name}'; pick another pasidEngineSlot`);
    }
    const ecam = ECAM_BASE + devfn * PCI_EXTENDED_CONFIG_SIZE;
    if (this.ramBytes > ECAM_BASE)
      throw new ViommuError(
        'ERR_TESTBED_ECAM',
        `guest RAM of ${this.ramBytes} bytes reaches ECAM at 0x${ECAM_BASE.toString(16)}; use at most ${ECAM_BASE} bytes with a PASID engine`,
      );
    const name = 'pasid-dma-engine';
    const device = this.devices.attachDevice(devfn, name);
    const engine = new PasidDmaEngine(device, {
      ...(options.onPasidTransfer ? { onTransfer: options.onPasidTransfer } : {}),
      onIntx: (asserted) => this.onIntx?.(device.sid, asserted),
    });
    const config = engine.config;
    const endpoint: PciEndpoint = {
      name,
      bus: 0,
      devfn,
      readConfig: (offset, size) => (size === 1 ? config.readU8(offset) : size === 2 ? config.readU16(offset) : config.readU32(offset)),
      writeConfig: (offset, size, value) => {
        config.write(
          offset,
          Uint8Array.from({ length: size }, (_, i) => (value >>> (8 * i)) & 0xff),
        );
        return touchesDecoding(offset, size);
      },
      updateMappings: (bus) => {
        bus.unmap(`${name}.bar0`);
        const base = config.barAddress(0);
        if (!config.memoryEnabled || base === 0n) return;
        try {
          bus.map(`${name}.bar0`, Number(base), PASID_ENGINE_BAR_SIZE, engine);
        } catch {
          // A BAR over another window decodes nothing, as on the edu's function.
        }
      },
    };
    this.pci.add(endpoint);
    this.mmio.map(`${name}.ecam`, ecam, PCI_EXTENDED_CONFIG_SIZE, {
      read: (offset: number, size: DeviceAccessSize) => readConfigBytes(config, offset, size),
      write: (offset: number, size: DeviceAccessSize, value: bigint) => {
        config.write(
          offset,
          Uint8Array.from({ length: size }, (_, i) => Number((value >> BigInt(8 * i)) & 0xffn)),
        );
        if (touchesDecoding(offset, size)) endpoint.updateMappings(this.mmio, this.ports);
      },
    });
    return engine;
  }

  /** Disconnects attached devices (their servers drop every mapping with the connection) and frees guest RAM. */
  close(): void {
    for (const attachment of this.attachments.splice(0)) attachment.closeNow();
    this.ram.close();
  }

  readPort(port: number, size: QtestPortSize): number | Promise<number> {
    return this.ports.read(port, size);
  }

  writePort(port: number, size: QtestPortSize, value: number): void | Promise<void> {
    return this.ports.write(port, size, value);
  }

  readMemory(address: bigint, size: QtestNarrowSize): number | Promise<number> {
    return after(this.access(address, size, undefined), Number);
  }

  writeMemory(address: bigint, size: QtestNarrowSize, value: number): void | Promise<void> {
    return after(this.access(address, size, BigInt(value >>> 0) & ((1n << BigInt(8 * size)) - 1n)), ignore);
  }

  readMemory64(address: bigint): bigint | Promise<bigint> {
    return this.access(address, 8, undefined);
  }

  writeMemory64(address: bigint, value: bigint): void | Promise<void> {
    return after(this.access(address, 8, BigInt.asUintN(64, value)), ignore);
  }

  readBytes(address: bigint, length: number): Uint8Array | Promise<Uint8Array> {
    if (this.inRam(address, length)) return this.memory.read(Number(address), length);
    const bytes = new Uint8Array(length);
    const from = (start: number): Uint8Array | Promise<Uint8Array> => {
      for (let i = start; i < length; i++) {
        const value = this.access(address + BigInt(i), 1, undefined);
        if (isPromiseLike(value)) return value.then((byte) => ((bytes[i] = Number(byte)), from(i + 1)));
        bytes[i] = Number(value);
      }
      return bytes;
    };
    return from(0);
  }

  writeBytes(address: bigint, data: Uint8Array): void | Promise<void> {
    if (this.inRam(address, data.length)) return this.memory.write(Number(address), data);
    const from = (start: number): void | Promise<void> => {
      for (let i = start; i < data.length; i++) {
        const done = this.access(address + BigInt(i), 1, BigInt(data[i]!));
        if (isPromiseLike(done)) return done.then(() => from(i + 1));
      }
    };
    return from(0);
  }

  private inRam(address: bigint, length: number): boolean {
    return address >= 0n && address + BigInt(length) <= BigInt(this.ramBytes);
  }

  /**
   * One sized CPU access: RAM, a device window, or nothing (reads 0, writes dropped, as QEMU's unassigned memory).
   * A window in another process answers with a promise; everything else stays synchronous.
   */
  private access(address: bigint, size: AccessSize, value: bigint | undefined): bigint | Promise<bigint> {
    if (this.inRam(address, size)) {
      const at = Number(address);
      if (value === undefined) {
        const bytes = this.memory.read(at, size);
        return bytes.reduceRight((sum, byte) => (sum << 8n) | BigInt(byte), 0n);
      }
      const bytes = Uint8Array.from({ length: size }, (_, i) => Number((value >> BigInt(8 * i)) & 0xffn));
      this.memory.write(at, bytes);
      return 0n;
    }
    const target = address <= BigInt(Number.MAX_SAFE_INTEGER) ? this.mmio.find(Number(address), size) : undefined;
    if (target === undefined) return 0n;
    if (value === undefined) return target.handler.read(target.offset, size);
    return after(target.handler.write(target.offset, size, value), () => 0n);
  }
}

function ignore(): void {}

/** A little-endian ECAM read of any width (a qword read takes two config dwords at once). */
function readConfigBytes(config: PciConfigSpace, offset: number, size: number): bigint {
  const bytes = new Uint8Array(size);
  config.read(offset, bytes);
  return bytes.reduceRight((value, byte) => (value << 8n) | BigInt(byte), 0n);
}

/** Applies `next` to a value now, or when its promise resolves. */
function after<T, U>(value: T | Promise<T>, next: (value: T) => U): U | Promise<U> {
  return isPromiseLike(value) ? (value as Promise<T>).then(next) : next(value as T);
}
