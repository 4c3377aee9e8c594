/** PortBus: routes the guest's x86 port I/O (IN/OUT) to the devices that claim port ranges, ISA-style. */
import { ViommuError } from '../errors';

export type PortSize = 1 | 2 | 4;

/** A device on the port bus. It sees absolute port numbers, so one device may claim ranges at several bases. */
export interface PortDevice {
  readPort(port: number, size: PortSize): number | Promise<number>;
  writePort(port: number, size: PortSize, value: number): void | Promise<void>;
}

interface Claim {
  readonly name: string;
  readonly base: number;
  readonly length: number;
  readonly device: PortDevice;
}

/** The x86 I/O address space is 64 KiB of byte-wide ports. */
export const PORT_SPACE = 0x10000;

const SIZE_MASK: Record<PortSize, number> = { 1: 0xff, 2: 0xffff, 4: 0xffffffff };

export class PortBus {
  private readonly claims: Claim[] = [];
  /** Port number to its claim: I/O exits are frequent, so lookup is one index, not a search. */
  private readonly owner: (Claim | undefined)[] = new Array<Claim | undefined>(PORT_SPACE);
  private readonly unclaimedCounts = new Map<number, { reads: number; writes: number }>();

  /** Accesses that reached no device, by port (a straddling access counts each unclaimed byte): a guest probing hardware we lack shows up here. */
  get unclaimed(): ReadonlyMap<number, { reads: number; writes: number }> {
    return this.unclaimedCounts;
  }

  /** Claims [base, base + length); overlapping claims throw ViommuError. */
  map(name: string, base: number, length: number, device: PortDevice): void {
    if (!Number.isInteger(base) || !Number.isInteger(length) || base < 0 || length < 1 || base + length > PORT_SPACE) {
      throw new ViommuError(
        'ERR_PORT_RANGE',
        `port range '${name}' [0x${hex(base)}, +${length}) must be a non-empty range of whole ports inside 0-0xffff`,
      );
    }
    const clash = this.claims.find((c) => c.base < base + length && base < c.base + c.length);
    if (clash) {
      throw new ViommuError(
        'ERR_PORT_OVERLAP',
        `port range '${name}' [0x${hex(base)}, 0x${hex(base + length)}) overlaps '${clash.name}' [0x${hex(clash.base)}, 0x${hex(clash.base + clash.length)}); pick a free range`,
      );
    }
    const claim: Claim = { name, base, length, device };
    this.claims.push(claim);
    for (let port = base; port < base + length; port++) this.owner[port] = claim;
  }

  /** Releases the range `name` claimed (a BAR moved or decoding turned off); nothing when it holds none. */
  unmap(name: string): void {
    const index = this.claims.findIndex((c) => c.name === name);
    if (index < 0) return;
    const [claim] = this.claims.splice(index, 1);
    for (let port = claim!.base; port < claim!.base + claim!.length; port++) this.owner[port] = undefined;
  }

  /** Unclaimed ports read all-ones (of the access size) and drop writes, as an ISA bus does; counted per port in `unclaimed` for reports. */
  read(port: number, size: PortSize): number | Promise<number> {
    checkAccess(port, size);
    const claim = this.claimHolding(port, size);
    if (claim) return thenApply(claim.device.readPort(port, size), (value) => (value & SIZE_MASK[size]) >>> 0);
    if (this.noneClaimed(port, size)) {
      this.count(port).reads++;
      return SIZE_MASK[size];
    }
    return this.readBytewise(port, size);
  }

  write(port: number, size: PortSize, value: number): void | Promise<void> {
    checkAccess(port, size);
    const masked = (value & SIZE_MASK[size]) >>> 0;
    const claim = this.claimHolding(port, size);
    if (claim) return claim.device.writePort(port, size, masked);
    if (this.noneClaimed(port, size)) {
      this.count(port).writes++;
      return;
    }
    return this.writeBytewise(port, size, masked);
  }

  private claimHolding(port: number, size: PortSize): Claim | undefined {
    const claim = this.owner[port];
    return claim && port + size <= claim.base + claim.length ? claim : undefined;
  }

  private noneClaimed(port: number, size: PortSize): boolean {
    for (let p = port; p < port + size; p++) if (this.owner[p & (PORT_SPACE - 1)]) return false;
    return true;
  }

  /**
   * An access straddling two claims (or a claim and a gap) reaches each byte's owner separately, little-endian,
   * the way the chipset splits a wide cycle for 8-bit ISA devices.
   */
  private readBytewise(port: number, size: PortSize): number | Promise<number> {
    const bytes: (number | Promise<number>)[] = [];
    for (let i = 0; i < size; i++) bytes.push(this.read((port + i) & (PORT_SPACE - 1), 1));
    const combine = (values: number[]): number => values.reduce((acc, byte, i) => acc + (byte & 0xff) * 2 ** (8 * i), 0);
    return bytes.some(isPromise) ? Promise.all(bytes).then(combine) : combine(bytes as number[]);
  }

  private writeBytewise(port: number, size: PortSize, value: number): void | Promise<void> {
    // Byte order matters to devices with side effects, so each byte waits for the one before.
    let pending: Promise<void> | undefined;
    for (let i = 0; i < size; i++) {
      const byte = (value >>> (8 * i)) & 0xff;
      const bytePort = (port + i) & (PORT_SPACE - 1);
      if (pending) pending = pending.then(() => this.write(bytePort, 1, byte));
      else {
        const result = this.write(bytePort, 1, byte);
        if (isPromise(result)) pending = result;
      }
    }
    return pending;
  }

  private count(port: number): { reads: number; writes: number } {
    let counts = this.unclaimedCounts.get(port);
    if (!counts) {
      counts = { reads: 0, writes: 0 };
      this.unclaimedCounts.set(port, counts);
    }
    return counts;
  }
}

/** Ports and sizes come from the VMM's exit decoding, never raw from the guest, so a bad one is our bug. */
function checkAccess(port: number, size: number): void {
  if (!Number.isInteger(port) || port < 0 || port >= PORT_SPACE) {
    throw new ViommuError('ERR_PORT_NUMBER', `port 0x${hex(port)} is outside 0-0xffff; pass the port from the I/O exit`);
  }
  if (size !== 1 && size !== 2 && size !== 4) {
    throw new ViommuError('ERR_PORT_SIZE', `port access size ${size} is not 1, 2 or 4; pass the size from the I/O exit`);
  }
}

function isPromise<T>(value: T | Promise<T>): value is Promise<T> {
  return typeof (value as { then?: unknown } | undefined)?.then === 'function';
}

function thenApply<T, U>(value: T | Promise<T>, apply: (resolved: T) => U): U | Promise<U> {
  return isPromise(value) ? value.then(apply) : apply(value);
}

function hex(value: number): string {
  return Number.isFinite(value) ? value.toString(16) : String(value);
}
