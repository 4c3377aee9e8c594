/** MmioBus: routes guest-physical MMIO accesses to the device windows mapped on it. */
import type { AccessSize } from '../devices/register-access';
import { ViommuError } from '../errors';

export type { AccessSize, MmioHandler } from '../devices/register-access';

/**
 * A window whose accesses may complete later (a register file in another process, a write that must wait for
 * the host side to catch up). Every MmioHandler is one; callers await only when they get a promise.
 */
export interface AsyncMmioHandler {
  read(offset: number, size: AccessSize): bigint | Promise<bigint>;
  write(offset: number, size: AccessSize, value: bigint): void | Promise<void>;
}

interface Window {
  name: string;
  base: number;
  size: number;
  handler: AsyncMmioHandler;
}

export class MmioBus {
  private windows: Window[] = [];

  /** Maps (or, with the same name, moves) a window; overlapping another window is refused. */
  map(name: string, base: number, size: number, handler: AsyncMmioHandler): void {
    this.unmap(name);
    const clash = this.windows.find((w) => w.base < base + size && base < w.base + w.size);
    if (clash) throw new ViommuError('ERR_MMIO_OVERLAP', `MMIO window '${name}' at 0x${base.toString(16)} overlaps '${clash.name}'`);
    this.windows.push({ name, base, size, handler });
  }

  unmap(name: string): void {
    this.windows = this.windows.filter((w) => w.name !== name);
  }

  /** The window holding the whole access, with the offset into it. */
  find(address: number, size: number): { handler: AsyncMmioHandler; offset: number } | undefined {
    for (const window of this.windows) {
      if (address >= window.base && address + size <= window.base + window.size) {
        return { handler: window.handler, offset: address - window.base };
      }
    }
    return undefined;
  }
}
