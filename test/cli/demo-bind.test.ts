/** `viommu demo --mode bind --trace FILE` as a user runs it: a separate process, exit 0, the requests and the fault printed, the trace written. */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runViommu } from '../vfio-user/cli-process';

describe('cli: viommu demo --mode bind', function () {
  this.timeout(60_000);
  let directory: string;

  beforeEach(() => {
    directory = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-bind-'));
  });

  afterEach(() => {
    fs.rmSync(directory, { recursive: true, force: true });
  });

  it("prints each host request the guest's steps became and the fault coming back, writes the trace, and exits 0", async () => {
    const traceFile = path.join(directory, 'bind.jsonl');
    const result = await runViommu(['demo', '--mode', 'bind', '--trace', traceFile]);
    assert.equal(result.code, 0, `stdout:\n${result.stdout}\nstderr:\n${result.stderr}`);
    assert.equal(result.stderr, '');
    const out = result.stdout;
    assert.deepEqual(out.match(/^\[.*\]$/gm), ['[bind (a guest first-stage PASID table bound to the host IOMMU through iommufd nesting)]']);
    assert.doesNotMatch(out, /DMA engine runs/, 'the bind mode starts no device process');
    if (!fs.existsSync('/dev/iommu')) assert.match(out, /^ {2}host {10}the dry-run iommufd \(this machine has no \/dev\/iommu\)/m);
    for (const pattern of [
      /^ {2}guest {9}VCMD allocate PASID .*\n {16}VCRSP: success, PASID 1;/m,
      /^ {4}host {8}IOMMU_HWPT_ALLOC flags=FAULT_ID_VALID\|PASID dev_id=1 pt_id=3 data_type=VTD_S1 data_len=24 fault_id=4 \{flags=0 pgtbl_addr=0x[0-9a-f]+ addr_width=48\} -> out_hwpt_id=5\n {16}VFIO_DEVICE_ATTACH_IOMMUFD_PT flags=PASID pt_id=5 pasid=1$/m,
      /^ {4}host {8}IOMMU_HWPT_INVALIDATE hwpt_id=5 data_type=VTD_S1 entry_len=24 entry_num=1 \[\{addr=0x10000000 npages=1 flags=0\}\]$/m,
      /^ {4}host fault {2}iommu_hwpt_pgfault dev_id=1 pasid=1 addr=0x10001000 perm=READ grpid=1 cookie=1 LAST_PAGE$/m,
      /^ {4}guest reads FRCD\[0\] read by 00:04\.0 with PASID 1 at IOVA 0x10001000, reason 0x71 SM_FIRST_STAGE_NOT_PRESENT /m,
      /^ {4}host {8}VFIO_DEVICE_DETACH_IOMMUFD_PT flags=PASID pasid=1\n {16}IOMMU_DESTROY id=5$/m,
      /^ {2}guest {9}VCMD free PASID 1\n {16}VCRSP: success; PASID 1 is free again at once, with no quarantine: /m,
      /^ {2}result {8}all checks passed$/m,
      /^viommu demo: every mode passed$/m,
    ])
      assert.match(out, pattern);

    const events = fs
      .readFileSync(traceFile, 'utf8')
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as Record<string, unknown>);
    const kinds = new Set(events.map((event) => event.kind));
    for (const kind of ['register-write', 'descriptor', 'translation', 'fault', 'host-request', 'host-fault'])
      assert.ok(kinds.has(kind), `no ${kind} event in the trace`);
    assert.ok(
      events.every((event, i) => typeof event.t === 'number' && (i === 0 || event.t >= (events[i - 1]!.t as number))),
      'each event has a time, in order',
    );
    assert.deepEqual(new Set(events.map((event) => event.mode)), new Set(['bind']), 'each line names the mode');
    const alloc = events.find((event) => event.kind === 'host-request' && event.name === 'IOMMU_HWPT_ALLOC' && event.step === 'bind')!;
    assert.deepEqual(Object.keys(alloc), ['t', 'mode', 'kind', 'step', 'name', 'fields', 'payload', 'result']);
    assert.match((alloc.payload as { pgtbl_addr: string }).pgtbl_addr, /^0x[0-9a-f]+$/, 'bigints as 0x hex strings');
    assert.equal(alloc.result, 0);
    const hostFault = events.find((event) => event.kind === 'host-fault')!;
    assert.deepEqual([hostFault.pasid, hostFault.address, hostFault.routed, hostFault.reason], [1, '0x10001000', 'guest', 0x71]);
  });

  it('refuses a mode it does not know, naming the modes it has', async () => {
    const result = await runViommu(['demo', '--mode', 'bound']);
    assert.notEqual(result.code, 0);
    assert.match(result.stderr, /no mode named bound; the modes are legacy, scalable-second-stage, scalable-first-stage, nested, bind/);
  });
});
