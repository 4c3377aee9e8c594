/** Differential harness: a recording guest over a qtest peer, played into QEMU 7.2 and into `viommu qtest`, and compared. */
import { strict as assert } from 'node:assert';
import { encodeBig } from '../../lib/vtd/bitfield';
import { quirkChangesObservation, quirkRegisterMask, quirksFor, type ObservationKind, type QuirkId } from '../../lib/vtd/compat-quirks';
import { vtdConfigFromString } from '../../lib/vtd/config';
import { FSTS } from '../../lib/vtd/register-bits';
import { findRegister, type RegisterName } from '../../lib/vtd/registers';
import {
  CONTEXT_CACHE_INVALIDATE,
  INTERRUPT_ENTRY_CACHE_INVALIDATE,
  INVALIDATION_WAIT,
  IOTLB_INVALIDATE,
  LEGACY_CONTEXT_ENTRY,
  LEGACY_ROOT_ENTRY,
  SECOND_STAGE_1G_LEAF,
  SECOND_STAGE_2M_LEAF,
  SECOND_STAGE_4K_LEAF,
  SECOND_STAGE_TABLE_ENTRY,
} from '../../lib/vtd/structures';
import { EDU_BUFFER_ADDRESS, EDU_BUFFER_SIZE, EDU_DMA_COMMAND, EDU_REGISTERS } from '../../lib/devices/edu';
import type { QtestPeer } from '../../lib/vmm/qtest/client';
import { QemuQtest, ViommuQtest, qemuAvailability, type QemuQtestOptions } from './qemu';
import { qemu10Availability, startQemu10 } from './qemu10';

export const DMAR = 0xfed90000;
export const EDU_BAR = 0xfe000000;
export const EDU_SLOT = 4;
/** 00:04.0 */
export const EDU_SID = EDU_SLOT << 3;

/** BAR0 of the edu device in `slot`: 0xfe000000 for slot 4, 1 MiB windows below it for the others. */
export function eduBar(slot: number): number {
  return slot === EDU_SLOT ? EDU_BAR : EDU_BAR - (slot + 1) * 0x100000;
}

export const PAGE = 4096;
export const EDU_BUFFER = EDU_BUFFER_ADDRESS;
/** QEMU 7.2 aborts on a transfer that reaches the end of the buffer: keep every transfer below it. */
export const EDU_MAX_COUNT = EDU_BUFFER_SIZE - 1;

const EDU_RUN = BigInt(EDU_DMA_COMMAND.RUN);
const EDU_TO_RAM = BigInt(EDU_DMA_COMMAND.TO_RAM);
const PCI_CONFIG_ADDRESS = 0xcf8;
const PCI_CONFIG_DATA = 0xcfc;

export type Observed = bigint | number | string | Uint8Array;

export interface Observation {
  readonly label: string;
  readonly value: string;
  /** QEMU 7.2 quirks that may make this value differ from QEMU when the unit follows the spec. */
  readonly quirks: readonly QuirkId[];
  /** What was observed: a register value (then `register` and `bits`), memory bytes, MSIs, or anything else. */
  readonly kind: ObservationKind | 'register' | 'value';
  /** The register read (a name of lib/vtd/registers.ts), for kind 'register'. */
  readonly register?: string;
  /** The register value as compared bit by bit (a fault record whose F is clear counts as 0). */
  readonly bits?: bigint;
}

function hexHead(bytes: Uint8Array): string {
  const text = Buffer.from(bytes).toString('hex');
  return text.length > 48 ? `${text.slice(0, 48)}...` : text;
}

function render(value: Observed): string {
  if (typeof value === 'string') return value;
  if (value instanceof Uint8Array) return Buffer.from(value).toString('hex');
  return `0x${value.toString(16)}`;
}

function register(name: RegisterName): { offset: number; width: 32 | 64 } {
  const spec = findRegister(name);
  return { offset: spec.offset, width: spec.width };
}

const QEMU_MSI_PATTERNS = [
  /vtd_irq_generate addr (0x[0-9a-f]+) data (0x[0-9a-f]+)/,
  /vtd_ir_remap_msi \(addr 0x[0-9a-f]+, data 0x[0-9a-f]+\) -> \(addr (0x[0-9a-f]+), data (0x[0-9a-f]+)\)/,
];
const VIOMMU_MSI_PATTERN = /^interrupt address (0x[0-9a-f]+) data (0x[0-9a-f]+)$/;
/** A last guard after the synchronising round trip below (trace lines and answers travel on different pipes). */
const TRACE_SETTLE_MS = 5;

/**
 * The MSIs a peer delivered toward the CPUs, from its stderr: QEMU's vtd_irq_generate and vtd_ir_remap_msi trace
 * events, or `viommu qtest --trace-interrupts` lines. qtest itself cannot see an MSI (it reaches the LAPIC).
 */
export class InterruptLog {
  private readonly messages: string[] = [];
  private partial = '';
  private cursor = 0;

  constructor(stream: NodeJS.ReadableStream) {
    stream.on('data', (chunk: Buffer) => {
      const lines = (this.partial + chunk.toString('utf8')).split('\n');
      this.partial = lines.pop() ?? '';
      for (const line of lines) {
        for (const pattern of [...QEMU_MSI_PATTERNS, VIOMMU_MSI_PATTERN]) {
          const match = pattern.exec(line.trim());
          if (match) this.messages.push(`${BigInt(match[1]!).toString(16)}/${BigInt(match[2]!).toString(16)}`);
        }
      }
    });
  }

