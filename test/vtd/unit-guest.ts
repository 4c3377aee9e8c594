/** A test guest: RAM, a VtdUnit, and the programming steps a guest IOMMU driver performs, built from the field tables. */
import sinon from 'sinon';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { encodeBig } from '../../lib/vtd/bitfield';
import { GCMD, GSTS, OFFSET } from '../../lib/vtd/register-bits';
import { CCMD_FIELDS, IOTLB_FIELDS, IQA_FIELDS, IVA_FIELDS } from '../../lib/vtd/registers';
import {
  CONTEXT_CACHE_INVALIDATE,
  INVALIDATION_WAIT,
  IOTLB_INVALIDATE,
  LEGACY_CONTEXT_ENTRY,
  LEGACY_ROOT_ENTRY,
  SECOND_STAGE_1G_LEAF,
  SECOND_STAGE_2M_LEAF,
  SECOND_STAGE_4K_LEAF,
  SECOND_STAGE_TABLE_ENTRY,
} from '../../lib/vtd/structures';
import { VtdUnit } from '../../lib/vtd/unit';
import type { VtdConfig } from '../../lib/vtd/config';

export const RAM_SIZE = 32 * 1024 * 1024;
export const PAGE = 4096;
export const SID = 0x20;
export const FRCD = 0x220;

export interface ContextOptions {
  did?: number;
  /** AW field: 1 = 3 levels, 2 = 4 levels. */
  aw?: number;
  tt?: number;
  fpd?: boolean;
}

export interface MapOptions {
  read?: boolean;
  write?: boolean;
  size?: '4k' | '2m' | '1g';
  /** Extra raw bits or'ed into the leaf (reserved-bit tests). */
  extra?: bigint;
}

/** A guest with RAM at 0 and a bump allocator for table pages from 1 MiB. */
export class TestGuest {
  readonly memory = new GuestMemory();
  readonly interrupts = sinon.spy((_address: number, _data: number) => undefined);
  readonly unit: VtdUnit;
  readonly root: number;
  private nextPage = 0x100000;
  private readonly tables = new Map<number, { table: number; levels: number }>();

  constructor(config: VtdConfig | string = '') {
    this.memory.addRegion({ name: 'ram', start: 0, buffer: new ArrayBuffer(RAM_SIZE) });
    this.unit = new VtdUnit({ memory: this.memory, config, onInterrupt: this.interrupts });
    this.root = this.allocPage();
  }

  allocPage(): number {
    const page = this.nextPage;
    this.nextPage += PAGE;
    return page;
  }

  write128(address: number, value: bigint): void {
    this.memory.writeU64(address, BigInt.asUintN(64, value));
    this.memory.writeU64(address + 8, value >> 64n);
  }

  read32(offset: number): number {
    return this.unit.read(offset, 4);
  }

  read64(offset: number): bigint {
    return this.unit.read(offset, 8);
  }

  /** GCMD write that keeps the persistent enables, as Linux does (GSTS-preserving value plus the command). */
  command(set: number, clear = 0): void {
    const keep = this.read32(OFFSET.GSTS) & (GSTS.TES | GSTS.QIES | GSTS.IRES | GSTS.CFIS);
    this.unit.write(OFFSET.GCMD, 4, ((keep | set) & ~clear) >>> 0);
  }

  setRootTable(address = this.root): void {
    this.unit.write(OFFSET.RTADDR, 8, BigInt(address));
    this.command(GCMD.SRTP);
  }

  /** Root entry for the bus of `sid` (a context table allocated on first use) and the context entry of `sid`. */
  setContext(sid: number, options: ContextOptions = {}, present = true, rawOverride?: bigint): number {
    const bus = sid >> 8;
    const rootEntry = this.root + bus * 16;
    let contextTable = Number(this.memory.readU64(rootEntry) >> 12n) * PAGE;
    if (contextTable === 0) {
      contextTable = this.allocPage();
      this.write128(rootEntry, encodeBig(LEGACY_ROOT_ENTRY, { P: 1, CTP: contextTable / PAGE }));
    }
    const aw = options.aw ?? 1;
    const table = this.allocPage();
    const value =
      rawOverride ??
      encodeBig(LEGACY_CONTEXT_ENTRY, {
        P: present ? 1 : 0,
        FPD: options.fpd ? 1 : 0,
        TT: options.tt ?? 0,
        SLPTPTR: table / PAGE,
        AW: aw,
        DID: options.did ?? 1,
      });
    this.write128(contextTable + (sid & 0xff) * 16, value);
    this.tables.set(sid, { table, levels: aw + 2 });
    return table;
  }

