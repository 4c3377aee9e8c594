/** Mappings larger than one ArrayBuffer may be (Node 20: 4 GiB), reached through windows of at most 1 GiB. */

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { SharedRegion } from '../../lib/memory';
import { native, type FileDescriptor, type Mapping } from '../../lib/native';

const GiB = 2 ** 30;

/** ftruncate only: a sparse memfd costs no RAM beyond the pages a test touches. */
function sparseMemfd(size: number): FileDescriptor {
  return native.memfdCreate('large-mapping', size);
}

function isSystemError(code: string): (error: unknown) => boolean {
  return (error: unknown) => (error as { code?: string }).code === code;
}

describe('native mappings larger than 4 GiB', () => {
  const open: { fd: FileDescriptor; mapping?: Mapping }[] = [];
  afterEach(() => {
    for (const { fd, mapping } of open.splice(0)) {
      mapping?.unmap();
      fd.close();
    }
  });

  function mapSparse(size: number): { fd: FileDescriptor; mapping: Mapping } {
    const fd = sparseMemfd(size);
    const entry: { fd: FileDescriptor; mapping?: Mapping } = { fd };
    open.push(entry);
    entry.mapping = native.mapFd(fd, 0, size, true);
    return { fd, mapping: entry.mapping };
  }

  it('windows an 8 GiB mapping in 1 GiB pieces and refuses one whole buffer with a typed error, not an abort', () => {
    const { fd, mapping } = mapSparse(8 * GiB);
    assert.equal(mapping.length, 8 * GiB);
    assert.equal(native.mappingWindowSize, GiB);
    assert.equal(mapping.windowCount, 8);
    assert.throws(() => mapping.buffer, isSystemError('EFBIG'));
    for (const index of [0, 3, 4, 7]) assert.equal(mapping.window(index).byteLength, GiB);
    assert.throws(() => mapping.window(8), isSystemError('ERANGE'));
    assert.throws(
      () => mapping.window(-1),
      (error: unknown) => (error as { code?: string }).code === 'ERR_INVALID_ARG_VALUE',
    );

    // The window at 4 GiB is the file at 4 GiB: written through the mapping, read back with pread.
    new Uint8Array(mapping.window(4), 0, 4).set([1, 2, 3, 4]);
    new Uint8Array(mapping.window(7), GiB - 2, 2).set([0xee, 0xff]);
    const probe = Buffer.alloc(4);
    fs.readSync(fd.fd, probe, 0, 4, 4 * GiB);
    assert.deepEqual([...probe], [1, 2, 3, 4]);
    fs.readSync(fd.fd, probe, 0, 2, 8 * GiB - 2);
    assert.deepEqual([...probe.subarray(0, 2)], [0xee, 0xff]);
  });

  it('gives the last window only what is left, and the whole buffer up to 4 GiB as before', () => {
    const page = native.pageSize;
    const { mapping } = mapSparse(GiB + page);
    assert.equal(mapping.windowCount, 2);
    assert.equal(mapping.window(1).byteLength, page);
    assert.equal(mapping.buffer.byteLength, GiB + page);
    const { mapping: justOver } = mapSparse(4 * GiB + page);
    assert.throws(() => justOver.buffer, isSystemError('EFBIG'));
    assert.equal(justOver.window(4).byteLength, page);
  });

  it('detaches every window on unmap, so no view reaches freed memory', () => {
    const { mapping } = mapSparse(3 * GiB);
    const views = [0, 1, 2].map((index) => new Uint8Array(mapping.window(index)));
    views[2]![0] = 7;
    assert.equal(mapping.unmap(), true);
    for (const view of views) assert.equal(view.byteLength, 0);
    assert.throws(() => mapping.window(0), isSystemError('EBADF'));
  });

  it('lets a SharedRegion copy across windows, check its bounds, and move nothing once closed', () => {
    const region = SharedRegion.fromFd(sparseMemfd(3 * GiB), {}, 'three-gib');
    try {
      const across = Uint8Array.from({ length: 64 }, (_, i) => i + 1);
      assert.equal(region.copyIn(2 * GiB - 32, across), true);
      const back = new Uint8Array(64);
      assert.equal(region.copyOut(2 * GiB - 32, back), true);
      assert.deepEqual(back, across);
      assert.equal(region.view(2 * GiB - 32, 64), undefined, 'no single view spans two windows');
      assert.deepEqual(region.view(2 * GiB - 32, 32), across.subarray(0, 32));
      assert.throws(
        () => region.copyOut(3 * GiB - 8, new Uint8Array(16)),
        (error: unknown) => (error as { code?: string }).code === 'ERR_REGION_RANGE',
      );
      assert.throws(
        () => region.copyOut(-1, new Uint8Array(1)),
        (error: unknown) => (error as { code?: string }).code === 'ERR_REGION_RANGE',
      );
    } finally {
      region.close();
    }
    const untouched = new Uint8Array(8).fill(0xcc);
    assert.equal(region.copyOut(0, untouched), false);
    assert.deepEqual(untouched, new Uint8Array(8).fill(0xcc));
  });
});
