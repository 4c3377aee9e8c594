/** GuestMemory: region map invariants, bounds, accesses spanning regions, entry fast path, and a model check. */
import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import { GuestMemory, SharedRegion } from '../../lib/memory';
import { ERRNO } from '../../lib/errno';
import { GuestMemoryError } from '../../lib/errors';

function ram(size: number, fill = 0): ArrayBuffer {
  const buffer = new ArrayBuffer(size);
  new Uint8Array(buffer).fill(fill);
  return buffer;
}

describe('GuestMemory', () => {
  const memory = new GuestMemory();
  const low = memory.addRegion({ name: 'low', start: 0x1000, buffer: ram(0x1000, 0x11) });
  memory.addRegion({ name: 'adjacent', start: 0x2000, buffer: ram(0x1000, 0x22) });
  memory.addRegion({ name: 'rom', start: 0x10000, buffer: ram(0x1000, 0x33), readOnly: true });

  it('finds regions by address, and nothing below, between or above them', () => {
    assert.equal(memory.regionAt(0x1000), low);
    assert.equal(memory.regionAt(0x1fff), low);
    assert.equal(memory.regionAt(0x2000)!.name, 'adjacent');
    assert.equal(memory.regionAt(0xfff), undefined);
    assert.equal(memory.regionAt(0x3000), undefined);
    assert.equal(memory.regionAt(0x11000), undefined);
  });

  it('refuses accesses below, above and straddling the edge of RAM with a typed error', () => {
    const unmapped = (error: unknown) => error instanceof GuestMemoryError && error.code === 'ERR_GUEST_MEMORY_UNMAPPED';
    assert.throws(() => memory.read(0xffc, 8), unmapped);
    assert.throws(() => memory.read(0x2ffc, 8), unmapped);
    assert.throws(() => memory.readU32(0x3000), unmapped);
    assert.throws(() => memory.read(-8, 4), unmapped);
    assert.throws(() => memory.read(2 ** 53, 4), unmapped);
  });

  it('reads and writes across contiguous regions, and writes nothing when any part is missing', () => {
    memory.write(0x1ffe, Uint8Array.of(1, 2, 3, 4));
    assert.deepEqual([...memory.read(0x1ffc, 8)], [0x11, 0x11, 1, 2, 3, 4, 0x22, 0x22]);
    assert.throws(() => memory.write(0x2ffe, Uint8Array.of(9, 9, 9, 9)));
    assert.deepEqual([...memory.read(0x2ffe, 2)], [0x22, 0x22]);
  });

  it('refuses writes to read-only regions with their own code', () => {
    assert.throws(
      () => memory.writeU32(0x10000, 1),
      (error: any) => error.code === 'ERR_GUEST_MEMORY_READ_ONLY',
    );
    assert.equal(memory.readU32(0x10000), 0x33333333);
    assert.equal(memory.writeEntry(0x10000, 1, 2), false);
  });

  it('has little-endian scalar accessors of every width', () => {
    memory.writeU64(0x1100, 0x1122334455667788n);
    assert.equal(memory.readU64(0x1100), 0x1122334455667788n);
    assert.equal(memory.readU32(0x1104), 0x11223344);
    assert.equal(memory.readU16(0x1100), 0x7788);
    assert.equal(memory.readU8(0x1107), 0x11);
    memory.writeU16(0x1100, 0xbeef);
    memory.writeU8(0x1102, 0xaa);
    assert.equal(memory.readU32(0x1100), 0x55aabeef);
  });

  it('reads 64-bit entries as two halves, aligned, unaligned and straddling two regions', () => {
    const out = { lo: 0, hi: 0 };
    memory.writeU64(0x1200, 0xfedcba9876543210n);
    assert.equal(memory.readEntry(0x1200, out), true);
    assert.deepEqual(out, { lo: 0x76543210, hi: 0xfedcba98 });
    memory.writeU64(0x1203, 0x0102030405060708n);
    assert.equal(memory.readEntry(0x1203, out), true);
    assert.deepEqual(out, { lo: 0x05060708, hi: 0x01020304 });
    assert.equal(memory.writeEntry(0x1ffc, 0xaabbccdd, 0x11223344), true);
    assert.equal(memory.readEntry(0x1ffc, out), true);
    assert.deepEqual(out, { lo: 0xaabbccdd, hi: 0x11223344 });
    assert.equal(memory.readEntry(0x2ffc, out), false, 'half outside RAM');
    assert.equal(memory.readEntry(0x50000, out), false);
  });

  it('refuses overlapping regions, naming both', () => {
    assert.throws(() => memory.addRegion({ name: 'clash', start: 0x1800, buffer: ram(0x1000) }), /'clash'.*overlaps 'low'/);
  });

  it('bumps its generation on every change of the region map', () => {
    const m = new GuestMemory();
    const g0 = m.generation;
    const r = m.addRegion({ name: 'r', start: 0, buffer: ram(4096) });
    assert.ok(m.generation > g0);
    const g1 = m.generation;
    m.removeRegion(r);
    assert.ok(m.generation > g1);
    assert.equal(m.removeRegion(r), false);
  });

  it('drops a shared region from the map when it is unmapped, so later accesses fail cleanly', () => {
    const m = new GuestMemory();
    const shared = SharedRegion.create('guest-ram', 0x4000);
    m.addSharedRegion('ram', 0x100000, shared);
    m.writeU32(0x100010, 0xdeadbeef);
    assert.equal(new DataView(shared.buffer).getUint32(0x10, true), 0xdeadbeef);
    assert.equal(m.regions[0]!.backing!.region, shared);
    shared.close();
    assert.equal(m.regions.length, 0);
    assert.throws(
      () => m.readU32(0x100010),
      (error: any) => error.code === 'ERR_GUEST_MEMORY_UNMAPPED',
    );
    assert.equal(m.readEntry(0x100010, { lo: 0, hi: 0 }), false);
  });

  it('serves untranslated DMA and fails it with EFAULT outside RAM, transferring nothing', () => {
    const into = new Uint8Array(4);
    memory.dma.read(0x1000n, into);
    assert.throws(
      () => memory.dma.read(0x2fffn, new Uint8Array(4)),
      (error: any) => error.errno === ERRNO.EFAULT,
    );
    assert.throws(
      () => memory.dma.write(1n << 60n, into),
      (error: any) => error.name === 'DmaFault',
    );
  });

  it('agrees with a byte-array model on random regions and accesses', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ page: fc.integer({ min: 0, max: 15 }), pages: fc.integer({ min: 1, max: 3 }) }), { maxLength: 6 }),
        fc.array(
          fc.record({
            address: fc.integer({ min: 0, max: 20 * 256 }),
            length: fc.integer({ min: 1, max: 600 }),
            write: fc.boolean(),
            seed: fc.integer({ min: 0, max: 255 }),
          }),
          { maxLength: 30 },
        ),
        (layout, accesses) => {
          const m = new GuestMemory();
          const model = new Int16Array(20 * 256).fill(-1); // -1: no RAM
          for (const { page, pages } of layout) {
            const start = page * 256;
            if (model.subarray(start, start + pages * 256).some((v) => v >= 0)) continue;
            m.addRegion({ name: `r${page}`, start, buffer: ram(pages * 256) });
            model.fill(0, start, start + pages * 256);
          }
          for (const { address, length, write, seed } of accesses) {
            const backed = address + length <= model.length && model.subarray(address, address + length).every((v) => v >= 0);
            if (write) {
              const data = Uint8Array.from({ length }, (_, i) => (seed + i) & 0xff);
              assert.equal(m.tryWrite(address, data), backed);
              if (backed) model.set(data, address);
            } else {
              const into = new Uint8Array(length);
              assert.equal(m.tryRead(address, into), backed);
              if (backed) assert.deepEqual([...into], [...model.subarray(address, address + length)]);
            }
          }
        },
      ),
    );
  });
});

