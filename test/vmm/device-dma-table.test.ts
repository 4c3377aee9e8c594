/** DeviceDmaTable against a peer that keeps a vfio-user map table and refuses DMA_MAPs on demand (or above a size): no range is lost. */
import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import type { FileDescriptor } from '../../lib/native';
import { DmaMapTable } from '../../lib/vfio-user/client/dma-map-table';
import { VfioUserRemoteError } from '../../lib/vfio-user/connection-errors';
import { ERRNO } from '../../lib/errno';
import { DMA_SPACE_END, DeviceDmaTable, TRANSLATABLE_IOVA, type DmaMapPeer } from '../../lib/vmm/device-dma-table';

const PAGE = 0x1000n;
/** Only its presence matters to the table: the peer never reads it. */
const RAM_FD = { fd: -1 } as unknown as FileDescriptor;

/** The server side of the table's messages: the client's own overlap and exactness rules, and failures on demand. */
class FlakyPeer implements DmaMapPeer {
  get maxDmaMaps(): number {
    return 1 << 16;
  }
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
    const entry = this.table.reserve({
      address: request.address,
      size: request.size,
      readable: true,
      writable: true,
      withFd: request.fd !== undefined,
      offset: 0n,
    });
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
  const pieces = [
    ...peer.view.map(([start, end]) => [start, end] as const),
    ...table.unmappedGaps.map((hole) => [hole.address, hole.address + hole.size] as const),
  ];
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
    assert.deepEqual(peer.view, [
      [0n, 0x10000n, false],
      [0x10000n, 0x11000n, true],
      [0x11000n, DMA_SPACE_END, false],
    ]);
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
    assert.deepEqual(peer.view, [
      [0n, 0x18000n, false],
      [0x18000n, 0x19000n, true],
      [0x19000n, 0x20000n, false],
      [0x20000n, 0x21000n, true],
      [0x21000n, DMA_SPACE_END, false],
    ]);
  });

  it('maps the freed pieces back one by one when the merged gap of an unmap is refused', async () => {
    await table.dmaMap(run(0x10n));
    peer.failMaps = 1; // the merged gap [0, END)
    await table.dmaUnmap(0x10000n, 0x1000n);
    assert.equal(errors.length, 1);
    assert.deepEqual(peer.view, [
      [0n, 0x10000n, false],
      [0x10000n, 0x11000n, false],
      [0x11000n, DMA_SPACE_END, false],
    ]);
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
          await (map && !held ? subject.dmaMap(run(BigInt(page))) : held ? subject.dmaUnmap(BigInt(page) * PAGE, PAGE) : Promise.resolve()).catch(
            () => undefined,
          );
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

/** libvfio-user's limit: an fd-less (or any) DMA region above 8 TiB is refused with ENOSPC. */
const LIBVFIO_USER_MAX_DMA_SIZE = 8n << 40n;

/** A peer that refuses any mapping larger than `limit` with an errno reply, as libvfio-user does. */
class SizeLimitedPeer extends FlakyPeer {
  refusedSizes: bigint[] = [];
  constructor(
    readonly limit: bigint,
    private readonly mapLimit = 1 << 16,
  ) {
    super();
  }

  override get maxDmaMaps(): number {
    return this.mapLimit;
  }

  override async dmaMap(request: { address: bigint; size: bigint; readable?: boolean; writable?: boolean; fd?: FileDescriptor }): Promise<void> {
    if (request.size > this.limit) {
      this.refusedSizes.push(request.size);
      throw new VfioUserRemoteError(ERRNO.ENOSPC, 2, 1);
    }
    return super.dmaMap(request);
  }
}

/** The peer's fd-less mappings and the table's holes tile `windows` exactly; none crosses a multiple of `piece`. */
function assertCoveredIn(peer: FlakyPeer, table: DeviceDmaTable, windows: readonly { address: bigint; size: bigint }[], piece: bigint): void {
  const gaps = [
    ...peer.view.filter(([, , withFd]) => !withFd).map(([start, end]) => [start, end] as const),
    ...table.unmappedGaps.map((hole) => [hole.address, hole.address + hole.size] as const),
  ];
  const runs = peer.view.filter(([, , withFd]) => withFd).map(([start, end]) => [start, end] as const);
  for (const [start, end] of gaps) {
    assert.ok(end - start <= piece, `gap [0x${start.toString(16)}, 0x${end.toString(16)}) is larger than a piece`);
    assert.equal(start / piece, (end - 1n) / piece, `gap [0x${start.toString(16)}, 0x${end.toString(16)}) crosses a piece boundary`);
  }
  const pieces = [...gaps, ...runs].sort((a, b) => (a[0] < b[0] ? -1 : 1));
  const covered: [bigint, bigint][] = [];
  for (const [start, end] of pieces) {
    const last = covered[covered.length - 1];
    if (last !== undefined) assert.ok(last[1] <= start, `overlap at 0x${start.toString(16)}`);
    if (last !== undefined && last[1] === start) last[1] = end;
    else covered.push([start, end]);
  }
  // Runs may stick out of the windows; everything inside them is covered, and gaps never leave them.
  for (const window of windows) {
    const end = window.address + window.size;
    assert.ok(
      covered.some(([start, stop]) => start <= window.address && end <= stop),
      `window [0x${window.address.toString(16)}, 0x${end.toString(16)}) is covered`,
    );
  }
  for (const [start, end] of gaps) {
    assert.ok(
      windows.some((window) => window.address <= start && end <= window.address + window.size),
      `gap [0x${start.toString(16)}, 0x${end.toString(16)}) lies in a window`,
    );
  }
}

describe('vmm: DeviceDmaTable against a peer that limits the size of a mapping (libvfio-user)', () => {
  it('keeps the whole space in one mapping for a peer that takes it (our own server)', async () => {
    const peer = new FlakyPeer();
    const table = new DeviceDmaTable(peer);
    await table.start();
    assert.deepEqual(peer.view, [[0n, DMA_SPACE_END, false]]);
    assert.deepEqual(table.coverage, { windows: [{ address: 0n, size: DMA_SPACE_END }], pieceSize: undefined });
    assert.equal(table.maxDmaMaps, Math.floor((peer.maxDmaMaps - 1) / 2));
  });

  it('learns the size limit from the refusal and covers what the IOMMU translates in aligned 8 TiB pieces', async () => {
    const peer = new SizeLimitedPeer(LIBVFIO_USER_MAX_DMA_SIZE);
    const table = new DeviceDmaTable(peer);
    await table.start();
    assert.equal(table.coverage.pieceSize, LIBVFIO_USER_MAX_DMA_SIZE);
    assert.deepEqual(table.coverage.windows, TRANSLATABLE_IOVA);
    // The whole space first, then halving from 2^48 down to the first size accepted.
    assert.deepEqual(peer.refusedSizes, [DMA_SPACE_END, 1n << 48n, 1n << 47n, 1n << 46n, 1n << 45n, 1n << 44n]);
    const lower = 32;
    const upper = 16;
    assert.equal(peer.view.length, lower + upper);
    assert.deepEqual(peer.view[0], [0n, LIBVFIO_USER_MAX_DMA_SIZE, false]);
    assert.deepEqual(peer.view[lower - 1], [(1n << 48n) - LIBVFIO_USER_MAX_DMA_SIZE, 1n << 48n, false]);
    assert.deepEqual(peer.view[lower], [(1n << 64n) - (1n << 47n), (1n << 64n) - (1n << 47n) + LIBVFIO_USER_MAX_DMA_SIZE, false]);
    assert.deepEqual(peer.view[peer.view.length - 1], [(1n << 64n) - LIBVFIO_USER_MAX_DMA_SIZE, DMA_SPACE_END, false]);
    assert.equal(table.maxDmaMaps, Math.floor((peer.maxDmaMaps - lower - upper) / 2));
    assertCoveredIn(peer, table, TRANSLATABLE_IOVA, LIBVFIO_USER_MAX_DMA_SIZE);
  });

  it('splits only the piece a run lands in, spans a piece boundary with one run, and restores both pieces on unmap', async () => {
    const peer = new SizeLimitedPeer(LIBVFIO_USER_MAX_DMA_SIZE);
    const table = new DeviceDmaTable(peer);
    await table.start();
    const before = peer.view;
    const inside = run(0x10n);
    await table.dmaMap(inside);
    assert.deepEqual(peer.view.slice(0, 4), [
      [0n, 0x10000n, false],
      [0x10000n, 0x11000n, true],
      [0x11000n, LIBVFIO_USER_MAX_DMA_SIZE, false],
      [LIBVFIO_USER_MAX_DMA_SIZE, 2n * LIBVFIO_USER_MAX_DMA_SIZE, false],
    ]);
    const boundaryPage = LIBVFIO_USER_MAX_DMA_SIZE / PAGE;
    await table.dmaMap(run(boundaryPage - 1n, 2n));
    assert.deepEqual(peer.view.slice(2, 6), [
      [0x11000n, LIBVFIO_USER_MAX_DMA_SIZE - PAGE, false],
      [LIBVFIO_USER_MAX_DMA_SIZE - PAGE, LIBVFIO_USER_MAX_DMA_SIZE + PAGE, true],
      [LIBVFIO_USER_MAX_DMA_SIZE + PAGE, 2n * LIBVFIO_USER_MAX_DMA_SIZE, false],
      [2n * LIBVFIO_USER_MAX_DMA_SIZE, 3n * LIBVFIO_USER_MAX_DMA_SIZE, false],
    ]);
    assertCoveredIn(peer, table, TRANSLATABLE_IOVA, LIBVFIO_USER_MAX_DMA_SIZE);
    await table.dmaUnmap(LIBVFIO_USER_MAX_DMA_SIZE - PAGE, 2n * PAGE);
    await table.dmaUnmap(inside.address, inside.size);
    assert.deepEqual(peer.view, before);
  });

  it('maps a run outside the translatable space as it is, and leaves no gap behind when it goes', async () => {
    const peer = new SizeLimitedPeer(LIBVFIO_USER_MAX_DMA_SIZE);
    const table = new DeviceDmaTable(peer);
    await table.start();
    const before = peer.view;
    await table.dmaMap({ ...run(0n), address: 1n << 50n });
    assert.equal(peer.view.length, before.length + 1);
    await table.dmaUnmap(1n << 50n, PAGE);
    assert.deepEqual(peer.view, before);
  });

  it('gives up with a typed error when covering would take more than half of max_dma_maps', async () => {
    const peer = new SizeLimitedPeer(LIBVFIO_USER_MAX_DMA_SIZE, 16);
    const table = new DeviceDmaTable(peer);
    await assert.rejects(table.start(), {
      code: 'ERR_VIOMMU_DMA_TABLE',
      message: /errno 28\).*refused pieces down to 70368744177664 bytes.*more than half of its 16 mappings \(max_dma_maps\)/,
    });
  });

  it("does not guess a limit from a failure that is not the peer's errno", async () => {
    const peer = new FlakyPeer();
    peer.failMaps = 1;
    const table = new DeviceDmaTable(peer);
    await assert.rejects(table.start(), /refused \(ENOMEM\)/);
    assert.deepEqual(peer.view, []);
  });

  it('covers the windows after any mix of maps, unmaps and refusals, no gap larger than a piece', async () => {
    const piece = 0x8000n;
    const windows = [
      { address: 0n, size: 0x20000n },
      { address: 0x40000n, size: 0x10000n },
    ];
    const step = fc.record({
      page: fc.integer({ min: 0, max: 0x50 }),
      pages: fc.integer({ min: 1, max: 12 }),
      map: fc.boolean(),
      failMaps: fc.integer({ min: 0, max: 3 }),
      failUnmaps: fc.integer({ min: 0, max: 1 }),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(step, { maxLength: 30 }), async (steps) => {
        const limited = new SizeLimitedPeer(piece);
        const subject = new DeviceDmaTable(limited, () => undefined, { translatable: windows });
        await subject.start();
        assert.equal(subject.coverage.pieceSize, piece);
        for (const { page, pages, map, failMaps, failUnmaps } of steps) {
          limited.failMaps = failMaps;
          limited.failUnmaps = failUnmaps;
          const address = BigInt(page) * PAGE;
          const held = subject.shared.find((shared) => shared.address <= address && address < shared.address + shared.size);
          if (held !== undefined) await subject.dmaUnmap(held.address, held.size).catch(() => undefined);
          else if (map) {
            const wanted = { start: address, end: address + BigInt(pages) * PAGE };
            if (!subject.shared.some((shared) => shared.address < wanted.end && wanted.start < shared.address + shared.size)) {
              await subject.dmaMap(run(BigInt(page), BigInt(pages))).catch(() => undefined);
            }
          }
          assertCoveredIn(limited, subject, windows, piece);
        }
        limited.failMaps = 0;
        limited.failUnmaps = 0;
        for (const shared of subject.shared) await subject.dmaUnmap(shared.address, shared.size);
        await subject.dmaMap(run(0x4fn));
        assert.deepEqual(subject.unmappedGaps, [], 'holes are mapped again on the next change');
        assertCoveredIn(limited, subject, windows, piece);
      }),
      { numRuns: 200 },
    );
  });
});
