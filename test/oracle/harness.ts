/** Differential harness: a recording guest over a qtest peer, played into QEMU 7.2 and into `viommu qtest`, and compared. */
import { strict as assert } from 'node:assert';
import { encodeBig } from '../../lib/vtd/bitfield';
import { quirksFor, type QuirkId } from '../../lib/vtd/compat-quirks';
import { vtdConfigFromString } from '../../lib/vtd/config';
import { findRegister } from '../../lib/vtd/registers';
import {
  CONTEXT_CACHE_INVALIDATE, INTERRUPT_ENTRY_CACHE_INVALIDATE, INVALIDATION_WAIT, IOTLB_INVALIDATE, LEGACY_CONTEXT_ENTRY,
  LEGACY_ROOT_ENTRY, SECOND_STAGE_1G_LEAF, SECOND_STAGE_2M_LEAF, SECOND_STAGE_4K_LEAF, SECOND_STAGE_TABLE_ENTRY,
} from '../../lib/vtd/structures';
import { EDU_BUFFER_ADDRESS, EDU_BUFFER_SIZE, EDU_DMA_COMMAND, EDU_REGISTERS } from '../../lib/devices/edu';
import type { QtestPeer } from '../../lib/vmm/qtest/client';
import { QemuQtest, ViommuQtest, qemuAvailability, type QemuQtestOptions } from './qemu';

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
}

function render(value: Observed): string {
  if (typeof value === 'string') return value;
  if (value instanceof Uint8Array) return Buffer.from(value).toString('hex');
  return `0x${value.toString(16)}`;
}

function register(name: string): { offset: number; width: 32 | 64 } {
  const spec = findRegister(name);
  if (spec === undefined) throw new Error(`no VT-d register ${name}`);
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
  async take(sync?: () => Promise<unknown>): Promise<string[]> {
    if (sync !== undefined) await sync();
    await new Promise((resolve) => setTimeout(resolve, TRACE_SETTLE_MS));
    const taken = this.messages.slice(this.cursor);
    this.cursor = this.messages.length;
    return taken;
  }
}

/** A guest that drives one qtest peer and writes down every value it reads, in order. */
export class OracleGuest {
  readonly observations: Observation[] = [];
  /** Guest memory written through this guest (qword granular), so table builders need not read back. */
  private readonly shadow = new Map<number, bigint>();
  private nextPage: number;

  constructor(
    readonly peer: QtestPeer,
    private readonly interruptLog?: InterruptLog,
    /** Where table pages are allocated from (a bump allocator). */
    firstTablePage = 0x100000,
  ) {
    this.nextPage = firstTablePage;
  }

  /** Notes the MSIs delivered since the last call (fault events, completion events, remapped interrupts). */
  async observeInterrupts(label: string, quirks: readonly QuirkId[] = []): Promise<string[]> {
    if (this.interruptLog === undefined) throw new Error('this guest was made without an interrupt log');
    const messages = await this.interruptLog.take(() => this.peer.readb(0));
    this.note(label, messages.length === 0 ? 'none' : messages.join(' '), quirks);
    return messages;
  }

  note(label: string, value: Observed, quirks: readonly QuirkId[] = []): void {
    this.observations.push({ label, value: render(value), quirks });
  }

  // ---- DMAR registers, by the names of lib/vtd/registers.ts ----

  async reg(name: string): Promise<bigint> {
    const { offset, width } = register(name);
    return width === 32 ? BigInt(await this.peer.readl(DMAR + offset)) : this.peer.readq(DMAR + offset);
  }

  /** Reads a register and records it under `label` (default: its name). */
  async observe(name: string, label = name, quirks: readonly QuirkId[] = []): Promise<bigint> {
    const value = await this.reg(name);
    this.note(label, value, quirks);
    return value;
  }

