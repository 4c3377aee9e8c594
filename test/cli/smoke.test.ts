/** `viommu smoke` with kvm-unit-tests' VT-d guest: all 11 checks pass with edu in-process, over vfio-user in another process, with caching mode and with aw-bits=48. */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { runSmoke, type SmokeCommandOptions } from '../../lib/cli/smoke';
import { KvmMachine } from '../../lib/machine/kvm-machine';
import { INTEL_IOMMU_FLAT, requireKvm } from '../machine/kvm-support';
import { runViommu, ServeProcess } from '../vfio-user/cli-process';

/** The check lines kvm-unit-tests' x86/intel-iommu.c prints, in order. */
export const EXPECTED_CHECKS = [
  'vtd_init: fault status check',
  'vtd_init: QI enablement',
  'vtd_init: DMAR table setup',
  'vtd_init: IR table setup',
  'vtd_init: DMAR enablement',
  'vtd_init: IR enablement',
  'vtd_init: DMAR support 39 bits address width',
  'vtd_init: DMAR support huge pages',
  'vtd_dmar: DMAR 4B memcpy test',
  'vtd_ir: IR IOAPIC',
  'vtd_ir: IR MSI',
];

function reportedChecks(out: string): string[] {
  const report = out.slice(out.indexOf('==== viommu smoke report ===='));
  return [...report.matchAll(/^ {2}(PASS|FAIL|SKIP|XPASS|XFAIL) +(.*)$/gm)].map((m) => `${m[1]} ${m[2]}`);
}

async function smoke(options: Partial<SmokeCommandOptions>): Promise<{ code: number; out: string }> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
  const code = await runSmoke({ kernel: INTEL_IOMMU_FLAT, iommu: '', timeout: '60', ram: '256', ...options }, { stdout, stderr });
  return { code, out };
}

