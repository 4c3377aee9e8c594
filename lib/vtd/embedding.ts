/**
 * The embedding contract: what a VMM gives the IOMMU (guest memory, an interrupt sink, the register window routed
 * from its MMIO dispatch, its devices by full requester id) and what each device gets back (a DmaSpace and an
 * interrupt function). VtdUnit implements it; the testbed, the KVM machine and third-party VMMs
 * (docs/embedding.md) all wire the unit through it. It sits in the unit's layer so that the unit can promise it;
 * the host backends a VMM may add (lib/vmm/host-backends.ts) sit above.
 */
import { ViommuError } from '../errors';
import type { DmaSpace, GuestMemory } from '../memory';
import { INTERRUPT_WINDOW_END, INTERRUPT_WINDOW_START } from '../memory/geometry';
import type { DeviceDomainListener } from './address-space';
import type { HostPending } from './host-completion';
import type { PasidAllocator } from './pasid-allocator';
import { REGISTER_WINDOW_SIZE } from './registers';
import type { TranslationRequest, TranslationResult } from './translation-result';
import type { PasidTag } from './unit-dma';

/**
 * What a VMM gives the unit. VtdUnit's options take it as it is: `new VtdUnit({ ...host, config: 'aw-bits=48' })`.
 */
export interface IommuHost {
  /** Guest RAM: the unit reads its tables there, and translated DMA lands there. */
  readonly memory: GuestMemory;
  /**
   * The interrupt sink: an MSI toward the CPUs (the unit's fault and invalidation-completion events, and device
   * interrupts after remapping), as the DWORD write of `data` to `address`. Called synchronously; deliver or queue.
   */
  readonly onInterrupt: (address: number, data: number) => void;
  /**
   * A host backend following the unit's domains failed. The guest's command completes anyway (its IOMMU never
   * stops halfway because of the host); default: the unit keeps the last ones in `hostErrors`.
   */
  readonly onHostError?: (error: Error) => void;
}

/**
 * The IOMMU as a VMM uses it. VtdUnit is one; a wrapper (tracing register writes, say) is another. Register
 * writes complete at once: a host backend's cost shows in the unit's completions, never in a stalled write.
 */
export interface EmbeddedIommu {
  /** The register window: 4- and 8-byte accesses at offsets below REGISTER_WINDOW_SIZE. */
  read(offset: number, size: 4 | 8): number | bigint;
  write(offset: number, size: 4 | 8, value: number | bigint): void;
  /**
   * The DMA view of the device with requester id `sourceId` (bus << 8 | device << 3 | function); with `tag`, of its
   * requests with that PASID (PCIe PASID prefix: the PASID, privileged-mode and execute requested).
   */
  dmaSpace(sourceId: number, tag?: PasidTag): DmaSpace;
  /**
   * An interrupt request (a DWORD write into the interrupt range): remapped when the guest turned remapping on,
   * then delivered through the host's onInterrupt. 'platform': a request without a requester id (an I/O APIC's
   * under a split irqchip), whose `sid` only fills fault records.
   */
  interruptRequest?(request: { sid: number; address: number; data: number }, origin: 'message' | 'platform'): unknown;
  /** Which domain a device's requests (with `pasid`, or without PASID) translate through, for host backends (lib/vtd/address-space.ts). */
  watchDevice?(sid: number, listener: DeviceDomainListener, pasid?: number): () => void;
  /** Translates one request, recording its fault: how the nesting backend walks a host fault again through the guest's tables. */
  translate?(request: TranslationRequest): TranslationResult;
  /** The guest's PASID allocator (x-vcmd), told which PASIDs the nesting backend has attached on the host. */
  readonly virtualCommands?: { readonly allocator: Pick<PasidAllocator, 'bind' | 'unbind'> } | undefined;
  /** From now on the unit's architectural completions wait for `pending` (see lib/vtd/host-completion.ts). */
  holdCompletionsWhile?(pending: HostPending | undefined): void;
  readonly config?: { readonly 'caching-mode'?: boolean };
}

