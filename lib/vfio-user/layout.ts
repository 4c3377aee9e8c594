/** Packed little-endian struct layouts and flag sets: one field table drives decoding, encoding and size checks. */

import { ViommuError } from '../errors';

export type FieldWidth = 1 | 2 | 4 | 8;

/**
 * One field of a packed struct, in the spec's own terms. Integer fields up to 4 bytes read as `number`, 8-byte
 * fields as `bigint` (addresses, offsets and sizes can use all 64 bits); `bytes` fields read as a copied Uint8Array.
 * A `reserved` field never appears in the decoded value: it must be zero on the wire and is written as zero.
 */
export interface FieldSpec {
  readonly key: string;
  readonly spec: string;
  readonly offset: number;
  readonly width: number;
  readonly kind?: 'bytes';
  readonly reserved?: true;
}

type FieldValue<E extends FieldSpec> = E extends { kind: 'bytes' }
  ? Uint8Array
  : E extends { width: 8 }
    ? bigint
    : number;

/** The decoded value of a struct: one property per non-reserved field, typed by width. */
export type StructValue<F extends readonly FieldSpec[]> = {
  [E in F[number] as E extends { reserved: true } ? never : E['key']]: FieldValue<E>;
};

/** What every layout offers whatever its fields: enough for tools that point into structs by field name. */
export interface StructShape {
  readonly name: string;
  readonly size: number;
  readonly fields: readonly FieldSpec[];
  /** The field's byte offset, for code that must point into a struct (e.g. tests that corrupt one field). */
  offsetOf(key: string): number;
}

export interface StructLayout<F extends readonly FieldSpec[]> extends StructShape {
  readonly fields: F;
  /** Reads every non-reserved field; the caller has already checked that `size` bytes are there. */
  decode(view: DataView, at: number): StructValue<F>;
  /** Writes every field (reserved ones as zero); throws ViommuError if a value does not fit its field. */
  encode(value: StructValue<F>, view: DataView, at: number): void;
  /** The first reserved field that is not zero, for the caller to report; undefined when all are zero. */
  findNonZeroReserved(view: DataView, at: number): FieldSpec | undefined;
}

const INTEGER_WIDTHS: readonly number[] = [1, 2, 4, 8];

function layoutError(message: string): ViommuError {
  return new ViommuError('ERR_VFIO_USER_LAYOUT', message);
}

function readInteger(view: DataView, at: number, width: number): number | bigint {
  switch (width) {
    case 1:
      return view.getUint8(at);
    case 2:
      return view.getUint16(at, true);
    case 4:
      return view.getUint32(at, true);
    default:
      return view.getBigUint64(at, true);
  }
}

function isZero(view: DataView, at: number, field: FieldSpec): boolean {
  for (let i = 0; i < field.width; i++) {
    if (view.getUint8(at + field.offset + i) !== 0) return false;
  }
  return true;
}

function writeField(structName: string, field: FieldSpec, value: unknown, view: DataView, at: number): void {
  const where = at + field.offset;
  if (field.kind === 'bytes') {
    if (!(value instanceof Uint8Array) || value.length > field.width) {
      throw layoutError(`${structName}.${field.key} must be a Uint8Array of at most ${field.width} bytes`);
    }
    new Uint8Array(view.buffer, view.byteOffset + where, field.width).fill(0).set(value);
    return;
  }
  if (field.width === 8) {
    if (typeof value !== 'bigint' || value < 0n || value >= 1n << 64n) {
      throw layoutError(`${structName}.${field.key} must be a bigint in [0, 2^64)`);
    }
    view.setBigUint64(where, value, true);
    return;
  }
  const limit = 2 ** (8 * field.width);
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value >= limit) {
    throw layoutError(`${structName}.${field.key} must be an integer in [0, 2^${8 * field.width})`);
  }
  if (field.width === 1) view.setUint8(where, value);
  else if (field.width === 2) view.setUint16(where, value, true);
  else view.setUint32(where, value, true);
}

