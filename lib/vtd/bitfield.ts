/** Field tables: describe a hardware layout once, derive decoders, encoders, reserved masks and a renderer from it. */

import { ViommuError } from '../errors';

/**
 * One field as the specification writes it. Position is either absolute (`bit`) or relative to a 64-bit
 * word (`qword` + `bit`), so that tables can follow whichever convention the spec uses for that structure.
 */
export interface FieldSpec {
  readonly name: string;
  /** Low bit: absolute, or within `qword` when that is given. */
  readonly bit: number;
  readonly width: number;
  readonly qword?: number;
  readonly description: string;
  /**
   * Marks an address field: the field holds `address >> addressShift`. Address bits at or above the host
   * address width are reserved, so the reserved mask depends on the width for these fields.
   */
  readonly addressShift?: number;
  /** The field is reserved unless one of these features is enabled (e.g. 'SC' for the SNP bit). */
  readonly reservedUnless?: string | readonly string[];
  /** Names for enumerated values, used by the renderer. */
  readonly values?: Readonly<Record<number, string>>;
}

/** A piece of a field that lives in one 32-bit word. */
interface FieldSegment {
  readonly word: number;
  readonly shift: number;
  readonly mask: number;
  /** 2 ** (position of this segment's lowest bit inside the field value) */
  readonly scale: number;
}

export interface Field extends FieldSpec {
  /** Absolute low bit inside the structure. */
  readonly lsb: number;
  /** Absolute high bit inside the structure. */
  readonly msb: number;
  /** Largest value the field can hold, as a number (fields are at most 53 bits wide). */
  readonly maxValue: number;
  readonly segments: readonly FieldSegment[];
}

/** Options that change which bits count as reserved. */
export interface ReservedOptions {
  /** Host address width in bits (e.g. 39 or 48); address bits at or above it are reserved. */
  readonly addressWidth?: number;
  /** Features that make `reservedUnless` fields legal. */
  readonly features?: Iterable<string>;
}

export interface FieldTable<N extends string = string> {
  readonly name: string;
  readonly sizeBits: number;
  readonly sizeWords: number;
  readonly fields: readonly Field[];
  /** Fields by spec name. */
  readonly f: { readonly [K in N]: Field };
}

const MAX_FIELD_WIDTH = 53;

function compileField(structName: string, sizeBits: number, spec: FieldSpec): Field {
  const lsb = (spec.qword ?? 0) * 64 + spec.bit;
  const msb = lsb + spec.width - 1;
  if (!Number.isInteger(spec.width) || spec.width < 1 || spec.width > MAX_FIELD_WIDTH) {
    throw new ViommuError('ERR_FIELD_TABLE', `${structName}.${spec.name}: width ${spec.width} must be 1..${MAX_FIELD_WIDTH}`);
  }
  if (!Number.isInteger(lsb) || lsb < 0 || msb >= sizeBits) {
    throw new ViommuError('ERR_FIELD_TABLE', `${structName}.${spec.name}: bits ${msb}:${lsb} fall outside ${sizeBits} bits`);
  }
  const segments: FieldSegment[] = [];
  let done = 0;
  while (done < spec.width) {
    const bit = lsb + done;
    const shift = bit & 31;
    const take = Math.min(32 - shift, spec.width - done);
    segments.push({ word: bit >>> 5, shift, mask: take === 32 ? 0xffffffff : (1 << take) - 1, scale: 2 ** done });
    done += take;
  }
  // Every field gets the same properties in the same order (absent ones as undefined): one hidden class, so
  // decoders that read fields of many tables stay monomorphic.
  return {
    name: spec.name,
    bit: spec.bit,
    width: spec.width,
    qword: spec.qword,
    description: spec.description,
    addressShift: spec.addressShift,
    reservedUnless: spec.reservedUnless,
    values: spec.values,
    lsb,
    msb,
    maxValue: 2 ** spec.width - 1,
    segments,
  };
}

