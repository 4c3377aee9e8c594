/** Scalable-mode caches and invalidation scopes: cache, change the guest tables behind it, invalidate, walk again. Plus bad input. */
import { strict as assert } from 'node:assert';
import { FSTS, OFFSET } from '../../lib/vtd/register-bits';
import { PASID_PGTT } from '../../lib/vtd/structures';
import { ScalableGuest, pasidDescriptor as P } from './scalable-guest';
import { PAGE, SID, descriptor } from './unit-guest';

const SCALABLE = 'x-scalable-mode=on,aw-bits=48';
const FIRST_STAGE = 'x-scalable-mode=on,x-flts=on,aw-bits=48,x-pasid-mode=on';
const NESTED = `${FIRST_STAGE},x-nested=on`;

function iqe(guest: ScalableGuest): boolean {
  return (guest.read32(OFFSET.FSTS) & FSTS.IQE) !== 0;
}

describe('VtdUnit scalable-mode invalidation scopes', () => {
  it('PASID cache: domain and PASID-selective invalidation act on the DID/PASID they name; global on all', () => {
    const guest = new ScalableGuest(SCALABLE);
    guest.scalableContext();
    const old = guest.secondStage(SID, 0, 1);
    guest.writer.mapSecond(old, 4, 0x200000, 0x300000);
    guest.enableScalable();
    guest.setupWideQueue();
    assert.equal(guest.reach(0x200000), '0x300000');
    // A new PASID entry (another DID and table) behind the cached one.
    const fresh = guest.secondStage(SID, 0, 2);
    guest.writer.mapSecond(fresh, 4, 0x200000, 0x500000);
    guest.invalidate(P.cacheDomain(2), P.cachePasid(1, 1));
    assert.equal(guest.reach(0x200000), '0x300000', 'other DID / other PASID: still cached');
    guest.invalidate(P.cachePasid(1, 0));
    assert.equal(guest.reach(0x200000), '0x500000', 'PASID-selective for (DID 1, PASID 0)');
    guest.secondStage(SID, 0, 3);
    guest.invalidate(P.cacheDomain(2));
    assert.equal(guest.reach(0x200000), 'fault 0x86', 'domain-selective for DID 2: the new entry (DID 3) has no mapping');
    guest.secondStage(SID, 0, 1, 4, { SSPTPTR: old / PAGE });
    guest.invalidate(P.cacheGlobal());
    assert.equal(guest.reach(0x200000), '0x300000', 'global');
    assert.ok(!iqe(guest));
  });

  it('PASID-based IOTLB invalidation drops first-stage entries of (DID, PASID); IOTLB domain invalidation does not', () => {
    const guest = new ScalableGuest(FIRST_STAGE);
    guest.scalableContext();
    const top = guest.firstStage(SID, 5, 9);
    guest.writer.mapFirst(top, 4, 0x1000n, 0x400000);
    guest.writer.mapFirst(top, 4, 0x2000n, 0x401000);
    guest.enableScalable();
    guest.setupWideQueue();
    assert.equal(guest.reach(0x1000, { pasid: 5 }), '0x400000');
    assert.equal(guest.reach(0x2000, { pasid: 5 }), '0x401000');
    guest.writer.mapFirst(top, 4, 0x1000n, 0x600000);
    guest.writer.mapFirst(top, 4, 0x2000n, 0x601000);
    guest.invalidate(P.iotlbPasid(9, 6), P.iotlbPasid(8, 5), descriptor.iotlbDomain(9));
    assert.equal(guest.reach(0x1000, { pasid: 5 }), '0x400000', 'other PASID, other DID, and type 2 leave first-stage entries');
    guest.invalidate(P.iotlbPages(9, 5, 0x2000));
    assert.equal(guest.reach(0x1000, { pasid: 5 }), '0x400000', 'page-selective: another page stays');
    assert.equal(guest.reach(0x2000, { pasid: 5 }), '0x601000', 'page-selective: its page is walked again');
    guest.invalidate(P.iotlbPasid(9, 5));
    assert.equal(guest.reach(0x1000, { pasid: 5 }), '0x600000', 'all of the PASID');
    guest.invalidate(P.iotlbPages(9, 5, 0, 0x3f));
    assert.ok(iqe(guest), 'AM beyond CAP.MAMV is an invalid descriptor');
  });

  it('page-selective PASID-based invalidation with AM covers the aligned range; IH changes nothing for leaf-only caches', () => {
    const guest = new ScalableGuest(FIRST_STAGE);
    guest.scalableContext();
    const top = guest.firstStage(SID, 5, 9);
    for (let i = 0; i < 8; i++) guest.writer.mapFirst(top, 4, BigInt(0x10000 + i * PAGE), 0x400000 + i * PAGE);
    guest.enableScalable();
    guest.setupWideQueue();
    for (let i = 0; i < 8; i++) guest.reach(0x10000 + i * PAGE, { pasid: 5 });
    for (let i = 0; i < 8; i++) guest.writer.mapFirst(top, 4, BigInt(0x10000 + i * PAGE), 0x800000 + i * PAGE);
    guest.invalidate(P.iotlbPages(9, 5, 0x14000, 2, 1));
    const seen = Array.from({ length: 8 }, (_, i) => guest.reach(0x10000 + i * PAGE, { pasid: 5 }));
    assert.deepEqual(seen, ['0x400000', '0x401000', '0x402000', '0x403000', '0x804000', '0x805000', '0x806000', '0x807000']);
  });

  it('IOTLB domain invalidation drops second-stage entries of the DID for every PASID; page-selective drops nested entries of the DID whatever the address', () => {
    const guest = new ScalableGuest(NESTED);
    guest.scalableContext();
    const a = guest.secondStage(SID, 0, 1);
    const b = guest.secondStage(SID, 3, 1);
    guest.writer.mapSecond(a, 4, 0x200000, 0x300000);
    guest.writer.mapSecond(b, 4, 0x200000, 0x310000);
    guest.enableScalable();
    guest.setupWideQueue();
    assert.equal(guest.reach(0x200000), '0x300000');
    assert.equal(guest.reach(0x200000, { pasid: 3 }), '0x310000');
    guest.writer.mapSecond(a, 4, 0x200000, 0x320000);
    guest.writer.mapSecond(b, 4, 0x200000, 0x330000);
    guest.invalidate(descriptor.iotlbDomain(2));
    assert.equal(guest.reach(0x200000, { pasid: 3 }), '0x310000', 'another DID');
    guest.invalidate(descriptor.iotlbDomain(1));
    assert.equal(guest.reach(0x200000), '0x320000');
    assert.equal(guest.reach(0x200000, { pasid: 3 }), '0x330000');

    // Nested PASID 4 in DID 6 (first-stage tables at guest-physical 0x1800000, identity-mapped by the second stage).
    const ss = guest.writer.page();
    const fsTop = 0x1800000;
    for (let i = 0; i < 4; i++) guest.writer.mapSecond(ss, 4, fsTop + i * PAGE, fsTop + i * PAGE);
    for (let i = 0; i < 3; i++) guest.memory.writeU64(fsTop + i * PAGE, BigInt(fsTop + (i + 1) * PAGE) | 0x7n);
    guest.memory.writeU64(fsTop + 3 * PAGE, 0x700000n | 0x7n);
    guest.writer.mapSecond(ss, 4, 0x700000, 0x900000);
    guest.pasidEntry(SID, 4, { PGTT: PASID_PGTT.NESTED, AW: 2, SSPTPTR: ss / PAGE, FSPTPTR: fsTop / PAGE, DID: 6 });
    assert.equal(guest.reach(0x0, { pasid: 4 }), '0x900000');
    guest.writer.mapSecond(ss, 4, 0x700000, 0x980000);
    guest.invalidate(P.iotlbPasid(6, 9));
    assert.equal(guest.reach(0x0, { pasid: 4 }), '0x900000', 'cached');
    guest.invalidate(descriptor.iotlbPage(6, 0x700000));
    assert.equal(guest.reach(0x0, { pasid: 4 }), '0x980000', 'a second-stage address invalidates the nested entry');
  });

  it('context-cache device-selective invalidation drops the scalable context entry (and PASID entries found through it)', () => {
    const guest = new ScalableGuest(SCALABLE);
    guest.scalableContext();
    const top = guest.secondStage(SID, 0, 1);
    guest.writer.mapSecond(top, 4, 0x200000, 0x300000);
    guest.enableScalable();
    guest.setupWideQueue();
    guest.reach(0x200000);
    guest.scalableContext(SID, { P: 0 });
    guest.invalidate(descriptor.contextDevice(SID + 1));
    assert.equal(guest.reach(0x200000), '0x300000');
    guest.invalidate(descriptor.contextDevice(SID));
    assert.equal(guest.reach(0x200000), 'fault 0x41');
  });

  it('PASID-based device-TLB invalidation is accepted; malformed PASID descriptors are IQE', () => {
    const guest = new ScalableGuest(SCALABLE);
    guest.enableScalable();
    guest.setupWideQueue();
    guest.invalidate(P.deviceTlb(SID, 5));
    assert.ok(!iqe(guest));
    guest.invalidate(P.cache(2));
    assert.ok(iqe(guest), 'PASID-cache granularity 2 is reserved');
  });

  it('PASID descriptors in a 128-bit queue are invalid (spec); compat=qemu-7.2 takes them', () => {
    for (const [config, expected] of [
      ['x-scalable-mode=on', true],
      ['x-scalable-mode=on,compat=qemu-7.2', false],
    ] as const) {
      const guest = new ScalableGuest(config);
      guest.setupQueue();
      guest.submit([P.cacheGlobal()], 0);
      assert.equal(iqe(guest), expected, config);
    }
  });
});

