/** A guest's first-stage (PGTT 1) structures for the edu device, for differential tests against QEMU 10.0 (x-flts). */
import { encodeBig, type FieldTable } from '../../lib/vtd/bitfield';
import { FIRST_STAGE_2M_LEAF, FIRST_STAGE_4K_LEAF, FIRST_STAGE_TABLE_ENTRY, FIRST_STAGE_TOP_ENTRY, PASID_PGTT } from '../../lib/vtd/structures';
import { PAGE, type OracleGuest } from './harness';
import { ScalableGuest, type Values } from './scalable-guest';

/** The properties QEMU 10.0 needs for first-stage translation (x-flts needs scalable mode and 48-bit addresses). */
export const FIRST_STAGE_PROPS = 'x-scalable-mode=on,x-flts=on,aw-bits=48';

/** Names under which page-table entries read back are compared bit by bit (see compat-quirks ENTRY_FIELDS). */
export type EntryName = 'FS_TOP_ENTRY' | 'FS_TABLE_ENTRY' | 'FS_4K_LEAF' | 'FS_2M_LEAF';

export const ENTRY_LAYOUTS: Readonly<Record<EntryName, FieldTable>> = {
  FS_TOP_ENTRY: FIRST_STAGE_TOP_ENTRY,
  FS_TABLE_ENTRY: FIRST_STAGE_TABLE_ENTRY,
  FS_4K_LEAF: FIRST_STAGE_4K_LEAF,
  FS_2M_LEAF: FIRST_STAGE_2M_LEAF,
};

/** Flags of one first-stage entry (1 = set); P, RW and US default to 1, everything else to 0. */
export interface EntryFlags {
  P?: number;
  RW?: number;
  US?: number;
  A?: number;
  D?: number;
  XD?: number;
  /** Raw bits ORed in (reserved bits, for fault cases). */
  raw?: bigint;
}

/** One mapping's entries, top to leaf, with the layout each is compared under. */
export interface MappedEntries {
  readonly addresses: readonly number[];
  readonly names: readonly EntryName[];
}

const LEVEL_NAMES = ['', 'PTE', 'PDE', 'PDPTE', 'PML4E'] as const;

function index(iova: number, level: number): number {
  return Math.floor(iova / 2 ** (12 + 9 * (level - 1))) % 512;
}

/** Scalable-mode structures with PASID entry RID_PASID (0) of type first stage over a 4-level table. */
export class FirstStageGuest {
  readonly s: ScalableGuest;
  /** The PML4 table (the ScalableGuest's `top` page). */
  readonly top: number;

  constructor(readonly guest: OracleGuest) {
    this.s = new ScalableGuest(guest);
    this.top = this.s.top;
  }

  /** Root, context, PASID directory and PASID entry 0 (first stage, 4-level, domain 3), then SRTP and TE. */
  async setUp(pasidValues: Values = {}): Promise<void> {
    await this.guest.enableEdu();
    await this.s.rootEntry();
    await this.s.context();
    await this.s.directoryEntry();
    await this.pasidEntry(pasidValues);
    await this.s.enable();
  }

  async pasidEntry(values: Values = {}): Promise<void> {
    // AW 2 (48-bit): QEMU 10.0 takes the PASID entry's AW for the first-stage canonical check.
    await this.s.pasidEntry(0, { PGTT: PASID_PGTT.FIRST_STAGE, AW: 2, SSPTPTR: 0, FSPM: 0, FSPTPTR: this.top / PAGE, ...values });
  }

  /** Global context and IOTLB invalidation through the registers. */
  async invalidate(): Promise<void> {
    await this.s.invalidate();
  }

  static entry(table: FieldTable, address: number, flags: EntryFlags, extra: Values = {}): bigint {
    const values: Values = { P: flags.P ?? 1, RW: flags.RW ?? 1, US: flags.US ?? 1, A: flags.A ?? 0, XD: flags.XD ?? 0, ...extra };
    if (table === FIRST_STAGE_4K_LEAF || table === FIRST_STAGE_2M_LEAF) values.D = flags.D ?? 0;
    if (table === FIRST_STAGE_2M_LEAF) values.PS = 1;
    const addressField = table.f.ADDR!;
    values.ADDR = address / 2 ** addressField.addressShift!;
    return encodeBig(table, values) | (flags.raw ?? 0n);
  }

  /**
   * Maps `iova` to `gpa` (4 KiB or 2 MiB) with the leaf's `flags`; `tables` gives the flags of the table entries
   * by level (4 PML4E, 3 PDPTE, 2 PDE), applied where this call creates or rewrites them. Tables are shared between
   * mappings; a table entry that exists is rewritten only when `tables` names its level.
   */
  async map(
    iova: number,
    gpa: number,
    options: { size?: '4k' | '2m'; leaf?: EntryFlags; tables?: Partial<Record<2 | 3 | 4, EntryFlags>> } = {},
  ): Promise<MappedEntries> {
    const leafLevel = options.size === '2m' ? 2 : 1;
    const addresses: number[] = [];
    const names: EntryName[] = [];
    let table = this.top;
    for (let level = 4; level > leafLevel; level--) {
      const at = table + index(iova, level) * 8;
      const layout = level === 4 ? FIRST_STAGE_TOP_ENTRY : FIRST_STAGE_TABLE_ENTRY;
      let next = Number((this.guest.shadowed(at) >> 12n) & 0xffffffffffn) * PAGE;
      const flags = options.tables?.[level as 2 | 3 | 4];
      if (next === 0 || flags !== undefined) {
        if (next === 0) next = this.guest.allocPage();
        await this.guest.writeq(at, FirstStageGuest.entry(layout, next, flags ?? {}));
      }
      addresses.push(at);
      names.push(level === 4 ? 'FS_TOP_ENTRY' : 'FS_TABLE_ENTRY');
      table = next;
    }
    const at = table + index(iova, leafLevel) * 8;
    const layout = leafLevel === 1 ? FIRST_STAGE_4K_LEAF : FIRST_STAGE_2M_LEAF;
    await this.guest.writeq(at, FirstStageGuest.entry(layout, gpa, options.leaf ?? {}));
    addresses.push(at);
    names.push(leafLevel === 1 ? 'FS_4K_LEAF' : 'FS_2M_LEAF');
    return { addresses, names };
  }

  /** Reads every entry of a mapping back from guest memory and notes each, compared bit by bit (A and D included). */
  async observeEntries(label: string, mapped: MappedEntries, quirks: Parameters<OracleGuest['noteRegister']>[3] = []): Promise<bigint[]> {
    const values: bigint[] = [];
    const top = 4;
    for (let i = 0; i < mapped.addresses.length; i++) {
      const value = await this.guest.peer.readq(mapped.addresses[i]!);
      values.push(value);
      this.guest.noteRegister(`${label}: ${LEVEL_NAMES[top - i]}`, mapped.names[i]!, value, quirks);
    }
    return values;
  }
}
