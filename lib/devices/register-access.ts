/** Sized register accesses: the shape every device register window (MMIO BAR, vfio-user region) is driven through. */

/** Widths of one CPU access to device registers, in bytes. */
export type AccessSize = 1 | 2 | 4 | 8;

/** A device's register window; offsets are relative to the window's base. Values are little-endian as on x86. */
export interface MmioHandler {
  read(offset: number, size: AccessSize): bigint;
  write(offset: number, size: AccessSize, value: bigint): void;
}

export function isAccessSize(count: number): count is AccessSize {
  return count === 1 || count === 2 || count === 4 || count === 8;
}

/** The little-endian value of `bytes` (1 to 8 of them). */
export function bytesToValue(bytes: Uint8Array): bigint {
  let value = 0n;
  for (let i = bytes.length - 1; i >= 0; i--) value = (value << 8n) | BigInt(bytes[i]!);
  return value;
}

/** Writes the low `into.length` bytes of `value` little-endian into `into`. */
export function valueToBytes(value: bigint, into: Uint8Array): void {
  let rest = value;
  for (let i = 0; i < into.length; i++) {
    into[i] = Number(rest & 0xffn);
    rest >>= 8n;
  }
}

/**
 * Splits a byte range into naturally aligned accesses of at most 8 bytes (as a CPU's memory core would issue
 * them), so a register window sees only the access sizes it is written for.
 */
export function alignedAccesses(offset: number, length: number): { offset: number; size: AccessSize }[] {
  const accesses: { offset: number; size: AccessSize }[] = [];
  let at = offset;
  const end = offset + length;
  while (at < end) {
    let size: AccessSize = 8;
    while (size > 1 && (at % size !== 0 || at + size > end)) size = (size / 2) as AccessSize;
    accesses.push({ offset: at, size });
    at += size;
  }
  return accesses;
}
