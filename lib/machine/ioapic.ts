/** Ioapic: an I/O APIC (82093AA registers, ICH version 0x20 with the EOI register) that turns pin changes into MSI messages for a split irqchip. */
import type { AccessSize, MmioHandler } from '../devices/register-access';
import { ViommuError } from '../errors';
import { INTERRUPT_WINDOW_START } from '../memory/geometry';
import { defineFields, getField, isSet, setField, wordsToBig, type Field, type FieldTable } from '../vtd/bitfield';
import { MSI_COMPAT_ADDRESS, MSI_REMAPPABLE_ADDRESS } from '../vtd/interrupt-remap';

export const IOAPIC_BASE = 0xfec00000;
export const IOAPIC_WINDOW_SIZE = 0x1000;
/** ICH-style: 0x11 (82093AA) has no EOI register, and Linux then fakes EOIs by flipping trigger mode. */
export const IOAPIC_VERSION = 0x20;

/** Window offsets (decoded exactly, no aliasing every 0x100 bytes as QEMU does: nothing should rely on it). */
const MMIO = { IOREGSEL: 0x00, IOWIN: 0x10, EOI: 0x40 } as const;
/** Register indexes behind IOWIN. */
const REG = { ID: 0x00, VER: 0x01, ARB: 0x02, REDTBL: 0x10 } as const;

const DEFAULT_PINS = 24;
/** IOREGSEL is 8 bits wide, so the last RTE's high dword (0x11 + 2n) must stay at or below 0xff. */
const MAX_PINS = (0x100 - REG.REDTBL) / 2;

export const IOAPIC_ID_FIELDS = defineFields('IOAPICID', 32, [
  { name: 'ID', bit: 24, width: 4, description: 'I/O APIC id (ARB reads the same: hardware loads it from ID)' },
] as const);

export const IOAPIC_VER_FIELDS = defineFields('IOAPICVER', 32, [
  { name: 'VERSION', bit: 0, width: 8, description: 'implementation version' },
  { name: 'MRE', bit: 16, width: 8, description: 'maximum redirection entry: pins - 1' },
] as const);

/**
 * One redirection-table entry (82093AA 3.2.4), with the VT-d remappable reading of the same bits (spec 5.1.5.1).
 * The I/O APIC never interprets the format: it forwards the bits into the message (IOAPIC_MSI_*), and the
 * remapping hardware reads the handle from there.
 */
export const IOAPIC_RTE = defineFields('I/O APIC redirection entry', 64, [
  { name: 'VECTOR', bit: 0, width: 8, description: 'vector; remappable: must equal the IRTE vector, or EOI never finds this entry' },
  {
    name: 'DELMOD',
    bit: 8,
    width: 3,
    description: 'delivery mode; remappable: must be 000',
    values: { 0: 'fixed', 1: 'lowest priority', 2: 'SMI', 4: 'NMI', 5: 'INIT', 7: 'ExtINT' },
  },
  { name: 'DESTMOD', bit: 11, width: 1, description: 'destination mode (1 logical); remappable: interrupt_index[15]' },
  { name: 'DELIVS', bit: 12, width: 1, description: 'delivery status, read-only (0: messages go out synchronously)' },
  { name: 'INTPOL', bit: 13, width: 1, description: 'input polarity', values: { 0: 'active high', 1: 'active low' } },
  { name: 'RIRR', bit: 14, width: 1, description: 'remote IRR, read-only: a level interrupt was sent and awaits EOI' },
  { name: 'TRIGGER', bit: 15, width: 1, description: 'trigger mode', values: { 0: 'edge', 1: 'level' } },
  { name: 'MASK', bit: 16, width: 1, description: 'masked' },
  { name: 'EDID', bit: 48, width: 8, description: 'extended destination id; remappable: bit 48 interrupt format (1), 55:49 interrupt_index[6:0]' },
  { name: 'DEST', bit: 56, width: 8, description: 'destination APIC id; remappable: interrupt_index[14:7]' },
] as const);

/**
 * The message an RTE sends, as QEMU's ioapic_entry_parse builds it: every field named like an IOAPIC_RTE field is
 * that field copied unread. That one rule puts a compatibility RTE's destination at address 19:12 and a
 * remappable RTE's format bit at 4 and handle at 19:5 and 2, where VT-d reads them.
 */