describe('VtdUnit scalable mode with hostile tables', () => {
  it('structures outside RAM, self-referencing tables and reserved bits end in faults after a bounded number of reads', () => {
    const guest = new ScalableGuest(FIRST_STAGE);
    guest.scalableContext();
    const top = guest.firstStage(SID, 5, 9);
    // The top table's entry 0 points at itself: the walk reaches level 1 with a non-leaf and faults.
    guest.memory.writeU64(top, BigInt(top) | 0x7n);
    guest.enableScalable();
    const reads = countReads(guest, () => guest.request(0x0, { pasid: 5 }));
    assert.ok(reads <= 32, `${reads} entry reads`);
    // Directory pointing at itself as the PASID table: whatever it reads there, it must answer with a fault.
    guest.scalableContext(SID, { PASIDDIRPTR: guest.directoryOf(SID) / PAGE });
    guest.directoryEntry(SID, 0, { PTP: guest.directoryOf(SID) / PAGE });
    guest.globalContextInvalidate();
    const result = guest.request(0x0, { pasid: 5 });
    assert.ok(!result.ok);
    // Every PASID in a maximal directory outside RAM: one fault each, nothing thrown.
    guest.scalableContext(SID, { PASIDDIRPTR: 0xf_ffff_f000 / PAGE, PDTS: 7 });
    guest.globalContextInvalidate();
    for (const pasid of [0, 1, 0x3fff, 0xfffff]) {
      const r = guest.request(0x1000, { pasid });
      assert.ok(!r.ok);
    }
  });
});

function countReads(guest: ScalableGuest, run: () => unknown): number {
  const memory = guest.memory;
  const original = memory.readEntry.bind(memory);
  let reads = 0;
  memory.readEntry = (address, out) => {
    reads++;
    return original(address, out);
  };
  try {
    run();
  } finally {
    memory.readEntry = original;
  }
  return reads;
}
