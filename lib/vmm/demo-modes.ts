/**
 * The demo's scenarios, one per translation mode: a testbed with the unit, a vfio-user DMA engine attached at
 * 00:04.0, the guest-driver sequence of that mode, DMA both ways, a fault, an unmap; each returns what the guest saw.
 */
import { EDU_BUFFER_ADDRESS } from '../devices/edu';
import { faultReason } from '../vtd/fault-reasons';
import { VtdUnit } from '../vtd/unit';
import { EduDriver, GuestPci, LEGACY_INVALIDATIONS, LegacyTables, PageAllocator, VtdDriver, type GuestFaultRecord } from './guest-driver';
import { DMAR_BASE, EDU_DEVFN, TestbedMachine } from './testbed';
import type { VfioUserAttachment } from './vfio-user-attachment';

const BAR0 = 0xfe000000;
const MSI_ADDRESS = 0xfee00000;
const MSI_DATA = 0x41;
const TABLES_START = 0x100000;
const DID = 1;
/** IOVAs stay below the engine's 28-bit DMA mask. */
const IOVA_RW = 0x0a000000;
const IOVA_RO = 0x0a010000;
const IOVA_UNMAPPED = 0x0b000000;
const GPA_RW = 0x02000000;
const GPA_RO = 0x02100000;
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
}

const hex = (value: number | bigint) => `0x${value.toString(16)}`;

function sidName(sid: number): string {
  return `${(sid >> 8).toString(16).padStart(2, '0')}:${((sid >> 3) & 0x1f).toString(16).padStart(2, '0')}.${sid & 7}`;
}

function reasonText(code: number): string {
  const reason = faultReason(code);
  return reason === undefined ? `${hex(code)} (reserved)` : `${hex(code)} ${reason.name} (${reason.condition})`;
}

function recordText(record: GuestFaultRecord): string {
  return `FRCD[${record.index}] ${record.write ? 'write' : 'read'} by ${sidName(record.sid)} at IOVA ${hex(record.address)}, reason ${reasonText(record.reason)}`;
}

