/**
 * PASID figures: allocation and free through the full quarantine against a plain Set add/delete (pasid.a), and a
 * guest PASID-cache invalidation over 1,024 bound PASIDs turned into iommufd requests against the same requests
 * issued directly (pasid.b).
 */
import { IommufdDryRun, FULL_VTD_HOST } from '../../lib/host/iommufd-dry-run';
import { IommufdNesting } from '../../lib/host/iommufd-nesting';
import {
  HWPT_ALLOC_FLAGS,
  HWPT_DATA_TYPE,
  IOCTLS,
  IOMMU_HWPT_VTD_S1_LAYOUT,
  VFIO_ATTACH_FLAGS,
  encodeStruct,
  readU32,
} from '../../lib/host/iommufd-uapi';
import { NestingBackend } from '../../lib/host/nesting-backend';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { LEGACY_INVALIDATIONS, PASID_INVALIDATIONS } from '../../lib/vmm/guest-driver';
import { encodeBig, type FieldTable } from '../../lib/vtd/bitfield';
import { PasidAllocator, type PasidSet } from '../../lib/vtd/pasid-allocator';
import { GCMD, OFFSET } from '../../lib/vtd/register-bits';
import { IQA_FIELDS, RTADDR_FIELDS } from '../../lib/vtd/registers';
import {
  INVALIDATION_DESCRIPTORS,
  INVALIDATION_WAIT,
  PASID_DIRECTORY_ENTRY,
  PASID_PGTT,
  SCALABLE_CONTEXT_ENTRY,
  SCALABLE_PASID_ENTRY,
  SCALABLE_ROOT_ENTRY,
} from '../../lib/vtd/structures';
import { VtdUnit } from '../../lib/vtd/unit';
import { rate, rateExcludingSetup, type Figure } from '../harness';

const ROUND_MS = 400;
/** PASIDs live at once in each batch: all allocated, then all freed, invalidated one by one, and one fence. */
const BATCH = 1024;
/** The full 20-bit space, as a unit with PSS = 19 would offer. */
const PASID_MAX = 2 ** 20;

let sink = 0;

function check(condition: boolean, what: string): void {
  if (!condition) throw new Error(`pasid bench setup: ${what}`);
}

/** One batch: BATCH allocations, BATCH frees into quarantine, a PASID-selective invalidation each, one fence. */
function cycle(allocator: PasidAllocator, set: PasidSet<unknown>, pasids: Int32Array): number {
  for (let i = 0; i < BATCH; i++) {
    const result = set.allocate();
    if (result.ok) pasids[i] = result.pasid;
  }
  for (let i = 0; i < BATCH; i++) set.free(pasids[i]!);
  for (let i = 0; i < BATCH; i++) allocator.invalidated(pasids[i]!);
  sink ^= allocator.fenceCompleted();
  return BATCH;
}

/** pasid.a: a PASID's whole life with no device bound (allocate, free, invalidation, fence) against Set add + delete. */
function quarantineCycleFigure(): Figure {
  const allocator = new PasidAllocator({ min: 1, max: PASID_MAX });
  const set = allocator.createSet('bench-vm', BATCH);
  const pasids = new Int32Array(BATCH);

  cycle(allocator, set, pasids);
  check(allocator.heldCount === 0 && allocator.quarantinedCount === 0, 'a batch left PASIDs held or quarantined');
  const first = Array.from(pasids);
  check(new Set(first).size === BATCH && first.every((pasid) => pasid >= 1), 'a batch did not get distinct PASIDs');
  // Before its invalidation and fence a freed PASID stays out of reach: a second batch meanwhile gets other ones.
  const second = new Int32Array(BATCH);
  for (let i = 0; i < BATCH; i++) set.free((pasids[i] = (set.allocate() as { pasid: number }).pasid));
  for (let i = 0; i < BATCH; i++) set.free((second[i] = (set.allocate() as { pasid: number }).pasid));
  const quarantined = new Set(pasids);
  check(
    second.every((pasid) => !quarantined.has(pasid)),
    'a quarantined PASID was handed out again',
  );
  for (let i = 0; i < BATCH; i++) allocator.invalidated(pasids[i]!);
  for (let i = 0; i < BATCH; i++) allocator.invalidated(second[i]!);
  check(allocator.fenceCompleted() === 2 * BATCH && allocator.quarantinedCount === 0, 'the fence released the wrong count');

  const keys = Int32Array.from(first);
  const plain = new Set<number>();
  return {
    id: 'pasid.a',
    title: `PASID allocate + free under quarantine (batches of ${BATCH}: free, no device bound, invalidation each, one fence)`,
    subject: 'PasidSet.allocate, PasidSet.free, PasidAllocator.invalidated(pasid), fenceCompleted per batch',
    baseline: `Set.add then Set.delete of the same ${BATCH} PASID numbers`,
    direction: 'cost',
    target: 2,
    unit: 'PASIDs',
    async measure() {
      const subject = rate(() => cycle(allocator, set, pasids), ROUND_MS);
      const baseline = rate(() => {
        for (let i = 0; i < BATCH; i++) plain.add(keys[i]!);
        for (let i = 0; i < BATCH; i++) plain.delete(keys[i]!);
        sink ^= plain.size;
        return BATCH;
      }, ROUND_MS);
      if (sink === 0.5) console.log(sink); // keeps the loops from being optimised away
      return { subject, baseline };
    },
  };
}

