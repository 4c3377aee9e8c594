/**
 * The host-backend interface with both backends behind it: a shadowed DMA table and an iommufd-nested device driven
 * through the same calls, attachments of the wrong kind refused, and the check of unit properties the host cannot honour.
 */
import { strict as assert } from 'node:assert';
import type { HostIommuBackend, HostIommuBackendEvents } from '../../lib/host/host-backend';
import { FULL_VTD_HOST, IommufdDryRun, PLAIN_VTD_HOST, type HostIommuModel } from '../../lib/host/iommufd-dry-run';
import { IommufdNesting } from '../../lib/host/iommufd-nesting';
import type { ShadowTarget } from '../../lib/host/shadow-backend';
import { ViommuError } from '../../lib/errors';
import { nestingBackendFor, shadowBackendFor } from '../../lib/vmm/host-backends';
import { vtdConfigFromString } from '../../lib/vtd/config';
import { faultCode } from '../../lib/vtd/fault-reasons';
import { PASID_PGTT } from '../../lib/vtd/structures';
import { ScalableGuest, pasidDescriptor as P } from '../vtd/scalable-guest';
import { SID, TestGuest } from '../vtd/unit-guest';

const NESTED_UNIT = 'x-scalable-mode=on,x-pasid-mode=on,x-flts=on,aw-bits=48';
const IOVA = 0x4000;
const GPA = 0x200000;

interface RecordedMap {
  readonly address: bigint;
  readonly size: bigint;
  readonly writable: boolean;
}

/** A vfio-user DMA table that records what it is told; `refuseMaps` makes every DMA_MAP fail as a peer's errno would. */
function recordingTable(refuseMaps = false): ShadowTarget & { readonly maps: RecordedMap[]; readonly unmaps: bigint[] } {
  const maps: RecordedMap[] = [];
  const unmaps: bigint[] = [];
  return {
    maps,
    unmaps,
    maxDmaMaps: 64,
    dmaMap: (request) => {
      if (refuseMaps) return Promise.reject(new Error('EINVAL from the peer'));
      maps.push({ address: request.address, size: request.size, writable: request.writable });
      return Promise.resolve();
    },
    dmaUnmap: (address) => {
      unmaps.push(address);
      return Promise.resolve();
    },
  };
}

/** A legacy-mode guest with caching mode that maps one page for SID, and the shadow backend of its unit. */
function shadowRig(): { guest: TestGuest; backend: HostIommuBackend } {
  const guest = new TestGuest('caching-mode=on');
  guest.setRootTable();
  guest.setContext(SID, { did: 1 });
  guest.map(SID, IOVA, GPA, { read: true, write: true });
  guest.enable();
  const backend = shadowBackendFor(guest.unit, guest.memory);
  assert.ok(backend, 'caching mode and a unit that tells domains: a shadow backend');
  return { guest, backend };
}

function nestingRig(model: HostIommuModel = FULL_VTD_HOST, config = NESTED_UNIT) {
  const guest = new ScalableGuest(config);
  const host = new IommufdDryRun(model);
  const nesting = new IommufdNesting(host, { guestRam: [{ guestPhysical: 0, bytes: new Uint8Array(1 << 20) }] });
  nesting.addDevice(SID, host.addVfioDevice());
  nesting.setUp();
  const backend: HostIommuBackend | undefined = nestingBackendFor(guest.unit, nesting);
  assert.ok(backend, 'a unit that tells domains and translates: a nesting backend');
  return { guest, host, nesting, backend };
}

/** Every event the backend emits, as text. */
function heard(backend: HostIommuBackend): string[] {
  const events: string[] = [];
  const on = <E extends keyof HostIommuBackendEvents>(event: E, describe: (...args: HostIommuBackendEvents[E]) => string): void => {
    backend.on(event, (...args) => events.push(`${event} ${describe(...args)}`));
  };
  on('error', (sid, pasid, error) => `${sid}/${pasid}: ${error.message}`);
  on('refused', (sid, pasid, reason) => `${sid}/${pasid}: ${reason}`);
  on('hostFault', (fault) => `0x${fault.address.toString(16)}`);
  on('guestFault', (fault, reason) => `0x${fault.address.toString(16)} reason ${reason}`);
  return events;
}

