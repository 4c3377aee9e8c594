/** A bench guest for the VT-d figures: RAM, a VtdUnit, and the table and queue programming a guest driver does. */
import { GuestMemory } from '../lib/memory/guest-memory';
import { encodeBig } from '../lib/vtd/bitfield';
import { GCMD, GSTS, OFFSET } from '../lib/vtd/register-bits';
import { CCMD_FIELDS, IOTLB_FIELDS, IQA_FIELDS } from '../lib/vtd/registers';
import { IOTLB_INVALIDATE, LEGACY_CONTEXT_ENTRY, LEGACY_ROOT_ENTRY, SECOND_STAGE_4K_LEAF, SECOND_STAGE_TABLE_ENTRY } from '../lib/vtd/structures';
import { VtdUnit } from '../lib/vtd/unit';

export const PAGE = 4096;

/** Legacy context AW field for a 4-level second-stage table (AW encodes levels - 2). */
const AW_FOUR_LEVELS = 2;
const LEVELS = 4;

/** A guest with `ramBytes` of RAM at 0 whose table pages come from a bump allocator starting at 1 MiB. */
export class BenchGuest {
  readonly memory = new GuestMemory();
  readonly unit: VtdUnit;
  readonly root: number;
  private nextPage = 0x100000;
  private readonly tables = new Map<number, number>();
  private queueBase = 0;

  constructor(ramBytes: number, config = 'aw-bits=48') {
    this.memory.addRegion({ name: 'ram', start: 0, buffer: new ArrayBuffer(ramBytes) });
    this.unit = new VtdUnit({ memory: this.memory, config, onInterrupt: () => undefined });
    this.root = this.allocPages(1);
  }

  allocPages(count: number): number {
    const first = this.nextPage;
    this.nextPage += count * PAGE;
    return first;
  }

  private write128(address: number, value: bigint): void {
    this.memory.writeU64(address, BigInt.asUintN(64, value));
    this.memory.writeU64(address + 8, value >> 64n);
  }

  /** Root and context entry for `sid`, translated, with a fresh 4-level second-stage table in domain `did`. */
  addDevice(sid: number, did: number): void {
    const rootEntry = this.root + (sid >> 8) * 16;
    let contextTable = Number(this.memory.readU64(rootEntry) >> 12n) * PAGE;
    if (contextTable === 0) {
      contextTable = this.allocPages(1);
      this.write128(rootEntry, encodeBig(LEGACY_ROOT_ENTRY, { P: 1, CTP: contextTable / PAGE }));
    }
    const table = this.allocPages(1);
    this.write128(
      contextTable + (sid & 0xff) * 16,
      encodeBig(LEGACY_CONTEXT_ENTRY, { P: 1, TT: 0, SLPTPTR: table / PAGE, AW: AW_FOUR_LEVELS, DID: did }),
    );
    this.tables.set(sid, table);
  }

  /**
   * Maps the 4 KiB page `iova` -> `gpa` read/write for `sid`, creating intermediate tables, and returns the
   * addresses of the four entries a walk of `iova` reads, top level first.
   */
  map(sid: number, iova: number, gpa: number): number[] {
    let table = this.tables.get(sid)!;
    const entries: number[] = [];
    for (let level = LEVELS; level > 1; level--) {
      const address = table + (Math.floor(iova / 2 ** (12 + 9 * (level - 1))) % 512) * 8;
      entries.push(address);
      let next = Number(this.memory.readU64(address) >> 12n) * PAGE;
      if (next === 0) {
        next = this.allocPages(1);
        this.memory.writeU64(address, encodeBig(SECOND_STAGE_TABLE_ENTRY, { R: 1, W: 1, ADDR: next / PAGE }));
      }
      table = next;
    }
    const leaf = table + (Math.floor(iova / PAGE) % 512) * 8;
    entries.push(leaf);
    this.memory.writeU64(leaf, encodeBig(SECOND_STAGE_4K_LEAF, { R: 1, W: 1, ADDR: gpa / PAGE }));
    return entries;
  }

  /** GCMD write that keeps the persistent enables, as Linux does. */
  private command(set: number): void {
    const keep = this.unit.read(OFFSET.GSTS, 4) & (GSTS.TES | GSTS.QIES | GSTS.IRES | GSTS.CFIS);
    this.unit.write(OFFSET.GCMD, 4, (keep | set) >>> 0);
  }

  /** SRTP, global context and IOTLB invalidation, TE: the usual enable sequence. */
  enable(): void {
    this.unit.write(OFFSET.RTADDR, 8, BigInt(this.root));
    this.command(GCMD.SRTP);
    this.unit.write(OFFSET.CCMD, 8, encodeBig(CCMD_FIELDS, { ICC: 1, CIRG: 1 }));
    this.unit.write(OFFSET.IOTLB, 8, encodeBig(IOTLB_FIELDS, { IVT: 1, IIRG: 1 }));
    this.command(GCMD.TE);
  }

  /** A 128-bit-descriptor invalidation queue of 2^qs pages, enabled with head = tail = 0; returns its base. */
  setupQueue(qs: number): number {
    this.queueBase = this.allocPages(2 ** qs);
    this.unit.write(OFFSET.IQA, 8, encodeBig(IQA_FIELDS, { IQA: this.queueBase / PAGE, QS: qs, DW: 0 }));
    this.unit.write(OFFSET.IQT, 8, 0n);
    this.command(GCMD.QIE);
    return this.queueBase;
  }

  /** Writes a 128-bit descriptor into queue slot `index` (without moving the tail). */
  putDescriptor(index: number, descriptor: bigint): void {
    this.write128(this.queueBase + index * 16, descriptor);
  }

  /** The guest's tail write: the unit processes every descriptor from its head up to `index`. */
  moveTail(index: number): void {
    this.unit.write(OFFSET.IQT, 8, BigInt(index * 16));
  }

  get queueHead(): number {
    return Number(this.unit.read(OFFSET.IQH, 8)) / 16;
  }

  get faultStatus(): number {
    return this.unit.read(OFFSET.FSTS, 4);
  }
}

/** A page-selective IOTLB invalidation descriptor for one 4 KiB page. */
export function pageInvalidation(did: number, iova: number): bigint {
  return encodeBig(IOTLB_INVALIDATE, { TYPE_LO: 2, G: 3, DID: did, ADDR: iova / PAGE, AM: 0 });
}
