/** Bounds-checked reading and writing of one message payload, turning every violation into a protocol error. */

import { ViommuError } from '../errors';
import { invalid } from './errors';
import type { FieldSpec, FlagSet, StructLayout, StructValue } from '../byte-layout';
import { HEADER_SIZE } from './protocol';

/**
 * Room left in front of every payload a PayloadWriter builds, so that the codec can put the 16-byte message header
 * there instead of copying the payload into a new message (see takeFramable).
 */
export const FRAME_HEADROOM = HEADER_SIZE;

/** A received payload; every read is checked against its length before any field is looked at. */
export class PayloadReader {
  private dataView: DataView | undefined;

  constructor(
    readonly bytes: Uint8Array,
    /** What this payload is, for messages: e.g. "DMA_MAP command". */
    readonly what: string,
    /**
     * True when `bytes` were handed over for good: nobody else holds or will write them (a message a Transport
     * delivered; see TransportEvents). Decoded data may then be views of them instead of copies.
     */
    readonly owned = false,
  ) {}

  get view(): DataView {
    return (this.dataView ??= new DataView(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength));
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
    const reserved = layout.findNonZeroReserved(this.bytes, at);
    if (reserved !== undefined) {
      throw invalid('ERR_VFIO_USER_RESERVED', `${this.what}: reserved field ${layout.name}.${reserved.spec} is not zero`);
    }
    return layout.decode(this.bytes, at);
  }

  /**
   * Bytes [start, end) as decoded data that the decoded message owns: a view when the payload is `owned` (nothing
   * else can change those bytes, and a 1 MiB DMA or region transfer is not copied once more), a copy otherwise
   * (the caller's buffer, which it may reuse).
   */
  copy(start: number, end = this.bytes.length): Uint8Array {
    return this.owned ? this.bytes.subarray(start, end) : this.bytes.slice(start, end);
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

/**
 * Small messages are carved one after another out of a zero-filled slab rather than each getting an ArrayBuffer
 * (whose allocation and sweeping cost more than encoding a small message). A slab is never reused, only replaced
 * when full, so no message ever sees another's bytes; like Node's Buffer pool, a kept message keeps its slab alive.
 */
const SLAB_SIZE = 64 * 1024;
const SLAB_MAX_MESSAGE = 4 * 1024;
let slab = new ArrayBuffer(SLAB_SIZE);
let slabUsed = 0;

/**
 * Large messages (a DMA or region transfer of up to max_data_xfer_size) get their own ArrayBuffer, and a fresh one
 * costs a page fault per 4 KiB on first touch: more than the copy that fills it. Their buffers are taken back once
 * sent (releaseMessageBuffer: a Transport is done with the bytes when send returns) and reused, a few at a time.
 */
const SPARE_MAX_BUFFERS = 2;
const SPARE_MAX_BYTES = 4 * 1024 * 1024;
const spares: ArrayBuffer[] = [];
/** Large buffers that zeroedMessageBuffer handed out and nobody has given back: the only ones release accepts. */
const handedOut = new WeakSet<ArrayBuffer>();

function largeMessageBuffer(size: number): Uint8Array {
  for (let i = 0; i < spares.length; i++) {
    const spare = spares[i]!;
    // A spare at most twice the size asked for, so that a small message never pins a big buffer.
    if (spare.byteLength < size || spare.byteLength > 2 * size) continue;
    spares.splice(i, 1);
    handedOut.add(spare);
    return new Uint8Array(spare, 0, size).fill(0);
  }
  const bytes = new Uint8Array(size);
  if (size <= SPARE_MAX_BYTES) handedOut.add(bytes.buffer);
  return bytes;
}

/**
 * Gives back a message from zeroedMessageBuffer (or a codec's encode) once its transport has sent it; anything
 * else is ignored. Only a message's one owner may call this (the connection, right after Transport.send), since
 * the buffer is zeroed and handed to the next large message.
 */
export function releaseMessageBuffer(message: Uint8Array): void {
  if (message.byteLength <= SLAB_MAX_MESSAGE || message.byteOffset !== 0) return;
  const buffer = message.buffer as ArrayBuffer;
  if (!handedOut.delete(buffer)) return;
  if (spares.length >= SPARE_MAX_BUFFERS) spares.shift();
  spares.push(buffer);
}

/** A zero-filled buffer of `size` bytes: a fresh slab piece when small, its own ArrayBuffer (maybe reused) otherwise. */
export function zeroedMessageBuffer(size: number): Uint8Array {
  if (size > SLAB_MAX_MESSAGE) return largeMessageBuffer(size);
  if (slabUsed + size > SLAB_SIZE) {
    slab = new ArrayBuffer(SLAB_SIZE);
    slabUsed = 0;
  }
  const bytes = new Uint8Array(slab, slabUsed, size);
  // Pieces start 8-byte aligned, as a fresh ArrayBuffer would.
  slabUsed += (size + 7) & ~7;
  return bytes;
}

/** The most recent PayloadWriter's bytes and their whole buffer, until a codec frames them in place (see takeFramable). */
let framable: Uint8Array | undefined;
let framableWhole: Uint8Array | undefined;

/**
 * A payload under construction: allocated once at its final size, with FRAME_HEADROOM bytes in front, then filled.
 * `bytes` may share its ArrayBuffer with other messages: use its byteOffset and length, never the whole buffer.
 */
export class PayloadWriter {
  readonly bytes: Uint8Array;
  private dataView: DataView | undefined;

  constructor(size: number) {
    const whole = zeroedMessageBuffer(FRAME_HEADROOM + size);
    this.bytes = new Uint8Array(whole.buffer, whole.byteOffset + FRAME_HEADROOM, size);
    framable = this.bytes;
    framableWhole = whole;
  }

  /** A view of the payload (not of the headroom). */
  get view(): DataView {
    return (this.dataView ??= new DataView(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength));
  }

  write<F extends readonly FieldSpec[]>(layout: StructLayout<F>, value: StructValue<F>, at = 0): this {
    layout.encode(value, this.bytes, at);
    return this;
  }

  put(data: Uint8Array, at: number): this {
    this.bytes.set(data, at);
    return this;
  }
}

/**
 * The whole buffer behind `payload` (headroom included) when `payload` is what the latest PayloadWriter built and
 * nobody framed it yet: the caller writes the header into the headroom and sends the buffer as it is. Anything else
 * (a caller's own array, a constant, a payload built before another writer) gives undefined, and is copied.
 */
export function takeFramable(payload: Uint8Array): Uint8Array | undefined {
  if (payload !== framable) return undefined;
  const whole = framableWhole;
  framable = framableWhole = undefined;
  return whole;
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
