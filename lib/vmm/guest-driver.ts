/**
 * Guest-driver programming sequences played through a machine's CPU accesses (ports and memory, as a qtest script
 * or a guest kernel makes them): PCI set-up, the edu DMA engine, and the VT-d unit's registers, queue, legacy and
 * scalable-mode tables, and second-stage and first-stage (IA-32e) paging, first-stage tables also in guest-physical space.
 */
import { EDU_DMA_COMMAND, EDU_REGISTERS } from '../devices/edu';
import { CAPABILITY_HEADER, MSI_CONTROL, msiStructureFor, PCI_CAPABILITY_IDS, PCI_COMMAND, TYPE0_HEADER } from '../devices/pci-layout';
import { decodeBig, encodeBig, getFieldBig, type Field, type FieldTable } from '../vtd/bitfield';
import { GCMD, GSTS, OFFSET, registerOffset } from '../vtd/register-bits';
import { CAP_FIELDS, FRCD_HI_FIELDS, FRCD_LO_FIELDS, IQA_FIELDS, RTADDR_FIELDS } from '../vtd/registers';
import {
  CONTEXT_CACHE_INVALIDATE,
  FIRST_STAGE_4K_LEAF,
  FIRST_STAGE_TABLE_ENTRY,
  FIRST_STAGE_TOP_ENTRY,
  descriptorKindNamed,
  type DescriptorName,
  INVALIDATION_WAIT,
  IOTLB_INVALIDATE,
  LEGACY_CONTEXT_ENTRY,
  LEGACY_ROOT_ENTRY,
  PASID_CACHE_INVALIDATE,
  PASID_DIRECTORY_ENTRY,
  PASID_IOTLB_INVALIDATE,
  PASID_PGTT,
  SCALABLE_CONTEXT_ENTRY,
  SCALABLE_PASID_ENTRY,
  SCALABLE_ROOT_ENTRY,
  SECOND_STAGE_4K_LEAF,
  SECOND_STAGE_TABLE_ENTRY,
  SECOND_STAGE_TOP_ENTRY,
} from '../vtd/structures';
import { CONFIG_ADDRESS_ENABLE, CONFIG_ADDRESS_PORT, CONFIG_DATA_PORT } from './pci';
import type { QtestMachine } from './qtest/machine';
import { ViommuError } from '../errors';
import { PAGE_BYTES, PAGE_SHIFT } from '../memory/geometry';

/** The CPU accesses a guest driver makes. */
export type GuestCpu = Pick<
  QtestMachine,
  'readPort' | 'writePort' | 'readMemory' | 'writeMemory' | 'readMemory64' | 'writeMemory64' | 'readBytes' | 'writeBytes'
>;

const CAP_OFFSET = registerOffset('CAP');
/** A fault record: FRCD.lo then FRCD.hi, 64 bits each (CAP.FRO counts in these units). */
const FRCD_HI_BYTE = 8;
const FRCD_BYTES = 16;
/** The DWORD write that clears a record's F (write-1-to-clear) and nothing else, placed by the FRCD.hi field table. */
const FAULT_CLEAR = (() => {
  const segment = FRCD_HI_FIELDS.f.F.segments[0]!;
  return { offset: FRCD_HI_BYTE + segment.word * 4, value: (segment.mask << segment.shift) >>> 0 };
})();
/** A bound on every poll, so a device or unit that never answers fails the sequence instead of hanging it. */
const POLL_LIMIT = 5000;

function driverError(message: string): ViommuError {
  return new ViommuError('ERR_GUEST_DRIVER', message);
}

function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Hands out zeroed 4 KiB pages of guest RAM for tables and buffers, from `start` upwards. */
export class PageAllocator {
  private next: number;

  constructor(
    private readonly cpu: GuestCpu,
    start: number,
  ) {
    this.next = start;
  }

  async page(): Promise<number> {
    const address = this.next;
    this.next += PAGE_BYTES;
    await this.cpu.writeBytes(BigInt(address), new Uint8Array(PAGE_BYTES));
    return address;
  }
}

/** Configuration mechanism #1 and what a driver's probe routine does with it. */
export class GuestPci {
  constructor(private readonly cpu: GuestCpu) {}

