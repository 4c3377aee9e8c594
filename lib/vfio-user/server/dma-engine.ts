/** The sample "dma-engine" device: QEMU's edu register interface over vfio-user, DMA mapped or by message, MSI and INTx. */

import { EduDevice, EDU_BAR_SIZE, EDU_PCI_CAPABILITIES, EDU_PCI_IDENTITY, type EduDmaOutcome } from '../../devices/edu';
import { DmaFault } from '../../memory';
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
    pci: { identity: EDU_PCI_IDENTITY, capabilities: EDU_PCI_CAPABILITIES },
    regions: { BAR0: { size: EDU_BAR_SIZE, handler: registerRegion(edu) } },
    irqs: { INTX: 1, MSI: 1, ERR: 1, REQ: 1 },
    reset: () => edu.reset(),
    ...(options.onIrq ? { onIrq: options.onIrq } : {}),
  });
  return { device, edu };
}

/** What `viommu serve` hands a sample device: where to say what the device did that nobody else sees. */
export interface SampleDeviceHooks {
  log(message: string): void;
}

export interface SampleDevice {
  readonly description: string;
  create(hooks: SampleDeviceHooks): { device: VfioUserDevice };
}

/** A transfer that failed (a DMA fault, a range outside the buffer), in the words of the server's log. */
export function describeFailedDma(outcome: EduDmaOutcome): string | undefined {
  const { error } = outcome;
  if (error === undefined) return undefined;
  const why = error instanceof DmaFault ? `${error.reason} (errno ${error.errno})` : error.message;
  return `DMA of ${outcome.count} bytes from 0x${outcome.source.toString(16)} to 0x${outcome.destination.toString(16)} failed: ${why}`;
}

/** The devices `viommu serve --device NAME` knows. */
export const SAMPLE_DEVICES: Readonly<Record<string, SampleDevice>> = {
  'dma-engine': {
    description: "a DMA engine with the register interface of QEMU's edu device (1234:11e8): BAR0 registers, a 4 KiB buffer at 0x40000, MSI and INTx",
    // The edu register file has no error bit (QEMU's neither): a failed transfer still completes and interrupts.
    create: (hooks) =>
      createDmaEngine({
        onDma: (outcome) => {
          const failure = describeFailedDma(outcome);
          if (failure !== undefined) hooks.log(failure);
        },
      }),
  },
};
