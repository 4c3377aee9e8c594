/** The table shapes PCI configuration space is described in: structures with write masks, bit sets with labels, id tables. */
import { ViommuError } from '../errors';

export type ConfigWidth = 1 | 2 | 4;

/**
 * One register of a configuration structure, in the PCI spec's terms. `writable` holds the bits software may
 * change and `w1c` the bits a write of 1 clears; every other bit is read-only. Offsets count from the structure's
 * start (the header at 0, a capability wherever it is placed).
 */
export interface ConfigField {
  readonly key: string;
  readonly spec: string;
  readonly offset: number;
  readonly width: ConfigWidth;
  readonly writable?: number;
  readonly w1c?: number;
}

export interface ConfigStructure<K extends string = string> {
  readonly name: string;
  readonly size: number;
  readonly fields: readonly ConfigField[];
  field(key: K): ConfigField;
  has(key: string): key is K;
  /** Every field of the structure placed at `base` in `bytes`; bytes past the end read as zero. */
  decode(bytes: Uint8Array, base: number): Record<K, number>;
}

function tableError(message: string): ViommuError {
  return new ViommuError('ERR_PCI_LAYOUT', message);
}

/** Reads one field of a structure placed at `base` in `bytes` (little-endian). */
export function readConfigField(bytes: Uint8Array, base: number, field: ConfigField): number {
  let value = 0;
  for (let i = field.width - 1; i >= 0; i--) value = value * 256 + (bytes[base + field.offset + i] ?? 0);
  return value;
}

/** Declares a configuration structure; overlapping fields or fields past `size` fail at load time. */
export function defineConfigStructure<const F extends readonly ConfigField[]>(
  name: string,
  fields: F,
  size?: number,
): ConfigStructure<F[number]['key']> {
  type Key = F[number]['key'];
  const end = fields.reduce((max, field) => Math.max(max, field.offset + field.width), 0);
  const structureSize = size ?? end;
  if (end > structureSize) throw tableError(`${name}: fields end at ${end}, beyond its size ${structureSize}`);
  const sorted = [...fields].sort((a, b) => a.offset - b.offset);
  sorted.forEach((field, i) => {
    const next = sorted[i + 1];
    if (next !== undefined && field.offset + field.width > next.offset) throw tableError(`${name}: ${field.key} overlaps ${next.key}`);
  });
  const byKey = new Map<string, ConfigField>(fields.map((field) => [field.key, field]));
  return {
    name,
    size: structureSize,
    fields,
    field(key) {
      const field = byKey.get(key);
      if (field === undefined) throw tableError(`${name} has no field ${key}`);
      return field;
    },
    has: (key): key is Key => byKey.has(key),
    decode: (bytes, base) => Object.fromEntries(fields.map((field) => [field.key, readConfigField(bytes, base, field)])) as Record<Key, number>,
  };
}

/** One bit (or multi-bit field) of a register: its mask, the label lspci prints, and how software may write it. */
export interface ConfigBit {
  readonly key: string;
  readonly mask: number;
  readonly label?: string;
  readonly writable?: true;
  readonly w1c?: true;
}

export interface ConfigBits<K extends string = string> {
  readonly name: string;
  /** The table in its declared order (the order renderers print it in). */
  readonly entries: readonly ConfigBit[];
  readonly bits: Readonly<Record<K, number>>;
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
    name,
    entries,
    bits,
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
export function defineIdTable<const E extends readonly IdEntry[]>(
  name: string,
  entries: E,
): IdTable<Extract<E[number], { key: string }>['key']> {
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