  private async select(devfn: number, offset: number): Promise<void> {
    await this.cpu.writePort(CONFIG_ADDRESS_PORT, 4, (CONFIG_ADDRESS_ENABLE | (devfn << 8) | (offset & 0xfc)) >>> 0);
  }

  async read(devfn: number, offset: number, size: 1 | 2 | 4): Promise<number> {
    await this.select(devfn, offset);
    return this.cpu.readPort(CONFIG_DATA_PORT + (offset & 3), size);
  }

  async write(devfn: number, offset: number, size: 1 | 2 | 4, value: number): Promise<void> {
    await this.select(devfn, offset);
    await this.cpu.writePort(CONFIG_DATA_PORT + (offset & 3), size, value);
  }

  /** BAR0 at `bar0`, then memory decoding and bus mastering on. */
  async enable(devfn: number, bar0: number): Promise<void> {
    await this.write(devfn, TYPE0_HEADER.field('bar0').offset, 4, bar0);
    await this.write(devfn, TYPE0_HEADER.field('command').offset, 2, PCI_COMMAND.bits.MEMORY_SPACE | PCI_COMMAND.bits.BUS_MASTER);
  }

  /** Walks the capability list (at most 48 entries, as Linux does) for `id`. */
  async findCapability(devfn: number, id: number): Promise<number | undefined> {
    let at = (await this.read(devfn, TYPE0_HEADER.field('capabilitiesPointer').offset, 1)) & 0xfc;
    for (let steps = 0; at !== 0 && steps < 48; steps++) {
      if ((await this.read(devfn, at + CAPABILITY_HEADER.field('id').offset, 1)) === id) return at;
      at = (await this.read(devfn, at + CAPABILITY_HEADER.field('next').offset, 1)) & 0xfc;
    }
    return undefined;
  }

  /** Programs MSI vector 0 with `address`/`data` and enables it. */
  async enableMsi(devfn: number, address: number, data: number): Promise<void> {
    const at = await this.findCapability(devfn, PCI_CAPABILITY_IDS.MSI);
    if (at === undefined) throw driverError(`device 00:${(devfn >> 3).toString(16)}.${devfn & 7} has no MSI capability`);
    const control = await this.read(devfn, at + 2, 2);
    const layout = msiStructureFor(control);
    await this.write(devfn, at + layout.field('address').offset, 4, address);
    if (layout.has('upperAddress')) await this.write(devfn, at + layout.field('upperAddress').offset, 4, 0);
    await this.write(devfn, at + layout.field('data').offset, 2, data);
    await this.write(devfn, at + 2, 2, control | MSI_CONTROL.bits.ENABLE);
  }
}

/** QEMU's edu DMA engine as its guest driver programs it. */
export class EduDriver {
  constructor(
    private readonly cpu: GuestCpu,
    private readonly bar: number,
  ) {}

  /** One transfer (source, destination, count, command with RUN), polled until RUN clears; raises an MSI when `irq`. */
  async transfer(source: bigint, destination: bigint, count: number, toRam: boolean, irq = true): Promise<void> {
    await this.cpu.writeMemory64(BigInt(this.bar + EDU_REGISTERS.dmaSource), source);
    await this.cpu.writeMemory64(BigInt(this.bar + EDU_REGISTERS.dmaDestination), destination);
    await this.cpu.writeMemory64(BigInt(this.bar + EDU_REGISTERS.dmaCount), BigInt(count));
    const command = EDU_DMA_COMMAND.RUN | (toRam ? EDU_DMA_COMMAND.TO_RAM : 0) | (irq ? EDU_DMA_COMMAND.IRQ : 0);
    await this.cpu.writeMemory64(BigInt(this.bar + EDU_REGISTERS.dmaCommand), BigInt(command));
    for (let polls = 0; ((await this.cpu.readMemory64(BigInt(this.bar + EDU_REGISTERS.dmaCommand))) & BigInt(EDU_DMA_COMMAND.RUN)) !== 0n; polls++) {
      if (polls > POLL_LIMIT) throw driverError('the edu DMA engine never cleared its run bit');
      await pause(1);
    }
  }

  /** Acknowledges whatever the device raised; returns the interrupt status it had. */
  async acknowledge(): Promise<number> {
    const status = await this.cpu.readMemory(BigInt(this.bar + EDU_REGISTERS.interruptStatus), 4);
    if (status !== 0) await this.cpu.writeMemory(BigInt(this.bar + EDU_REGISTERS.acknowledgeInterrupt), 4, status);
    return status;
  }
}

