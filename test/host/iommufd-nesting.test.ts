/**
 * IommufdNesting against the dry-run iommufd (lib/host/iommufd-dry-run.ts) (exact request sequences, capability refusals, faults), the
 * double's own uAPI rules, and a real /dev/iommu when the machine has one.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import {
  INVALIDATE_ALL,
  IommufdIoctlError,
  IommufdNesting,
  NestingRefusal,
  type FirstStageTable,
  type IoctlOptions,
  type IommufdChannel,
} from '../../lib/host/iommufd-nesting';
import {
  HWPT_ALLOC_FLAGS,
  IOCTLS,
  IOMMU_HWPT_VTD_S1_INVALIDATE_LAYOUT,
  IOMMU_HWPT_VTD_S1_LAYOUT,
  encodeStruct,
  readU32,
  writeU32,
  type IoctlSpec,
} from '../../lib/host/iommufd-uapi';
import { IommufdDevice } from '../../lib/os/iommufd-device';
import { ERRNO } from '../../lib/errno';
import { writeField, type FieldSpec } from '../../lib/byte-layout';
import { native, nativeIoctl } from '../../lib/native';
import { FULL_VTD_HOST, IommufdDryRun, PLAIN_VTD_HOST, type HostIommuModel } from '../../lib/host/iommufd-dry-run';

const SID_A = 0x18;
const SID_B = 0x20;
const TABLE = 0x5000;
const FS48: FirstStageTable = { table: TABLE, addressWidth: 48, sre: false, wpe: false, eafe: false };

interface Rig {
  kernel: IommufdDryRun;
  nesting: IommufdNesting;
  cdevA: number;
  cdevB: number;
  /** Requests issued from here on. */
  since(): string[];
}

function rig(host: HostIommuModel = FULL_VTD_HOST, options: { faultQueue?: boolean } = {}): Rig {
  const kernel = new IommufdDryRun(host);
  const nesting = new IommufdNesting(kernel, {
    guestRam: [
      { guestPhysical: 0, bytes: new Uint8Array(0x10000) },
      { guestPhysical: 0x10_0000, bytes: new Uint8Array(0x4000) },
    ],
    ...options,
  });
  const cdevA = kernel.addVfioDevice();
  const cdevB = kernel.addVfioDevice();
  nesting.addDevice(SID_A, cdevA);
  nesting.addDevice(SID_B, cdevB);
  nesting.setUp();
  let mark = kernel.requests.length;
  return {
    kernel,
    nesting,
    cdevA,
    cdevB,
    since: () => {
      const names = kernel.names().slice(mark);
      mark = kernel.requests.length;
      return names;
    },
  };
}

/** The requests with a name, newest last. */
function requestsNamed(kernel: IommufdDryRun, name: string) {
  return kernel.requests.filter((request) => request.name === name);
}

