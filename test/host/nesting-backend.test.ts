/**
 * NestingBackend between a real VtdUnit and the dry-run iommufd: guest PASID entries become binds, the guest's
 * invalidations become HWPT_INVALIDATE once per domain, host faults the guest's tables explain land in its fault
 * records, and what the host cannot back is refused without stopping the device.
 */
import { strict as assert } from 'node:assert';
import { FULL_VTD_HOST, IommufdDryRun, type RecordedRequest } from '../../lib/host/iommufd-dry-run';
import { IommufdNesting } from '../../lib/host/iommufd-nesting';
import { NestingBackend, nestingConfigProblems } from '../../lib/host/nesting-backend';
import { vtdConfigFromString } from '../../lib/vtd/config';
import { faultCode } from '../../lib/vtd/fault-reasons';
import { PASID_PGTT } from '../../lib/vtd/structures';
import { ScalableGuest, frcdHi, pasidDescriptor as P } from '../vtd/scalable-guest';
import { SID } from '../vtd/unit-guest';

const UNIT = 'x-scalable-mode=on,x-pasid-mode=on,x-flts=on,aw-bits=48';
const OTHER_SID = SID + 8;

function rig(sids = [SID], config = UNIT, options: { pasidUse?: boolean } = {}) {
  const guest = new ScalableGuest(config);
  const host = new IommufdDryRun(FULL_VTD_HOST);
  const nesting = new IommufdNesting(host, { guestRam: [{ guestPhysical: 0, bytes: new Uint8Array(1 << 20) }] });
  for (const sid of sids) nesting.addDevice(sid, host.addVfioDevice());
  nesting.setUp();
  const allocator = guest.unit.virtualCommands?.allocator;
  const backend = new NestingBackend(nesting, guest.unit, {
    walkGuest: (request) => guest.unit.translate(request),
    ...(options.pasidUse === true && allocator !== undefined ? { pasidUse: allocator } : {}),
  });
  const events: string[] = [];
  backend.on('refused', (sid, pasid, reason) => events.push(`refused ${sid}/${pasid}: ${reason}`));
  backend.on('error', (sid, pasid, error) => events.push(`error ${sid}/${pasid}: ${error.message}`));
  let seen = host.requests.length;
  const since = (): RecordedRequest[] => {
    const fresh = host.requests.slice(seen);
    seen = host.requests.length;
    return fresh;
  };
  since();
  return { guest, host, nesting, backend, events, since };
}

function firstStageEntry(guest: ScalableGuest, sid: number, pasid: number, did: number, top = guest.writer.page()): number {
  guest.pasidEntry(sid, pasid, { PGTT: PASID_PGTT.FIRST_STAGE, AW: 2, FSPTPTR: top / 4096, DID: did });
  return top;
}