/** One fault record as the guest reads it. */
export interface GuestFaultRecord {
  readonly index: number;
  readonly sid: number;
  readonly reason: number;
  readonly write: boolean;
  /** The faulting page address (FRCD.FI). */
  readonly address: bigint;
  /** FRCD.PV when FRCD.PP says the request carried a PASID. */
  readonly pasid?: number;
}

/** How the unit finds its root table: RTADDR.TTM by its value names. */
export type TranslationTableMode = 'legacy' | 'scalable';

/** The number a field's value table gives `name` (the field tables name enumerated values; drivers use the names). */
function valueNamed(field: Field, name: string): number {
  const entry = Object.entries(field.values ?? {}).find(([, text]) => text === name);
  if (entry === undefined) throw driverError(`field ${field.name} has no value named '${name}'`);
  return Number(entry[0]);
}

/** The VT-d unit's register interface: commands with status polling, the invalidation queue, fault records. */
export class VtdDriver {
  private queueBase = 0;
  private queueTail = 0;
  private queueEntries = 0;
  private descriptorBytes = 16;
  private statusPage = 0;
  private waitCount = 0;

  constructor(
    private readonly cpu: GuestCpu,
    private readonly base: number,
    private readonly pages: PageAllocator,
  ) {}

  readonly read32 = async (offset: number): Promise<number> => this.cpu.readMemory(BigInt(this.base + offset), 4);
  readonly read64 = async (offset: number): Promise<bigint> => this.cpu.readMemory64(BigInt(this.base + offset));
  readonly write32 = async (offset: number, value: number): Promise<void> => this.cpu.writeMemory(BigInt(this.base + offset), 4, value >>> 0);
  readonly write64 = async (offset: number, value: bigint): Promise<void> => this.cpu.writeMemory64(BigInt(this.base + offset), value);

  /** A GCMD write that keeps the persistent enables (as Linux does), then waits for GSTS to show `status`. */
  async command(set: number, status: number): Promise<void> {
    const keep = (await this.read32(OFFSET.GSTS)) & (GSTS.TES | GSTS.QIES | GSTS.IRES | GSTS.CFIS);
    await this.write32(OFFSET.GCMD, keep | set);
    for (let polls = 0; ((await this.read32(OFFSET.GSTS)) & status) === 0; polls++) {
      if (polls > POLL_LIMIT) throw driverError(`GSTS never showed 0x${status.toString(16)} after GCMD 0x${set.toString(16)}`);
      await pause(0);
    }
  }

  /** RTADDR with the root table and its mode (scalable: RTADDR.TTM = 01), then SRTP. */
  async setRootTable(rootTable: number, mode: TranslationTableMode = 'legacy'): Promise<void> {
    await this.write64(OFFSET.RTADDR, encodeBig(RTADDR_FIELDS, { RTA: rootTable / PAGE_BYTES, TTM: valueNamed(RTADDR_FIELDS.f.TTM, mode) }));
    await this.command(GCMD.SRTP, GSTS.RTPS);
  }

  /**
   * A one-page queue and a status page for wait descriptors, then QIE. Scalable mode's PASID-based descriptors
   * need 256-bit slots (IQA.DW = 1): 128 of them in the page instead of 256 of 128 bits.
   */
  async enableQueue(descriptorBits: 128 | 256 = 128): Promise<void> {
    this.queueBase = await this.pages.page();
    this.statusPage = await this.pages.page();
    this.descriptorBytes = descriptorBits / 8;
    this.queueEntries = PAGE_BYTES / this.descriptorBytes;
    this.queueTail = 0;
    const width = valueNamed(IQA_FIELDS.f.DW, `${descriptorBits}-bit`);
    await this.write64(OFFSET.IQA, encodeBig(IQA_FIELDS, { IQA: this.queueBase / PAGE_BYTES, QS: 0, DW: width }));
    await this.write64(OFFSET.IQT, 0n);
    await this.command(GCMD.QIE, GSTS.QIES);
  }

  async enableTranslation(): Promise<void> {
    await this.command(GCMD.TE, GSTS.TES);
  }

