/** FwCfg: QEMU's fw_cfg through its legacy x86 I/O interface, from which kvm-unit-tests reads RAM size and CPU counts. */
import { ViommuError } from '../errors';
import type { PortDevice, PortSize } from '../vmm/port-bus';

/*
 * QEMU maps one 2-port region ("fwcfg", at 0x510) and decodes by access size, not by port:
 *
 * | access         | port             | effect                                                          |
 * |----------------|------------------|-----------------------------------------------------------------|
 * | 16-bit write   | 0x510            | select item (value & ~0x4000), offset back to 0                 |
 * | 8-bit read     | 0x510 or 0x511   | next byte of the selected item; 0 past its end or for no item   |
 * | 8-bit write    | 0x510 or 0x511   | data write: ignored (items are read-only since QEMU 2.4)        |
 * | 16-bit read    | 0x510            | refused by the device: reads all-ones                           |
 *
 * The selector's bit 14 (0x4000) asks for write access and does not name an item; bit 15 (0x8000) marks
 * architecture-specific items and is part of the key.
 */
export const FW_CFG_PORTS = { selector: 0x510, data: 0x511 } as const;
export const FW_CFG_PORT_COUNT = 2;

/** Item keys, from QEMU's docs/specs/fw_cfg.rst; MAX_RAM is kvm-unit-tests' own (lib/x86/fwcfg.h), where 0 means no limit. */
export const FW_CFG_KEYS = { SIGNATURE: 0x00, ID: 0x01, RAM_SIZE: 0x03, NB_CPUS: 0x05, MAX_CPUS: 0x0f, MAX_RAM: 0x11 } as const;

const SELECT_WRITE_CHANNEL = 0x4000;
/** ID bit 0: the traditional (port) interface; bit 1 (DMA) stays clear because this device has no DMA port. */
const ID_TRADITIONAL_INTERFACE = 1;

export class FwCfg implements PortDevice {
  private readonly items: ReadonlyMap<number, Uint8Array>;
  /** Reset selects the signature, as QEMU's fw_cfg_reset does. */
  private selected: Uint8Array | undefined;
  private offset = 0;

  constructor(items: ReadonlyMap<number, Uint8Array>) {
    // Copied so that the caller changing its buffers cannot change what the guest already sees half-read.
    this.items = new Map([...items].map(([key, bytes]) => [key, Uint8Array.from(bytes)]));
    this.selected = this.items.get(FW_CFG_KEYS.SIGNATURE);
  }

  /** The items kvm-unit-tests asks for. `maxRamBytes` omitted (or 0) tells it there is no limit on usable RAM. */
  static forMachine(o: { ramBytes: number; cpus: number; maxRamBytes?: number }): FwCfg {
    const maxRamBytes = o.maxRamBytes ?? 0;
    for (const [name, value] of [
      ['ramBytes', o.ramBytes],
      ['maxRamBytes', maxRamBytes],
    ] as const) {
      if (!Number.isSafeInteger(value) || value < 0) {
        throw new ViommuError('ERR_FW_CFG_VALUE', `fw_cfg ${name} ${value} must be a non-negative whole number of bytes`);
      }
    }
    if (!Number.isInteger(o.cpus) || o.cpus < 1 || o.cpus > 0xffff) {
      throw new ViommuError('ERR_FW_CFG_VALUE', `fw_cfg cpus ${o.cpus} must be a whole number from 1 to 65535`);
    }
    return new FwCfg(
      new Map([
        [FW_CFG_KEYS.SIGNATURE, new TextEncoder().encode('QEMU')],
        [FW_CFG_KEYS.ID, littleEndian(ID_TRADITIONAL_INTERFACE, 4)],
        [FW_CFG_KEYS.RAM_SIZE, littleEndian(o.ramBytes, 8)],
        [FW_CFG_KEYS.NB_CPUS, littleEndian(o.cpus, 2)],
        [FW_CFG_KEYS.MAX_CPUS, littleEndian(o.cpus, 2)],
        [FW_CFG_KEYS.MAX_RAM, littleEndian(maxRamBytes, 8)],
      ]),
    );
  }

  readPort(_port: number, size: PortSize): number {
    if (size !== 1) return size === 2 ? 0xffff : 0xffffffff;
    if (!this.selected || this.offset >= this.selected.length) return 0;
    return this.selected[this.offset++];
  }

  writePort(_port: number, size: PortSize, value: number): void {
    if (size !== 2) return;
    this.selected = this.items.get(value & 0xffff & ~SELECT_WRITE_CHANNEL);
    this.offset = 0;
  }
}

function littleEndian(value: number, width: number): Uint8Array {
  const bytes = new Uint8Array(width);
  let rest = BigInt(value);
  for (let i = 0; i < width; i++, rest >>= 8n) bytes[i] = Number(rest & 0xffn);
  return bytes;
}
