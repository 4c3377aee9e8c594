/** A test QtestMachine: sparse little-endian RAM over the whole 64-bit space plus scripted I/O ports. */
import type { QtestMachine, QtestNarrowSize } from '../../lib/vmm/qtest/machine';
import type { QtestPortSize } from '../../lib/vmm/qtest/protocol';

const PAGE_SIZE = 4096n;

export type PortReader = (size: QtestPortSize) => number;
export type PortWriter = (size: QtestPortSize, value: number) => void;

/** Unwritten RAM reads 0 and unclaimed ports read all ones, like an empty PC. */
export class RamMachine implements QtestMachine {
  readonly portWrites: Array<{ port: number; size: QtestPortSize; value: number }> = [];
  private readonly pages = new Map<bigint, Uint8Array>();
  private readonly readers = new Map<number, PortReader>();
  private readonly writers = new Map<number, PortWriter>();

  onPortRead(port: number, reader: PortReader): this {
    this.readers.set(port, reader);
    return this;
  }

  onPortWrite(port: number, writer: PortWriter): this {
    this.writers.set(port, writer);
    return this;
  }

  readPort(port: number, size: QtestPortSize): number {
    const reader = this.readers.get(port);
    return reader === undefined ? (size === 4 ? 0xffffffff : (1 << (size * 8)) - 1) : reader(size);
  }

  writePort(port: number, size: QtestPortSize, value: number): void {
    this.portWrites.push({ port, size, value });
    this.writers.get(port)?.(size, value);
  }

  readBytes(address: bigint, length: number): Uint8Array {
    const data = new Uint8Array(length);
    for (let i = 0; i < length; i++) {
      const at = BigInt.asUintN(64, address + BigInt(i));
      data[i] = this.pages.get(at / PAGE_SIZE)?.[Number(at % PAGE_SIZE)] ?? 0;
    }
    return data;
  }

  writeBytes(address: bigint, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const at = BigInt.asUintN(64, address + BigInt(i));
      let page = this.pages.get(at / PAGE_SIZE);
      if (page === undefined) {
        page = new Uint8Array(Number(PAGE_SIZE));
        this.pages.set(at / PAGE_SIZE, page);
      }
      page[Number(at % PAGE_SIZE)] = data[i] as number;
    }
  }

  readMemory(address: bigint, size: QtestNarrowSize): number {
    return Number(this.readLittleEndian(address, size));
  }

  writeMemory(address: bigint, size: QtestNarrowSize, value: number): void {
    this.writeLittleEndian(address, size, BigInt(value >>> 0));
  }

  readMemory64(address: bigint): bigint {
    return this.readLittleEndian(address, 8);
  }

  writeMemory64(address: bigint, value: bigint): void {
    this.writeLittleEndian(address, 8, value);
  }

  private readLittleEndian(address: bigint, size: number): bigint {
    const bytes = this.readBytes(address, size);
    let value = 0n;
    for (let i = size - 1; i >= 0; i--) value = (value << 8n) | BigInt(bytes[i] as number);
    return value;
  }

  private writeLittleEndian(address: bigint, size: number, value: bigint): void {
    const bytes = new Uint8Array(size);
    for (let i = 0; i < size; i++) bytes[i] = Number((value >> BigInt(i * 8)) & 0xffn);
    this.writeBytes(address, bytes);
  }
}

/**
 * A RamMachine dressed as the QEMU smoke machine: VT-d VER/CAP/ECAP values at 0xfed90000 and PCI config
 * mechanism #1 with the edu device (1234:11e8) at 00:04.0, so one script can read the same values from both.
 */
export function smokeMachine(cap = 0x00d2008c22260206n, ecap = 0xf00f4an): RamMachine {
  const machine = new RamMachine();
  machine.writeMemory64(0xfed90000n, 0x10n);
  machine.writeMemory64(0xfed90008n, cap);
  machine.writeMemory64(0xfed90010n, ecap);
  let configAddress = 0;
  machine.onPortWrite(0xcf8, (size, value) => {
    if (size === 4) configAddress = value >>> 0;
  });
  machine.onPortRead(0xcf8, () => configAddress);
  machine.onPortRead(0xcfc, (size) => {
    const eduIdAddress = (0x80000000 | (4 << 11)) >>> 0;
    const value = configAddress === eduIdAddress ? 0x11e81234 : 0xffffffff;
    return size === 4 ? value : value & ((1 << (size * 8)) - 1);
  });
  return machine;
}
