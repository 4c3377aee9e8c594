/**
 * The demo's scenarios, one per translation mode: a testbed with the unit, a vfio-user DMA engine attached at
 * 00:04.0, the guest-driver sequence of that mode, DMA both ways, a fault, an unmap; each returns what the guest saw.
 */
import { EDU_BUFFER_ADDRESS } from '../devices/edu';
import { INTERRUPT_WINDOW_START, PAGE_BYTES, PAGE_SHIFT } from '../memory/geometry';
import type { GuestMemory } from '../memory/guest-memory';
import { faultCode, faultReason, type FaultReasonName } from '../vtd/fault-reasons';
import type { FaultRecord } from '../vtd/fault';
import type { TranslationFailure } from '../vtd/translation-result';
import { VtdUnit } from '../vtd/unit';
import type { UnitTraceSink } from '../vtd/unit-trace';
import {
  EduDriver,
  FIRST_STAGE_FORMAT,
  GuestPci,
  GuestPhysicalTables,
  LEGACY_INVALIDATIONS,
  LegacyTables,
  PASID_ENTRY,
  PASID_INVALIDATIONS,
  PageAllocator,
  PagingTables,
  ramTables,
  ScalableTables,
  SECOND_STAGE_FORMAT,
  VtdDriver,
  type GuestFaultRecord,
} from './guest-driver';
import { DMAR_BASE, EDU_DEVFN, TestbedMachine } from './testbed';
import type { VfioUserAttachment } from './vfio-user-attachment';

const BAR0 = 0xfe000000;
/** The window's base: a compatibility-format message to APIC 0, physical destination mode. */
const MSI_ADDRESS = INTERRUPT_WINDOW_START;
const MSI_DATA = 0x41;
const TABLES_START = 0x100000;
const DID = 1;
/** IOVAs stay below the engine's 28-bit DMA mask. */
const IOVA_RW = 0x0a000000;
const IOVA_RO = 0x0a010000;
const IOVA_UNMAPPED = 0x0b000000;
/** Nested: a first-stage mapping to a nested-guest page the second stage does not map. */
const IOVA_SECOND_STAGE_HOLE = 0x0b001000;
/** First stage: a supervisor page (U/S = 0), which the engine's user requests cannot reach. */
const IOVA_SUPERVISOR = 0x0b002000;
const GPA_RW = 0x02000000;
const GPA_RO = 0x02100000;
const GPA_SUPERVISOR = 0x02200000;
/** Nested: the nested guest's physical space (L2-GPA), which the second stage maps onto this machine's RAM. */
const L2_TABLES = 0x80000000;
const L2_RW = 0x90000000;
const L2_RO = 0x90100000;
const L2_UNBACKED = 0x9f000000;
/** Requests without PASID translate through this PASID's entry (the context entry's RID_PASID). */
const RID_PASID = 0;
const TRANSFER_BYTES = 256;
const MSI_WAIT_MS = 5000;

/** What one mode showed the guest: readable lines, and the checks that failed (none: the mode passed). */
export interface DemoModeReport {
  readonly mode: string;
  readonly lines: string[];
  readonly failures: string[];
}

export interface DemoMode {
  readonly name: string;
  /** intel-iommu properties for the unit. */
  readonly iommu: string;
  run(context: DemoContext): Promise<DemoModeReport>;
}

/** A fresh machine with the device attached, and the guest's view of it. */
export interface DemoContext {
  readonly machine: TestbedMachine;
  readonly device: VfioUserAttachment;
  readonly pci: GuestPci;
  readonly vtd: VtdDriver;
  readonly edu: EduDriver;
  readonly pages: PageAllocator;
  /** MSIs the unit delivered toward the CPUs (device interrupts after its interrupt path, and its own events). */
  readonly delivered: Array<{ address: number; data: number }>;
  /** The unit's failed translations, oldest first: where each fault the guest finds in FRCD was found. */
  readonly failures: readonly TranslationFailure[];
}

const hex = (value: number | bigint) => `0x${value.toString(16)}`;

function sidName(sid: number): string {
  return `${(sid >> 8).toString(16).padStart(2, '0')}:${((sid >> 3) & 0x1f).toString(16).padStart(2, '0')}.${sid & 7}`;
}

