/** VfioUserDevice: the device-model API (config space, regions, IRQs, DMA, reset) that a vfio-user server exposes. */

import { PciConfigSpace, type PciBarDefinition, type PciCapabilityDefinition, type PciIdentity } from '../../devices/pci-config-space';
import { PCI_BAR_COUNT } from '../../devices/pci-layout';
import { ViommuError } from '../../errors';
import type { SharedRegion } from '../../memory';
import { REGION_INDEXES } from '../protocol';
import { VfioUserDeviceDma } from './device-dma';
import type { DmaMapping } from './dma-maps';
import { DeviceIrqs, type IrqDefinitions, type IrqEvents } from './irqs';
import { DeviceRegions, type RegionDefinitions, type RegionName } from './regions';

/** Why the device is being reset: the client asked (DEVICE_RESET), or the client went away. */
export type ResetReason = 'client' | 'lost-connection';

export interface VfioUserDeviceOptions {
  /** PCI identity and capabilities; the BARs and the expansion ROM follow from `regions`. */
  pci: {
    identity: PciIdentity;
    capabilities?: readonly PciCapabilityDefinition[];
    configSize?: 256 | 4096;
  };
  regions?: RegionDefinitions;
  /** Vector counts per IRQ index; MSI and MSI-X default to what their capabilities declare. */
  irqs?: IrqDefinitions;
  /** The device's own reset, after config space went back to its power-on values. */
  reset?: (reason: ResetReason) => void | Promise<void>;
  /** A client made a range available for DMA. */
  onDmaMap?: (mapping: DmaMapping) => void;
  /** A range is about to go away; the DMA_UNMAP is answered once this settles (drain transfers that use it here). */
  onDmaUnmap?: (mapping: DmaMapping) => void | Promise<void>;
  /** Every device-side IRQ trigger and what became of it (for logs and traces). */
  onIrq?: IrqEvents['onTrigger'];
}

function deviceError(message: string): ViommuError {
  return new ViommuError('ERR_VFIO_USER_DEVICE', message);
}

const BAR_NAMES: readonly RegionName[] = ['BAR0', 'BAR1', 'BAR2', 'BAR3', 'BAR4', 'BAR5'];

/** The BAR window a region needs: a power of two at least the region's size (vfio-user regions need not be one). */
function barWindow(size: bigint, minimum: bigint): bigint {
  let window = minimum;
  while (window < size) window <<= 1n;
  return window;
}

/** BAR definitions for config space from the region table: 64-bit above 2 GiB unless the region says otherwise. */
function barsFrom(regions: RegionDefinitions): (PciBarDefinition | undefined)[] {
  return BAR_NAMES.map((name) => {
    const region = regions[name as keyof RegionDefinitions];
    if (region === undefined) return undefined;
    const size = BigInt(region.size);
    const kind = region.bar?.kind ?? (size > 1n << 31n ? 'mem64' : 'mem32');
    return { size: barWindow(size, kind === 'io' ? 4n : 16n), kind, prefetchable: region.bar?.prefetchable ?? false };
  });
}

function irqDefaults(options: VfioUserDeviceOptions): IrqDefinitions {
  const irqs: IrqDefinitions = { ...options.irqs };
  for (const capability of options.pci.capabilities ?? []) {
    if (capability.kind === 'msi' && irqs.MSI === undefined) irqs.MSI = capability.vectors ?? 1;
    if (capability.kind === 'msix' && irqs.MSIX === undefined) irqs.MSIX = capability.tableSize;
  }
  return irqs;
}

/**
 * A PCI device as a vfio-user server shows it. The device state (config space, region memory, the model behind
 * the handlers) lives as long as this object; what a client brings (DMA mappings, eventfds) lives as long as its
 * session, which attaches itself here and is released when the client goes.
 */
export class VfioUserDevice {
  readonly config: PciConfigSpace;
  readonly regions: DeviceRegions;
  readonly irqs: DeviceIrqs;
  /** The device's DMA path (see VfioUserDeviceDma): mapped memory directly, messages otherwise. */
  readonly dma = new VfioUserDeviceDma();
  /** DMA that always goes by DMA_READ/DMA_WRITE messages, even where the client sent an fd (libvfio-user's vfu_dma_read/write). */
  readonly dmaByMessage = new VfioUserDeviceDma({ alwaysByMessage: true });
  private intxAsserted = false;
  private readonly msiPending = new Set<number>();
  private owner: object | undefined;