  /**
   * Submits `descriptors` and a wait descriptor with a status write, and polls the status as drivers do. Each
   * descriptor fills a whole slot (a 128-bit one in a 256-bit slot has its upper half zero).
   */
  async invalidate(descriptors: readonly bigint[]): Promise<void> {
    const token = ++this.waitCount;
    const wait = encodeBig(INVALIDATION_WAIT, { TYPE_LO: descriptorType('wait'), SW: 1, SDATA: token, SADDR: this.statusPage / 4 });
    for (const descriptor of [...descriptors, wait]) {
      const at = this.queueBase + this.queueTail * this.descriptorBytes;
      for (let q = 0; q < this.descriptorBytes / 8; q++) {
        await this.cpu.writeMemory64(BigInt(at + q * 8), BigInt.asUintN(64, descriptor >> BigInt(64 * q)));
      }
      this.queueTail = (this.queueTail + 1) % this.queueEntries;
    }
    await this.write64(OFFSET.IQT, BigInt(this.queueTail * this.descriptorBytes));
    for (let polls = 0; (await this.cpu.readMemory(BigInt(this.statusPage), 4)) !== token; polls++) {
      if (polls > POLL_LIMIT)
        throw driverError(`the invalidation wait descriptor ${token} never completed (FSTS 0x${(await this.read32(OFFSET.FSTS)).toString(16)})`);
      await pause(0);
    }
  }

  /** FSTS and every fault record with F set. */
  async faults(): Promise<{ fsts: number; records: GuestFaultRecord[] }> {
    const cap = await this.read64(CAP_OFFSET);
    const first = Number(getFieldBig(cap, CAP_FIELDS.f.FRO)) * FRCD_BYTES;
    const count = Number(getFieldBig(cap, CAP_FIELDS.f.NFR)) + 1;
    const records: GuestFaultRecord[] = [];
    for (let index = 0; index < count; index++) {
      const lo = await this.read64(first + index * FRCD_BYTES);
      const hi = await this.read64(first + index * FRCD_BYTES + FRCD_HI_BYTE);
      const fields = decodeBig(FRCD_HI_FIELDS, hi);
      if (fields.F === 0n) continue;
      records.push({
        index,
        sid: Number(fields.SID),
        reason: Number(fields.FR),
        write: fields.T === 0n,
        address: decodeBig(FRCD_LO_FIELDS, lo).FI << BigInt(PAGE_SHIFT),
        ...(fields.PP === 1n ? { pasid: Number(fields.PV) } : {}),
      });
    }
    return { fsts: await this.read32(OFFSET.FSTS), records };
  }

  /** Clears every recorded fault (F is write-1-to-clear in each record's top dword) and FSTS's overflow. */
  async clearFaults(records: readonly GuestFaultRecord[]): Promise<void> {
    const cap = await this.read64(CAP_OFFSET);
    const first = Number(getFieldBig(cap, CAP_FIELDS.f.FRO)) * FRCD_BYTES;
    for (const record of records) await this.write32(first + record.index * FRCD_BYTES + FAULT_CLEAR.offset, FAULT_CLEAR.value);
    await this.write32(OFFSET.FSTS, await this.read32(OFFSET.FSTS));
  }
}

function descriptorType(name: DescriptorName): number {
  return descriptorKindNamed(name).type;
}

/** The legacy-mode descriptors a driver queues (context-cache and IOTLB ones serve scalable mode's second stage too). */
export const LEGACY_INVALIDATIONS = {
  contextGlobal: (): bigint => encodeBig(CONTEXT_CACHE_INVALIDATE, { TYPE_LO: descriptorType('context-cache'), G: 1 }),
  iotlbGlobal: (): bigint => encodeBig(IOTLB_INVALIDATE, { TYPE_LO: descriptorType('IOTLB'), G: 1 }),
  iotlbPage: (did: number, iova: number, am = 0): bigint =>
    encodeBig(IOTLB_INVALIDATE, { TYPE_LO: descriptorType('IOTLB'), G: 3, DID: did, ADDR: iova / PAGE_BYTES, AM: am }),
};

