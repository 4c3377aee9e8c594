/** PCI configuration space through ports 0xcf8/0xcfc (mechanism #1), type-0 headers and memory BARs. */
import type { MmioBus, MmioHandler } from './mmio-bus';

export const CONFIG_ADDRESS_PORT = 0xcf8;
export const CONFIG_DATA_PORT = 0xcfc;

const ENABLE_BIT = 0x80000000;
const COMMAND = 0x04;
const COMMAND_MEMORY = 0x2;
const BAR0 = 0x10;
const BAR_COUNT = 6;

export interface PciIdentity {
  vendorId: number;
  deviceId: number;
  revision: number;
  classCode: number; // 24 bits: class, subclass, prog-if
  subsystemVendorId?: number;
  subsystemId?: number;
}

export interface PciBar {
  /** Size in bytes, a power of two of at least 16. */
  size: number;
  handler: MmioHandler;
}

/** One PCI function: its 256-byte configuration space and the memory BARs it decodes when enabled. */
export class PciFunction {
  readonly config = new Uint8Array(256);
  private readonly view = new DataView(this.config.buffer);
  private readonly bars: (PciBar | undefined)[];

  constructor(
    readonly name: string,
    readonly bus: number,
    readonly devfn: number,
    identity: PciIdentity,
    bars: (PciBar | undefined)[],
  ) {
    this.bars = Array.from({ length: BAR_COUNT }, (_, i) => bars[i]);
    this.view.setUint16(0x00, identity.vendorId, true);
    this.view.setUint16(0x02, identity.deviceId, true);
    this.view.setUint8(0x08, identity.revision);
    this.view.setUint8(0x09, identity.classCode & 0xff);
    this.view.setUint16(0x0a, identity.classCode >>> 8, true);
    this.view.setUint16(0x2c, identity.subsystemVendorId ?? 0x1af4, true);
    this.view.setUint16(0x2e, identity.subsystemId ?? 0x1100, true);
    this.view.setUint8(0x3d, 1); // INTA#
  }

  /** The requester id a DMA from this function carries. */
  get sourceId(): number {
    return (this.bus << 8) | this.devfn;
  }

  readConfig(offset: number, size: 1 | 2 | 4): number {
    if (size === 1) return this.view.getUint8(offset);
    if (size === 2) return this.view.getUint16(offset, true);
    return this.view.getUint32(offset, true);
  }

  /** Applies a config write; returns true when the memory decoding (command or a BAR) may have changed. */
  writeConfig(offset: number, size: 1 | 2 | 4, value: number): boolean {
    for (let i = 0; i < size; i++) this.writeConfigByte(offset + i, (value >>> (8 * i)) & 0xff);
    return offset < BAR0 + 4 * BAR_COUNT && offset + size > COMMAND;
  }

  private writeConfigByte(offset: number, byte: number): void {
    if (offset === COMMAND) this.config[offset] = byte & 0x07; // I/O, memory, bus master
    else if (offset >= BAR0 && offset < BAR0 + 4 * BAR_COUNT) {
      const index = (offset - BAR0) >> 2;
      const bar = this.bars[index];
      // Writable bits are the address bits above the BAR's size; sizing writes of all ones read back the mask.
      const mask = bar === undefined ? 0 : ~(bar.size - 1) >>> 0;
      const shift = 8 * ((offset - BAR0) & 3);
      this.config[offset] = (byte & (mask >>> shift)) & 0xff;
    } else if (offset === 0x3c || offset === 0x0c || offset === 0x0d) this.config[offset] = byte; // line, cache, latency
  }

  /** Maps every enabled BAR on the bus (or removes them when memory decoding is off). */
  updateMappings(bus: MmioBus): void {
    const enabled = (this.view.getUint16(COMMAND, true) & COMMAND_MEMORY) !== 0;
    this.bars.forEach((bar, index) => {
      const name = `${this.name}.bar${index}`;
      bus.unmap(name);
      if (bar === undefined || !enabled) return;
      const base = this.view.getUint32(BAR0 + 4 * index, true) & ~(bar.size - 1) & ~0xf;
      if (base === 0) return;
      try {
        bus.map(name, base >>> 0, bar.size, bar.handler);
      } catch {
        // A guest may program overlapping BARs; the clashing one simply decodes nothing, as on real buses.
      }
    });
  }
}

/** The host bridge's config mechanism: 0xcf8 selects bus/device/function/register, 0xcfc moves the data. */
export class PciHost {
  private address = 0;
  private readonly functions = new Map<number, PciFunction>();

  constructor(private readonly mmio: MmioBus) {}

  add(fn: PciFunction): void {
    this.functions.set((fn.bus << 8) | fn.devfn, fn);
  }

  readPort(port: number, size: 1 | 2 | 4): number | undefined {
    if (port === CONFIG_ADDRESS_PORT && size === 4) return this.address >>> 0;
    if (port >= CONFIG_DATA_PORT && port + size <= CONFIG_DATA_PORT + 4) {
      const target = this.selected();
      if (target === undefined) return size === 4 ? 0xffffffff : (1 << (8 * size)) - 1;
      return target.fn.readConfig(target.register + (port - CONFIG_DATA_PORT), size);
    }
    return undefined;
  }

  writePort(port: number, size: 1 | 2 | 4, value: number): boolean {
    if (port === CONFIG_ADDRESS_PORT && size === 4) {
      this.address = value >>> 0;
      return true;
    }
    if (port >= CONFIG_DATA_PORT && port + size <= CONFIG_DATA_PORT + 4) {
      const target = this.selected();
      if (target !== undefined && target.fn.writeConfig(target.register + (port - CONFIG_DATA_PORT), size, value)) {
        target.fn.updateMappings(this.mmio);
      }
      return true;
    }
    return false;
  }

  private selected(): { fn: PciFunction; register: number } | undefined {
    if ((this.address & ENABLE_BIT) === 0) return undefined;
    const fn = this.functions.get((this.address >>> 8) & 0xffff);
    return fn === undefined ? undefined : { fn, register: this.address & 0xfc };
  }
}