/** Bytes of guest-physical space the register window takes (one 4 KiB page; place it where your DMAR table says). */
export const IOMMU_WINDOW_SIZE = REGISTER_WINDOW_SIZE;

/** The address range (0xfee00000-0xfeefffff) where DWORD writes are interrupt requests, not memory writes. */
export const INTERRUPT_ADDRESS_RANGE = { start: BigInt(INTERRUPT_WINDOW_START), end: BigInt(INTERRUPT_WINDOW_END) } as const;

/** The register window as a VMM's MMIO dispatch drives it: offsets from the window's base, little-endian values. */
export interface RegisterWindow {
  readonly size: number;
  /** Reads `size` bytes at `offset`; sizes other than 4 and 8 read 0 (as QEMU's DMAR window). */
  read(offset: number, size: number): bigint;
  /** Writes the low `size` bytes of `value`; sizes other than 4 and 8 are dropped. Never waits. */
  write(offset: number, size: number, value: bigint): void;
}

/** The register window of `iommu`, for the VMM to route its guest's accesses at [base, base + size) to. */
export function registerWindow(iommu: Pick<EmbeddedIommu, 'read' | 'write'>): RegisterWindow {
  return {
    size: IOMMU_WINDOW_SIZE,
    read(offset: number, size: number): bigint {
      if ((size !== 4 && size !== 8) || !inWindow(offset, size)) return 0n;
      return BigInt(iommu.read(offset, size));
    },
    write(offset: number, size: number, value: bigint): void {
      if (!inWindow(offset, size)) return;
      if (size === 4) iommu.write(offset, 4, Number(BigInt.asUintN(32, value)));
      else if (size === 8) iommu.write(offset, 8, BigInt.asUintN(64, value));
    },
  };
}

function inWindow(offset: number, size: number): boolean {
  return Number.isInteger(offset) && offset >= 0 && offset + size <= IOMMU_WINDOW_SIZE;
}

// ---- requester ids ----

/** A requester id (source id): bus << 8 | device << 3 | function, as PCI Express and VT-d carry it. */
export function requesterId(bus: number, device: number, fn: number): number {
  if (!isUint(bus, 0xff) || !isUint(device, 0x1f) || !isUint(fn, 7)) {
    throw new ViommuError('ERR_REQUESTER_ID', `bus ${bus}, device ${device}, function ${fn}: bus 0-255, device 0-31, function 0-7`);
  }
  return (bus << 8) | (device << 3) | fn;
}

/** The parts of a requester id. */
export function splitRequesterId(sid: number): { readonly bus: number; readonly device: number; readonly function: number; readonly devfn: number } {
  checkRequesterId(sid);
  return { bus: sid >>> 8, device: (sid >>> 3) & 0x1f, function: sid & 7, devfn: sid & 0xff };
}

/** A requester id as lspci writes it: '01:02.3'. */
export function formatRequesterId(sid: number): string {
  const { bus, device, function: fn } = splitRequesterId(sid);
  return `${bus.toString(16).padStart(2, '0')}:${device.toString(16).padStart(2, '0')}.${fn}`;
}

function isUint(value: number, max: number): boolean {
  return Number.isInteger(value) && value >= 0 && value <= max;
}

function checkRequesterId(sid: number): void {
  if (!isUint(sid, 0xffff))
    throw new ViommuError('ERR_REQUESTER_ID', `requester id ${sid} is not an integer in [0, 0x10000): bus << 8 | device << 3 | function`);
}

// ---- devices ----

/** An MSI a device raised, as the VMM saw it. */
export interface DeviceInterrupt {
  readonly sid: number;
  readonly address: bigint;
  readonly data: number;
  /** What the IOMMU made of it (its interruptRequest result); absent when no IOMMU interrupt path took it. */
  readonly result?: unknown;
}