// ---- pasid.b: a PASID-cache invalidation over 1,024 bound PASIDs, as iommufd requests ----

const BOUND_PASIDS = 1024;
const BIND_SID = 0x20;
const PAGE = 4096;
const RAM_BYTES = 64 << 20;
/** Where a scalable-mode guest's structures start; everything is laid out from here, one page each. */
const TABLES_FROM = 0x100000;
const PASIDS_PER_TABLE = 64;
const WAIT_TYPE = INVALIDATION_DESCRIPTORS.find((kind) => kind.name === 'wait')!.type;
/** Requests each moved PASID costs the host: a new nested HWPT, the attach that replaces the old one, its destroy. */
const REQUESTS_PER_MOVED_PASID = 3;

/**
 * A scalable-mode guest programming a unit directly through its registers and a 256-bit queue, synchronously, so
 * that timing sees the unit and the host path and no promise machinery: one device whose PASIDs 1..1024 each
 * have a first-stage entry (own DID) that moves between two top tables.
 */
class PasidBindGuest {
  readonly memory = new GuestMemory();
  readonly ram = new ArrayBuffer(RAM_BYTES);
  readonly unit: VtdUnit;
  /** Each PASID's two first-stage top tables; `side` says which one its entry names now. */
  private readonly tops: Int32Array;
  side = 0;
  private readonly pasidTables: number[] = [];
  private next = TABLES_FROM;
  private readonly queue: number;
  private readonly status: number;
  private tail = 0;
  private token = 0;

  constructor() {
    this.memory.addRegion({ name: 'ram', start: 0, buffer: this.ram });
    this.unit = new VtdUnit({ memory: this.memory, config: 'x-scalable-mode=on,x-pasid-mode=on,x-flts=on,aw-bits=48', onInterrupt: () => undefined });
    const root = this.page();
    const context = this.page();
    const directory = this.page();
    this.queue = this.page();
    this.status = this.page();
    this.write(root + (BIND_SID >> 8) * 16, SCALABLE_ROOT_ENTRY, { LP: 1, LCTP: context / PAGE });
    this.write(context + (BIND_SID & 0x7f) * 32, SCALABLE_CONTEXT_ENTRY, { P: 1, PASIDE: 1, PDTS: 0, PASIDDIRPTR: directory / PAGE });
    for (let index = 0; index <= BOUND_PASIDS / PASIDS_PER_TABLE; index++) {
      const table = this.page();
      this.pasidTables.push(table);
      this.write(directory + index * 8, PASID_DIRECTORY_ENTRY, { P: 1, PTP: table / PAGE });
    }
    this.tops = new Int32Array(2 * (BOUND_PASIDS + 1));
    for (let pasid = 1; pasid <= BOUND_PASIDS; pasid++) {
      this.tops[2 * pasid] = this.page();
      this.tops[2 * pasid + 1] = this.page();
    }
    this.pointEntries();
    this.unit.write(OFFSET.RTADDR, 8, encodeBig(RTADDR_FIELDS, { RTA: root / PAGE, TTM: 1 }));
    this.unit.write(OFFSET.GCMD, 4, GCMD.SRTP);
    this.unit.write(OFFSET.IQA, 8, encodeBig(IQA_FIELDS, { IQA: this.queue / PAGE, QS: 0, DW: 1 }));
    this.unit.write(OFFSET.IQT, 8, 0n);
    this.unit.write(OFFSET.GCMD, 4, GCMD.QIE);
    this.invalidate(LEGACY_INVALIDATIONS.contextGlobal(), PASID_INVALIDATIONS.pasidCacheGlobal(), LEGACY_INVALIDATIONS.iotlbGlobal());
    this.unit.write(OFFSET.GCMD, 4, GCMD.QIE | GCMD.TE);
  }

  private page(): number {
    const address = this.next;
    this.next += PAGE;
    return address;
  }

  private write(address: number, table: FieldTable, values: Record<string, number>): void {
    const value = encodeBig(table, values);
    for (let q = table.sizeBits / 64 - 1; q >= 0; q--) this.memory.writeU64(address + q * 8, BigInt.asUintN(64, value >> BigInt(64 * q)));
  }

