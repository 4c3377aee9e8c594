/** The legacy walk's paging-structure cache: what it keeps, that a miss then reads only the leaf, and every invalidation that drops it. */
import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import { GuestMemory, type EntryWords } from '../../lib/memory/guest-memory';
import { encodeBig } from '../../lib/vtd/bitfield';
import { PagingStructureCache } from '../../lib/vtd/caches';
import { FR } from '../../lib/vtd/legacy-walk';
import { GCMD, OFFSET } from '../../lib/vtd/register-bits';
import { IOTLB_FIELDS } from '../../lib/vtd/registers';
import { IOTLB_INVALIDATE, SECOND_STAGE_TABLE_ENTRY } from '../../lib/vtd/structures';
import type { TranslationResult } from '../../lib/vtd/translation-result';
import { VtdUnit } from '../../lib/vtd/unit';
import { PAGE, SID, TestGuest, descriptor } from './unit-guest';

const REGION = 2 ** 21;
/** IOVAs in the second 2 MiB region of the second 1 GiB of the second 512 GiB: every level's index is non-zero. */
const BASE = 2 ** 39 + 2 ** 30 + REGION;
const DID = 1;

/** A 4-level (aw-bits=48) guest with `pages` mapped from BASE, page i -> 0x800000 + i pages, and translation on. */
function guestWith(pages: number, config = 'aw-bits=48'): TestGuest {
  const guest = new TestGuest(config);
  guest.setContext(SID, { did: DID, aw: 2 });
  for (let i = 0; i < pages; i++) guest.map(SID, BASE + i * PAGE, 0x800000 + i * PAGE);
  guest.enable();
  return guest;
}

function addressOf(result: TranslationResult): number | undefined {
  return result.ok ? result.address : undefined;
}

/** Address of the entry at `level` (4 = top) on the walk of `iova` for SID. */
function entryAddress(guest: TestGuest, iova: number, level: number): number {
  const leaf = guest.leafAddress(SID, iova);
  if (level === 1) return leaf;
  let table = Number(guest.memory.readU64(guest.root) >> 12n) * PAGE; // context table
  table = Number(guest.memory.readU64(table + (SID & 0xff) * 16) >> 12n) * PAGE; // top table
  for (let l = 4; l > level; l--) table = Number(guest.memory.readU64(table + (Math.floor(iova / 2 ** (12 + 9 * (l - 1))) % 512) * 8) >> 12n) * PAGE;
  return table + (Math.floor(iova / 2 ** (12 + 9 * (level - 1))) % 512) * 8;
}

function ihPageInvalidation(did: number, iova: number, am: number, ih: number): bigint {
  return encodeBig(IOTLB_INVALIDATE, { TYPE_LO: 2, G: 3, DID: did, ADDR: iova / PAGE, AM: am, IH: ih });
}

/** A GuestMemory that counts the 8-byte entries walkers read (a subclass that overrides readEntry sees table reads). */
class CountingMemory extends GuestMemory {
  reads = 0;
  override readEntry(address: number, out: EntryWords): boolean {
    this.reads++;
    return super.readEntry(address, out);
  }
}

