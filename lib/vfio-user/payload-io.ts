/** Bounds-checked reading and writing of one message payload, turning every violation into a protocol error. */

import { ViommuError } from '../errors';
import { invalid } from './errors';
import type { FieldSpec, FlagSet, StructLayout, StructShape, StructValue } from './layout';
import { HEADER_SIZE } from './protocol';

/**
 * Room left in front of every payload a PayloadWriter builds, so that the codec can put the 16-byte message header
 * there instead of copying the payload into a new message (see takeFramable).
 */
export const FRAME_HEADROOM = HEADER_SIZE;

/**
 * A layout's field table turned once into byte-level accessors for the hot path: integers up to 32 bits are put
 * together from bytes and 64-bit ones go through one shared 8-byte DataView, so no message needs a DataView of its
 * own. Every value the fast writer would refuse goes to the layout's own encode(), which throws its typed error.
 */
interface CompiledField {
  readonly key: string;
  readonly offset: number;
  readonly width: number;
  readonly bytes: boolean;
  /** 2^(8 * width) for integers of at most 4 bytes. */
  readonly limit: number;
}

interface CompiledStruct {
  readonly visible: readonly CompiledField[];
  readonly reserved: readonly CompiledField[];
  readonly reservedSpecs: readonly FieldSpec[];
  /** An object with every visible key in table order: decoded values start as a copy of it (one hidden class). */
  readonly template: Readonly<Record<string, unknown>>;
}

const compiledStructs = new WeakMap<StructShape, CompiledStruct>();
const WIDE = new DataView(new ArrayBuffer(8));
const WIDE_BYTES = new Uint8Array(WIDE.buffer);
const U64_LIMIT = 1n << 64n;

function compile(layout: StructShape): CompiledStruct {
  let compiled = compiledStructs.get(layout);
  if (compiled !== undefined) return compiled;
  const fields = layout.fields.map((field) => ({
    key: field.key,
    offset: field.offset,
    width: field.width,
    bytes: field.kind === 'bytes',
    limit: field.kind === 'bytes' || field.width === 8 ? 0 : 2 ** (8 * field.width),
  }));
  const visible = fields.filter((_, i) => layout.fields[i]!.reserved !== true);
  const template: Record<string, unknown> = {};
  for (const field of visible) template[field.key] = field.bytes ? undefined : field.width === 8 ? 0n : 0;
  compiled = {
    visible,
    reserved: fields.filter((_, i) => layout.fields[i]!.reserved === true),
    reservedSpecs: layout.fields.filter((field) => field.reserved === true),
    template,
  };
  compiledStructs.set(layout, compiled);
  return compiled;
}

function readField(bytes: Uint8Array, at: number, field: CompiledField): unknown {
  const p = at + field.offset;
  if (field.bytes) return bytes.slice(p, p + field.width);
  switch (field.width) {
    case 1:
      return bytes[p]!;
    case 2:
      return bytes[p]! | (bytes[p + 1]! << 8);
    case 4:
      return (bytes[p]! | (bytes[p + 1]! << 8) | (bytes[p + 2]! << 16) | (bytes[p + 3]! << 24)) >>> 0;
    default:
      for (let i = 0; i < 8; i++) WIDE_BYTES[i] = bytes[p + i]!;
      return WIDE.getBigUint64(0, true);
  }
}

/** Writes one valid field; false (nothing written) when the value does not fit, for the layout to report. */
function writeField(bytes: Uint8Array, at: number, field: CompiledField, value: unknown): boolean {
  const p = at + field.offset;
  if (field.bytes) {
    if (!(value instanceof Uint8Array) || value.length > field.width) return false;
    bytes.fill(0, p, p + field.width);
    bytes.set(value, p);
    return true;
  }
  if (field.width === 8) {
    if (typeof value !== 'bigint' || value < 0n || value >= U64_LIMIT) return false;
    WIDE.setBigUint64(0, value, true);
    for (let i = 0; i < 8; i++) bytes[p + i] = WIDE_BYTES[i]!;
    return true;
  }
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value >= field.limit) return false;
  bytes[p] = value;
  if (field.width >= 2) bytes[p + 1] = value >>> 8;
  if (field.width === 4) {
    bytes[p + 2] = value >>> 16;
    bytes[p + 3] = value >>> 24;
  }
  return true;
}

