/**
 * One fd per DMA backing file: a client whose DMA_MAPs each carry an fd of the same file (the shadow backend sends
 * the guest-RAM memfd with every run) leaves one fd open in the server, not one per DMA_MAP; refusals leak nothing.
 */

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DmaFault, EFAULT, EPERM } from '../../../lib/memory';
import { native, type FileDescriptor, type Mapping } from '../../../lib/native';
import type { VfioUserConnection } from '../../../lib/vfio-user/connection';
import { VfioUserRemoteError } from '../../../lib/vfio-user/connection-errors';
import { ERRNO } from '../../../lib/errno';
import { DMA_MAP_FLAGS } from '../../../lib/vfio-user/protocol';
import type { VfioUserServerOptions } from '../../../lib/vfio-user/server/server';
import { openFdCount, waitFor } from '../../helpers';
import { cleanupAfterEachTest, connect, dmaMapBody, RW, serve } from './harness';

const PAGE = 0x1000;
const PIECES = 2000;
/** Pieces sit on every other IOVA page, so no two are adjacent. */
const IOVA_BASE = 0x10000000n;
const READ = DMA_MAP_FLAGS.bits.READ;

function iovaOf(piece: number): bigint {
  return IOVA_BASE + BigInt(piece * 2 * PAGE);
}

/** Piece i lives at page (7 i mod 2N) of the file: scattered, distinct, never two neighbours in a row. */
function filePageOf(piece: number, pieces = PIECES): number {
  return (piece * 7) % (2 * pieces);
}

/** The fds this process holds: what the kernel lists, and the addon's FileDescriptor objects that own one. */
function fdCounts(): { open: number; live: number } {
  return { open: openFdCount(), live: native.liveFileDescriptors() };
}

function errnoOf(error: unknown): number | undefined {
  return error instanceof VfioUserRemoteError ? error.errno : undefined;
}

async function refusal(request: Promise<unknown>): Promise<number | undefined> {
  return request.then(() => undefined, errnoOf);
}

function isFault(errno: number): (error: unknown) => boolean {
  return (error: unknown) => error instanceof DmaFault && error.errno === errno;
}

/** Sends DMA_MAPs in batches (each carrying its own copy of `fd`, as SCM_RIGHTS gives one per message). */
async function mapPieces(
  c: VfioUserConnection,
  count: number,
  fdOf: (piece: number) => FileDescriptor,
  flags = RW,
  pages = 2 * count,
): Promise<void> {
  const batch = 100;
  for (let first = 0; first < count; first += batch) {
    const requests: Promise<unknown>[] = [];
    for (let piece = first; piece < Math.min(count, first + batch); piece++) {
      const offset = BigInt(filePageOf(piece, pages / 2) * PAGE);
      requests.push(c.request('DMA_MAP', dmaMapBody(iovaOf(piece), BigInt(PAGE), flags, offset), { fds: [fdOf(piece)] }));
    }
    await Promise.all(requests);
  }
}

async function unmap(c: VfioUserConnection, address: bigint, size: bigint): Promise<void> {
  await c.request('DMA_UNMAP', { argsz: 24, flags: 0, address, size });
}

function u32(bytes: Uint8Array, at: number): number {
  return new DataView(bytes.buffer, bytes.byteOffset).getUint32(at, true);
}

