/** The sample "dma-engine" device: QEMU's edu register interface over vfio-user, DMA mapped or by message, MSI and INTx. */

import { EduDevice, EDU_BAR_SIZE, EDU_PCI_IDENTITY, type EduDmaOutcome } from '../../devices/edu';
import { VfioUserDevice, type VfioUserDeviceOptions } from './device';
import { registerRegion } from './regions';

export interface DmaEngineOptions {
  /** Device addresses are masked to this many bits (QEMU's edu default: 28; the IOVA space is wider). */
  dmaMaskBits?: number;
  onDma?: (outcome: EduDmaOutcome) => void;
  onIrq?: VfioUserDeviceOptions['onIrq'];
}

export interface DmaEngine {
  readonly device: VfioUserDevice;
  readonly edu: EduDevice;
}

/**
 * BAR0 is the edu register file (1 MiB, served by message: registers have side effects, so it is not mmap-able).
 * Interrupts follow QEMU's edu: an MSI message per raise when software enabled MSI, else the INTx line.
 */
export function createDmaEngine(options: DmaEngineOptions = {}): DmaEngine {
  let device: VfioUserDevice | undefined;
  const edu = new EduDevice(
    {
      read: (address, into) => device!.dma.read(address, into),
      write: (address, data) => device!.dma.write(address, data),
    },
    {
      dmaMaskBits: options.dmaMaskBits ?? 28,
      onInterrupt: (raised) => {
        if (device === undefined) return;
        if (device.msiEnabled) {
          if (raised) device.signalMsi(0);
        } else device.setIntx(raised);
      },
      ...(options.onDma ? { onDma: options.onDma } : {}),
    },
  );
  device = new VfioUserDevice({
    pci: {
      identity: { ...EDU_PCI_IDENTITY, subsystemVendorId: 0x1af4, subsystemId: 0x1100, interruptPin: 1 },
      capabilities: [{ kind: 'msi', vectors: 1, address64: true }],
    },
    regions: { BAR0: { size: EDU_BAR_SIZE, handler: registerRegion(edu) } },
    irqs: { INTX: 1, MSI: 1, ERR: 1, REQ: 1 },
    reset: () => edu.reset(),
    ...(options.onIrq ? { onIrq: options.onIrq } : {}),
  });
  return { device, edu };
}

/** The devices `viommu serve --device NAME` knows. */
export const SAMPLE_DEVICES: Readonly<Record<string, { description: string; create: () => { device: VfioUserDevice } }>> = {
  'dma-engine': {
    description: "a DMA engine with the register interface of QEMU's edu device (1234:11e8): BAR0 registers, a 4 KiB buffer at 0x40000, MSI and INTx",
    create: () => createDmaEngine(),
  },
};
