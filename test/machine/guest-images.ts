/** Tiny Multiboot guests for machine tests and benches: a few 32-bit instructions assembled here, in an a.out-kludge image. */
import { EDU_BUFFER_ADDRESS, EDU_DMA_COMMAND, EDU_REGISTERS } from '../../lib/devices/edu';
import { PCI_COMMAND, TYPE0_HEADER } from '../../lib/devices/pci-layout';
import { MACHINE_LAYOUT } from '../../lib/machine/kvm-machine';
import { DMAR_BASE, EDU_DEVFN } from '../../lib/vmm/testbed';
import { GCMD, GSTS, OFFSET } from '../../lib/vtd/register-bits';

/** Where the images load and start (1 MiB, above the PC's reserved area). */
export const GUEST_LOAD_ADDRESS = 0x10_0000;
const MULTIBOOT_MAGIC = 0x1bad_b002;
/** Header flag 16: the header carries the load addresses, so no ELF is needed. */
const MULTIBOOT_ADDRESSES_IN_HEADER = 1 << 16;
const HEADER_BYTES = 32;
/** Where the machine's firmware puts edu's BAR0: the PCI memory window's start, edu's 1 MiB BAR being the largest there. */
export const EDU_BAR0 = MACHINE_LAYOUT.pciMemory.start;

function u32(value: number): number[] {
  return [value & 0xff, (value >>> 8) & 0xff, (value >>> 16) & 0xff, (value >>> 24) & 0xff];
}

function u16(value: number): number[] {
  return [value & 0xff, (value >>> 8) & 0xff];
}

/** Emits 32-bit protected-mode instructions (paging off, flat segments), with labels for short backward jumps. */
export class GuestCode {
  readonly bytes: number[] = [];

  /** mov dword [address], value */
  store32(address: number, value: number): this {
    this.bytes.push(0xc7, 0x05, ...u32(address), ...u32(value));
    return this;
  }

  /** mov eax, [address] */
  load32(address: number): this {
    this.bytes.push(0xa1, ...u32(address));
    return this;
  }

  /** A 64-bit store as two dword stores, low half first (a 32-bit guest's way to write a qword register or table entry). */
  store64(address: number, value: bigint): this {
    return this.store32(address, Number(BigInt.asUintN(32, value))).store32(address + 4, Number(BigInt.asUintN(32, value >> 32n)));
  }

  /** mov [address], eax */
  storeEax(address: number): this {
    this.bytes.push(0xa3, ...u32(address));
    return this;
  }

  /** Spins until the dword at `address` has every bit of `mask` set (or, with `clear`, none of them). */
  waitFor(address: number, mask: number, clear = false): this {
    const top = this.bytes.length;
    this.load32(address);
    this.bytes.push(0xa9, ...u32(mask)); // test eax, mask
    // jz / jnz back to the load: rel8 from the end of this 2-byte jump.
    this.bytes.push(clear ? 0x75 : 0x74, (top - (this.bytes.length + 2)) & 0xff);
    return this;
  }

  /** out port, value with an access of `size` bytes (mov dx, port; mov eax, value; out dx, al/ax/eax). */
  out(port: number, value: number, size: 1 | 2 | 4 = 4): this {
    this.bytes.push(0x66, 0xba, ...u16(port), 0xb8, ...u32(value));
    if (size === 1) this.bytes.push(0xee);
    else if (size === 2) this.bytes.push(0x66, 0xef);
    else this.bytes.push(0xef);
    return this;
  }

  /** A PCI config dword write through 0xcf8/0xcfc. */
  pciConfigWrite(devfn: number, register: number, value: number): this {
    return this.out(0xcf8, (0x8000_0000 | (devfn << 8) | register) >>> 0).out(0xcfc, value);
  }

  /** Reads the dword at `address` `count` times (mov ecx, count; loop: mov eax, [address]; dec ecx; jnz loop). */
  readRepeatedly(address: number, count: number): this {
    this.bytes.push(0xb9, ...u32(count));
    const top = this.bytes.length;
    this.load32(address);
    this.bytes.push(0x49); // dec ecx
    this.bytes.push(0x75, (top - (this.bytes.length + 2)) & 0xff);
    return this;
  }

  /** Points the VT-d unit at `rootTable` and turns DMA remapping on, as a driver does: RTADDR, SRTP, then TE, each awaited in GSTS. */
  enableDmaRemapping(rootTable: number): this {
    return this.store64(DMAR_BASE + OFFSET.RTADDR, BigInt(rootTable))
      .store32(DMAR_BASE + OFFSET.GCMD, GCMD.SRTP)
      .waitFor(DMAR_BASE + OFFSET.GSTS, GSTS.RTPS)
      .store32(DMAR_BASE + OFFSET.GCMD, GCMD.TE)
      .waitFor(DMAR_BASE + OFFSET.GSTS, GSTS.TES);
  }

  /** Lets edu (00:04.0) master the bus and has its engine read `bytes` at `iova` into its buffer; waits until the engine is done. */
  eduDmaRead(iova: number, bytes: number): this {
    const command = TYPE0_HEADER.field('command').offset;
    const edu = (register: number) => EDU_BAR0 + register;
    return this.pciConfigWrite(EDU_DEVFN, command, PCI_COMMAND.bits.MEMORY_SPACE | PCI_COMMAND.bits.BUS_MASTER)
      .store64(edu(EDU_REGISTERS.dmaSource), BigInt(iova))
      .store64(edu(EDU_REGISTERS.dmaDestination), BigInt(EDU_BUFFER_ADDRESS))
      .store64(edu(EDU_REGISTERS.dmaCount), BigInt(bytes))
      .store32(edu(EDU_REGISTERS.dmaCommand), EDU_DMA_COMMAND.RUN)
      .waitFor(edu(EDU_REGISTERS.dmaCommand), EDU_DMA_COMMAND.RUN, true);
  }

  /** isa-debug-exit: the machine ends with this status. */
  exit(status: number): this {
    return this.out(0xf4, status);
  }

  /** Loads an IDT with limit 0 and executes ud2: #UD, then #GP, then #DF, then a triple fault. */
  tripleFault(): this {
    const descriptor = GUEST_LOAD_ADDRESS + 0xff0;
    this.bytes.push(0x0f, 0x01, 0x1d, ...u32(descriptor)); // lidt [descriptor] (zeroed bss: limit 0, base 0)
    this.bytes.push(0x0f, 0x0b); // ud2
    return this;
  }

  /** jmp $ */
  spin(): this {
    this.bytes.push(0xeb, 0xfe);
    return this;
  }
}

/** The code as a Multiboot image loaded at GUEST_LOAD_ADDRESS with a page of zeroed bss after it. */
export function multibootImage(code: GuestCode): Uint8Array {
  const checksum = -(MULTIBOOT_MAGIC + MULTIBOOT_ADDRESSES_IN_HEADER) >>> 0;
  const entry = GUEST_LOAD_ADDRESS + HEADER_BYTES;
  const header = [
    ...u32(MULTIBOOT_MAGIC),
    ...u32(MULTIBOOT_ADDRESSES_IN_HEADER),
    ...u32(checksum),
    ...u32(GUEST_LOAD_ADDRESS),
    ...u32(GUEST_LOAD_ADDRESS),
    ...u32(0),
    ...u32(GUEST_LOAD_ADDRESS + 0x1000),
    ...u32(entry),
  ];
  return Uint8Array.from([...header, ...code.bytes]);
}
