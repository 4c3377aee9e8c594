/** Bounds-checked reading and writing of one message payload, turning every violation into a protocol error. */

import { ViommuError } from '../errors';
import { invalid } from './errors';
import type { FieldSpec, FlagSet, StructLayout, StructValue } from './layout';

/** A received payload; every read is checked against its length before any field is looked at. */
export class PayloadReader {
  readonly view: DataView;

  constructor(
    readonly bytes: Uint8Array,
    /** What this payload is, for messages: e.g. "DMA_MAP command". */
    readonly what: string,
  ) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  get length(): number {
    return this.bytes.length;
  }

  requireExactly(size: number, why = 'its layout'): void {
    if (this.bytes.length !== size) {
      throw invalid('ERR_VFIO_USER_PAYLOAD_SIZE', `${this.what}: payload is ${this.bytes.length} bytes, ${why} needs exactly ${size}`);
    }
  }

  requireAtLeast(size: number, why = 'its layout'): void {
    if (this.bytes.length < size) {
      throw invalid('ERR_VFIO_USER_PAYLOAD_SIZE', `${this.what}: payload is ${this.bytes.length} bytes, ${why} needs at least ${size}`);
    }
  }

  /** Reads a struct at `at` after checking that it fits and that its reserved fields are zero. */
  read<F extends readonly FieldSpec[]>(layout: StructLayout<F>, at = 0): StructValue<F> {
    if (at < 0 || at + layout.size > this.bytes.length) {
      throw invalid(
        'ERR_VFIO_USER_PAYLOAD_SIZE',
        `${this.what}: ${layout.name} at offset ${at} needs ${layout.size} bytes, the payload has ${this.bytes.length}`,
      );
    }
    const reserved = layout.findNonZeroReserved(this.view, at);
    if (reserved !== undefined) {
      throw invalid('ERR_VFIO_USER_RESERVED', `${this.what}: reserved field ${layout.name}.${reserved.spec} is not zero`);
    }
    return layout.decode(this.view, at);
  }

  /**
   * A copy of bytes [start, end): decoded data must not alias the receive buffer, which a transport may reuse for
   * the next message.
   */
  copy(start: number, end = this.bytes.length): Uint8Array {
    return this.bytes.slice(start, end);
  }

  requireKnownFlags(flags: number, set: FlagSet<string>): void {
    const unknown = set.unknownBits(flags);
    if (unknown !== 0) {
      throw invalid('ERR_VFIO_USER_UNKNOWN_FLAGS', `${this.what}: unknown ${set.name} bits 0x${unknown.toString(16)}`);
    }
  }

  requireArgszAtLeast(argsz: number, size: number): void {
    if (argsz < size) throw invalid('ERR_VFIO_USER_ARGSZ', `${this.what}: argsz ${argsz} is below the ${size}-byte struct`);
  }

  requireZero(value: number | bigint, spec: string): void {
    if (value !== 0 && value !== 0n) {
      throw invalid('ERR_VFIO_USER_RESERVED', `${this.what}: ${spec} must be zero, got ${value}`);
    }
  }
}

/** A payload under construction: allocated once at its final size, then filled. */
export class PayloadWriter {
  readonly bytes: Uint8Array;
  readonly view: DataView;

  constructor(size: number) {
    this.bytes = new Uint8Array(size);
    this.view = new DataView(this.bytes.buffer);
  }

  write<F extends readonly FieldSpec[]>(layout: StructLayout<F>, value: StructValue<F>, at = 0): this {
    layout.encode(value, this.view, at);
    return this;
  }

  put(data: Uint8Array, at: number): this {
    this.bytes.set(data, at);
    return this;
  }
}

/** Encoding a body that cannot be put on the wire is a programmer mistake, not a peer's. */
export function encodeError(what: string, message: string): ViommuError {
  return new ViommuError('ERR_VFIO_USER_ENCODE', `${what}: ${message}`);
}

/** Checks at encode time that a byte count fits a u32 count field. */
export function requireU32Length(what: string, data: Uint8Array): number {
  if (data.length >= 2 ** 32) throw encodeError(what, `${data.length} bytes do not fit a u32 count`);
  return data.length;
}
