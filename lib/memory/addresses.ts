/** Branded address types, so that a guest-physical address, an IOVA and an offset cannot be mixed up silently. */
import { ViommuError } from '../errors';

declare const brand: unique symbol;
type Brand<T, B extends string> = T & { readonly [brand]: B };

/** A guest-physical address: fits a JS number (52 bits). */
export type GuestAddress = Brand<number, 'GuestAddress'>;
/** A device-visible I/O virtual address: up to 64 bits, so a bigint. */
export type Iova = Brand<bigint, 'Iova'>;
/** A byte offset inside one memory region. */
export type RegionOffset = Brand<number, 'RegionOffset'>;

/** The largest guest-physical address we model (52-bit physical address width). */
export const MAX_GUEST_ADDRESS = 2 ** 52 - 1;
export const MAX_IOVA = (1n << 64n) - 1n;

export function guestAddress(value: number | bigint): GuestAddress {
  const n = typeof value === 'bigint' ? Number(value) : value;
  if (!Number.isSafeInteger(n) || n < 0 || n > MAX_GUEST_ADDRESS || (typeof value === 'bigint' && BigInt(n) !== value)) {
    throw new ViommuError('ERR_ADDRESS_RANGE', `guest-physical address ${String(value)} is not an integer in [0, 2^52)`);
  }
  return n as GuestAddress;
}

export function iova(value: number | bigint): Iova {
  const n = typeof value === 'number' ? BigInt(value) : value;
  if (n < 0n || n > MAX_IOVA) {
    throw new ViommuError('ERR_ADDRESS_RANGE', `IOVA ${String(value)} is not an integer in [0, 2^64)`);
  }
  return n as Iova;
}

export function regionOffset(value: number): RegionOffset {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new ViommuError('ERR_ADDRESS_RANGE', `region offset ${value} is not a non-negative integer`);
  }
  return value as RegionOffset;
}

/** addr + length as a guest address, checked against the modelled range (end is exclusive, so it may equal 2^52). */
export function checkedEnd(start: number, length: number): number {
  const end = start + length;
  if (!Number.isSafeInteger(length) || length < 0 || end > MAX_GUEST_ADDRESS + 1) {
    throw new ViommuError('ERR_ADDRESS_RANGE', `range at ${hex(start)} of ${length} bytes leaves the 52-bit physical space`);
  }
  return end;
}

export function hex(value: number | bigint): string {
  return `0x${value.toString(16)}`;
}
