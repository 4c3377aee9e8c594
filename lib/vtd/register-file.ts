/** Register storage with the table's writable, write-1-to-clear and write-only masks applied to guest accesses. */

import { ViommuError } from '../errors';
import { bigToWords, getFieldBig } from './bitfield';
import { ECAP_FIELDS, REGISTER_WINDOW_SIZE, REGISTERS, type CapabilityValues, type RegisterName, type RegisterSpec } from './registers';

export type AccessSize = 4 | 8;

/** What a guest write did, for the unit's side effects (commands, queue tail, W1C bookkeeping). */
export interface RegisterWriteEvent {
  readonly register: RegisterSpec;
  /** Offset the guest accessed: for a 64-bit register, `register.offset + 4` means the upper dword alone. */
  readonly offset: number;
  readonly size: AccessSize;
  /** The part of the guest's value that landed in this register (bits the access did not cover are 0). */
  readonly written: bigint;
  /** Register bits the access covered, so `written` can be told apart from untouched bits. */
  readonly accessMask: bigint;
  readonly oldValue: bigint;
  readonly newValue: bigint;
}

export type RegisterWriteHook = (event: RegisterWriteEvent) => void;

const WORD_COUNT = REGISTER_WINDOW_SIZE / 4;
const NO_REGISTER = -1;

function lowWord(value: bigint): number {
  return Number(value & 0xffffffffn);
}

/**
 * The unit's registers as 32-bit words. Guest accesses go through read/write and obey the masks; the unit
 * itself updates status and hardware-owned fields with the raw setters.
 */
export class RegisterFile {
  private readonly values = new Uint32Array(WORD_COUNT);
  private readonly writable = new Uint32Array(WORD_COUNT);
  private readonly writeOneToClear = new Uint32Array(WORD_COUNT);
  private readonly readMask = new Uint32Array(WORD_COUNT);
  private readonly resetValues = new Uint32Array(WORD_COUNT);
  /** Index into `registers` for each word, or NO_REGISTER. */
  private readonly registerAtWord = new Int16Array(WORD_COUNT).fill(NO_REGISTER);
  private readonly registers: readonly RegisterSpec[];
  private readonly byName = new Map<RegisterName, RegisterSpec>();

  constructor(
    capabilities: CapabilityValues,
    private readonly onWrite?: RegisterWriteHook,
    table: readonly RegisterSpec[] = REGISTERS,
  ) {
    const ecap = capabilities.ecap;
    this.registers = table.filter((r) => !r.presentWith || getFieldBig(ecap, ECAP_FIELDS.f[r.presentWith]) === 1n);
    this.registers.forEach((register, index) => {
      const words = register.width / 32;
      const first = register.offset / 4;
      if (!Number.isInteger(first) || register.offset % (register.width / 8) !== 0 || first + words > WORD_COUNT) {
        throw new ViommuError(
          'ERR_REGISTER_TABLE',
          `register ${register.name} at 0x${register.offset.toString(16)} is misaligned or outside the window`,
        );
      }
      const reset = bigToWords(typeof register.reset === 'bigint' ? register.reset : capabilities[register.reset], words);
      const writable = bigToWords(register.writable, words);
      const w1c = bigToWords(register.writeOneToClear, words);
      const writeOnly = bigToWords(register.writeOnly, words);
      for (let i = 0; i < words; i++) {
        if (this.registerAtWord[first + i] !== NO_REGISTER) {
          throw new ViommuError('ERR_REGISTER_TABLE', `register ${register.name} overlaps another register`);
        }
        this.registerAtWord[first + i] = index;
        this.resetValues[first + i] = reset[i]!;
        this.writable[first + i] = writable[i]!;
        this.writeOneToClear[first + i] = w1c[i]!;
        this.readMask[first + i] = ~writeOnly[i]!;
      }
      this.byName.set(register.name, register);
    });
    this.reset();
  }

  /** Back to reset values (QEMU's vtd_init on device reset). */
  reset(): void {
    this.values.set(this.resetValues);
  }

  /** The registers present in this configuration, by offset. */
  get present(): readonly RegisterSpec[] {
    return this.registers;
  }

  registerAt(offset: number): RegisterSpec | undefined {
    const index = offset >= 0 && offset < REGISTER_WINDOW_SIZE ? this.registerAtWord[offset >>> 2]! : NO_REGISTER;
    return index === NO_REGISTER ? undefined : this.registers[index];
  }

  // ---- guest accesses ----

  /** A guest read: 32-bit reads give a number, 64-bit reads a bigint. Unknown or misaligned offsets read 0. */
  read(offset: number, size: 4): number;
  read(offset: number, size: 8): bigint;
  read(offset: number, size: AccessSize): number | bigint;
  read(offset: number, size: AccessSize): number | bigint {
    checkSize(size);
    if (!this.isDecoded(offset, size)) return size === 4 ? 0 : 0n;
    const word = offset >>> 2;
    const lo = (this.values[word]! & this.readMask[word]!) >>> 0;
    if (size === 4) return lo;
    const hi = (this.values[word + 1]! & this.readMask[word + 1]!) >>> 0;
    return (BigInt(hi) << 32n) | BigInt(lo);
  }