  /**
   * Messages since the last call (address/data in hex). Both peers write a trace line to stderr before they answer
   * the command that caused it; `sync` makes one more round trip, and by the time its answer is read the event loop
   * has polled the stderr pipe with those lines already in it.
   */
  /** How many messages have arrived so far, after the same synchronising round trip as `take`; takes none. */
  async count(sync: () => Promise<unknown>): Promise<number> {
    await sync();
    await new Promise((resolve) => setTimeout(resolve, TRACE_SETTLE_MS));
    return this.messages.length;
  }

  async take(sync?: () => Promise<unknown>): Promise<string[]> {
    if (sync !== undefined) await sync();
    await new Promise((resolve) => setTimeout(resolve, TRACE_SETTLE_MS));
    const taken = this.messages.slice(this.cursor);
    this.cursor = this.messages.length;
    return taken;
  }
}

// ---- what a DMA must be seen to do ----

/**
 * What one edu transfer must be seen to do on its own peer. The harness checks it absolutely, on QEMU as on
 * viommu, beside comparing the peers: two peers on which no DMA happens at all agree with each other perfectly.
 */
export type DmaOutcome =
  /** The bytes moved: see `outcome.moved`. */
  | { readonly kind: 'moved'; readonly gpa?: number; readonly bytes?: Uint8Array }
  /** A new fault record (FSTS.PPF 0 -> 1). */
  | { readonly kind: 'fault'; readonly untouched?: number }
  /** The fault found the record full (FSTS.PFO 0 -> 1). */
  | { readonly kind: 'overflow'; readonly untouched?: number }
  /** A write to the interrupt range that went out as an MSI, with no fault recorded. */
  | { readonly kind: 'interrupt' }
  /** Blocked or dropped without any record, for the reason given. */
  | { readonly kind: 'unrecorded'; readonly why: string; readonly untouched?: number }
  /** One outcome where the peer has the quirk (QEMU 7.2, compat=qemu-7.2), another where it does not. */
  | { readonly kind: 'quirk'; readonly quirk: QuirkId; readonly withQuirk: DmaOutcome; readonly withoutQuirk: DmaOutcome };

export const outcome = {
  /**
   * The data moved. to-ram: the harness first overwrites `gpa` with other bytes, then reads it back after the
   * transfer and compares it with what the device buffer must hold there (known from earlier transfers).
   * to-device: the bytes at `gpa` (read before the transfer) are what the buffer now holds; a later to-ram
   * transfer that expects `moved` checks them, and every such load must be checked so before the scenario ends.
   */
  moved: (gpa: number): DmaOutcome => ({ kind: 'moved', gpa }),
  /** to-device from a source that is not RAM: the buffer now holds `bytes`. */
  movedBytes: (bytes: Uint8Array): DmaOutcome => ({ kind: 'moved', bytes }),
  /** A new fault record; with `untouched`, the RAM at that address keeps its bytes too (to-ram). */
  fault: (untouched?: number): DmaOutcome => (untouched === undefined ? { kind: 'fault' } : { kind: 'fault', untouched }),
  /** A fault while the record is full: FSTS.PFO sets. */
  overflow: (untouched?: number): DmaOutcome => (untouched === undefined ? { kind: 'overflow' } : { kind: 'overflow', untouched }),
  /** An interrupt request: an MSI goes out, no fault is recorded. */
  interrupt: { kind: 'interrupt' } as DmaOutcome,
  /** Blocked without a record (FPD, compression, a quirk...): FSTS shows nothing new; `untouched` as for fault. */
  unrecorded: (why: string, untouched?: number): DmaOutcome =>
    untouched === undefined ? { kind: 'unrecorded', why } : { kind: 'unrecorded', why, untouched },
  /** `withQuirk` on a peer that has `quirk` (QEMU 7.2 has every qemu-7.2 quirk), else `withoutQuirk`. */
  byQuirk: (quirk: QuirkId, withQuirk: DmaOutcome, withoutQuirk: DmaOutcome): DmaOutcome => ({ kind: 'quirk', quirk, withQuirk, withoutQuirk }),
};

/** A DMA did not do on one peer what the scenario says it must (an absolute check, not a comparison). */
export class DmaCheckError extends Error {
  override readonly name = 'DmaCheckError';
}

const FSTS_PPF = BigInt(FSTS.PPF);
const FSTS_PFO = BigInt(FSTS.PFO);
/** The buffer model's mark for a byte whose value nothing tells (after a failed read, or before any load). */
const UNKNOWN = -1;

/**
 * The harness's picture of one edu device's buffer: what each byte must hold, and which load put it there. A load
 * (a to-device transfer expected to move data) counts as checked once a to-ram transfer has written out at least
 * one byte it put there and that byte arrived.
 */
class BufferModel {
  readonly bytes = new Int16Array(EDU_BUFFER_SIZE).fill(UNKNOWN);
  /** Per byte, the load that put it there (0: none). */
  private readonly origin = new Int32Array(EDU_BUFFER_SIZE);
  /** Loads by id: what they were, and whether a check has seen them. */
  private readonly loads = new Map<number, { what: string; checked: boolean }>();

  expected(offset: number, count: number): Uint8Array | undefined {
    const out = new Uint8Array(count);
    for (let i = 0; i < count; i++) {
      const value = this.bytes[offset + i]!;
      if (value === UNKNOWN) return undefined;
      out[i] = value;
    }
    return out;
  }

  /** A load moved `data` to `offset`, or (undefined) a transfer left the bytes there unknown. */
  loaded(offset: number, count: number, data: Uint8Array | undefined, what: string): void {
    const id = data === undefined ? 0 : this.loads.size + 1;
    if (data !== undefined) this.loads.set(id, { what, checked: false });
    for (let i = 0; i < count; i++) {
      this.bytes[offset + i] = data === undefined ? UNKNOWN : data[i]!;
      this.origin[offset + i] = id;
    }
  }