/** Builds a table; refuses overlapping fields and duplicate names so each bit has at most one meaning. */
export function defineFields<const S extends readonly FieldSpec[]>(name: string, sizeBits: number, specs: S): FieldTable<S[number]['name']> {
  if (sizeBits <= 0 || sizeBits % 32 !== 0) {
    throw new ViommuError('ERR_FIELD_TABLE', `${name}: size ${sizeBits} must be a positive multiple of 32 bits`);
  }
  const fields = specs.map((spec) => compileField(name, sizeBits, spec));
  const byName: Record<string, Field> = {};
  const sorted = [...fields].sort((a, b) => a.lsb - b.lsb);
  for (let i = 1; i < sorted.length; i++) {
    const previous = sorted[i - 1]!;
    const current = sorted[i]!;
    if (current.lsb <= previous.msb) {
      throw new ViommuError('ERR_FIELD_TABLE', `${name}: ${current.name} overlaps ${previous.name}`);
    }
  }
  for (const field of fields) {
    if (byName[field.name]) throw new ViommuError('ERR_FIELD_TABLE', `${name}: duplicate field ${field.name}`);
    byName[field.name] = field;
  }
  return {
    name,
    sizeBits,
    sizeWords: sizeBits / 32,
    fields: sorted,
    f: byName as { readonly [K in S[number]['name']]: Field },
  };
}

// ---- number path: structures as little-endian arrays of 32-bit words (hot paths, no BigInt) ----

/** Reads a field from `words` (word 0 = bits 31:0 of the structure, starting at `base`). */
export function getField(words: ArrayLike<number>, field: Field, base = 0): number {
  const segments = field.segments;
  let value = 0;
  for (let i = 0; i < segments.length; i++) {
    const s = segments[i]!;
    const part = ((words[base + s.word]! >>> s.shift) & s.mask) >>> 0;
    value += part * s.scale;
  }
  return value;
}

/**
 * A field that spans at most two words, flattened for hot decoders: built once per field at module load, every
 * reader has the same shape, and readField() is straight-line code (no loop over segments).
 */
export interface FieldReader {
  readonly word: number;
  readonly shift: number;
  readonly mask: number;
  /** The word holding the field's upper bits (from bit 0), or `word` with highMask 0 for one-word fields. */
  readonly highWord: number;
  readonly highMask: number;
  readonly highScale: number;
}

export function fieldReader(field: Field): FieldReader {
  const [low, high, ...rest] = field.segments;
  if (low === undefined || rest.length > 0) {
    throw new ViommuError('ERR_FIELD_TABLE', `${field.name}: spans more than two words, read it with getField`);
  }
  return high === undefined
    ? { word: low.word, shift: low.shift, mask: low.mask, highWord: low.word, highMask: 0, highScale: 0 }
    : { word: low.word, shift: low.shift, mask: low.mask, highWord: high.word, highMask: high.mask, highScale: high.scale };
}

/** getField() through a FieldReader. */
export function readField(words: ArrayLike<number>, reader: FieldReader): number {
  return (((words[reader.word]! >>> reader.shift) & reader.mask) >>> 0) + ((words[reader.highWord]! & reader.highMask) >>> 0) * reader.highScale;
}

/** A field within one 32-bit word: the cheapest reader, and the smallest to inline. */
export interface WordFieldReader {
  readonly word: number;
  readonly shift: number;
  readonly mask: number;
}

export function wordFieldReader(field: Field): WordFieldReader {
  const [low, ...rest] = field.segments;
  if (low === undefined || rest.length > 0) {
    throw new ViommuError('ERR_FIELD_TABLE', `${field.name}: spans more than one word, read it with fieldReader`);
  }
  return { word: low.word, shift: low.shift, mask: low.mask };
}

/**
 * getField() through a WordFieldReader. Its bytecode is half readField()'s: a decoder that inlines many reads
 * (and what it dispatches to) stays within V8's inlining budget.
 */