export const IOAPIC_MSI_ADDRESS = defineFields('I/O APIC message address', 32, [
  { name: 'DESTMOD', bit: 2, width: 1, description: 'RTE bit 11: destination mode or handle[15]' },
  { name: 'EDID', bit: 4, width: 8, description: 'RTE bits 55:48: interrupt format and handle[6:0], or extended destination' },
  { name: 'DEST', bit: 12, width: 8, description: 'RTE bits 63:56: destination or handle[14:7]' },
  { name: 'BASE', bit: 20, width: 12, description: '0xfee' },
] as const);
/** Top 12 bits of every interrupt message address: the interrupt window's base. */
const MSI_BASE = INTERRUPT_WINDOW_START / 2 ** IOAPIC_MSI_ADDRESS.f.BASE.lsb;

/** No level-assert bit 14, as QEMU: KVM and the remapping unit treat every message as an assert. */
export const IOAPIC_MSI_DATA = defineFields('I/O APIC message data', 32, [
  { name: 'VECTOR', bit: 0, width: 8, description: 'RTE vector' },
  { name: 'DELMOD', bit: 8, width: 3, description: 'RTE delivery mode' },
  { name: 'TRIGGER', bit: 15, width: 1, description: 'RTE trigger mode' },
] as const);

type Forwarding = readonly (readonly [rte: Field, message: Field])[];

function forwarding(message: FieldTable): Forwarding {
  const rteFields: Readonly<Record<string, Field | undefined>> = IOAPIC_RTE.f;
  return message.fields.flatMap((field) => {
    const source = rteFields[field.name];
    return source === undefined ? [] : [[source, field] as const];
  });
}

const ADDRESS_FROM_RTE = forwarding(IOAPIC_MSI_ADDRESS);
const DATA_FROM_RTE = forwarding(IOAPIC_MSI_DATA);

/** Per RTE word: the bits a guest write keeps (everything but DELIVS and RIRR, as QEMU's IOAPIC_RW_BITS). */
const RTE_READ_ONLY = (() => {
  const words = new Uint32Array(2);
  for (const field of [IOAPIC_RTE.f.DELIVS, IOAPIC_RTE.f.RIRR]) setField(words, field, field.maxValue);
  return words;
})();

const RTE = IOAPIC_RTE.f;

export interface IoapicMessage {
  readonly address: number;
  readonly data: number;
  readonly pin: number;
}

export interface IoapicOptions {
  /** I/O APIC ID register bits 27:24. */
  readonly id: number;
  /** Default 24. */
  readonly pins?: number;
  /** Sends the interrupt message an RTE builds (the machine passes it through interrupt remapping, then to KVM). */
  readonly deliver: (message: IoapicMessage) => void;
}

export interface IoapicEntryView {
  readonly pin: number;
  /** The entry as IOREDTBL reads it. */
  readonly raw: bigint;
  readonly vector: number;
  readonly deliveryMode: number;
  readonly masked: boolean;
  readonly trigger: 'edge' | 'level';
  readonly activeLow: boolean;
  readonly remoteIrr: boolean;
  /** The input is active (its level after polarity). */
  readonly active: boolean;
  /** Bit 48 set: VT-d remappable format. */
  readonly remappable: boolean;
  /** Interrupt index (remappable format), as the remapping unit will read it from the message. */
  readonly index: number | undefined;
  /** Destination APIC id and mode (compatibility format). */
  readonly destination: number | undefined;
  readonly destinationMode: 'physical' | 'logical' | undefined;
  /** The message the entry sends. */
  readonly address: number;
  readonly data: number;
}

function configError(message: string): ViommuError {
  return new ViommuError('ERR_IOAPIC_CONFIG', message);
}

export class Ioapic implements MmioHandler {
  readonly pins: number;
  private readonly initialId: number;
  private readonly deliver: (message: IoapicMessage) => void;
  private id = 0;
  private ioregsel = 0;
  /** RTE n in words 2n (bits 31:0) and 2n + 1 (bits 63:32), the order IOREDTBL indexes them. */
  private readonly rtes: Uint32Array;
  /**
   * Each input's level as the device drives it. Polarity is applied when it is read, as the input buffer does,
   * so reprogramming INTPOL takes effect on a line that does not move.
   */
  private readonly lines: Uint8Array;
  private readonly scratch = new Uint32Array(1);