/** Scalable mode's PASID-based descriptors (256-bit queue only), granularities by their names in the field tables. */
export const PASID_INVALIDATIONS = {
  pasidCacheGlobal: (): bigint =>
    encodeBig(PASID_CACHE_INVALIDATE, {
      TYPE_LO: descriptorType('PASID cache'),
      G: valueNamed(PASID_CACHE_INVALIDATE.f.G, 'global'),
    }),
  pasidCache: (did: number, pasid: number): bigint =>
    encodeBig(PASID_CACHE_INVALIDATE, {
      TYPE_LO: descriptorType('PASID cache'),
      G: valueNamed(PASID_CACHE_INVALIDATE.f.G, 'PASID'),
      DID: did,
      PASID: pasid,
    }),
  iotlbPasid: (did: number, pasid: number): bigint =>
    encodeBig(PASID_IOTLB_INVALIDATE, {
      TYPE_LO: descriptorType('PASID-based IOTLB'),
      G: valueNamed(PASID_IOTLB_INVALIDATE.f.G, 'all of PASID'),
      DID: did,
      PASID: pasid,
    }),
  /** 2^am pages from `iova` (aligned to that size); `leafOnly` is IH: only leaf entries changed. */
  iotlbPages: (did: number, pasid: number, iova: number, am = 0, leafOnly = false): bigint =>
    encodeBig(PASID_IOTLB_INVALIDATE, {
      TYPE_LO: descriptorType('PASID-based IOTLB'),
      G: valueNamed(PASID_IOTLB_INVALIDATE.f.G, 'page in PASID'),
      DID: did,
      PASID: pasid,
      ADDR: iova / PAGE_BYTES,
      AM: am,
      IH: leafOnly ? 1 : 0,
    }),
};

export interface PageAccess {
  readonly read: boolean;
  readonly write: boolean;
  /** First stage only: a supervisor page (U/S = 0), out of reach of user requests. */
  readonly supervisorOnly?: boolean;
}

type Values = Partial<Record<string, number | bigint>>;

/** One paging format as a driver writes it: the layout of each level's entries and the values that make them present. */
export interface PagingFormat {
  readonly name: string;
  /** Layout of a non-leaf entry at `level` (PML5E/PML4E at 5 and 4, else a table entry). */
  tableLayout(level: number): FieldTable;
  readonly leafLayout: FieldTable;
  /** A non-leaf entry's values besides ADDR: permissive, so that the leaf decides. */
  readonly tableValues: Values;
  leafValues(access: PageAccess): Values;
  /** Whether an entry, decoded with its layout, points somewhere. */
  present(entry: Record<string, bigint>): boolean;
}

export const SECOND_STAGE_FORMAT: PagingFormat = {
  name: 'second stage',
  tableLayout: (level) => (level >= 4 ? SECOND_STAGE_TOP_ENTRY : SECOND_STAGE_TABLE_ENTRY),
  leafLayout: SECOND_STAGE_4K_LEAF,
  tableValues: { R: 1, W: 1 },
  leafValues: (access) => ({ R: access.read ? 1 : 0, W: access.write ? 1 : 0 }),
  present: (entry) => entry.R === 1n || entry.W === 1n,
};

/** IA-32e paging: every page is readable, so a mapping that is not readable cannot be written. */
export const FIRST_STAGE_FORMAT: PagingFormat = {
  name: 'first stage (IA-32e)',
  tableLayout: (level) => (level >= 4 ? FIRST_STAGE_TOP_ENTRY : FIRST_STAGE_TABLE_ENTRY),
  leafLayout: FIRST_STAGE_4K_LEAF,
  tableValues: { P: 1, RW: 1, US: 1 },
  leafValues: (access) => {
    if (!access.read) throw driverError('a first-stage page is always readable: map it with read access');
    return { P: 1, RW: access.write ? 1 : 0, US: access.supervisorOnly ? 0 : 1 };
  },
  present: (entry) => entry.P === 1n,
};

/**
 * Where a hierarchy's tables live. Usually guest RAM as the unit reads it; for nested translation's first stage,
 * guest-physical space that the second stage maps onto RAM, so entries hold addresses the CPU cannot use directly.
 */
export interface TableSpace {
  /** A zeroed table page; returns its address as entries (and table pointers) hold it. */
  allocate(): Promise<number>;
  /** Where the CPU reaches `address` of this space in RAM. */
  ramAddress(address: number): number;
}