  constructor(private readonly options: VfioUserDeviceOptions) {
    const regions = options.regions ?? {};
    for (const name of Object.keys(regions)) {
      if (REGION_INDEXES.values[name as RegionName] === undefined || name === 'CONFIG') {
        throw deviceError(`region '${name}' is not one of BAR0..BAR5, ROM, VGA (CONFIG is the config space)`);
      }
    }
    this.config = new PciConfigSpace({
      identity: options.pci.identity,
      bars: barsFrom(regions).slice(0, PCI_BAR_COUNT),
      ...(regions.ROM === undefined ? {} : { romSize: Number(regions.ROM.size) }),
      ...(options.pci.capabilities === undefined ? {} : { capabilities: options.pci.capabilities }),
      ...(options.pci.configSize === undefined ? {} : { size: options.pci.configSize }),
    });
    this.config.onWrite(() => this.deliverUnmaskedMsi());
    this.irqs = new DeviceIrqs(irqDefaults(options), options.onIrq ? { onTrigger: options.onIrq } : {});
    this.regions = new DeviceRegions(
      regions,
      { read: (offset, into) => this.config.read(offset, into), write: (offset, data) => this.config.write(offset, data) },
      this.config.size,
    );
  }

  /** The shared memory behind a region defined with `mmap` (what the client maps). */
  memory(region: Exclude<RegionName, 'CONFIG'>): SharedRegion | undefined {
    return this.regions.memory(REGION_INDEXES.values[region]);
  }

  // ---- interrupts -------------------------------------------------------------------------------------------

  /**
   * Drives the INTx line. A rising edge signals the INTx eventfd (unless the command register disables INTx);
   * the status register's Interrupt Status bit follows the line.
   */
  setIntx(asserted: boolean): void {
    const rising = asserted && !this.intxAsserted;
    this.intxAsserted = asserted;
    this.config.setInterruptStatus(asserted);
    if (rising && !this.config.intxDisabled && this.irqs.count('INTX') > 0) this.irqs.trigger('INTX', 0);
  }

  get intxLevel(): boolean {
    return this.intxAsserted;
  }

  /** True when software enabled MSI in config space. */
  get msiEnabled(): boolean {
    return this.config.msi?.enabled ?? false;
  }

  get msixEnabled(): boolean {
    return this.config.msix?.enabled ?? false;
  }

  /**
   * Sends MSI `vector` as the capability allows: nothing unless MSI is enabled and the vector among those enabled;
   * a vector masked in config space is held pending until software unmasks it.
   */
  signalMsi(vector = 0): boolean {
    const msi = this.config.msi;
    if (msi === undefined || !msi.enabled || vector >= msi.vectorsEnabled || vector >= this.irqs.count('MSI')) return false;
    if (msi.masked(vector)) {
      this.msiPending.add(vector);
      this.config.setMsiPending(vector, true);
      return false;
    }
    return this.irqs.trigger('MSI', vector);
  }

  /** Sends MSI-X `vector` when MSI-X is enabled and the function is not masked. */
  signalMsix(vector: number): boolean {
    const msix = this.config.msix;
    if (msix === undefined || !msix.enabled || msix.functionMasked || vector >= this.irqs.count('MSIX')) return false;
    return this.irqs.trigger('MSIX', vector);
  }

  private deliverUnmaskedMsi(): void {
    if (this.msiPending.size === 0) return;
    const msi = this.config.msi;
    if (msi === undefined || !msi.enabled) return;
    for (const vector of [...this.msiPending]) {
      if (msi.masked(vector)) continue;
      this.msiPending.delete(vector);
      this.config.setMsiPending(vector, false);
      this.irqs.trigger('MSI', vector);
    }
  }

  // ---- used by the session ----------------------------------------------------------------------------------

  /** One client at a time: a session claims the device for its life (a programmer mistake otherwise). */
  claim(session: object): void {
    if (this.owner !== undefined && this.owner !== session) throw deviceError('the device already serves a client; serve clients one after another');
    this.owner = session;
  }

  release(session: object): void {
    if (this.owner === session) this.owner = undefined;
  }

  dmaMapped(mapping: DmaMapping): void {
    this.options.onDmaMap?.(mapping);
  }

  dmaUnmapping(mapping: DmaMapping): void | Promise<void> {
    return this.options.onDmaUnmap?.(mapping);
  }

  /** Config space back to power-on values, pending interrupts dropped, then the device's own reset. */
  reset(reason: ResetReason): void | Promise<void> {
    this.config.reset();
    this.msiPending.clear();
    this.intxAsserted = false;
    return this.options.reset?.(reason);
  }

  /** Releases the region memory; the device cannot be served afterwards. */
  close(): void {
    this.irqs.releaseAll();
    this.regions.close();
  }
}