describe('GuestMemory.readTableEntry', () => {
  /** Regions with and without page-aligned starts, adjacent, read-only, and one high above 2^44. */
  function layout(memory: GuestMemory): void {
    const fill = (size: number, seed: number) => {
      const bytes = new Uint8Array(size);
      for (let i = 0; i < size; i++) bytes[i] = (i * 7 + seed) & 0xff;
      return bytes.buffer;
    };
    memory.addRegion({ name: 'aligned', start: 0x10000, buffer: fill(0x3000, 1) });
    memory.addRegion({ name: 'adjacent', start: 0x13000, buffer: fill(0x1000, 2) });
    memory.addRegion({ name: 'unaligned', start: 0x20800, buffer: fill(0x2000, 3) });
    memory.addRegion({ name: 'rom', start: 0x30000, buffer: fill(0x1000, 4), readOnly: true });
    memory.addRegion({ name: 'high', start: 2 ** 45, buffer: fill(0x2000, 5) });
  }
  const pages = [0x10, 0x11, 0x12, 0x13, 0x14, 0x20, 0x21, 0x22, 0x30, 0x31, 2 ** 33, 2 ** 33 + 1, 2 ** 33 + 2, 0];

  it('reads what readEntry reads at page * 4096 + index * 8, in and out of RAM, whatever region was used last', () => {
    const memory = new GuestMemory();
    layout(memory);
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.constantFrom(...pages), fc.integer({ min: 0, max: 511 })), { minLength: 1, maxLength: 40 }), (reads) => {
        for (const [page, index] of reads) {
          const viaTable = { lo: -1, hi: -1 };
          const viaEntry = { lo: -1, hi: -1 };
          const tableOk = memory.readTableEntry(page, index, viaTable);
          const entryOk = memory.readEntry(page * 4096 + index * 8, viaEntry);
          assert.equal(tableOk, entryOk, `page 0x${page.toString(16)} index ${index}`);
          if (entryOk) assert.deepEqual(viaTable, viaEntry);
        }
      }),
    );
  });

  it('goes through an overriding readEntry of a subclass for every table read', () => {
    class CountingMemory extends GuestMemory {
      readonly seen: number[] = [];
      override readEntry(address: number, out: { lo: number; hi: number }): boolean {
        this.seen.push(address);
        return super.readEntry(address, out);
      }
    }
    const memory = new CountingMemory();
    layout(memory);
    const out = { lo: 0, hi: 0 };
    for (let i = 0; i < 3; i++) assert.equal(memory.readTableEntry(0x10, 5, out), true, 'a warm fast path would skip readEntry');
    memory.readTableEntry(2 ** 33, 511, out);
    memory.readTableEntry(0x99, 0, out);
    assert.deepEqual(memory.seen, [0x10028, 0x10028, 0x10028, 2 ** 45 + 0xff8, 0x99000]);
  });
});
