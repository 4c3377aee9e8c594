/** DMA_MAP of guest RAM larger than 4 GiB: accepted, and device DMA reaches every part of it (sparse memfds, no RAM). */

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { DmaFault, EFAULT } from '../../../lib/memory';
import { native, type FileDescriptor } from '../../../lib/native';
import { createDmaEngine } from '../../../lib/vfio-user/server/dma-engine';
import { ServeProcess } from '../cli-process';
import { BAR0, cleanupAfterEachTest, connect, dmaMapBody, readU32, serve, startEduDma, waitForEduIdle } from './harness';

const GiB = 2 ** 30;
const LARGE = 8 * GiB;
/** Far above 4 GiB, as guest RAM above the PCI hole would sit. */
const IOVA_BASE = 1n << 40n;
const EDU_BUFFER = 0x40000n;

/** ftruncate only: the test touches a few pages of it. */
function sparseMemfd(cleanup: { add(step: () => unknown): void }, size = LARGE): FileDescriptor {
  const fd = native.memfdCreate('large-guest-ram', size);
  cleanup.add(() => fd.close());
  return fd;
}

function pattern(length: number, seed: number): Uint8Array {
  return Uint8Array.from({ length }, (_, i) => (i * 31 + seed) & 0xff);
}

/** The client's view of its own RAM, with pread/pwrite: no mapping on the client side. */
function poke(fd: FileDescriptor, position: number, data: Uint8Array): void {
  assert.equal(fs.writeSync(fd.fd, data, 0, data.length, position), data.length);
}

function peek(fd: FileDescriptor, position: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  assert.equal(fs.readSync(fd.fd, out, 0, length, position), length);
  return out;
}

/** Offsets into the mapping that used to be out of reach: across 1 GiB and 4 GiB, and the very end. */
const PROBES: readonly [string, number][] = [
  ['near 0', 0x10],
  ['across the first 1 GiB', GiB - 5],
  ['across 4 GiB', 4 * GiB - 8],
  ['inside the fifth GiB', 5 * GiB + 0x12345],
  ['at the end', LARGE - 64],
];

function isFault(errno: number): (error: unknown) => boolean {
  return (error: unknown) => error instanceof DmaFault && error.errno === errno;
}

