/**
 * A vfio-user device on the testbed's bus: config space and BARs forwarded to the server, its DMA by message
 * served through the IOMMU for its requester id, its MSI turned into interrupt requests, and (caching mode) its
 * DMA table shadowing the guest's mappings.
 */
import type { DmaSpace, GuestMemory } from '../memory';
import type { HostDeviceAttachment, HostIommuBackend } from '../host/host-backend';
import { readConfigField } from '../devices/config-table';
import { bytesToValue, valueToBytes, type AccessSize } from '../devices/register-access';
import {
  BAR_KEYS,
  MSI_CONTROL,
  msiStructure,
  msiStructureFor,
  PCI_BAR_COUNT,
  PCI_CAPABILITY_IDS,
  PCI_COMMAND,
  PCI_CONFIG_SIZE,
  PCI_HEADER_SIZE,
  readBar,
  TYPE0_HEADER,
} from '../devices/pci-layout';
import { EventFd } from '../os';
import { VfioUserClient, type DmaFaultEvent, type VfioUserClientOptions } from '../vfio-user/client';
import { describePciConfig } from '../vfio-user/client/pci-config';
import { IRQ_INDEXES, REGION_INDEXES } from '../vfio-user/protocol';
import { ViommuError } from '../errors';
import { DeviceDmaTable } from './device-dma-table';
import type { AsyncMmioHandler, MmioBus } from './mmio-bus';
import { PORT_SPACE, type PortBus, type PortDevice, type PortSize } from './port-bus';
import { touchesDecoding, type PciEndpoint, type PciHost } from './pci';

const CONFIG_REGION = REGION_INDEXES.values.CONFIG;
/** Failed device DMAs kept for inspection; older ones are dropped. */
const FAULT_LOG_LIMIT = 64;
/** MSIs delivered per eventfd wake-up at most: the counter collapses signals, and a storm must not stall the loop. */
const MSI_BURST_LIMIT = 64;
/** The largest MSI capability (64-bit address with per-vector masking). */
const MSI_CAPABILITY_MAX_BYTES = 24;
/** Message Control sits at the same place in all four MSI layouts, and says which layout the rest follows. */
const MSI_CONTROL_FIELD = msiStructure(false, false).field('control');
/** Errors kept in `errors`; older ones are dropped. */
const ERROR_LOG_LIMIT = 64;

/** What the machine gives a device it attaches. */
export interface AttachmentHost {
  readonly memory: GuestMemory;
  readonly mmio: MmioBus;
  readonly pci: PciHost;
  /** The device's DMA view: the IOMMU's translation for its requester id, or guest RAM without one. */
  dmaSpace(sid: number): DmaSpace;
  /** The device raised an MSI: the DWORD write of `data` to `address` it stands for. */
  deviceInterrupt(sid: number, address: bigint, data: number): void;
  /** The device signalled its INTx eventfd (vfio-user carries edges, not levels); absent: INTx is not wired. */
  deviceIntx?(sid: number): void;
  /**
   * The host backend when the IOMMU has one (the shadow backend: caching mode and a unit that tells domains). The
   * device's DMA table is attached to it when it takes vfio-user DMA tables; otherwise the device's DMA goes by message.
   */
  readonly hostBackend: HostIommuBackend | undefined;
}

export interface AttachOptions {
  /** Device and function on bus 0 (default 00:04.0, where the oracle scripts expect their DMA engine). */
  readonly devfn: number;
  /** Names the function's BAR windows on the MMIO bus. */
  readonly name?: string;
  readonly client?: Omit<VfioUserClientOptions, 'dmaSpace' | 'checkDmaAgainstMaps' | 'enumerate'>;
}