describe('IommufdNesting over the dry-run iommufd', () => {
  it('sets up: binds devices, reads the host, allocates the IOAS, maps guest RAM at its guest-physical address, the nest parent, the fault queue', () => {
    const { kernel } = rig();
    assert.deepEqual(kernel.names(), [
      'VFIO_DEVICE_BIND_IOMMUFD',
      'VFIO_DEVICE_BIND_IOMMUFD',
      'IOMMU_GET_HW_INFO',
      'IOMMU_IOAS_ALLOC',
      'IOMMU_IOAS_MAP',
      'IOMMU_IOAS_MAP',
      'IOMMU_HWPT_ALLOC',
      'IOMMU_FAULT_QUEUE_ALLOC',
    ]);
    const [ioas] = kernel.objectsOf('ioas');
    const maps = requestsNamed(kernel, 'IOMMU_IOAS_MAP');
    assert.deepEqual(
      maps.map((map) => [map.fields.flags, map.fields.ioasId, map.fields.iova, map.fields.length]),
      [
        [7, ioas, 0n, 0x10000n],
        [7, ioas, 0x10_0000n, 0x4000n],
      ],
    );
    assert.ok(
      maps.every((map) => (map.fields.userVa as bigint) !== 0n),
      'user_va points at the RAM buffer',
    );
    const parent = requestsNamed(kernel, 'IOMMU_HWPT_ALLOC')[0]!;
    assert.deepEqual(
      [parent.fields.flags, parent.fields.ptId, parent.fields.dataType, parent.fields.dataLen, parent.fields.dataUptr],
      [HWPT_ALLOC_FLAGS.bits.NEST_PARENT | HWPT_ALLOC_FLAGS.bits.PASID, ioas, 0, 0, 0n],
    );
    assert.equal(requestsNamed(kernel, 'IOMMU_GET_HW_INFO')[0]!.fields.dataLen, 24);
  });

  it('reports what the host can back from IOMMU_GET_HW_INFO', () => {
    const full = rig().nesting.capabilities();
    assert.deepEqual(
      [
        full.pageTableFormats,
        full.addressWidths,
        full.supervisorRequests,
        full.extendedAccessedFlag,
        full.firstStage1GiBPages,
        full.nested,
        full.maxPasidLog2,
        full.readOnlyParentErratum,
      ],
      [['vtd-s1'], [48, 57], true, true, true, true, 20, false],
    );
    assert.equal(full.cap, FULL_VTD_HOST.cap);
    const plain = rig({ ...PLAIN_VTD_HOST, errata: true, maxPasidLog2: 8 }).nesting.capabilities();
    assert.deepEqual(
      [plain.addressWidths, plain.supervisorRequests, plain.extendedAccessedFlag, plain.maxPasidLog2, plain.readOnlyParentErratum],
      [[48], false, false, 8, true],
    );
    const other = rig({ ...FULL_VTD_HOST, infoType: 2 });
    assert.deepEqual(other.nesting.capabilities().pageTableFormats, []);
    assert.throws(
      () => other.nesting.bind(SID_A, 0, 1, FS48),
      (error: unknown) => error instanceof NestingRefusal && error.requirement === 'nested',
    );
  });

  it('binds the default PASID: HWPT_ALLOC VTD_S1 under the parent with the first-stage fields, then ATTACH without PASID', () => {
    const { kernel, nesting, cdevA, since } = rig();
    const [parent] = kernel.objectsOf('hwpt-paging');
    const [fault] = kernel.objectsOf('fault');
    const hwpt = nesting.bind(SID_A, 0, 3, { table: 0x12_3000, addressWidth: 57, sre: true, wpe: true, eafe: true });
    assert.deepEqual(since(), ['IOMMU_HWPT_ALLOC', 'VFIO_DEVICE_ATTACH_IOMMUFD_PT']);
    const [alloc, attach] = kernel.requests.slice(-2);
    assert.deepEqual(
      [alloc!.fields.flags, alloc!.fields.ptId, alloc!.fields.dataType, alloc!.fields.dataLen, alloc!.fields.faultId],
      [HWPT_ALLOC_FLAGS.bits.FAULT_ID_VALID | HWPT_ALLOC_FLAGS.bits.PASID, parent, 1, IOMMU_HWPT_VTD_S1_LAYOUT.size, fault],
    );
    assert.deepEqual(alloc!.payload, { vtdS1: { flags: 7n, pgtblAddr: 0x12_3000n, addrWidth: 57 } });
    assert.equal(attach!.device, cdevA);
    assert.deepEqual([attach!.fields.flags, attach!.fields.ptId, attach!.fields.pasid], [0, hwpt, 0]);
    assert.deepEqual(nesting.bindings(), [{ device: SID_A, pasid: 0, hwptId: hwpt, did: 3, passThrough: false }]);
  });

  it('binds another PASID with the PASID flag on both the allocation and the attach', () => {
    const { kernel, nesting } = rig();
    const hwpt = nesting.bind(SID_A, 5, 3, FS48);
    const [alloc, attach] = kernel.requests.slice(-2);
    assert.equal(alloc!.fields.flags, HWPT_ALLOC_FLAGS.bits.FAULT_ID_VALID | HWPT_ALLOC_FLAGS.bits.PASID);
    assert.deepEqual([attach!.fields.flags, attach!.fields.ptId, attach!.fields.pasid], [1, hwpt, 5]);
    assert.deepEqual(kernel.attachments().find((a) => a.pasid === 5)?.ptId, hwpt);
  });

  it('without a fault queue, allocates none and attaches nested HWPTs without a fault id', () => {
    const { kernel, nesting } = rig(FULL_VTD_HOST, { faultQueue: false });
    assert.ok(!kernel.names().includes('IOMMU_FAULT_QUEUE_ALLOC'));
    nesting.bind(SID_A, 0, 1, FS48);
    assert.equal(requestsNamed(kernel, 'IOMMU_HWPT_ALLOC').at(-1)!.fields.flags, HWPT_ALLOC_FLAGS.bits.PASID);
    assert.deepEqual(nesting.readFaults(), []);
  });

  it('on a host without PASIDs, allocates without the PASID flag and binds the RID only', () => {
    const { kernel, nesting } = rig({ ...FULL_VTD_HOST, maxPasidLog2: 0 });
    assert.equal(requestsNamed(kernel, 'IOMMU_HWPT_ALLOC')[0]!.fields.flags, HWPT_ALLOC_FLAGS.bits.NEST_PARENT);
    nesting.bind(SID_A, 0, 1, FS48);
    assert.equal(requestsNamed(kernel, 'IOMMU_HWPT_ALLOC').at(-1)!.fields.flags, HWPT_ALLOC_FLAGS.bits.FAULT_ID_VALID);
    assert.throws(
      () => nesting.bind(SID_A, 1, 1, FS48),
      (error: unknown) => error instanceof NestingRefusal && error.requirement === 'PASID-width',
    );
  });

  it('keeps the RID and PASIDs of one device attached together (every HWPT is PASID-capable)', () => {
    const { kernel, nesting } = rig();
    nesting.bind(SID_A, 0, 1, FS48);
    nesting.bind(SID_A, 4, 2, { ...FS48, table: 0x6000 });
    nesting.bindPassThrough(SID_A, 0);
    nesting.bind(SID_A, 0, 1, FS48);
    assert.equal(kernel.attachments().length, 2);
  });

  it('rebinds by allocating the new HWPT, attaching it (a replace), then destroying the old one; the same entry again costs nothing', () => {
    const { kernel, nesting, since } = rig();
    const first = nesting.bind(SID_A, 5, 3, FS48);
    since();
    const second = nesting.bind(SID_A, 5, 3, { ...FS48, table: 0x9000 });
    assert.deepEqual(since(), ['IOMMU_HWPT_ALLOC', 'VFIO_DEVICE_ATTACH_IOMMUFD_PT', 'IOMMU_DESTROY']);
    assert.equal(kernel.requests.at(-1)!.fields.id, first);
    assert.deepEqual(kernel.objectsOf('hwpt-nested'), [second]);
    assert.equal(nesting.bind(SID_A, 5, 3, { ...FS48, table: 0x9000 }), second);
    assert.deepEqual(since(), []);
  });

  it('pass-through attaches the nest parent; a later first-stage bind replaces it with nothing to destroy', () => {
    const { kernel, nesting, since } = rig();
    const [parent] = kernel.objectsOf('hwpt-paging');
    assert.equal(nesting.bindPassThrough(SID_A, 0), parent);
    assert.deepEqual(since(), ['VFIO_DEVICE_ATTACH_IOMMUFD_PT']);
    nesting.bind(SID_A, 0, 1, FS48);
    assert.deepEqual(since(), ['IOMMU_HWPT_ALLOC', 'VFIO_DEVICE_ATTACH_IOMMUFD_PT']);
    nesting.bindPassThrough(SID_A, 0);
    assert.deepEqual(since(), ['VFIO_DEVICE_ATTACH_IOMMUFD_PT', 'IOMMU_DESTROY']);
  });

  it('unbinds with DETACH then DESTROY; a HWPT shared by two devices is destroyed with its last user', () => {
    const { kernel, nesting, cdevA, cdevB, since } = rig();
    const shared = nesting.bind(SID_A, 5, 3, FS48);
    assert.equal(nesting.bind(SID_B, 5, 3, FS48), shared);
    assert.deepEqual(since(), ['IOMMU_HWPT_ALLOC', 'VFIO_DEVICE_ATTACH_IOMMUFD_PT', 'VFIO_DEVICE_ATTACH_IOMMUFD_PT']);
    nesting.unbind(SID_A, 5);
    assert.deepEqual(since(), ['VFIO_DEVICE_DETACH_IOMMUFD_PT']);
    const detach = kernel.requests.at(-1)!;
    assert.deepEqual([detach.device, detach.fields.flags, detach.fields.pasid], [cdevA, 1, 5]);
    nesting.unbind(SID_B, 5);
    assert.deepEqual(since(), ['VFIO_DEVICE_DETACH_IOMMUFD_PT', 'IOMMU_DESTROY']);
    assert.deepEqual([kernel.requests.at(-2)!.device, kernel.requests.at(-1)!.fields.id], [cdevB, shared]);
    assert.deepEqual(kernel.attachments(), []);
    assert.throws(
      () => nesting.unbind(SID_B, 5),
      (error: unknown) => error instanceof NestingRefusal && error.requirement === 'bound',
    );
  });

  it('forwards an invalidation once per nested HWPT that the DID and PASID select', () => {
    const { kernel, nesting, since } = rig();
    const did1 = nesting.bind(SID_A, 5, 1, FS48);
    assert.equal(nesting.bind(SID_B, 6, 1, FS48), did1, 'same DID and table: one HWPT');
    const did1Other = nesting.bind(SID_B, 7, 1, { ...FS48, table: 0x8000 });
    const did2 = nesting.bind(SID_A, 8, 2, { ...FS48, table: 0xa000 });
    since();

    assert.equal(nesting.invalidate({ did: 1 }, { addr: 0x7000n, npages: 4n, leaf: true }), 2);
    assert.deepEqual(since(), ['IOMMU_HWPT_INVALIDATE', 'IOMMU_HWPT_INVALIDATE']);
    const [first, second] = kernel.requests.slice(-2);
    assert.deepEqual([first!.fields.hwptId, second!.fields.hwptId].sort(), [did1, did1Other].sort());
    assert.deepEqual([first!.fields.dataType, first!.fields.entryLen, first!.fields.entryNum], [0, IOMMU_HWPT_VTD_S1_INVALIDATE_LAYOUT.size, 1]);
    assert.deepEqual(first!.payload, { entries: [{ addr: 0x7000n, npages: 4n, flags: 1 }] });

    assert.equal(nesting.invalidate({ did: 1, pasid: 6 }, INVALIDATE_ALL), 1);
    assert.equal(kernel.requests.at(-1)!.fields.hwptId, did1);
    assert.deepEqual(kernel.requests.at(-1)!.payload, { entries: [{ addr: 0n, npages: (1n << 64n) - 1n, flags: 0 }] });
    assert.equal(nesting.invalidate({ did: 2, pasid: 8 }, INVALIDATE_ALL), 1);
    assert.equal(kernel.requests.at(-1)!.fields.hwptId, did2);
    assert.equal(nesting.invalidate({ did: 9 }, INVALIDATE_ALL), 0);
    assert.equal(nesting.invalidate({ did: 2, pasid: 5 }, INVALIDATE_ALL), 0);
    assert.deepEqual(since(), ['IOMMU_HWPT_INVALIDATE', 'IOMMU_HWPT_INVALIDATE']);
    nesting.bindPassThrough(SID_A, 9);
    assert.equal(nesting.invalidate({ did: 2 }, INVALIDATE_ALL), 1, 'pass-through bindings have no first stage to invalidate');
  });

  it('refuses, before any ioctl, what the host cannot honour and calls out of order', () => {
    const plain = rig({ ...PLAIN_VTD_HOST, maxPasidLog2: 8 });
    const refused = (call: () => unknown, requirement: string): void => {
      const before = plain.kernel.requests.length;
      assert.throws(
        call,
        (error: unknown) => error instanceof NestingRefusal && error.requirement === requirement && error.code === 'ERR_IOMMUFD_NESTING_REFUSED',
      );
      assert.equal(plain.kernel.requests.length, before, `no request for ${requirement}`);
    };
    refused(() => plain.nesting.bind(SID_A, 1, 1, { ...FS48, addressWidth: 57 }), 'FS5LP');
    refused(() => plain.nesting.bind(SID_A, 1, 1, { ...FS48, sre: true }), 'SRS');
    refused(() => plain.nesting.bind(SID_A, 1, 1, { ...FS48, eafe: true }), 'EAFS');
    refused(() => plain.nesting.bind(SID_A, 1, 1, { ...FS48, addressWidth: 39 }), 'address-width');
    refused(() => plain.nesting.bind(SID_A, 256, 1, FS48), 'PASID-width');
    refused(() => plain.nesting.bind(SID_A, 1, 1, { ...FS48, table: 0x5008 }), 'table');
    refused(() => plain.nesting.bind(0x99, 1, 1, FS48), 'device');
    refused(() => plain.nesting.invalidate({ did: 1 }, { addr: 0x7010n, npages: 1n, leaf: false }), 'range');
    refused(() => plain.nesting.invalidate({ did: 1 }, { addr: 0x7000n, npages: 0n, leaf: false }), 'range');
    refused(() => plain.nesting.invalidate({ did: 1 }, { addr: 0x1000n, npages: (1n << 64n) - 1n, leaf: false }), 'range');
    refused(() => plain.nesting.setUp(), 'set-up');
  });

  it('refuses WPE without SRE even on a host with SRS, and binding before set-up', () => {
    const { kernel, nesting } = rig();
    const before = kernel.requests.length;
    assert.throws(
      () => nesting.bind(SID_A, 0, 1, { ...FS48, wpe: true }),
      (error: unknown) => error instanceof NestingRefusal && error.requirement === 'WPE-needs-SRE',
    );
    assert.equal(kernel.requests.length, before);
    const early = new IommufdNesting(new IommufdDryRun(), { guestRam: [] });
    assert.throws(
      () => early.bind(SID_A, 0, 1, FS48),
      (error: unknown) => error instanceof NestingRefusal && error.requirement === 'set-up',
    );
    assert.throws(
      () => early.setUp(),
      (error: unknown) => error instanceof NestingRefusal && error.requirement === 'device',
    );
  });

  it('turns a refused ioctl into IommufdIoctlError, and destroys the HWPT it allocated when the attach fails', () => {
    const kernel = new IommufdDryRun();
    let failAttach = false;
    const channel: IommufdChannel = {
      iommufd: kernel.iommufd,
      ioctl: (request: number, argument: Uint8Array, options?: IoctlOptions) =>
        failAttach && request === IOCTLS.VFIO_DEVICE_ATTACH_IOMMUFD_PT.request ? -ERRNO.EBUSY : kernel.ioctl(request, argument, options),
      readFaults: (fd, into) => kernel.readFaults(fd, into),
      writeFaultResponses: (fd, bytes) => kernel.writeFaultResponses(fd, bytes),
    };
    const nesting = new IommufdNesting(channel, { guestRam: [] });
    nesting.addDevice(SID_A, kernel.addVfioDevice());
    nesting.setUp();
    failAttach = true;
    assert.throws(
      () => nesting.bind(SID_A, 0, 1, FS48),
      (error: unknown) =>
        error instanceof IommufdIoctlError &&
        error.request === 'VFIO_DEVICE_ATTACH_IOMMUFD_PT' &&
        error.errno === ERRNO.EBUSY &&
        /EBUSY/.test(error.message),
    );
    assert.deepEqual(kernel.names().slice(-2), ['IOMMU_HWPT_ALLOC', 'IOMMU_DESTROY']);
    assert.deepEqual(kernel.objectsOf('hwpt-nested'), []);
    assert.deepEqual(nesting.bindings(), []);
    assert.throws(
      () => nesting.addDevice(SID_A, 1),
      (error: unknown) => error instanceof NestingRefusal && error.requirement === 'device',
    );
  });

  it('reads host faults from the fault queue as records naming the device, and answers them by cookie', () => {
    const { kernel, nesting } = rig();
    const [faultFd] = kernel.faultQueueFds();
    const devIdA = requestsNamed(kernel, 'IOMMU_HWPT_ALLOC')[0]!.fields.devId as number;
    const devIdB = kernel.objectsOf('device').find((id) => id !== devIdA)!;
    assert.deepEqual(nesting.readFaults(), []);
    const cookie = kernel.injectFault(faultFd!, { flags: 3, devId: devIdA, pasid: 5, grpid: 2, perm: 3, addr: 0xdead_b000n, length: 0 });
    kernel.injectFault(faultFd!, { flags: 0, devId: devIdB, pasid: 0, grpid: 4, perm: 0xc, addr: 0x1000n, length: 4096 });
    const faults = nesting.readFaults();
    assert.deepEqual(faults, [
      {
        device: SID_A,
        pasid: 5,
        address: 0xdead_b000n,
        perm: { read: true, write: true, exec: false, priv: false },
        lastPage: true,
        group: 2,
        length: 0,
        cookie,
      },
      {
        device: SID_B,
        address: 0x1000n,
        perm: { read: false, write: false, exec: true, priv: true },
        lastPage: false,
        group: 4,
        length: 4096,
        cookie: cookie + 1,
      },
    ]);
    nesting.respond(faults[0]!, 'success');
    nesting.respond(faults[1]!, 'invalid');
    assert.deepEqual(kernel.responses, [
      { cookie, code: 0 },
      { cookie: cookie + 1, code: 1 },
    ]);
    assert.throws(
      () => nesting.respond(faults[0]!, 'success'),
      (error: unknown) => error instanceof IommufdIoctlError && error.errno === ERRNO.EINVAL,
    );
  });

  it('drains more faults than one read holds', () => {
    const { kernel, nesting } = rig();
    const [faultFd] = kernel.faultQueueFds();
    const devId = kernel.objectsOf('device')[0]!;
    for (let i = 0; i < 150; i++) kernel.injectFault(faultFd!, { flags: 1, devId, pasid: i, grpid: 0, perm: 1, addr: BigInt(i) << 12n, length: 0 });
    assert.deepEqual(
      nesting.readFaults().map((fault) => fault.pasid),
      [...Array(150).keys()],
    );
  });

  it('closes: unbinds everything, then destroys the parent, the fault queue and the IOAS', () => {
    const { kernel, nesting, since } = rig();
    nesting.bind(SID_A, 0, 1, FS48);
    nesting.bind(SID_B, 3, 1, FS48);
    nesting.bind(SID_B, 4, 2, FS48);
    since();
    nesting.close();
    assert.deepEqual(since(), [
      'VFIO_DEVICE_DETACH_IOMMUFD_PT',
      'VFIO_DEVICE_DETACH_IOMMUFD_PT',
      'IOMMU_DESTROY',
      'VFIO_DEVICE_DETACH_IOMMUFD_PT',
      'IOMMU_DESTROY',
      'IOMMU_DESTROY',
      'IOMMU_DESTROY',
      'IOMMU_DESTROY',
    ]);
    assert.deepEqual(
      kernel.objectsOf('ioas').concat(kernel.objectsOf('hwpt-paging'), kernel.objectsOf('hwpt-nested'), kernel.objectsOf('fault')),
      [],
    );
    assert.throws(() => nesting.capabilities(), NestingRefusal);
  });
});