  /** The bytes at `offset` were written out and arrived: the loads that put them there are checked. */
  checked(offset: number, count: number): void {
    for (let i = 0; i < count; i++) {
      const load = this.loads.get(this.origin[offset + i]!);
      if (load !== undefined) load.checked = true;
    }
  }

  unchecked(): string[] {
    return [...this.loads.values()].filter((load) => !load.checked).map((load) => load.what);
  }
}

/** A guest that drives one qtest peer and writes down every value it reads, in order. */
export class OracleGuest {
  readonly observations: Observation[] = [];
  /** Guest memory written through this guest (qword granular), so table builders need not read back. */
  private readonly shadow = new Map<number, bigint>();
  private nextPage: number;
  private readonly buffers = new Map<number, BufferModel>();

  constructor(
    readonly peer: QtestPeer,
    private readonly interruptLog?: InterruptLog,
    /** Where table pages are allocated from (a bump allocator). */
    firstTablePage = 0x100000,
    /** The quirks this peer has (QEMU 7.2: all of compat=qemu-7.2's), which decide `outcome.byQuirk`. */
    readonly quirks: ReadonlySet<QuirkId> = quirksFor({ compat: 'qemu-7.2' }),
  ) {
    this.nextPage = firstTablePage;
  }

  /** Notes the MSIs delivered since the last call (fault events, completion events, remapped interrupts). */
  async observeInterrupts(label: string, quirks: readonly QuirkId[] = []): Promise<string[]> {
    if (this.interruptLog === undefined) throw new Error('this guest was made without an interrupt log');
    const messages = await this.interruptLog.take(() => this.peer.readb(0));
    this.note(label, messages.length === 0 ? 'none' : messages.join(' '), quirks, 'interrupts');
    return messages;
  }

  /** Notes a value; bytes count as memory data unless `kind` says otherwise. */
  note(label: string, value: Observed, quirks: readonly QuirkId[] = [], kind?: ObservationKind | 'value'): void {
    this.observations.push({ label, value: render(value), quirks, kind: kind ?? (value instanceof Uint8Array ? 'data' : 'value') });
  }

  /**
   * Notes a register value (read by the caller), compared bit by bit: in spec mode a tagged quirk excuses only the
   * bits of the fields it changes. `shown` replaces the hex rendering (e.g. 'F clear').
   */
  noteRegister(label: string, register: string, value: bigint, quirks: readonly QuirkId[] = [], shown?: string): void {
    this.observations.push({ label, value: shown ?? render(value), quirks, kind: 'register', register, bits: value });
  }

  // ---- DMAR registers, by the names of lib/vtd/registers.ts ----

  async reg(name: RegisterName): Promise<bigint> {
    const { offset, width } = register(name);
    return width === 32 ? BigInt(await this.peer.readl(DMAR + offset)) : this.peer.readq(DMAR + offset);
  }

  /** Reads a register and records it under `label` (default: its name). */
  async observe(name: RegisterName, label: string = name, quirks: readonly QuirkId[] = []): Promise<bigint> {
    const value = await this.reg(name);
    this.noteRegister(label, name, value, quirks);
    return value;
  }

  async setReg(name: RegisterName, value: bigint | number): Promise<void> {
    const { offset, width } = register(name);
    if (width === 32) await this.peer.writel(DMAR + offset, Number(BigInt.asUintN(32, BigInt(value))));
    else await this.peer.writeq(DMAR + offset, BigInt(value));
  }

  async gcmd(value: number): Promise<void> {
    await this.setReg('GCMD', value >>> 0);
  }

  /** Fault-recording register n (lo, hi). */
  async frcd(index = 0): Promise<[bigint, bigint]> {
    const offset = register('FRCD0_LO').offset + 16 * index;
    return [await this.peer.readq(DMAR + offset), await this.peer.readq(DMAR + offset + 8)];
  }

  // ---- guest memory ----

  allocPage(count = 1): number {
    const page = this.nextPage;
    this.nextPage += count * PAGE;
    return page;
  }

  async writeq(address: number, value: bigint): Promise<void> {
    this.shadow.set(address, BigInt.asUintN(64, value));
    await this.peer.writeq(address, BigInt.asUintN(64, value));
  }

  async write128(address: number, value: bigint): Promise<void> {
    await this.writeq(address, BigInt.asUintN(64, value));
    await this.writeq(address + 8, value >> 64n);
  }

  /** The last value this guest wrote at `address` (0 if none). */
  shadowed(address: number): bigint {
    return this.shadow.get(address) ?? 0n;
  }

  async fill(address: number, length: number, seed: number): Promise<void> {
    const data = Buffer.alloc(length);
    for (let i = 0; i < length; i++) data[i] = (seed * 31 + i * 7 + (i >> 8) + (i >> 12) * 11) & 0xff;
    await this.peer.writeBytes(address, data);
  }

  // ---- the edu device ----

  /** BAR0, memory decoding and bus mastering for the edu device in `slot` (4 unless the run added more). */
  async enableEdu(slot = EDU_SLOT): Promise<void> {
    const devfn = slot << 3;
    await this.peer.outl(PCI_CONFIG_ADDRESS, 0x80000000 | (devfn << 8) | 0x10);
    await this.peer.outl(PCI_CONFIG_DATA, eduBar(slot));
    await this.peer.outl(PCI_CONFIG_ADDRESS, 0x80000000 | (devfn << 8) | 0x04);
    await this.peer.outw(PCI_CONFIG_DATA, 0x6);
  }

