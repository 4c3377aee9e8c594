/**
 * Packed little-endian byte layouts, described once as field tables: structs (decoded, encoded and checked for
 * non-zero reserved fields), flag sets and number tables. vfio-user messages, the Linux uAPI structs of the host
 * backends and PCI configuration structures are all written in it; layers add their own meaning on top (PCI write
 * masks in lib/devices/config-table.ts).
 */

import { ViommuError } from './errors';

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

type FieldValue<E extends FieldSpec> = E extends { kind: 'bytes' } ? Uint8Array : E extends { width: 8 } ? bigint : number;

/** The decoded value of a struct: one property per non-reserved field, typed by width. */
export type StructValue<F extends readonly FieldSpec[]> = {
  [E in F[number] as E extends { reserved: true } ? never : E['key']]: FieldValue<E>;
};

/** The keys a field table defines: a misspelt key is a compile error wherever a layout's type is known. */
export type FieldKey<F extends readonly FieldSpec[]> = F[number]['key'];

/** The row of table `F` whose key is `K` (any row, for a table whose keys are only known as strings). */
export type FieldOf<F extends readonly FieldSpec[], K extends FieldKey<F>> =
  string extends FieldKey<F> ? F[number] : Extract<F[number], { readonly key: K }>;

/**
 * The keys of `F`'s integer fields, or of those `W` bytes wide. A table whose widths are only known as `number`
 * (a layout seen through the untyped StructShape) admits any key, and its fields are checked when used.
 */
export type IntegerKey<F extends readonly FieldSpec[], W extends number = number> = number extends F[number]['width']
  ? FieldKey<F>
  : Exclude<Extract<F[number], { readonly width: W }>, { readonly kind: 'bytes' }>['key'];

/** What an integer field holds: a bigint for 8 bytes, a number below that (either, where the width is unknown). */
export type IntegerValue<E extends FieldSpec> = number extends E['width'] ? number | bigint : E extends { readonly width: 8 } ? bigint : number;

/**
 * What every layout offers whatever its fields: enough for tools that point into structs by field name. Generic
 * over the table so that the keys are the table's own; `StructShape` alone (any table) accepts any string.
 */
export interface StructShape<F extends readonly FieldSpec[] = readonly FieldSpec[]> {
  readonly name: string;
  readonly size: number;
  readonly fields: F;
  /** The field named `key` (its table row); throws ViommuError for a key the table does not have. */
  field(key: FieldKey<F>): F[number];
  /** The field's byte offset, for code that must point into a struct (e.g. tests that corrupt one field). */
  offsetOf(key: FieldKey<F>): number;
}

export interface StructLayout<F extends readonly FieldSpec[]> extends StructShape<F> {
  /** Whether this table has field `key`: for the fields that only some variants of a structure have (MSI's upper address). */
  has(key: FieldKey<F>): boolean;
  /**
   * Reads every non-reserved field of the struct at `at`. Integer fields past the end of `bytes` read as zero
   * (a configuration dump cut short); callers that must refuse short input check `size` first.
   */
  decode(bytes: Uint8Array, at?: number): StructValue<F>;
  /** Writes every field (reserved ones as zero); throws ViommuError if a value does not fit or `bytes` is too short. */
  encode(value: StructValue<F>, bytes: Uint8Array, at?: number): void;
  /** The first reserved field at `at` that is not zero, for the caller to report; undefined when all are zero. */
  findNonZeroReserved(bytes: Uint8Array, at?: number): FieldSpec | undefined;
}

const INTEGER_WIDTHS: readonly number[] = [1, 2, 4, 8];
const U64_LIMIT = 1n << 64n;

function layoutError(message: string): ViommuError {
  return new ViommuError('ERR_BYTE_LAYOUT', message);
}

// ---- little-endian integers ---------------------------------------------------------------------------------

/** Little-endian reads; bytes past the end of `bytes` count as zero (bitwise operators turn undefined into 0). */
export function readU16(bytes: Uint8Array, at: number): number {
  return bytes[at]! | (bytes[at + 1]! << 8);
}

