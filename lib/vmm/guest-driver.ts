/**
 * Guest-driver programming sequences played through a machine's CPU accesses (ports and memory, as a qtest script
 * or a guest kernel makes them): PCI set-up, the edu DMA engine, and the VT-d unit's registers, queue and legacy tables.
 */
import { EDU_DMA_COMMAND, EDU_REGISTERS } from '../devices/edu';
import { CAPABILITY_HEADER, MSI_CONTROL, msiStructureFor, PCI_CAPABILITY_IDS, PCI_COMMAND, TYPE0_HEADER } from '../devices/pci-layout';
import { decodeBig, encodeBig, getFieldBig } from '../vtd/bitfield';
import { GCMD, GSTS, OFFSET } from '../vtd/register-bits';
import { CAP_FIELDS, FRCD_HI_FIELDS, FRCD_LO_FIELDS, IQA_FIELDS } from '../vtd/registers';
import {
  CONTEXT_CACHE_INVALIDATE, INVALIDATION_DESCRIPTORS, INVALIDATION_WAIT, IOTLB_INVALIDATE, LEGACY_CONTEXT_ENTRY, LEGACY_ROOT_ENTRY,
  SECOND_STAGE_4K_LEAF, SECOND_STAGE_TABLE_ENTRY, SECOND_STAGE_TOP_ENTRY,
} from '../vtd/structures';
import { CONFIG_ADDRESS_PORT, CONFIG_DATA_PORT } from './pci';
import type { QtestMachine } from './qtest/machine';
import { ViommuError } from '../errors';

/** The CPU accesses a guest driver makes. */
export type GuestCpu = Pick<QtestMachine, 'readPort' | 'writePort' | 'readMemory' | 'writeMemory' | 'readMemory64' | 'writeMemory64' | 'readBytes' | 'writeBytes'>;

export const PAGE_SIZE = 4096;
const CONFIG_ENABLE = 0x80000000;
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

  constructor(private readonly cpu: GuestCpu, start: number) {
    this.next = start;
  }

  async page(): Promise<number> {
    const address = this.next;
    this.next += PAGE_SIZE;
    await this.cpu.writeBytes(BigInt(address), new Uint8Array(PAGE_SIZE));
    return address;
  }
}

/** Configuration mechanism #1 and what a driver's probe routine does with it. */
export class GuestPci {
  constructor(private readonly cpu: GuestCpu) {}

  private async select(devfn: number, offset: number): Promise<void> {
    await this.cpu.writePort(CONFIG_ADDRESS_PORT, 4, (CONFIG_ENABLE | (devfn << 8) | (offset & 0xfc)) >>> 0);
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
  constructor(private readonly cpu: GuestCpu, private readonly bar: number) {}

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
}

/** The VT-d unit's register interface: commands with status polling, the invalidation queue, fault records. */
export class VtdDriver {
  private queueBase = 0;
  private queueTail = 0;
  private queueEntries = 0;
  private statusPage = 0;
  private waitCount = 0;

  constructor(private readonly cpu: GuestCpu, private readonly base: number, private readonly pages: PageAllocator) {}

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

  async setRootTable(rootTable: number): Promise<void> {
    await this.write64(OFFSET.RTADDR, BigInt(rootTable));
    await this.command(GCMD.SRTP, GSTS.RTPS);
  }

  /** A one-page queue (256 descriptors of 128 bits) and a status page for wait descriptors, then QIE. */
  async enableQueue(): Promise<void> {
    this.queueBase = await this.pages.page();
    this.statusPage = await this.pages.page();
    this.queueEntries = PAGE_SIZE / 16;
    this.queueTail = 0;
    await this.write64(OFFSET.IQA, encodeBig(IQA_FIELDS, { IQA: this.queueBase / PAGE_SIZE, QS: 0, DW: 0 }));
    await this.write64(OFFSET.IQT, 0n);
    await this.command(GCMD.QIE, GSTS.QIES);
  }

  async enableTranslation(): Promise<void> {
    await this.command(GCMD.TE, GSTS.TES);
  }

  /** Submits `descriptors` and a wait descriptor with a status write, and polls the status as drivers do. */
  async invalidate(descriptors: readonly bigint[]): Promise<void> {
    const token = ++this.waitCount;
    const wait = encodeBig(INVALIDATION_WAIT, { TYPE_LO: descriptorType('wait'), SW: 1, SDATA: token, SADDR: this.statusPage / 4 });
    for (const descriptor of [...descriptors, wait]) {
      const at = this.queueBase + this.queueTail * 16;
      await this.cpu.writeMemory64(BigInt(at), BigInt.asUintN(64, descriptor));
      await this.cpu.writeMemory64(BigInt(at + 8), descriptor >> 64n);
      this.queueTail = (this.queueTail + 1) % this.queueEntries;
    }
    await this.write64(OFFSET.IQT, BigInt(this.queueTail * 16));
    for (let polls = 0; (await this.cpu.readMemory(BigInt(this.statusPage), 4)) !== token; polls++) {
      if (polls > POLL_LIMIT) throw driverError(`the invalidation wait descriptor ${token} never completed (FSTS 0x${(await this.read32(OFFSET.FSTS)).toString(16)})`);
      await pause(0);
    }
  }

  /** FSTS and every fault record with F set. */
  async faults(): Promise<{ fsts: number; records: GuestFaultRecord[] }> {
    const cap = await this.read64(0x08);
    const first = Number(getFieldBig(cap, CAP_FIELDS.f.FRO)) * 16;
    const count = Number(getFieldBig(cap, CAP_FIELDS.f.NFR)) + 1;
    const records: GuestFaultRecord[] = [];
    for (let index = 0; index < count; index++) {
      const lo = await this.read64(first + index * 16);
      const hi = await this.read64(first + index * 16 + 8);
      if ((hi >> 63n) === 0n) continue;
      const fields = decodeBig(FRCD_HI_FIELDS, hi);
      records.push({
        index, sid: Number(fields.SID), reason: Number(fields.FR), write: fields.T === 0n,
        address: decodeBig(FRCD_LO_FIELDS, lo).FI << 12n,
      });
    }
    return { fsts: await this.read32(OFFSET.FSTS), records };
  }