function reasonText(code: number): string {
  const reason = faultReason(code);
  // Scalable conditions all start with "SM:", which the reason's name already says.
  return reason === undefined ? `${hex(code)} (reserved)` : `${hex(code)} ${reason.name} (${reason.condition.replace(/^SM: /, '')})`;
}

export function recordText(record: GuestFaultRecord, stage?: string): string {
  const pasid = record.pasid === undefined ? '' : ` with PASID ${record.pasid}`;
  const where = stage === undefined ? '' : `; ${stage}`;
  return `FRCD[${record.index}] ${record.write ? 'write' : 'read'} by ${sidName(record.sid)}${pasid} at IOVA ${hex(record.address)}, reason ${reasonText(record.reason)}${where}`;
}

/** Which stage of a nested walk a fault record blames, in words: the first stage, the second stage on a first-stage table or on the output, or neither. */
export function nestedStageText(fault: FaultRecord): string {
  switch (fault.stage) {
    case 'first-stage':
      return 'first stage';
    case 'second-stage':
      if (fault.level === undefined || fault.level === 0) return "second stage, translating the first stage's output";
      return 'second stage, translating a first-stage table';
    case 'output':
      return 'after both stages (the output is in the interrupt range)';
    default:
      return 'before either stage (root, context or PASID structures)';
  }
}

/** The unit's failed translation a guest's fault record came from: same requester, access and page; the latest. */
function failureOf(failures: readonly TranslationFailure[], record: GuestFaultRecord): TranslationFailure | undefined {
  const shift = BigInt(PAGE_SHIFT);
  const page = record.address >> shift;
  return [...failures].reverse().find((f) => f.sid === record.sid && f.write === record.write && BigInt.asUintN(64, f.iova) >> shift === page);
}

/** Keeps every failed translate() of `unit` in `failures` (the unit's DMA spaces call translate() through the instance). */
function keepFailures(unit: VtdUnit, failures: TranslationFailure[]): void {
  const translate = unit.translate;
  unit.translate = (request) => {
    const result = translate.call(unit, request);
    if (!result.ok) failures.push(result);
    return result;
  };
}

