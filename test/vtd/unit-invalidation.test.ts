/** VtdUnit caches and register-based invalidation: CCMD/IOTLB read-backs, scopes, stale entries until invalidated. */
import { strict as assert } from 'node:assert';
import { encodeBig } from '../../lib/vtd/bitfield';
import { OFFSET } from '../../lib/vtd/register-bits';
import { CCMD_FIELDS, IOTLB_FIELDS } from '../../lib/vtd/registers';
import { SID, TestGuest } from './unit-guest';

function address(guest: TestGuest, iova: number, sid = SID): number | undefined {
  const result = guest.translate(iova, false, sid);
  return result.ok ? result.address : undefined;
}

/** Two devices in two domains, each with 0x1000 -> A and 0x2000 -> B; translations cached. */
function cachedGuest(): TestGuest {
  const guest = new TestGuest();
  guest.setContext(0x20, { did: 1 });
  guest.setContext(0x28, { did: 2 });
  for (const sid of [0x20, 0x28]) {
    guest.map(sid, 0x1000, 0x300000);
    guest.map(sid, 0x2000, 0x301000);
  }
  guest.enable();
  for (const sid of [0x20, 0x28]) {
    assert.equal(address(guest, 0x1000, sid), 0x300000);
    assert.equal(address(guest, 0x2000, sid), 0x301000);
  }
  // The guest changes both mappings in memory without invalidating yet.
  for (const sid of [0x20, 0x28]) {
    guest.map(sid, 0x1000, 0x400000);
    guest.map(sid, 0x2000, 0x401000);
  }
  return guest;
}

describe('VtdUnit register-based invalidation', () => {
  it('reads back CCMD 0x2800000000000000 and IOTLB 0x1200000000000000 after global invalidations', () => {
    const guest = new TestGuest();
    guest.globalContextInvalidate();
    guest.globalIotlbInvalidate();
    assert.equal(guest.read64(OFFSET.CCMD), 0x2800000000000000n);
    assert.equal(guest.read64(OFFSET.IOTLB), 0x1200000000000000n);
  });

  it('acts on a write of the upper dword alone, not on the lower one', () => {
    const guest = cachedGuest();
    guest.unit.write(OFFSET.IOTLB, 4, 0);
    assert.equal(address(guest, 0x1000), 0x300000);
    guest.unit.write(OFFSET.IOTLB + 4, 4, Number(encodeBig(IOTLB_FIELDS, { IVT: 1, IIRG: 1 }) >> 32n));
    assert.equal(address(guest, 0x1000), 0x400000);
    assert.equal(guest.read32(OFFSET.IOTLB + 4), 0x12000000);
  });

  it('keeps stale translations until the IOTLB is invalidated', () => {
    const guest = cachedGuest();
    assert.equal(address(guest, 0x1000), 0x300000, 'stale but cached');
    guest.globalIotlbInvalidate();
    assert.equal(address(guest, 0x1000), 0x400000);
  });

  it('domain-selective IOTLB invalidation touches only that domain', () => {
    const guest = cachedGuest();
    guest.unit.write(OFFSET.IOTLB, 8, encodeBig(IOTLB_FIELDS, { IVT: 1, IIRG: 2, DID: 2 }));
    assert.equal((guest.read64(OFFSET.IOTLB) >> 57n) & 3n, 2n, 'IAIG domain');
    assert.equal(address(guest, 0x1000, 0x20), 0x300000);
    assert.equal(address(guest, 0x1000, 0x28), 0x400000);
  });

  it('page-selective invalidation covers 2^AM pages of one domain', () => {
    const guest = cachedGuest();
    guest.pageIotlbInvalidate(1, 0x1000);
    assert.equal(address(guest, 0x1000), 0x400000);
    assert.equal(address(guest, 0x2000), 0x301000, 'next page untouched');
    assert.equal(address(guest, 0x1000, 0x28), 0x300000, 'other domain untouched');
    guest.pageIotlbInvalidate(1, 0x0, 2);
    assert.equal(address(guest, 0x2000), 0x401000);
    assert.equal((guest.read64(OFFSET.IOTLB) >> 57n) & 3n, 3n, 'IAIG page');
  });

  it('page-selective invalidation removes a large page it overlaps', () => {
    const guest = new TestGuest();
    guest.setContext(SID);
    guest.map(SID, 0x200000, 0x600000, { size: '2m' });
    guest.enable();
    assert.equal(address(guest, 0x212345), 0x612345);
    guest.map(SID, 0x200000, 0xa00000, { size: '2m' });
    guest.pageIotlbInvalidate(1, 0x210000);
    assert.equal(address(guest, 0x212345), 0xa12345);
  });

  it('AM above MAMV is refused: IAIG 0 and nothing dropped', () => {
    const guest = cachedGuest();
    guest.pageIotlbInvalidate(1, 0, 19);
    assert.equal((guest.read64(OFFSET.IOTLB) >> 57n) & 3n, 0n);
    assert.equal(address(guest, 0x1000), 0x300000);
  });

  it('context cache: device-selective with FM, domain-selective, global', () => {
    const guest = new TestGuest();
    for (const sid of [0x20, 0x24, 0x28]) {
      guest.setContext(sid, { did: sid });
      guest.map(sid, 0x1000, 0x300000);
    }
    guest.enable();
    for (const sid of [0x20, 0x24, 0x28]) assert.ok(guest.translate(0x1000, false, sid).ok);
    // Remove all three context entries in memory: cached contexts still translate.
    for (const sid of [0x20, 0x24, 0x28]) guest.setContext(sid, {}, false);
    assert.equal(guest.unit.contextCache.size, 3);
    // Device 0x20 with FM 1 (function bit 2 masked) also covers 0x24, not 0x28.
    guest.unit.write(OFFSET.CCMD, 8, encodeBig(CCMD_FIELDS, { ICC: 1, CIRG: 3, SID: 0x20, FM: 1 }));
    assert.equal((guest.read64(OFFSET.CCMD) >> 59n) & 3n, 3n, 'CAIG device');
    assert.ok(!guest.translate(0x1000, false, 0x20).ok);
    assert.ok(!guest.translate(0x1000, false, 0x24).ok);
    assert.ok(guest.translate(0x1000, false, 0x28).ok);
    guest.unit.write(OFFSET.CCMD, 8, encodeBig(CCMD_FIELDS, { ICC: 1, CIRG: 2, DID: 0x28 }));
    assert.equal((guest.read64(OFFSET.CCMD) >> 59n) & 3n, 1n, 'CAIG global: QEMU does domain requests globally');
    assert.ok(!guest.translate(0x1000, false, 0x28).ok);
    assert.equal(guest.unit.contextCache.size, 0);
  });

  it('register-based invalidation is ignored while QI is on (ICC stays set)', () => {
    const guest = cachedGuest();
    guest.setupQueue();
    guest.globalContextInvalidate();
    guest.globalIotlbInvalidate();
    assert.equal(guest.read64(OFFSET.CCMD) >> 63n, 1n);
    assert.equal(guest.read64(OFFSET.IOTLB) >> 63n, 1n);
    assert.equal(address(guest, 0x1000), 0x300000);
  });

  it('a context invalidation alone leaves the IOTLB (spec: software follows with an IOTLB invalidation)', () => {
    const guest = cachedGuest();
    guest.globalContextInvalidate();
    assert.equal(address(guest, 0x1000), 0x300000);
  });

  it('SRTP drops cached translations', () => {
    const guest = cachedGuest();
    guest.setRootTable();
    assert.equal(address(guest, 0x1000), 0x400000);
  });
});