describe('vfio-user server: DMA maps larger than 4 GiB', () => {
  const cleanup = cleanupAfterEachTest();

  function serveWideEngine() {
    // QEMU's edu masks DMA addresses to 28 bits; this one sees the whole IOVA space.
    const engine = createDmaEngine({ dmaMaskBits: 64 });
    return { ...serve(cleanup, engine.device), engine };
  }

  it('maps an 8 GiB sparse memfd and moves device DMA at its start, across 1 GiB and 4 GiB, and at its end', async () => {
    const served = serveWideEngine();
    const c = await connect(cleanup, served.path);
    const ram = sparseMemfd(cleanup);
    await c.request('DMA_MAP', dmaMapBody(IOVA_BASE, BigInt(LARGE)), { fds: [ram] });
    const dma = served.device.dma;
    for (const [label, offset] of PROBES) {
      const written = pattern(48, offset & 0xff);
      await dma.write(IOVA_BASE + BigInt(offset), written);
      assert.deepEqual(peek(ram, offset, written.length), written, `device write ${label}`);
      const placed = pattern(48, (offset >> 8) & 0xff);
      poke(ram, offset, placed);
      const read = new Uint8Array(placed.length);
      await dma.read(IOVA_BASE + BigInt(offset), read);
      assert.deepEqual(read, placed, `device read ${label}`);
    }
  });

  it('runs edu transfers from near 4 GiB to the end of the mapping and back', async () => {
    const served = serveWideEngine();
    const c = await connect(cleanup, served.path);
    const ram = sparseMemfd(cleanup);
    await c.request('DMA_MAP', dmaMapBody(IOVA_BASE, BigInt(LARGE)), { fds: [ram] });
    const hops: [number, number][] = [
      [4 * GiB - 100, LARGE - 256],
      [LARGE - 256, 0x800],
      [0x800, 6 * GiB + 3],
    ];
    const first = pattern(256, 0x42);
    poke(ram, hops[0]![0], first);
    for (const [from, to] of hops) {
      await startEduDma(c, { source: IOVA_BASE + BigInt(from), destination: EDU_BUFFER, count: 256, toRam: false });
      await waitForEduIdle(c);
      await startEduDma(c, { source: EDU_BUFFER, destination: IOVA_BASE + BigInt(to), count: 256, toRam: true });
      await waitForEduIdle(c);
      assert.deepEqual(peek(ram, to, 256), first, `0x${from.toString(16)} -> 0x${to.toString(16)}`);
    }
  });

  it('maps a large range at an unaligned offset inside a larger file', async () => {
    const served = serveWideEngine();
    const c = await connect(cleanup, served.path);
    const ram = sparseMemfd(cleanup);
    const fileOffset = 3 * GiB + 0x123;
    const size = 5 * GiB - 0x1000;
    await c.request('DMA_MAP', dmaMapBody(IOVA_BASE, BigInt(size), 3, BigInt(fileOffset)), { fds: [ram] });
    for (const at of [0, GiB - 0x123 - 2, size - 16]) {
      const placed = pattern(16, at & 0xff);
      poke(ram, fileOffset + at, placed);
      const read = new Uint8Array(16);
      await served.device.dma.read(IOVA_BASE + BigInt(at), read);
      assert.deepEqual(read, placed, `mapping offset 0x${at.toString(16)}`);
    }
  });

  it('refuses accesses that leave the mapping (EFAULT) and forgets the whole range on DMA_UNMAP', async () => {
    const served = serveWideEngine();
    const c = await connect(cleanup, served.path);
    const ram = sparseMemfd(cleanup);
    await c.request('DMA_MAP', dmaMapBody(IOVA_BASE, BigInt(LARGE)), { fds: [ram] });
    const dma = served.device.dma;
    assert.throws(() => dma.read(IOVA_BASE + BigInt(LARGE - 8), new Uint8Array(16)), isFault(EFAULT));
    await c.request('DMA_UNMAP', { argsz: 24, flags: 0, address: IOVA_BASE, size: BigInt(LARGE) });
    for (const [, offset] of PROBES) assert.throws(() => dma.read(IOVA_BASE + BigInt(offset), new Uint8Array(8)), isFault(EFAULT));
  });

  it('keeps `viommu serve` alive through an 8 GiB DMA_MAP, device DMA in it, and DMA_UNMAP', async function () {
    this.timeout(30000);
    const server = await ServeProcess.start('dma-engine');
    cleanup.add(() => server.kill());
    const c = await connect(cleanup, server.socketPath);
    const ram = sparseMemfd(cleanup);
    // The sample device masks DMA addresses to 28 bits, so the mapping starts at IOVA 0.
    await c.request('DMA_MAP', dmaMapBody(0n, BigInt(LARGE)), { fds: [ram] });
    const placed = pattern(128, 9);
    poke(ram, 0x1000, placed);
    await startEduDma(c, { source: 0x1000n, destination: EDU_BUFFER, count: 128, toRam: false });
    await waitForEduIdle(c);
    await startEduDma(c, { source: EDU_BUFFER, destination: 0x0ffff000n, count: 128, toRam: true });
    await waitForEduIdle(c);
    assert.deepEqual(peek(ram, 0x0ffff000, 128), placed);
    await c.request('DMA_UNMAP', { argsz: 24, flags: 0, address: 0n, size: BigInt(LARGE) });
    assert.equal(await readU32(c, BAR0, 0), 0x010000ed, 'the edu identification register still answers');
    assert.equal(server.child.exitCode, null, `viommu serve exited (stderr: ${server.stderr})`);
    assert.doesNotMatch(server.stderr, /failed/);
    const [code, signal] = await server.stop();
    assert.deepEqual([code, signal], [0, null], server.stderr);
  });
});