/**
 * Declares a packed struct. The table is checked once, at definition: fields must not overlap and must fit in
 * `size` (which defaults to the end of the last field), so a typo in an offset fails at load time, not on the wire.
 */
export function defineStruct<const F extends readonly FieldSpec[]>(
  name: string,
  fields: F,
  size?: number,
): StructLayout<F> {
  const end = fields.reduce((max, field) => Math.max(max, field.offset + field.width), 0);
  const structSize = size ?? end;
  if (end > structSize) throw layoutError(`${name}: fields end at ${end}, beyond the struct size ${structSize}`);
  const sorted = [...fields].sort((a, b) => a.offset - b.offset);
  for (let i = 0; i < sorted.length; i++) {
    const field = sorted[i]!;
    if (field.kind !== 'bytes' && !INTEGER_WIDTHS.includes(field.width)) {
      throw layoutError(`${name}.${field.key}: integer width ${field.width} is not 1, 2, 4 or 8`);
    }
    const next = sorted[i + 1];
    if (next !== undefined && field.offset + field.width > next.offset) {
      throw layoutError(`${name}: ${field.key} overlaps ${next.key}`);
    }
  }
  const visible = fields.filter((field) => field.reserved !== true);
  const reserved = fields.filter((field) => field.reserved === true);
  const offsets = new Map(fields.map((field) => [field.key, field.offset]));

  return {
    name,
    size: structSize,
    fields,
    decode(view, at) {
      const out: Record<string, unknown> = {};
      for (const field of visible) {
        out[field.key] =
          field.kind === 'bytes'
            ? new Uint8Array(view.buffer.slice(view.byteOffset + at + field.offset, view.byteOffset + at + field.offset + field.width))
            : readInteger(view, at + field.offset, field.width);
      }
      return out as StructValue<F>;
    },
    encode(value, view, at) {
      const record = value as Record<string, unknown>;
      for (const field of visible) writeField(name, field, record[field.key], view, at);
      for (const field of reserved) writeField(name, field, field.width === 8 ? 0n : 0, view, at);
    },
    findNonZeroReserved(view, at) {
      return reserved.find((field) => !isZero(view, at, field));
    },
    offsetOf(key) {
      const offset = offsets.get(key);
      if (offset === undefined) throw layoutError(`${name} has no field ${key}`);
      return offset;
    },
  };
}

/** A named set of single-bit (or multi-bit) flags, with the union of all known bits for validation. */
export interface FlagSet<N extends string> {
  readonly name: string;
  readonly bits: Readonly<Record<N, number>>;
  readonly known: number;
  /** The bits of `value` that this set does not define (0 when all are known). */
  unknownBits(value: number): number;
  /** The names of the flags set in `value`, in table order (for traces and error messages). */
  names(value: number): N[];
}

export function defineFlags<const T extends Record<string, number>>(name: string, bits: T): FlagSet<keyof T & string> {
  const entries = Object.entries(bits) as [keyof T & string, number][];
  const known = entries.reduce((all, [, bit]) => (all | bit) >>> 0, 0);
  return {
    name,
    bits,
    known,
    unknownBits: (value) => (value & ~known) >>> 0,
    names: (value) => entries.filter(([, bit]) => (value & bit) === bit && bit !== 0).map(([flag]) => flag),
  };
}

/** A named enumeration of numbers (command codes, region and IRQ indexes), looked up both ways. */
export interface NumberTable<N extends string> {
  readonly name: string;
  readonly values: Readonly<Record<N, number>>;
  nameOf(value: number): N | undefined;
}

export function defineNumbers<const T extends Record<string, number>>(name: string, values: T): NumberTable<keyof T & string> {
  const byValue = new Map<number, keyof T & string>();
  for (const [key, value] of Object.entries(values) as [keyof T & string, number][]) {
    if (byValue.has(value)) throw layoutError(`${name}: ${key} and ${byValue.get(value)} share the value ${value}`);
    byValue.set(value, key);
  }
  return { name, values, nameOf: (value) => byValue.get(value) };
}