describe('NestingBackend (VtdUnit to iommufd nesting)', () => {
  it('binds a first-stage PASID entry once the guest invalidates it, then forwards its PASID-based IOTLB invalidations', () => {
    const { guest, backend, since } = rig();
    guest.scalableContext(SID);
    guest.enableScalable();
    guest.setupWideQueue();
    backend.attach(SID, [5]);
    assert.deepEqual(since(), [], 'nothing present yet: nothing bound');
    const top = firstStageEntry(guest, SID, 5, 3);
    guest.invalidate(P.cachePasid(3, 5));
    const bind = since();
    assert.deepEqual(
      bind.map((r) => r.name),
      ['IOMMU_HWPT_ALLOC', 'VFIO_DEVICE_ATTACH_IOMMUFD_PT'],
    );
    assert.deepEqual(bind[0]!.payload, { vtdS1: { flags: 0n, pgtblAddr: BigInt(top), addrWidth: 48 } });
    assert.equal(bind[1]!.fields.pasid, 5);
    guest.writer.mapFirst(top, 4, 0x7000n, 0x90000);
    guest.invalidate(P.iotlbPages(3, 5, 0x4000, 2));
    const invalidation = since();
    assert.deepEqual(
      invalidation.map((r) => r.name),
      ['IOMMU_HWPT_INVALIDATE'],
    );
    assert.deepEqual(invalidation[0]!.payload, { entries: [{ addr: 0x4000n, npages: 4n, flags: 0 }] });
    guest.invalidate(P.iotlbPasid(3, 6));
    assert.deepEqual(since(), [], 'another PASID of the DID: nothing to forward');
  });

  it('forwards one invalidation per domain however many devices share it, and the whole domain for a DID-wide one', () => {
    const { guest, backend, since } = rig([SID, OTHER_SID]);
    guest.scalableContext(SID);
    guest.scalableContext(OTHER_SID);
    const top = firstStageEntry(guest, SID, 5, 3);
    firstStageEntry(guest, OTHER_SID, 5, 3, top);
    guest.enableScalable();
    guest.setupWideQueue();
    backend.attach(SID, [5]);
    backend.attach(OTHER_SID, [5]);
    assert.deepEqual(
      since().map((r) => r.name),
      ['IOMMU_HWPT_ALLOC', 'VFIO_DEVICE_ATTACH_IOMMUFD_PT', 'VFIO_DEVICE_ATTACH_IOMMUFD_PT'],
      'one shared HWPT',
    );
    guest.invalidate(P.iotlbPages(3, 5, 0x10000));
    assert.equal(since().filter((r) => r.name === 'IOMMU_HWPT_INVALIDATE').length, 1);
    guest.invalidate(P.iotlbPasid(3, 5));
    const all = since();
    assert.equal(all.length, 1);
    assert.deepEqual(all[0]!.payload, { entries: [{ addr: 0n, npages: 2n ** 64n - 1n, flags: 0 }] });
  });

  it('rebinds when the guest moves the PASID to other tables, and unbinds when it clears the entry', () => {
    const { guest, backend, since } = rig();
    guest.scalableContext(SID);
    firstStageEntry(guest, SID, 5, 3);
    guest.enableScalable();
    guest.setupWideQueue();
    backend.attach(SID, [5]);
    since();
    const moved = firstStageEntry(guest, SID, 5, 4);
    guest.invalidate(P.cachePasid(3, 5));
    const rebind = since();
    assert.deepEqual(
      rebind.map((r) => r.name),
      ['IOMMU_HWPT_ALLOC', 'VFIO_DEVICE_ATTACH_IOMMUFD_PT', 'IOMMU_DESTROY'],
    );
    assert.equal((rebind[0]!.payload as { vtdS1: { pgtblAddr: bigint } }).vtdS1.pgtblAddr, BigInt(moved));
    guest.pasidEntry(SID, 5, { P: 0 });
    guest.invalidate(P.cachePasid(4, 5));
    assert.deepEqual(
      since().map((r) => r.name),
      ['VFIO_DEVICE_DETACH_IOMMUFD_PT', 'IOMMU_DESTROY'],
    );
  });

  it('attaches the parent for a pass-through entry and refuses a second-stage one, which the host cannot nest', () => {
    // x-nested gives the guest second-stage PASID entries (ECAP.SSTS) that a nesting host cannot back.
    const { guest, backend, since, events } = rig([SID], `${UNIT},x-nested=on`);
    guest.scalableContext(SID);
    guest.pasidEntry(SID, 5, { PGTT: PASID_PGTT.PASS_THROUGH, DID: 2 });
    guest.enableScalable();
    guest.setupWideQueue();
    backend.attach(SID, [5]);
    assert.deepEqual(
      since().map((r) => r.name),
      ['VFIO_DEVICE_ATTACH_IOMMUFD_PT'],
    );
    guest.secondStage(SID, 5, 2);
    guest.invalidate(P.cachePasid(2, 5));
    assert.deepEqual(
      since().map((r) => r.name),
      ['VFIO_DEVICE_DETACH_IOMMUFD_PT'],
    );
    assert.equal(events.length, 1);
    assert.match(events[0]!, /second-stage domain .* cannot be nested/);
  });

  it('records a host fault the guest\'s tables explain as the guest\'s fault (PP/PV), answering the host "invalid"', () => {
    const { guest, host, backend } = rig();
    guest.scalableContext(SID);
    firstStageEntry(guest, SID, 5, 3);
    guest.enableScalable();
    guest.setupWideQueue();
    backend.attach(SID, [5]);
    const guestFaults: number[] = [];
    backend.on('guestFault', (_fault, reason) => guestFaults.push(reason));
    const [faultFd] = host.faultQueueFds();
    const devId = host.objectsOf('device')[0]!;
    const cookie = host.injectFault(faultFd!, { flags: 3, devId, pasid: 5, grpid: 1, perm: 2, addr: 0x5000n, length: 0 });
    assert.equal(backend.pollFaults(), 1);
    assert.deepEqual(guestFaults, [faultCode('SM_FIRST_STAGE_NOT_PRESENT')]);
    assert.equal(guest.frcdHi(), frcdHi(faultCode('SM_FIRST_STAGE_NOT_PRESENT'), { pasid: 5 }));
    assert.deepEqual(host.responses, [{ cookie, code: 1 }]);
  });

  it('answers a host fault no request could carry (a PASID beyond 20 bits) "invalid" and keeps routing the others', () => {
    const { guest, host, backend, events } = rig();
    guest.scalableContext(SID);
    firstStageEntry(guest, SID, 5, 3);
    guest.enableScalable();
    guest.setupWideQueue();
    backend.attach(SID, [5]);
    const guestFaults: number[] = [];
    backend.on('guestFault', (_fault, reason) => guestFaults.push(reason));
    const [faultFd] = host.faultQueueFds();
    const devId = host.objectsOf('device')[0]!;
    const bad = host.injectFault(faultFd!, { flags: 3, devId, pasid: 1 << 20, grpid: 1, perm: 1, addr: 0x5000n, length: 0 });
    const good = host.injectFault(faultFd!, { flags: 3, devId, pasid: 5, grpid: 2, perm: 1, addr: 0x5000n, length: 0 });
    assert.equal(backend.pollFaults(), 2);
    assert.equal(events.length, 1);
    assert.match(events[0]!, /^error 32\/1048576: /);
    assert.deepEqual(guestFaults, [faultCode('SM_FIRST_STAGE_NOT_PRESENT')]);
    assert.deepEqual(host.responses, [
      { cookie: bad, code: 1 },
      { cookie: good, code: 1 },
    ]);
  });

  it("counts a PASID attached on the host as bound in the unit's allocator: a freed PASID waits for the host detach, then an invalidation and a wait", () => {
    const { guest, backend, since } = rig([SID], `${UNIT},x-vcmd=on`, { pasidUse: true });
    const pasids = guest.unit.virtualCommands!.pasids;
    const allocator = guest.unit.virtualCommands!.allocator;
    const allocated = pasids.allocate();
    assert.ok(allocated.ok);
    const pasid = allocated.pasid;
    guest.scalableContext(SID);
    guest.enableScalable();
    guest.setupWideQueue();
    backend.attach(SID, [pasid]);
    firstStageEntry(guest, SID, pasid, 3);
    guest.invalidate(P.cachePasid(3, pasid));
    assert.deepEqual(allocator.boundDevices(pasid), [SID], 'the host attach is a bind');
    // Invalidated and waited for while the host still has it attached: that cannot make the free safe.
    guest.invalidate(P.iotlbPasid(3, pasid));
    assert.equal(pasids.free(pasid).ok, true);
    assert.equal(allocator.quarantineStage(pasid), 'draining');
    guest.pasidEntry(SID, pasid, { P: 0 });
    guest.invalidate(P.cachePasid(3, pasid));
    assert.deepEqual(
      since().map((r) => r.name),
      ['IOMMU_HWPT_ALLOC', 'VFIO_DEVICE_ATTACH_IOMMUFD_PT', 'IOMMU_HWPT_INVALIDATE', 'VFIO_DEVICE_DETACH_IOMMUFD_PT', 'IOMMU_DESTROY'],
    );
    assert.deepEqual(allocator.boundDevices(pasid), [], 'the host detach is an unbind');
    assert.equal(allocator.quarantineStage(pasid), 'awaiting-invalidation');
    guest.invalidate(P.iotlbPasid(3, pasid));
    assert.equal(allocator.state(pasid), 'free');
  });

  it('releases at the free a PASID the guest detached, invalidated and waited for before freeing it (the Linux order)', () => {
    const { guest, backend } = rig([SID], `${UNIT},x-vcmd=on`, { pasidUse: true });
    const pasids = guest.unit.virtualCommands!.pasids;
    const allocated = pasids.allocate();
    assert.ok(allocated.ok);
    const pasid = allocated.pasid;
    guest.scalableContext(SID);
    guest.enableScalable();
    guest.setupWideQueue();
    backend.attach(SID, [pasid]);
    firstStageEntry(guest, SID, pasid, 3);
    guest.invalidate(P.cachePasid(3, pasid));
    guest.pasidEntry(SID, pasid, { P: 0 });
    guest.invalidate(P.cachePasid(3, pasid), P.iotlbPasid(3, pasid));
    assert.equal(pasids.free(pasid).ok, true);
    assert.equal(guest.unit.virtualCommands!.allocator.state(pasid), 'free');
  });

  it('says what a unit configuration offers that the host cannot back', () => {
    const problems = nestingConfigProblems(vtdConfigFromString(`${UNIT},x-nested=on`), {
      pageTableFormats: ['vtd-s1'],
      addressWidths: [48],
      firstStage1GiBPages: false,
      supervisorRequests: false,
      extendedAccessedFlag: false,
      nested: true,
      maxPasidLog2: 10,
      readOnlyParentErratum: false,
      cap: 0n,
      ecap: 0n,
    });
    assert.equal(problems.length, 3, problems.join('\n'));
    assert.ok(
      problems.some((p) => /x-nested=off/.test(p)) && problems.some((p) => /FS1GP/.test(p)) && problems.some((p) => /x-pasid-bits=10/.test(p)),
    );
    assert.deepEqual(
      nestingConfigProblems(vtdConfigFromString(`${UNIT},x-pasid-bits=10`), {
        pageTableFormats: ['vtd-s1'],
        addressWidths: [48],
        firstStage1GiBPages: true,
        supervisorRequests: false,
        extendedAccessedFlag: false,
        nested: true,
        maxPasidLog2: 10,
        readOnlyParentErratum: false,
        cap: 0n,
        ecap: 0n,
      }),
      [],
    );
  });
});