  /**
   * One edu transfer between RAM (through the IOMMU, at `iova`) and its buffer at `bufferOffset`, waited for, and
   * then checked against `expected` on this peer alone (DmaCheckError when it did something else).
   * QEMU runs it from a 100 ms timer; viommu at once.
   */
  async dma(
    direction: 'to-device' | 'to-ram',
    iova: bigint | number,
    count: number,
    expected: DmaOutcome,
    bufferOffset = 0,
    slot = EDU_SLOT,
  ): Promise<void> {
    if (count < 1 || bufferOffset + count > EDU_MAX_COUNT) throw new RangeError(`edu transfer of ${count} at buffer +${bufferOffset}`);
    const want = this.resolve(expected);
    const toRam = direction === 'to-ram';
    const what = `${direction} DMA of ${count} bytes at IOVA 0x${iova.toString(16)} (edu ${slot}, buffer +0x${bufferOffset.toString(16)})`;
    const fail = (message: string): never => {
      throw new DmaCheckError(`${this.peer.name}: ${what}: ${message}`);
    };
    const buffer = this.buffer(slot);
    if (want.kind === 'moved' && want.gpa === undefined && (toRam || want.bytes === undefined))
      fail('outcome.moved needs the guest-physical address');

    // Before: the fault status, the MSIs so far, and what a to-ram transfer must (or must not) change.
    const fstsBefore = await this.reg('FSTS');
    const messagesBefore = want.kind === 'interrupt' ? await this.interruptCount() : 0;
    let arriving: { at: number; bytes: Uint8Array } | undefined;
    let loading: Uint8Array | undefined;
    if (want.kind === 'moved' && toRam) {
      const bytes =
        buffer.expected(bufferOffset, count) ??
        fail('what the buffer holds there is not known: load it with a to-device transfer expecting outcome.moved first');
      arriving = { at: want.gpa!, bytes };
      // Whatever was there, the check must be able to tell that the transfer wrote it.
      await this.peer.writeBytes(
        arriving.at,
        Uint8Array.from(bytes, (byte) => byte ^ 0xff),
      );
    } else if (want.kind === 'moved') {
      loading = want.bytes ?? (await this.peer.readBytes(want.gpa!, count));
      if (loading.length !== count) fail(`outcome.movedBytes has ${loading.length} bytes`);
    }
    const untouchedAt = 'untouched' in want ? want.untouched : undefined;
    const untouchedBefore = untouchedAt === undefined ? undefined : await this.peer.readBytes(untouchedAt, count);

    await this.runEdu(direction, iova, count, bufferOffset, slot, fail);

    // After: the absolute facts.
    const fsts = await this.reg('FSTS');
    const newRecord = (fsts & FSTS_PPF) !== 0n && (fstsBefore & FSTS_PPF) === 0n;
    const newOverflow = (fsts & FSTS_PFO) !== 0n && (fstsBefore & FSTS_PFO) === 0n;
    const faultState = `FSTS 0x${fstsBefore.toString(16)} -> 0x${fsts.toString(16)}`;
    switch (want.kind) {
      case 'moved':
        if (newRecord || newOverflow) fail(`expected the data to move, but a fault was recorded (${faultState})`);
        break;
      case 'fault':
        if (!newRecord) fail(`expected a new fault record, but FSTS.PPF did not set (${faultState})`);
        break;
      case 'overflow':
        if (!newOverflow) fail(`expected a fault overflow, but FSTS.PFO did not set (${faultState})`);
        break;
      case 'interrupt': {
        if (newRecord || newOverflow) fail(`expected an interrupt, but a fault was recorded (${faultState})`);
        const messages = await this.interruptCount();
        if (messages <= messagesBefore) fail('expected an interrupt request, but no MSI went out');
        break;
      }
      case 'unrecorded':
        if (newRecord || newOverflow) fail(`expected no record (${want.why}), but one was made (${faultState})`);
        break;
    }
    if (arriving !== undefined) {
      const landed = await this.peer.readBytes(arriving.at, count);
      if (Buffer.compare(Buffer.from(landed), Buffer.from(arriving.bytes)) !== 0) {
        fail(`the data did not arrive at 0x${arriving.at.toString(16)}: ${hexHead(landed)} instead of ${hexHead(arriving.bytes)}`);
      }
      buffer.checked(bufferOffset, count);
    }
    if (untouchedBefore !== undefined) {
      const now = await this.peer.readBytes(untouchedAt!, count);
      if (Buffer.compare(Buffer.from(now), Buffer.from(untouchedBefore)) !== 0)
        fail(`the RAM at 0x${untouchedAt!.toString(16)} changed: ${hexHead(now)} (was ${hexHead(untouchedBefore)})`);
    }
    // A load that moved is what the buffer holds now (checked when written out); any other leaves it unknown.
    if (!toRam) buffer.loaded(bufferOffset, count, loading, what);
  }

