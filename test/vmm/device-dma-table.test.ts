/** DeviceDmaTable against a peer that keeps a vfio-user map table and refuses DMA_MAPs on demand: no range is lost. */
import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import type { FileDescriptor } from '../../lib/native';
import { DmaMapTable } from '../../lib/vfio-user/client/dma-map-table';
import { DMA_SPACE_END, DeviceDmaTable, type DmaMapPeer } from '../../lib/vmm/device-dma-table';

const PAGE = 0x1000n;
/** Only its presence matters to the table: the peer never reads it. */
const RAM_FD = { fd: -1 } as unknown as FileDescriptor;

/** The server side of the table's messages: the client's own overlap and exactness rules, and failures on demand. */
class FlakyPeer implements DmaMapPeer {
  readonly maxDmaMaps = 1 << 16;
  readonly table = new DmaMapTable(() => this.maxDmaMaps);
  /** The next this-many DMA_MAPs are refused. */
  failMaps = 0;
  failUnmaps = 0;

  async dmaMap(request: { address: bigint; size: bigint; readable?: boolean; writable?: boolean; fd?: FileDescriptor }): Promise<void> {
    await Promise.resolve();
    if (this.failMaps > 0) {
      this.failMaps--;
      throw new Error(`DMA_MAP of 0x${request.address.toString(16)} refused (ENOMEM)`);
    }
    const entry = this.table.reserve({ address: request.address, size: request.size, readable: true, writable: true, withFd: request.fd !== undefined, offset: 0n });
    entry.state = 'mapped';
  }

  async dmaUnmap(address: bigint, size: bigint): Promise<void> {
    await Promise.resolve();
    if (this.failUnmaps > 0) {
      this.failUnmaps--;
      throw new Error(`DMA_UNMAP of 0x${address.toString(16)} refused`);
    }
    this.table.remove(this.table.exact(address, size));
  }

  /** [start, end, withFd] of every mapping, sorted. */
  get view(): [bigint, bigint, boolean][] {
    return this.table.entries.map((entry) => [entry.address, entry.address + entry.size, entry.withFd]);
  }
}

/** The peer's mappings and the table's holes tile the whole space, and the fd mappings are exactly the table's runs. */
function assertCovered(peer: FlakyPeer, table: DeviceDmaTable): void {
  const pieces = [...peer.view.map(([start, end]) => [start, end] as const), ...table.unmappedGaps.map((hole) => [hole.address, hole.address + hole.size] as const)];
  pieces.sort((a, b) => (a[0] < b[0] ? -1 : 1));
  let cursor = 0n;
  for (const [start, end] of pieces) {
    assert.equal(start, cursor, `the space is covered without gaps or overlaps at 0x${cursor.toString(16)}`);
    cursor = end;
  }
  assert.equal(cursor, DMA_SPACE_END);
  assert.deepEqual(
    peer.view.filter(([, , withFd]) => withFd).map(([start, end]) => ({ address: start, size: end - start })),
    table.shared,
  );
}

function run(page: bigint, pages = 1n): { address: bigint; size: bigint; readable: boolean; writable: boolean; fd: FileDescriptor; offset: bigint } {
  return { address: page * PAGE, size: pages * PAGE, readable: true, writable: true, fd: RAM_FD, offset: 0n };
}