  /** Writes every PASID's entry naming its top table of the current side (untimed guest work). */
  pointEntries(): void {
    for (let pasid = 1; pasid <= BOUND_PASIDS; pasid++) {
      const table = this.pasidTables[Math.floor(pasid / PASIDS_PER_TABLE)]!;
      this.write(table + (pasid % PASIDS_PER_TABLE) * 64, SCALABLE_PASID_ENTRY, {
        P: 1,
        PGTT: PASID_PGTT.FIRST_STAGE,
        FSPTPTR: this.tops[2 * pasid + this.side]! / PAGE,
        DID: pasid,
      });
    }
  }

  topOf(pasid: number, side: number): number {
    return this.tops[2 * pasid + side]!;
  }

  /** Queues the descriptors and a status-writing wait, moves the tail, and checks the wait completed. */
  invalidate(...descriptors: bigint[]): void {
    const token = ++this.token;
    const wait = encodeBig(INVALIDATION_WAIT, { TYPE_LO: WAIT_TYPE, SW: 1, SDATA: token, SADDR: this.status / 4 });
    for (const descriptor of [...descriptors, wait]) {
      const slot = this.queue + this.tail * 32;
      for (let q = 0; q < 4; q++) this.memory.writeU64(slot + q * 8, BigInt.asUintN(64, descriptor >> BigInt(64 * q)));
      this.tail = (this.tail + 1) % (PAGE / 32);
    }
    this.unit.write(OFFSET.IQT, 8, BigInt(this.tail * 32));
    if (this.memory.readU32(this.status) !== token) throw new Error('pasid bench setup: the wait descriptor did not complete');
  }
}

/** A host with one device bound to an iommufd and a nest parent over the guest's RAM (what set-up leaves). */
function hostFor(guest: PasidBindGuest): { host: IommufdDryRun; nesting: IommufdNesting } {
  const host = new IommufdDryRun(FULL_VTD_HOST);
  const ram = new Uint8Array(guest.ram);
  const nesting = new IommufdNesting(host, { guestRam: [{ guestPhysical: 0, bytes: ram }], faultQueue: false });
  nesting.addDevice(BIND_SID, host.addVfioDevice());
  nesting.setUp();
  return { host, nesting };
}

/**
 * pasid.b: the guest moves each of 1,024 bound PASIDs to its other first-stage table and issues one global
 * PASID-cache invalidation; the unit re-reads the entries, NestingBackend rebinds each through IommufdNesting, and the
 * dry-run host takes every request. Baseline: the same requests, encoded and issued directly to a second dry-run host
 * in the same state, the least any VMM pays for them; the ratio is the cost of getting there from the guest's queue.
 */
