/** The addon's shared memory: memfd regions, mappings of fds, detaching on unmap, and fd ownership. */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { FILE_SEALS, native } from '../../lib/native';
import { SharedRegion } from '../../lib/memory';
import { openFdCount } from '../helpers';

const page = native.pageSize;

describe('native shared memory', () => {
  it("maps one memfd twice and each mapping sees the other one's writes", () => {
    const fd = native.memfdCreate('twice', 2 * page);
    const a = native.mapFd(fd, 0, 2 * page, true);
    const b = native.mapFd(fd, page, page, true);
    new Uint8Array(a.buffer)[page + 5] = 0xab;
    assert.equal(new Uint8Array(b.buffer)[5], 0xab);
    new Uint8Array(b.buffer)[6] = 0xcd;
    assert.equal(new Uint8Array(a.buffer)[page + 6], 0xcd);
    a.unmap();
    b.unmap();
    fd.close();
  });

  it('describes a memfd as /proc does and reports its size', () => {
    const fd = native.memfdCreate('guest-ram', page);
    assert.match(fd.describe(), /^\/memfd:guest-ram/);
    assert.equal(fd.size(), page);
    fd.close();
    assert.equal(fd.describe(), 'closed');
  });

  it('detaches the ArrayBuffer on unmap so later access is a clean error, not a crash', () => {
    const fd = native.memfdCreate('detach', page);
    const mapping = native.mapFd(fd, 0, page, true);
    const bytes = new Uint8Array(mapping.buffer);
    const view = new DataView(mapping.buffer);
    bytes[0] = 1;
    assert.equal(mapping.unmap(), true);
    assert.equal(mapping.mapped, false);
    assert.equal(bytes.length, 0);
    assert.equal(bytes[0], undefined);
    bytes[0] = 7; // a write into a detached view is dropped by the engine
    assert.throws(() => view.getUint8(0), TypeError);
    assert.throws(
      () => mapping.buffer,
      (error: NodeJS.ErrnoException) => error.code === 'EBADF',
    );
    assert.equal(mapping.unmap(), false);
    fd.close();
  });

  it('keeps read-only mappings private: JS writes neither crash nor reach the shared file', () => {
    const fd = native.memfdCreate('ro', page);
    const writable = native.mapFd(fd, 0, page, true);
    const readOnly = native.mapFd(fd, 0, page, false);
    assert.equal(readOnly.writable, false);
    new Uint8Array(writable.buffer)[0] = 0x11;
    assert.equal(new Uint8Array(readOnly.buffer)[0], 0x11, "sees the peer's writes");
    new Uint8Array(readOnly.buffer)[1] = 0x22;
    assert.equal(new Uint8Array(writable.buffer)[1], 0, 'own writes stay private');
    writable.unmap();
    readOnly.unmap();
    fd.close();
  });

  it('refuses ranges past the end of the file, unaligned offsets and closed fds with errno-named errors', () => {
    const fd = native.memfdCreate('small', page);
    assert.throws(
      () => native.mapFd(fd, 0, 2 * page, true),
      (error: any) => error.code === 'ENXIO' && error.syscall === 'mmap' && /beyond the file/.test(error.message) && error.errno === 6,
    );
    assert.throws(
      () => native.mapFd(fd, 1, 16, true),
      (error: any) => error.code === 'EINVAL',
    );
    assert.throws(
      () => native.mapFd(fd, 0, 0, true),
      (error: any) => error.code === 'ERR_INVALID_ARG_VALUE',
    );
    fd.close();
    assert.throws(
      () => native.mapFd(fd, 0, page, true),
      (error: any) => error.code === 'EBADF',
    );
    assert.throws(
      () => native.mapFd({} as never, 0, page, true),
      (error: any) => error.code === 'ERR_INVALID_ARG_TYPE',
    );
  });

  it('reports seals: a memfd from memfdCreate cannot shrink, a plain file and an eventfd have none', () => {
    const memfd = native.memfdCreate('sealed', page);
    assert.equal(memfd.seals() & FILE_SEALS.SHRINK, FILE_SEALS.SHRINK);
    memfd.close();
    assert.throws(
      () => memfd.seals(),
      (error: any) => error.code === 'EBADF',
    );
    const file = fs.openSync(__filename, 'r');
    const plain = native.adoptFd(file);
    assert.equal(plain.seals(), 0);
    plain.close();
    const event = native.eventfdCreate();
    assert.equal(event.seals(), 0);
    event.close();
  });

  it('refuses to map what is not a regular file or memfd', () => {
    const fd = native.eventfdCreate();
    assert.throws(
      () => native.mapFd(fd, 0, 8, true),
      (error: any) => error.code === 'ENODEV',
    );
    fd.close();
  });

  it('closes every fd exactly once: close twice is harmless, dup gives an independent owner', () => {
    const before = openFdCount();
    const fd = native.memfdCreate('dup', page);
    const copy = fd.dup();
    assert.notEqual(copy.fd, fd.fd);
    assert.equal(fd.close(), true);
    assert.equal(fd.close(), false);
    assert.equal(fd.closed, true);
    assert.equal(copy.size(), page);
    copy.close();
    assert.equal(openFdCount(), before);
  });

  it('leaves the open fd count where it started after 10,000 create/map/unmap/close cycles', () => {
    const before = openFdCount();
    const live = native.liveFileDescriptors();
    for (let i = 0; i < 10_000; i++) {
      const region = SharedRegion.create('cycle', page);
      new Uint8Array(region.buffer)[i % page] = i & 0xff;
      region.close();
    }
    assert.equal(openFdCount(), before);
    assert.equal(native.liveFileDescriptors(), live);
  });

  it('adopts inherited fds and refuses numbers that are not open', () => {
    assert.throws(
      () => native.adoptFd(987654),
      (error: any) => error.code === 'EBADF',
    );
    const raw = fs.openSync('/dev/null', 'r');
    const adopted = native.adoptFd(raw);
    assert.equal(adopted.fd, raw);
    assert.equal(adopted.describe(), '/dev/null');
    adopted.close();
    assert.throws(() => fs.fstatSync(raw), /EBADF/);
  });
});