/** Little-endian integer reads for fixed hot-path structs (offsets from fieldOffsets). */
export function readU16(bytes: Uint8Array, at: number): number {
  return bytes[at]! | (bytes[at + 1]! << 8);
}

export function readU32(bytes: Uint8Array, at: number): number {
  return (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>> 0;
}

/**
 * The offsets of `layout`'s fields, for code that reads a hot struct field by field: checked once against the
 * widths that code reads, so a change of the table fails at load time instead of misreading the wire.
 */
export function fieldOffsets<K extends string>(layout: StructShape, widths: Readonly<Record<K, number>>): Readonly<Record<K, number>> {
  const offsets = {} as Record<K, number>;
  for (const key of Object.keys(widths) as K[]) {
    const field = layout.fields.find((candidate) => candidate.key === key);
    if (field === undefined || field.width !== widths[key] || field.kind === 'bytes') {
      throw new ViommuError('ERR_VFIO_USER_LAYOUT', `${layout.name}.${key} is not the ${widths[key]}-byte integer this code reads`);
    }
    offsets[key] = field.offset;
  }
  return offsets;
}

/** Reads every non-reserved field of `layout` at `at`; the caller has checked that the struct fits. */
export function decodeStruct<F extends readonly FieldSpec[]>(layout: StructLayout<F>, bytes: Uint8Array, at = 0): StructValue<F> {
  const { visible, template } = compile(layout);
  const out: Record<string, unknown> = { ...template };
  for (let i = 0; i < visible.length; i++) {
    const field = visible[i]!;
    out[field.key] = readField(bytes, at, field);
  }
  return out as StructValue<F>;
}

/** Writes every field of `layout` at `at` (reserved ones as zero); a value that does not fit throws the layout's error. */
export function encodeStruct<F extends readonly FieldSpec[]>(layout: StructLayout<F>, value: StructValue<F>, bytes: Uint8Array, at = 0): void {
  const { visible, reserved } = compile(layout);
  const record = value as Record<string, unknown>;
  for (let i = 0; i < visible.length; i++) {
    const field = visible[i]!;
    if (!writeField(bytes, at, field, record[field.key])) {
      // The layout words the error; its encode throws before it would write anything we have not checked.
      layout.encode(value, new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength), at);
      throw new ViommuError('ERR_VFIO_USER_LAYOUT', `${layout.name}.${field.key} does not fit its field`);
    }
  }
  for (let i = 0; i < reserved.length; i++) {
    const field = reserved[i]!;
    bytes.fill(0, at + field.offset, at + field.offset + field.width);
  }
}

/** The first reserved field of `layout` at `at` that is not zero, or undefined. */
function nonZeroReserved(layout: StructShape, bytes: Uint8Array, at: number): FieldSpec | undefined {
  const { reserved, reservedSpecs } = compile(layout);
  for (let i = 0; i < reserved.length; i++) {
    const field = reserved[i]!;
    for (let b = 0; b < field.width; b++) if (bytes[at + field.offset + b] !== 0) return reservedSpecs[i];
  }
  return undefined;
}

/** A received payload; every read is checked against its length before any field is looked at. */
export class PayloadReader {
  private dataView: DataView | undefined;

  constructor(
    readonly bytes: Uint8Array,
    /** What this payload is, for messages: e.g. "DMA_MAP command". */
    readonly what: string,
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
    const reserved = nonZeroReserved(layout, this.bytes, at);
    if (reserved !== undefined) {
      throw invalid('ERR_VFIO_USER_RESERVED', `${this.what}: reserved field ${layout.name}.${reserved.spec} is not zero`);
    }
    return decodeStruct(layout, this.bytes, at);
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

/**
 * Small messages are carved one after another out of a zero-filled slab rather than each getting an ArrayBuffer
 * (whose allocation and sweeping cost more than encoding a small message). A slab is never reused, only replaced
 * when full, so no message ever sees another's bytes; like Node's Buffer pool, a kept message keeps its slab alive.
 */
const SLAB_SIZE = 64 * 1024;
const SLAB_MAX_MESSAGE = 4 * 1024;
let slab = new ArrayBuffer(SLAB_SIZE);
let slabUsed = 0;

/** A zero-filled buffer of `size` bytes: a fresh slab piece when small, its own ArrayBuffer otherwise. */
export function zeroedMessageBuffer(size: number): Uint8Array {
  if (size > SLAB_MAX_MESSAGE) return new Uint8Array(size);
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
    encodeStruct(layout, value, this.bytes, at);
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
