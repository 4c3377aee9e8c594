/** Tiny Multiboot guests for machine tests and benches: a few 32-bit instructions assembled here, in an a.out-kludge image. */

/** Where the images load and start (1 MiB, above the PC's reserved area). */
export const GUEST_LOAD_ADDRESS = 0x10_0000;
const MULTIBOOT_MAGIC = 0x1bad_b002;
/** Header flag 16: the header carries the load addresses, so no ELF is needed. */
const MULTIBOOT_ADDRESSES_IN_HEADER = 1 << 16;
const HEADER_BYTES = 32;

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