  /** Maps `iova` -> `gpa` in the page table of `sid`, creating intermediate tables. */
  map(sid: number, iova: number, gpa: number, options: MapOptions = {}): void {
    const { table: top, levels } = this.tables.get(sid)!;
    const leafLevel = options.size === '1g' ? 3 : options.size === '2m' ? 2 : 1;
    let table = top;
    for (let level = levels; level > leafLevel; level--) {
      const index = Math.floor(iova / 2 ** (12 + 9 * (level - 1))) % 512;
      const address = table + index * 8;
      let next = Number(this.memory.readU64(address) >> 12n) * PAGE;
      if (next === 0) {
        next = this.allocPage();
        this.memory.writeU64(address, encodeBig(SECOND_STAGE_TABLE_ENTRY, { R: 1, W: 1, ADDR: next / PAGE }));
      }
      table = next;
    }
    const index = Math.floor(iova / 2 ** (12 + 9 * (leafLevel - 1))) % 512;
    const r = (options.read ?? true) ? 1 : 0;
    const w = (options.write ?? true) ? 1 : 0;
    const leaf =
      leafLevel === 1
        ? encodeBig(SECOND_STAGE_4K_LEAF, { R: r, W: w, ADDR: gpa / PAGE })
        : leafLevel === 2
          ? encodeBig(SECOND_STAGE_2M_LEAF, { R: r, W: w, PS: 1, ADDR: gpa / 2 ** 21 })
          : encodeBig(SECOND_STAGE_1G_LEAF, { R: r, W: w, PS: 1, ADDR: gpa / 2 ** 30 });
    this.memory.writeU64(table + index * 8, leaf | (options.extra ?? 0n));
  }

  /** Address of the leaf entry for `iova` (4 KiB mappings). */
  leafAddress(sid: number, iova: number): number {
    const { table: top, levels } = this.tables.get(sid)!;
    let table = top;
    for (let level = levels; level > 1; level--) {
      const index = Math.floor(iova / 2 ** (12 + 9 * (level - 1))) % 512;
      table = Number(this.memory.readU64(table + index * 8) >> 12n) * PAGE;
    }
    return table + (Math.floor(iova / PAGE) % 512) * 8;
  }

  globalContextInvalidate(): void {
    this.unit.write(OFFSET.CCMD, 8, encodeBig(CCMD_FIELDS, { ICC: 1, CIRG: 1 }));
  }

  globalIotlbInvalidate(): void {
    this.unit.write(OFFSET.IOTLB, 8, encodeBig(IOTLB_FIELDS, { IVT: 1, IIRG: 1 }));
  }

  pageIotlbInvalidate(did: number, iova: number, am = 0, ih = 0): void {
    this.unit.write(OFFSET.IVA, 8, encodeBig(IVA_FIELDS, { ADDR: iova / PAGE, AM: am, IH: ih }));
    this.unit.write(OFFSET.IOTLB, 8, encodeBig(IOTLB_FIELDS, { IVT: 1, IIRG: 3, DID: did }));
  }

  /** SRTP, global invalidations, TE: the usual enable sequence. */
  enable(): void {
    this.setRootTable();
    this.globalContextInvalidate();
    this.globalIotlbInvalidate();
    this.command(GCMD.TE);
  }

  translate(iova: number | bigint, write = false, sid = SID) {
    return this.unit.translate({ sid, iova: BigInt(iova), write });
  }

  // ---- queued invalidation ----

  queue = 0;

  setupQueue(qs = 0, dw = 0): number {
    this.queue = this.allocPage();
    for (let i = 1; i < 2 ** qs; i++) this.allocPage();
    this.unit.write(OFFSET.IQA, 8, encodeBig(IQA_FIELDS, { IQA: this.queue / PAGE, QS: qs, DW: dw }));
    this.unit.write(OFFSET.IQT, 8, 0n);
    this.command(GCMD.QIE);
    return this.queue;
  }

  /** Writes descriptors at indices from `start` and moves the tail past them. */
  submit(descriptors: bigint[], start: number, width = 16): void {
    descriptors.forEach((descriptor, i) => {
      const address = this.queue + (start + i) * width;
      this.write128(address, descriptor);
      if (width === 32) this.write128(address + 16, 0n);
    });
    this.unit.write(OFFSET.IQT, 8, BigInt((start + descriptors.length) * width));
  }
}

export const descriptor = {
  contextGlobal: (): bigint => encodeBig(CONTEXT_CACHE_INVALIDATE, { TYPE_LO: 1, G: 1 }),
  contextDevice: (sid: number, fm = 0): bigint => encodeBig(CONTEXT_CACHE_INVALIDATE, { TYPE_LO: 1, G: 3, SID: sid, FM: fm }),
  iotlbGlobal: (): bigint => encodeBig(IOTLB_INVALIDATE, { TYPE_LO: 2, G: 1 }),
  iotlbDomain: (did: number): bigint => encodeBig(IOTLB_INVALIDATE, { TYPE_LO: 2, G: 2, DID: did }),
  iotlbPage: (did: number, iova: number, am = 0): bigint => encodeBig(IOTLB_INVALIDATE, { TYPE_LO: 2, G: 3, DID: did, ADDR: iova / PAGE, AM: am }),
  wait: (options: { sw?: boolean; if?: boolean; data?: number; address?: number }): bigint =>
    encodeBig(INVALIDATION_WAIT, {
      TYPE_LO: 5,
      SW: options.sw ? 1 : 0,
      IF: options.if ? 1 : 0,
      SDATA: options.data ?? 0,
      SADDR: (options.address ?? 0) / 4,
    }),
};