  constructor(options: IoapicOptions) {
    const pins = options.pins ?? DEFAULT_PINS;
    if (!Number.isInteger(pins) || pins < 1 || pins > MAX_PINS) {
      throw configError(`I/O APIC pins ${pins} must be an integer 1..${MAX_PINS} (IOREGSEL is 8 bits)`);
    }
    if (!Number.isInteger(options.id) || options.id < 0 || options.id > IOAPIC_ID_FIELDS.f.ID.maxValue) {
      throw configError(`I/O APIC id ${options.id} must be an integer 0..${IOAPIC_ID_FIELDS.f.ID.maxValue}`);
    }
    this.pins = pins;
    this.initialId = options.id;
    this.deliver = options.deliver;
    this.rtes = new Uint32Array(pins * 2);
    this.lines = new Uint8Array(pins);
    this.reset();
  }

  /** Leaves the input lines alone: devices still drive them, and a level pin unmasked later must see its level. */
  reset(): void {
    this.id = this.initialId;
    this.ioregsel = 0;
    this.rtes.fill(0);
    for (let pin = 0; pin < this.pins; pin++) setField(this.rtes, RTE.MASK, 1, pin * 2);
  }

  /** IOWIN and EOI are dword registers: other sizes read 0 and drop writes (QEMU would split an 8-byte access). */
  read(offset: number, size: AccessSize): bigint {
    if (offset === MMIO.IOREGSEL) return BigInt(this.ioregsel);
    if (offset === MMIO.IOWIN && size === 4) return BigInt(this.readRegister(this.ioregsel));
    return 0n;
  }

  write(offset: number, size: AccessSize, value: bigint): void {
    const dword = Number(BigInt.asUintN(32, value));
    if (offset === MMIO.IOREGSEL) this.ioregsel = dword & 0xff;
    else if (offset === MMIO.IOWIN && size === 4) this.writeRegister(this.ioregsel, dword);
    else if (offset === MMIO.EOI && size === 4) this.endOfInterrupt(dword & 0xff);
  }

  setPin(pin: number, asserted: boolean): void {
    if (!Number.isInteger(pin) || pin < 0 || pin >= this.pins) {
      throw new ViommuError('ERR_IOAPIC_PIN', `I/O APIC pin ${pin} does not exist (pins 0..${this.pins - 1}); check the machine's interrupt routing`);
    }
    const wasActive = this.isActive(pin);
    this.lines[pin] = asserted ? 1 : 0;
    const base = pin * 2;
    if (isSet(this.rtes, RTE.TRIGGER, base)) {
      this.serviceLevel(pin);
    } else if (!wasActive && this.isActive(pin) && !isSet(this.rtes, RTE.MASK, base)) {
      // An edge on a masked pin is lost, not held pending (82093AA; QEMU's ioapic_set_irq agrees).
      this.send(pin);
    }
  }

  endOfInterrupt(vector: number): void {
    for (let pin = 0; pin < this.pins; pin++) {
      const base = pin * 2;
      if (getField(this.rtes, RTE.VECTOR, base) !== vector || !isSet(this.rtes, RTE.TRIGGER, base)) continue;
      if (!isSet(this.rtes, RTE.RIRR, base)) continue;
      setField(this.rtes, RTE.RIRR, 0, base);
      // No storm throttle (QEMU delays the 10000th back-to-back re-delivery by 10 ms): nothing here keeps time.
      this.serviceLevel(pin);
    }
  }