/** One attached vfio-user device. */
export class VfioUserAttachment implements PciEndpoint {
  readonly bus = 0;
  readonly name: string;
  readonly table: DeviceDmaTable;
  /** The server DMAs that were refused (translation faults included), newest last. */
  readonly dmaFaults: DmaFaultEvent[] = [];
  /**
   * What went wrong beside the guest's requests, newest last: gaps of the DMA table the device refused to map
   * (its DMA by message there fails until the next change) and interrupts that could not be delivered.
   */
  readonly errors: Error[] = [];
  private msi: EventFd | undefined;
  private intx: EventFd | undefined;
  /** Which IRQ index the server signals: INTx until the guest enables MSI, when INTx is wired at all. */
  private interruptMode: 'intx' | 'msi' | 'none' = 'none';
  private msiCapability: number | undefined;
  private shadowAttachment: HostDeviceAttachment | undefined;
  private isClosed = false;

  private constructor(
    readonly client: VfioUserClient,
    private readonly host: AttachmentHost,
    readonly devfn: number,
    name: string | undefined,
  ) {
    this.name = name ?? `vfio-user@${(devfn >> 3).toString(16).padStart(2, '0')}.${devfn & 7}`;
    this.table = new DeviceDmaTable(
      {
        dmaMap: (request) => client.dmaMap(request),
        dmaUnmap: (address, size) => client.dmaUnmap(address, size),
        get maxDmaMaps() {
          return client.connection.peerCapabilities.maxDmaMaps;
        },
      },
      (error) => this.report(error),
    );
  }

  private report(error: Error): void {
    this.errors.push(error);
    if (this.errors.length > ERROR_LOG_LIMIT) this.errors.shift();
  }

  /** Connects to the server at `socketPath` and puts its function on the host's bus; closes it again on failure. */
  static async connect(socketPath: string, host: AttachmentHost, options: AttachOptions): Promise<VfioUserAttachment> {
    const devfn = options.devfn;
    const client = await VfioUserClient.connect(socketPath, {
      twinSocket: true,
      ...options.client,
      dmaSpace: host.dmaSpace(devfn),
      // The IOMMU decides what the device may reach; the client's own table only says which ranges go by message.
      checkDmaAgainstMaps: false,
    });
    const attachment = new VfioUserAttachment(client, host, devfn, options.name);
    try {
      await attachment.start();
    } catch (error) {
      attachment.closeNow();
      throw error;
    }
    return attachment;
  }