/** Tables straight in RAM. */
export function ramTables(pages: PageAllocator): TableSpace {
  return { allocate: () => pages.page(), ramAddress: (address) => address };
}

/**
 * Tables in guest-physical space from `base` upwards: each table is a RAM page that the second stage `second`
 * maps (read-write, since the unit writes A/D into first-stage entries) at the next guest-physical page.
 */
export class GuestPhysicalTables implements TableSpace {
  private readonly ramOf = new Map<number, number>();
  private next: number;

  constructor(
    private readonly pages: PageAllocator,
    private readonly second: PagingTables,
    readonly base: number,
  ) {
    this.next = base;
  }

  async allocate(): Promise<number> {
    const ram = await this.pages.page();
    const address = this.next;
    this.next += PAGE_BYTES;
    await this.second.map(address, ram, 1, { read: true, write: true });
    this.ramOf.set(address, ram);
    return address;
  }

  ramAddress(address: number): number {
    const ram = this.ramOf.get(address - (address % PAGE_BYTES));
    if (ram === undefined) throw driverError(`guest-physical 0x${address.toString(16)} holds no table of this space`);
    return ram + (address % PAGE_BYTES);
  }

  /** How many table pages the space holds. */
  get size(): number {
    return this.ramOf.size;
  }
}

/** A `levels`-level hierarchy of one paging format with 4 KiB leaves, built as a driver builds it (present last). */
export class PagingTables {
  private constructor(
    private readonly cpu: GuestCpu,
    readonly format: PagingFormat,
    readonly space: TableSpace,
    readonly levels: number,
    /** The top table, in the space's addresses (what SSPTPTR/FSPTPTR/SLPTPTR holds). */
    readonly top: number,
  ) {}

  static async create(cpu: GuestCpu, format: PagingFormat, space: TableSpace, levels = 4): Promise<PagingTables> {
    return new PagingTables(cpu, format, space, levels, await space.allocate());
  }

  /** RAM address of the leaf entry for `iova`, creating intermediate tables. */
  private async leafEntry(iova: number): Promise<number> {
    let table = this.top;
    for (let level = this.levels; level > 1; level--) {
      const entry = this.space.ramAddress(table) + (Math.floor(iova / 2 ** (PAGE_SHIFT + 9 * (level - 1))) % 512) * 8;
      const layout = this.format.tableLayout(level);
      const current = decodeBig(layout, await this.cpu.readMemory64(BigInt(entry)));
      if (this.format.present(current)) {
        table = Number(current.ADDR) * PAGE_BYTES;
        continue;
      }
      table = await this.space.allocate();
      await this.cpu.writeMemory64(BigInt(entry), encodeBig(layout, { ...this.format.tableValues, ADDR: table / PAGE_BYTES }));
    }
    return this.space.ramAddress(table) + (Math.floor(iova / PAGE_BYTES) % 512) * 8;
  }

  /** Maps `pages` 4 KiB pages from `iova` to `output` with `access`. */
  async map(iova: number, output: number, pages: number, access: PageAccess): Promise<void> {
    for (let i = 0; i < pages; i++) {
      const entry = await this.leafEntry(iova + i * PAGE_BYTES);
      await this.cpu.writeMemory64(
        BigInt(entry),
        encodeBig(this.format.leafLayout, { ...this.format.leafValues(access), ADDR: output / PAGE_BYTES + i }),
      );
    }
  }

  /** Clears the leaves of `pages` pages from `iova` (tables stay, as Linux leaves them until the domain goes). */
  async unmap(iova: number, pages: number): Promise<void> {
    for (let i = 0; i < pages; i++) await this.cpu.writeMemory64(BigInt(await this.leafEntry(iova + i * PAGE_BYTES)), 0n);
  }
}

/** Writes a structure of whole qwords, qword 0 (which holds P in every VT-d table entry) last. */
async function writeStructure(cpu: GuestCpu, address: number, table: FieldTable, values: Values): Promise<void> {
  const value = encodeBig(table, values);
  for (let q = table.sizeBits / 64 - 1; q >= 0; q--) await cpu.writeMemory64(BigInt(address + q * 8), BigInt.asUintN(64, value >> BigInt(64 * q)));
}