function assertAllPass(result: { code: number; out: string }): void {
  assert.deepEqual(
    reportedChecks(result.out),
    EXPECTED_CHECKS.map((name) => `PASS ${name}`),
    result.out,
  );
  assert.match(result.out, /^checks: 11 PASS \(guest's summary: 11 tests\)$/m);
  assert.match(result.out, /^end: the guest wrote 0 to isa-debug-exit \(QEMU would exit with 1\)/m);
  assert.equal(result.code, 0, result.out);
}

describe('cli: viommu smoke with kvm-unit-tests intel-iommu.flat', function () {
  this.timeout(60_000);

  it('passes all 11 checks with the in-process edu and reports what the guest programmed', async function () {
    requireKvm(this, true);
    const result = await smoke({});
    assertAllPass(result);
    assert.match(result.out, /^PASS: vtd_ir: IR MSI\r?$/m, 'the serial output is passed through');
    assert.match(result.out, /^unit: legacy mode, root table 0x[0-9a-f]+, status IRTPS IRES QIES RTPS TES$/m);
    assert.match(result.out, /^ {2}interrupt remapping: on, 65536 entries at 0x[0-9a-f]+, xAPIC destinations$/m);
    assert.match(result.out, /^ {2}domain of 00:04\.0: second-stage, DID 32, 1 mapped run\(s\)\n {4}IOVA 0x0-0xfff -> 0x[0-9a-f]+000 RW$/m);
    assert.match(result.out, /^faults: none recorded$/m);
  });

  it('passes all 11 checks on 4 vCPUs, as kvm-unit-tests configures this test (the APs come up by INIT-SIPI)', async function () {
    requireKvm(this, true);
    const result = await smoke({ smp: '4' });
    assertAllPass(result);
    assert.match(result.out, /^smp: waiting for 3 APs\r?$/m);
  });

  it('passes all 11 checks with aw-bits=48', async function () {
    requireKvm(this, true);
    assertAllPass(await smoke({ iommu: 'aw-bits=48' }));
  });

  it('passes all 11 checks with edu as a `viommu serve` process over vfio-user', async function () {
    requireKvm(this, true);
    const server = await ServeProcess.start();
    try {
      const result = await smoke({ deviceSocket: server.socketPath });
      assertAllPass(result);
      assert.match(result.out, /edu: vfio-user at /);
    } finally {
      await server.stop();
    }
  });

  it('with caching-mode=on and edu over vfio-user, all 11 checks pass, and the report says the guest never invalidated the mapping it made', async function () {
    requireKvm(this, true);
    const server = await ServeProcess.start();
    try {
      const result = await smoke({ iommu: 'caching-mode=on', deviceSocket: server.socketPath });
      assertAllPass(result);
      // kvm-unit-tests writes its PTE and context entry and never invalidates (no CCMD, IOTLB or QI descriptor):
      // caching mode's contract is broken, so the shadow never hears of IOVA 0, and the DMA goes by message.
      assert.match(
        result.out,
        /^shadow: 00:04\.0's DMA table lacks IOVA 0x0-0xfff, which the guest's tables map: with caching mode the guest must invalidate/m,
      );
    } finally {
      await server.stop();
    }
  });

  it('with caching-mode=on, a mapping the guest does invalidate reaches the vfio-user edu as a DMA_MAP of guest RAM', async function () {
    requireKvm(this, true);
    const server = await ServeProcess.start();
    const created = await KvmMachine.create({ iommu: 'caching-mode=on', deviceSocket: server.socketPath });
    assert.ok(created.machine, created.reason);
    const machine = created.machine;
    try {
      machine.load(fs.readFileSync(INTEL_IOMMU_FLAT));
      const outcome = await machine.run(60_000);
      assert.deepEqual(outcome.end, { kind: 'debug-exit', status: 1, written: 0 });
      assert.deepEqual(machine.attachment!.table.shared, []);
      assert.deepEqual(machine.unshadowedMappings(), [{ sid: 0x20, iova: 0, bytes: 0x1000 }]);
      // What the guest left out after making its context entry and PTE present: context-cache and IOTLB invalidations.
      machine.unit.contextGlobal();
      machine.unit.iotlbGlobal();
      await machine.testbed.hostBackend!.settled();
      assert.deepEqual(machine.attachment!.table.shared, [{ address: 0n, size: 0x1000n }]);
      assert.deepEqual(machine.unshadowedMappings(), []);
    } finally {
      machine.close();
      await server.stop();
    }
  });

  it('runs as a user types it, exits 0, and writes the trace as JSON lines', async function () {
    requireKvm(this, true);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-smoke-'));
    try {
      const trace = path.join(dir, 'trace.jsonl');
      const result = await runViommu(['smoke', '--kernel', INTEL_IOMMU_FLAT, '--trace', trace]);
      assert.equal(result.code, 0, `stdout:\n${result.stdout}\nstderr:\n${result.stderr}`);
      assert.equal(reportedChecks(result.stdout).length, 11);
      const events = fs
        .readFileSync(trace, 'utf8')
        .trim()
        .split('\n')
        .map((line) => JSON.parse(line) as { kind: string; [key: string]: unknown });
      assert.ok(
        events.some((e) => e.kind === 'register-write' && e.offset === 0x18),
        'GCMD writes are traced',
      );
      assert.ok(
        events.some((e) => e.kind === 'interrupt' && e.source === 'ioapic' && e.result === 'ok'),
        'the remapped I/O APIC interrupt is traced',
      );
      assert.ok(
        events.some((e) => e.kind === 'interrupt' && e.source === 'msi' && e.result === 'ok'),
        'the remapped MSI is traced',
      );
      assert.ok(
        events.some((e) => e.kind === 'dma' && e.error === undefined),
        'the DMA is traced',
      );
      assert.deepEqual(events.at(-1), { t: events.at(-1)!.t, kind: 'end', end: { kind: 'debug-exit', status: 1, written: 0 } });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('says what is wrong with a missing kernel, a dead device socket and bad options, and exits 1', async function () {
    const missing = await runViommu(['smoke', '--kernel', '/nonexistent/guest.flat']);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /^viommu: --kernel \/nonexistent\/guest.flat: no such file$/m);
    const badTimeout = await runViommu(['smoke', '--kernel', INTEL_IOMMU_FLAT, '--timeout', '-1']);
    assert.equal(badTimeout.code, 1);
    assert.match(badTimeout.stderr, /--timeout -1: a positive number of seconds/);
    requireKvm(this, true);
    const dead = await runViommu(['smoke', '--kernel', INTEL_IOMMU_FLAT, '--device-socket', '/nonexistent/socket']);
    assert.equal(dead.code, 1);
    assert.match(dead.stderr, /^viommu: --device-socket \/nonexistent\/socket: /m);
  });
});