  /**
   * A guest write. Each touched register takes `(old & ~writable) | (value & writable)`, then loses the
   * W1C bits written as 1. Returns one event per register touched (also passed to the hook); writes to
   * unknown or misaligned offsets change nothing and return an empty list.
   */
  write(offset: number, size: AccessSize, value: number | bigint): RegisterWriteEvent[] {
    checkSize(size);
    if (!this.isDecoded(offset, size)) return [];
    const big = BigInt.asUintN(size * 8, BigInt(value));
    const firstWord = offset >>> 2;
    const wordValues = [lowWord(big), lowWord(big >> 32n)];
    const events: RegisterWriteEvent[] = [];
    let current: { register: RegisterSpec; before: bigint; written: bigint; accessMask: bigint } | undefined;
    const flush = (): void => {
      if (!current) return;
      const newValue = this.readRaw(current.register);
      const event: RegisterWriteEvent = {
        register: current.register,
        offset: Math.max(offset, current.register.offset),
        size,
        written: current.written,
        accessMask: current.accessMask,
        oldValue: current.before,
        newValue,
      };
      events.push(event);
      current = undefined;
    };
    for (let i = 0; i < size / 4; i++) {
      const word = firstWord + i;
      const index = this.registerAtWord[word]!;
      const register = index === NO_REGISTER ? undefined : this.registers[index];
      if (current && current.register !== register) flush();
      if (!register) continue;
      if (!current) current = { register, before: this.readRaw(register), written: 0n, accessMask: 0n };
      const shiftInRegister = BigInt((word - register.offset / 4) * 32);
      const incoming = wordValues[i]!;
      current.written |= BigInt(incoming >>> 0) << shiftInRegister;
      current.accessMask |= 0xffffffffn << shiftInRegister;
      const writable = this.writable[word]!;
      const kept = (this.values[word]! & ~writable) | (incoming & writable);
      this.values[word] = kept & ~(this.writeOneToClear[word]! & incoming);
    }
    flush();
    if (this.onWrite) for (const event of events) this.onWrite(event);
    return events;
  }

  // ---- the unit's own view (no masks) ----

  /** Current contents of a register, ignoring write-only masking. */
  readRaw(register: RegisterSpec | RegisterName): bigint {
    const spec = this.resolve(register);
    const word = spec.offset >>> 2;
    if (spec.width === 32) return BigInt(this.values[word]! >>> 0);
    return (BigInt(this.values[word + 1]! >>> 0) << 32n) | BigInt(this.values[word]! >>> 0);
  }

  /** Sets a register regardless of masks: hardware-owned state such as GSTS, FSTS, IQH, FRCD. */
  writeRaw(register: RegisterSpec | RegisterName, value: bigint): void {
    const spec = this.resolve(register);
    const words = bigToWords(value, spec.width / 32);
    this.values.set(words, spec.offset >>> 2);
  }

  /** One 32-bit word, unmasked, for hot paths that already know the offset (e.g. GSTS, FSTS). */
  readWordRaw(offset: number): number {
    return this.values[offset >>> 2]! >>> 0;
  }

  writeWordRaw(offset: number, value: number): void {
    this.values[offset >>> 2] = value;
  }

  /** Sets and clears bits of a 32-bit word in one step; returns the new value. */
  updateWordRaw(offset: number, clear: number, set: number): number {
    const word = offset >>> 2;
    const next = ((this.values[word]! & ~clear) | set) >>> 0;
    this.values[word] = next;
    return next;
  }

  private resolve(register: RegisterSpec | RegisterName): RegisterSpec {
    const spec = typeof register === 'string' ? this.byName.get(register) : register;
    if (!spec || this.registers[this.registerAtWord[spec.offset >>> 2]!] !== spec) {
      const name = typeof register === 'string' ? register : register.name;
      throw new ViommuError(
        'ERR_UNKNOWN_REGISTER',
        `register ${name} is not present in this configuration; check REGISTERS and the ECAP feature it needs`,
      );
    }
    return spec;
  }

  private isDecoded(offset: number, size: AccessSize): boolean {
    return Number.isInteger(offset) && offset >= 0 && offset + size <= REGISTER_WINDOW_SIZE && offset % size === 0;
  }
}

function checkSize(size: number): asserts size is AccessSize {
  if (size !== 4 && size !== 8) {
    throw new ViommuError('ERR_VTD_ACCESS_SIZE', `VT-d registers take 4- or 8-byte accesses, not ${size}; split the access in the VMM`);
  }
}