  /** Programs one edu transfer and waits for the device to clear its run bit, checking that the device answers. */
  private async runEdu(
    direction: 'to-device' | 'to-ram',
    iova: bigint | number,
    count: number,
    bufferOffset: number,
    slot: number,
    fail: (message: string) => never,
  ): Promise<void> {
    const device = BigInt(EDU_BUFFER + bufferOffset);
    const toRam = direction === 'to-ram';
    const bar = eduBar(slot);
    await this.peer.writeq(bar + EDU_REGISTERS.dmaSource, toRam ? device : BigInt(iova));
    await this.peer.writeq(bar + EDU_REGISTERS.dmaDestination, toRam ? BigInt(iova) : device);
    await this.peer.writeq(bar + EDU_REGISTERS.dmaCount, BigInt(count));
    // A device whose BAR is not decoded reads 0 here, and its run bit reads 0 as if the transfer were done.
    const countBack = await this.peer.readq(bar + EDU_REGISTERS.dmaCount);
    if (countBack !== BigInt(count))
      fail(
        `the edu device at 0x${bar.toString(16)} does not answer (its DMA count reads back 0x${countBack.toString(16)}): is its BAR enabled (enableEdu)?`,
      );
    await this.peer.writeq(bar + EDU_REGISTERS.dmaCommand, EDU_RUN | (toRam ? EDU_TO_RAM : 0n));
    for (let attempt = 0; attempt < 200; attempt++) {
      if (((await this.peer.readq(bar + EDU_REGISTERS.dmaCommand)) & EDU_RUN) === 0n) return;
      await new Promise((resolve) => setTimeout(resolve, attempt === 0 ? 95 : 10));
    }
    fail('the edu DMA did not finish');
  }

  private resolve(expected: DmaOutcome): Exclude<DmaOutcome, { kind: 'quirk' }> {
    let current = expected;
    while (current.kind === 'quirk') current = this.quirks.has(current.quirk) ? current.withQuirk : current.withoutQuirk;
    return current;
  }

  private buffer(slot: number): BufferModel {
    let model = this.buffers.get(slot);
    if (model === undefined) {
      model = new BufferModel();
      this.buffers.set(slot, model);
    }
    return model;
  }

  /** MSIs delivered so far (after a round trip, so that the trace lines are in). */
  private async interruptCount(): Promise<number> {
    if (this.interruptLog === undefined) throw new Error('outcome.interrupt needs a guest made with an interrupt log');
    return this.interruptLog.count(() => this.peer.readb(0));
  }

  /**
   * Ends the scenario: fails when a to-device load that was expected to move data never had any of its bytes
   * written out and compared, since nothing then shows that it moved anything.
   */
  finish(): void {
    const unchecked = [...this.buffers.values()].flatMap((model) => model.unchecked());
    if (unchecked.length > 0) {
      throw new DmaCheckError(
        `${this.peer.name}: nothing wrote out (a to-ram transfer expecting outcome.moved) what these loads moved, so nothing shows they moved it: ${unchecked.join('; ')}`,
      );
    }
  }

  // ---- legacy-mode translation structures ----

  /** Root entry for `bus` pointing at a context table (allocated on first use); returns the table. */
  async contextTable(root: number, bus: number): Promise<number> {
    const entry = root + bus * 16;
    const existing = Number(this.shadowed(entry) >> 12n) * PAGE;
    if (existing !== 0) return existing;
    const table = this.allocPage();
    await this.write128(entry, encodeBig(LEGACY_ROOT_ENTRY, { P: 1, CTP: table / PAGE }));
    return table;
  }

  /** A context entry for `sid`; returns its second-stage table (allocated unless given). */
  async setContext(
    root: number,
    sid: number,
    options: { did?: number; aw?: number; tt?: number; fpd?: boolean; table?: number; raw?: bigint } = {},
  ): Promise<number> {
    const contexts = await this.contextTable(root, sid >> 8);
    const table = options.table ?? this.allocPage();
    const value =
      options.raw ??
      encodeBig(LEGACY_CONTEXT_ENTRY, {
        P: 1,
        FPD: options.fpd ? 1 : 0,
        TT: options.tt ?? 0,
        SLPTPTR: table / PAGE,
        AW: options.aw ?? 1,
        DID: options.did ?? 1,
      });
    await this.write128(contexts + (sid & 0xff) * 16, value);
    return table;
  }

  /**
   * Maps `iova` to `gpa` under the second-stage table `top` with `levels` levels, creating intermediate tables
   * (read-write). Returns the address of the leaf entry.
   */
  async map(
    top: number,
    levels: number,
    iova: number,
    gpa: number,
    options: { read?: boolean; write?: boolean; size?: '4k' | '2m' | '1g'; extra?: bigint } = {},
  ): Promise<number> {
    const leafLevel = options.size === '1g' ? 3 : options.size === '2m' ? 2 : 1;
    let table = top;
    for (let level = levels; level > leafLevel; level--) {
      const at = table + (Math.floor(iova / 2 ** (12 + 9 * (level - 1))) % 512) * 8;
      let next = Number((this.shadowed(at) >> 12n) & 0xffffffffffn) * PAGE;
      if (next === 0) {
        next = this.allocPage();
        await this.writeq(at, encodeBig(SECOND_STAGE_TABLE_ENTRY, { R: 1, W: 1, ADDR: next / PAGE }));
      }
      table = next;
    }
    const at = table + (Math.floor(iova / 2 ** (12 + 9 * (leafLevel - 1))) % 512) * 8;
    const r = (options.read ?? true) ? 1 : 0;
    const w = (options.write ?? true) ? 1 : 0;
    const leaf =
      leafLevel === 1
        ? encodeBig(SECOND_STAGE_4K_LEAF, { R: r, W: w, ADDR: gpa / PAGE })
        : leafLevel === 2
          ? encodeBig(SECOND_STAGE_2M_LEAF, { R: r, W: w, PS: 1, ADDR: gpa / 2 ** 21 })
          : encodeBig(SECOND_STAGE_1G_LEAF, { R: r, W: w, PS: 1, ADDR: gpa / 2 ** 30 });
    await this.writeq(at, leaf | (options.extra ?? 0n));
    return at;
  }

  /** RTADDR, SRTP, global context and IOTLB invalidation, TE: the legacy bring-up every driver does. */
  async enableTranslation(root: number): Promise<void> {
    await this.setReg('RTADDR', BigInt(root));
    await this.gcmd(0x40000000);
    await this.setReg('CCMD', 0xa000000000000000n);
    await this.setReg('IOTLB', 0x9000000000000000n);
    await this.gcmd(0x80000000);
  }

