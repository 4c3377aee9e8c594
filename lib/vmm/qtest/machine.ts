/** What a qtest server drives: the port and memory accesses of one machine, as the guest CPU would make them. */
import type { QtestIrqDirection, QtestPortSize } from './protocol';

/** The sizes a sized memory access can have below eight bytes (eight-byte values travel as bigint). */
export type QtestNarrowSize = 1 | 2 | 4;

/**
 * A machine behind a QtestServer. Methods may answer synchronously or with a promise; the server runs commands one
 * at a time in line order either way. Sized accesses stay sized (MMIO registers care about the access width);
 * values are little-endian as on x86. A thrown error becomes a `FAIL <message>` answer for that one command.
 */
export interface QtestMachine {
  readPort(port: number, size: QtestPortSize): number | Promise<number>;
  writePort(port: number, size: QtestPortSize, value: number): void | Promise<void>;
  readMemory(address: bigint, size: QtestNarrowSize): number | Promise<number>;
  writeMemory(address: bigint, size: QtestNarrowSize, value: number): void | Promise<void>;
  readMemory64(address: bigint): bigint | Promise<bigint>;
  writeMemory64(address: bigint, value: bigint): void | Promise<void>;
  readBytes(address: bigint, length: number): Uint8Array | Promise<Uint8Array>;
  writeBytes(address: bigint, data: Uint8Array): void | Promise<void>;
  /** Optional: start reporting a device's GPIO lines as `IRQ` lines; false answers `FAIL Unknown device`. */
  interceptIrq?(direction: QtestIrqDirection, path: string): boolean | Promise<boolean>;
}
