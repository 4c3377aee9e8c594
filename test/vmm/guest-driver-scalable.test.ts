/** The guest driver's scalable-mode sequences (tables, PASID entries, paging, 256-bit queue) against the real unit behind the testbed's MMIO. */
import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import {
  FIRST_STAGE_FORMAT,
  GuestPhysicalTables,
  LEGACY_INVALIDATIONS,
  PASID_ENTRY,
  PASID_INVALIDATIONS,
  PageAllocator,
  PagingTables,
  ScalableTables,
  SECOND_STAGE_FORMAT,
  VtdDriver,
  ramTables,
  type PageAccess,
} from '../../lib/vmm/guest-driver';
import { DMAR_BASE, TestbedMachine } from '../../lib/vmm/testbed';
import { decodeBig } from '../../lib/vtd/bitfield';
import { faultCode, type FaultReasonName } from '../../lib/vtd/fault-reasons';
import { FSTS, OFFSET } from '../../lib/vtd/register-bits';
import { QUEUE_POINTER_FIELDS, RTADDR_FIELDS } from '../../lib/vtd/registers';
import { SCALABLE_CONTEXT_ENTRY, SCALABLE_ROOT_ENTRY } from '../../lib/vtd/structures';
import type { TranslationRequest } from '../../lib/vtd/translation-result';
import { VtdUnit } from '../../lib/vtd/unit';

const CONFIG = 'caching-mode=on,x-scalable-mode=on,x-flts=on,x-nested=on,aw-bits=48';
const SID = 0x20;
/** Bus 0, devfn 0xa0 (20.0): in the upper half of the root entry SID 0x20 uses. */
const UPPER_SID = 0x00a0;
const IOVA = 0x0a000000;
const GPA = 0x02000000;
const PAGE = 4096;
const RW: PageAccess = { read: true, write: true };
const RO: PageAccess = { read: true, write: false };

/** A testbed whose unit a driver programs through MMIO; the test asks the unit directly what a request reaches. */
class Guest {
  unit!: VtdUnit;
  readonly machine: TestbedMachine;
  readonly pages: PageAllocator;
  readonly vtd: VtdDriver;
  readonly tables: ScalableTables;

  constructor(config = CONFIG) {
    this.machine = new TestbedMachine({
      builtInEdu: false,
      ramBytes: 64 << 20,
      iommu: (memory) => (this.unit = new VtdUnit({ memory, config, onInterrupt: () => undefined })),
    });
    this.pages = new PageAllocator(this.machine, 0x100000);
    this.vtd = new VtdDriver(this.machine, DMAR_BASE, this.pages);
    this.tables = new ScalableTables(this.machine, this.pages);
  }

  paging(format = SECOND_STAGE_FORMAT): Promise<PagingTables> {
    return PagingTables.create(this.machine, format, ramTables(this.pages));
  }

  async enable(): Promise<void> {
    await this.vtd.setRootTable(await this.tables.root, 'scalable');
    await this.vtd.enableQueue(256);
    await this.vtd.invalidate([LEGACY_INVALIDATIONS.contextGlobal(), PASID_INVALIDATIONS.pasidCacheGlobal(), LEGACY_INVALIDATIONS.iotlbGlobal()]);
    await this.vtd.enableTranslation();
  }

  /** The address a request reaches, or `fault 0x..`. */
  reach(iova: number, options: Partial<TranslationRequest> = {}): string {
    const result = this.unit.translate({ sid: SID, iova: BigInt(iova), write: false, ...options });
    return result.ok ? `0x${result.address.toString(16)}` : `fault 0x${result.fault.reason.toString(16)}`;
  }

  async readStructure(address: number, qwords: number): Promise<bigint> {
    let value = 0n;
    for (let q = qwords - 1; q >= 0; q--) value = (value << 64n) | (await this.machine.readMemory64(BigInt(address + q * 8)));
    return value;
  }
}

const hex = (value: number) => `0x${value.toString(16)}`;
const fault = (name: FaultReasonName) => `fault ${hex(faultCode(name))}`;