async function waitUntil(condition: () => boolean, timeoutMs: number): Promise<boolean> {
  for (const start = Date.now(); !condition(); ) {
    if (Date.now() - start > timeoutMs) return false;
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
  return true;
}

/** Runs one mode against the vfio-user device served at `socketPath` on a machine of its own. */
export async function runDemoMode(mode: DemoMode, socketPath: string): Promise<DemoModeReport> {
  const delivered: Array<{ address: number; data: number }> = [];
  const machine = new TestbedMachine({
    builtInEdu: false,
    ramBytes: 64 << 20,
    iommu: (memory) => new VtdUnit({ memory, config: mode.iommu, onInterrupt: (address, data) => delivered.push({ address, data }) }),
  });
  try {
    const device = await machine.attachVfioUser(socketPath, { devfn: EDU_DEVFN });
    const pages = new PageAllocator(machine, TABLES_START);
    const context: DemoContext = {
      machine, device, pages, delivered,
      pci: new GuestPci(machine), vtd: new VtdDriver(machine, DMAR_BASE, pages), edu: new EduDriver(machine, BAR0),
    };
    return await mode.run(context);
  } finally {
    machine.close();
  }
}

function describeDeviceTable(device: VfioUserAttachment): string {
  if (!device.shadowed) return 'whole IOVA space by message: each DMA_READ/DMA_WRITE is translated by the unit (not shadowed: the unit offers no domain watch in this build)';
  const runs = device.table.shared;
  if (runs.length === 0) return 'no DMA_MAPs of guest RAM; everything else by message';
  return `${runs.length} DMA_MAP${runs.length === 1 ? '' : 's'} of guest RAM (fd + offset): ${runs.map((run) => `[${hex(run.address)}, +${hex(run.size)})`).join(' ')}; the rest by message`;
}

/**
 * How one mode gives the engine its mappings: the guest-driver sequence that sets up translation with IOVA_RW (two
 * pages, read-write) and IOVA_RO (one page, read-only) for the device's SID, and the one that takes a page back.
 * Scalable second-stage, first-stage and nested modes are further entries of this shape.
 */
export interface DemoTranslation {
  /** The mode's heading. */
  readonly title: string;
  /** The "guest maps" line. */
  readonly summary: string;
  setUp(context: DemoContext, sid: number): Promise<void>;
  /** Clears the mapping of one page and invalidates it as a driver does. */
  unmapPage(context: DemoContext, sid: number, iova: number): Promise<void>;
}

/** The same guest story in every mode: mappings, DMA both ways with MSIs, a fault, an unmap. */
async function runScenario(context: DemoContext, translation: DemoTranslation): Promise<DemoModeReport> {
  const { machine, device, pci, vtd, edu, delivered } = context;
  const lines: string[] = [];
  const failures: string[] = [];
  const check = (ok: boolean, failure: string) => {
    if (!ok) failures.push(failure);
    return ok;
  };
  const sid = device.sourceId;

  await pci.enable(EDU_DEVFN, BAR0);
  await pci.enableMsi(EDU_DEVFN, MSI_ADDRESS, MSI_DATA);
  await translation.setUp(context, sid);
  await device.settled();
  lines.push(`guest maps    ${translation.summary}`);
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
  lines.push(`DMA           ${TRANSFER_BYTES} bytes IOVA ${hex(IOVA_RW)} -> engine -> IOVA ${hex(IOVA_RW + 0x1800)}, ${path}: ${same ? 'bytes match' : 'BYTES DIFFER'}; ${msis ? `2 MSIs ${hex(MSI_ADDRESS)}/${hex(MSI_DATA)} delivered` : 'MSIs MISSING'}`);

  // A DMA at an IOVA the guest never mapped: the device gets an errno, the guest a fault record.
  const faultsBefore = device.dmaFaults.length;
  await edu.transfer(BigInt(IOVA_UNMAPPED), BigInt(EDU_BUFFER_ADDRESS), 16, false);
  await edu.acknowledge();
  const errno = device.dmaFaults.length > faultsBefore ? device.dmaFaults[device.dmaFaults.length - 1]!.errno : undefined;
  const fault = await vtd.faults();
  check(errno !== undefined, 'the device was not refused the DMA at the unmapped IOVA');
  check(fault.records.some((r) => r.sid === sid && r.address === BigInt(IOVA_UNMAPPED) && !r.write), `no fault record for the read at ${hex(IOVA_UNMAPPED)} (FSTS ${hex(fault.fsts)})`);
  lines.push(`fault         engine reads IOVA ${hex(IOVA_UNMAPPED)} (unmapped): device got ${errno === undefined ? 'NO ERROR' : `errno ${errno}`}; FSTS ${hex(fault.fsts)}${fault.fsts & 2 ? ' (PPF)' : ''}`);
  for (const r of fault.records) lines.push(`              ${recordText(r)}`);
  await vtd.clearFaults(fault.records);

  // The guest takes a page back: after its invalidation the device can no longer reach it.
  const taken = IOVA_RW + 0x1000;
  await translation.unmapPage(context, sid, taken);
  await device.settled();
  const before = await machine.readBytes(BigInt(GPA_RW + 0x1800), 16);
  await edu.transfer(BigInt(EDU_BUFFER_ADDRESS), BigInt(IOVA_RW + 0x1800), 16, true);
  await edu.acknowledge();
  const after = await machine.readBytes(BigInt(GPA_RW + 0x1800), 16);
  const afterUnmap = await vtd.faults();
  const blocked = check(Buffer.from(after).equals(Buffer.from(before)) && afterUnmap.records.some((r) => r.write && r.address === BigInt(taken)), 'a DMA write to the unmapped page was not blocked and recorded');
  if (device.shadowed) check(!device.table.shared.some((run) => run.address <= BigInt(taken) && BigInt(taken) < run.address + run.size), 'the device still holds a DMA_MAP of the page the guest unmapped');
  lines.push(`unmap         guest clears IOVA ${hex(taken)} and invalidates it; device table: ${describeDeviceTable(device)}`);
  lines.push(`              a write there afterwards: ${blocked ? `blocked, ${afterUnmap.records.filter((r) => r.write).map(recordText).join('; ')}` : 'NOT BLOCKED'}`);
  await vtd.clearFaults(afterUnmap.records);
  return { mode: translation.title, lines, failures };
}

/** Legacy mode: root and context tables, a 4-level second-stage domain, QI with a wait descriptor, TE. */
function legacyTranslation(): DemoTranslation {
  let tables: LegacyTables | undefined;
  return {
    title: 'legacy (caching mode on, 4-level second stage, queued invalidation)',
    summary: `SID 00:04.0 -> DID ${DID}, 4-level second stage: IOVA ${hex(IOVA_RW)}+0x2000 -> GPA ${hex(GPA_RW)} (rw), IOVA ${hex(IOVA_RO)}+0x1000 -> GPA ${hex(GPA_RO)} (r)`,
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
    },
  };
}

export const LEGACY_MODE: DemoMode = {
  name: 'legacy',
  iommu: 'caching-mode=on,aw-bits=48',
  run: (context) => runScenario(context, legacyTranslation()),
};

/** The modes the demo runs, in order; scalable second-stage, first-stage and nested join once the unit translates them. */
export const DEMO_MODES: readonly DemoMode[] = [LEGACY_MODE];
