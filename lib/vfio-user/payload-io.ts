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
 * A layout's field table turned once into code for the hot path. Every message decodes and encodes a few small
 * structs, and a loop over a field list that reads `value[field.key]` sees every layout's keys at one place (a
 * megamorphic property access), so each layout gets its own decoder and encoder, generated from its field table
 * when first used: one object literal per decoded struct (one hidden class), one fixed property load per field.
 * Integers up to 32 bits are put together from bytes and 64-bit ones go through one shared 8-byte DataView, so no
 * message needs a DataView of its own. The generated code holds only offsets, widths and the table's keys (quoted
 * with JSON.stringify); a value the encoder refuses goes to the layout's own encode(), which throws its typed error.
 */
interface CompiledField {
  readonly key: string;
  readonly offset: number;
  readonly width: number;
  readonly bytes: boolean;
}

interface CompiledStruct {
  readonly reserved: readonly CompiledField[];
  readonly reservedSpecs: readonly FieldSpec[];
  /** Reads every visible field of the struct at `at` (bounds already checked). */
  readonly decode: (bytes: Uint8Array, at: number) => Record<string, unknown>;
  /** Writes every field (reserved ones as zero); false when a value does not fit (some fields may be written). */
  readonly encode: (bytes: Uint8Array, at: number, value: Record<string, unknown>) => boolean;
}

/**
 * A layout's compiled form rides on the layout object itself under a private symbol: every struct read and write
 * looks it up, and a property load on the (one-shaped) layout objects is cheaper than a WeakMap lookup.
 */
const COMPILED = Symbol('compiled struct');
type CompiledHolder = { [COMPILED]?: CompiledStruct };
/** For layouts that cannot take the property (frozen ones). */
const compiledElsewhere = new WeakMap<StructShape, CompiledStruct>();
const WIDE = new DataView(new ArrayBuffer(8));
const WIDE_BYTES = new Uint8Array(WIDE.buffer);
const U64_LIMIT = 1n << 64n;

function readU64(bytes: Uint8Array, p: number): bigint {
  for (let i = 0; i < 8; i++) WIDE_BYTES[i] = bytes[p + i]!;
  return WIDE.getBigUint64(0, true);
}

function writeU64(bytes: Uint8Array, p: number, value: unknown): boolean {
  if (typeof value !== 'bigint' || value < 0n || value >= U64_LIMIT) return false;
  WIDE.setBigUint64(0, value, true);
  for (let i = 0; i < 8; i++) bytes[p + i] = WIDE_BYTES[i]!;
  return true;
}

function writeBytes(bytes: Uint8Array, p: number, width: number, value: unknown): boolean {
  if (!(value instanceof Uint8Array) || value.length > width) return false;
  bytes.fill(0, p, p + width);
  bytes.set(value, p);
  return true;
}

function isU8(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value < 0x100;
}

function isU16(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value < 0x1_0000;
}

function isU32(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value < 0x1_0000_0000;
}

/** The expression reading `field` (bytes, at: parameters of the generated decoder). */
function readExpression(field: CompiledField): string {
  const p = `at + ${field.offset}`;
  if (field.bytes) return `bytes.slice(${p}, ${p} + ${field.width})`;
  switch (field.width) {
    case 1:
      return `bytes[${p}]`;
    case 2:
      return `(bytes[${p}] | (bytes[${p} + 1] << 8))`;
    case 4:
      return `((bytes[${p}] | (bytes[${p} + 1] << 8) | (bytes[${p} + 2] << 16) | (bytes[${p} + 3] << 24)) >>> 0)`;
    default:
      return `readU64(bytes, ${p})`;
  }
}

/** The statements writing `field` from `v` (or returning false when it does not fit). */
function writeStatements(field: CompiledField): string {
  const p = `at + ${field.offset}`;
  const load = `v = value[${JSON.stringify(field.key)}];`;
  if (field.bytes) return `${load} if (!writeBytes(bytes, ${p}, ${field.width}, v)) return false;`;
  switch (field.width) {
    case 1:
      return `${load} if (!isU8(v)) return false; bytes[${p}] = v;`;
    case 2:
      return `${load} if (!isU16(v)) return false; bytes[${p}] = v; bytes[${p} + 1] = v >>> 8;`;
    case 4:
      return `${load} if (!isU32(v)) return false; bytes[${p}] = v; bytes[${p} + 1] = v >>> 8; bytes[${p} + 2] = v >>> 16; bytes[${p} + 3] = v >>> 24;`;
    default:
      return `${load} if (!writeU64(bytes, ${p}, v)) return false;`;
  }
}

const HELPERS = { readU64, writeU64, writeBytes, isU8, isU16, isU32 };

type Accessors = [CompiledStruct['decode'], CompiledStruct['encode']];