  /**
   * Reads FSTS and the first fault record, notes them, then clears F and the W1C status bits for the next step.
   * `quirks` tag all three values; FRCD hi is always tagged with QEMU 7.2's PV quirk too.
   */
  async observeFault(label: string, options: { quirks?: readonly QuirkId[]; keep?: boolean } = {}): Promise<bigint> {
    const quirks = options.quirks ?? [];
    const fsts = await this.observe('FSTS', `${label}: FSTS`, quirks);
    const [lo, hi] = await this.frcd(0);
    // A record is meaningful only while F is set; what a cleared one still holds depends on the history.
    const pending = hi >> 63n === 1n;
    this.noteRegister(`${label}: FRCD lo`, 'FRCD0_LO', pending ? lo : 0n, quirks, pending ? undefined : 'F clear');
    this.noteRegister(`${label}: FRCD hi`, 'FRCD0_HI', pending ? hi : 0n, ['frcd-pv-ffff-without-pasid', ...quirks], pending ? undefined : 'F clear');
    if (options.keep !== true) {
      if (hi >> 63n === 1n) await this.peer.writel(DMAR + register('FRCD0_HI').offset + 4, 0x80000000);
      if ((fsts & 0x71n) !== 0n) await this.setReg('FSTS', fsts & 0x71n);
    }
    return hi;
  }
}

// ---- running a scenario on both sides ----

export type Scenario = (guest: OracleGuest) => Promise<void>;

/** Which QEMU a differential run plays against; our unit runs with the compat value of the same name. */
export type Oracle = 'qemu-7.2' | 'qemu-10.0';

/**
 * The oracle of runs that name none: $VIOMMU_ORACLE (`qemu-10.0` plays every QEMU 7.2 scenario against QEMU 10.0
 * with compat=qemu-10.0, to measure which of its behaviours 10.0 kept), else QEMU 7.2.
 */
export function defaultOracle(): Oracle {
  const chosen = process.env.VIOMMU_ORACLE;
  if (chosen === undefined || chosen === '' || chosen === 'qemu-7.2') return 'qemu-7.2';
  if (chosen === 'qemu-10.0') return chosen;
  throw new Error(`VIOMMU_ORACLE=${chosen}: expected qemu-7.2 or qemu-10.0`);
}

/** `QEMU 7.2`, `QEMU 10.0`: how messages name an oracle. */
export function oracleName(oracle: Oracle): string {
  return `QEMU ${oracle.slice('qemu-'.length)}`;
}

export interface DifferentialOptions {
  /** intel-iommu properties, QEMU's spelling; given unchanged to QEMU. */
  props?: string;
  /**
   * The QEMU to compare with (default QEMU 7.2, the system's); 'qemu-10.0' is test/oracle/qemu10.ts's (call
   * skipWithoutQemu10 first). Our unit runs with compat=<oracle>.
   */
  oracle?: Oracle;
  /** Extra QEMU options (devices, machine). */
  qemu?: Omit<QemuQtestOptions, 'iommuProps'>;
  /** Also run our unit in its default (spec) mode, where differences are allowed only at values tagged with a quirk. */
  checkSpecMode?: boolean;
  /**
   * edu's DMA mask in bits on both sides (default 64, so that IOVAs above 2^28 reach the IOMMU unchanged; QEMU
   * prints a 'clamping' line on the qtest stream for a masked address, which the client cannot parse).
   */
  eduDmaMaskBits?: number;
  /** Further edu devices (slots on bus 0) on both sides, e.g. to fault from a second requester id. */
  extraEduSlots?: readonly number[];
}

export interface DifferentialRun {
  qemu: Observation[];
  /** Our unit with compat=<oracle> (qemu-7.2 unless the run says otherwise). */
  ours: Observation[];
  /** The QEMU played against (absent: QEMU 7.2). */
  oracle?: Oracle;
  /** The properties played, when they differ from the scenario's (a QEMU 7.2 scenario replayed on 10.0). */
  props?: string;
  /** Our unit with the default compat (the spec), when checkSpecMode. */
  spec?: Observation[];
  qemuStderr: string;
}

/** Skips the suite (with the reason printed) when QEMU cannot be started. Call in `before`. */
export function skipWithoutQemu(context: Mocha.Context): void {
  const availability = defaultOracle() === 'qemu-10.0' ? qemu10Availability() : qemuAvailability();
  if (!availability.available) {
    console.log(`      skipped: ${availability.reason}`);
    context.skip();
  }
}

/** The trace events that show the MSIs QEMU's unit delivers (on stderr, with Debian's log trace backend). */
const QEMU_TRACE_ARGS = ['-trace', 'enable=vtd_irq_generate', '-trace', 'enable=vtd_ir_remap_msi'];

function withCompat(props: string, compat: string): string {
  return props.length > 0 ? `${props},compat=${compat}` : `compat=${compat}`;
}

/**
 * The properties of the spec-mode peer. QEMU 10.0.2 reports QEMU 7.2's capability values for the same properties
 * (measured: no ESRTPS, PSS 0), except that aw-bits defaults to 48: against it the spec mode gets aw-bits=48
 * unless the properties name a width.
 */
function specProps(props: string, oracle: Oracle): string {
  if (oracle === 'qemu-7.2' || /(^|,)aw-bits=/.test(props)) return props;
  return props.length > 0 ? `${props},aw-bits=48` : 'aw-bits=48';
}

