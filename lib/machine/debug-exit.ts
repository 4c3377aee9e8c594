/** DebugExit: QEMU's isa-debug-exit, the port through which kvm-unit-tests ends the machine with its result. */
import type { PortDevice, PortSize } from '../vmm/port-bus';

/** QEMU's isa-debug-exit defaults as kvm-unit-tests runs it: iobase 0xf4, iosize 4. */
export const DEBUG_EXIT_PORT = 0xf4;
export const DEBUG_EXIT_PORT_COUNT = 4;

export class DebugExit implements PortDevice {
  /**
   * `onExit` gets QEMU's exit status `(written << 1) | 1`, computed without 32-bit overflow (so up to 2^33 - 1;
   * a process exit code keeps its low 8 bits, as QEMU's does), and the value written. An odd status can never
   * be 0, so a guest cannot fake a clean exit: kvm-unit-tests' exit(0) gives 1, meaning pass.
   */
  constructor(private readonly onExit: (status: number, written: number) => void) {}

  /** The device has no readable register; it reads like an empty ISA slot. */
  readPort(_port: number, size: PortSize): number {
    return size === 1 ? 0xff : size === 2 ? 0xffff : 0xffffffff;
  }

  /** Any write of any width to any of its ports exits, as in QEMU; every write is reported and the machine decides when to stop. */
  writePort(_port: number, size: PortSize, value: number): void {
    const written = size === 4 ? value >>> 0 : value & (size === 1 ? 0xff : 0xffff);
    this.onExit(written * 2 + 1, written);
  }
}