describe('vmm: DeviceDmaTable when the peer refuses maps', () => {
  let peer: FlakyPeer;
  let table: DeviceDmaTable;
  let errors: Error[];
  beforeEach(async () => {
    peer = new FlakyPeer();
    errors = [];
    table = new DeviceDmaTable(peer, (error) => errors.push(error));
    await table.start();
  });

  it('puts the gap back when the run is refused', async () => {
    peer.failMaps = 1;
    await assert.rejects(table.dmaMap(run(0x10n)), /refused/);
    assert.deepEqual(peer.view, [[0n, DMA_SPACE_END, false]]);
    assert.deepEqual(errors, []);
  });

  it('reports a gap it could not map again as a hole, and maps it before the next change', async () => {
    peer.failMaps = 2; // the run, then the gap's restore
    await assert.rejects(table.dmaMap(run(0x10n)), /refused/);
    assert.deepEqual(peer.view, []);
    assert.deepEqual(table.unmappedGaps, [{ address: 0n, size: DMA_SPACE_END }]);
    assert.equal(errors.length, 1);
    assert.match(errors[0]!.message, /not mapped for the device/);
    assertCovered(peer, table);

    await table.dmaMap(run(0x10n));
    assert.deepEqual(table.unmappedGaps, []);
    assert.deepEqual(peer.view, [[0n, 0x10000n, false], [0x10000n, 0x11000n, true], [0x11000n, DMA_SPACE_END, false]]);
  });

  it('keeps a run whose neighbouring piece was refused: the run resolves, the piece is reported and mapped later', async () => {
    await table.dmaMap(run(0x10n));
    await table.dmaMap(run(0x20n));
    peer.failMaps = 0;
    // Run 0x18 splits [0x11000, 0x20000): the run maps, then its left piece is refused.
    const original = peer.dmaMap.bind(peer);
    let calls = 0;
    peer.dmaMap = async (request) => {
      if (++calls === 2) throw new Error('left piece refused');
      return original(request);
    };
    await table.dmaMap(run(0x18n));
    peer.dmaMap = original;
    assert.deepEqual(table.unmappedGaps, [{ address: 0x11000n, size: 0x7000n }]);
    assert.equal(errors.length, 1);
    assertCovered(peer, table);
    await table.dmaUnmap(0x10000n, 0x1000n);
    assert.deepEqual(table.unmappedGaps, []);
    assertCovered(peer, table);
    assert.deepEqual(peer.view, [[0n, 0x18000n, false], [0x18000n, 0x19000n, true], [0x19000n, 0x20000n, false], [0x20000n, 0x21000n, true], [0x21000n, DMA_SPACE_END, false]]);
  });

  it('maps the freed pieces back one by one when the merged gap of an unmap is refused', async () => {
    await table.dmaMap(run(0x10n));
    peer.failMaps = 1; // the merged gap [0, END)
    await table.dmaUnmap(0x10000n, 0x1000n);
    assert.equal(errors.length, 1);
    assert.deepEqual(peer.view, [[0n, 0x10000n, false], [0x10000n, 0x11000n, false], [0x11000n, DMA_SPACE_END, false]]);
    assertCovered(peer, table);
  });

  it('leaves a run mapped when its unmap is refused', async () => {
    await table.dmaMap(run(0x10n));
    peer.failUnmaps = 1;
    await assert.rejects(table.dmaUnmap(0x10000n, 0x1000n), /refused/);
    assert.deepEqual(table.shared, [{ address: 0x10000n, size: 0x1000n }]);
    await table.dmaUnmap(0x10000n, 0x1000n);
    assert.deepEqual(peer.view, [[0n, DMA_SPACE_END, false]]);
  });

  it('refuses an unmap that does not name a run exactly', async () => {
    await table.dmaMap(run(0x10n, 2n));
    await table.dmaMap({ ...run(0x40n, 2n), fd: undefined } as never);
    await assert.rejects(table.dmaUnmap(0x10000n, 0x1000n), { code: 'ERR_VIOMMU_DMA_TABLE', message: /the run there is \[0x10000, 0x12000\)/ });
    await assert.rejects(table.dmaUnmap(0x40000n, 0x1000n), { code: 'ERR_VIOMMU_DMA_TABLE' });
    await assert.rejects(table.dmaUnmap(0x30000n, 0x1000n), { code: 'ERR_VIOMMU_DMA_TABLE', message: /no run starts there/ });
    assert.deepEqual(table.shared, [{ address: 0x10000n, size: 0x2000n }]);
  });

  it('covers the whole space after any mix of maps, unmaps and refusals', async () => {
    const step = fc.record({
      page: fc.integer({ min: 0, max: 15 }),
      map: fc.boolean(),
      failMaps: fc.integer({ min: 0, max: 3 }),
      failUnmaps: fc.integer({ min: 0, max: 1 }),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(step, { maxLength: 30 }), async (steps) => {
        const flaky = new FlakyPeer();
        const reported: Error[] = [];
        const subject = new DeviceDmaTable(flaky, (error) => reported.push(error));
        await subject.start();
        for (const { page, map, failMaps, failUnmaps } of steps) {
          flaky.failMaps = failMaps;
          flaky.failUnmaps = failUnmaps;
          const held = subject.shared.some((shared) => shared.address === BigInt(page) * PAGE);
          await (map && !held ? subject.dmaMap(run(BigInt(page))) : held ? subject.dmaUnmap(BigInt(page) * PAGE, PAGE) : Promise.resolve()).catch(() => undefined);
          assertCovered(flaky, subject);
        }
        flaky.failMaps = 0;
        flaky.failUnmaps = 0;
        await subject.dmaMap(run(100n));
        assert.deepEqual(subject.unmappedGaps, [], 'holes are mapped again on the next change');
        assertCovered(flaky, subject);
      }),
      { numRuns: 200 },
    );
  });
});