describe('the dry-run iommufd enforces the uAPI', () => {
  /** A bound device, an IOAS, a nest parent and a nested HWPT on PASID 0, built with raw requests. */
  function raw(host: HostIommuModel = FULL_VTD_HOST) {
    const kernel = new IommufdDryRun(host);
    const cdev = kernel.addVfioDevice();
    const send = (
      name: keyof typeof IOCTLS,
      value: Record<string, number | bigint>,
      options: IoctlOptions = {},
    ): { result: number; bytes: Uint8Array } => {
      // Any request by name: the spec seen through the plain IoctlSpec, whose keys its own layout checks at run time.
      const spec: IoctlSpec = IOCTLS[name];
      const bytes = encodeStruct(
        spec.layout as never,
        {
          ...Object.fromEntries((spec.layout.fields as readonly FieldSpec[]).filter((f) => !f.reserved).map((f) => [f.key, f.width === 8 ? 0n : 0])),
          ...value,
        } as never,
      );
      writeU32(spec.layout, bytes, spec.sizeField, spec.layout.size);
      const outFds = spec.fdFields.map((field) => spec.layout.offsetOf(field));
      return { result: kernel.ioctl(spec.request, bytes, { ...options, ...(outFds.length ? { outFds } : {}) }), bytes };
    };
    const bind = send('VFIO_DEVICE_BIND_IOMMUFD', { iommufd: kernel.iommufd }, { device: cdev });
    const devId = readU32(IOCTLS.VFIO_DEVICE_BIND_IOMMUFD.layout, bind.bytes, 'outDevid');
    const ioasId = readU32(IOCTLS.IOMMU_IOAS_ALLOC.layout, send('IOMMU_IOAS_ALLOC', {}).bytes, 'outIoasId');
    const parentId = readU32(IOCTLS.IOMMU_HWPT_ALLOC.layout, send('IOMMU_HWPT_ALLOC', { flags: 1, devId, ptId: ioasId }).bytes, 'outHwptId');
    const s1 = (fields: Partial<{ flags: bigint; pgtblAddr: bigint; addrWidth: number }> = {}) =>
      encodeStruct(IOMMU_HWPT_VTD_S1_LAYOUT, { flags: 0n, pgtblAddr: 0x5000n, addrWidth: 48, ...fields });
    const nested = (data = s1(), flags = 0) =>
      send('IOMMU_HWPT_ALLOC', { flags, devId, ptId: parentId, dataType: 1, dataLen: data.length }, { payloads: [{ offset: 32, buffer: data }] });
    const childId = readU32(IOCTLS.IOMMU_HWPT_ALLOC.layout, nested().bytes, 'outHwptId');
    const entry = (fields: Partial<{ addr: bigint; npages: bigint; flags: number }> = {}) =>
      encodeStruct(IOMMU_HWPT_VTD_S1_INVALIDATE_LAYOUT, { addr: 0n, npages: 1n, flags: 0, ...fields });
    const invalidate = (value: Record<string, number | bigint>, data: Uint8Array = entry()) =>
      send('IOMMU_HWPT_INVALIDATE', { hwptId: childId, entryLen: 24, entryNum: 1, ...value }, { payloads: [{ offset: 8, buffer: data }] });
    return { kernel, cdev, send, devId, ioasId, parentId, childId, s1, nested, entry, invalidate };
  }

  it('checks the size field: below the minimum EINVAL, larger with a non-zero tail E2BIG, with a zero tail accepted', () => {
    const { kernel, childId } = raw();
    const destroy = (bytes: Uint8Array) => kernel.ioctl(IOCTLS.IOMMU_DESTROY.request, bytes);
    assert.equal(destroy(Uint8Array.of(4, 0, 0, 0, 0, 0, 0, 0)), -ERRNO.EINVAL);
    const long = new Uint8Array(16);
    new DataView(long.buffer).setUint32(0, 16, true);
    new DataView(long.buffer).setUint32(4, childId, true);
    long[12] = 1;
    assert.equal(destroy(long), -ERRNO.E2BIG);
    long[12] = 0;
    assert.equal(destroy(long), 0);
    assert.equal(destroy(long.subarray(0, 3)), -ERRNO.EFAULT);
    assert.equal(kernel.ioctl(0x3b99, new Uint8Array(8)), -ERRNO.ENOTTY);
  });

  it('refuses unknown flags and non-zero reserved fields with the errno the kernel uses', () => {
    const { send, devId, ioasId, parentId, nested, s1 } = raw();
    assert.equal(send('IOMMU_IOAS_ALLOC', { flags: 1 }).result, -ERRNO.EOPNOTSUPP);
    assert.equal(send('IOMMU_HWPT_ALLOC', { flags: 0x10, devId, ptId: ioasId }).result, -ERRNO.EOPNOTSUPP);
    assert.equal(nested(s1(), HWPT_ALLOC_FLAGS.bits.NEST_PARENT).result, -ERRNO.EOPNOTSUPP);
    assert.equal(nested(s1({ flags: 8n })).result, -ERRNO.EOPNOTSUPP);
    const reserved = s1();
    reserved[20] = 1;
    assert.equal(nested(reserved).result, -ERRNO.EOPNOTSUPP);
    const tail = new Uint8Array(32);
    tail.set(s1());
    assert.equal(
      send('IOMMU_HWPT_ALLOC', { devId, ptId: parentId, dataType: 1, dataLen: 32 }, { payloads: [{ offset: 32, buffer: tail }] }).result,
      0,
    );
    tail[30] = 1;
    assert.equal(
      send('IOMMU_HWPT_ALLOC', { devId, ptId: parentId, dataType: 1, dataLen: 32 }, { payloads: [{ offset: 32, buffer: tail }] }).result,
      -ERRNO.E2BIG,
    );
    assert.equal(
      send('IOMMU_HWPT_ALLOC', { devId, ptId: parentId, dataType: 1, dataLen: 16 }, { payloads: [{ offset: 32, buffer: s1() }] }).result,
      -ERRNO.EINVAL,
    );
    assert.equal(send('IOMMU_HWPT_ALLOC', { devId, ptId: parentId, dataType: 1, dataLen: 24 }).result, -ERRNO.EFAULT, 'data_uptr NULL');
    assert.equal(send('IOMMU_HWPT_ALLOC', { devId, ptId: ioasId, dataType: 0, dataLen: 24 }).result, -ERRNO.EINVAL);
    assert.equal(send('IOMMU_GET_HW_INFO', { flags: 2, devId }).result, -ERRNO.EOPNOTSUPP);
    assert.equal(send('IOMMU_FAULT_QUEUE_ALLOC', { flags: 1 }).result, -ERRNO.EOPNOTSUPP);
  });

  it('requires objects to exist and be of the right kind, and nesting only under a nest parent', () => {
    const { send, devId, ioasId, childId, cdev, nested, s1 } = raw();
    assert.equal(send('IOMMU_HWPT_ALLOC', { devId: 999, ptId: ioasId }).result, -ERRNO.ENOENT);
    assert.equal(send('IOMMU_HWPT_ALLOC', { devId, ptId: 999 }).result, -ERRNO.EINVAL);
    const plainParent = readU32(IOCTLS.IOMMU_HWPT_ALLOC.layout, send('IOMMU_HWPT_ALLOC', { devId, ptId: ioasId }).bytes, 'outHwptId');
    assert.equal(
      send('IOMMU_HWPT_ALLOC', { devId, ptId: plainParent, dataType: 1, dataLen: 24 }, { payloads: [{ offset: 32, buffer: s1() }] }).result,
      -ERRNO.EINVAL,
    );
    assert.equal(
      send('IOMMU_HWPT_ALLOC', { devId, ptId: childId, dataType: 1, dataLen: 24 }, { payloads: [{ offset: 32, buffer: s1() }] }).result,
      -ERRNO.EINVAL,
    );
    assert.equal(nested(s1(), HWPT_ALLOC_FLAGS.bits.FAULT_ID_VALID).result, -ERRNO.ENOENT, 'fault_id 0 names no fault queue');
    assert.equal(send('VFIO_DEVICE_ATTACH_IOMMUFD_PT', { ptId: 999 }, { device: cdev }).result, -ERRNO.ENOENT);
    assert.equal(send('IOMMU_DESTROY', { id: 999 }).result, -ERRNO.ENOENT);
    assert.equal(send('VFIO_DEVICE_BIND_IOMMUFD', { iommufd: 3 }, { device: cdev }).result, -ERRNO.EINVAL, 'already bound');
    assert.equal(send('VFIO_DEVICE_ATTACH_IOMMUFD_PT', { ptId: childId }, { device: 42 }).result, -ERRNO.EBADF);
    assert.equal(send('VFIO_DEVICE_ATTACH_IOMMUFD_PT', { ptId: childId }).result, -ERRNO.ENOTTY, 'a VFIO ioctl sent to the iommufd');
  });

  it('orders attach and destroy: an attached HWPT, a parent with children and an IOAS with HWPTs are busy', () => {
    const { kernel, send, cdev, childId, parentId, ioasId } = raw();
    assert.equal(send('VFIO_DEVICE_ATTACH_IOMMUFD_PT', { ptId: childId }, { device: cdev }).result, 0);
    assert.equal(send('IOMMU_DESTROY', { id: childId }).result, -ERRNO.EBUSY);
    assert.equal(send('IOMMU_DESTROY', { id: parentId }).result, -ERRNO.EBUSY);
    assert.equal(send('IOMMU_DESTROY', { id: ioasId }).result, -ERRNO.EBUSY);
    assert.equal(send('VFIO_DEVICE_DETACH_IOMMUFD_PT', {}, { device: cdev }).result, 0);
    assert.deepEqual(kernel.attachments(), []);
    assert.equal(send('IOMMU_DESTROY', { id: childId }).result, 0);
    assert.equal(send('IOMMU_DESTROY', { id: parentId }).result, 0);
    assert.equal(send('IOMMU_DESTROY', { id: ioasId }).result, 0);
  });

  it('checks VFIO attach and detach: argsz for the PASID form, unknown flags, PASID-capable HWPTs only', () => {
    const { kernel, send, cdev, childId, nested } = raw();
    const attach = (value: Record<string, number>) => send('VFIO_DEVICE_ATTACH_IOMMUFD_PT', value, { device: cdev });
    assert.equal(attach({ flags: 2, ptId: childId }).result, -ERRNO.EINVAL);
    assert.equal(attach({ flags: 1, ptId: childId, pasid: 3 }).result, -ERRNO.EINVAL, 'not allocated with the PASID flag');
    const pasidCapable = readU32(IOCTLS.IOMMU_HWPT_ALLOC.layout, nested(undefined, HWPT_ALLOC_FLAGS.bits.PASID).bytes, 'outHwptId');
    assert.equal(attach({ flags: 1, ptId: pasidCapable, pasid: 1 << 20 }).result, -ERRNO.EINVAL, 'beyond the host PASID width');
    assert.equal(attach({ flags: 1, ptId: pasidCapable, pasid: 3 }).result, 0);
    // The PASID form needs argsz to reach the pasid field; the rest of the struct may be shorter without it.
    const short = encodeStruct(IOCTLS.VFIO_DEVICE_ATTACH_IOMMUFD_PT.layout, { argsz: 12, flags: 1, ptId: pasidCapable, pasid: 3 });
    assert.equal(kernel.ioctl(IOCTLS.VFIO_DEVICE_ATTACH_IOMMUFD_PT.request, short, { device: cdev }), -ERRNO.EINVAL);
    const shortRid = encodeStruct(IOCTLS.VFIO_DEVICE_ATTACH_IOMMUFD_PT.layout, { argsz: 12, flags: 0, ptId: childId, pasid: 0 });
    assert.equal(
      kernel.ioctl(IOCTLS.VFIO_DEVICE_ATTACH_IOMMUFD_PT.request, shortRid, { device: cdev }),
      -ERRNO.EINVAL,
      'a RID HWPT without the PASID flag beside an attached PASID',
    );
    const detach = encodeStruct(IOCTLS.VFIO_DEVICE_DETACH_IOMMUFD_PT.layout, { argsz: 8, flags: 1, pasid: 3 });
    assert.equal(kernel.ioctl(IOCTLS.VFIO_DEVICE_DETACH_IOMMUFD_PT.request, detach, { device: cdev }), -ERRNO.EINVAL);
    assert.equal(send('VFIO_DEVICE_DETACH_IOMMUFD_PT', { flags: 4 }, { device: cdev }).result, -ERRNO.EINVAL);
    assert.equal(send('VFIO_DEVICE_DETACH_IOMMUFD_PT', { flags: 1, pasid: 3 }, { device: cdev }).result, 0);
    assert.equal(kernel.ioctl(IOCTLS.VFIO_DEVICE_ATTACH_IOMMUFD_PT.request, shortRid, { device: cdev }), 0);
    // The RID now holds a HWPT without the PASID flag: no PASID may attach beside it.
    assert.equal(attach({ flags: 1, ptId: pasidCapable, pasid: 3 }).result, -ERRNO.EINVAL);
    assert.deepEqual(kernel.attachments(), [{ devId: kernel.objectsOf('device')[0]!, ptId: childId }]);
  });

  it('applies the VT-d driver checks when a nested HWPT is attached', () => {
    const { send, cdev, nested, s1 } = raw(PLAIN_VTD_HOST);
    const attach = (data: Uint8Array) => {
      const id = readU32(IOCTLS.IOMMU_HWPT_ALLOC.layout, nested(data).bytes, 'outHwptId');
      return send('VFIO_DEVICE_ATTACH_IOMMUFD_PT', { ptId: id }, { device: cdev }).result;
    };
    assert.equal(attach(s1({ addrWidth: 57 })), -ERRNO.EINVAL, '57-bit without FS5LP');
    assert.equal(attach(s1({ flags: 1n })), -ERRNO.EINVAL, 'SRE without SRS');
    assert.equal(attach(s1({ flags: 2n })), -ERRNO.EINVAL, 'EAFE without EAFS');
    assert.equal(attach(s1({ addrWidth: 39 })), -ERRNO.EINVAL);
    assert.equal(attach(s1()), 0);
    const full = raw(FULL_VTD_HOST);
    const wpe = readU32(IOCTLS.IOMMU_HWPT_ALLOC.layout, full.nested(full.s1({ flags: 4n })).bytes, 'outHwptId');
    assert.equal(full.send('VFIO_DEVICE_ATTACH_IOMMUFD_PT', { ptId: wpe }, { device: full.cdev }).result, -ERRNO.EINVAL, 'WPE without SRE');
  });

  it('checks invalidations: the target, data type, entry length, flags, reserved bits and the address rules', () => {
    const { invalidate, entry, parentId } = raw();
    assert.equal(invalidate({}).result, 0);
    assert.equal(invalidate({ hwptId: parentId }).result, -ERRNO.EINVAL, 'a parent has no user-managed cache');
    assert.equal(invalidate({ hwptId: 999 }).result, -ERRNO.ENOENT);
    assert.equal(invalidate({ dataType: 1 }).result, -ERRNO.EINVAL);
    assert.equal(invalidate({ entryLen: 16 }).result, -ERRNO.EINVAL);
    assert.equal(invalidate({ entryLen: 0 }).result, -ERRNO.EINVAL);
    assert.equal(invalidate({ entryNum: 0, entryLen: 0 }).result, 0, 'an empty array probes the data type');
    assert.equal(invalidate({}, entry({ flags: 2 })).result, -ERRNO.EOPNOTSUPP);
    const reserved = entry();
    reserved[22] = 1;
    assert.equal(invalidate({}, reserved).result, -ERRNO.EOPNOTSUPP);
    assert.equal(invalidate({}, entry({ addr: 0x1800n })).result, -ERRNO.EINVAL);
    assert.equal(invalidate({}, entry({ addr: 0x1000n, npages: (1n << 64n) - 1n })).result, -ERRNO.EINVAL);
    assert.equal(invalidate({ entryNum: 2 }).result, -ERRNO.EFAULT, 'the array is shorter than entry_len * entry_num');
    const two = new Uint8Array(48);
    two.set(entry());
    two.set(entry({ addr: 0x10n }), 24);
    const partial = invalidate({ entryNum: 2 }, two);
    assert.equal(partial.result, -ERRNO.EINVAL);
    assert.equal(readU32(IOCTLS.IOMMU_HWPT_INVALIDATE.layout, partial.bytes, 'entryNum'), 1, 'handled entries are reported');
  });

  it('refuses a nest parent over read-only mappings when the host has erratum 772415', () => {
    const { send, devId, ioasId } = raw({ ...FULL_VTD_HOST, errata: true });
    const readOnly = { flags: 5, ioasId, length: 0x1000n, iova: 0x40_0000n };
    assert.equal(send('IOMMU_IOAS_MAP', readOnly, { payloads: [{ offset: 16, buffer: new Uint8Array(0x1000) }] }).result, 0);
    assert.equal(send('IOMMU_HWPT_ALLOC', { flags: 1, devId, ptId: ioasId }).result, -ERRNO.EINVAL);
    assert.equal(
      send('IOMMU_IOAS_MAP', { ...readOnly, flags: 7 }, { payloads: [{ offset: 16, buffer: new Uint8Array(0x1000) }] }).result,
      -ERRNO.EEXIST,
      'overlap',
    );
    assert.equal(send('IOMMU_IOAS_MAP', { ...readOnly, flags: 7, iova: 0x50_0000n }).result, -ERRNO.EFAULT, 'user_va NULL');
    // IommufdNesting maps guest RAM read-write, so its parent is allowed on such a host.
    const kernel = new IommufdDryRun({ ...FULL_VTD_HOST, errata: true });
    const nesting = new IommufdNesting(kernel, { guestRam: [{ guestPhysical: 0, bytes: new Uint8Array(4096) }] });
    nesting.addDevice(SID_A, kernel.addVfioDevice());
    assert.equal(nesting.setUp().readOnlyParentErratum, true);
  });
});

