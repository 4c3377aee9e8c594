/**
 * The bind scenario on the dry-run host: the guest steps become the expected host requests, decoded as the host saw
 * them; the host fault lands in the guest's fault records; a host that cannot nest fails the checks; the trace
 * carries the unit's events and the host's in order.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FULL_VTD_HOST, IommufdDryRun } from '../../lib/host/iommufd-dry-run';
import { HW_INFO_TYPE } from '../../lib/host/iommufd-uapi';
import { BIND_TITLE, chooseBindHost, renderHostRequest, runBindScenario, type BindHost, type BindTraceEvent } from '../../lib/vmm/demo-bind';

function dryRunHost(dryRun = new IommufdDryRun(FULL_VTD_HOST)): BindHost {
  return { kind: 'dry-run', description: 'a test dry run', channel: dryRun, cdev: dryRun.addVfioDevice(), dryRun, close: () => undefined };
}

describe('vmm: the bind demo scenario', function () {
  this.timeout(20_000);

  it('turns each guest step into the host requests a nesting VMM makes, and passes its own checks', async () => {
    const host = dryRunHost();
    const report = await runBindScenario({ host });
    assert.deepEqual(report.failures, []);
    assert.equal(report.mode, BIND_TITLE);
    assert.equal(report.pasid, 1, 'VCMD hands out the first PASID above 0');
    assert.deepEqual(
      report.steps.map((step) => [step.name, step.requests.map((r) => r.name)]),
      [
        ['follow the device', ['VFIO_DEVICE_ATTACH_IOMMUFD_PT']],
        ['enable', ['VFIO_DEVICE_DETACH_IOMMUFD_PT']],
        ['allocate', []],
        ['bind', ['IOMMU_HWPT_ALLOC', 'VFIO_DEVICE_ATTACH_IOMMUFD_PT']],
        ['map', ['IOMMU_HWPT_INVALIDATE']],
        ['unbind', ['VFIO_DEVICE_DETACH_IOMMUFD_PT', 'IOMMU_DESTROY']],
        ['free', []],
      ],
    );
    const [alloc, attach] = report.steps.find((step) => step.name === 'bind')!.requests;
    assert.equal(alloc!.fields.out_hwpt_id, attach!.fields.pt_id);
    assert.equal(attach!.fields.pasid, 1);
    assert.deepEqual(Object.keys(alloc!.payload as object), ['flags', 'pgtbl_addr', 'addr_width']);
    // The log decodes the same requests the dry-run host recorded, in the same order, with the same answers.
    assert.deepEqual(
      report.steps.flatMap((step) => step.requests.map((r) => `${r.name}:${r.result}`)),
      host.dryRun!.requests.slice(6, -3).map((r) => `${r.name}:${r.result}`),
    );
    assert.deepEqual(host.dryRun!.responses, [{ cookie: 1, code: 1 }], 'the page request was answered INVALID');
    const text = report.lines.join('\n');
    assert.match(
      text,
      /^ {2}host {8}IOMMU_HWPT_ALLOC flags=FAULT_ID_VALID\|PASID dev_id=1 pt_id=3 data_type=VTD_S1 data_len=24 fault_id=4 \{flags=0 pgtbl_addr=0x[0-9a-f]+000 addr_width=48\} -> out_hwpt_id=5$/m,
    );
    assert.match(text, /^ {2}guest reads FRCD\[0\] read by 00:04\.0 with PASID 1 at IOVA 0x10001000, reason 0x71 SM_FIRST_STAGE_NOT_PRESENT /m);
  });

  it('fails its checks, naming them, on a host that offers no VT-d nesting', async () => {
    const report = await runBindScenario({ host: dryRunHost(new IommufdDryRun({ ...FULL_VTD_HOST, infoType: HW_INFO_TYPE.values.NONE })) });
    assert.ok(
      report.failures.some((failure) => /the host cannot back this unit: the host IOMMU offers no nesting/.test(failure)),
      report.failures.join('\n'),
    );
    assert.ok(
      report.failures.some((failure) => /^bind: the host saw nothing, expected IOMMU_HWPT_ALLOC, VFIO_DEVICE_ATTACH_IOMMUFD_PT$/.test(failure)),
      report.failures.join('\n'),
    );
    assert.ok(
      report.failures.some((failure) => /the backend reported: refused/.test(failure)),
      report.failures.join('\n'),
    );
  });

  it("traces the unit's events and the host's into one sink, in the order they happened", async () => {
    const events: BindTraceEvent[] = [];
    const report = await runBindScenario({ host: dryRunHost(), trace: (event) => events.push(event) });
    assert.deepEqual(report.failures, []);
    const kinds = new Set(events.map((event) => event.kind));
    for (const kind of ['register-write', 'descriptor', 'translation', 'fault', 'host-request', 'host-fault', 'host-page-response'])
      assert.ok(kinds.has(kind as never), `no ${kind} event`);
    const order = events.filter((event) => ['translation', 'host-fault', 'host-page-response'].includes(event.kind)).map((event) => event.kind);
    assert.deepEqual(order, ['translation', 'host-fault', 'host-page-response'], 'the walk, then the routing, then the answer');
    const hostFault = events.find((event) => event.kind === 'host-fault') as Extract<BindTraceEvent, { kind: 'host-fault' }>;
    assert.deepEqual(
      { pasid: hostFault.pasid, address: hostFault.address, routed: hostFault.routed, reason: hostFault.reason },
      { pasid: 1, address: 0x10001000n, routed: 'guest', reason: 0x71 },
    );
    const bindRequests = events
      .filter((event) => event.kind === 'host-request' && event.step === 'bind')
      .map((event) => (event as { name: string }).name);
    assert.deepEqual(bindRequests, ['IOMMU_HWPT_ALLOC', 'VFIO_DEVICE_ATTACH_IOMMUFD_PT']);
  });

  it("renders a request with symbolic flags, the fields the host filled, the payload, and a refusal's errno", () => {
    assert.equal(
      renderHostRequest({
        name: 'IOMMU_HWPT_INVALIDATE',
        fields: { hwpt_id: 5, data_type: 0, entry_len: 24, entry_num: 2 },
        payload: [
          { addr: 0n, npages: 2n ** 64n - 1n, flags: 0 },
          { addr: 0x4000n, npages: 4n, flags: 1 },
        ],
        result: 0,
      }),
      'IOMMU_HWPT_INVALIDATE hwpt_id=5 data_type=VTD_S1 entry_len=24 entry_num=2 [{addr=0x0 npages=ALL flags=0} {addr=0x4000 npages=4 flags=LEAF}]',
    );
    assert.equal(
      renderHostRequest({ name: 'VFIO_DEVICE_ATTACH_IOMMUFD_PT', fields: { flags: 3, pt_id: 9, pasid: 2 }, result: -22 }),
      'VFIO_DEVICE_ATTACH_IOMMUFD_PT flags=PASID|0x2 pt_id=9 pasid=2 = -EINVAL',
    );
  });

  it('chooses the dry run, and says why, without /dev/iommu or without a VFIO cdev', () => {
    const missing = chooseBindHost({ iommufdPath: '/nonexistent/iommu', vfioCdev: '/dev/vfio/devices/vfio0' });
    assert.equal(missing.kind, 'dry-run');
    assert.match(
      missing.description,
      /^the dry-run iommufd \(this machine has no \/nonexistent\/iommu, so \/dev\/vfio\/devices\/vfio0 is not used\)/,
    );
    const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'bind-host-'));
    try {
      const present = path.join(directory, 'iommu');
      fs.writeFileSync(present, '');
      const noDevice = chooseBindHost({ iommufdPath: present });
      assert.equal(noDevice.kind, 'dry-run');
      assert.match(noDevice.description, /exists, but no --vfio-cdev names a device to bind/);
    } finally {
      fs.rmSync(directory, { recursive: true, force: true });
    }
  });
});
