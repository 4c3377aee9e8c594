/** What firmware does to PCI before the OS runs: size and place every BAR, enable decoding, route INTx and say so in INTERRUPT_LINE. */
import { BAR_KEYS, PCI_BAR, PCI_BAR_FLAG_MASK, PCI_BAR_MEMORY_TYPES, PCI_BAR_COUNT, PCI_COMMAND, TYPE0_HEADER } from '../devices/pci-layout';
import { CONFIG_ADDRESS_ENABLE, CONFIG_ADDRESS_PORT, CONFIG_DATA_PORT, type PciHost } from '../vmm/pci';

/** An address window firmware hands out BARs from. */
export interface BarWindow {
  readonly start: number;
  readonly end: number;
}

export interface PciFirmwareOptions {
  readonly memory: BarWindow;
  readonly io: BarWindow;
  /** The I/O APIC pin a function's INTx pin (1 = INTA) reaches; the routing the platform wires. */
  readonly intxRoute: (devfn: number, pin: number) => number;
}

/** One function as firmware left it, for reports. */
export interface PlacedFunction {
  readonly devfn: number;
  readonly vendorId: number;
  readonly deviceId: number;
  readonly bars: readonly { readonly index: number; readonly kind: 'io' | 'memory'; readonly address: number; readonly size: number }[];
  /** The I/O APIC pin written to INTERRUPT_LINE, when the function has an interrupt pin. */
  readonly interruptLine?: number;
}

const FUNCTIONS_ON_A_BUS = 256;
const ABSENT_VENDOR = 0xffff;
const ALL_ONES = 0xffffffff;
const IO_SPACE_MASK = 0xffff;

/** Config cycles through the host bridge's ports, exactly as a guest makes them (remote functions included). */
class ConfigCycles {
  constructor(private readonly pci: PciHost) {}

  private async select(devfn: number, offset: number): Promise<void> {
    await this.pci.writePort(CONFIG_ADDRESS_PORT, 4, (CONFIG_ADDRESS_ENABLE | (devfn << 8) | (offset & 0xfc)) >>> 0);
  }

  async read(devfn: number, offset: number, size: 1 | 2 | 4): Promise<number> {
    await this.select(devfn, offset);
    return (await this.pci.readPort(CONFIG_DATA_PORT + (offset & 3), size)) ?? ALL_ONES;
  }

  async write(devfn: number, offset: number, size: 1 | 2 | 4, value: number): Promise<void> {
    await this.select(devfn, offset);
    await this.pci.writePort(CONFIG_DATA_PORT + (offset & 3), size, value);
  }
}

function field(key: Parameters<typeof TYPE0_HEADER.field>[0]): number {
  return TYPE0_HEADER.field(key).offset;
}

/** Allocates naturally aligned ranges upward through a window. */
class WindowAllocator {
  private next: number;
  constructor(private readonly window: BarWindow) {
    this.next = window.start;
  }

  take(size: number): number | undefined {
    const address = Math.ceil(this.next / size) * size;
    if (address + size > this.window.end) return undefined;
    this.next = address + size;
    return address;
  }
}

/**
 * Walks bus 0, sizes each BAR by the all-ones probe, places it (largest first, so alignment wastes nothing),
 * turns on I/O and memory decoding (not bus mastering: drivers ask for that), and writes the INTx route into
 * INTERRUPT_LINE. A BAR that does not fit stays at 0 and undecoded, as firmware leaves what it cannot place.
 */
export async function setUpPci(pci: PciHost, options: PciFirmwareOptions): Promise<PlacedFunction[]> {
  const config = new ConfigCycles(pci);
  const memory = new WindowAllocator(options.memory);
  const io = new WindowAllocator(options.io);
  const placed: PlacedFunction[] = [];
  for (let devfn = 0; devfn < FUNCTIONS_ON_A_BUS; devfn++) {
    const vendorId = await config.read(devfn, field('vendorId'), 2);
    if (vendorId === ABSENT_VENDOR || vendorId === 0) continue;
    const deviceId = await config.read(devfn, field('deviceId'), 2);
    const probes: { index: number; kind: 'io' | 'memory'; size: number; is64: boolean }[] = [];
    for (let index = 0; index < PCI_BAR_COUNT; index++) {
      const offset = field(BAR_KEYS[index]!);
      const original = await config.read(devfn, offset, 4);
      await config.write(devfn, offset, 4, ALL_ONES);
      const sized = await config.read(devfn, offset, 4);
      await config.write(devfn, offset, 4, original);
      if (sized === 0) continue;
      const kind = (sized & PCI_BAR.bits.IO_SPACE) !== 0 ? 'io' : 'memory';
      let mask = (sized & ~(kind === 'io' ? PCI_BAR_FLAG_MASK.io : PCI_BAR_FLAG_MASK.memory)) >>> 0;
      if (mask === 0) continue;
      // I/O BARs may hardwire their upper 16 bits to 0: the port space is 64 KiB.
      if (kind === 'io' && mask <= IO_SPACE_MASK) mask = (mask | ~IO_SPACE_MASK) >>> 0;
      const size = (~mask >>> 0) + 1;
      const is64 = kind === 'memory' && PCI_BAR.get(sized, 'MEMORY_TYPE') === PCI_BAR_MEMORY_TYPES.values.BITS_64;
      probes.push({ index, kind, size, is64 });
      if (is64) index++;
    }
    const bars: PlacedFunction['bars'][number][] = [];
    for (const probe of [...probes].sort((a, b) => b.size - a.size)) {
      const address = (probe.kind === 'io' ? io : memory).take(probe.size);
      if (address === undefined) continue;
      const offset = field(BAR_KEYS[probe.index]!);
      await config.write(devfn, offset, 4, address);
      if (probe.is64) await config.write(devfn, offset + 4, 4, 0);
      bars.push({ index: probe.index, kind: probe.kind, address, size: probe.size });
    }
    const command = await config.read(devfn, field('command'), 2);
    await config.write(devfn, field('command'), 2, command | PCI_COMMAND.bits.IO_SPACE | PCI_COMMAND.bits.MEMORY_SPACE);
    const pin = await config.read(devfn, field('interruptPin'), 1);
    let interruptLine: number | undefined;
    if (pin >= 1 && pin <= 4) {
      interruptLine = options.intxRoute(devfn, pin);
      await config.write(devfn, field('interruptLine'), 1, interruptLine);
    }
    bars.sort((a, b) => a.index - b.index);
    placed.push({ devfn, vendorId, deviceId, bars, ...(interruptLine !== undefined ? { interruptLine } : {}) });
  }
  return placed;
}