async function readStructure(cpu: GuestCpu, address: number, table: FieldTable): Promise<Record<string, bigint>> {
  let value = 0n;
  for (let q = table.sizeBits / 64 - 1; q >= 0; q--) value = (value << 64n) | (await cpu.readMemory64(BigInt(address + q * 8)));
  return decodeBig(table, value);
}

/**
 * Legacy-mode translation structures: a root table, context tables on demand, and one second-stage domain per
 * device with `levels` levels (4 by default, AW = 2), built as a driver builds them (entries filled, present last).
 */
export class LegacyTables {
  readonly root: Promise<number>;
  private readonly domains = new Map<number, { did: number; tables: PagingTables }>();

  constructor(
    private readonly cpu: GuestCpu,
    private readonly pages: PageAllocator,
  ) {
    this.root = pages.page();
  }

  /** Gives `sid` its own domain `did` with an empty `levels`-level table. */
  async addDevice(sid: number, did: number, levels = 4): Promise<void> {
    const rootEntry = (await this.root) + (sid >> 8) * 16;
    let contextTable = Number((await readStructure(this.cpu, rootEntry, LEGACY_ROOT_ENTRY)).CTP) * PAGE_BYTES;
    if (contextTable === 0) {
      contextTable = await this.pages.page();
      await writeStructure(this.cpu, rootEntry, LEGACY_ROOT_ENTRY, { P: 1, CTP: contextTable / PAGE_BYTES });
    }
    const tables = await PagingTables.create(this.cpu, SECOND_STAGE_FORMAT, ramTables(this.pages), levels);
    await writeStructure(this.cpu, contextTable + (sid & 0xff) * 16, LEGACY_CONTEXT_ENTRY, {
      P: 1,
      TT: 0,
      SLPTPTR: tables.top / PAGE_BYTES,
      AW: levels - 2,
      DID: did,
    });
    this.domains.set(sid, { did, tables });
  }

  private domain(sid: number): { did: number; tables: PagingTables } {
    const domain = this.domains.get(sid);
    if (domain === undefined) throw driverError(`no domain for SID 0x${sid.toString(16)}; addDevice first`);
    return domain;
  }

  /** Maps `pages` 4 KiB pages from `iova` to `gpa` with `access`. */
  async map(sid: number, iova: number, gpa: number, pages: number, access: PageAccess): Promise<void> {
    await this.domain(sid).tables.map(iova, gpa, pages, access);
  }

  async unmap(sid: number, iova: number, pages: number): Promise<void> {
    await this.domain(sid).tables.unmap(iova, pages);
  }

  domainId(sid: number): number {
    return this.domain(sid).did;
  }
}

/** The PASID entry values for each kind of scalable-mode domain (PGTT by name, as PASID_PGTT gives them). */
export const PASID_ENTRY = {
  secondStage: (did: number, second: PagingTables): Values => ({
    PGTT: PASID_PGTT.SECOND_STAGE,
    AW: second.levels - 2,
    SSPTPTR: second.top / PAGE_BYTES,
    DID: did,
  }),
  /** 4-level (FSPM 0) or 5-level (FSPM 1) first stage; SRE stays clear, so supervisor requests fault. */
  firstStage: (did: number, first: PagingTables): Values => ({
    PGTT: PASID_PGTT.FIRST_STAGE,
    FSPM: first.levels - 4,
    FSPTPTR: first.top / PAGE_BYTES,
    DID: did,
  }),
  /** FSPTPTR is guest-physical: the second stage translates it, every first-stage table and the output. */
  nested: (did: number, first: PagingTables, second: PagingTables): Values => ({
    PGTT: PASID_PGTT.NESTED,
    AW: second.levels - 2,
    SSPTPTR: second.top / PAGE_BYTES,
    FSPM: first.levels - 4,
    FSPTPTR: first.top / PAGE_BYTES,
    DID: did,
  }),
};

/** Devices' functions 0..127 use the lower context table of their bus, 128..255 the upper one. */
const DEVFNS_PER_CONTEXT_TABLE = 128;
const SCALABLE_CONTEXT_BYTES = SCALABLE_CONTEXT_ENTRY.sizeBits / 8;
const PASID_DIRECTORY_ENTRY_BYTES = PASID_DIRECTORY_ENTRY.sizeBits / 8;
const PASID_ENTRY_BYTES = SCALABLE_PASID_ENTRY.sizeBits / 8;
/** A PASID table is one page of 64 entries: the directory index is PASID >> 6. */
const PASIDS_PER_TABLE = PAGE_BYTES / PASID_ENTRY_BYTES;