function invalidationFigure(): Figure {
  const guest = new PasidBindGuest();
  const { host, nesting } = hostFor(guest);
  const backend = new NestingBackend(nesting, guest.unit, { walkGuest: (request) => guest.unit.translate(request) });
  const problems: string[] = [];
  backend.on('refused', (_sid, pasid, reason) => problems.push(`PASID ${pasid}: ${reason}`));
  backend.on('error', (_sid, pasid, error) => problems.push(`PASID ${pasid}: ${error.message}`));
  const pasids = Array.from({ length: BOUND_PASIDS }, (_, i) => i + 1);
  backend.attach(BIND_SID, pasids);
  check(problems.length === 0, `binding refused: ${problems[0]}`);
  check(nesting.bindings().filter((binding) => !binding.passThrough).length === BOUND_PASIDS, 'not every PASID is bound');

  const move = (): void => {
    guest.side ^= 1;
    guest.pointEntries();
    host.requests.length = 0;
  };
  const invalidateAll = (): number => {
    guest.invalidate(PASID_INVALIDATIONS.pasidCacheGlobal());
    return 1;
  };
  // What one invalidation costs the host, and that an invalidation of unchanged entries costs it nothing.
  move();
  invalidateAll();
  const perInvalidation = host.requests.length;
  check(
    perInvalidation === REQUESTS_PER_MOVED_PASID * BOUND_PASIDS && host.requests.every((request) => request.result === 0),
    `one invalidation gave ${perInvalidation} requests (${host.requests.filter((r) => r.result !== 0).length} refused), expected ${REQUESTS_PER_MOVED_PASID * BOUND_PASIDS}`,
  );
  check(nesting.bindings().every((binding) => binding.hwptId !== undefined) && problems.length === 0, `rebinding failed: ${problems[0]}`);
  host.requests.length = 0;
  invalidateAll();
  check(host.requests.length === 0, `an invalidation of unchanged entries gave ${host.requests.length} requests`);

  // The baseline host: same device, same parent, each PASID attached to its own nested HWPT.
  const direct = hostFor(guest);
  const cdev = 1;
  const devId = direct.host.objectsOf('device')[0]!;
  const parent = direct.host.objectsOf('hwpt-paging')[0] ?? 0;
  const current = new Int32Array(BOUND_PASIDS + 1);
  let side = 0;
  const allocLayout = IOCTLS.IOMMU_HWPT_ALLOC.layout;
  const attachLayout = IOCTLS.VFIO_DEVICE_ATTACH_IOMMUFD_PT.layout;
  const destroyLayout = IOCTLS.IOMMU_DESTROY.layout;
  const issue = (name: keyof typeof IOCTLS, argument: Uint8Array, options: Parameters<IommufdDryRun['ioctl']>[2] = {}): void => {
    if (direct.host.ioctl(IOCTLS[name].request, argument, options) !== 0) throw new Error(`pasid bench baseline: ${name} refused`);
  };
  /** Moves every PASID to a fresh nested HWPT on `side`'s table: allocate, attach (replacing), destroy the old. */
  const rebindDirectly = (): number => {
    side ^= 1;
    for (let pasid = 1; pasid <= BOUND_PASIDS; pasid++) {
      const data = encodeStruct(IOMMU_HWPT_VTD_S1_LAYOUT, { flags: 0n, pgtblAddr: BigInt(guest.topOf(pasid, side)), addrWidth: 48 });
      const alloc = encodeStruct(allocLayout, {
        size: allocLayout.size,
        flags: HWPT_ALLOC_FLAGS.bits.PASID,
        devId,
        ptId: parent,
        outHwptId: 0,
        dataType: HWPT_DATA_TYPE.values.VTD_S1,
        dataLen: data.length,
        dataUptr: 0n,
        faultId: 0,
      });
      issue('IOMMU_HWPT_ALLOC', alloc, { payloads: [{ offset: allocLayout.offsetOf('dataUptr'), buffer: data }] });
      const hwpt = readU32(allocLayout, alloc, 'outHwptId');
      issue(
        'VFIO_DEVICE_ATTACH_IOMMUFD_PT',
        encodeStruct(attachLayout, { argsz: attachLayout.size, flags: VFIO_ATTACH_FLAGS.bits.PASID, ptId: hwpt, pasid }),
        { device: cdev },
      );
      if (current[pasid] !== 0) issue('IOMMU_DESTROY', encodeStruct(destroyLayout, { size: destroyLayout.size, id: current[pasid]! }));
      current[pasid] = hwpt;
    }
    direct.host.requests.length = 0;
    return 1;
  };
  check(parent > 0, 'the baseline host has no nest parent');
  rebindDirectly();
  rebindDirectly();
  check(direct.host.objectsOf('hwpt-nested').length === BOUND_PASIDS, 'the baseline host holds the wrong number of nested HWPTs');

  const subjectRates: number[] = [];
  const baselineRates: number[] = [];
  const subjectPath = 'queue -> VtdUnit PASID-cache invalidation -> NestingBackend -> IommufdNesting -> dry-run iommufd (entry rewrites untimed)';
  const baselinePath = `the same ${perInvalidation} ioctls encoded and issued directly to a dry-run iommufd in the same state`;
  /** The harness prints rates; the time per invalidation (and per request) is their inverse, at the same median. */
  const timing = (rates: number[]): string => {
    const median = [...rates].sort((a, b) => a - b)[Math.floor(rates.length / 2)]!;
    return `${(1000 / median).toFixed(1)} ms per invalidation, ${(1e6 / median / perInvalidation).toFixed(1)} us per request`;
  };
  const figure: Figure = {
    id: 'pasid.b',
    title: `a guest PASID-cache invalidation over ${BOUND_PASIDS} bound PASIDs, each moved to another first-stage table: ${perInvalidation} iommufd requests per invalidation (${REQUESTS_PER_MOVED_PASID} per PASID: HWPT_ALLOC, ATTACH_PT, DESTROY)`,
    subject: subjectPath,
    baseline: baselinePath,
    direction: 'cost',
    // At most 3x: the path from the guest's queue to the requests may cost twice what issuing them does, no more.
    target: 3,
    unit: 'invalidations',
    async measure() {
      const subject = rateExcludingSetup(move, invalidateAll, ROUND_MS);
      const baseline = rate(rebindDirectly, ROUND_MS);
      subjectRates.push(subject);
      baselineRates.push(baseline);
      figure.subject = `${subjectPath}; ${timing(subjectRates)}`;
      figure.baseline = `${baselinePath}; ${timing(baselineRates)}`;
      return { subject, baseline };
    },
  };
  return figure;
}

export const PASID_FIGURES: Readonly<Record<string, () => Figure>> = {
  'pasid.a': quarantineCycleFigure,
  'pasid.b': invalidationFigure,
};