export function readU32(bytes: Uint8Array, at: number): number {
  return (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>> 0;
}

/** 64-bit values go through one shared 8-byte DataView, so no struct needs a DataView of its own. */
const WIDE = new DataView(new ArrayBuffer(8));
const WIDE_BYTES = new Uint8Array(WIDE.buffer);

export function readU64(bytes: Uint8Array, at: number): bigint {
  for (let i = 0; i < 8; i++) WIDE_BYTES[i] = bytes[at + i] ?? 0;
  return WIDE.getBigUint64(0, true);
}

/** An integer of 1, 2 or 4 bytes at `at`. */
export function readUnsigned(bytes: Uint8Array, at: number, width: 1 | 2 | 4): number {
  if (width === 1) return bytes[at] ?? 0;
  return width === 2 ? readU16(bytes, at) : readU32(bytes, at);
}

/** Writes `value` over `width` bytes at `at`; it must already fit (see fitsField). */
export function writeUnsigned(bytes: Uint8Array, at: number, width: 1 | 2 | 4, value: number): void {
  for (let i = 0; i < width; i++) bytes[at + i] = Math.floor(value / 2 ** (8 * i)) & 0xff;
}

/** Little-endian stores of a value that already fits (isU16, isU32): the hot paths' writers (message headers). */
export function writeU16(bytes: Uint8Array, at: number, value: number): void {
  bytes[at] = value;
  bytes[at + 1] = value >>> 8;
}

export function writeU32(bytes: Uint8Array, at: number, value: number): void {
  bytes[at] = value;
  bytes[at + 1] = value >>> 8;
  bytes[at + 2] = value >>> 16;
  bytes[at + 3] = value >>> 24;
}

/** Stores a bigint in [0, 2^64) (see fitsField). */
export function writeU64(bytes: Uint8Array, at: number, value: bigint): void {
  WIDE.setBigUint64(0, value, true);
  for (let i = 0; i < 8; i++) bytes[at + i] = WIDE_BYTES[i]!;
}

/** writeU64 for an unchecked value: false, and nothing written, when it is not a bigint in [0, 2^64). */
function writeU64IfFits(bytes: Uint8Array, at: number, value: unknown): boolean {
  if (typeof value !== 'bigint' || value < 0n || value >= U64_LIMIT) return false;
  writeU64(bytes, at, value);
  return true;
}

function writeBytes(bytes: Uint8Array, at: number, width: number, value: unknown): boolean {
  if (!(value instanceof Uint8Array) || value.length > width) return false;
  bytes.fill(0, at, at + width);
  bytes.set(value, at);
  return true;
}

export function isU8(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value < 0x100;
}

export function isU16(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value < 0x1_0000;
}

export function isU32(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value < 0x1_0000_0000;
}

/** Whether `value` is something `field` can hold: an unsigned integer of its width, a bigint for 8 bytes, or bytes. */
export function fitsField(field: FieldSpec, value: unknown): boolean {
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

function misfit(structName: string, field: FieldSpec): ViommuError {
  if (field.kind === 'bytes') return layoutError(`${structName}.${field.key} must be a Uint8Array of at most ${field.width} bytes`);
  if (field.width === 8) return layoutError(`${structName}.${field.key} must be a bigint in [0, 2^64)`);
  return layoutError(`${structName}.${field.key} must be an integer in [0, 2^${8 * field.width})`);
}

// ---- struct accessors ------------------------------------------------------------------------------------------

/**
 * A layout's field table turned into code once, when first used. Every vfio-user message decodes and encodes a few
 * small structs, and a loop over a field list that reads `value[field.key]` sees every layout's keys at one place
 * (a megamorphic property access), so each layout gets its own decoder and encoder generated from its table: one
 * object literal per decoded struct (one hidden class), one fixed property load per field. The generated code holds
 * only offsets, widths and the table's keys (quoted with JSON.stringify).
 */
interface CompiledField {
  readonly key: string;
  readonly offset: number;
  readonly width: number;
  readonly bytes: boolean;
}

type Decoder = (bytes: Uint8Array, at: number) => Record<string, unknown>;
/** False when a value does not fit (some fields may already be written). */
type Encoder = (bytes: Uint8Array, at: number, value: Record<string, unknown>) => boolean;

/** The expression reading `field` (bytes, at: parameters of the generated decoder). */
function readExpression(field: CompiledField): string {
  const p = `at + ${field.offset}`;
  if (field.bytes) return `bytes.slice(${p}, ${p} + ${field.width})`;
  switch (field.width) {
    case 1:
      return `(bytes[${p}] | 0)`;
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
      return `${load} if (!writeU64IfFits(bytes, ${p}, v)) return false;`;
  }
}

const HELPERS = { readU16, readU32, readU64, writeU64IfFits, writeBytes, isU8, isU16, isU32 };

/** The accessors as generated code; undefined where the process forbids code generation from strings. */
function generated(visible: readonly CompiledField[], reserved: readonly CompiledField[]): [Decoder, Encoder] | undefined {
  const literal = visible.map((field) => `${JSON.stringify(field.key)}: ${readExpression(field)}`).join(', ');
  const zeroes = reserved.map((field) => `bytes.fill(0, at + ${field.offset}, at + ${field.offset + field.width});`).join(' ');
  const writes = visible.map(writeStatements).join('\n');
  const names = Object.keys(HELPERS);
  let make: (...helpers: unknown[]) => [Decoder, Encoder];
  try {
    make = new Function(
      ...names,
      `return [function decode(bytes, at) { return { ${literal} }; },\n` +
        `function encode(bytes, at, value) { let v;\n${writes}\n${zeroes}\nreturn true; }];`,
    ) as (...helpers: unknown[]) => [Decoder, Encoder];
  } catch {
    return undefined; // node --disallow-code-generation-from-strings
  }
  return make(...names.map((name) => HELPERS[name as keyof typeof HELPERS]));
}

/** The same accessors as loops over the field list: slower, for processes that forbid generated code. */
function interpreted(visible: readonly FieldSpec[], reserved: readonly FieldSpec[]): [Decoder, Encoder] {
  const decode: Decoder = (bytes, at) => {
    const out: Record<string, unknown> = {};
    for (const field of visible) {
      const p = at + field.offset;
      if (field.kind === 'bytes') out[field.key] = bytes.slice(p, p + field.width);
      else if (field.width === 8) out[field.key] = readU64(bytes, p);
      else out[field.key] = readUnsigned(bytes, p, field.width as 1 | 2 | 4);
    }
    return out;
  };
  const encode: Encoder = (bytes, at, value) => {
    for (const field of visible) {
      const p = at + field.offset;
      const v = value[field.key];
      if (!fitsField(field, v)) return false;
      if (field.kind === 'bytes') writeBytes(bytes, p, field.width, v);
      else if (field.width === 8) writeU64(bytes, p, v as bigint);
      else writeUnsigned(bytes, p, field.width as 1 | 2 | 4, v as number);
    }
    for (const field of reserved) bytes.fill(0, at + field.offset, at + field.offset + field.width);
    return true;
  };
  return [decode, encode];
}

/** Checks a field table: integers of 1, 2, 4 or 8 bytes at whole offsets, no overlaps, all inside `size`. */
function checkTable(name: string, fields: readonly FieldSpec[], size: number): void {
  const sorted = [...fields].sort((a, b) => a.offset - b.offset);
  for (let i = 0; i < sorted.length; i++) {
    const field = sorted[i]!;
    if (!Number.isInteger(field.offset) || field.offset < 0 || !Number.isInteger(field.width) || field.width <= 0) {
      throw layoutError(`${name}.${field.key}: offset ${field.offset} and width ${field.width} are not a byte range`);
    }
    if (field.kind !== 'bytes' && !INTEGER_WIDTHS.includes(field.width)) {
      throw layoutError(`${name}.${field.key}: integer width ${field.width} is not 1, 2, 4 or 8`);
    }
    const next = sorted[i + 1];
    if (next !== undefined && field.offset + field.width > next.offset) {
      throw layoutError(`${name}: ${field.key} overlaps ${next.key}`);
    }
  }
  const end = fields.reduce((max, field) => Math.max(max, field.offset + field.width), 0);
  if (end > size) throw layoutError(`${name}: fields end at ${end}, beyond the struct size ${size}`);
}

/**
 * Declares a packed struct. The table is checked once, at definition: fields must not overlap and must fit in
 * `size` (which defaults to the end of the last field), so a typo in an offset fails at load time, not on the wire.
 */
export function defineStruct<const F extends readonly FieldSpec[]>(name: string, fields: F, size?: number): StructLayout<F> {
  const structSize = size ?? fields.reduce((max, field) => Math.max(max, field.offset + field.width), 0);
  checkTable(name, fields, structSize);
  const visible = fields.filter((field) => field.reserved !== true);
  const reserved = fields.filter((field) => field.reserved === true);
  const compiledField = (field: FieldSpec): CompiledField => ({
    key: field.key,
    offset: field.offset,
    width: field.width,
    bytes: field.kind === 'bytes',
  });
  // Generated on first use: many tables (the uAPI's, most PCI capabilities) are declared but rarely or never read.
  let accessors: [Decoder, Encoder] | undefined;
  const compile = (): [Decoder, Encoder] =>
    (accessors = generated(visible.map(compiledField), reserved.map(compiledField)) ?? interpreted(visible, reserved));
  const byKey = new Map<string, F[number]>(fields.map((field) => [field.key, field]));
  const field = (key: string): F[number] => {
    const found = byKey.get(key);
    if (found === undefined) throw layoutError(`${name} has no field ${key}`);
    return found;
  };

  return {
    name,
    size: structSize,
    fields,
    field,
    has: (key) => byKey.has(key),
    offsetOf: (key) => field(key).offset,
    decode: (bytes, at = 0) => (accessors ?? compile())[0](bytes, at) as StructValue<F>,
    encode(value, bytes, at = 0) {
      if (!(at >= 0 && at + structSize <= bytes.length))
        throw layoutError(`${name} needs ${structSize} bytes at ${at}, the buffer has ${bytes.length}`);
      const record = value as Record<string, unknown>;
      if ((accessors ?? compile())[1](bytes, at, record)) return;
      const wrong = visible.find((candidate) => !fitsField(candidate, record[candidate.key]))!;
      throw misfit(name, wrong);
    },
    findNonZeroReserved(bytes, at = 0) {
      for (const candidate of reserved) {
        const start = at + candidate.offset;
        for (let b = start; b < start + candidate.width; b++) if ((bytes[b] ?? 0) !== 0) return candidate;
      }
      return undefined;
    },
  };
}

/**
 * The offsets of `layout`'s fields, for code that reads a hot struct field by field. The keys and widths are the
 * table's own at compile time, and checked again once at load time (for a table seen only as StructShape), so a
 * change of the table fails before any bytes are misread.
 */
export function fieldOffsets<F extends readonly FieldSpec[], K extends IntegerKey<F>>(
  layout: StructShape<F>,
  widths: { readonly [P in K]: FieldOf<F, P>['width'] },
): Readonly<Record<K, number>> {
  const offsets = {} as Record<K, number>;
  for (const key of Object.keys(widths) as K[]) {
    const field = layout.fields.find((candidate) => candidate.key === key);
    const width: number = widths[key];
    if (field === undefined || field.width !== width || field.kind === 'bytes') {
      throw layoutError(`${layout.name}.${key} is not the ${width}-byte integer this code reads`);
    }
    offsets[key] = field.offset;
  }
  return offsets;
}

/** The integer field `key` of the struct at `at`, checked to lie inside `bytes`. */
function integerField(layout: StructShape, bytes: Uint8Array, key: string, at: number): FieldSpec {
  const field = layout.field(key);
  if (field.kind === 'bytes') throw layoutError(`${layout.name}.${key} is a byte string, not an integer`);
  if (!(at >= 0 && at + field.offset + field.width <= bytes.length)) {
    throw layoutError(`${layout.name}.${key} at ${at} lies beyond the ${bytes.length} bytes given`);
  }
  return field;
}

/**
 * Reads one integer field of an encoded struct in place, by the table's key (an out field a kernel filled, a
 * size field): no decode of the rest. Throws ViommuError when the field lies beyond `bytes`.
 */
export function readField<F extends readonly FieldSpec[], K extends IntegerKey<F>>(
  layout: StructShape<F>,
  bytes: Uint8Array,
  key: K,
  at = 0,
): IntegerValue<FieldOf<F, K>> {
  const field = integerField(layout, bytes, key, at);
  const p = at + field.offset;
  const value = field.width === 8 ? readU64(bytes, p) : readUnsigned(bytes, p, field.width as 1 | 2 | 4);
  return value as IntegerValue<FieldOf<F, K>>;
}

/** Writes one integer field of an encoded struct in place, by the table's key; throws ViommuError if it does not fit. */
export function writeField<F extends readonly FieldSpec[], K extends IntegerKey<F>>(
  layout: StructShape<F>,
  bytes: Uint8Array,
  key: K,
  value: IntegerValue<FieldOf<F, K>>,
  at = 0,
): void {
  const field = integerField(layout, bytes, key, at);
  if (!fitsField(field, value)) throw misfit(layout.name, field);
  const p = at + field.offset;
  if (field.width === 8) writeU64(bytes, p, value as bigint);
  else writeUnsigned(bytes, p, field.width as 1 | 2 | 4, value as number);
}

// ---- flags and numbers -----------------------------------------------------------------------------------------

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

/** A named enumeration of numbers (command codes, region and IRQ indexes, errnos), looked up both ways. */
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