  async setReg(name: string, value: bigint | number): Promise<void> {
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
   * One edu transfer between RAM (through the IOMMU, at `iova`) and its buffer at `bufferOffset`, waited for.
   * QEMU runs it from a 100 ms timer; viommu at once.
   */
  async dma(direction: 'to-device' | 'to-ram', iova: bigint | number, count: number, bufferOffset = 0, slot = EDU_SLOT): Promise<void> {
    if (count < 1 || bufferOffset + count > EDU_MAX_COUNT) throw new RangeError(`edu transfer of ${count} at buffer +${bufferOffset}`);
    const device = BigInt(EDU_BUFFER + bufferOffset);
    const toRam = direction === 'to-ram';
    const bar = eduBar(slot);
    await this.peer.writeq(bar + EDU_REGISTERS.dmaSource, toRam ? device : BigInt(iova));
    await this.peer.writeq(bar + EDU_REGISTERS.dmaDestination, toRam ? BigInt(iova) : device);
    await this.peer.writeq(bar + EDU_REGISTERS.dmaCount, BigInt(count));
    await this.peer.writeq(bar + EDU_REGISTERS.dmaCommand, EDU_RUN | (toRam ? EDU_TO_RAM : 0n));
    for (let attempt = 0; attempt < 200; attempt++) {
      if (((await this.peer.readq(bar + EDU_REGISTERS.dmaCommand)) & EDU_RUN) === 0n) return;
      await new Promise((resolve) => setTimeout(resolve, attempt === 0 ? 95 : 10));
    }
    throw new Error(`${this.peer.name}: edu DMA did not finish`);
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
  async setContext(root: number, sid: number, options: { did?: number; aw?: number; tt?: number; fpd?: boolean; table?: number; raw?: bigint } = {}): Promise<number> {
    const contexts = await this.contextTable(root, sid >> 8);
    const table = options.table ?? this.allocPage();
    const value = options.raw ?? encodeBig(LEGACY_CONTEXT_ENTRY, {
      P: 1, FPD: options.fpd ? 1 : 0, TT: options.tt ?? 0, SLPTPTR: table / PAGE, AW: options.aw ?? 1, DID: options.did ?? 1,
    });
    await this.write128(contexts + (sid & 0xff) * 16, value);
    return table;
  }

  /**
   * Maps `iova` to `gpa` under the second-stage table `top` with `levels` levels, creating intermediate tables
   * (read-write). Returns the address of the leaf entry.
   */
  async map(top: number, levels: number, iova: number, gpa: number, options: { read?: boolean; write?: boolean; size?: '4k' | '2m' | '1g'; extra?: bigint } = {}): Promise<number> {
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
    const r = options.read ?? true ? 1 : 0;
    const w = options.write ?? true ? 1 : 0;
    const leaf = leafLevel === 1
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
    this.note(`${label}: FRCD lo`, pending ? lo : 'F clear', quirks);
    this.note(`${label}: FRCD hi`, pending ? hi : 'F clear', ['frcd-pv-ffff-without-pasid', ...quirks]);
    if (options.keep !== true) {
      if (hi >> 63n === 1n) await this.peer.writel(DMAR + register('FRCD0_HI').offset + 4, 0x80000000);
      if ((fsts & 0x71n) !== 0n) await this.setReg('FSTS', fsts & 0x71n);
    }
    return hi;
  }
}

// ---- running a scenario on both sides ----

export type Scenario = (guest: OracleGuest) => Promise<void>;

export interface DifferentialOptions {
  /** intel-iommu properties, QEMU's spelling; given unchanged to QEMU. */
  props?: string;
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
  /** Our unit with compat=qemu-7.2. */
  ours: Observation[];
  /** Our unit with the default compat (the spec), when checkSpecMode. */
  spec?: Observation[];
  qemuStderr: string;
}

/** Skips the suite (with the reason printed) when QEMU cannot be started. Call in `before`. */
export function skipWithoutQemu(context: Mocha.Context): void {
  const availability = qemuAvailability();
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

async function play(peer: QemuQtest | ViommuQtest, scenario: Scenario): Promise<Observation[]> {
  const log = new InterruptLog(peer.child.stderr!);
  // Start-up MSIs (QEMU traces one from its own reset) are not the scenario's.
  await log.take();
  const guest = new OracleGuest(peer, log);
  try {
    await scenario(guest);
  } catch (error) {
    (error as Error).message += `\n  (${peer.name}; observations so far: ${guest.observations.length}, last: ${JSON.stringify(guest.observations.at(-1))})`;
    throw error;
  }
  return guest.observations;
}

/** Plays `scenario` into QEMU and into our unit (concurrently) and returns what each side read. */
export async function playBoth(scenario: Scenario, options: DifferentialOptions = {}): Promise<DifferentialRun> {
  const props = options.props ?? '';
  const maskBits = options.eduDmaMaskBits ?? 64;
  const qemuMask = `0x${((1n << BigInt(maskBits)) - 1n).toString(16)}`;
  const slots = options.extraEduSlots ?? [];
  const extraArgs = ['--edu-dma-mask-bits', String(maskBits), '--trace-interrupts', ...(slots.length > 0 ? ['--extra-edu', slots.join(',')] : [])];
  const started: QtestPeer[] = [];
  try {
    const qemu = await QemuQtest.start({
      ...options.qemu, iommuProps: props, withoutEdu: true,
      devices: [
        `edu,addr=0x4,dma_mask=${qemuMask}`, ...slots.map((slot) => `edu,addr=0x${slot.toString(16)},dma_mask=${qemuMask}`),
        ...(options.qemu?.devices ?? []),
      ],
      extraArgs: [...QEMU_TRACE_ARGS, ...(options.qemu?.extraArgs ?? [])],
    });
    started.push(qemu);
    const ours = await ViommuQtest.start({ iommuProps: withCompat(props, 'qemu-7.2'), extraArgs });
    started.push(ours);
    const spec = options.checkSpecMode ? await ViommuQtest.start({ iommuProps: props, extraArgs }) : undefined;
    if (spec) started.push(spec);
    const [qemuSeen, oursSeen, specSeen] = await Promise.all([
      play(qemu, scenario), play(ours, scenario), spec ? play(spec, scenario) : Promise.resolve(undefined),
    ]);
    const run: DifferentialRun = { qemu: qemuSeen, ours: oursSeen, qemuStderr: qemu.stderrText };
    if (specSeen) run.spec = specSeen;
    if (process.env.VIOMMU_ORACLE_VERBOSE) {
      qemuSeen.forEach((o, i) => {
        const ours = oursSeen[i]?.value === o.value ? '' : `  viommu(compat=qemu-7.2) ${oursSeen[i]?.value}`;
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
export function assertAgreement(run: DifferentialRun, props = ''): void {
  const mismatches: string[] = [];
  const length = Math.max(run.qemu.length, run.ours.length);
  for (let i = 0; i < length; i++) {
    const expected = run.qemu[i];
    const actual = run.ours[i];
    if (expected?.label !== actual?.label || expected?.value !== actual?.value) mismatches.push(describeDifference(i, expected, actual, 'viommu(compat=qemu-7.2)'));
  }
  fail('QEMU 7.2 and viommu(compat=qemu-7.2) disagree', mismatches);
  if (run.spec === undefined) return;
  const specQuirks = quirksFor(vtdConfigFromString(props));
  const unexplained: string[] = [];
  const specLength = Math.max(run.qemu.length, run.spec.length);
  for (let i = 0; i < specLength; i++) {
    const expected = run.qemu[i];
    const actual = run.spec[i];
    if (expected?.label === actual?.label && expected?.value === actual?.value) continue;
    const explained = expected !== undefined && expected.label === actual?.label && expected.quirks.some((quirk) => !specQuirks.has(quirk));
    if (!explained) unexplained.push(describeDifference(i, expected, actual, 'viommu(spec)'));
  }
  fail('QEMU 7.2 and viommu in spec mode differ where no listed quirk explains it', unexplained);
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
  iotlb: (values: Partial<Record<'G' | 'DW' | 'DR' | 'DID' | 'AM' | 'IH' | 'ADDR', number>>): bigint => encodeBig(IOTLB_INVALIDATE, { TYPE_LO: 2, ...values }),
  interruptEntry: (values: Partial<Record<'G' | 'IM' | 'IIDX', number>>): bigint => encodeBig(INTERRUPT_ENTRY_CACHE_INVALIDATE, { TYPE_LO: 4, ...values }),
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
