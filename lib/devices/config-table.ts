/**
 * PCI configuration space's tables on top of the common byte layout (lib/byte-layout.ts): structures whose fields
 * carry write and write-1-to-clear masks, register bits with lspci's labels, id tables with lspci's names.
 */
import { defineFlags, defineStruct, readUnsigned, writeUnsigned, type FieldSpec, type FlagSet, type StructLayout } from '../byte-layout';
import { ViommuError } from '../errors';

export type ConfigWidth = 1 | 2 | 4;

/**
 * One register of a configuration structure: a byte-layout field of 1, 2 or 4 bytes, plus how software may write
 * it. `writable` holds the bits software may change and `w1c` the bits a write of 1 clears; every other bit is
 * read-only. Offsets count from the structure's start (the header at 0, a capability wherever it is placed).
 */
export interface ConfigField extends FieldSpec {
  readonly width: ConfigWidth;
  readonly writable?: number;
  readonly w1c?: number;
}

/**
 * A configuration structure is a byte layout whose rows are ConfigFields named by `K`: `decode(bytes, base)` reads
 * every field of the structure placed at `base`, bytes past the end of `bytes` reading as zero (a dump cut short).
 */
export type ConfigStructure<K extends string = string> = StructLayout<readonly (ConfigField & { readonly key: K })[]>;

function tableError(message: string): ViommuError {
  return new ViommuError('ERR_PCI_LAYOUT', message);
}

/** Reads one field of a structure placed at `base` in `bytes` (little-endian; zero past the end of `bytes`). */
export function readConfigField(bytes: Uint8Array, base: number, field: ConfigField): number {
  return readUnsigned(bytes, base + field.offset, field.width);
}

/**
 * Writes `value` into one field of a structure placed at `base`, keeping its low `width` bytes as a register
 * would (masks are written this way too, whatever bits they hold above the field).
 */
export function writeConfigField(bytes: Uint8Array, base: number, field: ConfigField, value: number): void {
  const low = field.width === 4 ? value >>> 0 : value & (2 ** (8 * field.width) - 1);
  writeUnsigned(bytes, base + field.offset, field.width, low);
}

/** Declares a configuration structure; overlapping fields or fields past `size` fail at load time. */
export function defineConfigStructure<const F extends readonly ConfigField[]>(
  name: string,
  fields: F,
  size?: number,
): ConfigStructure<F[number]['key']> {
  return defineStruct<readonly (ConfigField & { readonly key: F[number]['key'] })[]>(name, fields, size);
}

/** One bit (or multi-bit field) of a register: its mask, the label lspci prints, and how software may write it. */
export interface ConfigBit {
  readonly key: string;
  readonly mask: number;
  readonly label?: string;
  readonly writable?: true;
  readonly w1c?: true;
}

/** A register's bits as a flag set (names, unknown bits), with their labels and write masks. */
export interface ConfigBits<K extends string = string> extends FlagSet<K> {
  /** The table in its declared order (the order renderers print it in). */
  readonly entries: readonly ConfigBit[];
  /** The union of the writable entries' masks, and of the write-1-to-clear ones. */
  readonly writable: number;
  readonly w1c: number;
  /** The value of entry `key` in `register`, shifted down to bit 0. */
  get(register: number, key: K): number;
  /** `value` placed in entry `key`'s bits (for building register values). */
  place(key: K, value: number): number;
}

/** Declares the bits of one register; masks must be non-zero and disjoint. */
export function defineConfigBits<const B extends readonly ConfigBit[]>(name: string, entries: B): ConfigBits<B[number]['key']> {
  type Key = B[number]['key'];
  let seen = 0;
  for (const entry of entries) {
    if (entry.mask === 0 || (seen & entry.mask) !== 0) throw tableError(`${name}: ${entry.key} has an empty mask or overlaps another bit`);
    seen |= entry.mask;
  }
  const bits = Object.fromEntries(entries.map((entry) => [entry.key, entry.mask])) as Record<Key, number>;
  const union = (pick: (entry: ConfigBit) => boolean | undefined) => entries.reduce((all, entry) => (pick(entry) ? all | entry.mask : all), 0) >>> 0;
  const shiftOf = (mask: number) => Math.log2(mask & -mask);
  return {
    ...defineFlags(name, bits),
    entries,
    writable: union((entry) => entry.writable),
    w1c: union((entry) => entry.w1c),
    get: (register, key) => ((register & bits[key]) >>> 0) / 2 ** shiftOf(bits[key]),
    place: (key, value) => ((value * 2 ** shiftOf(bits[key])) & bits[key]) >>> 0,
  };
}

/** A row of an id table: the number, the name lspci prints, and a key for the ids code refers to. */
export interface IdEntry {
  readonly value: number;
  readonly name: string;
  readonly key?: string;
}

export interface IdTable<K extends string = string> {
  readonly name: string;
  readonly values: Readonly<Record<K, number>>;
  nameOf(value: number): string | undefined;
}

/** Declares numbered things (capability ids, class codes); a value listed twice fails at load time. */
export function defineIdTable<const E extends readonly IdEntry[]>(name: string, entries: E): IdTable<Extract<E[number], { key: string }>['key']> {
  type Key = Extract<E[number], { key: string }>['key'];
  const names = new Map<number, string>();
  const values: Record<string, number> = {};
  for (const entry of entries) {
    if (names.has(entry.value)) throw tableError(`${name}: ${entry.name} and ${names.get(entry.value)} share the value ${entry.value}`);
    names.set(entry.value, entry.name);
    if (entry.key !== undefined) values[entry.key] = entry.value;
  }
  return { name, values: values as Record<Key, number>, nameOf: (value) => names.get(value) };
}
