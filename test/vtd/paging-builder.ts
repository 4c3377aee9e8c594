/** Test helper: RAM with a page allocator and writers for VT-d structures, every entry encoded from the field tables. */
import { GuestMemory } from '../../lib/memory/guest-memory';
import { encodeBig, type FieldTable } from '../../lib/vtd/bitfield';
import {
  FIRST_STAGE_1G_LEAF,
  FIRST_STAGE_2M_LEAF,
  FIRST_STAGE_4K_LEAF,
  FIRST_STAGE_TABLE_ENTRY,
  FIRST_STAGE_TOP_ENTRY,
  SECOND_STAGE_1G_LEAF,
  SECOND_STAGE_2M_LEAF,
  SECOND_STAGE_4K_LEAF,
  SECOND_STAGE_TABLE_ENTRY,
  SECOND_STAGE_TOP_ENTRY,
} from '../../lib/vtd/structures';

export const PAGE = 4096;
export type PageSize = '4k' | '2m' | '1g';
const LEVEL_OF: Record<PageSize, number> = { '4k': 1, '2m': 2, '1g': 3 };

export function shiftOf(level: number): number {
  return 12 + 9 * (level - 1);
}

export function indexOf(address: bigint, level: number): number {
  return Number((address >> BigInt(shiftOf(level))) & 511n);
}

export interface FirstStageLeaf {
  size?: PageSize;
  rw?: boolean;
  us?: boolean;
  xd?: boolean;
  /** Raw bits or'ed into the leaf. */
  extra?: bigint;
}

export interface SecondStageLeaf {
  size?: PageSize;
  read?: boolean;
  write?: boolean;
  extra?: bigint;
}

/** Writes structures into a memory, allocating table pages upwards from `nextPage`. */
export class TableWriter {
  constructor(
    readonly memory: GuestMemory,
    private nextPage: number,
  ) {}

  /** `count` contiguous zeroed pages (a PASID directory of 2^(PDTS+7) entries needs up to 32). */
  page(count = 1): number {
    const page = this.nextPage;
    this.nextPage += count * PAGE;
    return page;
  }

  read64(address: number): bigint {
    return this.memory.readU64(address);
  }

  write64(address: number, value: bigint): void {
    this.memory.writeU64(address, BigInt.asUintN(64, value));
  }

  /** Writes a structure of any size (a multiple of 64 bits) from named field values. */
  writeStructure<N extends string>(address: number, table: FieldTable<N>, values: Partial<Record<N, bigint | number>>, extra = 0n): void {
    const value = encodeBig(table, values) | extra;
    for (let q = 0; q < table.sizeBits / 64; q++) this.write64(address + q * 8, value >> BigInt(64 * q));
  }

  readStructure(address: number, table: FieldTable): bigint {
    let value = 0n;
    for (let q = table.sizeBits / 64 - 1; q >= 0; q--) value = (value << 64n) | this.read64(address + q * 8);
    return value;
  }

  /**
   * Maps `va` to `pa` in the first-stage tables under `top` (levels 4 or 5). Table entries get P, R/W and U/S so
   * that the leaf decides; existing table entries are followed.
   */
  mapFirst(top: number, levels: number, va: bigint, pa: number, leaf: FirstStageLeaf = {}): void {
    const leafLevel = LEVEL_OF[leaf.size ?? '4k'];
    let table = top;
    for (let level = levels; level > leafLevel; level--) {
      const entryAddress = table + indexOf(va, level) * 8;
      const entry = this.read64(entryAddress);
      if ((entry & 1n) === 0n) {
        const next = this.page();
        const layout: FieldTable = level >= 4 ? FIRST_STAGE_TOP_ENTRY : FIRST_STAGE_TABLE_ENTRY;
        this.writeStructure(entryAddress, layout, { P: 1, RW: 1, US: 1, ADDR: next / PAGE });
        table = next;
      } else {
        table = Number(entry & 0x000ffffffffff000n);
      }
    }
    const layout: FieldTable = leafLevel === 1 ? FIRST_STAGE_4K_LEAF : leafLevel === 2 ? FIRST_STAGE_2M_LEAF : FIRST_STAGE_1G_LEAF;
    const shift = shiftOf(leafLevel);
    this.writeStructure(
      table + indexOf(va, leafLevel) * 8,
      layout,
      {
        P: 1,
        RW: leaf.rw === false ? 0 : 1,
        US: leaf.us === false ? 0 : 1,
        XD: leaf.xd ? 1 : 0,
        ...(leafLevel > 1 ? { PS: 1 } : {}),
        ADDR: Math.floor(pa / 2 ** shift),
      },
      leaf.extra ?? 0n,
    );
  }

  /** Maps guest-physical `gpa` to `hpa` in the second-stage tables under `top`. */
  mapSecond(top: number, levels: number, gpa: number, hpa: number, leaf: SecondStageLeaf = {}): void {
    const leafLevel = LEVEL_OF[leaf.size ?? '4k'];
    let table = top;
    for (let level = levels; level > leafLevel; level--) {
      const entryAddress = table + indexOf(BigInt(gpa), level) * 8;
      const entry = this.read64(entryAddress);
      if ((entry & 3n) === 0n) {
        const next = this.page();
        const layout: FieldTable = level >= 4 ? SECOND_STAGE_TOP_ENTRY : SECOND_STAGE_TABLE_ENTRY;
        this.writeStructure(entryAddress, layout, { R: 1, W: 1, ADDR: next / PAGE });
        table = next;
      } else {
        table = Number(entry & 0x000ffffffffff000n);
      }
    }
    const layout: FieldTable = leafLevel === 1 ? SECOND_STAGE_4K_LEAF : leafLevel === 2 ? SECOND_STAGE_2M_LEAF : SECOND_STAGE_1G_LEAF;
    this.writeStructure(
      table + indexOf(BigInt(gpa), leafLevel) * 8,
      layout,
      {
        R: leaf.read === false ? 0 : 1,
        W: leaf.write === false ? 0 : 1,
        ...(leafLevel > 1 ? { PS: 1 } : {}),
        ADDR: Math.floor(hpa / 2 ** shiftOf(leafLevel)),
      },
      leaf.extra ?? 0n,
    );
  }

  /** Address of the first-stage entry for `va` at `level`, following present table entries from `top`. */
  firstEntryAddress(top: number, levels: number, va: bigint, level: number): number {
    let table = top;
    for (let l = levels; l > level; l--) table = Number(this.read64(table + indexOf(va, l) * 8) & 0x000ffffffffff000n);
    return table + indexOf(va, level) * 8;
  }
}

/** Guest RAM at 0 with table pages allocated upwards from `firstTable`. */
export class TableMemory extends TableWriter {
  readonly ram: ArrayBuffer;

  constructor(
    readonly size = 16 * 1024 * 1024,
    firstTable = 0x100000,
    memory = new GuestMemory(),
  ) {
    const ram = new ArrayBuffer(size);
    memory.addRegion({ name: 'ram', start: 0, buffer: ram });
    super(memory, firstTable);
    this.ram = ram;
  }
}