describe('IommufdDevice (the real channel)', () => {
  it('moves structs, pointers and returned fds through the ioctl addon, and reads the fds it adopted', () => {
    const faultAlloc = IOCTLS.IOMMU_FAULT_QUEUE_ALLOC;
    const calls: { fd: number; request: number; pointers: number }[] = [];
    const device = fs.openSync('/dev/null', 'r');
    const faultFd = fs.openSync('/dev/null', 'r+');
    const iommu = IommufdDevice.open('/dev/iommu-stand-in', {
      adoptFd: (fd) => native.adoptFd(fd),
      ioctl: {
        openDevice: (path) => (path === '/dev/iommu-stand-in' ? fs.openSync('/dev/null', 'r') : device),
        ioctl: (fd, request, argument, pointers = []) => {
          calls.push({ fd, request, pointers: pointers.length });
          if (request === faultAlloc.request) writeField(faultAlloc.layout, argument, 'outFaultFd', faultFd);
          return 0;
        },
      },
    });
    const cdev = iommu.openVfioDevice('/dev/vfio/devices/vfio0');
    const alloc = encodeStruct(faultAlloc.layout, { size: 16, flags: 0, outFaultId: 0, outFaultFd: 0 });
    const outFds = [faultAlloc.layout.offsetOf('outFaultFd')];
    assert.equal(iommu.ioctl(faultAlloc.request, alloc, { outFds }), 0);
    assert.equal(
      iommu.ioctl(IOCTLS.VFIO_DEVICE_ATTACH_IOMMUFD_PT.request, new Uint8Array(16), {
        device: cdev,
        payloads: [{ offset: 8, buffer: new Uint8Array(4) }],
      }),
      0,
    );
    assert.deepEqual(
      calls.map((call) => [call.fd, call.pointers]),
      [
        [iommu.iommufd, 0],
        [device, 1],
      ],
    );
    assert.equal(iommu.readFaults(faultFd, new Uint8Array(40)), 0, '/dev/null reads as an empty queue');
    assert.equal(iommu.writeFaultResponses(faultFd, new Uint8Array(8)), 8);
    assert.equal(iommu.readFaults(12345, new Uint8Array(40)), -ERRNO.EBADF);
    assert.equal(iommu.ioctl(1, new Uint8Array(4), { device: 99 }), -ERRNO.EBADF);
    // An fd field past the argument's end would read as fd 0: refused before the kernel is asked (and makes an fd).
    assert.throws(() => iommu.ioctl(faultAlloc.request, alloc.subarray(0, 14), { outFds }), { code: 'ERR_IOMMUFD_OUT_FD' });
    assert.throws(() => iommu.ioctl(faultAlloc.request, alloc, { outFds: [-1] }), { code: 'ERR_IOMMUFD_OUT_FD' });
    assert.equal(calls.length, 2);
    iommu.close();
    assert.throws(() => fs.fstatSync(faultFd), { code: 'EBADF' });
    assert.throws(() => fs.fstatSync(device), { code: 'EBADF' });
  });

  it('answers ENOTTY from a file that is not an iommufd, through the native addon', () => {
    const iommu = IommufdDevice.open('/dev/null');
    const argument = encodeStruct(IOCTLS.IOMMU_IOAS_ALLOC.layout, { size: 12, flags: 0, outIoasId: 0 });
    assert.equal(iommu.ioctl(IOCTLS.IOMMU_IOAS_ALLOC.request, argument), -ERRNO.ENOTTY);
    iommu.close();
    assert.throws(() => IommufdDevice.open('/nonexistent/iommu'), { code: 'ENOENT', syscall: 'open' });
  });

  describe('on a real /dev/iommu', () => {
    before(function () {
      if (!IommufdDevice.available()) {
        console.log('      skipped: /dev/iommu does not exist on this machine (no iommufd, or not passed into the container)');
        this.skip();
      }
    });

    it('allocates and destroys an IOAS', () => {
      const iommu = IommufdDevice.open();
      try {
        const alloc = encodeStruct(IOCTLS.IOMMU_IOAS_ALLOC.layout, { size: 12, flags: 0, outIoasId: 0 });
        assert.equal(iommu.ioctl(IOCTLS.IOMMU_IOAS_ALLOC.request, alloc), 0);
        const id = readU32(IOCTLS.IOMMU_IOAS_ALLOC.layout, alloc, 'outIoasId');
        assert.ok(id > 0);
        const bad = encodeStruct(IOCTLS.IOMMU_IOAS_ALLOC.layout, { size: 12, flags: 1, outIoasId: 0 });
        assert.equal(iommu.ioctl(IOCTLS.IOMMU_IOAS_ALLOC.request, bad), -ERRNO.EOPNOTSUPP, 'the real kernel agrees with the double');
        assert.equal(iommu.ioctl(IOCTLS.IOMMU_DESTROY.request, encodeStruct(IOCTLS.IOMMU_DESTROY.layout, { size: 8, id })), 0);
      } finally {
        iommu.close();
      }
    });

    it('sets up nesting for the VFIO cdev in VIOMMU_VFIO_CDEV', function () {
      const cdevPath = process.env.VIOMMU_VFIO_CDEV;
      if (!cdevPath) {
        console.log('      skipped: set VIOMMU_VFIO_CDEV=/dev/vfio/devices/vfioN (a device bound to vfio-pci) to run nesting on the host');
        this.skip();
      }
      const iommu = IommufdDevice.open();
      const ram = native.memfdCreate('iommufd-ram', 0x20_0000);
      const mapping = native.mapFd(ram, 0, 0x20_0000, true);
      try {
        const nesting = new IommufdNesting(iommu, { guestRam: [{ guestPhysical: 0, bytes: new Uint8Array(mapping.buffer) }], faultQueue: false });
        nesting.addDevice(0, iommu.openVfioDevice(cdevPath!));
        const capabilities = nesting.setUp();
        assert.ok(capabilities.addressWidths.length >= 0);
        nesting.close();
      } finally {
        iommu.close();
        mapping.unmap();
        ram.close();
      }
    });
  });

  it('has the ioctl addon loaded through lib/native', () => {
    assert.equal(typeof nativeIoctl().ioctl, 'function');
  });
});