describe('guest driver: scalable mode', () => {
  let guest: Guest;
  afterEach(() => guest?.machine.close());

  it('second stage (PGTT 2) behind RID_PASID 0: RTADDR.TTM, root and context entries decode to what the driver meant', async () => {
    guest = new Guest();
    const second = await guest.paging();
    await second.map(IOVA, GPA, 2, RW);
    await second.map(IOVA + 0x10000, GPA + 0x10000, 1, RO);
    await guest.tables.addDevice(SID);
    await guest.tables.setPasidEntry(SID, 0, PASID_ENTRY.secondStage(2, second));
    await guest.enable();

    assert.equal(guest.reach(IOVA + 0x1234, { write: true }), hex(GPA + 0x1234));
    assert.equal(guest.reach(IOVA + 0x10010), hex(GPA + 0x10010));
    assert.equal(guest.reach(IOVA + 0x10010, { write: true }), fault('SM_WRITE'));
    assert.equal(guest.reach(IOVA + 0x20000), fault('SM_READ'));

    const rtaddr = decodeBig(RTADDR_FIELDS, await guest.vtd.read64(OFFSET.RTADDR));
    assert.equal(rtaddr.TTM, 1n);
    const root = decodeBig(SCALABLE_ROOT_ENTRY, await guest.readStructure(Number(rtaddr.RTA) * PAGE, 2));
    assert.equal(root.LP, 1n);
    assert.equal(root.UP, 0n, 'no device above devfn 127: the upper half stays absent');
    const context = decodeBig(SCALABLE_CONTEXT_ENTRY, await guest.readStructure(Number(root.LCTP) * PAGE + SID * 32, 4));
    assert.deepEqual([context.P, context.PASIDE, context.PDTS, context.RID_PASID], [1n, 0n, 0n, 0n]);
  });

  it('a device at devfn 128 and above gets the upper context table; both halves of the root entry stay present', async () => {
    guest = new Guest();
    const second = await guest.paging();
    await second.map(IOVA, GPA, 1, RW);
    for (const sid of [SID, UPPER_SID]) {
      await guest.tables.addDevice(sid);
      await guest.tables.setPasidEntry(sid, 0, PASID_ENTRY.secondStage(2, second));
    }
    await guest.enable();
    assert.equal(guest.reach(IOVA + 8, { sid: UPPER_SID }), hex(GPA + 8));
    assert.equal(guest.reach(IOVA + 8), hex(GPA + 8));
    const root = decodeBig(SCALABLE_ROOT_ENTRY, await guest.readStructure((await guest.tables.root) + (UPPER_SID >> 8) * 16, 2));
    assert.deepEqual([root.LP, root.UP], [1n, 1n]);
    assert.notEqual(root.LCTP, root.UCTP);
  });

  it('first stage (PGTT 1): requests without PASID are user requests; supervisor and read-only pages refuse them', async () => {
    guest = new Guest();
    const first = await guest.paging(FIRST_STAGE_FORMAT);
    await first.map(IOVA, GPA, 1, RW);
    await first.map(IOVA + PAGE, GPA + 0x8000, 1, RO);
    await first.map(IOVA + 2 * PAGE, GPA + 0x9000, 1, { ...RW, supervisorOnly: true });
    await guest.tables.addDevice(SID);
    await guest.tables.setPasidEntry(SID, 0, PASID_ENTRY.firstStage(3, first));
    await guest.enable();
    assert.equal(guest.reach(IOVA + 0x10, { write: true }), hex(GPA + 0x10));
    assert.equal(guest.reach(IOVA + PAGE + 0x10), hex(GPA + 0x8010));
    assert.equal(guest.reach(IOVA + PAGE, { write: true }), fault('SM_WRITE'));
    assert.equal(guest.reach(IOVA + 2 * PAGE), fault('SM_USER_SUPERVISOR'));
    assert.equal(guest.reach(IOVA + 3 * PAGE), fault('SM_FIRST_STAGE_NOT_PRESENT'));
    await assert.rejects(first.map(IOVA + 4 * PAGE, GPA, 1, { read: false, write: true }), /always readable/);
  });

  it('first stage agrees with the unit on random mappings (IA-32e entries from the field tables)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uniqueArray(
          fc.record({ page: fc.integer({ min: 0, max: (1 << 24) - 1 }), target: fc.integer({ min: 0x3000, max: 0x3fff }), write: fc.boolean() }),
          { minLength: 1, maxLength: 12, selector: (m) => m.page },
        ),
        async (mappings) => {
          guest?.machine.close();
          guest = new Guest();
          const first = await guest.paging(FIRST_STAGE_FORMAT);
          for (const m of mappings) await first.map(m.page * PAGE, m.target * PAGE, 1, { read: true, write: m.write });
          await guest.tables.addDevice(SID);
          await guest.tables.setPasidEntry(SID, 0, PASID_ENTRY.firstStage(1, first));
          await guest.enable();
          for (const m of mappings) {
            assert.equal(guest.reach(m.page * PAGE + 0x321), hex(m.target * PAGE + 0x321));
            assert.equal(guest.reach(m.page * PAGE, { write: true }), m.write ? hex(m.target * PAGE) : fault('SM_WRITE'));
          }
        },
      ),
      { numRuns: 15 },
    );
  });

  it('nested (PGTT 3): first-stage tables in guest-physical space; taking the top table out of the second stage faults in it', async () => {
    guest = new Guest();
    const second = await guest.paging();
    const space = new GuestPhysicalTables(guest.pages, second, 0x80000000);
    const first = await PagingTables.create(guest.machine, FIRST_STAGE_FORMAT, space);
    await first.map(IOVA, 0x90000000, 1, RW);
    await second.map(0x90000000, GPA, 1, RW);
    assert.equal(first.top, 0x80000000, 'FSPTPTR is the guest-physical address of the top table');
    assert.equal(space.size, 4, 'one table per level, each mapped by the second stage');
    await guest.tables.addDevice(SID);
    await guest.tables.setPasidEntry(SID, 0, PASID_ENTRY.nested(4, first, second));
    await guest.enable();
    assert.equal(guest.reach(IOVA + 0x44, { write: true }), hex(GPA + 0x44));

    await second.unmap(0x80000000, 1);
    await guest.vtd.invalidate([LEGACY_INVALIDATIONS.iotlbGlobal()]);
    assert.equal(guest.reach(IOVA + 0x44), fault('SM_FIRST_STAGE_PML4_READ_NESTED'));
  });

  it('a PASID-based IOTLB page invalidation in the 256-bit queue is what withdraws a cached first-stage translation', async () => {
    guest = new Guest();
    const first = await guest.paging(FIRST_STAGE_FORMAT);
    await first.map(IOVA, GPA, 2, RW);
    await guest.tables.addDevice(SID);
    await guest.tables.setPasidEntry(SID, 0, PASID_ENTRY.firstStage(5, first));
    await guest.enable();
    assert.equal(guest.reach(IOVA + PAGE), hex(GPA + PAGE));
    await first.unmap(IOVA + PAGE, 1);
    assert.equal(guest.reach(IOVA + PAGE), hex(GPA + PAGE), 'the unit may use its cached translation until the guest invalidates');
    await guest.vtd.invalidate([PASID_INVALIDATIONS.iotlbPages(5, 1, IOVA + PAGE)]);
    assert.equal(guest.reach(IOVA + PAGE), hex(GPA + PAGE), "another PASID's invalidation leaves it");
    await guest.vtd.invalidate([PASID_INVALIDATIONS.iotlbPages(5, 0, IOVA + PAGE)]);
    assert.equal(guest.reach(IOVA + PAGE), fault('SM_FIRST_STAGE_NOT_PRESENT'));
    assert.equal(guest.reach(IOVA), hex(GPA), 'the page beside it stays');
  });

  it('the 256-bit queue wraps: 100 invalidations of a descriptor and a wait each all complete, IQH meets IQT, no IQE', async () => {
    guest = new Guest();
    await guest.tables.addDevice(SID);
    await guest.enable();
    for (let i = 0; i < 100; i++) await guest.vtd.invalidate([PASID_INVALIDATIONS.iotlbPasid(1, i)]);
    const head = decodeBig(QUEUE_POINTER_FIELDS, await guest.vtd.read64(OFFSET.IQH));
    const tail = decodeBig(QUEUE_POINTER_FIELDS, await guest.vtd.read64(OFFSET.IQT));
    assert.deepEqual(head, tail);
    assert.equal((await guest.vtd.read32(OFFSET.FSTS)) & FSTS.IQE, 0);
  });

  it('fault records carry the PASID of a request with PASID (FRCD.PP/PV decoded)', async () => {
    guest = new Guest(`${CONFIG},x-pasid-mode=on`);
    const second = await guest.paging();
    await guest.tables.addDevice(SID, { pasidEnabled: true });
    await guest.tables.setPasidEntry(SID, 0, PASID_ENTRY.secondStage(2, second));
    await guest.enable();
    // The unit has one fault record (as QEMU): read each before the next fault.
    assert.equal(guest.reach(IOVA, { pasid: 5 }), fault('SM_PASID_ENTRY_NOT_PRESENT'));
    const withPasid = await guest.vtd.faults();
    assert.deepEqual(
      withPasid.records.map((r) => [r.reason, r.pasid, r.address, r.write]),
      [[faultCode('SM_PASID_ENTRY_NOT_PRESENT'), 5, BigInt(IOVA), false]],
    );
    await guest.vtd.clearFaults(withPasid.records);
    assert.equal(guest.reach(IOVA + PAGE, { write: true }), fault('SM_WRITE'));
    const { records } = await guest.vtd.faults();
    assert.deepEqual(
      records.map((r) => [r.reason, r.pasid, r.address, r.write]),
      [[faultCode('SM_WRITE'), undefined, BigInt(IOVA + PAGE), true]],
    );
    await guest.vtd.clearFaults(records);
    assert.deepEqual((await guest.vtd.faults()).records, []);
  });
});
