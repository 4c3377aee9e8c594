/** The interrupt entry cache: IRTEs cached by index, dropped by global / index-selective (IM) invalidation and by SIRTP. */
import { strict as assert } from 'node:assert';
import { encodeBig } from '../../lib/vtd/bitfield';
import { InterruptEntryCache } from '../../lib/vtd/interrupt-entry-cache';
import { MSI_REMAPPABLE_ADDRESS } from '../../lib/vtd/interrupt-remap';
import { GCMD, OFFSET } from '../../lib/vtd/register-bits';
import { IRTA_FIELDS } from '../../lib/vtd/registers';
import { INTERRUPT_ENTRY_CACHE_INVALIDATE, IRTE } from '../../lib/vtd/structures';
import { PAGE, SID, TestGuest } from './unit-guest';

function remappable(handle: number): number {
  return Number(encodeBig(MSI_REMAPPABLE_ADDRESS, { BASE: 0xfee, IF: 1, HANDLE_LO: handle }));
}

const iec = (values: Partial<Record<'G' | 'IM' | 'IIDX', number>>): bigint => encodeBig(INTERRUPT_ENTRY_CACHE_INVALIDATE, { TYPE_LO: 4, ...values });

/** IR on, QI on, 256 entries; entry i has vector 0x40 + i. */
function guestWithEntries(count = 32): {
  guest: TestGuest;
  table: number;
  setVector: (index: number, vector: number) => void;
  vector: (index: number) => number;
} {
  const guest = new TestGuest();
  const table = guest.allocPage();
  const setVector = (index: number, vector: number) => guest.write128(table + index * 16, encodeBig(IRTE, { P: 1, V: vector, DST: 0x100 }));
  for (let i = 0; i < count; i++) setVector(i, 0x40 + i);
  guest.unit.write(OFFSET.IRTA, 8, encodeBig(IRTA_FIELDS, { IRTA: table / PAGE, S: 7 }));
  guest.command(GCMD.SIRTP);
  guest.command(GCMD.IRE);
  guest.setupQueue(0);
  const vector = (index: number) => {
    const result = guest.unit.remapInterrupt({ sid: SID, address: remappable(index), data: 0 });
    assert.ok(result.ok, `interrupt ${index} remaps`);
    return result.vector;
  };
  return { guest, table, setVector, vector };
}

describe('interrupt entry cache', () => {
  it('caches present entries: a changed IRTE is not seen until it is invalidated', () => {
    const { guest, setVector, vector } = guestWithEntries();
    assert.equal(vector(3), 0x43);
    assert.equal(guest.unit.interruptEntries.size, 1);
    setVector(3, 0x93);
    assert.equal(vector(3), 0x43, 'the cached entry is used');
    guest.submit([iec({ G: 1, IIDX: 3 })], 0);
    assert.equal(vector(3), 0x93);
  });

  it('does not cache entries that are not present', () => {
    const { guest, table, vector } = guestWithEntries(4);
    const missing = guest.unit.remapInterrupt({ sid: SID, address: remappable(10), data: 0 });
    assert.ok(!missing.ok);
    guest.write128(table + 10 * 16, encodeBig(IRTE, { P: 1, V: 0x77, DST: 0x100 }));
    assert.equal(vector(10), 0x77, 'no invalidation needed after making an entry present');
  });

  it('index-selective invalidation drops the 2^IM entries of the aligned block and nothing else', () => {
    const { guest, setVector, vector } = guestWithEntries();
    for (let i = 0; i < 32; i++) vector(i);
    for (let i = 0; i < 32; i++) setVector(i, 0x80 + i);
    // IIDX 13 with IM 2 covers 12..15.
    guest.submit([iec({ G: 1, IIDX: 13, IM: 2 })], 0);
    for (let i = 0; i < 32; i++) assert.equal(vector(i), i >= 12 && i < 16 ? 0x80 + i : 0x40 + i, `index ${i}`);
  });

  it('global invalidation drops every entry', () => {
    const { guest, setVector, vector } = guestWithEntries();
    for (let i = 0; i < 8; i++) vector(i);
    for (let i = 0; i < 8; i++) setVector(i, 0x90 + i);
    guest.submit([iec({ G: 0 })], 0);
    assert.equal(guest.unit.interruptEntries.size, 0);
    for (let i = 0; i < 8; i++) assert.equal(vector(i), 0x90 + i);
  });

  it('SIRTP drops every entry (a new table)', () => {
    const { guest, setVector, vector } = guestWithEntries();
    vector(1);
    setVector(1, 0x99);
    guest.command(GCMD.SIRTP);
    assert.equal(vector(1), 0x99);
  });

  it('a unit reset empties it', () => {
    const { guest, vector } = guestWithEntries();
    vector(2);
    guest.unit.reset();
    assert.equal(guest.unit.interruptEntries.size, 0);
  });

  it('the cache alone: index masks align down, sizes follow the entries held', () => {
    const cache = new InterruptEntryCache();
    for (let i = 0; i < 100; i++) cache.set(i, [i, 0, 0, 0]);
    cache.invalidateIndex(70, 5); // 64..95
    assert.equal(cache.size, 68);
    assert.equal(cache.get(63)![0], 63);
    assert.equal(cache.get(64), undefined);
    assert.equal(cache.get(96)![0], 96);
    cache.invalidateIndex(0, 16); // the whole 16-bit index space
    assert.equal(cache.size, 0);
    const words = Uint32Array.of(1, 2, 3, 4);
    cache.set(7, words);
    words[0] = 9;
    assert.equal(cache.get(7)![0], 1, 'the cache keeps its own copy');
  });
});