describe('paging-structure cache (legacy second stage)', () => {
  it('keeps the leaf table a walk reached, with the domain, the region and the rights above it', () => {
    const guest = guestWith(2);
    const cache = guest.unit.pagingStructures;
    assert.equal(cache.size, 0);
    assert.ok(guest.translate(BASE, true).ok);
    assert.equal(cache.size, 1);
    const [entry] = cache.entries();
    assert.equal(entry!.did, DID);
    assert.equal(entry!.pfn, BASE / PAGE);
    assert.equal(entry!.tablePage * PAGE, guest.leafAddress(SID, BASE) - ((BASE / PAGE) % 512) * 8);
    assert.deepEqual([entry!.readable, entry!.writable], [true, true]);
    // Another page of the region: no new entry. A 2 MiB page: none either (nothing below it to cache).
    assert.ok(guest.translate(BASE + PAGE).ok);
    guest.map(SID, BASE + 4 * REGION, 0x1000000, { size: '2m' });
    assert.ok(guest.translate(BASE + 4 * REGION + 0x1234).ok);
    assert.equal(cache.size, 1);
  });

  it('makes an IOTLB miss in a cached region read only the leaf entry', () => {
    const memory = new CountingMemory();
    memory.addRegion({ name: 'ram', start: 0, buffer: new ArrayBuffer(16 << 20) });
    const unit = new VtdUnit({ memory, config: 'aw-bits=48', onInterrupt: () => undefined });
    // Root table at 1 MiB, context table after it, then the four levels of tables.
    const [root, context, l4, l3, l2, l1] = [0x100000, 0x101000, 0x102000, 0x103000, 0x104000, 0x105000];
    const table = (next: number): bigint => encodeBig(SECOND_STAGE_TABLE_ENTRY, { R: 1, W: 1, ADDR: next / PAGE });
    memory.writeU64(root + (SID >> 8) * 16, BigInt(context | 1));
    memory.writeU64(context + (SID & 0xff) * 16, BigInt(l4 | 1));
    memory.writeU64(context + (SID & 0xff) * 16 + 8, BigInt(2 | (DID << 8)));
    memory.writeU64(l4 + (Math.floor(BASE / 2 ** 39) % 512) * 8, table(l3));
    memory.writeU64(l3 + (Math.floor(BASE / 2 ** 30) % 512) * 8, table(l2));
    memory.writeU64(l2 + (Math.floor(BASE / 2 ** 21) % 512) * 8, table(l1));
    for (let i = 0; i < 4; i++) memory.writeU64(l1 + ((BASE / PAGE + i) % 512) * 8, BigInt((0x800000 + i * PAGE) | 3));
    unit.write(OFFSET.RTADDR, 8, BigInt(root));
    unit.write(OFFSET.GCMD, 4, GCMD.SRTP);
    unit.write(OFFSET.GCMD, 4, GCMD.TE);

    const readsFor = (iova: number): number => {
      const before = memory.reads;
      assert.equal(addressOf(unit.translate({ sid: SID, iova: BigInt(iova), write: false })), 0x800000 + (iova - BASE));
      return memory.reads - before;
    };
    assert.equal(readsFor(BASE), 2 + 2 + 4 + 3, 'root and context entry (two halves each), four levels, the three above the leaf for the cache');
    assert.equal(readsFor(BASE + PAGE), 1, 'a cached region: the leaf only');
    assert.equal(readsFor(BASE + PAGE), 0, 'an IOTLB hit reads nothing');
    unit.iotlbPages(DID, (BASE + 2 * PAGE) / PAGE, 0, true);
    assert.equal(readsFor(BASE + 2 * PAGE), 1, 'IH = 1 keeps the entry');
    unit.iotlbPages(DID, (BASE + 2 * PAGE) / PAGE, 0, false);
    assert.equal(readsFor(BASE + 3 * PAGE), 4 + 3, 'IH = 0 drops it: the whole walk again, and the cache filled again');
  });

  it('uses a cached entry after the guest changed a non-leaf entry, until an invalidation without IH drops it', () => {
    const guest = guestWith(8);
    const [a, b, c, d] = [BASE, BASE + PAGE, BASE + 2 * PAGE, BASE + 3 * PAGE];
    assert.equal(addressOf(guest.translate(a)), 0x800000);
    // A new leaf table for the region behind the cached one's back: b, c and d map elsewhere there.
    const table = guest.allocPage();
    for (const [i, iova] of [b, c, d].entries()) guest.memory.writeU64(table + ((iova / PAGE) % 512) * 8, BigInt((0xa00000 + i * PAGE) | 3));
    guest.memory.writeU64(entryAddress(guest, a, 2), encodeBig(SECOND_STAGE_TABLE_ENTRY, { R: 1, W: 1, ADDR: table / PAGE }));
    assert.equal(addressOf(guest.translate(b)), 0x800000 + PAGE, 'the cached leaf table, as hardware may');
    guest.pageIotlbInvalidate(DID, a, 0, 1);
    assert.equal(addressOf(guest.translate(c)), 0x800000 + 2 * PAGE, 'IH = 1: non-leaf entries promised unchanged, the entry stays');
    guest.pageIotlbInvalidate(DID, a, 0, 0);
    assert.equal(addressOf(guest.translate(d)), 0xa00000 + 2 * PAGE, 'IH = 0: the new table');
  });

  it('is dropped by global and domain-selective IOTLB invalidation (the domain only), queued or by register', () => {
    const guest = guestWith(1);
    guest.setContext(0x28, { did: 2, aw: 2 });
    guest.map(0x28, BASE, 0x900000);
    guest.globalContextInvalidate();
    const cache = guest.unit.pagingStructures;
    const fill = (): void => {
      assert.ok(guest.translate(BASE).ok);
      assert.ok(guest.translate(BASE, false, 0x28).ok);
      assert.equal(cache.size, 2);
    };
    fill();
    guest.unit.write(OFFSET.IOTLB, 8, encodeBig(IOTLB_FIELDS, { IVT: 1, IIRG: 2, DID: 2 }));
    assert.deepEqual(
      cache.entries().map((e) => e.did),
      [1],
    );
    guest.globalIotlbInvalidate();
    assert.equal(cache.size, 0);
    fill();
    guest.setupQueue();
    guest.submit([descriptor.iotlbDomain(1)], 0);
    assert.deepEqual(
      cache.entries().map((e) => e.did),
      [2],
    );
    guest.submit([descriptor.iotlbGlobal()], 1);
    assert.equal(cache.size, 0);
  });

  it('drops, for a page-selective invalidation without IH, every region the aligned range touches (queued)', () => {
    const guest = guestWith(0);
    // One page in each of 80 regions (more than a probe per region: the scan path), across a 1 GiB boundary.
    const first = 2 ** 39 + 2 ** 30 - 40 * REGION;
    for (let r = 0; r < 80; r++) guest.map(SID, first + r * REGION, 0x800000 + r * PAGE);
    for (let r = 0; r < 80; r++) assert.ok(guest.translate(first + r * REGION).ok);
    const cache = guest.unit.pagingStructures;
    const regions = (): number[] =>
      cache
        .entries()
        .map((e) => (e.pfn * PAGE - first) / REGION)
        .sort((x, y) => x - y);
    const size = (): number => cache.size;
    assert.equal(size(), 80);
    guest.setupQueue();
    let slot = 0;
    const submit = (value: bigint): void => guest.submit([value], slot++);
    submit(ihPageInvalidation(DID, first + 3 * REGION + 5 * PAGE, 0, 1));
    assert.equal(size(), 80, 'IH = 1 keeps them');
    submit(ihPageInvalidation(DID, first + 3 * REGION + 5 * PAGE, 0, 0));
    assert.ok(!regions().includes(3) && size() === 79, 'one page: its region');
    submit(ihPageInvalidation(DID + 1, first + 4 * REGION, 12, 0));
    assert.equal(size(), 79, 'another domain: nothing');
    // AM = 11: 8 MiB aligned, regions 4..7 of the first 1 GiB's last 40 are 0..3, 4..7 here: (first + 4 REGION) is aligned.
    submit(ihPageInvalidation(DID, first + 5 * REGION, 11, 0));
    assert.deepEqual(
      regions().filter((r) => r < 12),
      [0, 1, 2, 8, 9, 10, 11],
    );
    // AM = 18 (1 GiB): the first 40 regions are the end of one 1 GiB, the rest the start of the next.
    submit(ihPageInvalidation(DID, first + 50 * REGION, 18, 0));
    assert.deepEqual(regions(), [0, 1, 2, 8, 9, 10, 11, ...Array.from({ length: 28 }, (_, i) => 12 + i)]);
  });

  it('tells domains and context roots apart: a device of the same DID on other tables walks its own', () => {
    const guest = guestWith(1);
    guest.setContext(0x28, { did: DID, aw: 2 }); // the same DID, other tables: a guest mistake, not a cross-walk
    guest.map(0x28, BASE + PAGE, 0x900000);
    guest.globalContextInvalidate();
    assert.ok(guest.translate(BASE).ok);
    assert.equal(addressOf(guest.translate(BASE + PAGE, false, 0x28)), 0x900000);
  });

  it('keeps the rights above the leaf: a right they deny faults at the level that denies it, as the full walk does', () => {
    const guest = guestWith(4);
    const top = entryAddress(guest, BASE, 4);
    const value = guest.memory.readU64(top);
    guest.memory.writeU64(top, value & ~2n); // W cleared at the top level
    guest.globalIotlbInvalidate();
    assert.ok(guest.translate(BASE).ok, 'a read caches the region');
    assert.equal(guest.unit.pagingStructures.entries()[0]!.writable, false);
    const write = guest.translate(BASE + PAGE, true);
    assert.ok(
      !write.ok && write.fault.reason === FR.WRITE && write.fault.level === 4,
      JSON.stringify(write, (_k, v) => (typeof v === 'bigint' ? v.toString(16) : v)),
    );
    // Leaf faults through a cached entry: not present, reserved bits.
    guest.memory.writeU64(guest.leafAddress(SID, BASE + 2 * PAGE), 0n);
    const absent = guest.translate(BASE + 2 * PAGE);
    assert.ok(!absent.ok && absent.fault.reason === FR.READ && absent.fault.level === 1 && absent.fault.notPresent);
    guest.memory.writeU64(guest.leafAddress(SID, BASE + 3 * PAGE), BigInt((0x800000 + 3 * PAGE) | 3) | (1n << 11n));
    const reserved = guest.translate(BASE + 3 * PAGE);
    assert.ok(!reserved.ok && reserved.fault.reason === FR.PAGING_ENTRY_RESERVED && reserved.fault.level === 1);
  });

  it('is emptied by a reset, by SRTP (srtp-flushes-caches) and when guest memory changes', () => {
    const guest = guestWith(2);
    const cache = guest.unit.pagingStructures;
    assert.ok(guest.translate(BASE).ok);
    guest.setRootTable();
    assert.equal(cache.size, 0);
    assert.ok(guest.translate(BASE).ok);
    guest.unit.reset();
    assert.equal(cache.size, 0);
    guest.enable();
    assert.ok(guest.translate(BASE).ok);
    assert.equal(cache.size, 1);
    // A new region changes the generation: the next walk starts from an empty cache (and fills it again).
    guest.memory.addRegion({ name: 'more', start: 1 << 30, buffer: new ArrayBuffer(PAGE) });
    assert.ok(guest.translate(BASE + PAGE).ok);
    assert.equal(cache.size, 1);
  });

  it('never reads a table through a view of memory that left the map', () => {
    const memory = new GuestMemory();
    memory.addRegion({ name: 'low', start: 0, buffer: new ArrayBuffer(1 << 20) });
    const tables = memory.addRegion({ name: 'tables', start: 1 << 20, buffer: new ArrayBuffer(1 << 20) });
    const unit = new VtdUnit({ memory, config: 'aw-bits=48', onInterrupt: () => undefined });
    const [root, context, l4, l3, l2, l1] = [0x100000, 0x101000, 0x102000, 0x103000, 0x104000, 0x105000];
    const table = (next: number): bigint => encodeBig(SECOND_STAGE_TABLE_ENTRY, { R: 1, W: 1, ADDR: next / PAGE });
    memory.writeU64(root + (SID >> 8) * 16, BigInt(context | 1));
    memory.writeU64(context + (SID & 0xff) * 16, BigInt(l4 | 1));
    memory.writeU64(context + (SID & 0xff) * 16 + 8, BigInt(2 | (DID << 8)));
    memory.writeU64(l4 + (Math.floor(BASE / 2 ** 39) % 512) * 8, table(l3));
    memory.writeU64(l3 + (Math.floor(BASE / 2 ** 30) % 512) * 8, table(l2));
    memory.writeU64(l2 + (Math.floor(BASE / 2 ** 21) % 512) * 8, table(l1));
    for (let i = 0; i < 2; i++) memory.writeU64(l1 + ((BASE / PAGE + i) % 512) * 8, BigInt((0x8000 + i * PAGE) | 3));
    unit.write(OFFSET.RTADDR, 8, BigInt(root));
    unit.write(OFFSET.GCMD, 4, GCMD.SRTP);
    unit.write(OFFSET.GCMD, 4, GCMD.TE);
    assert.ok(unit.translate({ sid: SID, iova: BigInt(BASE), write: false }).ok);
    assert.equal(unit.pagingStructures.size, 1);
    memory.removeRegion(tables);
    const after = unit.translate({ sid: SID, iova: BigInt(BASE + PAGE), write: false });
    assert.ok(!after.ok, 'the tables are gone from guest memory');
  });

  it('gives every request the result of a full walk, over random tables, requests and invalidations', () => {
    const sizes = ['4k', '4k', '4k', '2m', '1g'] as const;
    const mapping = fc.record({
      top: fc.constantFrom(1, 2),
      gib: fc.constantFrom(1, 3),
      region: fc.constantFrom(1, 2, 5),
      page: fc.integer({ min: 0, max: 511 }),
      size: fc.constantFrom(...sizes),
      read: fc.boolean(),
      write: fc.boolean(),
      reserved: fc.integer({ min: 0, max: 19 }),
    });
    const upper = fc.record({ mapping: fc.nat(), level: fc.constantFrom(2, 3, 4), clear: fc.constantFrom(1n, 2n, 3n) });
    const request = fc.oneof(
      fc.record({ kind: fc.constant('translate' as const), mapping: fc.nat(), offset: fc.integer({ min: 0, max: 8 }), write: fc.boolean() }),
      fc.record({
        kind: fc.constant('invalidate' as const),
        scope: fc.constantFrom('page', 'page-ih', 'domain', 'global'),
        mapping: fc.nat(),
        am: fc.constantFrom(0, 3, 9, 10),
      }),
    );
    fc.assert(
      fc.property(
        fc.array(mapping, { minLength: 1, maxLength: 10 }),
        fc.array(upper, { maxLength: 3 }),
        fc.array(request, { maxLength: 40 }),
        (mappings, uppers, requests) => {
          const guest = new TestGuest('aw-bits=48');
          guest.setContext(SID, { did: DID, aw: 2 });
          const iovas: number[] = [];
          for (const [i, m] of mappings.entries()) {
            const iova = m.top * 2 ** 39 + m.gib * 2 ** 30 + (m.size === '1g' ? 0 : m.region * REGION + (m.size === '2m' ? 0 : m.page * PAGE));
            iovas.push(iova);
            const gpa = m.size === '1g' ? 0 : m.size === '2m' ? 0x1000000 : 0x800000 + i * PAGE;
            guest.map(SID, iova, gpa, { size: m.size, read: m.read, write: m.write, extra: m.reserved === 0 ? 1n << 11n : 0n });
          }
          for (const u of uppers) {
            const at = entryAddress(guest, iovas[u.mapping % iovas.length]!, u.level);
            guest.memory.writeU64(at, guest.memory.readU64(at) & ~u.clear);
          }
          guest.enable();
          // The oracle: a second unit over the same tables that empties its caches before every request.
          const oracle = new VtdUnit({ memory: guest.memory, config: 'aw-bits=48', onInterrupt: () => undefined });
          oracle.write(OFFSET.RTADDR, 8, BigInt(guest.root));
          oracle.write(OFFSET.GCMD, 4, GCMD.SRTP);
          oracle.write(OFFSET.GCMD, 4, GCMD.TE);
          const outcome = (r: TranslationResult): string =>
            r.ok ? `ok ${r.address} ${r.pageSize} ${r.readable} ${r.writable}` : `fault ${r.fault.reason} ${r.fault.level} ${r.fault.notPresent}`;
          for (const q of requests) {
            const iova = iovas[q.mapping % iovas.length]!;
            if (q.kind === 'invalidate') {
              if (q.scope === 'global') guest.globalIotlbInvalidate();
              else if (q.scope === 'domain') guest.unit.iotlbDomain(DID);
              else guest.pageIotlbInvalidate(DID, iova - (iova % (PAGE * 2 ** q.am)), q.am, q.scope === 'page-ih' ? 1 : 0);
              continue;
            }
            const target = iova + q.offset * PAGE;
            oracle.iotlbGlobal();
            const expected = outcome(oracle.translate({ sid: SID, iova: BigInt(target), write: q.write }));
            assert.equal(outcome(guest.translate(target, q.write)), expected, `0x${target.toString(16)} ${q.write ? 'write' : 'read'}`);
          }
        },
      ),
      { numRuns: 150 },
    );
  });
});