async function play(peer: QemuQtest | ViommuQtest, scenario: Scenario, quirks: ReadonlySet<QuirkId>): Promise<Observation[]> {
  const log = new InterruptLog(peer.child.stderr!);
  // Start-up MSIs (QEMU traces one from its own reset) are not the scenario's.
  await log.take();
  const guest = new OracleGuest(peer, log, undefined, quirks);
  try {
    await scenario(guest);
    guest.finish();
  } catch (error) {
    (error as Error).message +=
      `\n  (${peer.name}; observations so far: ${guest.observations.length}, last: ${JSON.stringify(guest.observations.at(-1), (_key, value: unknown) => (typeof value === 'bigint' ? `0x${value.toString(16)}` : value))})`;
    throw error;
  }
  return guest.observations;
}

/** Plays `scenario` into QEMU and into our unit (concurrently) and returns what each side read. */
export async function playBoth(scenario: Scenario, options: DifferentialOptions = {}): Promise<DifferentialRun> {
  const oracle = options.oracle ?? defaultOracle();
  // A QEMU 7.2 scenario replayed on QEMU 10.0 ($VIOMMU_ORACLE) keeps 7.2's default geometry: aw-bits=39.
  const replayed = options.oracle === undefined && oracle === 'qemu-10.0' && !/(^|,)aw-bits=/.test(options.props ?? '');
  const props = replayed ? [options.props, 'aw-bits=39'].filter((p) => p !== undefined && p !== '').join(',') : (options.props ?? '');
  const maskBits = options.eduDmaMaskBits ?? 64;
  const qemuMask = `0x${((1n << BigInt(maskBits)) - 1n).toString(16)}`;
  const slots = options.extraEduSlots ?? [];
  const extraArgs = ['--edu-dma-mask-bits', String(maskBits), '--trace-interrupts', ...(slots.length > 0 ? ['--extra-edu', slots.join(',')] : [])];
  const started: QtestPeer[] = [];
  try {
    const qemuOptions: QemuQtestOptions = {
      ...options.qemu,
      iommuProps: props,
      withoutEdu: true,
      devices: [
        `edu,addr=0x4,dma_mask=${qemuMask}`,
        ...slots.map((slot) => `edu,addr=0x${slot.toString(16)},dma_mask=${qemuMask}`),
        ...(options.qemu?.devices ?? []),
      ],
      extraArgs: [...QEMU_TRACE_ARGS, ...(options.qemu?.extraArgs ?? [])],
    };
    const qemu = oracle === 'qemu-10.0' ? await startQemu10(qemuOptions) : await QemuQtest.start(qemuOptions);
    started.push(qemu);
    const ours = await ViommuQtest.start({ iommuProps: withCompat(props, oracle), extraArgs });
    started.push(ours);
    const spec = options.checkSpecMode ? await ViommuQtest.start({ iommuProps: specProps(props, oracle), extraArgs }) : undefined;
    if (spec) started.push(spec);
    // QEMU 7.2 is what compat=qemu-7.2 imitates (10.0 compat=qemu-10.0): the outcomes a scenario expects follow the same quirks on both.
    const qemuQuirks = quirksFor(vtdConfigFromString(withCompat(props, oracle)));
    const specQuirks = quirksFor(vtdConfigFromString(specProps(props, oracle)));
    const [qemuSeen, oursSeen, specSeen] = await Promise.all([
      play(qemu, scenario, qemuQuirks),
      play(ours, scenario, qemuQuirks),
      spec ? play(spec, scenario, specQuirks) : Promise.resolve(undefined),
    ]);
    const run: DifferentialRun = { qemu: qemuSeen, ours: oursSeen, qemuStderr: qemu.stderrText };
    if (oracle !== 'qemu-7.2') run.oracle = oracle;
    if (replayed) run.props = props;
    if (specSeen) run.spec = specSeen;
    if (process.env.VIOMMU_ORACLE_VERBOSE) {
      qemuSeen.forEach((o, i) => {
        const ours = oursSeen[i]?.value === o.value ? '' : `  viommu(compat=${oracle}) ${oursSeen[i]?.value}`;
        const spec = specSeen === undefined || specSeen[i]?.value === o.value ? '' : `  viommu(spec) ${specSeen[i]?.value} [${o.quirks.join(', ')}]`;
        console.log(`      ${o.label} = ${o.value}${ours}${spec}`);
      });
    }
    return run;
  } finally {
    await Promise.all(started.map((peer) => peer.close()));
  }
}

function describeDifference(index: number, expected: Observation | undefined, actual: Observation | undefined, who: string): string {
  const cut = (text: string) => (text.length > 160 ? `${text.slice(0, 160)}...` : text);
  const show = (o: Observation | undefined) => (o === undefined ? '(nothing)' : `${o.label} = ${cut(o.value)}`);
  return `#${index}: QEMU ${show(expected)}\n      ${who} ${show(actual)}`;
}

function fail(title: string, mismatches: readonly string[]): void {
  if (mismatches.length === 0) return;
  assert.fail(`${title} (${mismatches.length} values; first ${Math.min(10, mismatches.length)}):\n    ${mismatches.slice(0, 10).join('\n    ')}`);
}

/**
 * QEMU against compat=qemu-7.2: every value equal. QEMU against the spec mode: equal except at values tagged
 * with a quirk the spec mode does not have (each such difference is the listed deviation showing).
 */
