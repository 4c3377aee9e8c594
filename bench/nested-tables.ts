/** Bench-local two-stage page tables: host RAM with a second-stage table, and guest first-stage tables behind it. */
import { GuestMemory, type EntryWords } from '../lib/memory/guest-memory';
import { encodeBig, type FieldTable } from '../lib/vtd/bitfield';
import {
  FIRST_STAGE_4K_LEAF,
  FIRST_STAGE_TABLE_ENTRY,
  FIRST_STAGE_TOP_ENTRY,
  SECOND_STAGE_4K_LEAF,
  SECOND_STAGE_TABLE_ENTRY,
  SECOND_STAGE_TOP_ENTRY,
} from '../lib/vtd/structures';

export const PAGE = 4096;
const LEVELS = 4;
const ADDRESS_MASK = 0x000f_ffff_ffff_f000n;

function indexAt(address: number, level: number): number {
  return Math.floor(address / 2 ** (12 + 9 * (level - 1))) % 512;
}

/**
 * Host RAM at 0 whose pages come from a bump allocator; guest-physical pages (first-stage tables and outputs) are
 * backed by host pages through a 4-level second-stage table, as a nested guest's would be. First-stage entries are
 * written with A already set, so that walks only read (no flag updates mixed into the figure).
 */
export class NestedTables {
  readonly memory = new GuestMemory();
  readonly ram: ArrayBuffer;
  readonly ssTop: number;
  readonly fsTop: number;
  private nextHostPage = 0x10_0000;
  private nextGuestPage = 0x4000_0000;
  private readonly hostOfGuest = new Map<number, number>();

  constructor(ramBytes: number) {
    this.ram = new ArrayBuffer(ramBytes);
    this.memory.addRegion({ name: 'host-ram', start: 0, buffer: this.ram });
    this.ssTop = this.hostPage();
    this.fsTop = this.guestPage();
  }

  hostPage(): number {
    const page = this.nextHostPage;
    this.nextHostPage += PAGE;
    if (this.nextHostPage > this.ram.byteLength) throw new Error('nested bench tables: host RAM is full');
    return page;
  }

  /** A fresh guest-physical page backed by a fresh host page. */
  guestPage(): number {
    const gpa = this.nextGuestPage;
    this.nextGuestPage += PAGE;
    this.mapSecond(gpa, this.hostPage());
    return gpa;
  }

  private write(address: number, table: FieldTable, values: Record<string, number>): void {
    this.memory.writeU64(address, BigInt.asUintN(64, encodeBig(table, values)));
  }

  /** Second stage: guest-physical page `gpa` -> host page `hpa`, read/write. */
  mapSecond(gpa: number, hpa: number): void {
    let table = this.ssTop;
    for (let level = LEVELS; level > 1; level--) {
      const entry = table + indexAt(gpa, level) * 8;
      let next = Number(this.memory.readU64(entry) & ADDRESS_MASK);
      if (next === 0) {
        next = this.hostPage();
        this.write(entry, level === LEVELS ? SECOND_STAGE_TOP_ENTRY : SECOND_STAGE_TABLE_ENTRY, { R: 1, W: 1, ADDR: next / PAGE });
      }
      table = next;
    }
    this.write(table + indexAt(gpa, 1) * 8, SECOND_STAGE_4K_LEAF, { R: 1, W: 1, ADDR: hpa / PAGE });
    this.hostOfGuest.set(gpa, hpa);
  }

  /** Host address of a guest-physical address inside a page this builder backed. */
  host(gpa: number): number {
    const page = gpa - (gpa % PAGE);
    return this.hostOfGuest.get(page)! + (gpa - page);
  }

  /** First stage: `va` -> a fresh guest page (itself backed by a host page); returns that guest page. */
  mapFirst(va: number): number {
    let table = this.fsTop;
    for (let level = LEVELS; level > 1; level--) {
      const entry = this.host(table + indexAt(va, level) * 8);
      let next = Number(this.memory.readU64(entry) & ADDRESS_MASK);
      if (next === 0) {
        next = this.guestPage();
        this.write(entry, level === LEVELS ? FIRST_STAGE_TOP_ENTRY : FIRST_STAGE_TABLE_ENTRY, { P: 1, RW: 1, US: 1, A: 1, ADDR: next / PAGE });
      }
      table = next;
    }
    const output = this.guestPage();
    this.write(this.host(table + indexAt(va, 1) * 8), FIRST_STAGE_4K_LEAF, { P: 1, RW: 1, US: 1, A: 1, ADDR: output / PAGE });
    return output;
  }
}

/** A view of the same host RAM that records the address of every entry read (for the baseline's address list). */
export class RecordingMemory extends GuestMemory {
  readonly reads: number[] = [];

  constructor(ram: ArrayBuffer) {
    super();
    this.addRegion({ name: 'host-ram', start: 0, buffer: ram });
  }

  override readEntry(address: number, out: EntryWords): boolean {
    this.reads.push(address);
    return super.readEntry(address, out);
  }
}