export function readWordField(words: ArrayLike<number>, reader: WordFieldReader): number {
  return ((words[reader.word]! >>> reader.shift) & reader.mask) >>> 0;
}

/** Writes a field into `words` in place; other bits are kept. */
export function setField(words: Uint32Array, field: Field, value: number, base = 0): void {
  if (!Number.isInteger(value) || value < 0 || value > field.maxValue) {
    throw new ViommuError('ERR_FIELD_RANGE', `${field.name}: value ${value} does not fit in ${field.width} bits`);
  }
  const segments = field.segments;
  for (let i = 0; i < segments.length; i++) {
    const s = segments[i]!;
    const part = Math.floor(value / s.scale) % (s.mask + 1);
    const index = base + s.word;
    words[index] = (words[index]! & ~(s.mask << s.shift)) | (part << s.shift);
  }
}

/** Reads a field from a 64-bit value held as two 32-bit halves (a register, a page-table entry). */
export function getField64(lo: number, hi: number, field: Field): number {
  const segments = field.segments;
  let value = 0;
  for (let i = 0; i < segments.length; i++) {
    const s = segments[i]!;
    const word = s.word === 0 ? lo : hi;
    value += (((word >>> s.shift) & s.mask) >>> 0) * s.scale;
  }
  return value;
}

/** Whether a one-bit (or any) field is non-zero; cheaper than getField for flags. */
export function isSet(words: ArrayLike<number>, field: Field, base = 0): boolean {
  const segments = field.segments;
  for (let i = 0; i < segments.length; i++) {
    const s = segments[i]!;
    if ((words[base + s.word]! >>> s.shift) & s.mask) return true;
  }
  return false;
}

// ---- bigint path: whole structures as one bigint (tests, explain, public API) ----

export function getFieldBig(value: bigint, field: Field): bigint {
  return (value >> BigInt(field.lsb)) & ((1n << BigInt(field.width)) - 1n);
}

export function setFieldBig(structure: bigint, field: Field, value: bigint | number): bigint {
  const v = BigInt(value);
  const fieldMask = (1n << BigInt(field.width)) - 1n;
  if (v < 0n || v > fieldMask) {
    throw new ViommuError('ERR_FIELD_RANGE', `${field.name}: value ${v} does not fit in ${field.width} bits`);
  }
  const shift = BigInt(field.lsb);
  return (structure & ~(fieldMask << shift)) | (v << shift);
}

/** Encodes a structure from named values; unnamed fields and reserved bits are zero. */
export function encodeBig<N extends string>(table: FieldTable<N>, values: Partial<Record<N, bigint | number>>): bigint {
  let result = 0n;
  for (const field of table.fields) {
    const value = values[field.name as N];
    if (value !== undefined) result = setFieldBig(result, field, value);
  }
  return result;
}

/** Decodes every field of a structure into bigints, by spec name. */
export function decodeBig<N extends string>(table: FieldTable<N>, value: bigint): Record<N, bigint> {
  const result = {} as Record<N, bigint>;
  for (const field of table.fields) result[field.name as N] = getFieldBig(value, field);
  return result;
}

export function wordsToBig(words: ArrayLike<number>, base = 0, count = words.length - base): bigint {
  let result = 0n;
  for (let i = count - 1; i >= 0; i--) result = (result << 32n) | BigInt(words[base + i]! >>> 0);
  return result;
}

/** One 64-bit scratch cell seen as two 32-bit words, low word first whatever the host's byte order. */
const scratch64 = new BigUint64Array(1);
const scratchWords = new Uint32Array(scratch64.buffer);
const LOW_WORD = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1 ? 0 : 1;
const HIGH_WORD = 1 - LOW_WORD;

/**
 * `value` (in [0, 2^53)) as a number. Number(bigint) is a runtime call on V8 11 (~18 ns); a typed-array store is
 * compiled inline (~2 ns), which matters where each translation request crosses from the bigint API.
 */