async function waitUntil(condition: () => boolean, timeoutMs: number): Promise<boolean> {
  for (const start = Date.now(); !condition();) {
    if (Date.now() - start > timeoutMs) return false;
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
  return true;
}

export interface DemoModeOptions {
  /** Sees the mode's unit and the guest RAM under it as soon as they exist (to watch its faults, say). */
  readonly onUnit?: (unit: VtdUnit, memory: GuestMemory) => void;
  /** Receives the mode's unit's trace events (docs/trace.md). */
  readonly trace?: UnitTraceSink;
}

/** Runs one mode against the vfio-user device served at `socketPath` on a machine of its own. */
export async function runDemoMode(mode: DemoMode, socketPath: string, options: DemoModeOptions = {}): Promise<DemoModeReport> {
  const delivered: Array<{ address: number; data: number }> = [];
  const failures: TranslationFailure[] = [];
  const machine = new TestbedMachine({
    builtInEdu: false,
    ramBytes: 64 << 20,
    iommu: (memory) => {
      const unit = new VtdUnit({
        memory,
        config: mode.iommu,
        onInterrupt: (address, data) => delivered.push({ address, data }),
        ...(options.trace === undefined ? {} : { trace: options.trace }),
      });
      keepFailures(unit, failures);
      options.onUnit?.(unit, memory);
      return unit;
    },
  });
  try {
    const device = await machine.attachVfioUser(socketPath, { devfn: EDU_DEVFN });
    const pages = new PageAllocator(machine, TABLES_START);
    const context: DemoContext = {
      machine,
      device,
      pages,
      delivered,
      failures,
      pci: new GuestPci(machine),
      vtd: new VtdDriver(machine, DMAR_BASE, pages),
      edu: new EduDriver(machine, BAR0),
    };
    const report = await mode.run(context);
    return { ...report, lines: [`unit          intel-iommu,${mode.iommu}`, ...report.lines] };
  } finally {
    machine.close();
  }
}

/** What the shadow backend gave the device: its DMA_MAPs of guest RAM (`brief`: the runs alone). */
function describeDeviceTable(device: VfioUserAttachment, brief = false): string {
  if (!device.shadowed)
    return brief
      ? 'by message'
      : 'whole IOVA space by message: each DMA_READ/DMA_WRITE is translated by the unit (not shadowed: the unit offers no domain watch in this build)';
  const runs = device.table.shared;
  const list = runs.map((run) => `[${hex(run.address)}, +${hex(run.size)})`).join(' ');
  if (brief) return runs.length === 0 ? 'no DMA_MAPs' : list;
  if (runs.length === 0) return 'no DMA_MAPs of guest RAM; everything else by message';
  return `${runs.length} DMA_MAP${runs.length === 1 ? '' : 's'} of guest RAM (fd + offset): ${list}; the rest by message`;
}

/** A read the engine makes that must fault, and the reason (by name) the guest must then find in FRCD. */
export interface DemoFault {
  readonly iova: number;
  /** What is wrong with the IOVA, for the "fault" line. */
  readonly why: string;
  readonly reason: FaultReasonName;
}

/**
 * How one mode gives the engine its mappings: the guest-driver sequence that sets up translation with IOVA_RW (two
 * pages, read-write) and IOVA_RO (one page, read-only) for the device's SID, the reads that must fault, and the
 * sequence that takes a page back.
 */
export interface DemoTranslation {
  /** The mode's heading. */
  readonly title: string;
  /** The "guest maps" lines, once setUp has run. */
  summary(): readonly string[];
  readonly faults: readonly DemoFault[];
  /** The reason (by name) a write to the page taken back must record. */
  readonly unmappedWriteReason: FaultReasonName;
  /** Names the stage each fault was found in (nested translation), from the unit's record of it. */
  readonly stageText?: (fault: FaultRecord) => string;
  setUp(context: DemoContext, sid: number): Promise<void>;
  /** Clears the mapping of one page and invalidates it as a driver does; returns how it invalidated. */
  unmapPage(context: DemoContext, sid: number, iova: number): Promise<string>;
}

/** The same guest story in every mode: mappings, DMA both ways with MSIs, faults, an unmap. */
async function runScenario(context: DemoContext, translation: DemoTranslation): Promise<DemoModeReport> {
  const { machine, device, pci, vtd, edu, delivered } = context;
  const lines: string[] = [];
  const failures: string[] = [];
  const check = (ok: boolean, failure: string) => {
    if (!ok) failures.push(failure);
    return ok;
  };
  const sid = device.sourceId;
  const describe = (record: GuestFaultRecord) => {
    const failure = translation.stageText === undefined ? undefined : failureOf(context.failures, record);
    return recordText(record, failure === undefined ? undefined : translation.stageText!(failure.fault));
  };

  await pci.enable(EDU_DEVFN, BAR0);
  await pci.enableMsi(EDU_DEVFN, MSI_ADDRESS, MSI_DATA);
  await translation.setUp(context, sid);
  await device.settled();
  translation.summary().forEach((line, i) => lines.push(`${i === 0 ? 'guest maps' : ''.padEnd(10)}    ${line}`));
  lines.push(`device table  ${describeDeviceTable(device)}`);
  if (device.shadowed) {
    const runs = device.table.shared.map((run) => `${hex(run.address)}+${hex(run.size)}`);
    const expected = [`${hex(IOVA_RW)}+0x2000`, `${hex(IOVA_RO)}+0x1000`];
    check(runs.join() === expected.join(), `the device's DMA_MAPs are ${runs.join(' ')}, not the guest's ${expected.join(' ')}`);
  }

  // DMA both ways through the unit, each completion raising the device's MSI.
  const pattern = Uint8Array.from({ length: TRANSFER_BYTES }, (_, i) => (i * 7 + 3) & 0xff);
  await machine.writeBytes(BigInt(GPA_RW), pattern);
  const ours = () => delivered.filter((m) => m.address === MSI_ADDRESS && m.data === MSI_DATA).length;
  const msiBefore = ours();
  await edu.transfer(BigInt(IOVA_RW), BigInt(EDU_BUFFER_ADDRESS), TRANSFER_BYTES, false);
  await edu.acknowledge();
  await edu.transfer(BigInt(EDU_BUFFER_ADDRESS), BigInt(IOVA_RW + 0x1800), TRANSFER_BYTES, true);
  await edu.acknowledge();
  const copied = await machine.readBytes(BigInt(GPA_RW + 0x1800), TRANSFER_BYTES);
  const same = check(Buffer.from(copied).equals(Buffer.from(pattern)), 'the bytes copied through the engine differ from the ones written');
  const msis = check(await waitUntil(() => ours() >= msiBefore + 2, MSI_WAIT_MS), "the engine's two completion MSIs did not arrive");
  const path = device.shadowed ? 'directly in guest RAM (shared memory)' : 'by DMA_READ/DMA_WRITE messages translated by the unit';
  lines.push(
    `DMA           ${TRANSFER_BYTES} bytes IOVA ${hex(IOVA_RW)} -> engine -> IOVA ${hex(IOVA_RW + 0x1800)}, ${path}: ${same ? 'bytes match' : 'BYTES DIFFER'}; ${msis ? `2 MSIs ${hex(MSI_ADDRESS)}/${hex(MSI_DATA)} delivered` : 'MSIs MISSING'}`,
  );

  // Reads the guest never allowed: the device gets an errno, the guest a fault record with the mode's reason.
  for (const provoked of translation.faults) {
    const faultsBefore = device.dmaFaults.length;
    await edu.transfer(BigInt(provoked.iova), BigInt(EDU_BUFFER_ADDRESS), 16, false);
    await edu.acknowledge();
    const errno = device.dmaFaults.length > faultsBefore ? device.dmaFaults[device.dmaFaults.length - 1]!.errno : undefined;
    const fault = await vtd.faults();
    const expected = faultCode(provoked.reason);
    check(errno !== undefined, `the device was not refused the DMA at ${hex(provoked.iova)}`);
    const ours = fault.records.filter((r) => r.sid === sid && r.address === BigInt(provoked.iova) && !r.write);
    check(
      ours.some((r) => r.reason === expected),
      `no fault record ${hex(expected)} ${provoked.reason} for the read at ${hex(provoked.iova)} (FSTS ${hex(fault.fsts)}; recorded: ${fault.records.map((r) => hex(r.reason)).join(' ') || 'none'})`,
    );
    lines.push(
      `fault         engine reads IOVA ${hex(provoked.iova)} (${provoked.why}): device got ${errno === undefined ? 'NO ERROR' : `errno ${errno}`}; FSTS ${hex(fault.fsts)}${fault.fsts & 2 ? ' (PPF)' : ''}`,
    );
    for (const r of fault.records) lines.push(`              ${describe(r)}`);
    await vtd.clearFaults(fault.records);
  }

  // The guest takes a page back: after its invalidation the device can no longer reach it.
  const taken = IOVA_RW + PAGE_BYTES;
  const invalidation = await translation.unmapPage(context, sid, taken);
  await device.settled();
  const before = await machine.readBytes(BigInt(GPA_RW + 0x1800), 16);
  await edu.transfer(BigInt(EDU_BUFFER_ADDRESS), BigInt(IOVA_RW + 0x1800), 16, true);
  await edu.acknowledge();
  const after = await machine.readBytes(BigInt(GPA_RW + 0x1800), 16);
  const afterUnmap = await vtd.faults();
  const writeReason = faultCode(translation.unmappedWriteReason);
  const writes = afterUnmap.records.filter((r) => r.write && r.address === BigInt(taken) && r.reason === writeReason);
  const blocked = check(
    Buffer.from(after).equals(Buffer.from(before)) && writes.length > 0,
    `a DMA write to the unmapped page was not blocked and recorded as ${hex(writeReason)} ${translation.unmappedWriteReason} (recorded: ${afterUnmap.records.map((r) => hex(r.reason)).join(' ') || 'none'})`,
  );
  if (device.shadowed)
    check(
      !device.table.shared.some((run) => run.address <= BigInt(taken) && BigInt(taken) < run.address + run.size),
      'the device still holds a DMA_MAP of the page the guest unmapped',
    );
  lines.push(`unmap         guest clears IOVA ${hex(taken)}: ${invalidation}`);
  lines.push(`              device table now: ${describeDeviceTable(device, true)}`);
  lines.push(
    `              a write there afterwards: ${
      blocked
        ? `blocked, ${afterUnmap.records
            .filter((r) => r.write)
            .map(describe)
            .join('; ')}`
        : 'NOT BLOCKED'
    }`,
  );
  await vtd.clearFaults(afterUnmap.records);
  return { mode: translation.title, lines, failures };
}

const UNMAPPED_READ: DemoFault = { iova: IOVA_UNMAPPED, why: 'unmapped', reason: 'READ' };

/** Legacy mode: root and context tables, a 4-level second-stage domain, QI with a wait descriptor, TE. */
function legacyTranslation(): DemoTranslation {
  let tables: LegacyTables | undefined;
  return {
    title: 'legacy (caching mode on, 4-level second stage, queued invalidation)',
    summary: () => [
      `SID 00:04.0 -> DID ${DID}, 4-level second stage: IOVA ${hex(IOVA_RW)}+0x2000 -> GPA ${hex(GPA_RW)} (rw), IOVA ${hex(IOVA_RO)}+0x1000 -> GPA ${hex(GPA_RO)} (r)`,
    ],
    faults: [UNMAPPED_READ],
    unmappedWriteReason: 'WRITE',
    async setUp({ machine, pages, vtd }, sid) {
      tables = new LegacyTables(machine, pages);
      await tables.addDevice(sid, DID, 4);
      await tables.map(sid, IOVA_RW, GPA_RW, 2, { read: true, write: true });
      await tables.map(sid, IOVA_RO, GPA_RO, 1, { read: true, write: false });
      await vtd.setRootTable(await tables.root);
      await vtd.enableQueue();
      await vtd.invalidate([LEGACY_INVALIDATIONS.contextGlobal(), LEGACY_INVALIDATIONS.iotlbGlobal()]);
      await vtd.enableTranslation();
    },
    async unmapPage({ vtd }, sid, iova) {
      await tables!.unmap(sid, iova, 1);
      await vtd.invalidate([LEGACY_INVALIDATIONS.iotlbPage(DID, iova)]);
      return `page-selective IOTLB invalidation (DID ${DID})`;
    },
  };
}

/**
 * Scalable mode as a driver enables it: the device's context entry and PASID directory, RID_PASID's PASID entry
 * (`entry`, written once its tables exist), RTADDR with TTM = scalable, a 256-bit queue, global context-cache,
 * PASID-cache and IOTLB invalidations, then TE.
 */
async function enableScalable(context: DemoContext, sid: number, entry: Parameters<ScalableTables['setPasidEntry']>[2]): Promise<void> {
  const { machine, pages, vtd } = context;
  const tables = new ScalableTables(machine, pages);
  await tables.addDevice(sid, { ridPasid: RID_PASID });
  await tables.setPasidEntry(sid, RID_PASID, entry);
  await vtd.setRootTable(await tables.root, 'scalable');
  await vtd.enableQueue(256);
  await vtd.invalidate([LEGACY_INVALIDATIONS.contextGlobal(), PASID_INVALIDATIONS.pasidCacheGlobal(), LEGACY_INVALIDATIONS.iotlbGlobal()]);
  await vtd.enableTranslation();
}

/** How the engine's requests (which carry no PASID) reach their PASID entry. */
const SCALABLE_PATH = `SID 00:04.0 -> scalable context entry -> RID_PASID ${RID_PASID} (no PASID in the requests) -> PASID entry`;

/** Scalable second stage (PGTT 2): the legacy domain's tables behind a PASID entry; IOTLB invalidation by DID. */
function scalableSecondStageTranslation(): DemoTranslation {
  const did = 2;
  let second: PagingTables | undefined;
  return {
    title: 'scalable second stage (PGTT 2, 256-bit queue)',
    summary: () => [
      `${SCALABLE_PATH}: PGTT 2 (second stage), DID ${did}`,
      `4-level second stage: IOVA ${hex(IOVA_RW)}+0x2000 -> GPA ${hex(GPA_RW)} (rw), IOVA ${hex(IOVA_RO)}+0x1000 -> GPA ${hex(GPA_RO)} (r)`,
    ],
    faults: [{ ...UNMAPPED_READ, reason: 'SM_READ' }],
    unmappedWriteReason: 'SM_WRITE',
    async setUp(context, sid) {
      second = await PagingTables.create(context.machine, SECOND_STAGE_FORMAT, ramTables(context.pages));
      await second.map(IOVA_RW, GPA_RW, 2, { read: true, write: true });
      await second.map(IOVA_RO, GPA_RO, 1, { read: true, write: false });
      await enableScalable(context, sid, PASID_ENTRY.secondStage(did, second));
    },
    async unmapPage({ vtd }, _sid, iova) {
      await second!.unmap(iova, 1);
      await vtd.invalidate([LEGACY_INVALIDATIONS.iotlbPage(did, iova)]);
      return `page-selective IOTLB invalidation (DID ${did})`;
    },
  };
}

/** Scalable first stage (PGTT 1): 4-level IA-32e tables; the engine's requests are user requests (RID_PRIV 0). */
function scalableFirstStageTranslation(): DemoTranslation {
  const did = 3;
  let first: PagingTables | undefined;
  return {
    title: 'scalable first stage (PGTT 1, 4-level IA-32e paging)',
    summary: () => [
      `${SCALABLE_PATH}: PGTT 1 (first stage), DID ${did}`,
      `4-level IA-32e first stage: IOVA ${hex(IOVA_RW)}+0x2000 -> GPA ${hex(GPA_RW)} (rw, user), IOVA ${hex(IOVA_RO)}+0x1000 -> GPA ${hex(GPA_RO)} (r, user),`,
      `  IOVA ${hex(IOVA_SUPERVISOR)} -> GPA ${hex(GPA_SUPERVISOR)} (rw, supervisor)`,
      'the engine sends no PASID and RID_PRIV is 0, so its requests are user requests: U/S = 1 pages only',
    ],
    faults: [
      { iova: IOVA_UNMAPPED, why: 'unmapped', reason: 'SM_FIRST_STAGE_NOT_PRESENT' },
      { iova: IOVA_SUPERVISOR, why: 'a supervisor page, U/S = 0', reason: 'SM_USER_SUPERVISOR' },
    ],
    unmappedWriteReason: 'SM_FIRST_STAGE_NOT_PRESENT',
    async setUp(context, sid) {
      first = await PagingTables.create(context.machine, FIRST_STAGE_FORMAT, ramTables(context.pages));
      await first.map(IOVA_RW, GPA_RW, 2, { read: true, write: true });
      await first.map(IOVA_RO, GPA_RO, 1, { read: true, write: false });
      await first.map(IOVA_SUPERVISOR, GPA_SUPERVISOR, 1, { read: true, write: true, supervisorOnly: true });
      await enableScalable(context, sid, PASID_ENTRY.firstStage(did, first));
    },
    async unmapPage({ vtd }, _sid, iova) {
      await first!.unmap(iova, 1);
      await vtd.invalidate([PASID_INVALIDATIONS.iotlbPages(did, RID_PASID, iova)]);
      return `PASID-based IOTLB invalidation (DID ${did}, PASID ${RID_PASID}, one page)`;
    },
  };
}

/**
 * Nested (PGTT 3): a nested guest's first-stage tables live in its own physical space (L2-GPA); every table
 * pointer, every table and the output go through the second stage, which maps L2-GPA onto this machine's RAM.
 */
function nestedTranslation(): DemoTranslation {
  const did = 4;
  let first: PagingTables | undefined;
  let tableSpace: GuestPhysicalTables | undefined;
  return {
    title: 'nested (PGTT 3: first stage in nested-guest space, through the second stage)',
    summary: () => [
      `${SCALABLE_PATH}: PGTT 3 (nested), DID ${did}`,
      `first stage (4-level IA-32e; FSPTPTR and its ${tableSpace!.size} tables at L2-GPA ${hex(first!.top)}..): IOVA ${hex(IOVA_RW)}+0x2000 -> L2-GPA ${hex(L2_RW)} (rw),`,
      `  IOVA ${hex(IOVA_RO)}+0x1000 -> L2-GPA ${hex(L2_RO)} (r), IOVA ${hex(IOVA_SECOND_STAGE_HOLE)} -> L2-GPA ${hex(L2_UNBACKED)}`,
      `second stage (4-level): L2-GPA ${hex(L2_TABLES)}+${hex(tableSpace!.size * PAGE_BYTES)} -> the tables' RAM pages (rw), L2-GPA ${hex(L2_RW)}+0x2000 -> GPA ${hex(GPA_RW)} (rw),`,
      `  L2-GPA ${hex(L2_RO)}+0x1000 -> GPA ${hex(GPA_RO)} (r); nothing at L2-GPA ${hex(L2_UNBACKED)}`,
    ],
    faults: [
      { iova: IOVA_UNMAPPED, why: 'unmapped', reason: 'SM_FIRST_STAGE_NOT_PRESENT' },
      {
        iova: IOVA_SECOND_STAGE_HOLE,
        why: `first stage maps it to L2-GPA ${hex(L2_UNBACKED)}, which the second stage does not map`,
        reason: 'SM_READ',
      },
    ],
    unmappedWriteReason: 'SM_FIRST_STAGE_NOT_PRESENT',
    stageText: nestedStageText,
    async setUp(context, sid) {
      const second = await PagingTables.create(context.machine, SECOND_STAGE_FORMAT, ramTables(context.pages));
      tableSpace = new GuestPhysicalTables(context.pages, second, L2_TABLES);
      first = await PagingTables.create(context.machine, FIRST_STAGE_FORMAT, tableSpace);
      await first.map(IOVA_RW, L2_RW, 2, { read: true, write: true });
      await first.map(IOVA_RO, L2_RO, 1, { read: true, write: false });
      await first.map(IOVA_SECOND_STAGE_HOLE, L2_UNBACKED, 1, { read: true, write: true });
      await second.map(L2_RW, GPA_RW, 2, { read: true, write: true });
      await second.map(L2_RO, GPA_RO, 1, { read: true, write: false });
      await enableScalable(context, sid, PASID_ENTRY.nested(did, first, second));
    },
    async unmapPage({ vtd }, _sid, iova) {
      await first!.unmap(iova, 1);
      await vtd.invalidate([PASID_INVALIDATIONS.iotlbPages(did, RID_PASID, iova)]);
      return `first-stage leaf (in L2-GPA space) cleared, PASID-based IOTLB invalidation (DID ${did}, PASID ${RID_PASID}, one page)`;
    },
  };
}

/**
 * One unit configuration offers every scalable kind: x-flts=on gives first-stage translation (FSTS) with aw-bits=48,
 * x-nested=on adds second-stage (SSTS) and nested (NEST) beside it, and caching-mode=on lets the shadow backend
 * follow the guest's tables.
 */
export const SCALABLE_IOMMU = 'caching-mode=on,x-scalable-mode=on,x-flts=on,x-nested=on,aw-bits=48';

/** A mode that plays a fresh `translation()` through the demo's story on a unit configured by `iommu`. */
export function scenarioMode(name: string, iommu: string, translation: () => DemoTranslation): DemoMode {
  return { name, iommu, run: (context) => runScenario(context, translation()) };
}

/** Each mode's guest-driver sequence and expectations, for modes built on them (and tests that break one). */
export const DEMO_TRANSLATIONS = {
  legacy: legacyTranslation,
  scalableSecondStage: scalableSecondStageTranslation,
  scalableFirstStage: scalableFirstStageTranslation,
  nested: nestedTranslation,
} as const;

export const LEGACY_MODE = scenarioMode('legacy', 'caching-mode=on,aw-bits=48', legacyTranslation);
export const SCALABLE_SECOND_STAGE_MODE = scenarioMode('scalable second stage', SCALABLE_IOMMU, scalableSecondStageTranslation);
export const SCALABLE_FIRST_STAGE_MODE = scenarioMode('scalable first stage', SCALABLE_IOMMU, scalableFirstStageTranslation);
export const NESTED_MODE = scenarioMode('nested', SCALABLE_IOMMU, nestedTranslation);

/** The modes the demo runs, in order. */
export const DEMO_MODES: readonly DemoMode[] = [LEGACY_MODE, SCALABLE_SECOND_STAGE_MODE, SCALABLE_FIRST_STAGE_MODE, NESTED_MODE];