/**
 * Scalable-mode structures: a root table whose entries hold a lower and an upper context table, 256-bit context
 * entries with a PASID directory (PDTS 0: 128 entries, PASIDs below 8192), PASID tables on demand and 512-bit PASID
 * entries, written as a driver writes them (present last).
 */
export class ScalableTables {
  readonly root: Promise<number>;
  private readonly directories = new Map<number, number>();
  private readonly pasidTables = new Map<string, number>();

  constructor(
    private readonly cpu: GuestCpu,
    private readonly pages: PageAllocator,
  ) {
    this.root = pages.page();
  }

  /**
   * Gives `sid` a context entry with a PASID directory; its requests without PASID use `ridPasid`'s entry, and
   * requests with a PASID are allowed when `pasidEnabled` (PASIDE).
   */
  async addDevice(sid: number, options: { ridPasid?: number; pasidEnabled?: boolean } = {}): Promise<void> {
    const { ridPasid = 0, pasidEnabled = false } = options;
    const rootEntry = (await this.root) + (sid >> 8) * 16;
    const upper = (sid & 0xff) >= DEVFNS_PER_CONTEXT_TABLE;
    const current = await readStructure(this.cpu, rootEntry, SCALABLE_ROOT_ENTRY);
    let contextTable = Number(upper ? current.UCTP : current.LCTP) * PAGE_BYTES;
    if (contextTable === 0) {
      contextTable = await this.pages.page();
      await writeStructure(this.cpu, rootEntry, SCALABLE_ROOT_ENTRY, {
        ...current,
        ...(upper ? { UP: 1, UCTP: contextTable / PAGE_BYTES } : { LP: 1, LCTP: contextTable / PAGE_BYTES }),
      });
    }
    const directory = await this.pages.page();
    this.directories.set(sid, directory);
    await writeStructure(this.cpu, contextTable + ((sid & 0xff) % DEVFNS_PER_CONTEXT_TABLE) * SCALABLE_CONTEXT_BYTES, SCALABLE_CONTEXT_ENTRY, {
      P: 1,
      PASIDE: pasidEnabled ? 1 : 0,
      PDTS: 0,
      PASIDDIRPTR: directory / PAGE_BYTES,
      RID_PASID: ridPasid,
    });
  }

  /** Writes `pasid`'s entry for `sid` (see PASID_ENTRY), with its PASID table and directory entry on first use. */
  async setPasidEntry(sid: number, pasid: number, values: Values): Promise<void> {
    const directory = this.directories.get(sid);
    if (directory === undefined) throw driverError(`no PASID directory for SID 0x${sid.toString(16)}; addDevice first`);
    const index = Math.floor(pasid / PASIDS_PER_TABLE);
    const key = `${sid}/${index}`;
    let table = this.pasidTables.get(key);
    if (table === undefined) {
      table = await this.pages.page();
      this.pasidTables.set(key, table);
      await writeStructure(this.cpu, directory + index * PASID_DIRECTORY_ENTRY_BYTES, PASID_DIRECTORY_ENTRY, { P: 1, PTP: table / PAGE_BYTES });
    }
    await writeStructure(this.cpu, table + (pasid % PASIDS_PER_TABLE) * PASID_ENTRY_BYTES, SCALABLE_PASID_ENTRY, { ...values, P: 1 });
  }

  /** Clears `pasid`'s entry for `sid` as Linux tears one down: the qword holding P first, then the rest. */
  async clearPasidEntry(sid: number, pasid: number): Promise<void> {
    const table = this.pasidTables.get(`${sid}/${Math.floor(pasid / PASIDS_PER_TABLE)}`);
    if (table === undefined) throw driverError(`no PASID table holds PASID ${pasid} of SID 0x${sid.toString(16)}; setPasidEntry first`);
    const entry = table + (pasid % PASIDS_PER_TABLE) * PASID_ENTRY_BYTES;
    for (let q = 0; q < PASID_ENTRY_BYTES / 8; q++) await this.cpu.writeMemory64(BigInt(entry + q * 8), 0n);
  }
}
