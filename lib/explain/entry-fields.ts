/** The fields of a structure entry that decide a walk, decoded from the entry's own field table, for both renderers. */

import { getFieldBig, reservedMaskBig, type Field, type ReservedOptions } from '../vtd/bitfield';
import { computeCapabilities, enabledFeatures, type VtdConfig } from '../vtd/config';
import type { WalkStep } from '../vtd/walk-trace';

/** Flags shown even when clear: a clear one is often the answer (not present, no write, supervisor only). */
const ALWAYS_SHOWN: ReadonlySet<string> = new Set(['P', 'LP', 'UP', 'R', 'W', 'RW', 'US', 'PS', 'XD', 'FPD', 'PASIDE', 'SRE', 'ERE', 'WPE']);

export interface ShownField {
  readonly name: string;
  readonly text: string;
  readonly description: string;
}

export interface DecodedEntry {
  readonly fields: readonly ShownField[];
  /** Bits set where the layout (with this unit's width and features) allows none; 0n when clean. */
  readonly reserved: bigint;
}

function hex(value: number | bigint): string {
  return `0x${value.toString(16)}`;
}

/** Options for the reserved-bit mask of a unit's configuration. */
export function reservedOptionsOf(config: VtdConfig): ReservedOptions {
  return { addressWidth: config['aw-bits'], features: enabledFeatures(computeCapabilities(config)) };
}

function showField(field: Field, value: bigint): string {
  if (field.addressShift !== undefined) return hex(value << BigInt(field.addressShift));
  const named = field.values?.[Number(value)];
  return named === undefined ? (field.width === 1 ? value.toString() : hex(value)) : `${value} (${named})`;
}

/** The flags that decide and every other field that is not zero (ignored bits left out), and any reserved bits set. */
export function decodeEntry(step: WalkStep, reserved: ReservedOptions): DecodedEntry {
  const fields: ShownField[] = [];
  for (const field of step.layout.fields) {
    if (field.name.startsWith('IGN')) continue;
    const value = getFieldBig(step.value, field);
    if (value === 0n && !ALWAYS_SHOWN.has(field.name)) continue;
    fields.push({ name: field.name, text: showField(field, value), description: field.description });
  }
  return { fields, reserved: BigInt.asUintN(step.layout.sizeBits, step.value) & reservedMaskBig(step.layout, reserved) };
}

/** "P=1 RW=1 US=0 ADDR=0x5000", with the reserved bits when set. */
export function fieldsLine(decoded: DecodedEntry): string {
  const parts = decoded.fields.map((field) => `${field.name}=${field.text}`);
  if (decoded.reserved !== 0n) parts.push(`RESERVED BITS SET ${hex(decoded.reserved)}`);
  return parts.join(' ');
}
