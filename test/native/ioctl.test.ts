/** The generic ioctl addon on real files: bytes in and out, pointer fields filled, errno answered, arguments checked. */

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { native, nativeIoctl, type FileDescriptor } from '../../lib/native';

/** Linux x86-64 request numbers of harmless socket ioctls. */
const FIONREAD = 0x541b;
const SIOCGIFCONF = 0x8912;
/** struct ifconf: int ifc_len, 4 bytes of padding, then the char *ifc_buf pointer; struct ifreq is 40 bytes. */
const IFCONF_SIZE = 16;
const IFCONF_BUF_OFFSET = 8;
const IFREQ_SIZE = 40;

function code(expected: string): (error: unknown) => boolean {
  return (error: unknown) => (error as { code?: string }).code === expected;
}

describe('native ioctl', () => {
  const io = nativeIoctl();
  const open: FileDescriptor[] = [];
  afterEach(() => {
    for (const fd of open.splice(0)) fd.close();
  });

  function socketPair(): [FileDescriptor, FileDescriptor] {
    const pair = native.unixSocketPair();
    open.push(...pair);
    return pair;
  }

  it("moves the kernel's answer into the argument (FIONREAD on a socket)", () => {
    const [writer, reader] = socketPair();
    fs.writeSync(writer.fd, Buffer.from('hello'));
    const count = new Uint8Array(4).fill(0xee);
    assert.equal(io.ioctl(reader.fd, FIONREAD, count), 0);
    assert.equal(new DataView(count.buffer).getInt32(0, true), 5);
  });

  it("writes a buffer's address into a pointer field, and the kernel fills that buffer (SIOCGIFCONF)", () => {
    const [socket] = socketPair();
    const ifconf = new Uint8Array(IFCONF_SIZE);
    const view = new DataView(ifconf.buffer);
    view.setInt32(0, IFREQ_SIZE * 16, true);
    const requests = new Uint8Array(IFREQ_SIZE * 16);
    assert.equal(io.ioctl(socket.fd, SIOCGIFCONF, ifconf, [{ offset: IFCONF_BUF_OFFSET, buffer: requests }]), 0);
    assert.notEqual(view.getBigUint64(IFCONF_BUF_OFFSET, true), 0n, 'the pointer field holds an address');
    const length = view.getInt32(0, true);
    assert.equal(length % IFREQ_SIZE, 0);
    if (length > 0) {
      const firstName = Buffer.from(requests.subarray(0, 16)).toString('latin1').replace(/\0.*$/s, '');
      assert.match(firstName, /^[\w.:-]+$/, 'an interface name, written by the kernel into our buffer');
    }
    // Without a buffer the pointer stays NULL, and the kernel only reports the length it would need.
    const probe = new Uint8Array(IFCONF_SIZE);
    assert.equal(io.ioctl(socket.fd, SIOCGIFCONF, probe), 0);
    assert.equal(new DataView(probe.buffer).getInt32(0, true), length);
    assert.equal(new DataView(probe.buffer).getBigUint64(IFCONF_BUF_OFFSET, true), 0n);
  });

  it('answers -errno without throwing: ENOTTY from /dev/null, EBADF from a closed fd', () => {
    const fd = native.adoptFd(io.openDevice('/dev/null'));
    open.push(fd);
    const argument = Uint8Array.of(12, 0, 0, 0, 0, 0, 0, 0, 0xaa, 0xbb, 0xcc, 0xdd);
    assert.equal(io.ioctl(fd.fd, 0x3b81, argument), -25);
    assert.deepEqual(argument, Uint8Array.of(12, 0, 0, 0, 0, 0, 0, 0, 0xaa, 0xbb, 0xcc, 0xdd));
    const number = fd.fd;
    fd.close();
    assert.equal(io.ioctl(number, 0x3b81, argument), -9);
  });

  it('opens device nodes read-write, or throws the open error', () => {
    const fd = native.adoptFd(io.openDevice('/dev/null'));
    open.push(fd);
    assert.equal(fd.identity().flags & 3, fs.constants.O_RDWR);
    assert.throws(
      () => io.openDevice('/nonexistent/iommu'),
      (error: unknown) => code('ENOENT')(error) && (error as { syscall?: string }).syscall === 'open',
    );
    assert.throws(() => io.openDevice(3 as unknown as string), code('ERR_INVALID_ARG_TYPE'));
  });

  it('checks its arguments before the call', () => {
    const [socket] = socketPair();
    const argument = new Uint8Array(16);
    assert.throws(() => io.ioctl(socket.fd, -1, argument), code('ERR_INVALID_ARG_VALUE'));
    assert.throws(() => io.ioctl(socket.fd, 2 ** 32, argument), code('ERR_INVALID_ARG_VALUE'));
    assert.throws(() => io.ioctl(-1, FIONREAD, argument), code('ERR_INVALID_ARG_TYPE'));
    assert.throws(() => io.ioctl(socket.fd, FIONREAD, [0, 0, 0, 0] as unknown as Uint8Array), code('ERR_INVALID_ARG_TYPE'));
    assert.throws(() => io.ioctl(socket.fd, SIOCGIFCONF, argument, [{ offset: 9, buffer: new Uint8Array(8) }]), code('ERR_INVALID_ARG_VALUE'));
    assert.throws(
      () => io.ioctl(socket.fd, SIOCGIFCONF, argument, [{ offset: 8, buffer: 'x' as unknown as Uint8Array }]),
      code('ERR_INVALID_ARG_TYPE'),
    );
    assert.throws(() => io.ioctl(socket.fd, SIOCGIFCONF, argument, {} as never), code('ERR_INVALID_ARG_TYPE'));
    assert.deepEqual(argument, new Uint8Array(16), 'nothing was written before the refusal');
  });
});