describe('vfio-user server: one fd per DMA backing file', function () {
  this.timeout(60000);
  const cleanup = cleanupAfterEachTest();

  function served(options: VfioUserServerOptions = {}) {
    return serve(cleanup, undefined, options);
  }

  /** A sealed memfd and this process's own writable view of it (to check where DMA landed). */
  function memfd(name: string, size: number): { fd: FileDescriptor; bytes: Uint8Array; mapping: Mapping } {
    const fd = native.memfdCreate(name, size);
    const mapping = native.mapFd(fd, 0, size, true);
    cleanup.add(() => (mapping.unmap(), fd.close()));
    return { fd, bytes: new Uint8Array(mapping.window(0)), mapping };
  }

  it(`keeps one fd for ${PIECES} DMA_MAPs of one memfd, DMA reaches each piece, and unmapping all closes it`, async () => {
    const server = served();
    const c = await connect(cleanup, server.path);
    const ram = memfd('guest-ram', 2 * PIECES * PAGE);
    const before = fdCounts();

    await mapPieces(c, PIECES, () => ram.fd);
    const mapped = fdCounts();
    assert.equal(server.server.session?.dmaMaps.size, PIECES);
    assert.ok(
      mapped.live - before.live <= 1 && mapped.open - before.open <= 2,
      `${PIECES} DMA_MAPs of one memfd left ${mapped.open - before.open} more fds open (${mapped.live - before.live} more FileDescriptors); one file wants about one`,
    );

    // Device DMA lands at each piece's offset in the memfd, and reads back what the client put there.
    const dma = server.device.dma;
    for (let piece = 0; piece < PIECES; piece++) {
      const at = filePageOf(piece) * PAGE;
      const word = new Uint8Array(4);
      new DataView(word.buffer).setUint32(0, 0xa0000000 + piece, true);
      await dma.write(iovaOf(piece) + 8n, word);
      assert.equal(u32(ram.bytes, at + 8), 0xa0000000 + piece, `piece ${piece} at file offset 0x${at.toString(16)}`);
      new DataView(ram.bytes.buffer).setUint32(at + PAGE - 4, 0xb0000000 + piece, true);
      const read = new Uint8Array(PAGE);
      await dma.read(iovaOf(piece), read);
      assert.equal(u32(read, 8), 0xa0000000 + piece);
      assert.equal(u32(read, PAGE - 4), 0xb0000000 + piece);
    }
    // A piece ends where it ends: the page after it (mapped in the file, not at this IOVA) is out of reach.
    assert.throws(() => dma.read(iovaOf(0) + BigInt(PAGE) - 2n, new Uint8Array(4)), isFault(EFAULT));

    // The device's zero-copy views show the same bytes, each exactly its own piece.
    const mappings = server.server.session!.dmaMaps.mappings;
    const first = mappings[0]!;
    const last = mappings[PIECES - 1]!;
    assert.equal(first.memory!.byteLength, PAGE);
    assert.equal(u32(first.memory!, 8), 0xa0000000);
    assert.equal(u32(last.memory!, PAGE - 4), 0xb0000000 + PIECES - 1);

    // Unmapping all pieces but the last keeps the file's one fd; each unmapped piece is gone at once.
    for (let piece = 0; piece < PIECES - 1; piece++) await unmap(c, iovaOf(piece), BigInt(PAGE));
    assert.equal(first.memory!.byteLength, 0, 'the view of an unmapped piece is detached, though its file is still mapped');
    assert.throws(() => dma.read(iovaOf(0), new Uint8Array(4)), isFault(EFAULT));
    assert.deepEqual(fdCounts(), mapped, 'the file stays open while a piece of it is mapped');
    const read = new Uint8Array(4);
    await dma.read(iovaOf(PIECES - 1) + 8n, read);
    assert.equal(u32(read, 0), 0xa0000000 + PIECES - 1);

    await unmap(c, iovaOf(PIECES - 1), BigInt(PAGE));
    assert.equal(last.memory!.byteLength, 0);
    assert.deepEqual(fdCounts(), before, 'the last DMA_UNMAP of the file closes its fd');
  });

  it('keeps one fd per file: two memfds mapped in turn give two', async () => {
    const server = served();
    const c = await connect(cleanup, server.path);
    const a = memfd('ram-a', 400 * PAGE);
    const b = memfd('ram-b', 400 * PAGE);
    const before = fdCounts();
    await mapPieces(c, 200, (piece) => (piece % 2 === 0 ? a.fd : b.fd));
    const mapped = fdCounts();
    assert.equal(mapped.live - before.live, 2);
    assert.ok(mapped.open - before.open <= 3, `${mapped.open - before.open} more fds open`);
    await server.device.dma.write(iovaOf(0), Uint8Array.of(0x11));
    await server.device.dma.write(iovaOf(1), Uint8Array.of(0x22));
    assert.equal(a.bytes[filePageOf(0, 200) * PAGE], 0x11);
    assert.equal(b.bytes[filePageOf(1, 200) * PAGE], 0x22);
    await c.request('DMA_UNMAP', { argsz: 24, flags: 2, address: 0n, size: 0n });
    assert.deepEqual(fdCounts(), before);
  });

  it('checks rights per mapping: a read-only and a writable piece of one file share its fd', async () => {
    const server = served();
    const c = await connect(cleanup, server.path);
    const ram = memfd('ram-rights', 4 * PAGE);
    ram.bytes.fill(0x33);
    const before = fdCounts();
    await c.request('DMA_MAP', dmaMapBody(0x100000n, BigInt(PAGE), READ, 0n), { fds: [ram.fd] });
    await c.request('DMA_MAP', dmaMapBody(0x200000n, BigInt(PAGE), RW, BigInt(PAGE)), { fds: [ram.fd] });
    await c.request('DMA_MAP', dmaMapBody(0x300000n, BigInt(PAGE), READ, 0n), { fds: [ram.fd] });
    assert.equal(fdCounts().live - before.live, 1);

    const dma = server.device.dma;
    assert.throws(() => dma.write(0x100000n, Uint8Array.of(1)), isFault(EPERM));
    await dma.write(0x200000n, Uint8Array.of(0x44));
    assert.equal(ram.bytes[PAGE], 0x44);
    // A read-only piece's view is a private copy: a stray write by the device never reaches the client's file.
    const readOnly = server.server.session!.dmaMaps.mappings.find((m) => m.address === 0x100000n)!;
    readOnly.memory![0] = 0x99;
    assert.equal(ram.bytes[0], 0x33);
    const seen = new Uint8Array(1);
    await dma.read(0x300000n, seen);
    assert.equal(seen[0], 0x33, 'nor the other read-only mapping of the same page');

    await c.request('DMA_UNMAP', { argsz: 24, flags: 2, address: 0n, size: 0n });
    assert.deepEqual(fdCounts(), before);
  });

  it('never lends a read-write fd it keeps to an fd of the same file opened read-only', async () => {
    const server = served();
    const c = await connect(cleanup, server.path);
    const ram = memfd('ram-modes', 4 * PAGE);
    const readOnlyFd = native.adoptFd(fs.openSync(`/proc/self/fd/${ram.fd.fd}`, 'r'));
    cleanup.add(() => readOnlyFd.close());
    const before = fdCounts();
    await c.request('DMA_MAP', dmaMapBody(0x100000n, BigInt(PAGE), RW, 0n), { fds: [ram.fd] });
    assert.equal(await refusal(c.request('DMA_MAP', dmaMapBody(0x200000n, BigInt(PAGE), RW, BigInt(PAGE)), { fds: [readOnlyFd] })), ERRNO.EINVAL);
    assert.equal(fdCounts().live - before.live, 1, 'the refused fd was closed');
    await c.request('DMA_MAP', dmaMapBody(0x200000n, BigInt(PAGE), READ, BigInt(PAGE)), { fds: [readOnlyFd] });
    assert.equal(fdCounts().live - before.live, 2, 'another open of the file keeps its own fd');
    await c.request('DMA_UNMAP', { argsz: 24, flags: 2, address: 0n, size: 0n });
    assert.deepEqual(fdCounts(), before);
  });

  it('leaks nothing on a refused map (overlap, too short, unsealed), and the file already mapped keeps working', async () => {
    const server = served();
    const c = await connect(cleanup, server.path);
    const ram = memfd('ram-refusals', 4 * PAGE);
    const other = memfd('ram-other', PAGE);
    const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-shared-'));
    const file = path.join(directory, 'unsealed');
    const unsealed = native.adoptFd(fs.openSync(file, 'w+'));
    fs.unlinkSync(file);
    fs.ftruncateSync(unsealed.fd, 4 * PAGE);
    cleanup.add(() => unsealed.close());
    const before = fdCounts();

    await c.request('DMA_MAP', dmaMapBody(0x100000n, BigInt(2 * PAGE), RW, 0n), { fds: [ram.fd] });
    const mapped = fdCounts();
    assert.equal(mapped.live - before.live, 1);
    const refusals = [
      // Overlaps, carrying the fd of the file already mapped and of a file not mapped yet.
      [dmaMapBody(0x101000n, BigInt(PAGE), RW, BigInt(2 * PAGE)), ram.fd, ERRNO.EEXIST],
      [dmaMapBody(0x0ff000n, BigInt(2 * PAGE), RW, 0n), other.fd, ERRNO.EEXIST],
      // Past the end of the file, known and new.
      [dmaMapBody(0x200000n, BigInt(2 * PAGE), RW, BigInt(3 * PAGE)), ram.fd, ERRNO.EINVAL],
      [dmaMapBody(0x200000n, BigInt(2 * PAGE), RW, 0n), other.fd, ERRNO.EINVAL],
      [dmaMapBody(0x200000n, BigInt(PAGE), RW, 0n), unsealed, ERRNO.EPERM],
    ] as const;
    for (const [body, fd, errno] of refusals) {
      assert.equal(await refusal(c.request('DMA_MAP', body, { fds: [fd] })), errno, `DMA_MAP at 0x${body.address.toString(16)}`);
      assert.deepEqual(fdCounts(), mapped, `a refused DMA_MAP (errno ${errno}) left no fd behind`);
    }
    await server.device.dma.write(0x101000n, Uint8Array.of(0x5a));
    assert.equal(ram.bytes[PAGE], 0x5a);
    await unmap(c, 0x100000n, BigInt(2 * PAGE));
    assert.deepEqual(fdCounts(), before);
  });

  it('maps a piece past the old end of a file that grew, still with one fd', async () => {
    const server = served();
    const c = await connect(cleanup, server.path);
    const fd = native.memfdCreate('ram-grows', 2 * PAGE);
    cleanup.add(() => fd.close());
    const before = fdCounts();
    await c.request('DMA_MAP', dmaMapBody(0x100000n, BigInt(PAGE), RW, BigInt(PAGE)), { fds: [fd] });
    fs.ftruncateSync(fd.fd, 8 * PAGE);
    await c.request('DMA_MAP', dmaMapBody(0x200000n, BigInt(PAGE), RW, BigInt(6 * PAGE)), { fds: [fd] });
    assert.equal(fdCounts().live - before.live, 1);
    await server.device.dma.write(0x100000n, Uint8Array.of(0x61));
    await server.device.dma.write(0x200000n, Uint8Array.of(0x62));
    const check = native.mapFd(fd, 0, 8 * PAGE, false);
    const bytes = new Uint8Array(check.window(0));
    assert.equal(bytes[PAGE], 0x61);
    assert.equal(bytes[6 * PAGE], 0x62);
    check.unmap();
    await unmap(c, 0x100000n, BigInt(PAGE));
    await server.device.dma.write(0x200000n, Uint8Array.of(0x63));
    await unmap(c, 0x200000n, BigInt(PAGE));
    assert.deepEqual(fdCounts(), before);
  });

  it('keeps one fd for many pieces of one unsealed file reached by pread/pwrite', async () => {
    const server = served({ allowUnsealedDmaFds: true });
    const c = await connect(cleanup, server.path);
    const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-shared-'));
    const file = path.join(directory, 'ram');
    const fd = native.adoptFd(fs.openSync(file, 'w+'));
    fs.unlinkSync(file);
    fs.ftruncateSync(fd.fd, 200 * PAGE);
    cleanup.add(() => fd.close());
    const before = fdCounts();
    await mapPieces(c, 100, () => fd, RW, 200);
    assert.equal(fdCounts().live - before.live, 1);
    await server.device.dma.write(iovaOf(37) + 3n, Uint8Array.of(0x7e));
    const byte = Buffer.alloc(1);
    fs.readSync(fd.fd, byte, 0, 1, filePageOf(37, 100) * PAGE + 3);
    assert.equal(byte[0], 0x7e);
    await c.request('DMA_UNMAP', { argsz: 24, flags: 2, address: 0n, size: 0n });
    await waitFor(() => native.liveFileDescriptors() === before.live, 'the file to be closed');
    assert.deepEqual(fdCounts(), before);
  });
});