export function assertAgreement(run: DifferentialRun, scenarioProps = ''): void {
  const props = run.props ?? scenarioProps;
  const mismatches: string[] = [];
  const length = Math.max(run.qemu.length, run.ours.length);
  const oracle = run.oracle ?? 'qemu-7.2';
  for (let i = 0; i < length; i++) {
    const expected = run.qemu[i];
    const actual = run.ours[i];
    if (expected?.label === actual?.label && expected?.value === actual?.value) continue;
    mismatches.push(describeDifference(i, expected, actual, `viommu(compat=${oracle})`));
  }
  fail(`${oracleName(oracle)} and viommu(compat=${oracle}) disagree`, mismatches);
  if (run.spec === undefined) return;
  const specQuirks = quirksFor(vtdConfigFromString(specProps(props, oracle)));
  const unexplained: string[] = [];
  const specLength = Math.max(run.qemu.length, run.spec.length);
  for (let i = 0; i < specLength; i++) {
    const expected = run.qemu[i];
    const actual = run.spec[i];
    if (expected?.label === actual?.label && expected?.value === actual?.value) continue;
    const why =
      expected === undefined || actual === undefined || expected.label !== actual.label ? undefined : unexplainedBy(expected, actual, specQuirks);
    if (why !== '') unexplained.push(`${describeDifference(i, expected, actual, 'viommu(spec)')}${why ? `\n      (${why})` : ''}`);
  }
  fail(`${oracleName(oracle)} and viommu in spec mode differ where no listed quirk explains it`, unexplained);
}

/**
 * Why a spec-mode difference at one observation is not explained ('' when it is): only a tagged quirk the spec
 * mode lacks may explain it, and only within what the quirk changes (lib/vtd/compat-quirks.ts `changes`): the
 * bits of its fields for a register value, its observation kinds otherwise.
 */
export function unexplainedBy(expected: Observation, actual: Observation, specQuirks: ReadonlySet<QuirkId>): string {
  const excusing = expected.quirks.filter((quirk) => !specQuirks.has(quirk));
  if (excusing.length === 0) {
    return expected.quirks.length === 0 ? 'no quirk is named for this value' : `the spec mode has ${expected.quirks.join(', ')} too`;
  }
  if (expected.kind === 'register' && expected.register !== undefined && expected.bits !== undefined && actual.bits !== undefined) {
    const mask = excusing.reduce((bits, quirk) => bits | quirkRegisterMask(quirk, expected.register!), 0n);
    const stray = (expected.bits ^ actual.bits) & ~mask;
    return stray === 0n ? '' : `${expected.register} bits 0x${stray.toString(16)} differ outside the fields ${excusing.join(', ')} change`;
  }
  if (
    expected.kind !== 'register' &&
    expected.kind !== 'value' &&
    excusing.some((quirk) => quirkChangesObservation(quirk, expected.kind as ObservationKind))
  )
    return '';
  return `${excusing.join(', ')} change no ${expected.kind === 'register' ? `${expected.register ?? 'register'} value` : `${expected.kind} observation`}`;
}

/** playBoth then assertAgreement. */
export async function differential(scenario: Scenario, options: DifferentialOptions = {}): Promise<DifferentialRun> {
  const run = await playBoth(scenario, options);
  assertAgreement(run, options.props ?? '');
  return run;
}

// ---- invalidation descriptors, from the structure tables ----

export const descriptors = {
  context: (values: Partial<Record<'G' | 'DID' | 'SID' | 'FM', number>>): bigint => encodeBig(CONTEXT_CACHE_INVALIDATE, { TYPE_LO: 1, ...values }),
  iotlb: (values: Partial<Record<'G' | 'DW' | 'DR' | 'DID' | 'AM' | 'IH' | 'ADDR', number>>): bigint =>
    encodeBig(IOTLB_INVALIDATE, { TYPE_LO: 2, ...values }),
  interruptEntry: (values: Partial<Record<'G' | 'IM' | 'IIDX', number>>): bigint =>
    encodeBig(INTERRUPT_ENTRY_CACHE_INVALIDATE, { TYPE_LO: 4, ...values }),
  wait: (values: Partial<Record<'IF' | 'SW' | 'FN' | 'PD' | 'SDATA', number>> & { address?: number }): bigint => {
    const { address, ...rest } = values;
    return encodeBig(INVALIDATION_WAIT, { TYPE_LO: 5, ...rest, SADDR: (address ?? 0) / 4 });
  },
};

/** A 128-bit invalidation queue of 2^qs pages in guest memory, driven through IQA/IQT/GCMD.QIE. */
export class OracleQueue {
  private index = 0;

  constructor(
    private readonly guest: OracleGuest,
    readonly base: number,
    readonly qs = 0,
  ) {}

  static async create(guest: OracleGuest, qs = 0): Promise<OracleQueue> {
    const queue = new OracleQueue(guest, guest.allocPage(2 ** qs), qs);
    await guest.setReg('IQA', BigInt(queue.base) | BigInt(qs));
    await guest.setReg('IQT', 0n);
    return queue;
  }

  get entries(): number {
    return (PAGE * 2 ** this.qs) / 16;
  }

  get tail(): number {
    return this.index;
  }

  /** Writes descriptors at the current tail (wrapping) without moving IQT. */
  async place(...values: bigint[]): Promise<void> {
    for (const value of values) {
      await this.guest.write128(this.base + this.index * 16, value);
      this.index = (this.index + 1) % this.entries;
    }
  }

  /** Writes descriptors and moves IQT past them. */
  async submit(...values: bigint[]): Promise<void> {
    await this.place(...values);
    await this.guest.setReg('IQT', BigInt(this.index * 16));
  }

  /** Rewrites the descriptor at `index` (to repair a bad one) without moving IQT. */
  async rewrite(index: number, value: bigint): Promise<void> {
    await this.guest.write128(this.base + index * 16, value);
  }

  /** Forgets descriptors placed after `index` (for scripts that move IQT by hand). */
  moveTo(index: number): void {
    this.index = index % this.entries;
  }
}