  entries(): readonly IoapicEntryView[] {
    const views: IoapicEntryView[] = [];
    for (let pin = 0; pin < this.pins; pin++) {
      const base = pin * 2;
      const { address, data } = this.message(pin);
      const addressWords = [address];
      const remappable = getField(addressWords, MSI_REMAPPABLE_ADDRESS.f.IF) === 1;
      const handleLowBits = MSI_REMAPPABLE_ADDRESS.f.HANDLE_LO.width;
      views.push({
        pin,
        raw: wordsToBig(this.rtes, base, 2),
        vector: getField(this.rtes, RTE.VECTOR, base),
        deliveryMode: getField(this.rtes, RTE.DELMOD, base),
        masked: isSet(this.rtes, RTE.MASK, base),
        trigger: isSet(this.rtes, RTE.TRIGGER, base) ? 'level' : 'edge',
        activeLow: isSet(this.rtes, RTE.INTPOL, base),
        remoteIrr: isSet(this.rtes, RTE.RIRR, base),
        active: this.isActive(pin),
        remappable,
        index: remappable
          ? getField(addressWords, MSI_REMAPPABLE_ADDRESS.f.HANDLE_LO) +
            getField(addressWords, MSI_REMAPPABLE_ADDRESS.f.HANDLE_HI) * 2 ** handleLowBits
          : undefined,
        destination: remappable ? undefined : getField(addressWords, MSI_COMPAT_ADDRESS.f.DEST),
        destinationMode: remappable ? undefined : getField(addressWords, MSI_COMPAT_ADDRESS.f.DM) ? 'logical' : 'physical',
        address,
        data,
      });
    }
    return views;
  }

  private readRegister(index: number): number {
    switch (index) {
      case REG.ID:
      case REG.ARB:
        return this.encode32(IOAPIC_ID_FIELDS.f.ID, this.id);
      case REG.VER:
        return this.encode32(IOAPIC_VER_FIELDS.f.VERSION, IOAPIC_VERSION) | this.encode32(IOAPIC_VER_FIELDS.f.MRE, this.pins - 1);
      default: {
        const word = this.rteWord(index);
        return word === undefined ? 0 : this.rtes[word]!;
      }
    }
  }

  private writeRegister(index: number, value: number): void {
    if (index === REG.ID) {
      this.scratch[0] = value;
      this.id = getField(this.scratch, IOAPIC_ID_FIELDS.f.ID);
      return;
    }
    const word = this.rteWord(index);
    if (word === undefined) return; // VER, ARB and unimplemented indexes are read-only
    const readOnly = RTE_READ_ONLY[word & 1]!;
    this.rtes[word] = ((value & ~readOnly) | (this.rtes[word]! & readOnly)) >>> 0;
    const pin = word >> 1;
    const base = pin * 2;
    // Linux fakes an EOI on IOAPICs without the EOI register by switching to edge and back; QEMU honours it.
    if (!isSet(this.rtes, RTE.TRIGGER, base)) setField(this.rtes, RTE.RIRR, 0, base);
    // Unmasking (or switching to level) an active level pin delivers; an edge pin waits for its next edge.
    this.serviceLevel(pin);
  }

  /** The rtes[] index an IOREDTBL register index selects, or undefined past the last pin. */
  private rteWord(index: number): number | undefined {
    const word = index - REG.REDTBL;
    return word >= 0 && word < this.rtes.length ? word : undefined;
  }

  private isActive(pin: number): boolean {
    return (this.lines[pin]! ^ (isSet(this.rtes, RTE.INTPOL, pin * 2) ? 1 : 0)) === 1;
  }

  private serviceLevel(pin: number): void {
    const base = pin * 2;
    if (!isSet(this.rtes, RTE.TRIGGER, base) || isSet(this.rtes, RTE.MASK, base)) return;
    if (isSet(this.rtes, RTE.RIRR, base) || !this.isActive(pin)) return;
    // Set before sending: the message may come back as an EOI before deliver() returns.
    setField(this.rtes, RTE.RIRR, 1, base);
    this.send(pin);
  }

  private send(pin: number): void {
    this.deliver({ ...this.message(pin), pin });
  }

  private message(pin: number): { address: number; data: number } {
    const base = pin * 2;
    const word = this.scratch;
    word[0] = 0;
    setField(word, IOAPIC_MSI_ADDRESS.f.BASE, MSI_BASE);
    for (const [from, to] of ADDRESS_FROM_RTE) setField(word, to, getField(this.rtes, from, base));
    const address = word[0]!;
    word[0] = 0;
    for (const [from, to] of DATA_FROM_RTE) setField(word, to, getField(this.rtes, from, base));
    return { address, data: word[0]! };
  }

  private encode32(field: Field, value: number): number {
    this.scratch[0] = 0;
    setField(this.scratch, field, value);
    return this.scratch[0]!;
  }
}