/** The layout's accessors as generated code; undefined where the process forbids code generation from strings. */
function generated(visible: readonly CompiledField[], reserved: readonly CompiledField[]): Accessors | undefined {
  const literal = visible.map((field) => `${JSON.stringify(field.key)}: ${readExpression(field)}`).join(', ');
  const zeroes = reserved.map((field) => `bytes.fill(0, at + ${field.offset}, at + ${field.offset + field.width});`).join(' ');
  const writes = visible.map(writeStatements).join('\n');
  const names = Object.keys(HELPERS);
  let make: (...helpers: unknown[]) => Accessors;
  try {
    make = new Function(
      ...names,
      `return [function decode(bytes, at) { return { ${literal} }; },\n` +
        `function encode(bytes, at, value) { let v;\n${writes}\n${zeroes}\nreturn true; }];`,
    ) as (...helpers: unknown[]) => Accessors;
  } catch {
    return undefined; // node --disallow-code-generation-from-strings
  }
  return make(...names.map((name) => HELPERS[name as keyof typeof HELPERS]));
}

/** The same accessors as loops over the field list: slower, for processes that forbid generated code. */
function interpreted(visible: readonly CompiledField[], reserved: readonly CompiledField[]): Accessors {
  const decode = (bytes: Uint8Array, at: number): Record<string, unknown> => {
    const out: Record<string, unknown> = {};
    for (const field of visible) {
      const p = at + field.offset;
      if (field.bytes) out[field.key] = bytes.slice(p, p + field.width);
      else if (field.width === 8) out[field.key] = readU64(bytes, p);
      else {
        let value = 0;
        for (let i = field.width - 1; i >= 0; i--) value = value * 256 + bytes[p + i]!;
        out[field.key] = value;
      }
    }
    return out;
  };
  const encode = (bytes: Uint8Array, at: number, value: Record<string, unknown>): boolean => {
    for (const field of visible) {
      const p = at + field.offset;
      const v = value[field.key];
      if (field.bytes) {
        if (!writeBytes(bytes, p, field.width, v)) return false;
      } else if (field.width === 8) {
        if (!writeU64(bytes, p, v)) return false;
      } else {
        if (!fits({ key: field.key, spec: field.key, offset: field.offset, width: field.width }, v)) return false;
        for (let i = 0; i < field.width; i++) bytes[p + i] = Math.floor((v as number) / 2 ** (8 * i)) & 0xff;
      }
    }
    for (const field of reserved) bytes.fill(0, at + field.offset, at + field.offset + field.width);
    return true;
  };
  return [decode, encode];
}

function compile(layout: StructShape): CompiledStruct {
  let compiled = (layout as CompiledHolder)[COMPILED] ?? compiledElsewhere.get(layout);
  if (compiled !== undefined) return compiled;
  for (const field of layout.fields) {
    const integer = field.kind !== 'bytes';
    if (!Number.isInteger(field.offset) || field.offset < 0 || (integer && ![1, 2, 4, 8].includes(field.width)) || !(field.width > 0)) {
      throw new ViommuError('ERR_VFIO_USER_LAYOUT', `${layout.name}.${field.key}: offset ${field.offset} and width ${field.width} cannot be compiled`);
    }
  }
  const fields = layout.fields.map((field) => ({ key: field.key, offset: field.offset, width: field.width, bytes: field.kind === 'bytes' }));
  const visible = fields.filter((_, i) => layout.fields[i]!.reserved !== true);
  const reserved = fields.filter((_, i) => layout.fields[i]!.reserved === true);
  const [decode, encode] = generated(visible, reserved) ?? interpreted(visible, reserved);
  compiled = { reserved, reservedSpecs: layout.fields.filter((field) => field.reserved === true), decode, encode };
  if (Object.isExtensible(layout)) Object.defineProperty(layout, COMPILED, { value: compiled, enumerable: false });
  else compiledElsewhere.set(layout, compiled);
  return compiled;
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
  return compile(layout).decode(bytes, at) as StructValue<F>;
}

/** Writes every field of `layout` at `at` (reserved ones as zero); a value that does not fit throws the layout's error. */
export function encodeStruct<F extends readonly FieldSpec[]>(layout: StructLayout<F>, value: StructValue<F>, bytes: Uint8Array, at = 0): void {
  if (compile(layout).encode(bytes, at, value as Record<string, unknown>)) return;
  // The layout words the error; its encode throws before it would write anything we have not checked.
  layout.encode(value, new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength), at);
  const record = value as Record<string, unknown>;
  const field = layout.fields.find((candidate) => candidate.reserved !== true && !fits(candidate, record[candidate.key]));
  throw new ViommuError('ERR_VFIO_USER_LAYOUT', `${layout.name}.${field?.key ?? '?'} does not fit its field`);
}

/** What the generated encoder accepts for one field (for the error message of a value it refused). */
function fits(field: FieldSpec, value: unknown): boolean {
  if (field.kind === 'bytes') return value instanceof Uint8Array && value.length <= field.width;
  switch (field.width) {
    case 1:
      return isU8(value);
    case 2:
      return isU16(value);
    case 4:
      return isU32(value);
    default:
      return typeof value === 'bigint' && value >= 0n && value < U64_LIMIT;
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
    const reserved = nonZeroReserved(layout, this.bytes, at);
    if (reserved !== undefined) {
      throw invalid('ERR_VFIO_USER_RESERVED', `${this.what}: reserved field ${layout.name}.${reserved.spec} is not zero`);
    }
    return decodeStruct(layout, this.bytes, at);
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