  /** Clears every recorded fault (F is write-1-to-clear in each record's top dword) and FSTS's overflow. */
  async clearFaults(records: readonly GuestFaultRecord[]): Promise<void> {
    const cap = await this.read64(0x08);
    const first = Number(getFieldBig(cap, CAP_FIELDS.f.FRO)) * 16;
    for (const record of records) await this.write32(first + record.index * 16 + 12, 0x80000000);
    await this.write32(OFFSET.FSTS, await this.read32(OFFSET.FSTS));
  }
}

function descriptorType(name: string): number {
  const kind = INVALIDATION_DESCRIPTORS.find((candidate) => candidate.name === name);
  if (kind === undefined) throw driverError(`no invalidation descriptor named ${name}`);
  return kind.type;
}

/** The legacy-mode descriptors a driver queues. */
export const LEGACY_INVALIDATIONS = {
  contextGlobal: (): bigint => encodeBig(CONTEXT_CACHE_INVALIDATE, { TYPE_LO: descriptorType('context-cache'), G: 1 }),
  iotlbGlobal: (): bigint => encodeBig(IOTLB_INVALIDATE, { TYPE_LO: descriptorType('IOTLB'), G: 1 }),
  iotlbPage: (did: number, iova: number, am = 0): bigint => encodeBig(IOTLB_INVALIDATE, { TYPE_LO: descriptorType('IOTLB'), G: 3, DID: did, ADDR: iova / PAGE_SIZE, AM: am }),
};

export interface PageAccess {
  readonly read: boolean;
  readonly write: boolean;
}

/**
 * Legacy-mode translation structures: a root table, context tables on demand, and one second-stage domain per
 * device with `levels` levels (4 by default, AW = 2), built as a driver builds them (entries filled, present last).
 */
export class LegacyTables {
  readonly root: Promise<number>;
  private readonly domains = new Map<number, { did: number; top: number; levels: number }>();

  constructor(private readonly cpu: GuestCpu, private readonly pages: PageAllocator) {
    this.root = pages.page();
  }

  private async write128(address: number, value: bigint): Promise<void> {
    await this.cpu.writeMemory64(BigInt(address + 8), value >> 64n);
    await this.cpu.writeMemory64(BigInt(address), BigInt.asUintN(64, value));
  }

  /** Gives `sid` its own domain `did` with an empty `levels`-level table. */
  async addDevice(sid: number, did: number, levels = 4): Promise<void> {
    const root = await this.root;
    const rootEntry = root + (sid >> 8) * 16;
    let contextTable = Number((await this.cpu.readMemory64(BigInt(rootEntry))) >> 12n) * PAGE_SIZE;
    if (contextTable === 0) {
      contextTable = await this.pages.page();
      await this.write128(rootEntry, encodeBig(LEGACY_ROOT_ENTRY, { P: 1, CTP: contextTable / PAGE_SIZE }));
    }
    const top = await this.pages.page();
    await this.write128(contextTable + (sid & 0xff) * 16, encodeBig(LEGACY_CONTEXT_ENTRY, { P: 1, TT: 0, SLPTPTR: top / PAGE_SIZE, AW: levels - 2, DID: did }));
    this.domains.set(sid, { did, top, levels });
  }

  /** Address of the leaf entry for `iova`, creating intermediate tables. */
  private async leafEntry(sid: number, iova: number): Promise<number> {
    const domain = this.domains.get(sid);
    if (domain === undefined) throw driverError(`no domain for SID 0x${sid.toString(16)}; addDevice first`);
    let table = domain.top;
    for (let level = domain.levels; level > 1; level--) {
      const entry = table + (Math.floor(iova / 2 ** (12 + 9 * (level - 1))) % 512) * 8;
      let next = Number((await this.cpu.readMemory64(BigInt(entry))) >> 12n) * PAGE_SIZE;
      if (next === 0) {
        next = await this.pages.page();
        const layout = level === domain.levels ? SECOND_STAGE_TOP_ENTRY : SECOND_STAGE_TABLE_ENTRY;
        await this.cpu.writeMemory64(BigInt(entry), encodeBig(layout, { R: 1, W: 1, ADDR: next / PAGE_SIZE }));
      }
      table = next;
    }
    return table + (Math.floor(iova / PAGE_SIZE) % 512) * 8;
  }

  /** Maps `pages` 4 KiB pages from `iova` to `gpa` with `access`. */
  async map(sid: number, iova: number, gpa: number, pages: number, access: PageAccess): Promise<void> {
    for (let i = 0; i < pages; i++) {
      const entry = await this.leafEntry(sid, iova + i * PAGE_SIZE);
      await this.cpu.writeMemory64(BigInt(entry), encodeBig(SECOND_STAGE_4K_LEAF, { R: access.read ? 1 : 0, W: access.write ? 1 : 0, ADDR: gpa / PAGE_SIZE + i }));
    }
  }

  async unmap(sid: number, iova: number, pages: number): Promise<void> {
    for (let i = 0; i < pages; i++) await this.cpu.writeMemory64(BigInt(await this.leafEntry(sid, iova + i * PAGE_SIZE)), 0n);
  }

  domainId(sid: number): number {
    const domain = this.domains.get(sid);
    if (domain === undefined) throw driverError(`no domain for SID 0x${sid.toString(16)}`);
    return domain.did;
  }
}