/** A device in the registry: its DMA goes through `dma`, its MSIs through `interrupt`. */
export interface AttachedDevice {
  /** Full requester id, bus included. */
  readonly sid: number;
  readonly name: string;
  /** The device's DMA: translated by the IOMMU for `sid` (guest RAM directly without an IOMMU). Faults throw DmaFault. */
  readonly dma: DmaSpace;
  /**
   * The device's requests with PASID `tag.pasid`: translated through that PASID's entry. Without an IOMMU there is
   * nothing to resolve a PASID through, and the requests reach guest RAM untranslated.
   */
  pasidDma(tag: PasidTag): DmaSpace;
  /** The device raises an MSI: the DWORD write of `data` to `address` it programmed. */
  interrupt(address: bigint | number, data: number): DeviceInterrupt;
}

export interface DeviceRegistryOptions {
  /** Guest RAM: where DMA goes without an IOMMU. */
  readonly memory: GuestMemory;
  /** The IOMMU the devices sit behind; without one, DMA is untranslated and MSIs are not remapped. */
  readonly iommu?: EmbeddedIommu | undefined;
  /**
   * Every device MSI after the IOMMU's interrupt path. With an IOMMU that remaps, an MSI inside the interrupt
   * range has been delivered through the host's onInterrupt already (or blocked and recorded, see `result`);
   * otherwise (`result` absent) nothing delivered it: that is the VMM's call.
   */
  readonly onInterrupt?: (interrupt: DeviceInterrupt) => void;
}

/**
 * The VMM's devices behind the IOMMU, keyed by full requester id (any bus): one entry per id, each with the DMA
 * view and interrupt path that id gets. Host backends, reports and `explain` list the devices from here.
 */
export class DeviceRegistry {
  private readonly devices = new Map<number, AttachedDevice>();

  constructor(private readonly options: DeviceRegistryOptions) {}

  /** Puts a device at `sid` behind the IOMMU and returns its DMA space and interrupt function. */
  attachDevice(sid: number, name?: string): AttachedDevice {
    checkRequesterId(sid);
    const taken = this.devices.get(sid);
    if (taken !== undefined) {
      throw new ViommuError(
        'ERR_DEVICE_ATTACHED',
        `${formatRequesterId(sid)} already holds '${taken.name}'; detach it first or pick another requester id`,
      );
    }
    const iommu = this.options.iommu;
    const device: AttachedDevice = {
      sid,
      name: name ?? formatRequesterId(sid),
      dma: iommu ? iommu.dmaSpace(sid) : this.options.memory.dma,
      pasidDma: (tag) => (iommu ? iommu.dmaSpace(sid, tag) : this.options.memory.dma),
      interrupt: (address, data) => this.interrupt(sid, address, data),
    };
    this.devices.set(sid, device);
    return device;
  }

  /** Takes the device at `sid` out; false when there was none. Its DmaSpace keeps translating for that id. */
  detachDevice(sid: number): boolean {
    return this.devices.delete(sid);
  }

  get(sid: number): AttachedDevice | undefined {
    return this.devices.get(sid);
  }

  has(sid: number): boolean {
    return this.devices.has(sid);
  }

  /** The requester ids that hold a device, ascending. */
  get sourceIds(): number[] {
    return [...this.devices.keys()].sort((a, b) => a - b);
  }

  [Symbol.iterator](): IterableIterator<AttachedDevice> {
    return this.devices.values();
  }

  /**
   * An MSI carrying requester id `sid` (attached or not: the id is what the request carries): through the IOMMU's
   * interrupt path when it has one and `address` is in the interrupt range, then reported to onInterrupt.
   */
  interrupt(sid: number, address: bigint | number, data: number): DeviceInterrupt {
    checkRequesterId(sid);
    const at = BigInt(address);
    const iommu = this.options.iommu;
    const remappable = iommu?.interruptRequest !== undefined && at >= INTERRUPT_ADDRESS_RANGE.start && at < INTERRUPT_ADDRESS_RANGE.end;
    const result = remappable ? iommu!.interruptRequest!({ sid, address: Number(at), data }, 'message') : undefined;
    const interrupt: DeviceInterrupt = result === undefined ? { sid, address: at, data } : { sid, address: at, data, result };
    this.options.onInterrupt?.(interrupt);
    return interrupt;
  }
}