describe('HostIommuBackend', () => {
  describe('the shadow backend through the interface', () => {
    it('keeps an attached DMA table equal to the guest mapping, and takes it back on detach', async () => {
      const { backend } = shadowRig();
      assert.equal(backend.name, 'shadow');
      assert.deepEqual(backend.attachKinds, ['vfio-user-dma-table']);
      const table = recordingTable();
      const device = backend.attach({ kind: 'vfio-user-dma-table', sid: SID, table });
      assert.equal(device.sid, SID);
      await backend.settled();
      assert.deepEqual(table.maps, [{ address: BigInt(IOVA), size: 4096n, writable: true }]);
      assert.equal(backend.pending(), undefined, 'every DMA_MAP answered: nothing holds the unit');
      await device.detach();
      assert.deepEqual(table.unmaps, [BigInt(IOVA)]);
      assert.equal(backend.pollFaults(), 0, "a shadowed device's faults are the unit's own");
    });

    it("reports a device's refused DMA_MAP as an error event without a PASID, and throws for no one when unheard", async () => {
      const quiet = shadowRig().backend;
      quiet.attach({ kind: 'vfio-user-dma-table', sid: SID, table: recordingTable(true) });
      await quiet.settled();
      const { backend } = shadowRig();
      const events = heard(backend);
      backend.attach({ kind: 'vfio-user-dma-table', sid: SID, table: recordingTable(true) });
      await backend.settled();
      assert.deepEqual(events, [`error ${SID}/undefined: EINVAL from the peer`]);
    });

    it('backs whatever the guest tables say, and needs caching-mode=on', () => {
      const { backend } = shadowRig();
      assert.deepEqual(backend.backing(), { tableFormats: 'any', addressWidths: 'any', capFields: 'any', ecapFields: 'any', pasidBits: 'any' });
      assert.deepEqual(backend.configProblems(vtdConfigFromString('caching-mode=on,x-scalable-mode=on,x-flts=on,aw-bits=48')), []);
      const problems = backend.configProblems(vtdConfigFromString('caching-mode=off'));
      assert.equal(problems.length, 1);
      assert.match(problems[0]!, /caching-mode=on/);
    });

    it('refuses a VFIO cdev attachment, naming the kind it takes', () => {
      const { backend } = shadowRig();
      assert.throws(
        () => backend.attach({ kind: 'iommufd-device', sid: SID, pasids: [5] }),
        (error: unknown) =>
          error instanceof ViommuError &&
          error.code === 'ERR_HOST_ATTACH_KIND' &&
          /shadow backend takes 'vfio-user-dma-table' attachments, not 'iommufd-device'/.test(error.message),
      );
    });
  });

  describe('the nesting backend through the interface', () => {
    it('binds an attached device PASID to the guest first-stage table, routes a host fault back, and unbinds on detach', async () => {
      const { guest, host, backend } = nestingRig();
      const events = heard(backend);
      assert.equal(backend.name, 'nesting');
      guest.scalableContext(SID);
      const top = guest.writer.page();
      guest.pasidEntry(SID, 5, { PGTT: PASID_PGTT.FIRST_STAGE, AW: 2, FSPTPTR: top / 4096, DID: 3 });
      guest.enableScalable();
      guest.setupWideQueue();
      const before = host.requests.length;
      const device = backend.attach({ kind: 'iommufd-device', sid: SID, pasids: [5] });
      assert.equal(backend.pending(), undefined, 'host requests complete inside the command that caused them');
      await device.settled();
      assert.deepEqual(host.names().slice(before), ['IOMMU_HWPT_ALLOC', 'VFIO_DEVICE_ATTACH_IOMMUFD_PT']);
      const [faultFd] = host.faultQueueFds();
      host.injectFault(faultFd!, { flags: 3, devId: host.objectsOf('device')[0]!, pasid: 5, grpid: 1, perm: 2, addr: 0x5000n, length: 0 });
      assert.equal(backend.pollFaults(), 1);
      assert.deepEqual(events, [`guestFault 0x5000 reason ${faultCode('SM_FIRST_STAGE_NOT_PRESENT')}`]);
      const bound = host.requests.length;
      await device.detach();
      assert.deepEqual(host.names().slice(bound), ['VFIO_DEVICE_DETACH_IOMMUFD_PT', 'IOMMU_DESTROY']);
      guest.pasidEntry(SID, 5, { PGTT: PASID_PGTT.FIRST_STAGE, AW: 2, FSPTPTR: guest.writer.page() / 4096, DID: 3 });
      guest.invalidate(P.cachePasid(3, 5));
      assert.equal(host.requests.length, bound + 2, 'a detached device follows the guest no more');
    });

    it('comes from nestingBackendFor only for an IOMMU that tells domains and translates; with x-vcmd the guest PASID allocator hears host attaches', async () => {
      const { guest, nesting, backend } = nestingRig(FULL_VTD_HOST, `${NESTED_UNIT},x-vcmd=on`);
      const unit = guest.unit;
      const windowOnly = { read: unit.read.bind(unit), write: unit.write.bind(unit), dmaSpace: unit.dmaSpace.bind(unit) };
      assert.equal(nestingBackendFor(windowOnly, nesting), undefined, 'no domains to follow');
      assert.equal(nestingBackendFor({ ...windowOnly, watchDevice: unit.watchDevice.bind(unit) }, nesting), undefined, 'no way to walk a host fault');
      const allocated = unit.virtualCommands!.pasids.allocate();
      assert.ok(allocated.ok);
      guest.scalableContext(SID);
      guest.pasidEntry(SID, allocated.pasid, { PGTT: PASID_PGTT.FIRST_STAGE, AW: 2, FSPTPTR: guest.writer.page() / 4096, DID: 3 });
      guest.enableScalable();
      guest.setupWideQueue();
      const device = backend.attach({ kind: 'iommufd-device', sid: SID, pasids: [allocated.pasid] });
      await device.settled();
      assert.deepEqual(unit.virtualCommands!.allocator.boundDevices(allocated.pasid), [SID], 'attached on the host: bound in the allocator');
      await device.detach();
      assert.deepEqual(unit.virtualCommands!.allocator.boundDevices(allocated.pasid), [], 'detached: unbound');
    });

    it('refuses a vfio-user DMA table attachment, naming the kind it takes', () => {
      const { backend } = nestingRig();
      assert.throws(
        () => backend.attach({ kind: 'vfio-user-dma-table', sid: SID, table: recordingTable() }),
        (error: unknown) =>
          error instanceof ViommuError &&
          error.code === 'ERR_HOST_ATTACH_KIND' &&
          /nesting backend takes 'iommufd-device' attachments, not 'vfio-user-dma-table'/.test(error.message),
      );
    });

    it("backs what the host's IOMMU_GET_HW_INFO says, and names the unit properties it cannot honour", () => {
      const full = nestingRig().backend;
      const backing = full.backing();
      assert.deepEqual(backing.tableFormats, ['first-stage', 'identity']);
      assert.deepEqual(backing.addressWidths, [48, 57]);
      assert.equal(backing.pasidBits, 20);
      assert.ok(backing.ecapFields !== 'any' && backing.ecapFields.has('NEST') && backing.ecapFields.has('SRS') && !backing.ecapFields.has('DT'));
      assert.ok(backing.capFields !== 'any' && backing.capFields.has('FS5LP'));
      assert.deepEqual(full.configProblems(vtdConfigFromString(NESTED_UNIT)), []);
      const plain = nestingRig(PLAIN_VTD_HOST).backend.backing();
      assert.deepEqual(plain.addressWidths, [48]);
      assert.ok(plain.ecapFields !== 'any' && !plain.ecapFields.has('SRS'));
      const problems = full.configProblems(vtdConfigFromString(`${NESTED_UNIT},x-nested=on`));
      assert.equal(problems.length, 1, problems.join('\n'));
      assert.match(problems[0]!, /x-nested=off/);
      assert.ok(
        full.configProblems(vtdConfigFromString('x-scalable-mode=on')).some((problem) => /x-flts=on/.test(problem)),
        'a unit without first-stage tables has nothing to bind',
      );
    });
  });
});
