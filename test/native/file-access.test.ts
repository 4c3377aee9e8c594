/** readFile/writeFile: the addon's way into files a peer may shrink, checked against the file's size every time. */

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { native, type FileDescriptor } from '../../lib/native';

function code(expected: string): (error: unknown) => boolean {
  return (error: unknown) => (error as { code?: string }).code === expected;
}

describe('native readFile/writeFile', () => {
  const open: FileDescriptor[] = [];
  afterEach(() => {
    for (const fd of open.splice(0)) fd.close();
  });

  function scratchFile(size: number): FileDescriptor {
    const file = path.join(os.tmpdir(), `viommu-file-access-${process.pid}-${Math.random().toString(36).slice(2)}`);
    const fd = native.adoptFd(fs.openSync(file, 'w+'));
    fs.unlinkSync(file);
    open.push(fd);
    fs.ftruncateSync(fd.fd, size);
    return fd;
  }

  it('reads and writes inside the file', () => {
    const fd = scratchFile(0x2000);
    assert.equal(native.writeFile(fd, 0x1ffc, Uint8Array.of(1, 2, 3, 4)), 4);
    const back = new Uint8Array(4);
    assert.equal(native.readFile(fd, 0x1ffc, back), 4);
    assert.deepEqual(back, Uint8Array.of(1, 2, 3, 4));
    assert.equal(native.readFile(fd, 0x2000, new Uint8Array(0)), 0);
  });

  it('refuses ranges past the current end (ENXIO) before moving anything, so a write never grows the file', () => {
    const fd = scratchFile(0x2000);
    fs.ftruncateSync(fd.fd, 0x1000);
    const into = new Uint8Array(8).fill(0xcc);
    assert.throws(() => native.readFile(fd, 0xffc, into), code('ENXIO'));
    assert.deepEqual(into, new Uint8Array(8).fill(0xcc));
    assert.throws(() => native.writeFile(fd, 0x1800, Uint8Array.of(1)), code('ENXIO'));
    assert.equal(fs.fstatSync(fd.fd).size, 0x1000);
  });

  it('refuses what is not a regular file (ENODEV) and arguments of the wrong kind', () => {
    const event = native.eventfdCreate();
    open.push(event);
    assert.throws(() => native.readFile(event, 0, new Uint8Array(0)), code('ENODEV'));
    const fd = scratchFile(0x1000);
    assert.throws(() => native.readFile(fd, -1, new Uint8Array(1)), code('ERR_INVALID_ARG_VALUE'));
    assert.throws(() => native.readFile(fd, 0, [] as unknown as Uint8Array), code('ERR_INVALID_ARG_TYPE'));
    fd.close();
    assert.throws(() => native.writeFile(fd, 0, new Uint8Array(1)), code('EBADF'));
  });
});
