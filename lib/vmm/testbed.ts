/** The testbed machine: guest RAM, PCI config ports, an MMIO bus with the DMAR unit, and the edu DMA device. */
import { GuestMemory, SharedRegion, type DmaSpace } from '../memory';
import type { QtestMachine, QtestNarrowSize } from './qtest/machine';
import type { QtestPortSize } from './qtest/protocol';
import { MmioBus, type AccessSize } from './mmio-bus';
import { PciFunction, PciHost } from './pci';
import { EduDevice, EDU_BAR_SIZE, EDU_PCI_IDENTITY, type EduDmaOutcome } from '../devices/edu';

/** Where q35 puts the DMAR unit's registers. */
export const DMAR_BASE = 0xfed90000;
export const DMAR_WINDOW_SIZE = 0x1000;
/** 00:04.0, where the oracle scripts expect the edu device (SID 0x20). */
export const EDU_DEVFN = 4 << 3;

/** What the testbed needs of an IOMMU: its register window and a translated DMA view per requester id. */
export interface TestbedIommu {
  read(offset: number, size: 4 | 8): number | bigint;
  write(offset: number, size: 4 | 8, value: number | bigint): void;
  dmaSpace(sourceId: number): DmaSpace;
}

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
}

export class TestbedMachine implements QtestMachine {
  readonly memory = new GuestMemory();
  readonly ram: SharedRegion;
  readonly mmio = new MmioBus();
  readonly pci: PciHost;
  readonly edu: EduDevice;
  /** The devices of `extraEduSlots`, in that order. */
  readonly extraEdus: EduDevice[] = [];
  readonly iommu: TestbedIommu | undefined;
  private readonly ramBytes: number;

  constructor(options: TestbedOptions = {}) {
    this.ramBytes = options.ramBytes ?? 256 << 20;
    this.ram = SharedRegion.create('guest-ram', this.ramBytes);
    this.memory.addSharedRegion('ram', 0, this.ram);
    this.iommu = options.iommu?.(this.memory);
    if (this.iommu) this.mmio.map('dmar', DMAR_BASE, DMAR_WINDOW_SIZE, dmarWindow(this.iommu));
    this.pci = new PciHost(this.mmio);
    this.edu = this.addEdu('edu', EDU_DEVFN, options);
    for (const slot of options.extraEduSlots ?? []) this.extraEdus.push(this.addEdu(`edu@${slot}`, slot << 3, options));
  }

  private addEdu(name: string, devfn: number, options: TestbedOptions): EduDevice {
    const dma = this.iommu ? this.iommu.dmaSpace(devfn) : this.memory.dma;
    const edu = new EduDevice(dma, {
      ...(options.onDma ? { onDma: options.onDma } : {}),
      ...(options.eduDmaMaskBits !== undefined ? { dmaMaskBits: options.eduDmaMaskBits } : {}),
    });
    this.pci.add(new PciFunction(name, 0, devfn, EDU_PCI_IDENTITY, [{ size: EDU_BAR_SIZE, handler: edu }]));
    return edu;
  }

  close(): void {
    this.ram.close();
  }

  readPort(port: number, size: QtestPortSize): number {
    return this.pci.readPort(port, size) ?? (size === 4 ? 0xffffffff : (1 << (8 * size)) - 1);
  }

  writePort(port: number, size: QtestPortSize, value: number): void {
    this.pci.writePort(port, size, value);
  }

  readMemory(address: bigint, size: QtestNarrowSize): number {
    return Number(this.access(address, size, undefined));
  }

  writeMemory(address: bigint, size: QtestNarrowSize, value: number): void {
    this.access(address, size, BigInt(value >>> 0) & ((1n << BigInt(8 * size)) - 1n));
  }

  readMemory64(address: bigint): bigint {
    return this.access(address, 8, undefined);
  }

  writeMemory64(address: bigint, value: bigint): void {
    this.access(address, 8, BigInt.asUintN(64, value));
  }

  readBytes(address: bigint, length: number): Uint8Array {
    if (this.inRam(address, length)) return this.memory.read(Number(address), length);
    const bytes = new Uint8Array(length);
    for (let i = 0; i < length; i++) bytes[i] = Number(this.access(address + BigInt(i), 1, undefined));
    return bytes;
  }

  writeBytes(address: bigint, data: Uint8Array): void {
    if (this.inRam(address, data.length)) return this.memory.write(Number(address), data);
    data.forEach((byte, i) => this.access(address + BigInt(i), 1, BigInt(byte)));
  }

  private inRam(address: bigint, length: number): boolean {
    return address >= 0n && address + BigInt(length) <= BigInt(this.ramBytes);
  }

  /** One sized CPU access: RAM, a device window, or nothing (reads 0, writes dropped, as QEMU's unassigned memory). */
  private access(address: bigint, size: AccessSize, value: bigint | undefined): bigint {
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
    target.handler.write(target.offset, size, value);
    return 0n;
  }
}

/** QEMU's DMAR window takes 4- and 8-byte accesses; narrower ones read 0 and are dropped. */
function dmarWindow(iommu: TestbedIommu) {
  return {
    read(offset: number, size: AccessSize): bigint {
      if (size !== 4 && size !== 8) return 0n;
      return BigInt(iommu.read(offset, size));
    },
    write(offset: number, size: AccessSize, value: bigint): void {
      if (size === 4) iommu.write(offset, 4, Number(value & 0xffffffffn));
      else if (size === 8) iommu.write(offset, 8, value);
    },
  };
}