export function bigToNumber(value: bigint): number {
  scratch64[0] = value;
  return scratchWords[HIGH_WORD]! * 2 ** 32 + scratchWords[LOW_WORD]!;
}

export function bigToWords(value: bigint, count: number): Uint32Array {
  const words = new Uint32Array(count);
  let rest = BigInt.asUintN(count * 32, value);
  for (let i = 0; i < count; i++) {
    words[i] = Number(rest & 0xffffffffn);
    rest >>= 32n;
  }
  return words;
}

// ---- reserved bits ----

function isFieldLegal(field: Field, features: ReadonlySet<string>): boolean {
  const needed = field.reservedUnless;
  if (needed === undefined) return true;
  return typeof needed === 'string' ? features.has(needed) : needed.some((feature) => features.has(feature));
}

/**
 * The bits of the structure that must be zero: every bit no field covers, the bits of fields whose feature is
 * absent, and the address bits at or above the address width.
 */
export function reservedWords(table: FieldTable, options: ReservedOptions = {}): Uint32Array {
  const features = new Set(options.features ?? []);
  const words = new Uint32Array(table.sizeWords).fill(0xffffffff);
  for (const field of table.fields) {
    if (!isFieldLegal(field, features)) continue;
    let legalWidth = field.width;
    if (field.addressShift !== undefined && options.addressWidth !== undefined) {
      legalWidth = Math.max(0, Math.min(field.width, options.addressWidth - field.addressShift));
    }
    for (let bit = field.lsb; bit < field.lsb + legalWidth; bit++) {
      words[bit >>> 5] = words[bit >>> 5]! & ~(1 << (bit & 31));
    }
  }
  return words;
}

export function reservedMaskBig(table: FieldTable, options: ReservedOptions = {}): bigint {
  return wordsToBig(reservedWords(table, options));
}

/** True when any reserved bit is set; `reserved` comes from reservedWords (compute it once, reuse it). */
export function hasReservedBits(words: ArrayLike<number>, reserved: Uint32Array, base = 0): boolean {
  for (let i = 0; i < reserved.length; i++) {
    if ((words[base + i]! & reserved[i]!) !== 0) return true;
  }
  return false;
}

// ---- rendering ----

export interface RenderOptions extends ReservedOptions {
  /** Leave out fields whose value is zero. */
  readonly skipZero?: boolean;
  readonly indent?: string;
}

function bitRange(field: Field): string {
  return field.width === 1 ? `${field.lsb}` : `${field.msb}:${field.lsb}`;
}

/** Lists each field with its value, one line per field, for `viommu explain` and test failure messages. */
export function renderFields(table: FieldTable, value: bigint | ArrayLike<number>, options: RenderOptions = {}): string {
  const structure = typeof value === 'bigint' ? BigInt.asUintN(table.sizeBits, value) : wordsToBig(value, 0, table.sizeWords);
  const indent = options.indent ?? '  ';
  const nameWidth = Math.max(...table.fields.map((f) => f.name.length));
  const rangeWidth = Math.max(...table.fields.map((f) => bitRange(f).length));
  const lines = [`${table.name} = 0x${structure.toString(16)}`];
  for (const field of table.fields) {
    const fieldValue = getFieldBig(structure, field);
    if (options.skipZero && fieldValue === 0n) continue;
    const named = field.values?.[Number(fieldValue)];
    const shown =
      field.addressShift !== undefined
        ? `0x${(fieldValue << BigInt(field.addressShift)).toString(16)} (address)`
        : `0x${fieldValue.toString(16)}${named ? ` (${named})` : ''}`;
    lines.push(`${indent}${field.name.padEnd(nameWidth)} [${bitRange(field).padStart(rangeWidth)}] = ${shown}  ${field.description}`);
  }
  const reserved = structure & reservedMaskBig(table, options);
  if (reserved !== 0n) lines.push(`${indent}reserved bits set: 0x${reserved.toString(16)}`);
  return lines.join('\n');
}