describe('PagingStructureCache', () => {
  it('finds an entry by domain, region and root only, and an aligned page range drops exactly the regions it overlaps', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.tuple(fc.integer({ min: 0, max: 3 }), fc.integer({ min: 0, max: 2 ** 20 })), {
          maxLength: 40,
          selector: ([d, r]) => `${d}/${r}`,
        }),
        fc.integer({ min: 0, max: 3 }),
        fc.integer({ min: 0, max: 2 ** 29 }),
        fc.integer({ min: 0, max: 30 }),
        (entries, did, pfn, am) => {
          const cache = new PagingStructureCache();
          cache.useGeneration(0);
          const kept = new Map<string, [number, number]>();
          for (const [d, r] of entries) {
            cache.store(d, r, 0x1000 + 4, r, 3, undefined, 0);
            kept.set(`${cache.find(d, r, 0x1000 + 4)}`, [d, r]); // direct-mapped: a later entry may take an earlier one's slot
          }
          const held = [...kept.values()].filter(([d, r]) => cache.find(d, r, 0x1000 + 4) >= 0);
          assert.equal(cache.size, held.length);
          for (const [d, r] of held) assert.equal(cache.find(d, r, 0x2000 + 4), -1, 'another root misses');
          cache.invalidatePages(did, Math.floor(pfn / 512), am);
          const span = 2 ** am;
          const first = pfn - (pfn % span);
          for (const [d, r] of held) {
            const touched = d === did && r * 512 < first + span && (r + 1) * 512 > first;
            assert.equal(cache.find(d, r, 0x1000 + 4) < 0, touched, `entry ${d}/${r}`);
          }
          assert.equal(cache.size, held.filter(([d, r]) => !(d === did && r * 512 < first + span && (r + 1) * 512 > first)).length);
        },
      ),
      { numRuns: 300 },
    );
  });
});
