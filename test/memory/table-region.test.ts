/** GuestMemory.tableRegion: the RAM view a walker may read a whole table page through, and when there is none. */
import { strict as assert } from 'node:assert';
import { GuestMemory, WORDS_PER_TABLE_PAGE, type EntryWords } from '../../lib/memory/guest-memory';

const PAGE = 4096;

describe('GuestMemory.tableRegion', () => {
  it('gives the region and the words of a table page it holds whole, matching readTableEntry', () => {
    const memory = new GuestMemory();
    memory.addRegion({ name: 'low', start: 0, buffer: new ArrayBuffer(4 * PAGE) });
    memory.addRegion({ name: 'high', start: 16 * PAGE, buffer: new ArrayBuffer(8 * PAGE), byteOffset: 4 * PAGE, length: 4 * PAGE });
    const out: EntryWords = { lo: 0, hi: 0 };
    for (const page of [0, 3, 16, 19]) {
      memory.writeEntry(page * PAGE + 5 * 8, 0x12345678 + page, 0x9abc + page);
      const region = memory.tableRegion(page);
      assert.ok(region !== undefined && region.words !== undefined, `page ${page}`);
      const base = (page - region.firstPage) * WORDS_PER_TABLE_PAGE;
      assert.ok(memory.readTableEntry(page, 5, out));
      assert.deepEqual([region.words[base + 10], region.words[base + 11]], [out.lo, out.hi]);
      assert.deepEqual([out.lo, out.hi], [0x12345678 + page, 0x9abc + page]);
    }
    for (const page of [4, 15, 20, 2 ** 40 - 1]) assert.equal(memory.tableRegion(page), undefined, `page ${page} is not RAM`);
  });

  it('has none for a page two regions share, a region not page-aligned, or a subclass that watches readEntry', () => {
    const split = new GuestMemory();
    split.addRegion({ name: 'a', start: 0, buffer: new ArrayBuffer(PAGE + 2048) });
    split.addRegion({ name: 'b', start: PAGE + 2048, buffer: new ArrayBuffer(PAGE * 2) });
    assert.ok(split.tableRegion(0) !== undefined);
    assert.equal(split.tableRegion(1), undefined, 'the page straddles a and b');
    assert.equal(split.tableRegion(2), undefined, 'b does not start on a page');

    class Watching extends GuestMemory {
      override readEntry(address: number, out: EntryWords): boolean {
        return super.readEntry(address, out);
      }
    }
    const watched = new Watching();
    watched.addRegion({ name: 'ram', start: 0, buffer: new ArrayBuffer(PAGE) });
    assert.equal(watched.tableRegion(0), undefined);
  });

  it('changes generation when the region leaves, so a kept view can be dropped', () => {
    const memory = new GuestMemory();
    const region = memory.addRegion({ name: 'ram', start: 0, buffer: new ArrayBuffer(PAGE) });
    const generation = memory.generation;
    assert.equal(memory.tableRegion(0), region);
    memory.removeRegion(region);
    assert.notEqual(memory.generation, generation);
    assert.equal(memory.tableRegion(0), undefined);
  });
});