  /** The requester id the device's DMA and interrupts carry. */
  get sourceId(): number {
    return (this.bus << 8) | this.devfn;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** Whether the guest's mappings reach the device as DMA_MAPs of guest RAM. */
  get shadowed(): boolean {
    return this.shadowAttachment !== undefined;
  }

  private async start(): Promise<void> {
    const device = this.client.device;
    if (device === undefined || this.client.regions.length <= CONFIG_REGION || this.client.region(CONFIG_REGION).size < BigInt(PCI_HEADER_SIZE)) {
      throw new ViommuError('ERR_VFIO_USER_ATTACH', 'the vfio-user server offers no PCI configuration region, so it cannot sit on a PCI bus');
    }
    this.client.on('dmaFault', (event) => {
      this.dmaFaults.push(event);
      if (this.dmaFaults.length > FAULT_LOG_LIMIT) this.dmaFaults.shift();
    });
    const configSize = Math.min(PCI_CONFIG_SIZE, Number(this.client.region(CONFIG_REGION).size));
    const config = describePciConfig(await this.client.regionRead(CONFIG_REGION, 0, configSize));
    this.msiCapability = config.capabilities.find((capability) => capability.id === PCI_CAPABILITY_IDS.MSI)?.offset;
    const hasMsi = this.msiCapability !== undefined && (this.client.irqs[IRQ_INDEXES.values.MSI]?.count ?? 0) > 0;
    if (hasMsi) {
      const msi = EventFd.create();
      this.msi = msi;
      msi.watch((count) => void this.raiseMsi(Math.min(count, MSI_BURST_LIMIT)).catch((error: unknown) => this.report(error as Error)));
    }
    if (this.host.deviceIntx !== undefined && (this.client.irqs[IRQ_INDEXES.values.INTX]?.count ?? 0) > 0) {
      // INTx, MSI and MSI-X exclude each other (as in VFIO): INTx until the guest turns MSI on, as QEMU's vfio-pci.
      const intx = EventFd.create();
      this.intx = intx;
      await this.client.enableIntx(intx);
      this.interruptMode = 'intx';
      const deliver = this.host.deviceIntx.bind(this.host);
      intx.watch((count) => {
        if (this.isClosed) return;
        for (let i = 0; i < Math.min(count, MSI_BURST_LIMIT); i++) deliver(this.sourceId);
      });
    } else if (hasMsi) {
      await this.client.enableMsi([this.msi!]);
      this.interruptMode = 'msi';
    }
    // Queued before the shadow backend's replay, so the gaps are laid out (and the peer's size limit learnt) first.
    const covered = this.table.start();
    // Should attach() throw, the start's own failure must not go unhandled meanwhile.
    covered.catch(() => undefined);
    const backend = this.host.hostBackend;
    if (backend?.attachKinds.includes('vfio-user-dma-table')) {
      this.shadowAttachment = backend.attach({ kind: 'vfio-user-dma-table', sid: this.sourceId, table: this.table });
    }
    await covered;
    this.host.pci.add(this);
  }

  /** Resolves when every DMA_MAP/DMA_UNMAP decided so far has been answered. */
  async settled(): Promise<void> {
    await this.shadowAttachment?.settled();
    await this.table.settled();
  }

  // ---- configuration space and BARs ----------------------------------------------------------------------------

  async readConfig(offset: number, size: 1 | 2 | 4): Promise<number> {
    return Number(bytesToValue(await this.client.regionRead(CONFIG_REGION, offset, size)));
  }

  async writeConfig(offset: number, size: 1 | 2 | 4, value: number): Promise<boolean> {
    const bytes = new Uint8Array(size);
    valueToBytes(BigInt(value >>> 0), bytes);
    await this.client.regionWrite(CONFIG_REGION, offset, bytes);
    if (this.touchesMsiControl(offset, size)) await this.followMsiEnable();
    return touchesDecoding(offset, size);
  }

  private touchesMsiControl(offset: number, size: number): boolean {
    if (this.msiCapability === undefined || this.intx === undefined || this.msi === undefined) return false;
    const control = this.msiCapability + MSI_CONTROL_FIELD.offset;
    return offset < control + MSI_CONTROL_FIELD.width && offset + size > control;
  }

  /** Moves the server's signalling between INTx and MSI as the guest flips MSI Enable. */
  private async followMsiEnable(): Promise<void> {
    const bytes = await this.client.regionRead(CONFIG_REGION, this.msiCapability! + MSI_CONTROL_FIELD.offset, MSI_CONTROL_FIELD.width);
    const enabled = (Number(bytesToValue(bytes)) & MSI_CONTROL.bits.ENABLE) !== 0;
    if (enabled && this.interruptMode !== 'msi') {
      await this.client.disableIrqs(IRQ_INDEXES.values.INTX);
      await this.client.enableMsi([this.msi!]);
      this.interruptMode = 'msi';
    } else if (!enabled && this.interruptMode === 'msi') {
      await this.client.disableIrqs(IRQ_INDEXES.values.MSI);
      await this.client.enableIntx(this.intx!);
      this.interruptMode = 'intx';
    }
  }

  /**
   * Reads the header back from the device (its write masks and BAR sizing are the server's) and maps the BARs:
   * memory BARs on the MMIO bus while memory decoding is on, I/O BARs on the port bus while I/O decoding is on.
   */
  async updateMappings(bus: MmioBus, ports?: PortBus): Promise<void> {
    const header = await this.client.regionRead(CONFIG_REGION, 0, PCI_HEADER_SIZE);
    const command = Number(bytesToValue(header.subarray(TYPE0_HEADER.field('command').offset, TYPE0_HEADER.field('command').offset + 2)));
    const memoryEnabled = (command & PCI_COMMAND.bits.MEMORY_SPACE) !== 0;
    const ioEnabled = (command & PCI_COMMAND.bits.IO_SPACE) !== 0;
    for (let index = 0; index < PCI_BAR_COUNT; index++) {
      const windowName = `${this.name}.bar${index}`;
      bus.unmap(windowName);
      ports?.unmap(windowName);
      const region = this.client.regions[index];
      if (region === undefined || region.size === 0n || BAR_KEYS[index] === undefined) continue;
      const bar = readBar(header, index);
      if (bar.address === 0n) continue;
      try {
        if (bar.kind === 'memory' && memoryEnabled && bar.address + region.size <= BigInt(Number.MAX_SAFE_INTEGER)) {
          bus.map(windowName, Number(bar.address), Number(region.size), this.barHandler(index));
        } else if (bar.kind === 'io' && ioEnabled && ports !== undefined && bar.address + region.size <= BigInt(PORT_SPACE)) {
          ports.map(windowName, Number(bar.address), Number(region.size), this.portBarHandler(index, Number(bar.address)));
        }
      } catch {
        // Overlapping BARs decode nothing, as on real buses.
      }
    }
  }

  private barHandler(index: number): AsyncMmioHandler {
    return {
      read: async (offset: number, size: AccessSize) => bytesToValue(await this.client.regionRead(index, offset, size)),
      write: async (offset: number, size: AccessSize, value: bigint) => {
        const bytes = new Uint8Array(size);
        valueToBytes(value, bytes);
        await this.client.regionWrite(index, offset, bytes);
      },
    };
  }

  /** An I/O BAR: the port bus hands absolute ports, the region takes offsets from the BAR's base. */
  private portBarHandler(index: number, base: number): PortDevice {
    const region = this.barHandler(index);
    return {
      readPort: async (port: number, size: PortSize) => Number(await region.read(port - base, size)),
      writePort: (port: number, size: PortSize, value: number) => region.write(port - base, size, BigInt(value >>> 0)),
    };
  }

  // ---- interrupts -----------------------------------------------------------------------------------------------

  /** The message the guest programmed into the device's MSI capability, read from the device when it fires. */
  private async raiseMsi(count: number): Promise<void> {
    if (this.msiCapability === undefined || this.isClosed) return;
    let message: { address: bigint; data: number } | undefined;
    try {
      const bytes = await this.client.regionRead(
        CONFIG_REGION,
        this.msiCapability,
        Math.min(MSI_CAPABILITY_MAX_BYTES, PCI_CONFIG_SIZE - this.msiCapability),
      );
      const control = readConfigField(bytes, 0, MSI_CONTROL_FIELD);
      if ((control & MSI_CONTROL.bits.ENABLE) === 0) return;
      const fields = msiStructureFor(control).decode(bytes, 0) as Partial<Record<string, number>>;
      message = { address: (BigInt(fields.upperAddress ?? 0) << 32n) | BigInt(fields.address ?? 0), data: fields.data ?? 0 };
    } catch {
      // The device went away while its MSI was in flight: nothing to deliver.
      return;
    }
    // A host that fails to take the interrupt rejects this call; the watcher reports it in `errors`.
    for (let i = 0; i < count; i++) this.host.deviceInterrupt(this.sourceId, message.address, message.data);
  }

  // ---- life cycle -----------------------------------------------------------------------------------------------

  /** Withdraws the device's shadow mappings, then disconnects it and takes it off the bus. */
  async close(): Promise<void> {
    if (this.isClosed) return;
    try {
      await this.shadowAttachment?.detach();
    } finally {
      this.closeNow();
    }
  }

  /** Disconnects at once (the server drops every mapping with the connection) and takes the device off the bus. */
  closeNow(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    void this.shadowAttachment?.detach().catch(() => undefined);
    this.host.pci.remove(this);
    this.client.close();
    this.msi?.close();
    this.intx?.close();
  }
}
