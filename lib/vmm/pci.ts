/** PCI configuration space through ports 0xcf8/0xcfc (mechanism #1): type-0 functions and the memory BARs they decode. */
import { PciConfigSpace, type PciCapabilityDefinition, type PciIdentity } from '../devices/pci-config-space';
import { BAR_KEYS, PCI_BAR_COUNT, TYPE0_HEADER } from '../devices/pci-layout';
import { isPromiseLike } from '../memory/dma-space';
import type { AsyncMmioHandler, MmioBus } from './mmio-bus';
import type { PortBus } from './port-bus';

export type { PciIdentity } from '../devices/pci-config-space';

export const CONFIG_ADDRESS_PORT = 0xcf8;
export const CONFIG_DATA_PORT = 0xcfc;

/** CONFIG_ADDRESS bit 31: the next CONFIG_DATA access goes to configuration space. */
export const CONFIG_ADDRESS_ENABLE = 0x80000000;
/** CONFIG_ADDRESS bits 7:0: the register within the function's 256-byte space. */
const CONFIG_REGISTER_MASK = 0xff;
/** Config writes in [command, end of BAR5) may change what the function decodes. */
const DECODING_START = TYPE0_HEADER.field('command').offset;
const DECODING_END = TYPE0_HEADER.field(BAR_KEYS[PCI_BAR_COUNT - 1]).offset + 4;

export interface PciBar {
  /** Size in bytes, a power of two of at least 16. */
  size: number;
  handler: AsyncMmioHandler;
}

/**
 * What the host bridge needs of a function on the bus. A function whose configuration space lives elsewhere (a
 * vfio-user device in another process) answers with promises; the host bridge passes them on to the CPU access.
 */
export interface PciEndpoint {
  readonly name: string;
  readonly bus: number;
  readonly devfn: number;
  readConfig(offset: number, size: 1 | 2 | 4): number | Promise<number>;
  /** Applies a config write; true when the memory decoding (command or a BAR) may have changed. */
  writeConfig(offset: number, size: 1 | 2 | 4, value: number): boolean | Promise<boolean>;
  /** Maps every enabled BAR: memory BARs on `bus`, I/O BARs on `ports` (or removes them when decoding is off). */
  updateMappings(bus: MmioBus, ports?: PortBus): void | Promise<void>;
}

/** Whether a config write at [offset, offset + size) touches the command register or a BAR. */
export function touchesDecoding(offset: number, size: number): boolean {
  return offset < DECODING_END && offset + size > DECODING_START;
}

/** One PCI function: its configuration space (write masks, BAR sizing, capabilities) and the memory BARs it decodes. */
export class PciFunction implements PciEndpoint {
  readonly config: PciConfigSpace;
  private readonly bars: (PciBar | undefined)[];

  constructor(
    readonly name: string,
    readonly bus: number,
    readonly devfn: number,
    identity: PciIdentity,
    bars: (PciBar | undefined)[],
    capabilities: readonly PciCapabilityDefinition[] = [],
  ) {
    this.bars = Array.from({ length: PCI_BAR_COUNT }, (_, i) => bars[i]);
    this.config = new PciConfigSpace({ identity, bars: this.bars.map((bar) => (bar === undefined ? undefined : { size: bar.size })), capabilities });
  }

  /** The requester id a DMA from this function carries. */
  get sourceId(): number {
    return (this.bus << 8) | this.devfn;
  }

  readConfig(offset: number, size: 1 | 2 | 4): number {
    if (size === 1) return this.config.readU8(offset);
    if (size === 2) return this.config.readU16(offset);
    return this.config.readU32(offset);
  }

  /** Applies a config write; returns true when the memory decoding (command or a BAR) may have changed. */
  writeConfig(offset: number, size: 1 | 2 | 4, value: number): boolean {
    this.config.write(
      offset,
      Uint8Array.from({ length: size }, (_, i) => (value >>> (8 * i)) & 0xff),
    );
    return touchesDecoding(offset, size);
  }

  /** Maps every enabled BAR on the bus (or removes them when memory decoding is off). */
  updateMappings(bus: MmioBus): void {
    const enabled = this.config.memoryEnabled;
    this.bars.forEach((bar, index) => {
      const name = `${this.name}.bar${index}`;
      bus.unmap(name);
      if (bar === undefined || !enabled) return;
      const base = this.config.barAddress(index);
      if (base === 0n) return;
      try {
        bus.map(name, Number(base), bar.size, bar.handler);
      } catch {
        // A guest may program overlapping BARs; the clashing one simply decodes nothing, as on real buses.
      }
    });
  }
}

/** The host bridge's config mechanism: 0xcf8 selects bus/device/function/register, 0xcfc moves the data. */
export class PciHost {
  private address = 0;
  private readonly functions = new Map<number, PciEndpoint>();

  constructor(
    private readonly mmio: MmioBus,
    private readonly ports?: PortBus,
  ) {}

  add(fn: PciEndpoint): void {
    this.functions.set((fn.bus << 8) | fn.devfn, fn);
  }

  /** Takes a function off the bus, with its BAR windows. */
  remove(fn: PciEndpoint): void {
    const key = (fn.bus << 8) | fn.devfn;
    if (this.functions.get(key) !== fn) return;
    this.functions.delete(key);
    for (let index = 0; index < PCI_BAR_COUNT; index++) {
      this.mmio.unmap(`${fn.name}.bar${index}`);
      this.ports?.unmap(`${fn.name}.bar${index}`);
    }
  }

  readPort(port: number, size: 1 | 2 | 4): number | Promise<number> | undefined {
    if (port === CONFIG_ADDRESS_PORT && size === 4) return this.address >>> 0;
    if (port >= CONFIG_DATA_PORT && port + size <= CONFIG_DATA_PORT + 4) {
      const target = this.selected();
      if (target === undefined) return size === 4 ? 0xffffffff : (1 << (8 * size)) - 1;
      return target.fn.readConfig(target.register | (port - CONFIG_DATA_PORT), size);
    }
    return undefined;
  }

  /** True when the port is the bridge's (a promise of true while a remote function takes the write). */
  writePort(port: number, size: 1 | 2 | 4, value: number): boolean | Promise<boolean> {
    if (port === CONFIG_ADDRESS_PORT && size === 4) {
      this.address = value >>> 0;
      return true;
    }
    if (port >= CONFIG_DATA_PORT && port + size <= CONFIG_DATA_PORT + 4) {
      const target = this.selected();
      if (target === undefined) return true;
      const fn = target.fn;
      const changed = fn.writeConfig(target.register | (port - CONFIG_DATA_PORT), size, value);
      if (!isPromiseLike(changed)) {
        if (!changed) return true;
        const mapped = fn.updateMappings(this.mmio, this.ports);
        return isPromiseLike(mapped) ? mapped.then(() => true) : true;
      }
      return changed.then(async (decodingChanged) => {
        if (decodingChanged) await fn.updateMappings(this.mmio, this.ports);
        return true;
      });
    }
    return false;
  }

  private selected(): { fn: PciEndpoint; register: number } | undefined {
    if ((this.address & CONFIG_ADDRESS_ENABLE) === 0) return undefined;
    const fn = this.functions.get((this.address >>> 8) & 0xffff);
    // The register keeps CONFIG_ADDRESS bits 1:0, ORed with the data port's byte lane, as QEMU's host bridge does:
    // kvm-unit-tests selects register 2 and reads a word at 0xcfc to get the device id.
    return fn === undefined ? undefined : { fn, register: this.address & CONFIG_REGISTER_MASK };
  }
}
